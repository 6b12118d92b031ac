"""Every number a client writes, fuzzed on a live server: never a 5xx, odd digits are refused.

The probe behind the issue "Trustworthy at the edges" found ``²`` and ``--5``
answered 500 in ``after=``, ``If-Match``, ``Last-Event-ID`` and ``offset=``,
Arabic-Indic digits read as numbers, and 23-digit offsets answered 200.
Here hypothesis writes into each numeric parameter and header of every
route that takes one: anything at all must never get a 5xx, and a number
that is not 1 to 18 ASCII digits (a sign, a non-ASCII digit, too many digits)
must get 400 (412 on ``If-Match``, where a tag that is not a version is a
failed precondition). The case count is printed (``-s``) for the closing note.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.torture.live import SESSIONS, Live, live_server

EXAMPLES = 120
ASCII_NUMBER = re.compile(r"[0-9]{1,18}")
counts: Counter[str] = Counter()


@dataclass(frozen=True)
class Target:
    """One numeric parameter or header: where the value goes, and what a bad number gets."""

    name: str
    #: (live server, run id, run token, value) -> method, path, headers
    build: Callable[[Live, str, str, str], tuple[str, str, dict[str, bytes]]]
    refused: int = 400


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def bearer(token: str) -> dict[str, bytes]:
    return {"Authorization": f"Bearer {token}".encode()}


def _history(name: str) -> Target:
    def build(live: Live, _run: str, _tok: str, value: str) -> tuple[str, str, dict[str, bytes]]:
        path = f"{SESSIONS}/{live.seeded_a.session_id}/events?{name}={q(value)}"
        return "GET", path, bearer(live.token_a)

    return Target(f"events {name}=", build)


def _as_of(live: Live, _run: str, _tok: str, value: str) -> tuple[str, str, dict[str, bytes]]:
    return "GET", f"{SESSIONS}/{live.seeded_a.session_id}?as_of={q(value)}", bearer(live.token_a)


def _if_match(live: Live, _run: str, _tok: str, value: str) -> tuple[str, str, dict[str, bytes]]:
    headers = {**bearer(live.token_a), "If-Match": value.encode()}
    return "PATCH", f"{SESSIONS}/{live.seeded_a.session_id}", headers


def _channel_after(
    live: Live, run: str, _tok: str, value: str
) -> tuple[str, str, dict[str, bytes]]:
    headers = {**bearer(live.token_a), "Accept": b"text/event-stream"}
    return "GET", f"/api/realtime/runs/{run}?after={q(value)}", headers


def _channel_last_event_id(
    live: Live, _run: str, _tok: str, value: str
) -> tuple[str, str, dict[str, bytes]]:
    headers = {
        **bearer(live.token_a),
        "Accept": b"text/event-stream",
        "Last-Event-ID": value.encode(),
    }
    return "GET", f"/api/realtime/sessions/{live.seeded_a.session_id}", headers


def _stream_last_event_id(
    _live: Live, run: str, token: str, value: str
) -> tuple[str, str, dict[str, bytes]]:
    headers = {**bearer(token), "Last-Event-ID": value.encode()}
    return "GET", f"/realtime/v1/streams/{run}/chat", headers


def _stream_timeout(
    _live: Live, run: str, token: str, value: str
) -> tuple[str, str, dict[str, bytes]]:
    headers = {**bearer(token), "Timeout-Seconds": value.encode()}
    return "GET", f"/realtime/v1/streams/{run}/chat", headers


def _offset(which: int) -> Target:
    def build(_live: Live, run: str, token: str, value: str) -> tuple[str, str, dict[str, bytes]]:
        offset = f"{value}_1" if which == 0 else f"1_{value}"
        query = f"offset={q(offset)}&handle=run-{run}&live=true&cursor=1"
        return "GET", f"/realtime/v1/runs/{run}?{query}", bearer(token)

    return Target(f"offset= ({'updatedAt' if which == 0 else 'seq'})", build)


TARGETS = [
    _history("after"),
    _history("limit"),
    Target("as_of=", _as_of),
    Target("If-Match", _if_match, refused=412),
    Target("channel after=", _channel_after),
    Target("channel Last-Event-ID", _channel_last_event_id),
    Target("stream Last-Event-ID", _stream_last_event_id),
    Target("stream Timeout-Seconds", _stream_timeout),
    _offset(0),
    _offset(1),
]

#: numbers this server must refuse: other scripts' digits, superscripts, signs, too many digits
digits_of_any_script = st.text(
    alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=25
)
bad_numbers = st.one_of(
    digits_of_any_script.filter(lambda s: ASCII_NUMBER.fullmatch(s) is None),
    st.integers(min_value=10**18, max_value=10**30).map(str),
    st.tuples(st.sampled_from(["-", "+", "--", "\u2212", " -"]), st.integers(0, 10**6)).map(
        lambda t: f"{t[0]}{t[1]}"
    ),
)
#: anything a client could put in a header or a query value
anything = st.text(alphabet=st.characters(exclude_categories=["Cc", "Cs"]), min_size=0, max_size=40)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Live, str, str]]:
    with live_server(
        tmp_path_factory.mktemp("numbers"),
        SESSIONSTREAM_OFFLINE_PACE_MS="0",
        SESSIONSTREAM_TRIGGER_POLL_S="0.05",  # a long-poll at the head answers at once
    ) as server:
        sid = server.seeded_a.session_id
        status, started, _ = server.call(
            server.token_a, "POST", f"{SESSIONS}/{sid}/turn", {"message": "hello"}
        )
        assert status == 200, started
        yield server, started["runId"], started["publicAccessToken"]
        print(f"\nnumbers fuzz: {sum(counts.values())} cases, no 5xx: {dict(counts)}")


def send(live: Live, method: str, path: str, headers: dict[str, bytes]) -> int:
    """The status of one request; the body of a stream that stays open is not waited for."""
    host, port = urllib.parse.urlsplit(live.base_url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        body = b'{"title": "fuzz"}' if method == "PATCH" else b""
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


def check(live: tuple[Live, str, str], target: Target, value: str, *, bad: bool) -> None:
    server, run, token = live
    status = send(server, *target.build(server, run, token, value))
    counts[target.name] += 1
    assert status < 500, (target.name, value, status)
    if bad:
        assert status == target.refused, (target.name, value, status)


@settings(
    max_examples=EXAMPLES * len(TARGETS),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=st.sampled_from(TARGETS), value=bad_numbers)
@example(target=TARGETS[0], value="²")
@example(target=TARGETS[3], value="--5")
@example(target=TARGETS[5], value="\u0663")  # ARABIC-INDIC DIGIT THREE
@example(target=TARGETS[9], value="9" * 23)
@example(target=TARGETS[6], value="²")
@example(target=TARGETS[3], value="²")
@example(target=TARGETS[7], value="\u0661\u0662")  # twelve, in Arabic-Indic digits
def test_a_number_that_is_not_ascii_digits_is_refused(
    live: tuple[Live, str, str], target: Target, value: str
) -> None:
    check(live, target, value, bad=True)


@settings(
    max_examples=EXAMPLES * len(TARGETS),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=st.sampled_from(TARGETS), value=st.one_of(anything, st.integers(0, 10**20).map(str)))
@example(target=TARGETS[3], value="²")
def test_no_value_of_a_numeric_field_gets_a_5xx(
    live: tuple[Live, str, str], target: Target, value: str
) -> None:
    check(live, target, value, bad=False)
