"""Which chat model agents use, read once from the environment, and what it may cost them.

- `AGENTQUEUE_MODEL=scripted`, or nothing configured at all: the offline scripted model.
- `DASHSCOPE_API_KEY` (and `DASHSCOPE_BASE_URL`): DashScope, default model qwen-plus.
- `OPENAI_API_KEY` and/or `OPENAI_BASE_URL`: an OpenAI-compatible server (OpenAI, vLLM, Ollama,
  a gateway), default model gpt-4o-mini; a local server needs no key.
- `AGENTQUEUE_MODEL_PROVIDER=openai|dashscope` picks one when both are configured.
- A model named (`AGENTQUEUE_MODEL=gpt-4o`) without its provider's key is a start-up error:
  there is no quiet fall-back to canned answers.

Calls are made by `model_guard` (`AGENTQUEUE_MODEL_ATTEMPTS`, default 4 tries;
`AGENTQUEUE_MODEL_TIMEOUT`, default 60 s per try; `AGENTQUEUE_MODEL_MAX_WAIT`, the longest
Retry-After honoured, default 60 s) under the shared budget of `rate_limit`
(`AGENTQUEUE_RATE_LIMIT`, kept in `AGENTQUEUE_RATE_LIMIT_STORE`, default the worker's session
store). AgentScope is imported only when a model is built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, TypedDict

from agentqueue.broker.urls import redact_url
from agentqueue.workers.errors import ModelConfigError
from agentqueue.workers.rate_limit import (
    LimitBackend,
    ModelLimiter,
    RateLimit,
    current_backend,
)
from agentqueue.workers.rate_limit_stores import check_limit_store, open_limit_backend
from agentqueue.workers.settings import Settings

if TYPE_CHECKING:
    from agentscope.model import ChatModelBase

logger = logging.getLogger(__name__)

SCRIPTED: Final = "scripted"
DEFAULT_DASHSCOPE_MODEL = "qwen-plus"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_DASHSCOPE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"

# An OpenAI-compatible server without auth (a local vLLM or Ollama) still needs a
# non-empty key for the client library.
_NO_KEY = "not-needed"

Provider = Literal["scripted", "openai", "dashscope"]


@dataclass(frozen=True)
class ModelChoice:
    """The provider and model, and how patiently calls to it are made."""

    provider: Provider
    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    attempts: int = 4
    max_wait: float = 60.0

    def describe(self) -> str:
        """One line for the start-up log, e.g. "openai model 'gpt-4o' at https://… (…)"."""
        if self.provider == SCRIPTED:
            return "offline scripted model (AGENTQUEUE_MODEL=scripted, no network)"
        key = "with a key" if self.api_key else "without a key"
        return (
            f"{self.provider} model {self.model!r} at {redact_url(self.base_url or '')} {key};"
            f" {self.attempts} attempts per call, {self.timeout:g} s each"
        )


def choose_model(env: Mapping[str, str] | None = None) -> ModelChoice:
    """The model the environment configures; `ModelConfigError` says what is missing."""
    env = os.environ if env is None else env
    settings = Settings.load(env)  # the one reader of AGENTQUEUE_*; provider keys are their own

    def get(name: str) -> str | None:
        if name.startswith("AGENTQUEUE_"):
            value = getattr(settings, name.removeprefix("AGENTQUEUE_").lower()) or ""
        else:
            value = env.get(name, "")
        return value.strip() or None

    name, provider = get("AGENTQUEUE_MODEL"), get("AGENTQUEUE_MODEL_PROVIDER")
    if name == SCRIPTED or provider == SCRIPTED:
        return ModelChoice(SCRIPTED, SCRIPTED)
    policy: _Policy = {
        "timeout": _number(get, "AGENTQUEUE_MODEL_TIMEOUT", 60.0, minimum=0.1),
        "attempts": int(_number(get, "AGENTQUEUE_MODEL_ATTEMPTS", 4, minimum=1, integer=True)),
        "max_wait": _number(get, "AGENTQUEUE_MODEL_MAX_WAIT", 60.0, minimum=0.0),
    }
    openai_key, openai_url = get("OPENAI_API_KEY"), get("OPENAI_BASE_URL")
    dashscope_key, dashscope_url = get("DASHSCOPE_API_KEY"), get("DASHSCOPE_BASE_URL")
    if provider is None:
        if dashscope_key or dashscope_url:
            provider = "dashscope"
        elif openai_key or openai_url:
            provider = "openai"
        elif name is not None:
            raise ModelConfigError(
                f"AGENTQUEUE_MODEL={name} names a model, but no provider is configured: set"
                " OPENAI_API_KEY (or OPENAI_BASE_URL for an OpenAI-compatible server such as"
                " vLLM or Ollama) or DASHSCOPE_API_KEY; AGENTQUEUE_MODEL=scripted uses the"
                " offline model"
            )
        else:
            return ModelChoice(SCRIPTED, SCRIPTED)
    if provider == "dashscope":
        if not dashscope_key:
            raise ModelConfigError(
                f"DashScope model {name or DEFAULT_DASHSCOPE_MODEL!r} is configured, but"
                " DASHSCOPE_API_KEY is not set; set it, or AGENTQUEUE_MODEL=scripted for the"
                " offline model"
            )
        return ModelChoice(
            "dashscope",
            name or DEFAULT_DASHSCOPE_MODEL,
            dashscope_url or DEFAULT_DASHSCOPE_URL,
            dashscope_key,
            **policy,
        )
    if provider == "openai":
        if not (openai_key or openai_url):
            raise ModelConfigError(
                f"OpenAI model {name or DEFAULT_OPENAI_MODEL!r} is configured, but neither"
                " OPENAI_API_KEY nor OPENAI_BASE_URL is set; set the key (or the URL of a local"
                " OpenAI-compatible server), or AGENTQUEUE_MODEL=scripted for the offline model"
            )
        return ModelChoice(
            "openai",
            name or DEFAULT_OPENAI_MODEL,
            openai_url or DEFAULT_OPENAI_URL,
            openai_key,
            **policy,
        )
    raise ModelConfigError(
        f"AGENTQUEUE_MODEL_PROVIDER={provider} is not a provider; use openai or dashscope"
    )


class _Policy(TypedDict):
    """How patiently calls to a model are made (the fields of ModelChoice after api_key)."""

    timeout: float
    attempts: int
    max_wait: float


def _number(
    get: Callable[[str], str | None],
    name: str,
    default: float,
    *,
    minimum: float,
    integer: bool = False,
) -> float:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise ModelConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise ModelConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


_defaults: dict[str, str] = {}


def configure(*, store_url: str | None = None, namespace: str | None = None) -> None:
    """Where this process's workers keep rate limits and usage (the `agentqueue worker` store)."""
    if store_url is not None:
        _defaults["store_url"] = store_url
    if namespace is not None:
        _defaults["namespace"] = namespace


class ModelRuntime:
    """The model a worker's agents use, the policy its calls follow and their shared budget."""

    def __init__(
        self,
        choice: ModelChoice,
        *,
        namespace: str = "aq",
        limit: RateLimit | None = None,
        store_url: str = "memory://",
    ) -> None:
        self.choice = choice
        self.namespace = namespace
        self.limit = limit
        self.store_url = store_url
        # Redis clients belong to one event loop: one backend per loop that makes calls.
        self._backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LimitBackend] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_env(
        cls,
        *,
        namespace: str | None = None,
        store_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ModelRuntime:
        """The runtime the environment configures; `ModelConfigError` when it cannot be used."""
        env = os.environ if env is None else env
        choice = choose_model(env)
        settings = Settings.load(env)
        raw_limit = (settings.rate_limit or "").strip()
        limit = RateLimit.parse(raw_limit) if raw_limit else None
        store = (
            (settings.rate_limit_store or "").strip()
            or store_url
            or _defaults.get("store_url")
            or settings.store
        )
        ns = namespace or _defaults.get("namespace") or settings.namespace
        check_limit_store(store)  # at start: a URL that cannot hold limits is an error
        return cls(choice, namespace=ns, limit=limit, store_url=store)

    def describe(self) -> str:
        """What the start-up line says: the model, and its rate limit when one is set."""
        text = self.choice.describe()
        if self.limit is not None and self.choice.provider != SCRIPTED:
            text += f"; rate limit {self.limit.describe()} shared in {redact_url(self.store_url)}"
        return text

    def model(self, name: str | None = None, *, stream: bool = True) -> ChatModelBase:
        """A new chat model: the configured one, or `name` at the same provider."""
        choice = self.choice
        if choice.provider == SCRIPTED:
            from agentqueue.workers.scripted_model import ScriptedChatModel

            return ScriptedChatModel(stream=stream)
        from agentqueue.workers.model_guard import CallPolicy, Endpoint, build_model

        assert choice.base_url is not None
        dashscope = choice.provider == "dashscope"
        endpoint = Endpoint(
            provider=choice.provider,
            base_url=choice.base_url,
            key_variable="DASHSCOPE_API_KEY" if dashscope else "OPENAI_API_KEY",
            url_variable="DASHSCOPE_BASE_URL" if dashscope else "OPENAI_BASE_URL",
            secret=choice.api_key or "",
        )
        policy = CallPolicy(
            timeout=choice.timeout, attempts=choice.attempts, max_wait=choice.max_wait
        )
        return build_model(
            endpoint, name or choice.model, choice.api_key or _NO_KEY, policy, self, stream=stream
        )

    def limiter(self, provider: str, model: str) -> ModelLimiter | None:
        """The shared budget (and usage counters) of one model, in this loop's backend."""
        backend = current_backend() or self.backend()
        return ModelLimiter(backend, self.namespace, provider, model, self.limit)

    def backend(self) -> LimitBackend:
        """Where this loop's grants and usage counters live (opened on first use)."""
        loop = asyncio.get_running_loop()
        backend = self._backends.get(loop)
        if backend is None:
            backend = self._backends[loop] = open_limit_backend(self.store_url)
        return backend

    async def aclose(self) -> None:
        """Close this loop's backend connection."""
        backend = self._backends.pop(asyncio.get_running_loop(), None)
        if backend is not None:
            await backend.close()


_runtimes: dict[tuple[object, ...], ModelRuntime] = {}


def default_runtime(namespace: str | None = None) -> ModelRuntime:
    """This process's runtime from the environment (one per configuration and namespace)."""
    settings = Settings.load()
    providers = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL")
    key = (
        namespace,
        tuple(_defaults.items()),
        dataclasses.astuple(settings),
        *(os.environ.get(n) for n in providers),
    )
    runtime = _runtimes.get(key)
    if runtime is None:
        runtime = _runtimes[key] = ModelRuntime.from_env(namespace=namespace)
    return runtime


def describe_model(namespace: str | None = None) -> str:
    """The worker start-up line's description of the model agents use (raises when unusable)."""
    return default_runtime(namespace).describe()


def default_model() -> ChatModelBase:
    """A new chat model as the environment asks; the offline scripted model by default."""
    return default_runtime().model()
