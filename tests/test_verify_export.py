"""An auditor with a signed checkpoint catches what ``verify`` cannot.

Each tampering below keeps every hash chain intact (the forger recomputes
them), so the copy imported with ``--unverified`` passes today's ``verify``;
``verify-export`` against the checkpoint saved beforehand refuses it, and so
does ``import`` without ``--unverified``. No server and no database are open
while ``verify-export`` runs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore.checkpoint import Checkpoint, Signer, Verifier
from sessionstream.eventstore.model import GENESIS_HASH, event_hash
from tests.test_maintenance import cli, copy_db, golden  # noqa: F401 (golden is a fixture)

Line = dict[str, Any]


def rechain(events: list[Line]) -> list[Line]:
    """What a forger does after an edit: recompute every stream's chain."""
    heads: dict[str, str] = {}
    for e in events:
        e["hash"] = event_hash(
            heads.get(e["stream_id"], GENESIS_HASH),
            stream_id=e["stream_id"],
            version=e["version"],
            event_id=e["event_id"],
            type=e["type"],
            data=e["data"],
            metadata=e["metadata"],
            recorded_at=e["recorded_at"],
        )
        heads[e["stream_id"]] = e["hash"]
    return events


def renumber(events: list[Line]) -> list[Line]:
    for position, e in enumerate(events, 1):
        e["position"] = position
    return events


def forge(events: list[Line]) -> list[Line]:
    """The probe's forgery: one user's token hash (or name) edited, the chain recomputed."""
    target = next(e for e in events if e["stream_id"].startswith("user-") and e["version"] > 1)
    key = next(k for k, v in target["data"].items() if isinstance(v, str) and k != "id")
    target["data"][key] = "f" * len(target["data"][key])
    return rechain(events)


def truncate(events: list[Line]) -> list[Line]:
    return events[:-3]


def remove_stream(events: list[Line]) -> list[Line]:
    doomed = next(e["stream_id"] for e in events if e["stream_id"].startswith("run-"))
    return renumber([e for e in events if e["stream_id"] != doomed])


def reorder(events: list[Line]) -> list[Line]:
    i = next(
        i
        for i in range(len(events) - 1)
        if events[i]["stream_id"] != events[i + 1]["stream_id"]
        and events[i]["stream_id"].startswith("user-")
    )
    events[i], events[i + 1] = events[i + 1], events[i]
    return renumber(events)


TAMPERINGS: dict[str, Callable[[list[Line]], list[Line]]] = {
    "forgery with the chain recomputed": forge,
    "truncation of the newest events": truncate,
    "removal of a stream": remove_stream,
    "reordering": reorder,
}


@pytest.fixture
def audited(golden: Any, tmp_path: Path, capsys: Any) -> dict[str, Path]:  # noqa: F811
    """A database, its verifier key and an export with the checkpoint saved apart."""
    db = copy_db(golden, tmp_path)
    vkey, cp, dump = tmp_path / "log.vkey", tmp_path / "cp.note", tmp_path / "log.ndjson"
    code, out, _ = cli(capsys, "checkpoint", "--db", str(db), "--public-key")
    assert code == 0
    vkey.write_text(out)
    assert cli(capsys, "export", "--db", str(db), "--out", str(dump))[0] == 0
    cp.write_text(json.loads(dump.read_text().splitlines()[0])["checkpoint"])
    return {"db": db, "vkey": vkey, "cp": cp, "dump": dump, "dir": tmp_path}


def verify_export(capsys: Any, paths: dict[str, Path], file: Path, *extra: str) -> tuple[int, str]:
    code, out, _ = cli(
        capsys,
        "verify-export",
        str(file),
        "--checkpoint",
        str(paths["cp"]),
        "--public-key",
        str(paths["vkey"]),
        *extra,
    )
    return code, out


def test_an_untouched_export_verifies(audited: dict[str, Path], capsys: Any) -> None:
    code, out = verify_export(capsys, audited, audited["dump"])
    assert code == 0, out
    assert out.startswith("OK ")


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampering_passes_verify_but_not_verify_export(
    audited: dict[str, Path], capsys: Any, name: str
) -> None:
    header, *lines = audited["dump"].read_text().splitlines()
    events = TAMPERINGS[name]([json.loads(line) for line in lines])
    forged = audited["dir"] / "forged.ndjson"
    forged.write_text("\n".join([header, *(json.dumps(e) for e in events)]) + "\n")

    # today's check: imported (told to), the copy verifies clean
    copy = audited["dir"] / "copy.db"
    code, _, err = cli(capsys, "import", str(forged), "--db", str(copy), "--unverified")
    assert code == 0, err
    code, out, _ = cli(capsys, "verify", "--db", str(copy))
    assert code == 0, f"{name}: {out}"

    # the auditor's check refuses it
    code, out = verify_export(capsys, audited, forged)
    assert code == 1, f"{name}: {out}"
    assert "FAIL" in out

    # and import refuses it unless told otherwise, writing nothing
    refused = audited["dir"] / "refused.db"
    code, _, err = cli(capsys, "import", str(forged), "--db", str(refused))
    assert code == 2 and "verify-export" in err, name
    assert not refused.exists()


def test_a_later_export_against_the_old_checkpoint(audited: dict[str, Path], capsys: Any) -> None:
    """The worked example: checkpoint CP0 kept, history grows, the new export and its
    checkpoint CP1 are checked, and CP0 must be a prefix of CP1."""
    db = audited["db"]
    cp0 = audited["cp"]
    code, _, _ = cli(capsys, "users", "create", "later", "--db", str(db))
    assert code == 0
    code, note, _ = cli(capsys, "checkpoint", "--db", str(db))
    assert code == 0 and note.endswith("\n")
    cp1 = audited["dir"] / "cp1.note"
    cp1.write_text(note)
    later = audited["dir"] / "later.ndjson"
    assert cli(capsys, "export", "--db", str(db), "--out", str(later))[0] == 0
    code, out, _ = cli(
        capsys, "verify-export", str(later), "--checkpoint", str(cp1),
        "--public-key", str(audited["vkey"]), "--previous", str(cp0),
    )  # fmt: skip
    assert code == 0, out
    # the old export cannot stand for the new checkpoint: the newest events are missing
    code, out, _ = cli(
        capsys, "verify-export", str(audited["dump"]), "--checkpoint", str(cp1),
        "--public-key", str(audited["vkey"]),
    )  # fmt: skip
    assert code == 1 and "removed" in out
    # a checkpoint signed by another key is refused
    other = audited["dir"] / "other.vkey"
    other.write_text(Signer.generate("elsewhere").vkey())
    code, out, _ = cli(
        capsys, "verify-export", str(later), "--checkpoint", str(cp1), "--public-key", str(other)
    )
    assert code == 1 and "signature" in out


def test_a_scoped_export_proves_each_event(
    golden: Any,  # noqa: F811
    audited: dict[str, Path],
    capsys: Any,
) -> None:
    session = golden[1]["other"]
    scoped = audited["dir"] / "session.ndjson"
    args = ("export", "--db", str(audited["db"]), "--session", session, "--out", str(scoped))
    assert cli(capsys, *args)[0] == 0
    header, *lines = scoped.read_text().splitlines()
    note = json.loads(header)["checkpoint"]
    cp = audited["dir"] / "scoped-cp.note"
    cp.write_text(note)
    paths = {**audited, "cp": cp}
    code, out = verify_export(capsys, paths, scoped)
    assert code == 0, out
    # an event edited, its chain recomputed, its proof kept: not in the signed tree
    events = [json.loads(line) for line in lines]
    events[0]["data"]["title"] = "forged"
    proofs = [e.pop("proof") for e in events]
    for e, proof in zip(rechain(events), proofs, strict=True):
        e["proof"] = proof
    scoped.write_text("\n".join([header, *(json.dumps(e) for e in events)]) + "\n")
    code, out = verify_export(capsys, paths, scoped)
    assert code == 1 and "not in the checkpoint's tree" in out


# -- the signed note, as the reference implementation writes it ------------------------------
# golang.org/x/mod/sumdb/note's documented example (key, text and signed note): no Python
# package for C2SP signed notes runs here (aics-tlog needs Python 3.12, this is 3.11), so
# the reference implementation's published known answer stands in for it.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_notes_and_keys_match_the_reference_implementation_byte_for_byte() -> None:
    signer = Signer.from_skey(GO_SKEY)
    assert signer.skey() == GO_SKEY
    assert signer.vkey() == GO_VKEY
    assert signer.sign_text(GO_TEXT) == GO_NOTE
    assert Verifier.from_vkey(GO_VKEY).verified_text(GO_NOTE) == GO_TEXT
    with pytest.raises(ValidationFailed):
        Verifier.from_vkey(GO_VKEY).verified_text(GO_NOTE.replace("problem,", "problem;"))


def test_a_checkpoint_note_is_the_c2sp_checkpoint_format() -> None:
    signer = Signer.generate("example.com/log")
    root = bytes(range(32))
    note = signer.sign(Checkpoint("example.com/log", 12, root))
    body, signatures = note.split("\n\n")
    assert body.split("\n") == ["example.com/log", "12", base64.b64encode(root).decode()]
    name, blob = signatures.removeprefix("\u2014 ").rstrip("\n").split(" ")
    assert name == "example.com/log" and len(base64.b64decode(blob)) == 4 + 64
    assert Verifier.from_vkey(signer.vkey()).open(note) == Checkpoint("example.com/log", 12, root)
