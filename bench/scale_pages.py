"""Pages touched per appended event, by table and index: the arithmetic behind disk bytes.

Every commit appends each page it dirtied to the WAL as one frame (the page
plus a 24-byte header); a checkpoint later copies each distinct page once
into the file. So the disk bytes of an append are

    (WAL frames per commit x 4,120 + distinct pages per checkpoint x 4,096) / events

and the question is which B-trees the frames come from. This runs the scale
benchmark's append round (100 appenders, one event a call, each its own
stream) on a copy of a store with checkpoints held off, then reads the WAL:
each frame's page number, mapped to its table or index through ``dbstat``.

    python -m bench.scale_pages STORE.db [STORE.db ...]

Prints a table per store and returns the figures (``bench/scale.py`` does not
call it; ``docs/explanation/scale.md`` quotes it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.scale_measure import append_round, settle
from sessionstream import projections
from sessionstream.eventstore.sqlite import SQLiteEventStore

APPENDERS, PER_APPENDER = 100, 100
WAL_HEADER, FRAME_HEADER = 32, 24


def wal_pages(path: Path) -> list[int]:
    """The page number of every frame in ``path``'s WAL, in order."""
    data = Path(f"{path}-wal").read_bytes()
    if len(data) < WAL_HEADER:
        return []
    page_size = struct.unpack(">I", data[8:12])[0]
    salt = data[16:24]
    pages: list[int] = []
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(data):
        header = data[offset : offset + FRAME_HEADER]
        if header[8:16] != salt:  # a frame left over from before the WAL restarted
            break
        pages.append(struct.unpack(">I", header[:4])[0])
        offset += FRAME_HEADER + page_size
    return pages


async def measure(source: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pages-"))
    try:
        path = work / "store.db"
        conn = sqlite3.connect(source)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        shutil.copyfile(source, path)
        batches: list[int] = []
        store = SQLiteEventStore(
            path,
            projections.ALL,
            checkpoint_interval_s=3600,  # hold checkpoints off: the WAL keeps every frame
            on_batch=lambda _callers, events: batches.append(events),
        )
        await store.open()
        await asyncio.to_thread(settle, path)  # what opening wrote (a migration) is not counted
        events_before = await store.head_position()
        batches.clear()
        await append_round(store, APPENDERS, PER_APPENDER)
        frames = wal_pages(path)
        conn = sqlite3.connect(path)
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
        conn.close()
        await store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    events = sum(batches)
    commits = len([b for b in batches if b])
    by_tree = Counter(owner.get(p, "(free or new)") for p in frames)
    distinct = Counter(owner.get(p, "(free or new)") for p in set(frames))
    return {
        "store_events": events_before,
        "appended": events,
        "commits": commits,
        "events_per_commit": events / max(1, commits),
        "wal_frames_per_commit": len(frames) / max(1, commits),
        "wal_frames_per_event": len(frames) / max(1, events),
        "distinct_pages_per_event": len(set(frames)) / max(1, events),
        "frames_per_commit_by_tree": {k: v / max(1, commits) for k, v in by_tree.most_common()},
        "distinct_pages_by_tree": dict(distinct.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", type=Path)
    args = parser.parse_args()
    for source in args.stores:
        figures = asyncio.run(measure(source))
        print(f"\n{source} ({figures['store_events']:,} events before the round)")
        for key in (
            "appended",
            "commits",
            "events_per_commit",
            "wal_frames_per_commit",
            "wal_frames_per_event",
            "distinct_pages_per_event",
        ):
            print(f"  {key:>26}  {figures[key]:,.2f}")
        print("  WAL frames per commit, by table or index:")
        for name, count in figures["frames_per_commit_by_tree"].items():
            print(f"    {name:>30}  {count:6.2f}")


if __name__ == "__main__":
    main()
