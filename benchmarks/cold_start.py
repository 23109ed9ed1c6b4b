"""Cold start on the FC emulator: process start -> first event handled -> first reply.

For the agents function (agent requests, AgentScope imported by each instance) and the tools
function (tool calls) of the chaos run's app, it publishes one event per partition to an
emulator with no instance up and times each event from publish to its first and its final
reply: one instance alone, and 6 starting together. With `--warm`, the agents function also
runs with its provisioned instances (the warm pool) started before the events are published.

Each tree given with `--tree name=path` (a checkout with its own `.venv`) runs the same
scenarios, interleaved in rounds, so a loaded machine slows all of them alike; the table shows
the median of the rounds and their spread (min-max). The same rounds time `python -X importtime`
of what an instance imports before its first event (cumulative microseconds, less sensitive to
load than wall time).

    nice -n 15 uv run --frozen python -m benchmarks.cold_start --tree before=/tmp/old --tree after=.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.chaos_app:app"
# What an instance imports before its first event (the handler module and the app), and what an
# agents instance imports on its first agent event (AgentScope, through the turn runner).
IMPORTS = {
    "instance": "import agentqueue.workers.fc, benchmarks.chaos_app",
    "agent turn": "import agentqueue.workers.fc, benchmarks.chaos_app;"
    " from agentqueue.workers.agent_handler import import_agentscope; import_agentscope()",
}


# ----------------------------------------------------------------------------- one scenario


def _sessions(partitions: int, count: int) -> list[str]:
    """`count` session ids on distinct partitions, so their events start instances together."""
    from agentqueue.protocol.partitioning import partition_for

    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < count:
        chosen.setdefault(partition_for(f"cold-{n}", partitions), f"cold-{n}")
        n += 1
    return list(chosen.values())


def _envelope(function: str, session: str, reply_to: str) -> Any:
    from agentqueue.protocol import AgentRequest, Envelope, ToolCall, new_id
    from agentqueue.protocol.messages import user_message

    event_id = new_id()
    if function == "agents":
        body: Any = AgentRequest(input=[user_message("hello")])
    else:
        body = ToolCall(
            name="apply",
            arguments={"session": session, "seq": 0, "request": event_id},
            call_id=event_id,
        )
    return Envelope(
        id=event_id,
        session_id=session,
        correlation_id=event_id,
        reply_to=reply_to,
        body=body,
        created_at=time.time(),
    )


async def scenario(function: str, instances: int, warm: int, workdir: Path) -> dict[str, Any]:
    """Run one scenario in this process; the timings of its events and instances."""
    import anyio

    from agentqueue.broker.mns import MNSBroker
    from agentqueue.broker.replies import ReplyRouter
    from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
    from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
    from agentqueue.deploy.local.mns import LocalMNS
    from agentqueue.protocol import ResultEvent, encode
    from agentqueue.protocol.messages import TERMINAL_KINDS

    topology = Topology(f"cs{os.getpid()}", partitions=instances, tool_partitions=instances)
    env = {
        "AGENTQUEUE_APP": APP,
        "AGENTQUEUE_STORE": f"sqlite:///{workdir}/sessions.db",
        "AGENTQUEUE_NAMESPACE": topology.namespace,
        "AGENTQUEUE_PARTITIONS": str(instances),
        "AGENTQUEUE_TOOL_PARTITIONS": str(instances),
        "AGENTQUEUE_MODEL": "scripted",
        "AGENTQUEUE_CHAOS_LOG": str(workdir / "handlers.log"),
        "PYTHONPATH": os.getcwd(),
    }
    if warm:  # what `deploy fc` gives a function with a warm pool: AgentScope in the initializer
        from agentqueue.workers.agent_handler import AGENTSCOPE_MODULES

        env["AGENTQUEUE_PRELOAD"] = ",".join(AGENTSCOPE_MODULES)
    family = REQUESTS if function == "agents" else TOOLS
    with LocalMNS(workdir / "mns.db") as mns:
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"] = mns.access_id
        os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = mns.access_key
        url = f"mns://{mns.host}:{mns.port}?wait=1"
        env["AGENTQUEUE_BROKER"] = url
        async with MNSBroker(url) as broker:
            await broker.declare(topology)
            reply_queue = topology.reply_queue("cold")
            await broker.declare_reply_queue(reply_queue)
            extra = {"provisioned": warm} if warm else {}
            fc = LocalFC(
                broker,
                topology,
                env=env,
                max_instances=instances,
                idle_timeout=600,
                trigger=TriggerConfig(batch_size=1, batch_window=0.05),
                queues=topology.queues(family),
                **extra,
            )
            router = ReplyRouter(broker, reply_queue)
            envelopes = [
                _envelope(function, s, reply_queue) for s in _sessions(instances, instances)
            ]
            inboxes = {e.id: router.expect(e.id) for e in envelopes}
            first: dict[str, float] = {}
            final: dict[str, float] = {}
            async with anyio.create_task_group() as tg:
                await tg.start(router.run)
                t_pool = time.monotonic()
                await tg.start(fc.run)  # returns once the provisioned instances are ready
                pool_s = time.monotonic() - t_pool
                t0 = time.monotonic()
                for envelope in envelopes:
                    await broker.publish(topology.route(envelope), encode(envelope))

                async def collect(event_id: str) -> None:
                    while True:
                        reply = await inboxes[event_id].get()
                        first.setdefault(event_id, time.monotonic() - t0)
                        body = reply.body
                        if not isinstance(body, ResultEvent) or body.kind in TERMINAL_KINDS:
                            final[event_id] = time.monotonic() - t0
                            return

                with anyio.fail_after(900):
                    async with anyio.create_task_group() as waits:
                        for event_id in inboxes:
                            waits.start_soon(collect, event_id)
                tg.cancel_scope.cancel()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the instances, all stopped by now
    return {
        "instances_cpu_s": used.ru_utime + used.ru_stime,  # hardly moved by the machine's load
        "first_s": sorted(first.values()),
        "final_s": sorted(final.values()),
        "pool_s": pool_s if warm else None,
        "cold_starts": fc.stats.cold_starts,
        "warm_invocations": fc.stats.warm_invocations,
        "cold_start_ms": fc.stats.cold_start_ms,
    }


def importtime(statement: str) -> int:
    """Cumulative microseconds of the top-level imports of `statement` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    total = 0
    for line in out.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if not name.startswith(" ") or name.startswith("  "):  # only the top level counts
            continue
        total += int(cumulative)
    return total


# ----------------------------------------------------------------------------- the rounds


def _child(tree: Path, *args: str) -> dict[str, Any]:
    python = tree / ".venv" / "bin" / "python"
    argv = [str(python), str(Path(__file__).resolve()), *args]
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table (markdown), and JSON with `--json PATH`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="name=path (a checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--together", type=int, default=6, help="instances starting at once")
    parser.add_argument("--warm", type=int, default=6, help="the warm pool's size (0: skip)")
    parser.add_argument("--functions", default="tools,agents")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # function:instances:warm
    parser.add_argument("--importtime", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scenario:
        import anyio

        function, instances, warm = args.scenario.split(":")
        with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
            result = anyio.run(scenario, function, int(instances), int(warm), Path(tmp))
        print(json.dumps(result))
        return 0
    if args.importtime:
        print(json.dumps({"us": importtime(IMPORTS[args.importtime])}))
        return 0

    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(ROOT)}
    trees = {name: Path(path).resolve() for name, path in trees.items()}
    last = list(trees)[-1]
    cases: list[tuple[str, str, int, int]] = []  # tree, function, instances, warm
    for function in args.functions.split(","):
        for n in (1, args.together):
            cases += [(tree, function, n, 0) for tree in trees]
            if function == "agents" and args.warm and n == args.together:
                cases.append((last, function, n, min(args.warm, n)))
    results: dict[str, list[dict[str, Any]]] = {}
    load: list[float] = []
    for r in range(args.rounds):
        for name in trees:
            for what in IMPORTS:
                got = _child(trees[name], "--importtime", what)
                results.setdefault(f"{name}|import|{what}", []).append(got)
        order = cases if r % 2 == 0 else cases[::-1]  # neither tree always goes first
        for tree, function, n, warm in order:
            load.append(os.getloadavg()[0])
            got = _child(trees[tree], "--scenario", f"{function}:{n}:{warm}")
            results.setdefault(f"{tree}|{function}|{n}|{warm}", []).append(got)
            print(f"round {r + 1}: {tree} {function} x{n} warm {warm}: {got['first_s']}",
                  file=sys.stderr, flush=True)  # fmt: skip

    lines = [
        "| function | instances | warm pool | tree | first reply, s: median (min-max) |"
        " slowest first reply, s | final reply, s | cold starts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for tree, function, n, warm in cases:
        runs = results[f"{tree}|{function}|{n}|{warm}"]
        firsts = [statistics.median(x["first_s"]) for x in runs]
        slowest = [max(x["first_s"]) for x in runs]
        finals = [statistics.median(x["final_s"]) for x in runs]
        colds = statistics.median(x["cold_starts"] for x in runs)
        lines.append(
            f"| {function} | {n} | {warm or '-'} | {tree} | {_spread(firsts)} |"
            f" {_spread(slowest)} | {_spread(finals)} | {colds:g} |"
        )
    lines += ["", "| import before the first event | tree | ms cumulative: median (min-max) |"]
    lines.append("| --- | --- | --- |")
    for what in IMPORTS:
        for name in trees:
            us = [x["us"] / 1000 for x in results[f"{name}|import|{what}"]]
            lines.append(f"| {what} | {name} | {_spread(us).replace('.00', '')} |")
    lines.append("")
    lines.append(
        f"{args.rounds} rounds, interleaved; load average 1 min during the run: median"
        f" {statistics.median(load):.1f} (min {min(load):.1f}, max {max(load):.1f})"
        f" on {os.cpu_count()} CPUs"
    )
    print("\n".join(lines))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"results": results, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
