"""Checked by mypy (scripts/typecheck.py), not run: `App.agent` and `App.tool` keep the type of
the function they register, in the bare and the called form."""

from __future__ import annotations

from typing import Any, assert_type

from agentqueue import AgentContext, App

app = App("typing")


@app.tool
async def get_weather(city: str, days: int = 1) -> str:
    return f"{city}: sunny for {days} days"


@app.tool("convert", timeout=10, idempotent=True)
def convert(celsius: float) -> float:
    return celsius * 9 / 5 + 32


@app.agent
def weather(ctx: AgentContext) -> Any:
    return ctx.build_agent("You answer questions about the weather.")


@app.agent("assistant", on_busy="reject")
def assistant(ctx: AgentContext) -> str:
    return ctx.agent_name


async def uses(ctx: AgentContext) -> None:
    assert_type(await get_weather("Paris", days=2), str)
    assert_type(convert(20.0), float)
    assert_type(assistant(ctx), str)
    assert_type(weather(ctx), Any)
    # Wrong arguments are errors (warn_unused_ignores fails the check if they were not).
    convert("20")  # type: ignore[arg-type]
    await get_weather("Paris", weeks=2)  # type: ignore[call-arg]
    assistant()  # type: ignore[call-arg]


def registers_only_context_factories() -> None:
    def not_a_factory(a: int, b: int) -> None: ...

    app.agent(not_a_factory)  # type: ignore[type-var]
