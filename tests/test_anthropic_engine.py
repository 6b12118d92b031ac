"""The anthropic engine against a local fake Messages API, through the real SDK and real
HTTP: directly, then end to end through the app (a turn over HTTP, its events over the
run's websocket), and ``doctor`` with the fake up and down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sessionstream.cli.main import main
from sessionstream.core.errors import ConfigError, EngineError
from sessionstream.core.settings import DEFAULT_ANTHROPIC_MODEL, Settings
from sessionstream.engines.anthropic_engine import AnthropicEngine, alternating
from sessionstream.engines.base import (
    DraftUpdate,
    ExampleInput,
    Message,
    SkeletonUpdate,
    StreamItem,
    TextDelta,
    TurnInput,
)
from sessionstream.engines.provider import shown_url
from sessionstream.server.app import make_engine
from tests.conftest import Api
from tests.fake_anthropic import (
    Behaviour,
    Error,
    FakeAnthropic,
    Hang,
    Raw,
    Reply,
    ToolUse,
    bad_key,
    overloaded,
    run_fake_anthropic,
)

pytest.importorskip("anthropic")

S = "/api/campaigns/ai-chat-sessions"
Doctor = Callable[[dict[str, str]], Awaitable[tuple[int, str]]]
MODEL = "claude-fake-1"
SKELETON: dict[str, Any] = {
    "hook": "Saw %company% is hiring SDRs",
    "value_proposition": "we cut ramp time in half",
    "call_to_action": "15-minute call next week?",
    "subject": "%first_name%, faster SDR ramp at %company%",
    "body": "Hi %first_name%,\n\n&&mention their growth&&\n\nWorth a call?",
    "blocks": [
        {
            "name": "growth",
            "instruction": "mention their growth",
            "fields": ["company"],
            "fallback": "Congrats on the growth at %company%.",
        }
    ],
}
DRAFT = {
    "subject": "%first_name%, faster SDR ramp at %company%",
    "body": "Hi %first_name%,\n\nCongrats on the growth at %company%.\n\nWorth a call?",
}
LEAD = {"lead_id": "L1", "first_name": "Ana", "company": "Acme"}


def new_engine(base_url: str, **kw: Any) -> AnthropicEngine:
    options: dict[str, Any] = {"base_url": base_url, "api_key": "sk-ant-test", "model": MODEL}
    return AnthropicEngine(**{**options, "timeout_s": 5.0, **kw})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[AnthropicEngine, FakeAnthropic]]:
    async with run_fake_anthropic() as (base_url, server):
        engine = new_engine(base_url)
        try:
            yield engine, server
        finally:
            await engine.aclose()


def turn_input(message: str = "Write an intro email for SDR leaders", **kw: Any) -> TurnInput:
    base: dict[str, Any] = {
        "message": message,
        "history": (Message("user", "hello"), Message("assistant", "Who is it for?")),
        "skeleton": None,
        "framework_version": 0,
        "draft_subject": None,
        "draft_body": None,
        "sample_leads": (LEAD,),
    }
    base.update(kw)
    return TurnInput(**base)


async def collect(engine: AnthropicEngine, inp: TurnInput | None = None) -> list[StreamItem]:
    return [item async for item in engine.turn(inp or turn_input())]


def text_of(items: list[StreamItem]) -> str:
    return "".join(i.text for i in items if isinstance(i, TextDelta))


# -- the Messages dialect -----------------------------------------------------------------


async def test_text_deltas_concatenate_to_the_reply(
    fake: tuple[AnthropicEngine, FakeAnthropic],
) -> None:
    engine, server = fake
    text = "Who are you writing to, and what should they do after reading?"
    server.script(Reply(text=text, piece=4))
    items = await collect(engine)
    assert all(isinstance(i, TextDelta) for i in items)
    assert len(items) > 5  # streamed in pieces, not buffered
    assert text_of(items) == text
    request = server.requests[0]
    assert request["stream"] is True and request["model"] == MODEL
    assert request["max_tokens"] > 0
    assert [t["name"] for t in request["tools"]] == ["update_skeleton", "update_draft"]
    assert request["tools"][0]["input_schema"]["required"][0] == "hook"
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert request["messages"][-1]["content"] == "Write an intro email for SDR leaders"
    assert "%first_name%" in request["system"] and "Acme" in request["system"]
    assert "sk-ant-test" in json.dumps(server.headers[0])  # the key given, not the env's


async def test_tool_input_is_assembled_from_partial_json(
    fake: tuple[AnthropicEngine, FakeAnthropic],
) -> None:
    engine, server = fake
    tools = (ToolUse("update_skeleton", SKELETON), ToolUse("update_draft", DRAFT))
    server.script(Reply(text="Here is a framework.", tools=tools, piece=3))
    items = await collect(engine)
    assert text_of(items) == "Here is a framework."
    assert [i for i in items if not isinstance(i, TextDelta)] == [
        SkeletonUpdate(SKELETON),
        DraftUpdate(subject=DRAFT["subject"], body=DRAFT["body"]),
    ]


async def test_variables_outside_the_allowed_list_are_removed(
    fake: tuple[AnthropicEngine, FakeAnthropic],
) -> None:
    engine, server = fake
    draft = {"subject": "Hi {{first_name}}", "body": "Hello %first_name% from %city%."}
    server.script(Reply(tools=(ToolUse("update_draft", draft),)))
    items = await collect(engine, turn_input(available_vars=("first_name",)))
    assert items == [DraftUpdate(subject="Hi %first_name%", body="Hello %first_name% from.")]


async def test_unknown_tool_is_ignored(fake: tuple[AnthropicEngine, FakeAnthropic]) -> None:
    engine, server = fake
    tools = (ToolUse("send_email", {"to": "x"}), ToolUse("update_draft", DRAFT))
    server.script(Reply(text="done", tools=tools))
    items = await collect(engine)
    assert [i for i in items if not isinstance(i, TextDelta)] == [
        DraftUpdate(subject=DRAFT["subject"], body=DRAFT["body"])
    ]


async def test_tool_input_cut_off_at_the_token_limit(
    fake: tuple[AnthropicEngine, FakeAnthropic],
) -> None:
    engine, server = fake
    cut = ToolUse("update_draft", '{"subject": "Hi", "bo')
    server.script(Reply(tools=(cut,), stop_reason="max_tokens"), Reply(tools=(cut,)))
    with pytest.raises(
        EngineError, match=r"update_draft \(the reply was cut off at the token limit\)"
    ):
        await collect(engine)
    with pytest.raises(EngineError, match=r"invalid JSON arguments for update_draft: ") as info:
        await collect(engine)  # the same broken JSON without max_tokens is not blamed on it
    assert f"(model {MODEL})" in info.value.message


def test_turns_alternate_and_start_with_the_user() -> None:
    chat = [
        Message("assistant", "Welcome back."),
        Message("user", "one"),
        Message("user", "two"),
        Message("assistant", "ok"),
    ]
    assert alternating(chat) == [
        {"role": "user", "content": "(continuing an earlier conversation)"},
        {"role": "assistant", "content": "Welcome back."},
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "ok"},
    ]


def example_input() -> ExampleInput:
    return ExampleInput(
        lead=LEAD, skeleton=SKELETON, draft_subject=DRAFT["subject"], draft_body=DRAFT["body"]
    )


async def test_example_writes_the_lead_email(fake: tuple[AnthropicEngine, FakeAnthropic]) -> None:
    engine, server = fake
    reply = {"subject": "Ana, faster SDR ramp at Acme", "body": "Hi Ana,\n\nWorth a call?"}
    server.script(Reply(text="```json\n" + json.dumps(reply) + "\n```"))
    result = await engine.example(example_input())
    assert (result.lead_id, result.subject, result.body) == ("L1", reply["subject"], reply["body"])
    request = server.requests[0]
    assert not request.get("stream") and "tools" not in request
    assert '"lead_id": "L1"' in request["messages"][0]["content"]


async def test_example_failures_name_the_endpoint(
    fake: tuple[AnthropicEngine, FakeAnthropic],
) -> None:
    engine, server = fake
    server.script(Reply(text="Sure! Here is your email: Hi Ana..."), overloaded())
    with pytest.raises(EngineError, match="did not reply with a JSON object") as info:
        await engine.example(example_input())
    assert f"{engine.endpoint.base_url} (model {MODEL})" in info.value.message
    with pytest.raises(EngineError, match=r"overloaded \(HTTP 529: Overloaded\)"):
        await engine.example(example_input())


# -- every failure names the URL and the model, and what to check -------------------------

FAILURES: list[tuple[str, Behaviour, str, str]] = [
    ("overload", overloaded(), r"overloaded \(HTTP 529: Overloaded\)", "Try again"),
    ("bad key", bad_key(), r"API key refused \(HTTP 401: invalid x-api-key\)", "ANTHROPIC_API_KEY"),
    (
        "key without access",
        Error(403, "permission_error", "Your API key does not have permission"),
        r"access denied \(HTTP 403: Your API key does not have permission\)",
        f"Check that the key in ANTHROPIC_API_KEY may use model {MODEL}.",
    ),
    (
        "rate limit",
        Error(429, "rate_limit_error", "Number of request tokens has exceeded your limit"),
        r"rate limited \(HTTP 429: Number of request tokens",
        "Wait and try again",
    ),
    (
        "unknown model",
        Error(404, "not_found_error", "model: claude-nope"),
        r"not found \(HTTP 404: model: claude-nope\)",
        "SESSIONSTREAM_MODEL",
    ),
    (
        "error event mid-stream",
        Reply(text="a reply that breaks off", error_after_events=5),
        r"overloaded in the middle of the reply \(Overloaded\)",
        "Try again",
    ),
    (
        "stream cut before message_stop",
        Reply(text="a reply that is cut", cut_after_events=6),
        r"malformed stream \(the stream ended before message_stop\)",
        "ANTHROPIC_BASE_URL",
    ),
    (
        "connection dropped mid-reply",
        Reply(text="a reply whose connection drops", drop_after_events=6),
        r"connection lost in the middle of the reply",
        "check the network or proxy",
    ),
    (
        "not JSON",
        Raw('event: message_start\ndata: {"type": "message_start", "message": {oops\n\n'),
        r"malformed stream \(Expecting property name",
        "Check that ANTHROPIC_BASE_URL points at the Anthropic Messages API",
    ),
    (
        "an event that is not an object",
        Raw("event: message_start\ndata: [1, 2]\n\n"),
        r"malformed stream \(a chunk part that is not a JSON object: \[1, 2\]\)",
        "ANTHROPIC_BASE_URL",
    ),
    (
        "a text delta that is not text",
        Raw(
            "event: content_block_delta\n"
            'data: {"type": "content_block_delta", "index": 0, '
            '"delta": {"type": "text_delta", "text": 3}}\n\n'
        ),
        r"malformed stream \(text is not a string: 3\)",
        "ANTHROPIC_BASE_URL",
    ),
    (
        "a block event without an index",
        Raw('event: content_block_stop\ndata: {"type": "content_block_stop"}\n\n'),
        r"malformed stream \(a content block event without an index",
        "ANTHROPIC_BASE_URL",
    ),
    (
        "an HTML page",
        Raw("<html><body>Welcome</body></html>", "text/html"),
        r"malformed stream \(the stream ended before message_stop\)",
        "(without /v1: the SDK adds it)",
    ),
    ("hang after the headers", Hang(), r"sent nothing for 0\.3s", "SESSIONSTREAM_ENGINE_TIMEOUT_S"),
    (
        "hang mid-reply",
        Reply(text="a reply that stops", hang_after_events=5),
        r"sent nothing for 0\.3s in the middle of its reply",
        "SESSIONSTREAM_ENGINE_TIMEOUT_S",
    ),
]


@pytest.mark.parametrize(
    ("behaviour", "what", "advice"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_a_provider_failure_says_what_where_and_what_to_check(
    behaviour: Behaviour, what: str, advice: str
) -> None:
    async with run_fake_anthropic() as (base_url, server):
        engine = new_engine(base_url, timeout_s=0.3)
        server.script(behaviour)
        started = time.monotonic()
        try:
            with pytest.raises(EngineError, match=what) as info:
                await collect(engine)
        finally:
            await engine.aclose()
        assert time.monotonic() - started < 3
        message = info.value.message
        assert message.startswith(f"Anthropic API at {base_url} (model {MODEL}): "), message
        assert advice in message
        assert len(server.requests) == 1  # no silent retries


async def test_unreachable_and_unresolvable_providers() -> None:
    async with run_fake_anthropic() as (base_url, _):
        pass  # the port is free again
    for url, why in ((base_url, "connection refused"), ("http://no-such-host.invalid", "host")):
        engine = new_engine(url, timeout_s=2.0)
        try:
            with pytest.raises(EngineError) as info:
                await collect(engine)
        finally:
            await engine.aclose()
        assert info.value.message.startswith(f"Anthropic API at {url} (model {MODEL}): cannot")
        assert why in info.value.message and "Check ANTHROPIC_BASE_URL" in info.value.message


async def test_a_reason_never_shows_credentials_in_the_url() -> None:
    """A run's reason reaches the session's user; a gateway URL may carry a secret."""
    async with run_fake_anthropic() as (base_url, server):
        port = base_url.rsplit(":", 1)[1]
        secret_url = f"http://gateway:s3cret@127.0.0.1:{port}"
        engine = new_engine(secret_url, timeout_s=2.0)
        server.script(bad_key())
        try:
            with pytest.raises(EngineError, match="API key refused") as info:
                await collect(engine)
        finally:
            await engine.aclose()
    assert info.value.message.startswith(f"Anthropic API at http://127.0.0.1:{port} (model ")
    assert "s3cret" not in str(info.value.message) + str(info.value.details)
    assert shown_url("https://u:p@[::1]:8443/v1/?token=t0ken") == "https://[::1]:8443/v1"


# -- building it -------------------------------------------------------------------------


async def test_from_settings_and_make_engine() -> None:
    env = {
        "SESSIONSTREAM_ENGINE": "anthropic",
        "ANTHROPIC_API_KEY": "sk-ant-x",
        "SESSIONSTREAM_ENGINE_TIMEOUT_S": "12.5",
    }
    settings = Settings.from_env(env)
    assert settings.model == DEFAULT_ANTHROPIC_MODEL  # the engine's default, not OpenAI's
    engine = make_engine(settings)
    try:
        assert isinstance(engine, AnthropicEngine)
        assert (engine.model, engine.timeout_s, engine.idle_timeout_s) == (
            DEFAULT_ANTHROPIC_MODEL,
            12.5,
            12.5,
        )
        assert engine.endpoint.base_url == "https://api.anthropic.com"
        assert engine._client.api_key == "sk-ant-x"
    finally:
        await engine.aclose()
    local = Settings.from_env(
        {**env, "ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000/"}
    )
    engine = make_engine(Settings.from_env({**env, "SESSIONSTREAM_MODEL": "claude-x"}))
    try:
        assert isinstance(engine, AnthropicEngine) and engine.model == "claude-x"
    finally:
        await engine.aclose()
    engine = make_engine(local)  # a server that needs no key
    try:
        assert isinstance(engine, AnthropicEngine)
        assert engine.endpoint.base_url == "http://127.0.0.1:4000"
    finally:
        await engine.aclose()
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
        make_engine(Settings.from_env({"SESSIONSTREAM_ENGINE": "anthropic"}))


# -- end to end through the app ----------------------------------------------------------


async def start_turn(api: Api, sid: str, message: str) -> tuple[str, str]:
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": message}, headers=api.h())
    assert r.status == 200, await r.text()
    body = await r.json()
    return body["runId"], body["publicAccessToken"]


async def run_frames(api: Api, run_id: str, token: str) -> list[dict[str, Any]]:
    """Every frame of the run's websocket channel, until it closes as finished."""
    frames: list[dict[str, Any]] = []
    url = f"/api/realtime/runs/{run_id}?token={token}"
    async with api.client.ws_connect(url) as ws:
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frames.append(json.loads(msg.data))
        assert (ws.close_code, frames[-1]["type"]) in (
            (1000, "run.completed"),
            (1000, "run.failed"),
        )
    return frames


async def session_row(api: Api, sid: str) -> dict[str, Any]:
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    row: dict[str, Any] = (await r.json())["session"]
    return row


async def test_a_turn_over_http_streams_claude_and_applies_its_tools(make_api: Any) -> None:
    async with run_fake_anthropic() as (base_url, fake):
        api: Api = await make_api(engine=new_engine(base_url), engine_timeout_s=5)
        sid = (await api.session())["id"]
        text = "Here is a framework for SDR leaders; the draft follows it."
        tools = (ToolUse("update_skeleton", SKELETON), ToolUse("update_draft", DRAFT))
        fake.script(Reply(text=text, tools=tools, piece=4, pace_s=0.01))
        run_id, token = await start_turn(api, sid, "Write an intro email for SDR leaders")
        frames = await run_frames(api, run_id, token)
        types = [f["type"] for f in frames]
        assert types[-1] == "run.completed", frames[-1]
        deltas = [f["data"]["text"] for f in frames if f["type"] == "message.delta"]
        assert len(deltas) > 3 and "".join(deltas) == text  # streamed, not one lump
        assert types.index("skeleton.updated") > types.index("message.delta")
        skeleton = next(f["data"] for f in frames if f["type"] == "skeleton.updated")
        assert skeleton == {"skeleton": SKELETON, "framework_version": 1}
        row = await session_row(api, sid)
        assert row["task_status"] is None and row["skeleton"] == SKELETON
        assert (row["draft_subject"], row["draft_body"]) == (DRAFT["subject"], DRAFT["body"])
        assert row["messages"][-1] == {"role": "assistant", "content": text}
        assert fake.requests[0]["messages"][-1]["content"] == "Write an intro email for SDR leaders"


APP_FAILURES: list[tuple[str, Behaviour, str]] = [
    ("error event mid-stream", Reply(text="partial", error_after_events=4), "in the middle"),
    ("overload", overloaded(), "overloaded (HTTP 529: Overloaded)"),
    ("bad key", bad_key(), "API key refused (HTTP 401: invalid x-api-key)"),
    ("hang after the headers", Hang(), "sent nothing for 0.4s"),
    ("hang mid-reply", Reply(text="a reply that stops", hang_after_events=5), "sent nothing"),
]


@pytest.mark.parametrize(
    ("behaviour", "words"), [f[1:] for f in APP_FAILURES], ids=[f[0] for f in APP_FAILURES]
)
async def test_a_failed_claude_turn_says_why_and_frees_the_session(
    make_api: Any, behaviour: Behaviour, words: str
) -> None:
    async with run_fake_anthropic() as (base_url, fake):
        # the engine's own timeout is longer than the run's: the run layer's reason for a
        # hang must name the provider too, as every other failure does
        engine = new_engine(base_url, timeout_s=30.0)
        api: Api = await make_api(engine=engine, engine_timeout_s=0.4)
        sid = (await api.session())["id"]
        fake.script(behaviour, Reply(text="Back again."))
        run_id, token = await start_turn(api, sid, "hello")
        frames = await run_frames(api, run_id, token)
        failed = frames[-1]
        assert failed["type"] == "run.failed", failed
        reason = failed["data"]["error"]
        assert reason.startswith(f"Anthropic API at {base_url} (model {MODEL}): "), reason
        assert words in reason
        row = await session_row(api, sid)
        assert row["task_status"] is None
        assert [m["role"] for m in row["messages"]] == ["user"]  # no partial reply kept
        r = await api.client.get(f"/api/runs/{run_id}", headers=api.h())
        assert (await r.json())["run"]["error"] == reason
        run_id, token = await start_turn(api, sid, "again")  # the session is free
        assert (await run_frames(api, run_id, token))[-1]["type"] == "run.completed"


# -- doctor -------------------------------------------------------------------------------


@pytest.fixture
def doctor(tmp_path: Path, monkeypatch: Any, capsys: Any) -> Doctor:
    """``sessionstream doctor`` with the anthropic engine and ``env`` on top; it runs in a
    thread (it runs its own event loop) while the fake serves on the test's loop."""

    async def run(env: dict[str, str]) -> tuple[int, str]:
        for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "SESSIONSTREAM_MODEL"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("SESSIONSTREAM_ENGINE", "anthropic")
        monkeypatch.setenv("SESSIONSTREAM_SECRET", "s" * 40)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        db = tmp_path / "doctor.db"
        db.touch(0o600)  # doctor reads a store, never creates one; an empty file is an empty log
        code = await asyncio.to_thread(main, ["doctor", "--db", str(db)])
        return code, capsys.readouterr().out

    return run


async def test_doctor_checks_the_provider(doctor: Doctor) -> None:
    async with run_fake_anthropic() as (base_url, fake):
        env = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-doctor"}
        code, out = await doctor({**env, "SESSIONSTREAM_MODEL": MODEL})
        assert code == 0, out
        assert f"OK    provider  {base_url} answers and serves model {MODEL}" in out
        assert "healthy" in out
        code, out = await doctor({**env, "SESSIONSTREAM_MODEL": "claude-nope"})
        assert code == 1, out
        assert f"FAIL  provider  Anthropic API at {base_url} (model claude-nope): not found" in out
        fake.refuse = bad_key()
        code, out = await doctor({**env, "SESSIONSTREAM_MODEL": MODEL})
        assert code == 1 and "API key refused (HTTP 401" in out, out
        assert "sk-ant-doctor" in json.dumps(fake.headers[0])
    code, out = await doctor({**env, "SESSIONSTREAM_MODEL": MODEL})  # now down
    assert code == 1, out
    assert f"FAIL  provider  Anthropic API at {base_url} (model {MODEL}): cannot reach it" in out
    assert "1 problem(s)" in out
    code, out = await doctor({})  # no key and no URL: refused before any request
    assert code == 1 and "FAIL  engine    anthropic: ANTHROPIC_API_KEY is not set" in out, out
