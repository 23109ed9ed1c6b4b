"""Sandboxes on the FC path, shown on the local emulator: the tools function's instance hosts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.protocol import ToolResult, new_id
from tests.deploy.test_local_fc import function_env, publish_and_collect, tool_call
from tests.workers.test_sandbox import bwrap

pytestmark = [pytest.mark.broker, pytest.mark.slow]
__all__ = ["bwrap"]  # the fixture that fails (under CI) when bubblewrap is missing


async def test_an_fc_instance_keeps_a_sessions_sandbox_across_its_calls(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"x{new_id()[:6]}", partitions=1, tool_partitions=1)
    reply_queue = topology.reply_queue("test")
    calls = [
        ("write_file", {"path": "t.csv", "content": "a\n1\n"}),
        ("run_ipython_cell", {"code": "n = len(open('t.csv').read().split())"}),
        ("run_ipython_cell", {"code": "n * 10"}),
    ]
    envelopes = [tool_call("s-fc", name, args, reply_queue) for name, args in calls]
    env = function_env(
        mns_url,
        topology,
        tmp_path,
        APP="tests.apps.sandbox_app:app",
        SANDBOX_ROOT=str(tmp_path / "instance"),
    )
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        fc = LocalFC(
            broker, topology, env=env, max_instances=1, trigger=TriggerConfig(batch_size=1)
        )
        got = await publish_and_collect(broker, fc, topology, envelopes, reply_queue)
    outputs = [got[e.id].body for e in envelopes]
    assert all(isinstance(r, ToolResult) for r in outputs)
    assert [(r.ok, r.output) for r in outputs] == [  # type: ignore[union-attr]
        (True, "wrote 4 characters to t.csv"),
        (True, ""),
        (True, "20\n"),
    ]
    assert (tmp_path / "instance" / "s-fc" / "t.csv").read_text() == "a\n1\n"
