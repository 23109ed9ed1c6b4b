"""The Python API in ten lines: an app, an embedded worker, one call.

Run it: `python examples/quickstart.py`. With no AGENTQUEUE_BROKER the broker is the embedded
one (memory://), inside this process; set AGENTQUEUE_BROKER=amqp://… to use RabbitMQ. The
namespace keeps this app's queues apart from every other app's on the same broker.
"""

import anyio

from agentqueue import AgentContext, App, Client, Settings, Worker

app = App("weather")  # what workers serve


@app.tool("get_weather")  # runs on tool workers, as events
async def get_weather(city: str) -> str:
    return "sunny, 21°C"


@app.agent("weather")  # an AgentScope 2.x Agent per session
def weather(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You answer weather questions.")


async def main() -> None:
    settings = Settings.load(namespace="quickstart")  # AGENTQUEUE_* fill in the rest
    async with settings.open_broker() as broker:
        worker = Worker(app, broker, settings.open_store(), settings)  # `agentqueue worker`
        async with worker.running(), Client(broker, settings=settings) as client:
            print((await client.call("What's the weather in Paris?", session_id="s1")).text)


if __name__ == "__main__":
    anyio.run(main)
