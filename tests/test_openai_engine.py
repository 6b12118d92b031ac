"""The openai engine against a local fake provider, through the real SDK and real HTTP;
its failures as a run's reason through the app, and ``doctor`` with the fake up and down."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sessionstream.cli.main import main
from sessionstream.core.errors import ConfigError, EngineError
from sessionstream.core.settings import DEFAULT_MODEL, Settings
from sessionstream.engines.base import (
    DraftUpdate,
    ExampleInput,
    Message,
    SkeletonUpdate,
    StreamItem,
    TextDelta,
    TurnInput,
)
from sessionstream.engines.openai_engine import OpenAIEngine
from sessionstream.server.app import make_engine
from tests.conftest import Api
from tests.fake_openai import (
    Behaviour,
    Error,
    FakeOpenAI,
    Hang,
    Raw,
    Reply,
    ToolCall,
    rate_limited,
    run_fake_openai,
)

pytest.importorskip("openai")

S = "/api/campaigns/ai-chat-sessions"

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


@pytest.fixture
async def fake() -> AsyncIterator[tuple[OpenAIEngine, FakeOpenAI]]:
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", model="fake-model", timeout_s=5.0)
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


async def collect(engine: OpenAIEngine, inp: TurnInput | None = None) -> list[StreamItem]:
    return [item async for item in engine.turn(inp or turn_input())]


async def test_text_deltas_concatenate_to_the_reply(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    text = "Who are you writing to, and what should they do after reading?"
    server.script(Reply(content=text, piece=4))
    items = await collect(engine)
    assert all(isinstance(i, TextDelta) for i in items)
    assert len(items) > 5  # streamed in pieces, not buffered
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == text
    request = server.requests[0]
    assert request["stream"] is True and request["model"] == "fake-model"
    assert {t["function"]["name"] for t in request["tools"]} == {"update_skeleton", "update_draft"}
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    system = request["messages"][0]["content"]
    assert "%first_name%" in system and "Acme" in system  # allowed vars, sample leads


async def test_tool_calls_are_assembled_from_split_deltas(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    server.script(
        Reply(
            content="Here is a framework.",
            tool_calls=(ToolCall("update_skeleton", SKELETON), ToolCall("update_draft", DRAFT)),
            piece=3,
        )
    )
    items = await collect(engine)
    text = "".join(i.text for i in items if isinstance(i, TextDelta))
    assert text == "Here is a framework."
    structured = [i for i in items if not isinstance(i, TextDelta)]
    assert structured == [
        SkeletonUpdate(SKELETON),
        DraftUpdate(subject=DRAFT["subject"], body=DRAFT["body"]),
    ]


async def test_variables_outside_the_allowed_list_are_removed(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    draft = {"subject": "Hi {{first_name}}", "body": "Hello %first_name% from %city%."}
    server.script(Reply(tool_calls=(ToolCall("update_draft", draft),)))
    items = await collect(engine, turn_input(available_vars=("first_name",)))
    assert items == [DraftUpdate(subject="Hi %first_name%", body="Hello %first_name% from.")]


async def test_followup_context_reaches_the_prompt(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    server.script(Reply(content="ok"))
    seq = {"position": 2, "total_nodes": 3, "previous": [{"subject": "Intro"}]}
    await collect(engine, turn_input(skeleton=SKELETON, framework_version=2, sequence_context=seq))
    system = server.requests[0]["messages"][0]["content"]
    assert "follow-up" in system and '"total_nodes": 3' in system
    assert "framework version 2" in system


async def test_rate_limit_is_an_engine_error(fake: tuple[OpenAIEngine, FakeOpenAI]) -> None:
    engine, server = fake
    server.script(rate_limited())
    with pytest.raises(EngineError, match="rate limited") as info:
        await collect(engine)
    assert "Rate limit reached" in info.value.message
    assert len(server.requests) == 1  # no silent retries


async def test_server_error_is_an_engine_error(fake: tuple[OpenAIEngine, FakeOpenAI]) -> None:
    engine, server = fake
    server.script(Error(500, "upstream exploded"))
    with pytest.raises(EngineError, match="HTTP 500: upstream exploded"):
        await collect(engine)
    assert len(server.requests) == 1


async def test_error_event_inside_the_stream(fake: tuple[OpenAIEngine, FakeOpenAI]) -> None:
    engine, server = fake
    server.script(Reply(content="partial reply", stream_error_after=3))
    with pytest.raises(EngineError, match=r"in the middle of the reply \(fake stream failure\)"):
        await collect(engine)


async def test_unreachable_provider() -> None:
    async with run_fake_openai() as (base_url, _):
        pass  # the port is free again
    for url, why in ((base_url, "connection refused"), ("http://no-such-host.invalid/v1", "host")):
        engine = OpenAIEngine(base_url=url, api_key="dummy", timeout_s=2.0)
        try:
            with pytest.raises(EngineError, match="cannot reach it") as info:
                await collect(engine)
        finally:
            await engine.aclose()
        message = info.value.message
        assert message.startswith(f"OpenAI-compatible provider at {url} (model {DEFAULT_MODEL}):")
        assert why in message and "Check OPENAI_BASE_URL" in message


async def test_hang_before_headers_times_out() -> None:
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", timeout_s=0.3)
        server.script(Hang())
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"sent nothing for 0\.3s\. Check that it is up"):
            await collect(engine)
        assert time.monotonic() - started < 3
        await engine.aclose()


async def test_hang_mid_stream_times_out() -> None:
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", timeout_s=5, idle_timeout_s=0.3)
        server.script(Reply(content="a long reply that stops", piece=2, hang_after_chunks=4))
        received: list[StreamItem] = []
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"sent nothing for 0\.3s in the middle of its"):
            async for item in engine.turn(turn_input()):
                received.append(item)
        assert time.monotonic() - started < 3
        assert received == [TextDelta("a "), TextDelta("lo"), TextDelta("ng")]
        await engine.aclose()


async def test_a_slow_but_steady_stream_is_not_a_hang() -> None:
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", timeout_s=5, idle_timeout_s=0.3)
        server.script(Reply(content="slow and steady", piece=3, pace_s=0.1))
        items = await collect(engine)
        assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "slow and steady"
        await engine.aclose()


async def test_malformed_tool_json_is_an_engine_error(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    server.script(Reply(content="ok", tool_calls=(ToolCall("update_skeleton", '{"hook": "x",'),)))
    with pytest.raises(EngineError, match="invalid JSON arguments for update_skeleton"):
        await collect(engine)


async def test_truncated_tool_json_names_the_token_limit(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    call = ToolCall("update_draft", '{"subject": "Hi", "bo')
    server.script(Reply(tool_calls=(call,), finish_reason="length"))
    with pytest.raises(EngineError, match="token limit"):
        await collect(engine)


async def test_draft_without_body_is_an_engine_error(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    server.script(Reply(tool_calls=(ToolCall("update_draft", {"subject": "Hi"}),)))
    with pytest.raises(EngineError, match="update_draft without string subject and body"):
        await collect(engine)


async def test_unknown_tool_is_ignored(fake: tuple[OpenAIEngine, FakeOpenAI]) -> None:
    engine, server = fake
    server.script(
        Reply(
            content="done",
            tool_calls=(ToolCall("send_email", {"to": "x"}), ToolCall("update_draft", DRAFT)),
        )
    )
    items = await collect(engine)
    assert [i for i in items if not isinstance(i, TextDelta)] == [
        DraftUpdate(subject=DRAFT["subject"], body=DRAFT["body"])
    ]


def example_input(lead: dict[str, Any] | None = None) -> ExampleInput:
    return ExampleInput(
        lead=lead or LEAD,
        skeleton=SKELETON,
        draft_subject=DRAFT["subject"],
        draft_body=DRAFT["body"],
    )


async def test_example_writes_the_lead_email(fake: tuple[OpenAIEngine, FakeOpenAI]) -> None:
    engine, server = fake
    reply = {"subject": "Ana, faster SDR ramp at Acme", "body": "Hi Ana,\n\nWorth a call?"}
    server.script(Reply(content="```json\n" + json.dumps(reply) + "\n```"))
    result = await engine.example(example_input())
    assert (result.lead_id, result.subject, result.body) == ("L1", reply["subject"], reply["body"])
    assert result.missing == ()
    request = server.requests[0]
    assert not request.get("stream")
    assert '"lead_id": "L1"' in request["messages"][1]["content"]


async def test_example_resolves_leftover_variables_and_reports_missing(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    server.script(Reply(content='{"subject": "Hi %first_name%", "body": "At %company%."}'))
    result = await engine.example(example_input({"lead_id": "L2", "first_name": "Bo"}))
    assert (result.subject, result.body) == ("Hi Bo", "At your team.")
    assert result.missing == ("company",)


async def test_example_rejects_a_reply_that_is_not_json(
    fake: tuple[OpenAIEngine, FakeOpenAI],
) -> None:
    engine, server = fake
    server.script(Reply(content="Sure! Here is your email: Hi Ana..."))
    with pytest.raises(EngineError, match="did not reply with a JSON object"):
        await engine.example(example_input())


async def test_example_maps_provider_errors(fake: tuple[OpenAIEngine, FakeOpenAI]) -> None:
    engine, server = fake
    server.script(rate_limited(), Error(503, "overloaded"))
    with pytest.raises(EngineError, match="rate limited"):
        await engine.example(example_input())
    with pytest.raises(EngineError, match="HTTP 503: overloaded"):
        await engine.example(example_input())


async def test_example_hang_times_out() -> None:
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", timeout_s=0.3)
        server.script(Hang())
        with pytest.raises(EngineError, match=r"sent nothing for 0\.3s"):
            await engine.example(example_input())
        await engine.aclose()


async def test_from_settings() -> None:
    local = Settings.from_env(
        {
            "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "SESSIONSTREAM_MODEL": "llama3.1",
            "SESSIONSTREAM_ENGINE_TIMEOUT_S": "12.5",
        }
    )
    engine = OpenAIEngine.from_settings(local)
    try:
        assert (engine.model, engine.timeout_s, engine.idle_timeout_s) == ("llama3.1", 12.5, 12.5)
        assert engine.base_url == "http://127.0.0.1:11434/v1"  # no key needed for local servers
    finally:
        await engine.aclose()
    defaults = OpenAIEngine.from_settings(Settings.from_env({"OPENAI_API_KEY": "sk-test"}))
    try:
        assert (defaults.model, defaults.timeout_s) == (DEFAULT_MODEL, 60.0)
        assert defaults._client.api_key == "sk-test"
    finally:
        await defaults.aclose()
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIEngine.from_settings(Settings.from_env({}))


@pytest.mark.parametrize(
    ("raw", "problem"), [("soon", "is not a valid number"), ("0", "must be more than 0")]
)
def test_a_bad_engine_timeout_is_refused_with_the_settings(raw: str, problem: str) -> None:
    """The engine's own parser refused a timeout of 0 that the settings let through;
    the settings refuse it now, for the engine and the run layer alike."""
    with pytest.raises(ConfigError, match=f"SESSIONSTREAM_ENGINE_TIMEOUT_S='{raw}' {problem}"):
        Settings.from_env({"OPENAI_API_KEY": "k", "SESSIONSTREAM_ENGINE_TIMEOUT_S": raw})


async def test_make_engine_builds_the_configured_openai_engine() -> None:
    settings = Settings(engine="openai", openai_api_key="sk-x", model="m", engine_timeout_s=3.0)
    engine = make_engine(settings)
    try:
        assert isinstance(engine, OpenAIEngine)
        assert (engine.model, engine.timeout_s, engine.base_url) == ("m", 3.0, None)
    finally:
        await engine.aclose()


# -- every failure names the URL and the model, and what to check -------------------------

FAILURES: list[tuple[str, Behaviour, str, str]] = [
    (
        "bad key",
        Error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
        r"API key refused \(HTTP 401: Incorrect API key provided\)",
        "Check OPENAI_API_KEY.",
    ),
    (
        "key without access",
        Error(403, "Project does not have access to model `m-1`", "invalid_request_error"),
        r"access denied \(HTTP 403: Project does not have access to model `m-1`\)",
        "Check that the key in OPENAI_API_KEY may use model m-1.",
    ),
    (
        "unknown model",
        Error(404, "The model `x` does not exist", "invalid_request_error", "model_not_found"),
        r"not found \(HTTP 404: The model `x` does not exist\)",
        "SESSIONSTREAM_MODEL names a model it serves",
    ),
    ("rate limit", rate_limited(), r"rate limited \(HTTP 429: Rate limit reached", "try again"),
    ("overload", Error(503, "overloaded"), r"overloaded \(HTTP 503: overloaded\)", "Try again"),
    ("server error", Error(500, "boom"), r"server error \(HTTP 500: boom\)", "Try again"),
    (
        "not JSON",
        Raw("data: {not json\n\n"),
        r"malformed stream \(Expecting property name",
        "Check that OPENAI_BASE_URL points at an OpenAI-compatible chat-completions API",
    ),
    (
        "an HTML page",
        Raw("<html><body>Welcome</body></html>", "text/html"),
        r"malformed stream \(the stream ended before the reply was complete\)",
        "OPENAI_BASE_URL",
    ),
    (
        "a chunk that is not an object",
        Raw("data: 5\n\n"),
        r"malformed stream \(a chunk part that is not a JSON object: 5\)",
        "OPENAI_BASE_URL",
    ),
    (
        "choices that are not a list",
        Raw('data: {"choices": {"0": 1}}\n\n'),
        r"malformed stream \(choices is not a list",
        "OPENAI_BASE_URL",
    ),
    (
        "content that is not text",
        Raw('data: {"choices": [{"delta": {"content": 7}}]}\n\n'),
        r"malformed stream \(content is not a string: 7\)",
        "OPENAI_BASE_URL",
    ),
    (
        "stream cut off",
        Reply(content="a reply that is cut", cut_after_chunks=4),
        r"malformed stream \(the stream ended before the reply was complete\)",
        "OPENAI_BASE_URL",
    ),
    (
        "connection dropped mid-reply",
        Reply(content="a reply whose connection drops", drop_after_chunks=4),
        r"connection lost in the middle of the reply",
        "check the network or proxy",
    ),
    ("hang", Hang(), r"sent nothing for 0\.3s", "SESSIONSTREAM_ENGINE_TIMEOUT_S"),
]


@pytest.mark.parametrize(
    ("behaviour", "what", "advice"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_a_provider_failure_says_what_where_and_what_to_check(
    behaviour: Behaviour, what: str, advice: str
) -> None:
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", model="m-1", timeout_s=0.3)
        server.script(behaviour)
        try:
            with pytest.raises(EngineError, match=what) as info:
                await collect(engine)
        finally:
            await engine.aclose()
        message = info.value.message
        assert message.startswith(f"OpenAI-compatible provider at {base_url} (model m-1): ")
        assert advice in message
        assert len(server.requests) == 1  # no silent retries


async def test_a_base_url_without_v1_says_so() -> None:
    """The likeliest wrong URL: the server's root, where the SDK's paths find nothing."""
    async with run_fake_openai() as (base_url, _):
        root = base_url.removesuffix("/v1")
        engine = OpenAIEngine(base_url=root, api_key="dummy", model="m-1", timeout_s=2.0)
        try:
            with pytest.raises(EngineError) as info:
                await collect(engine)
        finally:
            await engine.aclose()
    assert info.value.message == (
        f"OpenAI-compatible provider at {root} (model m-1): not found (HTTP 404: 404: Not Found). "
        "Check that OPENAI_BASE_URL is the API's base URL (it usually ends in /v1) and that "
        "SESSIONSTREAM_MODEL names a model it serves."
    )
    assert info.value.details == {"base_url": root, "model": "m-1", "status": 404}


async def test_the_openai_api_is_named_when_no_url_is_set() -> None:
    engine = OpenAIEngine(api_key="sk-x", model="m-1")
    try:
        assert engine.endpoint.base_url == "https://api.openai.com/v1"
    finally:
        await engine.aclose()


async def test_check_lists_the_models() -> None:
    async with run_fake_openai() as (base_url, server):
        for model, served in (("fake-model", True), ("llama3.1", True), ("gpt-9", False)):
            engine = OpenAIEngine(base_url=base_url, api_key="dummy", model=model)
            try:
                if served:
                    assert await engine.check() == f"{base_url} answers and serves model {model}"
                else:
                    with pytest.raises(EngineError, match="model not served") as info:
                        await engine.check()
                    assert "it lists 2: fake-model, llama3.1:latest" in info.value.message
            finally:
                await engine.aclose()
        server.refuse = Error(401, "Incorrect API key provided")
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", model="fake-model")
        try:
            with pytest.raises(EngineError, match="API key refused"):
                await engine.check()
        finally:
            await engine.aclose()


# -- doctor and the app -------------------------------------------------------------------


async def test_doctor_checks_the_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in a thread, as doctor runs its own event loop while the fake serves on ours."""

    async def doctor(base_url: str) -> tuple[int, str]:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("SESSIONSTREAM_SECRET", "s" * 40)
        monkeypatch.setenv("SESSIONSTREAM_ENGINE", "openai")
        monkeypatch.setenv("SESSIONSTREAM_MODEL", "fake-model")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        db = tmp_path / "d.db"
        db.touch(0o600)  # doctor reads a store, never creates one; an empty file is an empty log
        code = await asyncio.to_thread(main, ["doctor", "--db", str(db)])
        return code, capsys.readouterr().out

    async with run_fake_openai() as (base_url, _):
        code, out = await doctor(base_url)
        assert code == 0, out
        assert "OK    engine    openai (model fake-model)" in out
        assert f"OK    provider  {base_url} answers and serves model fake-model" in out
    code, out = await doctor(base_url)
    assert code == 1, out
    assert (
        f"FAIL  provider  OpenAI-compatible provider at {base_url} (model fake-model): "
        "cannot reach it (connection refused)"
    ) in out


async def test_a_wrong_url_fails_the_run_with_the_reason_and_frees_the_session(
    make_api: Any,
) -> None:
    async with run_fake_openai() as (base_url, fake):
        root = base_url.removesuffix("/v1")
        engine = OpenAIEngine(base_url=root, api_key="dummy", model="m-1", timeout_s=5)
        api: Api = await make_api(engine=engine)
        sid = (await api.session())["id"]
        r = await api.client.post(f"{S}/{sid}/turn", json={"message": "hi"}, headers=api.h())
        assert r.status == 200, await r.text()
        run_id = (await r.json())["runId"]
        for _ in range(200):
            r = await api.client.get(f"/api/runs/{run_id}", headers=api.h())
            run = (await r.json())["run"]
            if run["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.02)
        assert run["status"] == "failed", run
        assert run["error"].startswith(f"OpenAI-compatible provider at {root} (model m-1): ")
        assert "HTTP 404" in run["error"] and "/v1" in run["error"]
        r = await api.client.get(f"{S}/{sid}", headers=api.h())
        assert (await r.json())["session"]["task_status"] is None
        assert fake.requests == []  # the requests went to the root, where nothing answers


async def test_a_cancelled_read_stays_a_cancel_and_not_a_timeout() -> None:
    """The idle watch cancels a read only when it has waited the whole timeout; the
    caller's own cancel (a run cancelled mid-reply) goes through as a cancel."""
    async with run_fake_openai() as (base_url, server):
        engine = OpenAIEngine(base_url=base_url, api_key="dummy", timeout_s=5, idle_timeout_s=0.3)
        server.script(Reply(content="a reply that stops", piece=2, hang_after_chunks=3))
        reading = asyncio.ensure_future(collect(engine))
        await asyncio.sleep(0.1)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await asyncio.sleep(0.4)  # past the idle timeout: nothing fires into this task
        await engine.aclose()
