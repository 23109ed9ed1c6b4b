"""A chaos run that must lose nothing: real workers SIGKILLed, the broker restarted, the client cut.

    uv run python benchmarks/chaos.py                     # 10,000 requests over 200 sessions
    uv run python benchmarks/chaos.py --reduced           # 1,000 requests, one of each fault
    uv run python benchmarks/chaos.py --cluster 3         # 3 RabbitMQ nodes, one SIGKILLed

It starts its own RabbitMQ node (or cluster), 3 agent worker processes and 1 tool worker
process (`agentqueue worker --app benchmarks.chaos_app:app`), and sends the requests through a
`Client` whose connection runs over a TCP proxy on 127.0.0.1. While the requests run, a random
worker is SIGKILLed every few seconds and started again, the client's connection is cut once
(the proxy drops it; the client's durable reply queue keeps the replies meanwhile), the broker
is restarted once, and on a cluster one node is SIGKILLed and left down. The table it prints
(and writes to benchmarks/results/chaos-latest.md) comes from three records: the client's
answers, a log line per handler run, and the session states committed in the store. It exits 1
unless lost, duplicate effects, order violations and final answers without an effect are all 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ, RabbitMQCtlError
from agentqueue.deploy.local.rabbitmq_cluster import LocalRabbitMQCluster
from agentqueue.deploy.local.redis import LocalRedis
from agentqueue.deploy.local.tcp_proxy import TcpProxy
from benchmarks.chaos_cloud import cloud_topology, run_cloud
from benchmarks.chaos_driver import (
    Chaos,
    WorkerFleet,
    drive,
    worker_environ,
)
from benchmarks.chaos_load import ChaosLoad, chaos_client
from benchmarks.chaos_report import (
    ChaosEvents,
    committed_sequences,
    dead_lettered,
    measure,
    read_handler_log,
    render,
    still_queued,
    stored_answers,
    write_section,
)

log = logging.getLogger("agentqueue.chaos")

RESULTS = Path(__file__).resolve().parent / "results" / "chaos-latest.md"
NAMESPACE = "chaos"
QUORUM_SETTLE = 1.5  # RabbitMQ 3.10 forgets a quorum queue declared < 0.5 s before a SIGKILL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, help="requests in all (default 10000; --reduced 1000)")
    p.add_argument(
        "--sessions", type=int, help="sessions they are spread over (default 200; --reduced 50)"
    )
    p.add_argument(
        "--window", type=int, default=3, help="requests in flight per session (default 3)"
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="NODES",
        help="run on a RabbitMQ cluster of this many nodes and SIGKILL one (default: one node)",
    )
    p.add_argument(
        "--reduced",
        action="store_true",
        help="1,000 requests, one worker kill, one client cut, one broker restart",
    )
    p.add_argument(
        "--cloud",
        action="store_true",
        help="the Alibaba Cloud path: local MNS server and FC emulator, FC instances SIGKILLed",
    )
    p.add_argument(
        "--instances",
        type=int,
        default=6,
        help="--cloud: the most instances up at once, per function (default 6)",
    )
    p.add_argument(
        "--store",
        choices=["sqlite", "redis"],
        help="session store (default sqlite; redis with --cluster)",
    )
    p.add_argument("--agents", type=int, default=3, help="agent worker processes (default 3)")
    p.add_argument("--tools", type=int, default=1, help="tool worker processes (default 1)")
    p.add_argument(
        "--kill-every",
        dest="kill_every",
        type=float,
        default=6.0,
        help="mean seconds between worker SIGKILLs (default 6)",
    )
    p.add_argument(
        "--kill-node",
        dest="kill_node",
        type=int,
        default=0,
        help="which cluster node to SIGKILL (default 0, the one clients meet first)",
    )
    p.add_argument(
        "--lease-ttl",
        dest="lease_ttl",
        type=float,
        default=10.0,
        help="session lease seconds: how long a killed worker's sessions stay locked",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="request deadline in seconds")
    p.add_argument(
        "--max-seconds",
        dest="max_seconds",
        type=float,
        help="stop sending and waiting after this long (default 3600; --reduced 240)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS, help=f"Markdown file (default {RESULTS})")
    p.add_argument("--keep", action="store_true", help="keep the run dir (kept anyway on failure)")
    args = p.parse_args(argv)
    args.requests = args.requests or (1000 if args.reduced else 10_000)
    args.sessions = args.sessions or (50 if args.reduced else 200)
    args.store = args.store or ("redis" if args.cluster else "sqlite")
    args.max_seconds = args.max_seconds or (240.0 if args.reduced else 3600.0)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chaos run; 0 when nothing was lost, duplicated or reordered."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    run_dir = Path(tempfile.mkdtemp(prefix="agentqueue-chaos-"))
    log.info("run dir %s", run_dir)
    with contextlib.ExitStack() as stack:
        if args.cloud:
            nodes = []  # the cloud run starts its own MNS server
        elif args.cluster:
            cluster = stack.enter_context(LocalRabbitMQCluster(run_dir / "rabbit", args.cluster))
            nodes = cluster.nodes
        else:
            nodes = [stack.enter_context(LocalRabbitMQ(run_dir / "rabbit"))]
        if args.store == "redis":
            store_url = stack.enter_context(LocalRedis(run_dir / "redis")).url
        else:
            store_url = f"sqlite:///{run_dir}/sessions.db"
        passed = anyio.run(run, args, nodes, store_url, run_dir)
    if passed and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run dir kept: {run_dir}", file=sys.stderr)
    return 0 if passed else 1


async def run(
    args: argparse.Namespace, nodes: list[LocalRabbitMQ], store_url: str, run_dir: Path
) -> bool:
    """Send the load under chaos, then measure and print the table; True when it passed."""
    topology = cloud_topology(NAMESPACE) if args.cloud else Topology(namespace=NAMESPACE)
    handler_log = run_dir / "handlers.log"
    if args.cloud:
        load, events, seconds, dead = await run_cloud(args, topology, store_url, run_dir)
        queued: dict[str, str] = {}  # the functions' triggers still consume: no census there
        title = "cloud path: local MNS + FC emulator"
        setup = (
            f"local MNS server (its own process); FC emulator with an agents and a tools"
            f" function, up to {args.instances} instances each (a trigger per partition queue,"
            f" batches of up to 10); store {args.store};"
        )
    else:
        load, events, seconds, dead, queued = await run_rabbitmq(
            args, nodes, topology, store_url, run_dir
        )
        title = f"{len(nodes)}-node cluster" if args.cluster else "single node"
        setup = (
            f"RabbitMQ, {len(nodes)} node(s); {args.agents} agent + {args.tools} tool worker"
            f" processes; store {args.store};"
        )
    title += " (reduced)" if args.reduced else ""
    setup += (
        f" {topology.partitions} partitions; {args.requests} requests over {args.sessions}"
        f" sessions, up to {args.window} in flight per session; lease TTL {args.lease_ttl:.0f} s;"
        f" request deadline {args.timeout:.0f} s; seed {args.seed}."
    )
    committed = await committed_sequences(store_url, {o.session for o in load.outcomes.values()})
    stored = await stored_answers(store_url, load.outcomes.values())
    result = measure(
        title=title, setup=setup, seconds=seconds, outcomes=load.outcomes,
        handler_log=read_handler_log(handler_log), committed=committed, dead_lettered=dead,
        publish_retries=load.publish_retries, events=events, stored=stored, queued=queued,
        load_started=load.started,
    )  # fmt: skip
    section = render(result)
    print(section)
    write_section(args.out, title, section)
    return result.passed


async def run_rabbitmq(
    args: argparse.Namespace,
    nodes: list[LocalRabbitMQ],
    topology: Topology,
    store_url: str,
    run_dir: Path,
) -> tuple[ChaosLoad, ChaosEvents, float, dict[str, str], dict[str, str]]:
    """Start the workers and send the load under chaos; the load, the chaos done, the seconds it
    took, the ids found dead-lettered and those still queued once the workers stopped."""
    fleet = WorkerFleet(
        run_dir, store_url, NAMESPACE, worker_environ(run_dir / "handlers.log", args.lease_ttl)
    )
    urls = [n.url for n in nodes]
    for i in range(args.agents + args.tools):
        # Each worker meets a different node first, as clients spread over a cluster would.
        order = urls[i % len(urls) :] + urls[: i % len(urls)]
        fleet.add("agents" if i < args.agents else "tools", ",".join(order))
    proxies = [TcpProxy(n.port) for n in nodes]
    dead: dict[str, str] = {}
    queued: dict[str, str] = {}
    try:
        async with anyio.create_task_group() as tg:
            for proxy in proxies:
                await tg.start(proxy.run)
            client_url = ",".join(p.url(n.url) for p, n in zip(proxies, nodes, strict=True))
            client = chaos_client(client_url, topology, args.timeout)
            async with client:
                for slot in fleet.slots:
                    fleet.start(slot)
                await fleet.wait_serving()
                await anyio.sleep(QUORUM_SETTLE)
                load = ChaosLoad(
                    client, args.requests, args.sessions, window=args.window, timeout=args.timeout
                )
                chaos = Chaos(
                    fleet.kill_random,
                    progress=lambda: load.answered / args.requests,
                    rng=random.Random(args.seed),
                    kill_every=None if args.reduced else args.kill_every,
                    cut_client=lambda: sum(p.cut() for p in proxies),
                    restart_broker=nodes[-1 if args.cluster else 0].restart,
                    kill_node=_node_killer(nodes, args.kill_node) if args.cluster else None,
                )
                log.info("%d workers serving", len(fleet.slots))
                seconds = await drive(
                    load,
                    chaos,
                    max_seconds=args.max_seconds,
                    more=lambda: f"worker crashes {fleet.crashes}",
                    alongside=[fleet.supervise],
                )
                if load.answered < args.requests:  # stalled: the worker logs say on what
                    fleet.describe()
                    await anyio.to_thread.run_sync(_write_queue_list, nodes, run_dir)
                await anyio.to_thread.run_sync(fleet.stop)
                dead = await dead_lettered(client, topology)
                queued = await still_queued(client, topology)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(fleet.stop)
    return load, chaos.events, seconds, dead, queued


def _write_queue_list(nodes: list[LocalRabbitMQ], run_dir: Path) -> None:
    """Each queue's ready and unacked counts and consumers, while the workers still run, from
    the first node that answers (queues.txt in the run dir)."""
    for node in nodes:
        try:
            listing = node.ctl(
                "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers"
            )
        except (RabbitMQCtlError, OSError):
            continue
        (run_dir / "queues.txt").write_text(listing)
        log.info("queues while the workers ran: %s", run_dir / "queues.txt")
        return


def _node_killer(nodes: list[LocalRabbitMQ], index: int):  # type: ignore[no-untyped-def]
    def kill() -> str:
        nodes[index].kill()
        return nodes[index].node_name

    return kill


if __name__ == "__main__":
    sys.exit(main())
