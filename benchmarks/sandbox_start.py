"""The first call of a new session, cold start vs warm pool, for every sandbox type.

    uv run python -m benchmarks.sandbox_start [--runs 5] [--types base browser gui]

Through a tool worker on the embedded (memory) broker, with `Client.call_tool`: for each type,
the first call of a fresh session with no pool (cold: bwrap, plus Chromium or Xvfb, starts in
the call), the same from a filled warm pool (the pool refills before each run), and a call on a
kept sandbox. Medians in milliseconds; the calls are the cheapest of each tool set.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from agentqueue import App, Client
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import new_id
from agentqueue.settings import Settings
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker

CALLS = {  # the cheapest call of each type
    "base": ("run_ipython_cell", {"code": "pass"}),
    "browser": ("browser_tab_list", {}),
    "gui": ("computer_use", {"action": "cursor_position"}),
}


async def first_calls(kind: str, pool_size: int, runs: int, root: Path) -> tuple[float, float]:
    """Median ms of a new session's first call, and of a call on a kept sandbox."""
    app = App(f"bench-{kind}")
    boxes = app.sandbox_tools(kind, root=str(root / f"{kind}-{pool_size}"), pool_size=pool_size)
    topology = Topology(namespace=f"sbx{new_id()[:6]}", partitions=1, tool_partitions=1)
    name, arguments = CALLS[kind]
    firsts, kept = [], []
    async with open_broker(f"memory://bench-{new_id()[:8]}") as broker:
        async with anyio.create_task_group() as tg:
            store = MemorySessionStore(f"memory://bench-{new_id()[:8]}")
            settings = Settings(namespace=topology.namespace, partitions=1, tool_partitions=1)
            worker = Worker(app, broker, store, settings, role="tools", worker_id="w1")
            await tg.start(worker.run)
            managers = boxes.browsers if kind == "browser" else boxes.managers
            async with Client(broker, topology=topology) as client:
                for run in range(runs):
                    with anyio.fail_after(60):  # the pool refills behind the claimed sandbox
                        while len(managers["w1"].pool) < pool_size:  # noqa: ASYNC110 - polls a list, no event
                            await anyio.sleep(0.02)
                    session = f"s-{run}"
                    started = time.perf_counter()
                    await client.call_tool(name, arguments, session_id=session)
                    firsts.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await client.call_tool(name, arguments, session_id=session)
                    kept.append((time.perf_counter() - started) * 1000)
            worker.stop()
            with anyio.fail_after(60):
                while "w1" in managers:  # noqa: ASYNC110 - polls a dict, no event
                    await anyio.sleep(0.05)
    return statistics.median(firsts), statistics.median(kept)


async def main(runs: int, types: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="aq-bench-") as tmp:
        print("| type | first call, cold start | first call, warm pool | call on a kept sandbox |")
        print("|---|---|---|---|")
        for kind in types:
            cold, _ = await first_calls(kind, 0, runs, Path(tmp))
            warm, kept = await first_calls(kind, 1, runs, Path(tmp))
            print(f"| `{kind}` | {cold:.0f} ms | {warm:.1f} ms | {kept:.1f} ms |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--types", nargs="+", choices=list(CALLS), default=list(CALLS))
    args = parser.parse_args()
    anyio.run(main, args.runs, args.types)
