"""Checking an export against a signed checkpoint, with no server and no database.

``verify`` checks a store against itself, so anyone who can rewrite the
file can recompute the chains and pass it (an independent probe did: one
token hash edited, its chain recomputed, ``verify`` said OK). An auditor
who kept a signed checkpoint needs no such trust:

- every event's hash is recomputed from its content and its stream's chain;
- a whole-log export must hold positions ``1..N`` with ``N`` at least the
  checkpoint's size, and the tree over its first ``size`` events must have
  the checkpoint's root: an edit (chain recomputed or not), a truncated tail,
  a removed stream and a reordering each change that root or the count;
- a scoped export carries an inclusion proof per event against the signed
  checkpoint in its first line, which must be the checkpoint given;
- ``previous``: an older checkpoint must be a prefix of the given one (the
  whole-log export yields its root directly).

Pure over already-read lines: ``sessionstream verify-export`` and ``import``
feed it files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore import merkle
from sessionstream.eventstore.checkpoint import Checkpoint, Verifier, parse_body
from sessionstream.eventstore.model import GENESIS_HASH, RecordedEvent, event_hash

#: the key of an export's first line when it carries a checkpoint
HEADER = "checkpoint"
#: the key an event line carries its inclusion proof under (scoped exports)
PROOF = "proof"


@dataclass(slots=True)
class Export:
    """An export as read: its signed checkpoint (if any), events and their proofs."""

    note: str | None = None
    #: a campaign's or a session's export: its events carry inclusion proofs
    scoped: bool = False
    events: list[RecordedEvent] = field(default_factory=list)
    proofs: dict[int, list[bytes]] = field(default_factory=dict)


def header_line(note: str, *, scoped: bool) -> str:
    return json.dumps({HEADER: note, "scoped": scoped}, separators=(",", ":"))


def proof_field(path: Iterable[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in path]


def read_export(lines: Iterable[str]) -> Export:
    """Parse an export's lines (events already checked by ``transfer.check``)."""
    out = Export()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if number == 1 and HEADER in obj:
                out.note = str(obj[HEADER])
                out.scoped = bool(obj.get("scoped", False))
                continue
            event = RecordedEvent.from_json(obj)
            if PROOF in obj:
                out.proofs[event.position] = [base64.b64decode(h) for h in obj[PROOF]]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValidationFailed(f"line {number} is not an exported event: {exc}") from exc
        out.events.append(event)
    return out


def chain_problems(events: Iterable[RecordedEvent]) -> list[str]:
    """Each event's hash recomputed from its content and its stream's previous hash."""
    problems: list[str] = []
    heads: dict[str, tuple[int, str]] = {}
    for e in events:
        version, prev = heads.get(e.stream_id, (0, GENESIS_HASH))
        if e.version != version + 1:
            problems.append(f"position {e.position}: {e.stream_id} version {e.version} follows "
                            f"{version}")  # fmt: skip
        expected = event_hash(
            prev,
            stream_id=e.stream_id,
            version=e.version,
            event_id=e.event_id,
            type=e.type,
            data=e.data,
            metadata=e.metadata,
            recorded_at=e.recorded_at,
        )
        if expected != e.hash:
            problems.append(f"position {e.position}: the hash does not match the event's content")
        heads[e.stream_id] = (e.version, e.hash)
    return problems


def _open(note: str, verifier: Verifier | None, what: str) -> Checkpoint:
    if verifier is None:
        body, _, _ = note.partition("\n\n")
        return parse_body(body + "\n")
    try:
        return verifier.open(note)
    except ValidationFailed as exc:
        raise ValidationFailed(f"{what}: {exc.message}") from exc


def verify_export(
    export: Export,
    verifier: Verifier | None,
    checkpoint: str | None = None,
    previous: str | None = None,
) -> list[str]:
    """What is wrong with ``export`` against ``checkpoint`` (its own when None); [] if nothing.

    Without a ``verifier`` the signatures go unchecked (``import`` without
    ``--public-key``): the export is still checked against its own checkpoint.
    """
    note = checkpoint if checkpoint is not None else export.note
    if note is None:
        return ["the export carries no checkpoint and none was given"]
    try:
        cp = _open(note, verifier, "the checkpoint")
        old = _open(previous, verifier, "the previous checkpoint") if previous else None
        own = _open(export.note, verifier, "the export's checkpoint") if export.note else None
    except ValidationFailed as exc:
        return [exc.message]
    problems = chain_problems(export.events)
    if old is not None and (old.origin != cp.origin or old.size > cp.size):
        problems.append(f"the previous checkpoint ({old.size}) is not older than this one "
                        f"({cp.size}) of the same log")  # fmt: skip
    if export.scoped:
        problems += _scoped(export, cp, own)
        if old is not None and old.size != cp.size:
            problems.append("--previous needs a whole-log export (a scoped one proves "
                            "inclusion only)")  # fmt: skip
        return problems
    leaves: list[bytes] = []
    for expected, e in enumerate(export.events, 1):
        if e.position != expected:
            problems.append(f"position {e.position} where {expected} was due: events were "
                            "removed or reordered")  # fmt: skip
            return problems
        leaves.append(merkle.event_leaf(e.hash))
    for label, c in (("the checkpoint", cp), ("the export's checkpoint", own),
                     ("the previous checkpoint", old)):  # fmt: skip
        if c is None:
            continue
        if len(leaves) < c.size:
            problems.append(f"{label} covers {c.size} events, the export holds {len(leaves)}: "
                            "the newest were removed")  # fmt: skip
        elif merkle.root_of(leaves[: c.size]) != c.root:
            problems.append(f"the export's first {c.size} events do not have {label}'s root: "
                            "history was edited, reordered or replaced")  # fmt: skip
    return problems


def _scoped(export: Export, cp: Checkpoint, own: Checkpoint | None) -> list[str]:
    if own is None or own != cp:
        return ["a scoped export proves inclusion in the checkpoint it carries: pass that one"]
    problems: list[str] = []
    for e in export.events:
        path = export.proofs.get(e.position)
        if path is None:
            problems.append(f"position {e.position} carries no inclusion proof")
        elif not merkle.verify_inclusion(
            e.position - 1, cp.size, merkle.event_leaf(e.hash), path, cp.root
        ):
            problems.append(f"position {e.position} is not in the checkpoint's tree")
    return problems
