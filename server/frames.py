"""``ChatStreamEvent``: the one frame shape every channel sends, encoded once per event.

``{"type", "runId", "sessionId", "seq", "position", "at", "data"}`` where
``seq`` is the event's version in its own stream (a run's seq on run
channels) and ``position`` its global log position (the cursor of session
channels). Websockets, SSE and the Trigger.dev-compatible stream all build
frames here so they can never disagree, and share the bytes: an event sent
to a thousand subscribers is serialised once (``FrameCache``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from sessionstream.core.vocabulary import (
    RUN_PREFIX,
    SESSION_PREFIX,
    TERMINAL,
    EventType,
    stream_key,
)
from sessionstream.eventstore.model import RecordedEvent, data_json


def run_id_of(event: RecordedEvent) -> str | None:
    return stream_key(event.stream_id, RUN_PREFIX)


def session_id_of(event: RecordedEvent) -> str | None:
    own = stream_key(event.stream_id, SESSION_PREFIX)
    if own is not None:
        return own
    session = event.metadata.get("session_id")
    return str(session) if session is not None else None


def chat_stream_event(event: RecordedEvent) -> dict[str, Any]:
    return {
        "type": event.type,
        "runId": run_id_of(event),
        "sessionId": session_id_of(event),
        "seq": event.version,
        "position": event.position,
        "at": event.recorded_at,
        "data": event.data,
    }


def frame_text(event: RecordedEvent) -> str:
    """``chat_stream_event(event)`` as JSON, its ``data`` spliced in as the text the
    event holds (``data_json``): a catch-up frame never parses a stored payload
    only to encode it again (a 3 MB list of ``{}`` is ~90 MB of dicts)."""
    data = data_json(event)
    if data is None:
        return dumps(chat_stream_event(event))
    head = {
        "type": event.type,
        "runId": run_id_of(event),
        "sessionId": session_id_of(event),
        "seq": event.version,
        "position": event.position,
        "at": event.recorded_at,
    }
    return f'{dumps(head)[:-1]},"data":{data}}}'


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 as is: the spelling of every frame on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Compactor:
    """Folds a run's events, page by page, into one ``message.snapshot`` frame.

    Its ``seq`` and ``position`` are those of the last folded event, so a
    client resumes from it exactly as from any other frame; terminal events
    are never folded, because the end of a run is an event and never
    inferred. Fed a page at a time (``run_channel``), it holds the fold, not
    the run's whole stream.
    """

    __slots__ = ("data", "last", "text")

    def __init__(self) -> None:
        self.last: RecordedEvent | None = None
        self.text: list[str] = []
        self.data: dict[str, Any] = {
            "text": "",
            "status": "queued",
            "message": None,
            "skeleton": None,
            "draft": None,
            "progress": None,
            "examples": [],
        }

    def feed(self, events: Sequence[RecordedEvent]) -> None:
        data = self.data
        for event in events:
            kind = event.type
            if kind in TERMINAL:
                continue
            self.last = event
            if kind == EventType.MESSAGE_DELTA:
                self.text.append(str(event.data.get("text", "")))
            elif kind == EventType.RUN_STARTED:
                data["status"] = "running"
            elif kind == EventType.MESSAGE_COMPLETED:
                data["message"] = event.data.get("message")
            elif kind == EventType.SKELETON_UPDATED:
                data["skeleton"] = event.data
            elif kind == EventType.DRAFT_UPDATED:
                data["draft"] = event.data
            elif kind == EventType.EXAMPLES_PROGRESS:
                data["progress"] = event.data
            elif kind == EventType.EXAMPLE_GENERATED:
                data["examples"].append(event.data)

    def frame(self) -> dict[str, Any] | None:
        last = self.last
        if last is None:
            return None
        return {
            "type": EventType.MESSAGE_SNAPSHOT,
            "runId": run_id_of(last),
            "sessionId": session_id_of(last),
            "seq": last.version,
            "position": last.position,
            "at": last.recorded_at,
            "data": {**self.data, "text": "".join(self.text)},
        }


def compact_frame(events: Sequence[RecordedEvent]) -> dict[str, Any] | None:
    """One ``message.snapshot`` frame folding ``events`` (``Compactor``), None if none fold."""
    compactor = Compactor()
    compactor.feed(events)
    return compactor.frame()


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final websocket text frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class FrameCache:
    """Each event is encoded once and shared by every subscriber that sends it.

    Both spellings are kept: the JSON text (both SSE wires) and the complete
    websocket frame, header included, so a websocket send is one
    ``transport.write`` of shared bytes. Keyed by global position (unique in
    one log); the newest entries cover every live subscriber, and one catching
    up from further back simply encodes again. Bounded in entries and in
    bytes: a few stored multi-megabyte payloads must not pin a cache's worth
    of them (a frame larger than the whole budget is not kept at all).
    """

    __slots__ = ("_frames", "bytes", "encoded", "hits", "max_bytes", "size")

    def __init__(self, size: int = 2048, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._frames: dict[int, tuple[str, bytes]] = {}
        self.size = size
        self.max_bytes = max_bytes
        #: bytes the cached frames hold (text and websocket frame)
        self.bytes = 0
        self.hits = 0
        self.encoded = 0

    def _entry(self, event: RecordedEvent) -> tuple[str, bytes]:
        entry = self._frames.get(event.position)
        if entry is not None:
            self.hits += 1
            return entry
        text = frame_text(event)
        entry = (text, ws_text_frame(text.encode()))
        self.encoded += 1
        cost = len(text) + len(entry[1])
        if cost > self.max_bytes:
            return entry
        frames = self._frames
        frames[event.position] = entry
        self.bytes += cost
        while len(frames) > self.size or self.bytes > self.max_bytes:
            old_text, old_frame = frames.pop(next(iter(frames)))
            self.bytes -= len(old_text) + len(old_frame)
        return entry

    def text(self, event: RecordedEvent) -> str:
        return self._entry(event)[0]

    def wire(self, event: RecordedEvent) -> bytes:
        return self._entry(event)[1]
