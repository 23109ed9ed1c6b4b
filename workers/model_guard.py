"""The one layer that retries a model call, with a per-call timeout and the shared rate limit.

AgentScope's model classes are used as they are, with their own retries turned off
(`max_retries=0`, and the openai client's too); this layer wraps their `_call_api`:

- every attempt first takes a grant from the model's shared budget (`rate_limit`);
- 429, 408, 409 and 5xx answers, connection failures and timeouts are tried again, up to
  `attempts` tries in all, after the provider's `Retry-After` (`retry-after-ms` first) or an
  exponential backoff with jitter; a 429 also closes the budget for everyone for that long;
- each attempt is cut after `timeout` seconds without an answer (a streamed answer: without its
  first chunk, then between chunks);
- 401/403, an unknown model (404) and other refusals fail at once with a `ModelCallError` that
  names the provider and model, never the key; so does a stream that breaks off once its first
  chunk was passed on (its text already reached the caller: trying again would repeat it).

A `ModelCallError` is a `PermanentError`: the pipeline dead-letters the event instead of running
the turn again, so one model call costs at most `attempts` requests of at most `timeout` seconds
each (plus the waits between them), all within the request's deadline.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
import openai
from agentscope.model import ChatModelBase, ChatResponse
from agentscope.model import DashScopeChatModel as _DashScopeChatModel
from agentscope.model import OpenAIChatModel as _OpenAIChatModel

from agentqueue.workers.errors import ModelCallError
from agentqueue.workers.rate_limit import Grant, ModelLimiter

RETRYABLE_STATUS = frozenset({408, 409, 429})
_EMPTY = object()


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How patiently one model call is made."""

    timeout: float = 60.0
    attempts: int = 4
    max_wait: float = 60.0  # the longest Retry-After honoured; a longer one fails the call
    base_delay: float = 0.5
    max_delay: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` when the provider names no time."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class LimiterSource(Protocol):
    """Gives the shared budget of a model (None: no limit and no usage counters)."""

    def limiter(self, provider: str, model: str) -> ModelLimiter | None: ...


@dataclass(frozen=True)
class Endpoint:
    """Who a model call goes to, for error messages: never holds the key itself."""

    provider: str  # "openai" (any OpenAI-compatible server) or "dashscope"
    base_url: str
    key_variable: str  # where the key comes from, named in refusals
    url_variable: str
    secret: str = ""  # scrubbed from any provider text we repeat

    def label(self, model: str) -> str:
        return f"{self.provider} model {model!r} at {self.base_url}"

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


class CallGuard:
    """Makes model calls for one endpoint under a `CallPolicy` and a shared budget."""

    def __init__(self, endpoint: Endpoint, policy: CallPolicy, source: LimiterSource) -> None:
        self.endpoint = endpoint
        self.policy = policy
        self.source = source

    def needs_estimate(self, model: str) -> bool:
        """Whether the budget counts tokens (the prompt is then estimated before the call)."""
        limiter = self.source.limiter(self.endpoint.provider, model)
        return (
            limiter is not None and limiter.limit is not None and limiter.limit.tokens is not None
        )

    async def run(
        self,
        make: Callable[[], Awaitable[Any]],
        model: str,
        *,
        stream: bool,
        estimate: int = 0,
    ) -> Any:
        """Make the call, trying again as the policy allows; the result as `make` returns it."""
        label = self.endpoint.label(model)
        limiter = self.source.limiter(self.endpoint.provider, model)
        policy = self.policy
        failures: list[str] = []
        for attempt in range(1, policy.attempts + 1):
            grant = await limiter.acquire(estimate) if limiter is not None else None
            retry_after: float | None = None
            try:
                with anyio.fail_after(policy.timeout):
                    result = await make()
                    first: Any = None
                    if stream:
                        try:
                            first = await anext(result)
                        except StopAsyncIteration:
                            first = _EMPTY
            except TimeoutError:
                failure = f"no response within {policy.timeout:g} s"
                await _release(limiter, grant, estimate)  # it may have been run: keep its charge
            except openai.APIStatusError as exc:
                await _release(limiter, grant, 0)
                status = exc.status_code
                retry_after = retry_after_seconds(exc.response)
                if status == 429 and limiter is not None:
                    await limiter.refused(retry_after)
                if status not in RETRYABLE_STATUS and status < 500:
                    raise self._refusal(model, status, exc) from None
                if status == 429 and retry_after is not None and retry_after > policy.max_wait:
                    raise ModelCallError(
                        f"{label} is rate limited (HTTP 429) and asks to wait {retry_after:g} s,"
                        f" longer than AGENTQUEUE_MODEL_MAX_WAIT={policy.max_wait:g} s"
                    ) from None
                failure = f"HTTP {status} {_reason(status)}"
            except openai.APIConnectionError as exc:
                await _release(limiter, grant, 0)
                failure = f"connection failed ({_cause(exc)})"
            else:
                if not stream:
                    await _settle(limiter, grant, result.usage, estimate)
                    return result
                return self._relay(label, result, first, limiter, grant, estimate)
            failures.append(failure)
            if attempt == policy.attempts:
                break
            delay = retry_after if retry_after is not None else policy.backoff(attempt)
            await anyio.sleep(min(delay, policy.max_wait))
        raise ModelCallError(f"{label} failed {len(failures)} attempts: {'; '.join(failures)}")

    def _refusal(self, model: str, status: int, exc: openai.APIStatusError) -> ModelCallError:
        label, endpoint = self.endpoint.label(model), self.endpoint
        if status == 401:
            # The provider's text may quote part of the key: it is not repeated.
            return ModelCallError(
                f"{label} refused the API key (HTTP 401); check {endpoint.key_variable}"
            )
        if status == 403:
            return ModelCallError(
                f"{label} refused access (HTTP 403): the API key may not use this model;"
                f" check {endpoint.key_variable} and AGENTQUEUE_MODEL"
            )
        if status == 404:
            return ModelCallError(
                f"{label} was not found (HTTP 404): the server has no model {model!r};"
                f" check AGENTQUEUE_MODEL and {endpoint.url_variable}"
            )
        return ModelCallError(
            f"{label} refused the request (HTTP {status}): {endpoint.scrub(_message(exc))}"
        )

    async def _relay(
        self,
        label: str,
        stream: AsyncGenerator[ChatResponse, None],
        first: Any,
        limiter: ModelLimiter | None,
        grant: Grant | None,
        estimate: int,
    ) -> AsyncGenerator[ChatResponse, None]:
        """Pass chunks on as they come, each within the timeout; settle the budget at the end."""
        usage, chunks, complete = None, 0, False
        item = first
        try:
            while item is not _EMPTY:
                usage = item.usage or usage
                chunks += 1
                yield item
                try:
                    with anyio.fail_after(self.policy.timeout):
                        item = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise ModelCallError(
                        f"{label} stopped streaming after {chunks} chunks:"
                        f" no data within {self.policy.timeout:g} s"
                    ) from None
                except (openai.APIError, httpx.HTTPError) as exc:
                    raise ModelCallError(
                        f"{label} broke off its stream after {chunks} chunks ({_cause(exc)})"
                    ) from None
            complete = True
        finally:
            await stream.aclose()
            if complete:
                await _settle(limiter, grant, usage, estimate)
            else:
                await _release(limiter, grant, estimate)


async def _settle(
    limiter: ModelLimiter | None, grant: Grant | None, usage: Any, estimate: int
) -> None:
    if limiter is None or grant is None:
        return
    if usage is None:  # the provider reported nothing: the estimate stays charged
        await limiter.settle(grant, 0, 0, charge=estimate)
    else:
        await limiter.settle(grant, usage.input_tokens, usage.output_tokens)


async def _release(limiter: ModelLimiter | None, grant: Grant | None, tokens: int) -> None:
    if limiter is not None and grant is not None:
        await limiter.release(grant, tokens)


class _Response(Protocol):
    """An HTTP response of httpx or of the httpx2 the OpenAI SDK uses: its headers suffice."""

    @property
    def headers(self) -> Mapping[str, str]: ...


def retry_after_seconds(response: _Response | None) -> float | None:
    """The provider's `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if any."""
    if response is None:
        return None
    headers = response.headers
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(status: int) -> str:
    if status == 429:
        return "rate limited"
    if status >= 500:
        return "server error"
    return {408: "request timeout", 409: "conflict"}.get(status, "error")


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return exc.response.reason_phrase or f"HTTP {exc.status_code}"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    name = type(cause if cause is not None else exc).__name__
    return name


class _Guarded(ChatModelBase):
    """Routes AgentScope's `_call_api` through a `CallGuard` (first in a provider model's bases)."""

    guard: CallGuard

    async def _call_api(
        self,
        model_name: str,
        messages: list[Any],
        tools: list[dict] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> ChatResponse | AsyncGenerator[ChatResponse, None]:
        # The provider model after this class in the MRO implements it; the base only declares it.
        call = super()._call_api  # type: ignore[safe-super]
        estimate = 0
        if self.guard.needs_estimate(model_name):
            estimate = await self.count_tokens(messages, tools)

        def make() -> Awaitable[Any]:
            return call(model_name, messages, tools=tools, tool_choice=tool_choice, **kwargs)

        return await self.guard.run(make, model_name, stream=self.stream, estimate=estimate)


# Named as AgentScope names them: its tracing tells providers apart by the model's class name.
class OpenAIChatModel(_Guarded, _OpenAIChatModel):
    """AgentScope's OpenAI chat model, its calls made by a `CallGuard`."""


class DashScopeChatModel(_Guarded, _DashScopeChatModel):
    """AgentScope's DashScope chat model, its calls made by a `CallGuard`."""


def build_model(
    endpoint: Endpoint,
    model: str,
    api_key: str,
    policy: CallPolicy,
    source: LimiterSource,
    *,
    stream: bool = True,
) -> ChatModelBase:
    """A guarded AgentScope model for the endpoint, with every other retry turned off."""
    client_kwargs = {
        "max_retries": 0,
        # Later than the guard's own timeout, which cuts first and says so.
        "timeout": httpx.Timeout(policy.timeout + 5.0, connect=min(policy.timeout, 10.0)),
    }
    guarded: _Guarded
    if endpoint.provider == "dashscope":
        from agentscope.credential import DashScopeCredential

        guarded = DashScopeChatModel(
            credential=DashScopeCredential(api_key=api_key, base_url=endpoint.base_url),
            model=model,
            stream=stream,
            max_retries=0,
            client_kwargs=client_kwargs,
        )
    else:
        from agentscope.credential import OpenAICredential

        guarded = OpenAIChatModel(
            credential=OpenAICredential(api_key=api_key, base_url=endpoint.base_url),
            model=model,
            stream=stream,
            max_retries=0,
            client_kwargs=client_kwargs,
        )
    guarded.guard = CallGuard(endpoint, policy, source)
    return guarded
