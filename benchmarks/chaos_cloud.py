"""The chaos run on the Alibaba Cloud path: a local MNS server, the FC emulator, instance kills.

`chaos.py --cloud` sends the same requests through MNS queues to FC instances (processes of
`agentqueue.deploy.local.fc_instance` running `agentqueue.workers.fc.handler`, started on demand
by the emulator's queue triggers; one function for the agent queues and one for the tool
queues), and does the cloud's faults to them:

- an instance SIGKILLed every few seconds, preferably one in the middle of an invocation: the
  trigger retries its batch on another instance (a cold start, if none is idle);
- the MNS server (a process of its own) restarted once: every long poll, publish and delete in
  flight fails, and the clients (the triggers, the instances, the caller) keep trying until it
  is back;
- the caller's connections cut once (it talks to MNS through a TCP proxy).

The records and the table are the RabbitMQ run's (see chaos_report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio

from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.mns_config import ENV_ID, ENV_SECRET, Credentials
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.deploy.local.mns import DEFAULT_ACCESS_ID, DEFAULT_ACCESS_KEY
from agentqueue.deploy.local.ports import HOST, free_port
from agentqueue.deploy.local.process import end_child, spawn_child
from agentqueue.deploy.local.tcp_proxy import TcpProxy
from benchmarks.chaos_app import LOG_ENV
from benchmarks.chaos_driver import ROOT, Chaos, drive
from benchmarks.chaos_load import ChaosLoad, chaos_client
from benchmarks.chaos_report import ChaosEvents, dead_lettered

log = logging.getLogger("agentqueue.chaos")

APP = "benchmarks.chaos_app:app"
PARTITIONS = 4  # per family: 4 agent and 4 tool triggers, so instances stay few on 2 cores


class MNSServer:
    """The local MNS server in a process of its own (`agentqueue local mns`), restartable on
    the same port and database, as a service restart would be."""

    def __init__(self, run_dir: Path, wait: int = 1) -> None:
        self.run_dir = run_dir
        self.wait = wait  # the long poll of every client of it, in seconds
        self.host = HOST
        self.port = free_port()
        self.access_id, self.access_key = DEFAULT_ACCESS_ID, DEFAULT_ACCESS_KEY
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The broker URL of the server itself (not through the proxy)."""
        return f"mns://{self.host}:{self.port}?wait={self.wait}"

    @property
    def pid(self) -> int | None:
        """The server process's pid (it leads its own process group), None before start."""
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 30) -> None:
        """Start the server and return once it accepts connections."""
        self.starts += 1
        argv = [sys.executable, "-m", "agentqueue.cli", "local", "mns", "--host", self.host,
                "--port", str(self.port), "--db", str(self.run_dir / "mns.db")]  # fmt: skip
        self.proc = spawn_child(
            argv,
            env=dict(os.environ),
            cwd=ROOT,
            log_path=self.run_dir / "mns" / f"server-{self.starts}.log",
            marker=self.run_dir / "mns",
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local MNS server did not start; see {self.run_dir}/mns")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the server (it finishes the requests under way) and wait for it."""
        if self.proc is not None:
            end_child(self.proc, sig=signal.SIGTERM, timeout=10)

    def restart(self) -> None:
        """Stop and start again: every poll, publish and delete in flight fails meanwhile."""
        self.stop()
        self.start()


def app_environ(
    broker_url: str, store_url: str, topology: Topology, lease_ttl: float, handler_log: Path
) -> dict[str, str]:
    """The settings of a process serving the chaos app with the offline model."""
    return {
        "AGENTQUEUE_APP": APP,
        "AGENTQUEUE_BROKER": broker_url,
        "AGENTQUEUE_STORE": store_url,
        "AGENTQUEUE_NAMESPACE": topology.namespace,
        "AGENTQUEUE_PARTITIONS": str(topology.partitions),
        "AGENTQUEUE_TOOL_PARTITIONS": str(topology.tool_partitions),
        "AGENTQUEUE_LEASE_TTL": str(lease_ttl),
        "AGENTQUEUE_MODEL": "scripted",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        LOG_ENV: str(handler_log),
    }


def function_environ(
    args: argparse.Namespace,
    mns: MNSServer,
    store_url: str,
    topology: Topology,
    handler_log: Path,
) -> dict[str, str]:
    """The function's environment, as `deploy fc` would configure it (offline model)."""
    return {
        **app_environ(mns.url, store_url, topology, args.lease_ttl, handler_log),
        ENV_ID: mns.access_id,
        ENV_SECRET: mns.access_key,
    }


def cloud_topology(namespace: str) -> Topology:
    """The cloud run's queues: fewer partitions than the RabbitMQ run's (see PARTITIONS)."""
    return Topology(namespace=namespace, partitions=PARTITIONS, tool_partitions=PARTITIONS)


async def run_cloud(
    args: argparse.Namespace, topology: Topology, store_url: str, run_dir: Path
) -> tuple[ChaosLoad, ChaosEvents, float, dict[str, str]]:
    """Send the load through local MNS and FC under chaos; the load, the chaos, the seconds it
    took and the ids found dead-lettered."""
    mns = MNSServer(run_dir)
    await anyio.to_thread.run_sync(mns.start)
    credentials = Credentials(mns.access_id, mns.access_key)
    environ = function_environ(args, mns, store_url, topology, run_dir / "handlers.log")
    proxy = TcpProxy(mns.port)
    try:
        async with MNSBroker(mns.url, credentials=credentials) as trigger_side:
            await trigger_side.declare(topology)
            # Two functions, as a deployment would scale them apart: an agent turn holds its
            # instance while it waits for a tool, so tools must not wait for agents' instances.
            functions = [
                LocalFC(
                    trigger_side,
                    topology,
                    env=environ,
                    max_instances=args.instances,
                    trigger=TriggerConfig(batch_window=0.1),
                    queues=topology.queues(family),
                    cwd=str(ROOT),
                )
                for family in (REQUESTS, TOOLS)
            ]
            async with anyio.create_task_group() as tg:
                await tg.start(proxy.run)
                for fc in functions:
                    await tg.start(fc.run)
                # The caller talks to MNS through the proxy, whose cut drops its connections.
                caller = MNSBroker(f"mns://{mns.host}:{proxy.port}?wait=1", credentials=credentials)
                client = chaos_client(caller, topology, args.timeout)
                async with caller, client:
                    load = ChaosLoad(
                        client,
                        args.requests,
                        args.sessions,
                        window=args.window,
                        timeout=args.timeout,
                    )
                    chaos = Chaos(
                        functools.partial(_kill_instance, functions, per_instance=not args.reduced),
                        progress=lambda: load.answered / args.requests,
                        rng=random.Random(args.seed),
                        kill_every=None if args.reduced else args.kill_every,
                        cut_client=proxy.cut,
                        restart_broker=mns.restart,
                        events=ChaosEvents(
                            worker_kills={"agent instances": 0, "tool instances": 0},
                            respawn="the trigger retried the batch on another instance",
                            skipped_when=(
                                f"fewer than all {2 * args.instances} instances were up:"
                                " the kill rate is per instance"
                            ),
                        ),
                    )
                    log.info(
                        "FC emulator up: agents and tools functions, at most %d instances each",
                        args.instances,
                    )
                    seconds = await drive(
                        load,
                        chaos,
                        max_seconds=args.max_seconds,
                        more=lambda: _fc_report(functions),
                    )
                    dead = await dead_lettered(client, topology)
                tg.cancel_scope.cancel()
        log.info("%s", _fc_report(functions))
    finally:
        await anyio.to_thread.run_sync(mns.stop)
    return load, chaos.events, seconds, dead


def _kill_instance(
    functions: list[LocalFC], rng: random.Random, *, per_instance: bool = True
) -> str | None:
    """SIGKILL an instance of a random function that has one up; the kill's role (None: no
    kill this time).

    Hosts fail per instance: a due kill strikes with the share of the functions' instances
    that are up. With one rate for the whole fleet, a fleet scaled down to the one instance
    left with work had it killed every few seconds, each time before its cold start ended,
    and the run's last batch never finished (a halved run stalled at 9,557 of 10,000). The
    reduced run's one kill (`per_instance` off) strikes whatever is up."""
    up = sum(fc.instances for fc in functions)
    if per_instance and rng.random() >= up / sum(fc.max_instances for fc in functions):
        return None
    named = list(zip(("agents", "tools"), functions, strict=True))
    rng.shuffle(named)
    for name, fc in named:
        pid = fc.kill_instance(rng)
        if pid is not None:
            log.warning("chaos: SIGKILL of an instance of the %s function (pid %d)", name, pid)
            return f"{name[:-1]} instances"
    return None


def _fc_report(functions: list[LocalFC]) -> str:
    return "; ".join(
        f"{name} {fc.stats.report()}"
        for name, fc in zip(("agents", "tools"), functions, strict=True)
    )
