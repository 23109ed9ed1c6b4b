"""A local OpenAI-compatible chat server for tests and demos, scripted by its owner.

It answers `POST /v1/chat/completions` (and DashScope's `/compatible-mode/v1/...`) the way the
OpenAI API does: a `chat.completion` object, or with `stream: true` server-sent events of
`chat.completion.chunk`s (text deltas, `tool_calls` deltas with the id and name first and the
arguments in pieces, the `finish_reason` chunk, and with `stream_options.include_usage` a last
chunk with empty `choices` and the `usage`), then `data: [DONE]`. Errors carry OpenAI's error
body. Each request takes the next scripted step, or the default answer when none is left:

    with LocalOpenAI(models=["test-model"]) as server:
        server.script(CallTool("get_weather", {"city": "Paris"}), Fail(429, retry_after=1))
        ...  # OPENAI_BASE_URL=server.url
        assert server.attempts()[0].status == 200

Every attempt is recorded (refused ones included). Tokens are counted as whitespace-separated
words, so a test can predict them; `rate_limit=(n, window)` refuses the request that would be
the (n+1)th accepted one within any `window` seconds with a 429 and `Retry-After`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from agentqueue.deploy.local.supervisor import StartStop
from agentqueue.deploy.local.threaded_server import listen_socket, serve_in_thread, stop_in_thread

DEFAULT_MODEL = "test-model"
GATE_TIMEOUT = 60.0  # a gate never set still lets the answer finish, so the server can stop
_PATHS = ("/v1/chat/completions", "/compatible-mode/v1/chat/completions")
_MODEL_LIST_PATHS = ("/v1/models", "/compatible-mode/v1/models")


@dataclass
class Answer:
    """Answer with text, one word per stream chunk, `token_delay` seconds apart.

    With `gate`, the last word waits until the gate is set (a test proves the earlier words
    arrived before the answer was finished).
    """

    text: str
    token_delay: float = 0.0
    gate: threading.Event | None = None


@dataclass
class CallTool:
    """Answer with a call of tool `name`; its JSON arguments are streamed in three pieces."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None


@dataclass
class Fail:
    """Refuse with an HTTP error and OpenAI's error body; `retry_after` sets `Retry-After`."""

    status: int
    retry_after: float | None = None
    message: str | None = None


@dataclass
class Hang:
    """Accept the request and never answer (until the client gives up or the server stops)."""


Step = Answer | CallTool | Fail | Hang
Responder = Callable[[dict[str, Any]], Step]


@dataclass
class Attempt:
    """One request as the server saw it."""

    at: float  # time.monotonic() on arrival
    model: str
    stream: bool
    messages: list[dict[str, Any]]
    tools: list[str]
    status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished_at: float | None = None  # when the last byte of the answer was sent
    path: str = "/v1/chat/completions"  # DashScope's compatible mode calls its own path

    @property
    def last_message(self) -> dict[str, Any]:
        """The last message the request sent."""
        return self.messages[-1] if self.messages else {}


def count_tokens(text: str) -> int:
    """This server's token count: whitespace-separated words."""
    return len(text.split())


def message_text(message: dict[str, Any]) -> str:
    """The text of one request message: its content (string or parts) and tool call arguments."""
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    for call in message.get("tool_calls") or []:
        parts.append(str((call.get("function") or {}).get("arguments") or ""))
    return " ".join(parts)


def default_answer(request: dict[str, Any]) -> Step:
    """What the server says without a script: reports a tool result, else echoes the user."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return Answer(f"The tool said: {message_text(last)}")
    return Answer(f"You said: {message_text(last)}")


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None, **headers: str):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers


class _ChatApp:
    """The ASGI app; shared state is guarded by a lock, since tests script it from their thread."""

    def __init__(
        self,
        api_key: str | None,
        models: Sequence[str],
        rate_limit: tuple[int, float] | None,
        responder: Responder,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.rate_limit = rate_limit
        self.responder = responder
        self.lock = threading.Lock()
        self.steps: deque[Step] = deque()
        self.attempts: list[Attempt] = []
        self.accepted: deque[float] = deque()  # arrival times of accepted requests, in window
        self.release = asyncio.Event()  # set on shutdown: hung requests end

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path in _MODEL_LIST_PATHS:
            data = [{"id": m, "object": "model", "owned_by": "local"} for m in self.models]
            await _json(send, 200, {"object": "list", "data": data})
            return
        if method != "POST" or path not in _PATHS:
            await _json(
                send, 404, _error_body(f"no route {method} {path}", "invalid_request_error")
            )
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        await self._chat(path, headers, body, receive, send)

    async def _chat(
        self, path: str, headers: dict[str, str], body: bytes, receive: Any, send: Any
    ) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            await _json(send, 400, _error_body("the body is not JSON", "invalid_request_error"))
            return
        messages = request.get("messages") or []
        attempt = Attempt(
            at=time.monotonic(),
            model=str(request.get("model")),
            stream=bool(request.get("stream")),
            messages=messages,
            tools=[t.get("function", {}).get("name", "") for t in request.get("tools") or []],
            prompt_tokens=max(1, sum(count_tokens(message_text(m)) for m in messages)),
            path=path,
        )
        with self.lock:
            self.attempts.append(attempt)
        try:
            step = self._admit(headers, attempt, request)
        except _Refused as refused:
            attempt.status = refused.status
            attempt.prompt_tokens = 0
            attempt.finished_at = time.monotonic()
            extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in refused.headers.items()]
            await _json(
                send,
                refused.status,
                _error_body(refused.message, refused.kind, refused.code),
                extra,
            )
            return
        if isinstance(step, Hang):
            attempt.status = 0  # never answered
            await self._hang(receive)
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        if attempt.stream:
            await self._stream(send, attempt, step, include_usage)
        else:
            await self._complete(send, attempt, step)

    def _admit(
        self, headers: dict[str, str], attempt: Attempt, request: dict[str, Any]
    ) -> Answer | CallTool | Hang:
        """The step for this request, or `_Refused` the way OpenAI refuses."""
        if self.api_key is not None:
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given != self.api_key:
                shown = f"{given[:3]}***{given[-2:]}" if len(given) > 5 else "***"
                raise _Refused(
                    401,
                    f"Incorrect API key provided: {shown}. You can find your API key at"
                    " https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
        if attempt.model not in self.models:
            raise _Refused(
                404,
                f"The model `{attempt.model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        with self.lock:
            step = self.steps.popleft() if self.steps else None
        if step is None:
            step = self.responder(request)
        if isinstance(step, Fail):
            raise _Refused(
                step.status,
                step.message or _STATUS_MESSAGES.get(step.status, f"HTTP {step.status}"),
                "requests" if step.status == 429 else "server_error",
                "rate_limit_exceeded" if step.status == 429 else None,
                **_retry_after_headers(step.retry_after),
            )
        self._within_rate_limit(attempt.at)
        return step

    def _within_rate_limit(self, now: float) -> None:
        if self.rate_limit is None:
            return
        limit, window = self.rate_limit
        with self.lock:
            while self.accepted and self.accepted[0] <= now - window:
                self.accepted.popleft()
            if len(self.accepted) >= limit:
                wait = self.accepted[0] + window - now
                raise _Refused(
                    429,
                    f"Rate limit reached for requests: Limit {limit} per {window:g}s,"
                    f" Used {len(self.accepted)}. Please try again in {wait:.3f}s.",
                    "requests",
                    "rate_limit_exceeded",
                    x_ratelimit_limit_requests=str(limit),
                    x_ratelimit_remaining_requests="0",
                    **_retry_after_headers(wait),
                )
            self.accepted.append(now)

    async def _hang(self, receive: Any) -> None:
        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        waiters = {
            asyncio.ensure_future(disconnected()),
            asyncio.ensure_future(self.release.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _complete(self, send: Any, attempt: Attempt, step: Answer | CallTool) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if isinstance(step, Answer):
            words = _words(step.text)
            for _ in words[:-1]:
                await asyncio.sleep(step.token_delay)
            if step.gate is not None:
                await asyncio.to_thread(step.gate.wait, GATE_TIMEOUT)
            message["content"] = step.text
            finish = "stop"
            attempt.completion_tokens = len(words)
        else:
            call = _tool_call(step)
            message["tool_calls"] = [call]
            finish = "tool_calls"
            attempt.completion_tokens = _tool_tokens(step)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": attempt.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": _usage(attempt),
            "system_fingerprint": "fp_local",
        }
        await _json(send, 200, body)
        attempt.finished_at = time.monotonic()

    async def _stream(
        self, send: Any, attempt: Attempt, step: Answer | CallTool, include_usage: bool
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        async def chunk(
            delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
        ) -> None:
            data: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": attempt.model,
                "system_fingerprint": "fp_local",
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None
            data.update(extra)
            await _event(send, json.dumps(data))

        if isinstance(step, Answer):
            words = _words(step.text)
            await chunk({"role": "assistant", "content": "", "refusal": None})
            for n, word in enumerate(words):
                if n:
                    await asyncio.sleep(step.token_delay)
                if n == len(words) - 1 and step.gate is not None:
                    await asyncio.to_thread(step.gate.wait, GATE_TIMEOUT)
                await chunk({"content": word})
            attempt.completion_tokens = len(words)
            finish = "stop"
        else:
            call = _tool_call(step)
            args = call["function"]["arguments"]
            cuts = [0, len(args) // 3, 2 * len(args) // 3, len(args)]
            first = {**call, "function": {"name": step.name, "arguments": ""}}
            await chunk({"role": "assistant", "content": None, "tool_calls": [first]})
            for start, end in itertools.pairwise(cuts):
                piece = {"index": 0, "function": {"arguments": args[start:end]}}
                await chunk({"tool_calls": [piece]})
            attempt.completion_tokens = _tool_tokens(step)
            finish = "tool_calls"
        await chunk({}, finish)
        if include_usage:
            await chunk(None, usage=_usage(attempt))
        await _event(send, "[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        attempt.finished_at = time.monotonic()


_STATUS_MESSAGES = {
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to sample from this model.",
}


def _words(text: str) -> list[str]:
    """The answer in stream pieces: each word with the space that follows it."""
    pieces = [w + " " for w in text.split(" ")]
    pieces[-1] = pieces[-1][:-1]
    return [p for p in pieces if p] or [""]


def _tool_call(step: CallTool) -> dict[str, Any]:
    return {
        "index": 0,
        "id": step.call_id or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": step.name, "arguments": json.dumps(step.arguments)},
    }


def _tool_tokens(step: CallTool) -> int:
    return 1 + count_tokens(json.dumps(step.arguments))


def _usage(attempt: Attempt) -> dict[str, Any]:
    return {
        "prompt_tokens": attempt.prompt_tokens,
        "completion_tokens": attempt.completion_tokens,
        "total_tokens": attempt.prompt_tokens + attempt.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _retry_after_headers(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    seconds = max(0.0, seconds)
    return {
        "retry_after": str(math.ceil(seconds)),
        "retry_after_ms": str(math.ceil(seconds * 1000)),
    }


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def _json(
    send: Any, status: int, body: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _event(send: Any, data: str) -> None:
    await send(
        {"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True}
    )


class _Server(uvicorn.Server):
    """uvicorn, ending hung requests first on shutdown so it need not wait them out."""

    def __init__(self, config: uvicorn.Config, app: _ChatApp) -> None:
        super().__init__(config)
        self.chat_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.chat_app.release.set()
        await super().shutdown(sockets=sockets)


class LocalOpenAI(StartStop):
    """The server on a background thread; a context manager that starts and stops it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        models: Sequence[str] = (DEFAULT_MODEL,),
        rate_limit: tuple[int, float] | None = None,
        responder: Responder = default_answer,
    ) -> None:
        self.host = host
        self.port = port
        self._app = _ChatApp(api_key, models, rate_limit, responder)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1 (OPENAI_BASE_URL)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def dashscope_url(self) -> str:
        """The same server as DashScope's compatible mode (DASHSCOPE_BASE_URL)."""
        return f"http://{self.host}:{self.port}/compatible-mode/v1"

    def script(self, *steps: Step) -> None:
        """Queue steps; each request takes the next one, then the default answer."""
        with self._app.lock:
            self._app.steps.extend(steps)

    def reset(self) -> None:
        """Forget the script, the attempts and the rate window."""
        with self._app.lock:
            self._app.steps.clear()
            self._app.attempts.clear()
            self._app.accepted.clear()

    def attempts(self) -> list[Attempt]:
        """Every request so far, refused ones included, in arrival order."""
        with self._app.lock:
            return list(self._app.attempts)

    def start(self, timeout: float = 10.0) -> LocalOpenAI:
        """Serve, and return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"LocalOpenAI is already running at {self.url}")
        sock = listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = _Server(config, self._app)
        thread = serve_in_thread(
            server,
            sock,
            name=f"local-openai-{self.port}",
            what=f"local OpenAI server on {self.url}",
            timeout=timeout,
        )
        self._server, self._thread = server, thread
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; hung requests are ended. Does nothing if stopped."""
        if self._server is None or self._thread is None:
            return
        stop_in_thread(
            self._server, self._thread, what=f"local OpenAI server at {self.url}", timeout=timeout
        )
        self._server = self._thread = None
