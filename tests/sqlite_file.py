"""A look at (or a change to) a SQLite store's file under the store's back, as the
tests that judge what is at rest, or tamper with it, need."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sessionstream.eventstore.textcodec import decode


def sql(db: Path, statement: str, *params: Any) -> list[Any]:
    """``statement`` on the file, committed; ``stored_text(column)`` reads a value as the
    JSON it holds (a large one is stored deflated: ``eventstore/textcodec.py``)."""
    conn = sqlite3.connect(db)
    conn.create_function("stored_text", 1, decode, deterministic=True)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()
