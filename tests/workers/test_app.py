"""Registering agents and tools on an App with its decorators."""

from __future__ import annotations

import pytest

from agentqueue import AgentContext, App


def test_bare_decorators_register_under_the_functions_name_and_return_it() -> None:
    app = App("bare")

    async def get_weather(city: str) -> str:
        return city

    def weather(ctx: AgentContext) -> str:
        return ctx.agent_name

    assert app.tool(get_weather) is get_weather
    assert app.agent(weather) is weather
    assert app.tools["get_weather"].func is get_weather
    assert app.tools["get_weather"].timeout == 60.0
    assert app.agents["weather"].factory is weather
    assert app.agents["weather"].on_busy == "enqueue"


def test_called_decorators_register_under_the_given_name_with_the_given_options() -> None:
    app = App("called")

    @app.tool("convert", timeout=5, idempotent=True)
    def convert(celsius: float) -> float:
        return celsius * 9 / 5 + 32

    @app.agent("assistant", on_busy="reject")
    def build(ctx: AgentContext) -> str:
        return ctx.agent_name

    assert convert(100.0) == 212.0
    spec = app.tools["convert"]
    assert (spec.func, spec.timeout, spec.idempotent) == (convert, 5, True)
    assert (app.agents["assistant"].factory, app.agents["assistant"].on_busy) == (build, "reject")


def test_a_second_bare_registration_of_a_name_is_refused() -> None:
    app = App("twice")

    def ping() -> str:
        return "pong"

    app.tool(ping)
    with pytest.raises(ValueError) as refused:
        app.tool(ping)
    assert str(refused.value) == "tool 'ping' is already registered on app 'twice'"
