"""What a batch cost in model tokens: totals per model, and an estimate in money when priced.

AGENTQUEUE_PRICES="gpt-4o=2.5/10,qwen-plus=0.4/1.2"   # USD per million prompt/completion tokens
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentqueue.errors import BatchInputError
from agentqueue.protocol.messages import Usage
from agentqueue.settings import Settings

Prices = dict[str, tuple[float, float]]
"""Per model: (USD per million prompt tokens, USD per million completion tokens)."""


def parse_prices(text: str) -> Prices:
    """`MODEL=IN/OUT[,MODEL=IN/OUT…]`, prices per million tokens; names may hold '/' and ':'."""
    prices: Prices = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        model, sep, price = part.rpartition("=")
        prompt, slash, completion = price.partition("/")
        try:
            if not (sep and slash and model.strip()):
                raise ValueError
            prices[model.strip()] = (float(prompt), float(completion))
        except ValueError:
            raise BatchInputError(
                f"price {part!r} must look like MODEL=IN/OUT in USD per million prompt and"
                " completion tokens, e.g. gpt-4o=2.5/10"
            ) from None
    return prices


def prices_from_env() -> Prices:
    """The prices in AGENTQUEUE_PRICES (none when unset)."""
    return parse_prices(Settings.load().prices or "")


@dataclass(slots=True)
class ModelTokens:
    """One model's share of a batch."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass(slots=True)
class TokenTotals:
    """Tokens over the result lines of a batch, per model and in all."""

    by_model: dict[str, ModelTokens] = field(default_factory=dict)
    unpriced: list[str] = field(default_factory=list)  # models used that have no price

    @classmethod
    def of(cls, usages: Iterable[Usage | None], prices: Prices | None = None) -> TokenTotals:
        """Add up the usage of result lines and price it."""
        totals = cls()
        for usage in usages:
            if usage is None:
                continue
            model = totals.by_model.setdefault(usage.model or "unknown", ModelTokens())
            model.calls += usage.calls
            model.prompt_tokens += usage.prompt_tokens
            model.completion_tokens += usage.completion_tokens
        for name, model in totals.by_model.items():
            price = (prices or {}).get(name)
            if price is None:
                if model.prompt_tokens or model.completion_tokens:
                    totals.unpriced.append(name)
                continue
            model.cost_usd = (
                model.prompt_tokens * price[0] + model.completion_tokens * price[1]
            ) / 1e6
        return totals

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.by_model.values())

    @property
    def completion_tokens(self) -> int:
        return sum(m.completion_tokens for m in self.by_model.values())

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.by_model.values())

    @property
    def cost_usd(self) -> float | None:
        """The estimated cost of the priced models; None when no model used is priced."""
        costs = [m.cost_usd for m in self.by_model.values() if m.cost_usd is not None]
        return round(sum(costs), 6) if costs else None

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-able data, for the summary file."""
        return {
            "prompt": self.prompt_tokens,
            "completion": self.completion_tokens,
            "total": self.prompt_tokens + self.completion_tokens,
            "calls": self.calls,
            "cost_usd": self.cost_usd,
            "unpriced": self.unpriced,
            "by_model": {
                name: {
                    "calls": m.calls,
                    "prompt": m.prompt_tokens,
                    "completion": m.completion_tokens,
                    "cost_usd": None if m.cost_usd is None else round(m.cost_usd, 6),
                }
                for name, m in sorted(self.by_model.items())
            },
        }
