"""Batch runs on the embedded broker: input forms, one line per item, retries, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from agentqueue.batch.files import ResultsFile, batch_name, parse_item, read_items
from agentqueue.batch.report import summarize
from agentqueue.batch.run import run_batch
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.errors import BatchInputError
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from examples.weather import app
from tests.config import worker_settings


def write_input(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def result_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def topology() -> Topology:
    return Topology(namespace=f"b{new_id()[:6]}", partitions=4, tool_partitions=4)


@pytest.fixture
def url() -> str:
    return f"memory://batch-{new_id()[:8]}"


def test_runtime_requests_and_the_short_form_both_become_agent_requests() -> None:
    runtime = parse_item(
        b'{"id": "r1", "session_id": "s", "input": [{"role": "user",'
        b' "content": [{"type": "text", "text": "hi"}]}], "temperature": 0.2}',
        1,
    )
    short = parse_item(b'{"id": 7, "prompt": "hello"}', 2)
    unnamed = parse_item(b'{"prompt": "hello"}', 3)
    assert (runtime.id, runtime.session_id, runtime.request.input[0].text()) == ("r1", "s", "hi")
    assert runtime.request.temperature == 0.2
    assert (short.id, short.session_id, short.request.input[0].text()) == ("7", None, "hello")
    assert unnamed.id == "line-3"


def test_a_bad_input_line_is_refused_with_its_line_number_and_field(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match=r"in\.jsonl:2: .*\$\.input\[0\]\.role"):
        read_items(
            write_input(
                tmp_path / "in.jsonl",
                [
                    {"id": "a", "prompt": "fine"},
                    {"id": "b", "input": [{"role": "nobody", "content": "x"}]},
                ],
            )
        )
    with pytest.raises(BatchInputError, match="already used on line 1"):
        read_items(write_input(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x"}] * 2))
    with pytest.raises(BatchInputError, match="needs `input`"):
        parse_item(b'{"id": "c", "text": "no prompt"}', 1)


def test_a_torn_last_line_from_a_crash_is_cut_off_when_the_results_are_read(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    whole = {
        "id": "a",
        "session_id": "s",
        "status": "final",
        "text": "x",
        "error": None,
        "latency_ms": 1.0,
        "attempts": 1,
    }
    path.write_text(json.dumps(whole) + "\n" + '{"id": "b", "sess')
    assert list(ResultsFile(path).load()) == ["a"]
    assert path.read_text() == json.dumps(whole) + "\n"


def test_a_second_run_of_the_same_batch_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    first = ResultsFile(tmp_path / "out.jsonl")
    first.open()
    try:
        with pytest.raises(BatchInputError, match="another process is writing"):
            ResultsFile(tmp_path / "out.jsonl").open()
    finally:
        first.close()
    second = ResultsFile(tmp_path / "out.jsonl")
    second.open()  # free again once the first is done
    second.close()


def test_the_default_batch_name_is_the_same_for_the_same_files_and_differs_otherwise(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert batch_name(a, b) == batch_name(a, b)
    assert batch_name(a, b) != batch_name(b, a)


async def test_every_item_gets_exactly_one_result_line_and_a_rerun_sends_nothing(
    tmp_path: Path, url: str, topology: Topology
) -> None:
    items = [{"id": f"q{i}", "prompt": f"hello {i}"} for i in range(30)]
    items.append({"id": "w", "prompt": "What's the weather in Paris?"})
    items += [  # one conversation: its turns run in order, so turn two sees turn one
        {"id": "c1", "session_id": "conv", "prompt": "My name is Ada."},
        {"id": "c2", "session_id": "conv", "prompt": "What is my name?"},
    ]
    source, output = write_input(tmp_path / "in.jsonl", items), tmp_path / "out.jsonl"
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        worker = Worker(
            app, broker, MemorySessionStore(f"memory://{new_id()}"), worker_settings(topology)
        )
        await tg.start(worker.run)
        first = await run_batch(
            broker, source, output, topology=topology, progress=False, max_in_flight=8
        )
        handled = worker.handled
        again = await run_batch(broker, source, output, topology=topology, progress=False)
        assert worker.handled == handled  # nothing was sent the second time
        worker.stop()
    lines = result_lines(output)
    assert sorted(line["id"] for line in lines) == sorted(item["id"] for item in items)
    by_id = {line["id"]: line for line in lines}
    assert by_id["w"]["text"] == "The weather in Paris: sunny, 21°C."
    assert "Ada" in by_id["c2"]["text"]
    assert by_id["c1"]["session_id"] == by_id["c2"]["session_id"] == "conv"
    assert all(line["status"] == "final" and line["attempts"] == 1 for line in lines)
    assert first.complete and first.counts["final"] == first.written_now == len(items)
    assert again.complete and again.written_now == 0 and again.counts["final"] == len(items)


async def test_a_failing_item_is_sent_again_up_to_the_retries_then_written_as_failed(
    tmp_path: Path, url: str, topology: Topology
) -> None:
    source = write_input(
        tmp_path / "in.jsonl",
        [
            {"id": "ok", "prompt": "hello"},
            {"id": "bad", "prompt": "hello", "agent": "no-such-agent"},
        ],
    )
    output = tmp_path / "out.jsonl"
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        worker = Worker(
            app, broker, MemorySessionStore(f"memory://{new_id()}"), worker_settings(topology)
        )
        await tg.start(worker.run)
        summary = await run_batch(
            broker, source, output, topology=topology, progress=False, retries=2
        )
        dead = await broker.stats(topology.dead_letter_queue)
        worker.stop()
    by_id = {line["id"]: line for line in result_lines(output)}
    assert by_id["ok"]["status"] == "final" and by_id["ok"]["attempts"] == 1
    assert by_id["bad"]["status"] == "failed" and by_id["bad"]["attempts"] == 3
    assert "no-such-agent" in by_id["bad"]["error"]
    assert dead.ready == 3  # each attempt is its own request, dead-lettered with its reason
    assert summary.counts == {"final": 1, "failed": 1, "timed_out": 0, "cancelled": 0}


async def test_replies_that_arrive_while_no_client_listens_are_written_on_resume_unsent(
    tmp_path: Path, url: str, topology: Topology
) -> None:
    items = [{"id": f"q{i}", "prompt": f"hello {i}"} for i in range(20)]
    source, output = write_input(tmp_path / "in.jsonl", items), tmp_path / "out.jsonl"
    requests = topology.queues("requests")
    async with MemoryBroker(url) as broker:
        await broker.declare(topology)
        # First run: every item is sent, then the client goes away before any reply.
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: run_batch(broker, source, output, topology=topology, progress=False)
            )
            with anyio.fail_after(10):
                while True:  # until every item is on a request queue
                    if sum([(await broker.stats(q)).ready for q in requests]) == len(items):
                        break
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        # The workers answer while nobody listens: the replies wait on the durable queue.
        async with anyio.create_task_group() as tg:
            worker = Worker(
                app, broker, MemorySessionStore(f"memory://{new_id()}"), worker_settings(topology)
            )
            await tg.start(worker.run)
            with anyio.fail_after(30):
                while True:
                    if worker.handled == len(items):
                        break
                    await anyio.sleep(0.01)
            worker.stop()
        # Resume with no worker at all: it can only finish from the replies already there.
        with anyio.fail_after(30):
            summary = await run_batch(broker, source, output, topology=topology, progress=False)
        assert sum([(await broker.stats(q)).ready for q in requests]) == 0  # nothing re-sent
    lines = result_lines(output)
    assert sorted(line["id"] for line in lines) == sorted(item["id"] for item in items)
    assert all(line["status"] == "final" and line["latency_ms"] is None for line in lines)
    assert summary.complete and summary.written_now == len(items)


def test_the_summary_counts_every_line_and_averages_the_score(tmp_path: Path) -> None:
    source = write_input(
        tmp_path / "in.jsonl", [{"id": str(i), "prompt": "x", "expected": "yes"} for i in range(4)]
    )
    items = read_items(source)
    results = ResultsFile(tmp_path / "out.jsonl")
    results.open()
    for i, (status, text) in enumerate([("final", "yes"), ("final", "no"), ("failed", "")]):
        from agentqueue.batch.files import ResultLine

        results.append(ResultLine(str(i), "s", status, text, None, float(10 * (i + 1)), 1))
    results.close()

    def exact(item: dict, result: dict) -> float:
        return float(item["expected"] == result["text"])

    summary = summarize(
        "t", "out.jsonl", items, results.load(), written_now=3, elapsed_s=1.5, score=exact
    )
    assert summary.counts == {"final": 2, "failed": 1, "timed_out": 0, "cancelled": 0}
    assert summary.missing == 1 and not summary.complete
    assert summary.latency_ms == {"p50": 20.0, "p95": 30.0, "p99": 30.0}
    assert summary.score_mean == pytest.approx(1 / 3) and summary.scored == 3
    assert summary.to_dict()["throughput_per_s"] == 2.0
