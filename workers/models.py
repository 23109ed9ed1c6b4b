"""Pick the chat model agents use, from the environment.

DASHSCOPE_API_KEY selects DashScope, OPENAI_API_KEY or OPENAI_BASE_URL an
OpenAI-compatible endpoint, and nothing the offline scripted model, so the
default path needs no network. AGENTQUEUE_MODEL names the model; the value
"scripted" forces the offline model even when keys are set.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentscope.model import ChatModelBase

logger = logging.getLogger(__name__)

SCRIPTED = "scripted"
DEFAULT_DASHSCOPE_MODEL = "qwen-plus"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"

# An OpenAI-compatible server without auth (e.g. a local vLLM) still needs a
# non-empty key for the client library.
_NO_KEY = "not-needed"


def default_model() -> ChatModelBase:
    """The chat model the environment asks for; the offline scripted model by default."""
    name = _env("AGENTQUEUE_MODEL")
    if name == SCRIPTED:
        return _scripted()

    dashscope_key = _env("DASHSCOPE_API_KEY")
    if dashscope_key:
        # Imported here: the provider SDKs take seconds to import.
        from agentscope.credential import DashScopeCredential
        from agentscope.model import DashScopeChatModel

        base_url = _env("DASHSCOPE_BASE_URL")
        credential = (
            DashScopeCredential(api_key=dashscope_key, base_url=base_url)
            if base_url
            else DashScopeCredential(api_key=dashscope_key)
        )
        model = name or DEFAULT_DASHSCOPE_MODEL
        logger.info("chat model: DashScope %s", model)
        return DashScopeChatModel(credential=credential, model=model)

    openai_key = _env("OPENAI_API_KEY")
    openai_url = _env("OPENAI_BASE_URL")
    if openai_key or openai_url:
        from agentscope.credential import OpenAICredential
        from agentscope.model import OpenAIChatModel

        model = name or DEFAULT_OPENAI_MODEL
        logger.info("chat model: OpenAI-compatible %s at %s", model, openai_url or "api.openai.com")
        return OpenAIChatModel(
            credential=OpenAICredential(api_key=openai_key or _NO_KEY, base_url=openai_url),
            model=model,
        )

    return _scripted()


def _scripted() -> ChatModelBase:
    """The offline model."""
    from agentqueue.workers.scripted_model import ScriptedChatModel

    logger.info("chat model: offline scripted model")
    return ScriptedChatModel()


def _env(name: str) -> str | None:
    """An environment variable, with blank treated as unset."""
    value = os.environ.get(name, "").strip()
    return value or None
