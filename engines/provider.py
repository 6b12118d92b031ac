"""What the engines that call a model provider share: where they call, how long they wait,
and how a failure reads.

A wrong key, URL or model is the likeliest first failure with a real model, and the
SDKs' own words for it ("Error code: 404", "Connection error.") name neither the URL nor
the model. So every failure of a provider engine becomes one ``EngineError`` that reads

    <provider> at <base URL> (model <model>): <what failed> (<its words>). <what to check>

whatever raised it: the SDK (both SDKs are generated from the same template, so their
exception classes share names and meaning), the socket underneath, a timeout, a stream
that breaks off, or model output that breaks the contract. The run layer turns it into
``run.failed`` with that reason; ``doctor`` prints the same words for its probe.

The client never retries on its own: a retried hang looks like a slow model, and the run
layer is the one place that decides what a failure means.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sessionstream.core.errors import EngineError
from sessionstream.engines.base import ExampleInput, ExampleResult, StreamItem, TurnInput
from sessionstream.engines.contract import (
    EXAMPLE_SYSTEM,
    MAX_DETAIL,
    example_prompt,
    example_result,
)

#: Servers that need no key (Ollama, vLLM, a proxy, a fake) ignore it; the SDKs insist on one.
LOCAL_API_KEY = "sk-local-no-key"
#: ``doctor`` asks the provider one cheap question and waits at most this long for the answer
CHECK_TIMEOUT_S = 10.0
#: what to do about a slow provider, said wherever one times out
_SLOW = "Check that it is up; a slow model may need a larger SESSIONSTREAM_ENGINE_TIMEOUT_S."

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a provider engine sends its requests, and the settings a user would fix."""

    provider: str  # "OpenAI-compatible provider", "Anthropic API"
    base_url: str
    model: str
    url_var: str  # the variable that sets base_url
    key_var: str  # the variable that sets the API key
    dialect: str  # "an OpenAI-compatible chat-completions API", for a wrong-URL hint
    url_hint: str = ""  # what a right base URL looks like, e.g. " (it ends in /v1)"

    def failure(self, what: str, advice: str, *, status: int | None = None) -> EngineError:
        return EngineError(
            f"{self.provider} at {self.base_url} (model {self.model}): {what}. {advice}",
            details={"base_url": self.base_url, "model": self.model, "status": status},
        )

    def about(self, exc: EngineError) -> EngineError:
        """``exc`` (the model broke the contract) said of this endpoint."""
        details = exc.details if isinstance(exc.details, dict) else {}
        return EngineError(
            f"{self.provider} at {self.base_url} (model {self.model}): {exc.message}",
            details={"base_url": self.base_url, "model": self.model, **details},
        )

    def silent(self, seconds: float, *, mid_reply: bool = False) -> EngineError:
        during = " in the middle of its reply" if mid_reply else ""
        return self.failure(f"sent nothing for {seconds:g}s{during}", _SLOW)

    def slow_example(self, seconds: float) -> EngineError:
        return self.failure(f"took longer than {seconds:g}s for a lead", _SLOW)

    def malformed(self, detail: str) -> EngineError:
        return self.failure(
            f"sent a malformed stream ({detail[:MAX_DETAIL]})",
            f"Check that {self.url_var} points at {self.dialect}{self.url_hint}.",
        )

    def unreachable(self, cause: BaseException) -> EngineError:
        return self.failure(
            f"cannot reach it ({_why(cause)})",
            f"Check {self.url_var} and that the server is running and reachable from here.",
        )

    def answered(self, status: int, detail: str, kind: str | None = None) -> EngineError:
        """An HTTP error status, with the provider's own message and error type."""
        said = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
        if status == 401:
            what, advice = "API key refused", f"Check {self.key_var}."
        elif status == 403:
            what = "access denied"
            advice = f"Check that the key in {self.key_var} may use model {self.model}."
        elif status == 404:
            what = "not found"
            advice = (
                f"Check that {self.url_var} is the API's base URL{self.url_hint} and that "
                "SESSIONSTREAM_MODEL names a model it serves."
            )
        elif status == 429:
            what, advice = "rate limited", "Wait and try again, or raise the account's limits."
        elif status in (503, 529) or kind == "overloaded_error":
            what, advice = "overloaded", "Try again in a minute."
        elif status in (400, 422):
            what = "request refused"
            advice = "Check that SESSIONSTREAM_MODEL is a chat model that can stream and use tools."
        elif status >= 500:
            what, advice = "server error", "Try again; if it persists, check the provider's status."
        else:
            what, advice = (
                "unexpected answer",
                f"Check that {self.url_var} points at {self.dialect}.",
            )
        return self.failure(f"{what} ({said})", advice, status=status)

    def broke_off(self, detail: str, kind: str | None = None) -> EngineError:
        """An error the provider reported inside a stream it had started."""
        what = "overloaded" if kind == "overloaded_error" else "error"
        return self.failure(
            f"{what} in the middle of the reply ({detail})",
            "Try again; if it persists, check the provider's status.",
        )


def http_client(sdk: ModuleType, base_url: str | None) -> Any:
    """The HTTP client an engine's SDK client gets: the SDK's aiohttp transport, whose C
    parser reads a streamed reply for a fraction of httpx's pure-Python CPU per chunk
    (its errors are mapped by ``failure``); the SDK's default (httpx) for a URL that
    carries credentials, which aiohttp refuses beside the SDK's own auth header."""
    if base_url and urlsplit(base_url).username is not None:
        return None
    return sdk.DefaultAioHttpClient()


def shown_url(url: str) -> str:
    """``url`` as a failure reason may show it to the session's user: without a password
    or token a gateway's URL may carry (``https://user:secret@host/v1?key=...``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _why(cause: BaseException) -> str:
    """The innermost reason a connection failed, in words (the SDKs bury it three deep)."""
    seen: set[int] = set()
    found: BaseException | None = cause
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, socket.gaierror):
            return "host name not found"
        if isinstance(found, ConnectionRefusedError) or (
            isinstance(found, OSError) and found.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        deeper = found.__cause__ or found.__context__
        if deeper is None:
            break
        found = deeper
    text = str(found or cause) or type(found or cause).__name__
    return text[:MAX_DETAIL]


def _timed_out(exc: BaseException) -> bool:
    """Whether an SDK's timeout error was a timeout: a real one has a ``TimeoutError``
    among its causes (the socket's, anyio's, aiohttp's). The SDKs' aiohttp transport
    (the OpenAI SDK's copy) reports a refused connection, an unknown host and a
    connection dropped mid-reply as a *connect timeout*, with the ``OSError`` or the
    disconnect beneath: those are connection failures, not a slow provider."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, TimeoutError):
            return True
        found = found.__cause__ or found.__context__
    return False


def _detail(exc: Any) -> tuple[str, str | None]:
    """The provider's own message and error type from an SDK error's body."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if isinstance(body, dict):
        message, kind = body.get("message"), body.get("type")
    else:
        message, kind = body, None
    if not isinstance(message, str) or not message:
        message = str(getattr(exc, "message", "") or exc)
    return message[:MAX_DETAIL], kind if isinstance(kind, str) else None


class _Stream(Protocol[T_co]):
    def __aiter__(self) -> AsyncIterator[T_co]: ...

    async def close(self) -> None: ...


class _IdleWatch:
    """The idle timeout of a stream's reads, armed once per timeout, not once per event.

    ``asyncio.timeout`` around each read made and cancelled a timer per token (~5% of
    the event loop's CPU at 5,000 tokens/s). Here a read only notes when it began; one
    timer checks, each time it fires, whether the read in progress has waited the whole
    timeout, and only then cancels the reading task, as ``asyncio.timeout`` would (a
    cancel the caller asked for meanwhile stays the caller's: ``Task.uncancel``)."""

    __slots__ = ("_fired", "_handle", "_loop", "_since", "_task", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._since: float | None = None
        self._fired = False
        self._handle = self._loop.call_later(timeout_s, self._check)

    def waiting(self) -> None:
        self._since = self._loop.time()
        self._task = asyncio.current_task()  # whichever task reads this time

    def not_waiting(self) -> None:
        self._since = None

    def _check(self) -> None:
        since, now = self._since, self._loop.time()
        if since is not None and now - since >= self.timeout_s and self._task is not None:
            self._fired = True
            self._task.cancel()
            return
        # no read in progress (the caller holds an event): a full timeout from now
        left = self.timeout_s if since is None else since + self.timeout_s - now
        self._handle = self._loop.call_later(left, self._check)

    def fired(self) -> bool:
        """This watch cancelled the read, and nobody else asked for a cancel meanwhile."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def stop(self) -> None:
        self._handle.cancel()


class ProviderEngine(ABC):
    """A ``ModelEngine`` backed by a provider's SDK: the waiting, the error wording and the
    example flow are here; a subclass says how to ask its API."""

    name: str
    endpoint: Endpoint
    timeout_s: float
    idle_timeout_s: float
    _sdk: ModuleType  # the SDK module, whose exception classes ``failure`` reads

    def failure(self, exc: BaseException, *, mid_reply: bool = False) -> EngineError:
        """Any exception met while talking to the provider, as a reason a user can act on.
        Order matters: the SDKs' timeout is a connection error, their 429 a status error."""
        sdk, where = self._sdk, self.endpoint
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, TimeoutError) or (
            isinstance(exc, sdk.APITimeoutError) and _timed_out(exc)
        ):
            wait = self.idle_timeout_s if mid_reply else self.timeout_s
            return where.silent(wait, mid_reply=mid_reply)
        if isinstance(exc, sdk.APIConnectionError):
            if mid_reply:
                return where.failure(
                    f"connection lost in the middle of the reply ({_why(exc)})",
                    "Try again; check the network or proxy between here and the provider.",
                )
            return where.unreachable(exc)
        if isinstance(exc, sdk.APIStatusError) and not 200 <= exc.status_code < 300:
            return where.answered(exc.status_code, *_detail(exc))
        if isinstance(exc, sdk.APIError) and mid_reply:  # an error event inside the stream
            return where.broke_off(*_detail(exc))
        if isinstance(exc, ValueError):  # JSON that does not parse, a chunk of the wrong shape
            return where.malformed(str(exc) or type(exc).__name__)
        return where.failure(
            f"failed ({type(exc).__name__}: {_detail(exc)[0]})",
            f"Check that {where.url_var} points at {where.dialect}.",
        )

    async def _opened(self, start: Callable[[], Awaitable[_Stream[T]]]) -> AsyncGenerator[T]:
        """The events of a streamed reply, each waited for at most the idle timeout;
        whatever goes wrong ends the iteration with ``failure``'s reason."""
        try:
            async with asyncio.timeout(self.timeout_s):
                stream = await start()
        except Exception as exc:
            raise self.failure(exc) from exc
        idle = _IdleWatch(self.idle_timeout_s)
        try:
            events = aiter(stream)
            while True:
                idle.waiting()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if idle.fired():
                        raise self.failure(TimeoutError(), mid_reply=True) from None
                    raise
                except Exception as exc:
                    raise self.failure(exc, mid_reply=True) from exc
                finally:
                    idle.not_waiting()
                yield event
        finally:
            idle.stop()
            await stream.close()

    async def _asked(self, call: Awaitable[T], timeout_s: float | None = None) -> T:
        """One request that is not streamed, waited for at most ``timeout_s``."""
        wait = timeout_s or self.timeout_s
        try:
            async with asyncio.timeout(wait):
                return await call
        except TimeoutError as exc:
            raise self.endpoint.silent(wait) from exc
        except Exception as exc:
            raise self.failure(exc) from exc

    # -- ModelEngine -------------------------------------------------------------------------

    @abstractmethod
    def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        """Stream one assistant turn; every failure is an ``EngineError`` from ``failure``."""

    @abstractmethod
    async def _complete(self, system: str, prompt: str) -> str:
        """The text of one reply to ``prompt`` (not streamed), through ``_asked``."""

    async def example(self, inp: ExampleInput) -> ExampleResult:
        content = await self._complete(EXAMPLE_SYSTEM, example_prompt(inp))
        try:
            return example_result(content, inp)
        except EngineError as exc:
            raise self.endpoint.about(exc) from None

    @abstractmethod
    async def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> str:
        """Ask the provider one cheap question that proves the URL, the key and the model;
        return what it proved, or raise the ``EngineError`` a run would fail with."""

    @abstractmethod
    async def aclose(self) -> None: ...


def json_field(part: object, name: str) -> Any:
    """``part[name]`` of a streamed chunk's JSON object (None when absent). The engines read
    chunks as plain JSON, not the SDKs' models (``docs/explanation/token-latency.md``), so a
    chunk that is not an object is a malformed stream: ``ValueError``, as a model would fail."""
    if not isinstance(part, dict):
        raise ValueError(f"a chunk part that is not a JSON object: {part!r:.80}")
    return part.get(name)


def json_text(part: object, name: str) -> str | None:
    """``part[name]``, which must be a string or absent."""
    value = json_field(part, name)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{name} is not a string: {value!r:.80}")


def stalled(engine: object, seconds: float, *, lead: bool = False) -> EngineError:
    """The run layer's reason for an engine that went quiet: a provider engine's names its
    URL and model, like every other failure of it; any other engine's says only how long."""
    if isinstance(engine, ProviderEngine):
        where = engine.endpoint
        return where.slow_example(seconds) if lead else where.silent(seconds)
    if lead:
        return EngineError(f"the model engine took longer than {seconds:g}s for a lead")
    return EngineError(f"the model engine sent nothing for {seconds:g}s")
