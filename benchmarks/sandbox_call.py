"""Per-call overhead of sandboxed tools against a plain `@app.tool`, on a kept session.

    uv run python -m benchmarks.sandbox_call [--calls 50]

Through a tool worker on the embedded (memory) broker, with `Client.call_tool`, one session
whose sandbox is already started: a plain tool that returns a constant, `run_ipython_cell`
with `pass` (a round trip to the session's IPython kernel), `read_file` of a small file (no
snapshot: read-only) and `write_file` of it (the workspace changed: a snapshot into the store
follows). Medians in milliseconds, and each one's ratio to the plain tool.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import anyio

from agentqueue import App, Client
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import new_id
from agentqueue.settings import Settings
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker

CALLS = [
    ("plain @app.tool", "plain", {}),
    ("run_ipython_cell `pass`", "run_ipython_cell", {"code": "pass"}),
    ("read_file (small)", "read_file", {"path": "note.txt"}),
    ("write_file (small, snapshot)", "write_file", {"path": "note.txt", "content": "x" * 100}),
]


async def main(calls: int) -> None:
    app = App("bench-call")

    @app.tool()
    async def plain() -> str:
        """Return a constant."""
        return "ok"

    with tempfile.TemporaryDirectory(prefix="aq-bench-") as root:
        app.sandbox_tools("base", "filesystem", root=root, pool_size=0)
        topology = Topology(namespace=f"sbx{new_id()[:6]}", partitions=1, tool_partitions=1)
        async with (
            open_broker(f"memory://bench-{new_id()[:8]}") as broker,
            anyio.create_task_group() as tg,
        ):
            store = MemorySessionStore(f"memory://bench-{new_id()[:8]}")
            settings = Settings(namespace=topology.namespace, partitions=1, tool_partitions=1)
            worker = Worker(app, broker, store, settings, role="tools", worker_id="w1")
            await tg.start(worker.run)
            async with Client(broker, topology=topology) as client:
                session = "s-bench"
                await client.call_tool("write_file", CALLS[3][2], session_id=session)
                await client.call_tool("run_ipython_cell", {"code": "pass"}, session_id=session)
                medians = {}
                for label, name, arguments in CALLS:
                    times = []
                    for n in range(calls):
                        if name == "write_file":  # a change each time, so each is snapshot
                            arguments = {**arguments, "content": f"{n:04d}" + "x" * 96}
                        started = time.perf_counter()
                        await client.call_tool(name, arguments, session_id=session)
                        times.append((time.perf_counter() - started) * 1000)
                    medians[label] = statistics.median(times)
            worker.stop()
    base = medians[CALLS[0][0]]
    print("| call | median | ratio to a plain tool |")
    print("|---|---|---|")
    for label, ms in medians.items():
        print(f"| {label} | {ms:.1f} ms | {ms / base:.1f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    anyio.run(main, parser.parse_args().calls)
