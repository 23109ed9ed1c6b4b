"""Human approval of tool calls on the FC emulator: the paused turn waits in the store between
invocations, survives its instance being killed, and its tool runs once or never."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.protocol import new_id
from tests.deploy.test_local_fc import function_env
from tests.test_approvals import PAID, denied, effects, paused

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_on_the_fc_emulator_approve_deny_waiting_turns_a_killed_instance_and_a_timeout(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"fa{new_id()[:6]}", partitions=1, tool_partitions=1)
    env = function_env(mns_url, topology, tmp_path, APP="tests.apps.approvals:app")
    log = tmp_path / "effects.log"
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        fc = LocalFC(
            broker,
            topology,
            env=env,
            max_instances=2,
            trigger=TriggerConfig(batch_size=4, batch_window=0.05),
        )
        async with anyio.create_task_group() as tg, Client(broker, topology=topology) as client:
            await tg.start(fc.run)
            with anyio.fail_after(240):
                # Approved, then approved again: the tool ran once, the second is answered
                # from the store. A later turn waited behind the pause, and ran after it.
                first, _ = await paused(client, '/tool pay {"to": "bo", "amount": 5}', "yes", 90)
                later = await client.submit(
                    '/tool transfer {"to": "bo", "amount": 3}', session_id="yes"
                )
                # The paused turn's instance goes away; the decision is taken by another.
                assert fc.kill_instance(random.Random(1)) is not None
                approved = await client.approve(first.id, session_id="yes")
                again = await client.approve(first.id, session_id="yes")
                assert approved.text == again.text == (await first.final()).text == PAID
                assert (await later.final()).text == "Tool transfer returned: transferred 3 to bo."

                # Denied: never run, and the agent says why.
                handle, _ = await paused(client, '/tool pay {"to": "cy", "amount": 7}', "no")
                answer = await client.deny(handle.id, session_id="no", reason="not this month")
                assert answer.text == (await handle.final()).text == denied("pay", "not this month")

                # Nobody decides: the timeout's denial, held back by MNS, does; a decision
                # after it is answered from the store.
                handle, asked = await paused(
                    client, '/tool pay_soon {"to": "ed", "amount": 1}', "late"
                )
                assert asked.approval is not None and asked.approval.expires_at is not None
                final = await handle.final()
                late = await client.approve(handle.id, session_id="late")
                reason = "no decision within 1 s (the approval timed out)"
                assert final.text == late.text == denied("pay_soon", reason)
            tg.cancel_scope.cancel()
    assert effects(log) == ["pay bo 5", "transfer bo 3"]
