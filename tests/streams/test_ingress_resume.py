"""SSE resumes from Last-Event-ID on another ingress process than the one that took the POST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from agentqueue.protocol import new_id
from tests.apps.streams import HOLD_AFTER
from tests.ingress_server import runtime_request, system
from tests.processes import ROOT, workers
from tests.streams.test_attach_processes import ANSWER, PROMPT, cli, following


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ingresses(args: list[str], count: int, env: dict[str, str]) -> Iterator[list[str]]:
    """`count` ingress processes; yields their base URLs; all are killed on the way out."""
    ports = [free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(
            [*args, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


async def healthy(base: str, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        with anyio.fail_after(timeout):
            while True:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)


async def sse(response: httpx.Response, stop) -> list[tuple[int, str, dict]]:  # type: ignore[no-untyped-def]
    """(id, kind, data) of each event until `stop(event)` or the stream ends."""
    frames: list[tuple[int, str, dict]] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "data" in fields:
            frames.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
            if stop(frames[-1]):
                break
        fields = {}
    return frames


@pytest.mark.broker
@pytest.mark.slow
async def test_sse_resumes_from_last_event_id_on_a_second_ingress_process(
    rabbitmq_url: str, redis_url: str, tmp_path: Path
) -> None:
    ns, gate = f"ir{new_id()[:6]}", tmp_path / "gate"
    env = {**os.environ, "AGENTQUEUE_TEST_GATE": str(gate), "AGENTQUEUE_REPLY_GRACE": "1"}
    worker = cli("worker", rabbitmq_url, ns, redis_url, "--app", "tests.apps.streams:app")
    ingress = cli("ingress", rabbitmq_url, ns, redis_url)
    ingress[3:4] = ["ingress", "http", "--agent", "gated"]
    with workers((*worker[4:], "--no-balance"), env=env), ingresses(ingress, 2, env) as (a, b):
        await healthy(a)
        await healthy(b)
        async with httpx.AsyncClient(timeout=60) as http:
            posted = await http.post(
                f"{a}/v1/requests",
                json={"input": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]},
            )
            request_id = posted.json()["id"]
            async with http.stream("GET", f"{a}/v1/requests/{request_id}/events") as first:
                seen = await sse(first, lambda frame: frame[0] == HOLD_AFTER)  # then drop
            unknown = await http.get(f"{b}/v1/requests/no-such-request/events")
            headers = {"Last-Event-ID": str(HOLD_AFTER)}
            async with http.stream(
                "GET", f"{b}/v1/requests/{request_id}/events", headers=headers
            ) as resumed:
                assert resumed.status_code == 200
                await following(redis_url)  # ingress b follows the kept stream live
                gate.touch()
                rest = await sse(resumed, lambda frame: frame[1] == "final")
    assert [frame[0] for frame in seen] == list(range(1, HOLD_AFTER + 1))
    assert [frame[0] for frame in rest] == list(range(HOLD_AFTER + 1, HOLD_AFTER + 1 + len(rest)))
    text = "".join(data["text"] for _, kind, data in seen + rest if kind == "delta")
    assert text == rest[-1][2]["text"] == ANSWER
    assert unknown.status_code == 404
    assert unknown.json()["error"] == (
        "no request 'no-such-request' here (unknown, or its result is past retention)"
    )


async def test_sse_resumes_from_last_event_id_on_the_ingress_that_took_the_post() -> None:
    async with system() as (http, _, _):
        request_id = (await http.post("/v1/requests", json=runtime_request(PROMPT))).json()["id"]
        async with http.stream("GET", f"/v1/requests/{request_id}/events") as whole:
            frames = await sse(whole, lambda frame: frame[1] == "final")
        resume_at = frames[-3][0]
        async with http.stream(
            "GET", f"/v1/requests/{request_id}/events", headers={"Last-Event-ID": str(resume_at)}
        ) as resumed:
            rest = await sse(resumed, lambda frame: frame[1] == "final")
        bad = await http.get(
            f"/v1/requests/{request_id}/events", headers={"Last-Event-ID": "seven"}
        )
    assert [frame[0] for frame in frames] == list(range(1, len(frames) + 1))
    assert rest == frames[-2:]
    assert bad.status_code == 400
    assert bad.json()["error"] == (
        "Last-Event-ID 'seven' is not an event id of this stream; send the id of the last event"
        " received (a whole number), or none to start from the beginning"
    )
