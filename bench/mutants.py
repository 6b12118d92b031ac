"""The mutation score of each core module, from a finished ``mutmut run`` (``make mutants``).

mutmut keeps one ``<file>.meta`` per mutated file under ``mutants/``: the exit
code of the tests against each mutant. This turns them into the table of
``docs/explanation/mutation-testing.md``: per module, how many mutants the fast
tests detect (killed or timed out) out of those that can be detected at all.

Equivalent mutants (no test can tell them from the original, because the
program means the same) are listed in ``EQUIVALENT`` with the reason, and left
out of the denominator; nothing else is.

    python -m bench.mutants --label after   # merges into bench/results/mutants.json

A run narrowed to some modules updates their rows and keeps the others', so one
module can be re-measured after its tests change.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

MODULES = (
    "projections/session.py",
    "projections/run.py",
    "projections/account.py",
    "projections/campaign.py",
    "eventstore/hub.py",
    "eventstore/groupcommit.py",
    "server/ratelimit.py",
    "engines/templates.py",
    "eventstore/verify.py",
    "eventstore/integrity.py",
)

#: mutmut's exit codes (mutmut/stats.py); a timeout counts as detected, as in the issue
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update(dict.fromkeys((36, 24, -24, 152, 255), "timeout"))
STATUS.update(dict.fromkeys((-11, -9), "segfault"))
DETECTED = frozenset({"killed", "timeout", "segfault"})

_S = "sessionstream.projections.session.x_fold_session_events__mutmut_"
_T = "sessionstream.engines.templates."
_I = "sessionstream.eventstore.integrity."
_V = "sessionstream.eventstore.verify."
_COPY = (
    "fold_session_events only copies the state once more: the result is the same, "
    "the fold is slower (a copy per event instead of one per fold)"
)
#: mutant -> why no test can catch it (the program means the same either way). The
#: names are mutmut's and follow the code: after a change to one of these functions,
#: check with `mutmut show <name>` that each still names the mutant described.
EQUIVALENT: dict[str, str] = {
    _S + "2": "owned = None at the start: it is reset before first use, as mine starts False",
    _S + "3": "mine = None at the start: as falsy as False",
    _S + "9": "mine = None after a first event (created or forked): " + _COPY,
    _S + "10": "mine = False after a first event (created or forked): " + _COPY,
    _S + "20": "mine = None after the first copy: " + _COPY,
    _S + "21": "mine = False after the first copy: " + _COPY,
    "sessionstream.eventstore.hub.xǁ_Listenerǁ__init____mutmut_4": (
        "lagged = None instead of False: only ever tested for truth"
    ),
    "sessionstream.eventstore.hub.xǁHubǁpublish__mutmut_14": (
        "position >= published_position: an equal position assigns the same value"
    ),
    "sessionstream.projections.session.x_forked_row__mutmut_11": (
        "copy.copy for deepcopy of the fork's content: the fold never changes a nested "
        "object in place (a list it extends is copied first, _own), so sharing the event's "
        "nested objects changes no state and no event"
    ),
    "sessionstream.projections.session.x__own__mutmut_5": (
        "owned.add(None): the list is copied again before each append, same result, slower"
    ),
    **{
        name: "typing.cast does nothing at run time: its type argument is never read"
        for name in (
            "sessionstream.projections.session.x__own__mutmut_6",
            "sessionstream.projections.session.x__own__mutmut_10",
            "sessionstream.projections.session.x__own__mutmut_11",
            "sessionstream.projections.session.x__own__mutmut_12",
            "sessionstream.projections.session.x__step__mutmut_15",
            "sessionstream.projections.run.x_apply_run__mutmut_83",
            "sessionstream.projections.run.x_apply_run__mutmut_101",
            "sessionstream.projections.run.x_apply_run__mutmut_105",
            "sessionstream.projections.run.x_apply_run__mutmut_106",
            "sessionstream.projections.run.x_apply_run__mutmut_107",
        )
    },
    "sessionstream.server.ratelimit.xǁRateLimiterǁcheck__mutmut_25": (
        "popitem(last=None): None is as false as False, the oldest key goes"
    ),
    **{
        _I + f"xǁKeptǁadd__mutmut_{n}": (
            "when the kept problems are cut to the lowest MAX_PROBLEMS (a few adds sooner "
            "or later): the same lowest are kept, and memory stays bounded"
        )
        for n in (5, 6, 7)
    },
    _I + "x_event_rank__mutmut_2": (
        "position or 1: every problem ranked so is an event's, with a position >= 1"
    ),
    **{
        _V + f"x_by_stream__mutmut_{n}": (
            "max_bytes None or left out: a page unbounded in bytes holds the same events; "
            "the bound is memory, measured by tests/test_maintenance_memory.py and "
            "bench/maintenance.py"
        )
        for n in (7, 11)
    },
    **{
        _V + name: "the limit left out: the store's default is 1000 events, PAGE too"
        for name in (
            "x_by_stream__mutmut_9",
            "x_gaps__mutmut_9",
            "x_in_log_order__mutmut_20",
            "xǁRowsǁ_later_events__mutmut_22",
        )
    },
    _V + "x_verify_store__mutmut_12": "StreamFold(hold=None): as false as False",
    **{
        _V + f"x_verify_store__mutmut_{n}": (
            "the last stream's documents unsorted: they are one per kind (per-stream "
            "projections), each matched against its own kind's rows, so their order changes "
            "nothing"
        )
        for n in (41, 43, 45)
    },
    _V + "x_in_log_order__mutmut_11": (
        "Refold(snapshot_every=1): verify reads the refold's documents, never its snapshots"
    ),
    _V + "xǁStoredRowsǁpeek__mutmut_10": (
        "scan_docs's default of 100 rows instead of DOC_PAGE (25): larger pages of the "
        "same rows in the same order"
    ),
    _V + "xǁStoredRowsǁ__init____mutmut_6": (
        "_at = 1 at the start: the first peek reads a page and sets it to 0 either way"
    ),
    _V + "xǁStoredRowsǁ__init____mutmut_8": "_done = None at the start: as false as False",
    **{
        _V + name: (
            "allow_gaps=None: gaps() is only read when gaps are not allowed, None is as false"
        )
        for name in ("x_gaps__mutmut_14", "x_verify_store__mutmut_64")
    },
    _V + "xǁRowsǁ_add__mutmut_6": "doc_kind or 'XXXX': a document's problem always names its kind",
    **{
        _V + f"xǁRowsǁ_later_events__mutmut_{n}": (
            "getattr(projection, 'prefix', <default>): per_stream() is only true when the "
            "projection has a str prefix, so the default is never used"
        )
        for n in (5, 8, 11)
    },
    **{
        _V + name: (
            "the moved row's events read past the later head: such an event moves the row "
            "past that head too (it is read after them), so the round is retried either way"
        )
        for name in (
            "xǁRowsǁ_settle__mutmut_7",
            "xǁRowsǁ_later_events__mutmut_13",
            "xǁRowsǁ_later_events__mutmut_15",
            "xǁRowsǁ_later_events__mutmut_20",
            "xǁRowsǁ_later_events__mutmut_23",
        )
    },
    **{
        _V + f"xǁRowsǁ_settle__mutmut_{n}": (
            "fold.get(key, None): the row moved past the checked head, so an event after it "
            "folds into the row and the fold always holds the key"
        )
        for n in (22, 24)
    },
    _T + "x__as_text__mutmut_3": "str() of a str is the same text: only the shortcut is lost",
    _T + "x_clean_value__mutmut_15": (
        "ch > ' ' instead of >=: the one character between, the space, is kept by isspace()"
    ),
    **{
        _T + name: "table.get(name, None) or a hole: None is as false as '', both give the hole"
        for name in (
            "x_render__mutmut_23",
            "x_render__mutmut_25",
            "x_restrict_to__mutmut_18",
            "x_restrict_to__mutmut_20",
        )
    },
}


def module_of(mutant: str) -> str:
    """``sessionstream.projections.session.x_apply__mutmut_3`` -> ``projections/session.py``."""
    parts = mutant.split(".")
    return "/".join(parts[1:-1]) + ".py"


def score(mutants_dir: Path) -> dict[str, dict[str, Any]]:
    by_module: dict[str, Counter[str]] = {m: Counter() for m in MODULES}
    equivalent: dict[str, list[str]] = {m: [] for m in MODULES}
    for meta in sorted(mutants_dir.glob("sessionstream/**/*.py.meta")):
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for mutant, code in codes.items():
            module = module_of(mutant)
            if module not in by_module:
                continue
            status = "not checked" if code is None else STATUS.get(code, "suspicious")
            if mutant in EQUIVALENT and status not in DETECTED:
                equivalent[module].append(mutant)
                status = "equivalent"
            by_module[module][status] += 1
    table: dict[str, dict[str, Any]] = {}
    for module, counts in by_module.items():
        total = sum(counts.values())
        detected = sum(counts[s] for s in DETECTED)
        countable = total - counts["equivalent"]
        table[module] = {
            "mutants": total,
            "detected": detected,
            "equivalent": counts["equivalent"],
            "survived": counts["survived"],
            "no_tests": counts["no tests"],
            "not_checked": counts["not checked"],
            "score": round(100 * detected / countable, 1) if countable else None,
            "equivalent_mutants": sorted(equivalent[module]),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="before | after (merged by label)")
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/mutants.json"))
    parser.add_argument("--note", default="", help="how this run was made, kept with it")
    args = parser.parse_args(argv)
    table = score(args.mutants)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("tool", "mutmut 3.8.1 (make mutants)")
    results.setdefault("equivalent", {})
    results["equivalent"] = dict(EQUIVALENT)  # the source of truth is the table above
    previous = results.get("runs", {}).get(args.label, {})
    # a run narrowed to some modules (a copy of the tree with fewer source_paths, or
    # `mutmut run 'sessionstream.engines.templates.*'`) keeps the rows of the others
    kept = [
        m
        for m, row in table.items()
        if row["not_checked"] == row["mutants"] and m in previous.get("modules", {})
    ]
    for module in kept:
        table[module] = previous["modules"][module]
    if kept and args.note:  # the note is of the modules measured now, not of the run
        for module in table.keys() - kept:
            table[module]["note"] = args.note
    note = previous.get("note", "") if kept else args.note
    results.setdefault("runs", {})[args.label] = {"note": note, "modules": table}
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    width = max(len(m) for m in MODULES)
    print(f"{'module':{width}}  mutants  detected  equiv  score   ({args.label})")
    for module, row in table.items():
        pct = "-" if row["score"] is None else f"{row['score']:.1f}%"
        print(
            f"{module:{width}}  {row['mutants']:7}  {row['detected']:8}  "
            f"{row['equivalent']:5}  {pct:>6}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
