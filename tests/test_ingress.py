"""The HTTP ingress over real HTTP: uvicorn on 127.0.0.1, an httpx client, a real worker."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from agentqueue.ingress.auth import WebhookKeys, read_token
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.ingress_server import (
    KEYS,
    SECRET,
    app,
    published,
    runtime_request,
    system,
    webhook_headers,
)

JSON = {"content-type": "application/json"}
STRUCTURED = {"content-type": "application/cloudevents+json"}
OTHER_KEYS = WebhookKeys.parse("whsec_" + base64.b64encode(b"x" * 32).decode())


async def result_of(http: httpx.AsyncClient, request_id: str, **headers: str) -> dict:
    with anyio.fail_after(20):
        while True:
            status = (await http.get(f"/v1/requests/{request_id}", headers=headers)).json()
            if status["status"] != "pending":
                return status
            await anyio.sleep(0.02)


async def sse_events(http: httpx.AsyncClient, request_id: str, **headers: str) -> list:
    events: list[tuple[str, dict]] = []
    kind = ""
    async with http.stream("GET", f"/v1/requests/{request_id}/events", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    return events


def cloudevent(**fields: object) -> bytes:
    attributes = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t", **fields}
    return json.dumps(attributes).encode()


# --- without a key: requests, CloudEvents, results -----------------------------------------------


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
        headers = {**STRUCTURED, "X-Session-Id": "crm-42"}
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
        **JSON,
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


async def test_cloudevent_data_may_also_come_base64_encoded() -> None:
    data = base64.b64encode(json.dumps(runtime_request("hi")).encode()).decode()
    event = {"specversion": "1.0", "id": "evt-3", "source": "/s", "type": "t", "data_base64": data}
    async with system() as (http, _, _):
        accepted = await http.post("/v1/requests", content=json.dumps(event), headers=STRUCTURED)
        assert accepted.status_code == 202
        assert (await result_of(http, accepted.json()["id"]))["status"] == "final"


async def test_an_unknown_id_gets_404_and_a_finished_result_is_gone_after_its_retention() -> None:
    async with system(worker=False, retention=0.2) as (http, broker, topology):
        missing = await http.get("/v1/requests/nope")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": "no request 'nope' here (unknown, or its result is past retention)",
            "field": None,
        }
        ticket = (await http.post("/v1/requests", json=runtime_request("hi"))).json()
        # Its events are watched before a worker runs it: a poll could come after the 0.2 s
        # retention had already forgotten the result; the open stream holds the request.
        events = f"/v1/requests/{ticket['id']}/events"
        async with http.stream("GET", events) as stream, anyio.create_task_group() as tg:
            store = MemorySessionStore(f"memory://{new_id()}")
            await tg.start(Worker(app, broker, store, worker_settings(topology)).run)
            kinds = [line async for line in stream.aiter_lines() if line.startswith("event: ")]
            tg.cancel_scope.cancel()
        assert kinds[-1] == "event: final", kinds
        gone = f"/v1/requests/{ticket['id']}"
        with anyio.fail_after(10):
            while (await http.get(gone)).status_code != 404:
                await anyio.sleep(0.05)


# --- malformed input: a 4xx that names the problem, and nothing published ------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "error", "field"),
    [
        (
            b"hello",
            {"content-type": "text/plain"},
            415,
            "Content-Type 'text/plain' is not accepted; send application/json (a request, or a"
            " binary-mode CloudEvent) or application/cloudevents+json",
            "Content-Type",
        ),
        (
            json.dumps(runtime_request("x")).encode(),
            {},
            415,
            "Content-Type is missing; send application/json (a request, or a binary-mode"
            " CloudEvent) or application/cloudevents+json",
            "Content-Type",
        ),
        (
            json.dumps(runtime_request("x")).encode(),
            {"content-type": "application/json; charset=latin-1"},
            415,
            "charset 'latin-1' is not accepted; send UTF-8",
            "Content-Type",
        ),
        (b"", JSON, 400, "the body is empty; send the agent request as JSON", "$"),
        (
            b'{"input": "caf\xe9"}',
            JSON,
            400,
            "the body is not valid UTF-8 (byte 0xe9 at offset 14)",
            "$",
        ),
        (
            b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
            JSON,
            400,
            "JSON nested deeper than 64 levels (at byte 320)",
            "$",
        ),
        (b"[" * 100_000, JSON, 400, "JSON nested deeper than 64 levels (at byte 64)", "$"),
        (
            b"{not json",
            JSON,
            400,
            "the body is malformed JSON: object keys must be strings (byte 1)",
            "$",
        ),
        (b"[1, 2]", JSON, 400, "expected a JSON object, got list", "$"),
        (
            json.dumps({"input": []}).encode(),
            JSON,
            400,
            "$.input is empty; an agent request needs at least one message",
            "$.input",
        ),
        (
            cloudevent(data={"input": []}),
            STRUCTURED,
            400,
            "$.data.input is empty; an agent request needs at least one message",
            "$.data.input",
        ),
        (
            json.dumps({"input": [{"role": "robot"}]}).encode(),
            JSON,
            400,
            "not an agent request: Invalid enum value 'robot' (at $.input[0].role)",
            "$.input[0].role",
        ),
        (
            json.dumps({"session_id": "s"}).encode(),
            JSON,
            400,
            "not an agent request: Object missing required field `input` (at $.input)",
            "$.input",
        ),
        (
            cloudevent(data={"input": 3}),
            STRUCTURED,
            400,
            "not an agent request: Expected `array`, got `int` (at $.data.input)",
            "$.data.input",
        ),
        (
            cloudevent(id=None, data=runtime_request("x")),
            STRUCTURED,
            400,
            "CloudEvent attribute 'id' is required (a non-empty string)",
            "$.id",
        ),
        (
            json.dumps(runtime_request("x")).encode(),
            {"ce-specversion": "1.0", "ce-id": "e", "ce-type": "t", **JSON},
            400,
            "CloudEvent attribute 'source' is required (a non-empty string)",
            "ce-source",
        ),
    ],
    ids=[
        "text-plain",
        "no-content-type",
        "latin-1",
        "empty-body",
        "invalid-utf8",
        "10000-deep-object",
        "100000-open-brackets",
        "not-json",
        "not-an-object",
        "empty-input",
        "ce-empty-input",
        "bad-role",
        "no-input",
        "ce-bad-data",
        "ce-no-id",
        "binary-ce-no-source",
    ],
)
async def test_malformed_input_gets_a_4xx_naming_the_problem_and_nothing_is_published(
    body: bytes, headers: dict[str, str], status: int, error: str, field: str
) -> None:
    async with system(worker=False) as (http, broker, topology):
        response = await http.post("/v1/requests", content=body, headers=headers)
        assert await published(broker, topology) == 0
    assert (response.status_code, response.json()) == (status, {"error": error, "field": field})


async def test_a_body_over_the_limit_gets_413_and_nothing_is_published() -> None:
    big = json.dumps(runtime_request("x" * 5000)).encode()
    async with system(worker=False, max_body=4096) as (http, broker, topology):
        declared = await http.post("/v1/requests", content=big, headers=JSON)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for i in range(0, len(big), 1024):
                yield big[i : i + 1024]

        streamed = await http.post("/v1/requests", content=chunks(), headers=JSON)
        assert await published(broker, topology) == 0
    assert declared.status_code == streamed.status_code == 413
    assert (
        declared.json()
        == streamed.json()
        == {
            "error": "body is over the 4096 byte limit; send large inputs by URL",
            "field": "$",
        }
    )


async def test_an_unknown_endpoint_or_method_gets_a_json_4xx_naming_it() -> None:
    async with system(worker=False) as (http, _, _):
        nowhere = await http.post("/v2/requests", json=runtime_request("x"))
        wrong = await http.put("/v1/requests", json=runtime_request("x"))
    assert (nowhere.status_code, nowhere.json()["error"]) == (
        404,
        "no endpoint POST /v2/requests; the ingress serves POST /v1/requests,"
        " GET|DELETE /v1/requests/{id}, GET /v1/requests/{id}/events, GET /healthz",
    )
    assert (wrong.status_code, wrong.json()["error"]) == (
        405,
        "method PUT is not served at /v1/requests",
    )


async def test_more_pending_requests_than_the_limit_get_429() -> None:
    async with system(worker=False, max_pending=2) as (http, broker, topology):
        answers = [await http.post("/v1/requests", json=runtime_request(f"q{n}")) for n in range(3)]
        assert await published(broker, topology) == 2
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[2].headers["retry-after"] == "1"
    assert answers[2].json()["error"] == (
        "2 requests are waiting for their answers, this ingress's limit; retry shortly"
    )


# --- with a key: Standard Webhooks, signed content only, tokens ----------------------------------


async def test_a_signed_webhook_is_accepted_and_a_wrong_or_missing_signature_gets_401() -> None:
    body = json.dumps(runtime_request("hi")).encode()
    async with system(worker=False, keys=SECRET) as (http, broker, topology):
        wrong = await http.post(
            "/v1/requests", content=body, headers=webhook_headers(body, keys=OTHER_KEYS)
        )
        missing = await http.post("/v1/requests", content=body, headers=JSON)
        old_style = await http.post(
            "/v1/requests", content=body, headers={**JSON, "X-Signature": "sha256=00"}
        )
        assert await published(broker, topology) == 0
        good = await http.post("/v1/requests", content=body, headers=webhook_headers(body))
        assert await published(broker, topology) == 1
    assert (wrong.status_code, wrong.json()) == (
        401,
        {
            "error": "webhook-signature does not match: sign"
            " '<webhook-id>.<webhook-timestamp>.<body>' (the exact bytes sent) with the"
            " ingress's secret",
            "field": "webhook-signature",
        },
    )
    assert missing.status_code == old_style.status_code == 401
    assert (
        missing.json()
        == old_style.json()
        == {
            "error": "missing webhook-id header; sign webhooks the Standard Webhooks way (webhook-id,"
            " webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>)",
            "field": "webhook-id",
        }
    )
    assert good.status_code == 202
    assert set(good.json()) == {"id", "session_id", "token"}


async def test_the_signature_covers_the_id_and_time_so_neither_can_be_changed() -> None:
    body = json.dumps(runtime_request("hi")).encode()
    headers = webhook_headers(body, "msg_original")
    async with system(worker=False, keys=SECRET) as (http, broker, topology):
        other_id = await http.post(
            "/v1/requests", content=body, headers={**headers, "webhook-id": "msg_other"}
        )
        later = str(int(headers["webhook-timestamp"]) + 1)
        other_time = await http.post(
            "/v1/requests", content=body, headers={**headers, "webhook-timestamp": later}
        )
        assert await published(broker, topology) == 0
    assert other_id.status_code == other_time.status_code == 401
    assert other_id.json()["field"] == other_time.json()["field"] == "webhook-signature"


async def test_a_captured_request_cannot_be_aimed_at_another_session() -> None:
    body = json.dumps(runtime_request("My name is Ada.", session_id="ada")).encode()
    async with system(worker=False, keys=SECRET) as (http, broker, topology):
        captured = webhook_headers(body, "msg_ada")
        reaimed = await http.post(
            "/v1/requests", content=body, headers={**captured, "X-Session-Id": "bo"}
        )
        binary = await http.post(
            "/v1/requests",
            content=body,
            headers={**webhook_headers(body), "ce-specversion": "1.0", "ce-id": "x"},
        )
        assert await published(broker, topology) == 0
        genuine = await http.post("/v1/requests", content=body, headers=captured)
    assert (reaimed.status_code, reaimed.json()) == (
        400,
        {
            "error": "X-Session-Id is not covered by the signature, so it may not choose the"
            " session; put session_id in the signed body",
            "field": "X-Session-Id",
        },
    )
    assert (binary.status_code, binary.json()) == (
        400,
        {
            "error": "binary-mode CloudEvent attributes (ce-* headers) are not covered by the"
            " signature; send the event in structured mode (application/cloudevents+json)",
            "field": "ce-id",
        },
    )
    assert genuine.status_code == 202 and genuine.json()["session_id"] == "ada"


async def test_a_replayed_webhook_gets_409_and_makes_no_new_request() -> None:
    body = json.dumps(runtime_request("hi", session_id="s")).encode()
    headers = webhook_headers(body, "msg_x1")
    async with system(worker=False, keys=SECRET) as (http, broker, topology):
        first = await http.post("/v1/requests", content=body, headers=headers)
        replays = [await http.post("/v1/requests", content=body, headers=headers) for _ in "abc"]
        assert await published(broker, topology) == 1
    request_id = first.json()["id"]
    assert first.status_code == 202
    for replay in replays:
        assert (replay.status_code, replay.json()) == (
            409,
            {
                "error": f"webhook-id 'msg_x1' was already accepted as request {request_id!r};"
                " a webhook is accepted once",
                "field": "webhook-id",
            },
        )
    # Not sha256("s\0x1")[:32] or anything else an outsider could compute from the request.
    assert request_id == KEYS.request_id("webhook\0msg_x1")
    assert request_id != hashlib.sha256(b"s\0msg_x1").hexdigest()[:32]


async def test_a_stale_or_future_timestamp_gets_401_naming_the_window() -> None:
    body = json.dumps(runtime_request("hi")).encode()
    now = int(time.time())
    async with system(worker=False, keys=SECRET) as (http, broker, topology):
        old = await http.post(
            "/v1/requests", content=body, headers=webhook_headers(body, timestamp=now - 3600)
        )
        ahead = await http.post(
            "/v1/requests", content=body, headers=webhook_headers(body, timestamp=now + 3600)
        )
        garbled = await http.post(
            "/v1/requests",
            content=body,
            headers={**webhook_headers(body), "webhook-timestamp": "yesterday"},
        )
        assert await published(broker, topology) == 0
    assert old.status_code == ahead.status_code == garbled.status_code == 401
    assert old.json()["error"].startswith(f"webhook-timestamp {now - 3600} is 36")
    assert old.json()["error"].endswith(
        "s old; the ingress accepts 300 s either side of its clock (check the sender's clock,"
        " or resend)"
    )
    assert " s in the future; the ingress accepts 300 s" in ahead.json()["error"]
    assert garbled.json() == {
        "error": "webhook-timestamp 'yesterday' is not unix seconds",
        "field": "webhook-timestamp",
    }


async def test_a_full_replay_window_refuses_new_webhooks_instead_of_forgetting() -> None:
    body = json.dumps(runtime_request("hi")).encode()
    async with system(worker=False, keys=SECRET, replay_capacity=1) as (http, broker, topology):
        first = await http.post("/v1/requests", content=body, headers=webhook_headers(body))
        second = await http.post("/v1/requests", content=body, headers=webhook_headers(body))
        assert await published(broker, topology) == 1
    assert first.status_code == 202
    assert (second.status_code, second.json()["error"]) == (
        503,
        "the replay window is full (1 webhooks in the last 600 s); retry shortly",
    )


async def test_reading_streaming_and_cancelling_need_the_request_s_token() -> None:
    body = json.dumps(runtime_request("What's the weather in Lisbon?")).encode()
    async with system(keys=SECRET) as (http, _, _):
        ticket = (
            await http.post("/v1/requests", content=body, headers=webhook_headers(body))
        ).json()
        path = f"/v1/requests/{ticket['id']}"
        bearer = {"authorization": f"Bearer {ticket['token']}"}
        other = read_token(b"some-other-secret-of-24b", ticket["id"])
        refused = [
            await http.get(path),
            await http.get(f"{path}/events"),
            await http.delete(path),
            await http.get(path, headers={"authorization": f"Bearer {other}"}),
            await http.get("/v1/requests/unknown", headers=bearer),
        ]
        result = await result_of(http, ticket["id"], **bearer)
        events = await sse_events(http, ticket["id"], **bearer)
        cancelled = await http.delete(path, headers=bearer)
    missing = {
        "error": "this ingress needs Authorization: Bearer <token>, the token of the POST's"
        " 202 answer",
        "field": "Authorization",
    }
    assert [(r.status_code, r.json()) for r in refused[:3]] == [(401, missing)] * 3
    assert refused[0].headers["www-authenticate"] == 'Bearer realm="agentqueue-ingress"'
    assert (refused[3].status_code, refused[3].json()) == (
        401,
        {"error": "the bearer token is not this request's", "field": "Authorization"},
    )
    assert refused[4].status_code == 401  # another id's token: no hint whether it exists
    assert ticket["token"] == read_token(base64.b64decode(SECRET[6:]), ticket["id"])
    assert result["text"] == "The weather in Lisbon: clear, 24°C."
    assert events[-1][0] == "final"
    assert cancelled.status_code == 202


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (
            "webhook-secret",
            "ingress signing secret 1 does not start with 'whsec_' (value not shown): a Standard"
            " Webhooks secret is whsec_ and the base64 of 24 to 64 random bytes; make one with",
        ),
        ("whsec_%%%", "ingress signing secret 1 is not whsec_ and valid base64 (value not shown)"),
        (
            "whsec_" + base64.b64encode(b"short").decode(),
            "ingress signing secret 1 holds 5 bytes; Standard Webhooks secrets hold 24 to 64",
        ),
    ],
    ids=["no-prefix", "not-base64", "too-short"],
)
def test_a_secret_not_in_the_standard_webhooks_format_is_refused_without_showing_it(
    secret: str, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        WebhookKeys.parse(secret)
    assert str(caught.value).startswith(message)
    assert secret not in str(caught.value)


def test_signatures_match_the_standard_webhooks_reference_vector() -> None:
    # The vector the Standard Webhooks libraries test their signing with.
    keys = WebhookKeys.parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert keys.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v2,abc {expected} v1a,xyz",
    }
    signed = keys.verify(headers, body, now=1614265330 + 299)
    assert (signed.webhook_id, signed.timestamp) == ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330)
