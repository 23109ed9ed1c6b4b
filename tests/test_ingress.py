"""The HTTP ingress over real HTTP: uvicorn on 127.0.0.1, an httpx client, a real worker."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
import uvicorn

from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.ingress import Ingress
from agentqueue.ingress_requests import sign
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from examples.weather import app

KEY = "webhook-secret"


def runtime_request(text: str, **extra: object) -> dict:
    return {"input": [{"role": "user", "content": [{"type": "text", "text": text}]}], **extra}


@contextlib.asynccontextmanager
async def serving(ingress: Ingress) -> AsyncIterator[httpx.AsyncClient]:
    """The ingress on a free port of 127.0.0.1, and an HTTP client pointed at it."""
    # The in-process worker may hold the loop for seconds (its first agent imports AgentScope):
    # a long keep-alive stops the server closing a connection the client is reusing meanwhile.
    config = uvicorn.Config(
        ingress.app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while True:
                if server.started:
                    break
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
        server.should_exit = True


@contextlib.asynccontextmanager
async def system(
    *, worker: bool = True, **options: object
) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryBroker, Topology]]:
    """An ingress and (unless `worker=False`) a worker on one embedded broker."""
    topology = Topology(namespace=f"i{new_id()[:6]}", partitions=4, tool_partitions=4)
    broker = MemoryBroker(f"memory://ingress-{new_id()[:8]}")
    async with broker, anyio.create_task_group() as tg:
        await broker.declare(topology)
        if worker:
            w = Worker(app, broker, MemorySessionStore(f"memory://{new_id()}"), topology=topology)
            await tg.start(w.run)
        ingress = Ingress(broker, topology=topology, **options)  # type: ignore[arg-type]
        async with serving(ingress) as http:
            yield http, broker, topology
        tg.cancel_scope.cancel()


async def result_of(http: httpx.AsyncClient, request_id: str) -> dict:
    with anyio.fail_after(20):
        while True:
            status = (await http.get(f"/v1/requests/{request_id}")).json()
            if status["status"] != "pending":
                return status
            await anyio.sleep(0.02)


async def sse_events(http: httpx.AsyncClient, request_id: str) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    kind = ""
    async with http.stream("GET", f"/v1/requests/{request_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    return events


async def published(broker: MemoryBroker, topology: Topology) -> int:
    return sum([(await broker.stats(q)).ready for q in topology.queues("requests")])


async def test_a_json_request_reaches_a_worker_and_its_result_is_fetched_and_streamed() -> None:
    async with system() as (http, _, _):
        body = runtime_request("What's the weather in Lisbon?", session_id="from-body")
        accepted = await http.post("/v1/requests", json=body)
        assert accepted.status_code == 202
        ticket = accepted.json()
        assert ticket["session_id"] == "from-body"
        assert accepted.headers["location"] == f"/v1/requests/{ticket['id']}"
        result = await result_of(http, ticket["id"])
        events = await sse_events(http, ticket["id"])
    assert result["status"] == "final"
    assert result["text"] == "The weather in Lisbon: clear, 24°C."
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "final" and set(kinds[:-1]) == {"delta"}
    assert "".join(data["text"] for kind, data in events if kind == "delta") == result["text"]


async def test_events_are_streamed_to_a_listener_that_connects_before_the_answer() -> None:
    async with system() as (http, _, _):
        ticket = (await http.post("/v1/requests", json=runtime_request("hello there"))).json()
        events = await sse_events(http, ticket["id"])
    assert events[-1][0] == "final"
    assert events[-1][1]["request_id"] == ticket["id"]


async def test_a_structured_cloudevent_is_accepted_and_redelivery_makes_no_second_request() -> None:
    event = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/webhooks/crm",
        "type": "com.example.ask",
        "datacontenttype": "application/json",
        "data": runtime_request("My name is Ada."),
    }
    async with system() as (http, _, _):
        headers = {"content-type": "application/cloudevents+json", "X-Session-Id": "crm-42"}
        first = await http.post("/v1/requests", content=json.dumps(event), headers=headers)
        again = await http.post("/v1/requests", content=json.dumps(event), headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        assert first.json()["session_id"] == "crm-42"
        result = await result_of(http, first.json()["id"])
    assert result["status"] == "final" and "Ada" in result["text"]


async def test_a_binary_cloudevent_with_data_in_the_body_is_accepted() -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "evt-2",
        "ce-source": "/queue/orders",
        "ce-type": "com.example.ask",
        "content-type": "application/json",
    }
    async with system() as (http, _, _):
        accepted = await http.post(
            "/v1/requests", content=json.dumps(runtime_request("hi")), headers=headers
        )
        assert accepted.status_code == 202
        result = await result_of(http, accepted.json()["id"])
        events = await sse_events(http, accepted.json()["id"])
    assert result["status"] == "final"
    assert events[-1][0] == "final"


async def test_a_signed_webhook_is_accepted_and_a_wrong_or_missing_signature_gets_401() -> None:
    body = json.dumps(runtime_request("hi")).encode()
    async with system(worker=False, signing_key=KEY) as (http, broker, topology):
        wrong = await http.post(
            "/v1/requests", content=body, headers={"X-Signature": sign("other-key", body)}
        )
        missing = await http.post("/v1/requests", content=body)
        assert await published(broker, topology) == 0
        good = await http.post(
            "/v1/requests", content=body, headers={"X-Signature": sign(KEY, body)}
        )
        assert await published(broker, topology) == 1
    assert wrong.status_code == missing.status_code == 401
    assert wrong.json()["field"] == missing.json()["field"] == "X-Signature"
    assert good.status_code == 202


STRUCTURED = {"content-type": "application/cloudevents+json"}


def cloudevent(**fields: object) -> bytes:
    attributes = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t", **fields}
    return json.dumps(attributes).encode()


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        (b"{not json", {}, "$"),
        (json.dumps({"input": [{"role": "robot"}]}).encode(), {}, "$.input[0].role"),
        (json.dumps({"session_id": "s"}).encode(), {}, "$.input"),
        (cloudevent(data={"input": 3}), STRUCTURED, "$.data.input"),
        (cloudevent(id=None, data=runtime_request("x")), STRUCTURED, "$.id"),
        (
            json.dumps(runtime_request("x")).encode(),
            {"ce-specversion": "1.0", "ce-id": "e", "ce-type": "t"},
            "ce-source",
        ),
    ],
    ids=["not-json", "bad-role", "no-input", "ce-bad-data", "ce-no-id", "binary-ce-no-source"],
)
async def test_a_malformed_request_gets_400_naming_the_field_and_nothing_is_published(
    body: bytes, headers: dict[str, str], field: str
) -> None:
    async with system(worker=False) as (http, broker, topology):
        response = await http.post("/v1/requests", content=body, headers=headers)
        assert await published(broker, topology) == 0
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["error"]


async def test_a_body_over_the_limit_gets_413_and_nothing_is_published() -> None:
    big = json.dumps(runtime_request("x" * 5000)).encode()
    async with system(worker=False, max_body=4096) as (http, broker, topology):
        declared = await http.post("/v1/requests", content=big)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for i in range(0, len(big), 1024):
                yield big[i : i + 1024]

        streamed = await http.post("/v1/requests", content=chunks())
        assert await published(broker, topology) == 0
    assert declared.status_code == streamed.status_code == 413
    assert "4096" in declared.json()["error"]


async def test_an_unknown_id_gets_404_and_a_finished_result_is_gone_after_its_retention() -> None:
    async with system(retention=0.2) as (http, _, _):
        assert (await http.get("/v1/requests/nope")).status_code == 404
        ticket = (await http.post("/v1/requests", json=runtime_request("hi"))).json()
        assert (await result_of(http, ticket["id"]))["status"] == "final"
        await anyio.sleep(0.3)
        assert (await http.get(f"/v1/requests/{ticket['id']}")).status_code == 404


async def test_cloudevent_data_may_also_come_base64_encoded() -> None:
    data = base64.b64encode(json.dumps(runtime_request("hi")).encode()).decode()
    event = {"specversion": "1.0", "id": "evt-3", "source": "/s", "type": "t", "data_base64": data}
    async with system() as (http, _, _):
        accepted = await http.post(
            "/v1/requests",
            content=json.dumps(event),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert accepted.status_code == 202
        assert (await result_of(http, accepted.json()["id"]))["status"] == "final"
