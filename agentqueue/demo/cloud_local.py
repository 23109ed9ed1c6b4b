"""`agentqueue demo --cloud-local`: the demo's conversations through MNS queues and FC instances.

Everything runs on this machine: a local MNS-compatible server (in a temporary directory), the FC
emulator with its trigger per partition queue, and handler instances in their own processes,
started on demand. The conversations and their printing are the embedded demo's.
"""

from __future__ import annotations

import sys
import tempfile
from typing import TextIO

import anyio

from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.mns_config import ENV_ID, ENV_SECRET, Credentials
from agentqueue.client import Client
from agentqueue.demo.embedded import CONVERSATIONS, DemoReport, converse_all
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.settings import Settings


async def run_cloud_local_demo(
    app_spec: str,
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    instances: int = 4,
) -> DemoReport:
    """Run 3 sessions x 2 turns through local MNS and FC; print the exchanges and FC's counts."""
    topology = settings.topology
    with tempfile.TemporaryDirectory(prefix="agentqueue-cloud-") as tmp:
        mns = LocalMNS(f"{tmp}/mns.db")
        await anyio.to_thread.run_sync(mns.start)
        try:
            url = f"mns://{mns.host}:{mns.port}?wait=1"
            function_env = {
                "AGENTQUEUE_APP": app_spec,
                "AGENTQUEUE_BROKER": url,
                "AGENTQUEUE_STORE": f"sqlite:///{tmp}/sessions.db",
                "AGENTQUEUE_NAMESPACE": topology.namespace,
                "AGENTQUEUE_PARTITIONS": str(topology.partitions),
                "AGENTQUEUE_TOOL_PARTITIONS": str(topology.tool_partitions),
                ENV_ID: mns.access_id,
                ENV_SECRET: mns.access_key,
            }
            broker = MNSBroker(url, credentials=Credentials(mns.access_id, mns.access_key))
            async with broker:
                await broker.declare(topology)
                fc = LocalFC(
                    broker,
                    topology,
                    env=function_env,
                    max_instances=instances,
                    trigger=TriggerConfig(batch_window=0.1),
                )
                async with anyio.create_task_group() as tg:
                    await tg.start(fc.run)
                    async with Client(
                        broker, topology=topology, default_timeout=settings.timeout
                    ) as client:
                        replies, lost = await converse_all(client, out)
                    tg.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(mns.stop)
    print(fc.stats.report(), file=out)
    turns = sum(len(t) for _, t in CONVERSATIONS)
    return DemoReport(len(CONVERSATIONS), turns, replies, lost)
