"""What keeping streams for attach costs a request nobody attaches to.

    uv run python -m benchmarks.stream_keeping [--requests 200] [--words 20] [--pairs 3]

Two measures, on a private Redis (and RabbitMQ) this script starts:

- the store work alone: per request, what a worker adds — one `open` of the request's log, its
  `--words` deltas and the final — on SQLite and Redis, written as a fast stream's are (the
  deltas in one batch, then the final) and as a slow stream's (one write per event);
- end to end: streaming agent requests (the scripted model, `--words` words each, so as many
  deltas) through a worker on RabbitMQ with a Redis store, streams kept (the default) against
  `stream_events=0` (nothing kept). Kept and not-kept runs alternate so a busy machine slows
  both alike; medians over `--pairs` pairs. Wall time and this process's CPU time (worker
  and caller together, every thread; Redis's and RabbitMQ's own work not counted) per request:
  on a busy machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.deploy.local.redis import LocalRedis
from agentqueue.protocol import new_id
from agentqueue.protocol.messages import ResultEvent
from agentqueue.settings import Settings
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.app import App
from agentqueue.workers.scripted_model import ScriptedChatModel
from agentqueue.workers.stream_log import Kept, open_stream_log
from agentqueue.workers.worker import Worker

app = App("stream-keeping")


@app.agent("echo")
def echo(ctx: AgentContext):  # type: ignore[no-untyped-def]
    ctx.model_factory = ScriptedChatModel
    return ctx.build_agent("You repeat what you are told.")


async def store_work(url: str, requests: int, words: int, *, batched: bool) -> float:
    """Seconds per request of the log writes a worker makes for one streaming request."""
    log = open_stream_log(url)
    try:
        started = time.perf_counter()
        for _ in range(requests):
            rid = new_id()
            seq, _ = await log.open(rid)
            deltas = [
                Kept.of(ResultEvent(rid, "delta", seq=seq + n, text=f"word{n} ", attempt=1))
                for n in range(1, words + 1)
            ]
            if batched:
                await log.append_many(rid, deltas)
            else:
                for delta in deltas:
                    await log.append(rid, delta)
            final = ResultEvent(rid, "final", seq=seq + words + 1, text="…", attempt=1)
            await log.append(rid, Kept.of(final))
        return (time.perf_counter() - started) / requests
    finally:
        await log.close()


async def end_to_end(
    broker_url: str, store_url: str, keep: bool, requests: int, words: int
) -> tuple[float, float]:
    """Wall and CPU seconds per streaming request, one at a time, read to the final."""
    ns = f"sk{new_id()[:6]}"
    settings = Settings(
        broker=broker_url,
        store=store_url,
        namespace=ns,
        partitions=2,
        tool_partitions=2,
        balance=False,
        stream_events=10_000 if keep else 0,
    )
    prompt = " ".join(f"w{n}" for n in range(words - 2))  # "You said: " is two words more
    topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
    async with open_broker(broker_url) as broker, anyio.create_task_group() as tg:
        store = settings.open_store()
        worker = Worker(app, broker, store, settings, role="agents")
        await tg.start(worker.run)
        async with Client(broker, settings=settings, topology=topology) as client:
            for _ in range(5):  # warm up: AgentScope's first agent, connections
                async for _event in client.stream(prompt, session_id=new_id(), agent="echo"):
                    pass
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(requests):
                async for _event in client.stream(prompt, session_id=new_id(), agent="echo"):
                    pass
            took = (
                (time.perf_counter() - started) / requests,
                (time.process_time() - cpu) / requests,
            )
        worker.stop()
        await store.close()
    return took


async def main(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis_url = stack.enter_context(LocalRedis(run_dir / "redis")).url
        sqlite_url = f"sqlite:///{run_dir}/sessions.db"
        for name, url in (("sqlite", sqlite_url), ("redis", redis_url)):
            fast = await store_work(url, args.requests, args.words, batched=True)
            slow = await store_work(url, args.requests, args.words, batched=False)
            print(
                f"store work, {name}: {fast * 1e3:.2f} ms per request as a fast stream"
                f" (3 writes), {slow * 1e3:.2f} ms as a slow one ({args.words + 2} writes)"
            )
        rabbit = stack.enter_context(LocalRabbitMQ(run_dir / "rabbit"))
        kept, bare = [], []
        for _ in range(args.pairs):
            kept.append(await end_to_end(rabbit.url, redis_url, True, args.requests, args.words))
            bare.append(await end_to_end(rabbit.url, redis_url, False, args.requests, args.words))
        for i, what in enumerate(("wall", "CPU")):
            k = statistics.median(run[i] for run in kept)
            b = statistics.median(run[i] for run in bare)
            print(
                f"end to end, RabbitMQ + Redis, {args.words} deltas, {what}: kept"
                f" {k * 1e3:.2f} ms, not kept {b * 1e3:.2f} ms per request; keeping adds"
                f" {(k - b) * 1e3:.2f} ms ({(k - b) / b * 100:+.1f} %)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    anyio.run(main, parser.parse_args())
