"""Attaching to a request whose attempt is retried: the restart, then only the new attempt."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agentqueue import Client, StreamNotKept
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from agentqueue.protocol.messages import AgentRequest, ResultEvent, user_message
from agentqueue.workers.app import load_app
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.stream_log import Kept, open_stream_log
from agentqueue.workers.worker import Worker
from tests.apps.streams import HOLD_AFTER
from tests.config import worker_settings

app = load_app("tests.apps.streams:app")


async def test_an_attach_during_a_retried_attempt_sees_the_restart_then_only_that_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("AGENTQUEUE_TEST_GATE", str(gate))
    url, store_url = f"memory://sr-{new_id()[:8]}", f"memory://sr-{new_id()[:8]}"
    settings = worker_settings(
        Topology(namespace="sr", partitions=2, tool_partitions=2),
        store=store_url,
        retry_base_delay=0.01,
    )
    prompt = "one two three four five six"
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        await tg.start(Worker(app, broker, MemorySessionStore(store_url), settings).run)
        async with (
            Client(broker, settings=settings) as caller,
            Client(broker, settings=settings) as attacher,
        ):
            handle = await caller.submit(prompt, session_id="s1", agent="flaky", timeout=60)
            direct: list[ResultEvent] = []
            events = handle.events()
            with anyio.fail_after(30):
                async for event in events:  # the broken attempt's words, then its restart
                    direct.append(event)
                    if event.restart:
                        break
            attached: list[ResultEvent] = []
            async for event in attacher.attach(handle.id):
                attached.append(event)
                if len(attached) == 1 + HOLD_AFTER:
                    gate.touch()  # the new attempt's first words are in: let the rest come
            async for event in events:
                direct.append(event)
        tg.cancel_scope.cancel()

    marker, *deltas, final = attached
    assert (marker.kind, marker.restart, marker.attempt, marker.text) == ("delta", True, 2, "")
    assert [e.attempt for e in [*deltas, final]] == [2] * (len(deltas) + 1)
    assert final.kind == "final" and "".join(d.text for d in deltas) == final.text
    assert [e.seq for e in attached] == list(range(marker.seq, marker.seq + len(attached)))
    # The caller saw the broken attempt's words, the marker, then all of the new attempt.
    first = [e for e in direct if e.attempt == 1]
    assert [e.seq for e in first] == list(range(1, HOLD_AFTER + 1))
    assert direct[len(first) :] == attached


async def test_attaching_to_an_unknown_request_is_a_clear_error() -> None:
    settings = worker_settings(store=f"memory://sr-{new_id()[:8]}")
    client = Client(f"memory://sr-{new_id()[:8]}", settings=settings)
    with pytest.raises(StreamNotKept) as caught:
        async for _ in client.attach("no-such-request"):
            pass
    assert str(caught.value) == (
        "no events are kept for request 'no-such-request': it is unknown to the store"
        f" {settings.store}, not started yet, or finished more than 3600 s ago"
        " (setting stream_retention)"
    )


async def test_a_request_run_again_elsewhere_numbers_on_from_its_log_after_a_restart_marker() -> (
    None
):
    # What a worker that died mid-stream left in the log; another worker now runs the request.
    url, store_url = f"memory://sr-{new_id()[:8]}", f"memory://sr-{new_id()[:8]}"
    settings = worker_settings(
        Topology(namespace="sn", partitions=2, tool_partitions=2), store=store_url
    )
    request = AgentRequest(input=[user_message("one two three")], id=new_id())
    log = open_stream_log(store_url)
    await log.open(request.id)  # type: ignore[arg-type]
    for seq, text in enumerate(["You ", "said: "], 1):
        await log.append(request.id, Kept.of(ResultEvent(request.id, "delta", seq=seq, text=text)))  # type: ignore[arg-type]
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        await tg.start(Worker(app, broker, MemorySessionStore(store_url), settings).run)
        async with Client(broker, settings=settings) as client:
            direct = [e async for e in client.stream(request, session_id="s2", agent="gated")]
            attached = [e async for e in client.attach(request.id, after=1)]  # type: ignore[arg-type]
        tg.cancel_scope.cancel()
    marker, *deltas, final = direct
    assert (marker.seq, marker.attempt, marker.restart) == (3, 2, True)
    assert [e.seq for e in direct] == list(range(3, 3 + len(direct)))
    assert {e.attempt for e in direct} == {2}
    assert "".join(d.text for d in deltas) == final.text == "You said: one two three"
    assert attached == direct  # after=1 missed the restart: it gets it, then attempt 2 only
