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

Pure over lines read one at a time (an export of any size is checked in the
memory of one line and the streams' heads): ``sessionstream verify-export``
and ``import`` feed it files.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore import merkle
from sessionstream.eventstore.checkpoint import Checkpoint, Verifier, parse_body
from sessionstream.eventstore.model import GENESIS_HASH, RecordedEvent, event_hash

#: the key of an export's first line when it carries a checkpoint
HEADER = "checkpoint"
#: the key an event line carries its inclusion proof under (scoped exports)
PROOF = "proof"


def header_line(note: str, *, scoped: bool) -> str:
    return json.dumps({HEADER: note, "scoped": scoped}, separators=(",", ":"))


def proof_field(path: Iterable[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in path]


#: problems an audit spells out; counting goes on past it
MAX_PROBLEMS = 1000


@dataclass(slots=True)
class Audit:
    """What is wrong with an export (empty when nothing), and how many events it holds."""

    problems: list[str] = field(default_factory=list)
    #: problems found, including those past ``MAX_PROBLEMS``
    count: int = 0
    events: int = 0

    def add(self, problem: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def parse_line(number: int, line: str) -> tuple[RecordedEvent, list[bytes] | None]:
    """One exported event and its inclusion proof, if it carries one."""
    try:
        obj = json.loads(line)
        event = RecordedEvent.from_json(obj)
        proof = [base64.b64decode(h) for h in obj[PROOF]] if PROOF in obj else None
    except (ValueError, TypeError, KeyError) as exc:
        raise ValidationFailed(f"line {number} is not an exported event: {exc}") from exc
    return event, proof


def read_header(lines: Iterator[str]) -> tuple[str | None, bool, Iterator[tuple[int, str]]]:
    """The export's signed checkpoint and scope, and its event lines (numbered)."""
    numbered = ((n, line) for n, line in enumerate(lines, 1) if line.strip())
    first = next(numbered, None)
    if first is None:
        return None, False, numbered
    try:
        obj = json.loads(first[1])
    except ValueError as exc:
        raise ValidationFailed(f"line {first[0]} is not an exported event: {exc}") from exc
    if first[0] == 1 and isinstance(obj, dict) and HEADER in obj:
        return str(obj[HEADER]), bool(obj.get("scoped", False)), numbered
    return None, False, itertools.chain([first], numbered)


@dataclass(slots=True)
class Chains:
    """Each event's hash recomputed from its content and its stream's previous hash.

    An export is in position order, so every stream's head is held: a few dozen
    bytes a stream, where the events themselves are never held."""

    heads: dict[str, tuple[int, str]] = field(default_factory=dict)

    def feed(self, e: RecordedEvent, audit: Audit) -> None:
        version, prev = self.heads.get(e.stream_id, (0, GENESIS_HASH))
        if e.version != version + 1:
            audit.add(f"position {e.position}: {e.stream_id} version {e.version} follows "
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
            audit.add(f"position {e.position}: the hash does not match the event's content")
        self.heads[e.stream_id] = (e.version, e.hash)


def _open(note: str, verifier: Verifier | None, what: str) -> Checkpoint:
    if verifier is None:
        body, _, _ = note.partition("\n\n")
        return parse_body(body + "\n")
    try:
        return verifier.open(note)
    except ValidationFailed as exc:
        raise ValidationFailed(f"{what}: {exc.message}") from exc


def audit_export(
    lines: Iterable[str],
    verifier: Verifier | None,
    checkpoint: str | None = None,
    previous: str | None = None,
) -> Audit:
    """What is wrong with an export against ``checkpoint`` (its own when None).

    Without a ``verifier`` the signatures go unchecked (``import`` without
    ``--public-key``): the export is still checked against its own checkpoint.
    One pass over the lines, holding no event: a whole-log export's tree grows
    a ``merkle.Frontier`` (one hash per set bit of its size) and its root is
    taken as each checkpoint's size goes by; a scoped export's proofs are
    checked line by line. A line that is not an event raises ``ValidationFailed``.
    """
    note_in_file, scoped, numbered = read_header(iter(lines))
    note = checkpoint if checkpoint is not None else note_in_file
    audit = Audit()
    if note is None:
        audit.add("the export carries no checkpoint and none was given")
        return audit
    try:
        cp = _open(note, verifier, "the checkpoint")
        old = _open(previous, verifier, "the previous checkpoint") if previous else None
        own = _open(note_in_file, verifier, "the export's checkpoint") if note_in_file else None
    except ValidationFailed as exc:
        audit.add(exc.message)
        return audit
    named = (
        ("the checkpoint", cp),
        ("the export's checkpoint", own),
        ("the previous checkpoint", old),
    )
    labelled = [(label, c) for label, c in named if c is not None]
    wrong_proof = scoped and (own is None or own != cp)
    tree, roots, broken = merkle.Frontier(), {0: merkle.EMPTY_ROOT}, False
    chains, later = Chains(), Audit()  # chain problems first, then the tree's, as reported
    for number, line in numbered:
        event, proof = parse_line(number, line)
        audit.events += 1
        chains.feed(event, audit)
        if scoped:
            if wrong_proof:
                continue
            if proof is None:
                later.add(f"position {event.position} carries no inclusion proof")
            elif not merkle.verify_inclusion(
                event.position - 1, cp.size, merkle.event_leaf(event.hash), proof, cp.root
            ):
                later.add(f"position {event.position} is not in the checkpoint's tree")
        elif not broken:
            if event.position != tree.size + 1:
                later.add(f"position {event.position} where {tree.size + 1} was due: events "
                          "were removed or reordered")  # fmt: skip
                broken = True
                continue
            tree.append(merkle.event_leaf(event.hash), [])
            if any(c.size == tree.size for _, c in labelled):
                roots[tree.size] = tree.root()
    if old is not None and (old.origin != cp.origin or old.size > cp.size):
        audit.add(f"the previous checkpoint ({old.size}) is not older than this one "
                  f"({cp.size}) of the same log")  # fmt: skip
    if scoped:
        if wrong_proof:
            audit.add(
                "a scoped export proves inclusion in the checkpoint it carries: pass that one"
            )
        if old is not None and old.size != cp.size:
            later.add("--previous needs a whole-log export (a scoped one proves "
                      "inclusion only)")  # fmt: skip
    elif not broken:
        for label, c in labelled:
            if tree.size < c.size:
                later.add(f"{label} covers {c.size} events, the export holds {tree.size}: "
                          "the newest were removed")  # fmt: skip
            elif roots[c.size] != c.root:
                later.add(f"the export's first {c.size} events do not have {label}'s root: "
                          "history was edited, reordered or replaced")  # fmt: skip
    for problem in later.problems:
        audit.add(problem)
    audit.count += later.count - len(later.problems)
    return audit
