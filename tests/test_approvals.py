"""Human approval of tool calls over RabbitMQ with real worker processes: a paused turn frees
its worker, later turns of its session wait behind it, and the tool runs once or never."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentqueue import Client, RequestBusy, RequestFailed
from agentqueue.broker.topology import Topology
from agentqueue.client import RequestHandle
from agentqueue.protocol import ResultEvent, new_id
from tests import processes
from tests.processes import ROOT, WorkerProcess, workers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PAID = "Tool pay returned: paid 5 to bo."


def denied(tool: str, reason: str) -> str:
    return (
        f'The tool {tool} failed: <system-reminder>The execution of tool "{tool}" is denied by'
        f" user!</system-reminder> Reason: {reason}."
    )


def worker_args(url: str, ns: str, store: str) -> tuple[str, ...]:
    return processes.worker_args("tests.apps.approvals:app", url, ns, store, balance=False)


def effects(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


class Served:
    def __init__(self, topology: Topology, log: Path, pair: list[WorkerProcess]) -> None:
        self.topology, self.log, self.pair = topology, log, pair


@pytest.fixture(scope="module")
def served(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two real worker processes (one active, one standby) serving the approval app; the last
    test of the module kills the active one."""
    ns = f"ap{new_id()[:6]}"
    where = tmp_path_factory.mktemp("approvals")
    log = where / "effects.log"
    env = {**os.environ, "AGENTQUEUE_TEST_LOG": str(log)}
    args = worker_args(rabbitmq_url, ns, f"sqlite:///{where}/sessions.db")
    with workers(args, args, env=env) as pair:
        yield Served(Topology(namespace=ns, partitions=2, tool_partitions=2), log, pair)


async def paused(
    client: Client, text: str, session: str, wait: float = 60
) -> tuple[RequestHandle, ResultEvent]:
    """Submit a turn and return once it asks for approval."""
    handle = await client.submit(text, session_id=session, timeout=120)
    with anyio.fail_after(wait):
        async for event in handle.events():
            if event.kind == "approval_required":
                return handle, event
    raise AssertionError(f"{text!r} ended without asking for approval")


def wait_for_line(*candidates: WorkerProcess, text: str, timeout: float = 30) -> WorkerProcess:
    """The worker that logs `text`, once one has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in candidates:
            if any(text in line for line in worker.lines):
                return worker
        time.sleep(0.05)
    tail = "\n".join(line for w in candidates for line in w.lines[-20:])
    raise AssertionError(f"no worker logged {text!r}:\n{tail}")


async def test_an_approved_call_runs_once_resumes_the_turn_and_a_second_approve_is_answered_from_the_store(
    rabbitmq_url: str, served: Served
) -> None:
    async with Client(rabbitmq_url, topology=served.topology) as client:
        handle, asked = await paused(client, '/tool pay {"to": "bo", "amount": 5}', "yes")
        assert asked.approval is not None
        assert (asked.approval.tool, asked.approval.arguments) == ("pay", {"to": "bo", "amount": 5})
        assert effects(served.log) == []  # asked, not run
        approved = await client.approve(handle.id, asked.approval.call_id, session_id="yes")
        again = await client.approve(handle.id, session_id="yes")
        final = await handle.final()
        with pytest.raises(RequestFailed) as unknown:
            await client.approve("nosuchrequest", session_id="yes")
    assert approved.text == final.text == again.text == PAID
    assert approved.request_id == final.request_id == handle.id
    assert effects(served.log) == ["pay bo 5"]  # once, whatever the second approve said
    assert str(unknown.value) == (
        "request nosuchrequest of session 'yes' has no tool call waiting for approval: check"
        " the request id (and call id) the approval_required event named"
    )


async def test_a_denied_call_never_runs_and_the_agent_is_told_why(
    rabbitmq_url: str, served: Served
) -> None:
    async with Client(rabbitmq_url, topology=served.topology) as client:
        handle, _ = await paused(client, '/tool pay {"to": "cy", "amount": 7}', "no")
        answer = await client.deny(handle.id, session_id="no", reason="not this month")
        final = await handle.final()
        late = await client.approve(handle.id, session_id="no")  # decided already
    assert answer.text == final.text == late.text == denied("pay", "not this month")
    assert not any(line.startswith("pay cy") for line in effects(served.log))


async def test_a_later_turn_of_the_session_waits_behind_the_paused_one_and_runs_after_it(
    rabbitmq_url: str, served: Served
) -> None:
    async with Client(rabbitmq_url, topology=served.topology) as client:
        first, _ = await paused(client, '/tool pay {"to": "di", "amount": 5}', "order")
        later = await client.submit('/tool transfer {"to": "di", "amount": 3}', session_id="order")
        last = await client.submit('/tool transfer {"to": "di", "amount": 4}', session_id="order")
        for handle in (later, last):
            wait_for_line(*served.pair, text=f"request {handle.id} waits behind the paused turn")
        assert "transfer di 3" not in effects(served.log)  # waiting, not run
        other = await client.call("hello", session_id="elsewhere")  # the worker is not blocked
        with pytest.raises(RequestBusy) as refused:
            await client.call("hello", session_id="order", on_busy="reject")
        await client.approve(first.id, session_id="order")
        with anyio.fail_after(60):
            assert (await first.final()).text == "Tool pay returned: paid 5 to di."
            assert (await later.final()).text == "Tool transfer returned: transferred 3 to di."
            assert (await last.final()).text == "Tool transfer returned: transferred 4 to di."
    assert other.text == "You said: hello"
    assert str(refused.value) == (
        f"session 'order' is busy with request {first.id} (on_busy='reject'):"
        " send it again when that turn has finished"
    )
    mine = [line for line in effects(served.log) if " di " in line]
    assert mine == ["pay di 5", "transfer di 3", "transfer di 4"]


async def test_an_approval_that_never_comes_turns_into_a_denial(
    rabbitmq_url: str, served: Served
) -> None:
    async with Client(rabbitmq_url, topology=served.topology) as client:
        handle, asked = await paused(client, '/tool pay_soon {"to": "ed", "amount": 1}', "late")
        assert asked.approval is not None and asked.approval.expires_at is not None
        with anyio.fail_after(60):
            final = await handle.final()  # nobody decides: the timeout does
        late = await client.approve(handle.id, session_id="late")
    reason = "no decision within 1 s (the approval timed out)"
    assert final.text == late.text == denied("pay_soon", reason)
    assert not any(line.startswith("pay_soon") for line in effects(served.log))


def standby_name(worker: WorkerProcess) -> str:
    """The worker id a process logs when it starts serving."""
    for line in worker.lines:
        if " serving " in line:
            return line.split("worker ", 1)[1].split()[0]
    raise AssertionError("the worker never said it was serving")


async def test_a_cancel_reaches_the_paused_turn_ends_it_cancelled_and_lets_the_next_turn_run(
    rabbitmq_url: str, served: Served
) -> None:
    async with Client(rabbitmq_url, topology=served.topology) as client:
        first, _ = await paused(client, '/tool pay {"to": "fy", "amount": 2}', "stop")
        later = await client.submit("hello", session_id="stop")
        await client.cancel(first.id, session_id="stop")
        with anyio.fail_after(60):
            stopped = await first.result()
            after = await later.final()
    assert (stopped.kind, stopped.error) == ("cancelled", "request cancelled")
    assert after.text == "You said: hello"
    assert not any(line.startswith("pay fy") for line in effects(served.log))


def test_the_cli_names_the_call_waiting_and_approve_resumes_it(
    rabbitmq_url: str, served: Served
) -> None:
    env = {**os.environ, "AGENTQUEUE_NAMESPACE": served.topology.namespace}
    broker = ("--broker", rabbitmq_url, "--partition-count", "2", "--tool-partition-count", "2")
    text = '/tool pay {"to": "hu", "amount": 6}'
    call = subprocess.Popen(
        [sys.executable, "-m", "agentqueue.cli", "call", text, "--session", "cli", *broker],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert call.stderr is not None
    request = call.stderr.readline().split()[1]
    asked = call.stderr.readline().strip()
    assert asked.startswith('approval required: tool pay {"to": "hu", "amount": 6} (call call_')
    assert asked.endswith(f"); agentqueue approve|deny {request} --session cli")
    approve = subprocess.run(
        [sys.executable, "-m", "agentqueue.cli", "approve", request, "--session", "cli", *broker],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out, _ = call.communicate(timeout=60)
    assert (approve.returncode, approve.stdout) == (0, "Tool pay returned: paid 6 to hu.\n")
    assert (call.returncode, out) == (0, "Tool pay returned: paid 6 to hu.\n")


# Last: it kills the module's active worker.
async def test_a_paused_turn_survives_a_sigkill_and_is_approved_on_the_new_owner(
    rabbitmq_url: str, served: Served
) -> None:
    async with Client(rabbitmq_url, topology=served.topology) as client:
        first, _ = await paused(client, '/tool pay {"to": "gu", "amount": 5}', "kill")
        later = await client.submit("hello", session_id="kill")
        waits = f"request {later.id} waits behind the paused turn"
        active = wait_for_line(*served.pair, text=waits)
        (standby,) = [w for w in served.pair if w is not active]
        active.kill()
        with anyio.fail_after(90):
            approved = await client.approve(first.id, session_id="kill")
            final = await first.final()
            after = await later.final()
    assert standby.proc.poll() is None
    assert approved.text == final.text == "Tool pay returned: paid 5 to gu."
    assert approved.worker == standby_name(standby)
    assert after.text == "You said: hello"
    assert [line for line in effects(served.log) if " gu " in line] == ["pay gu 5"]
