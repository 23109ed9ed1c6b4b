"""A weather agent whose `get_weather` tool runs on tool workers as events.

agentqueue worker --app examples.weather:app --role agents
agentqueue worker --app examples.weather:app --role tools
agentqueue call "What's the weather in Paris?" --session s1
"""

from __future__ import annotations

from agentqueue import AgentContext, App

app = App("weather")

# Deterministic so the demo and tests can check answers; a real deployment calls a weather API.
_FORECASTS = {
    "paris": "sunny, 21°C",
    "lisbon": "clear, 24°C",
    "london": "light rain, 14°C",
    "hangzhou": "humid, 29°C",
}


@app.tool("get_weather", timeout=10.0)
async def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name, e.g. "Paris".
    """
    return _FORECASTS.get(city.strip().lower(), "cloudy, 18°C")


@app.agent("weather")
def weather_agent(ctx: AgentContext):  # type: ignore[no-untyped-def]
    """Answers questions about the weather and remembers what the user said."""
    return ctx.build_agent(
        "You are a helpful assistant. Use get_weather for questions about the weather.",
        tools=["get_weather"],
    )
