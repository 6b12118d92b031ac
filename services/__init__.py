"""Application services: whole commands (create, patch, delete, turn, examples, rollback),
the run manager, history and accounts. No HTTP here: the aiohttp shell calls these."""
