"""The aiohttp shell: HTTP handlers, websockets, runs."""
