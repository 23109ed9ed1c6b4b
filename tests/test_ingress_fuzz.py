"""An ingress fuzz: thousands of mutated requests at a running ingress, never a 5xx.

Seeded, so a failure reproduces: every mutated request must get an answer below 500 (a 4xx
with a JSON error naming the problem, or a 202 when the mutation left it valid), and every
valid request mixed in among them must get 202.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import httpx

from agentqueue.ingress.auth import WebhookKeys
from agentqueue.ingress.server import Limits
from tests.ingress_server import SECRET, runtime_request, system, webhook_headers

SEED = 15
MUTATED_SIGNED = 2000  # against an ingress with a key
MUTATED_OPEN = 1000  # against one without
VALID_EVERY = 5  # one valid request after every this many mutated ones
RAW = 300  # of the mutated ones without a key: garbage at the HTTP level, over a raw socket
OTHER_KEYS = WebhookKeys.parse("whsec_" + base64.b64encode(b"z" * 32).decode())
CONTENT_TYPES = [
    "",
    "text/plain",
    "application/xml",
    "multipart/form-data; boundary=x",
    "application/cloudevents-batch+json",
    "application/json; charset=latin-1",
    "application/json;;;",
    "APPLICATION/JSON",
    "application/json; charset=UTF-8",
    "application/cloudevents+json; charset=utf-8",
    "application/json\x7f",
    "*/*",
]
VALUES: list[object] = [
    None,
    [],
    {},
    0,
    -1,
    2**70,
    1.5e308,
    "",
    "x" * 5000,
    True,
    [[[[[]]]]],
    {"type": "text"},
    {"type": "nope"},
    "\ud800",
    "\x00",
    [{"role": "user"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": [{"type": "image", "image_url": 3}]}],
]


@dataclass
class Tally:
    """Answers by status, and what went wrong (should stay empty)."""

    statuses: Counter[int] = field(default_factory=Counter)
    mutated: int = 0
    mutated_accepted: int = 0
    valid: int = 0
    valid_accepted: int = 0
    unanswered: int = 0  # raw requests the server closed without an answer
    problems: list[str] = field(default_factory=list)

    def answer(self, label: str, status: int, body: bytes, *, valid: bool) -> None:
        self.statuses[status] += 1
        if valid:
            self.valid += 1
            self.valid_accepted += status == 202
            if status != 202:
                self.problems.append(f"valid {label}: {status} {body[:300]!r}")
            return
        self.mutated += 1
        self.mutated_accepted += status == 202
        if status >= 500:
            self.problems.append(f"{label}: {status} {body[:300]!r}")
        elif 400 <= status < 500 and not label.startswith("raw"):
            try:
                error = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                error = None
            if not error:
                self.problems.append(f"{label}: {status} names no problem: {body[:300]!r}")


def seeds(rng: random.Random) -> list[tuple[bytes, dict[str, str]]]:
    """Valid bodies and their content headers: plain, structured and base64 CloudEvents."""
    text = rng.choice(["What's the weather in Lisbon?", "hi", "Tell me a joke", "ünïcødé ☃"])
    plain = runtime_request(text, session_id=f"s{rng.randrange(50)}")
    event = {"specversion": "1.0", "id": f"e{rng.random()}", "source": "/fuzz", "type": "t"}
    encoded = base64.b64encode(json.dumps(runtime_request(text)).encode()).decode()
    return [
        (json.dumps(plain).encode(), {"content-type": "application/json"}),
        (
            json.dumps({**event, "data": runtime_request(text)}).encode(),
            {"content-type": "application/cloudevents+json"},
        ),
        (
            json.dumps({**event, "data_base64": encoded}).encode(),
            {"content-type": "application/cloudevents+json"},
        ),
    ]


def mutate_json(rng: random.Random, body: bytes) -> bytes:
    """Set or delete a random member somewhere in the document."""
    value = json.loads(body)
    node = value
    for _ in range(rng.randrange(1, 5)):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        children = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
        if not children or rng.random() < 0.3:
            break
        node = rng.choice(children)[1]
    if isinstance(node, dict):
        key = rng.choice([*node, "input", "data", "extra", "type", "role", "content"])
        if rng.random() < 0.2:
            node.pop(key, None)
        else:
            node[key] = rng.choice(VALUES)
    elif node:
        node[rng.randrange(len(node))] = rng.choice(VALUES)
    return json.dumps(value).encode(errors="surrogatepass")


def mutate_bytes(rng: random.Random, body: bytes) -> bytes:
    """Flip, insert, delete, duplicate or replace bytes; or make the body deep, huge or empty."""
    data = bytearray(body)
    kind = rng.randrange(10)
    at = rng.randrange(len(data) + 1)
    if kind == 0 and data:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data[at:at] = rng.choice([b"\xff", b"\xc3", b"\x00", b"\\ud800", b"\xed\xa0\x80", b'"'])
    elif kind == 2:
        del data[at : at + rng.randrange(1, 40)]
    elif kind == 3:
        data[at:at] = data[at : at + rng.randrange(1, 200)] * rng.randrange(1, 20)
    elif kind == 4:
        return rng.choice([b"[", b'{"a":', b"[{"]) * rng.choice([65, 1000, 100_000])
    elif kind == 5:
        return b" " * rng.randrange(10)
    elif kind == 6:
        return body[: rng.randrange(len(body))]
    elif kind == 7:
        return b'{"input": [' + b'{"role":"user","content":"x"},' * 20_000 + b"{}]}"
    elif kind == 8:
        return rng.randbytes(rng.randrange(1, 300))
    else:
        return mutate_json(rng, body)
    return bytes(data)


def mutate_headers(rng: random.Random, headers: dict[str, str], *, signed: bool) -> dict[str, str]:
    """Change the content type, add headers that would choose the session, break the signature."""
    headers = dict(headers)
    kind = rng.randrange(8 if signed else 4)
    if kind == 0:
        headers["content-type"] = rng.choice(CONTENT_TYPES)
    elif kind == 1:
        headers["x-session-id"] = rng.choice(["bo", "", "x" * 3000, "é", "a\tb"])
    elif kind == 2:
        headers |= {"ce-specversion": rng.choice(["1.0", "0.3", ""]), "ce-id": "i"}
        if rng.random() < 0.5:
            headers |= {"ce-source": "/s", "ce-type": "t"}
    elif kind == 3:
        headers["content-type"] = headers.get("content-type", "").upper()
    elif kind == 4:
        headers.pop(rng.choice(["webhook-id", "webhook-timestamp", "webhook-signature"]))
    elif kind == 5:
        headers["webhook-timestamp"] = rng.choice(
            [str(int(time.time()) - 4000), str(int(time.time()) + 4000), "-1", "1e9", "９", ""]
        )
    elif kind == 6:
        headers["webhook-signature"] = rng.choice(
            ["v1,", "v1a,abc", "v2,xyz", "v1,@@@", "v1," + "A" * 44, "x" * 500, ","]
        )
    else:
        headers["webhook-id"] = rng.choice(["a.b", "x" * 300, "\x01", "msg_other"])
    return headers


async def fire(
    http: httpx.AsyncClient,
    tally: Tally,
    label: str,
    body: bytes,
    headers: dict[str, str],
    *,
    valid: bool,
    method: str = "POST",
    path: str = "/v1/requests",
) -> None:
    encoded = [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in headers.items()]
    response = await http.request(method, path, content=body, headers=encoded)
    tally.answer(label, response.status_code, response.content, valid=valid)


Made = tuple[bytes, dict[str, str], bool, str, str]  # body, headers, valid, method, path


def requests(
    rng: random.Random, *, signed: bool, count: int
) -> list[tuple[str, Callable[[], Made]]]:
    """(label, make) pairs, decided here from `rng`; `make()` signs with the time it is sent."""
    made = []
    for n in range(count):
        made.append((f"mutated-{n}", _mutated(random.Random(rng.getrandbits(64)), signed)))
        if n % VALID_EVERY == VALID_EVERY - 1:
            made.append((f"valid-{n}", _valid(random.Random(rng.getrandbits(64)), signed)))
    return made


def _valid(rng: random.Random, signed: bool) -> Callable[[], Made]:
    body, headers = rng.choice(seeds(rng))

    def make() -> Made:
        if signed:
            headers_sent = webhook_headers(body, content_type=headers["content-type"])
        else:
            headers_sent = headers
        return body, headers_sent, True, "POST", "/v1/requests"

    return make


def _mutated(rng: random.Random, signed: bool) -> Callable[[], Made]:
    body, headers = rng.choice(seeds(rng))
    kind = rng.random()
    if kind < 0.08:  # other methods and paths
        method = rng.choice(["GET", "DELETE", "PUT", "PATCH", "POST"])
        path = rng.choice(
            [
                "/v1/requests/" + "x" * rng.randrange(1, 3000),
                "/v1/requests/%00",
                "/v1/requests/a/events",
                "/v1/requests/../healthz",
                "/v1/request",
                "/",
                "/v1/requests/%C3%A9",
            ]
        )
        extra = {"authorization": rng.choice(["Bearer x", "Basic a", "Bearer", ""])}
        return lambda: (body, {**headers, **extra}, False, method, path)
    new_body = mutate_bytes(rng, body) if kind < 0.6 else body
    change_headers = kind >= 0.45
    # With a key, most mutations are signed, so that the parser behind the signature sees them.
    sign = rng.choice(["mutation", "mutation", "original", "other-key", "replay"])
    header_rng = random.Random(rng.getrandbits(64))

    def make() -> Made:
        sent = dict(headers)
        if signed:
            signed_body = body if sign == "original" else new_body
            keys = OTHER_KEYS if sign == "other-key" else None
            webhook_id = "msg_replayed" if sign == "replay" else None
            sent = webhook_headers(
                signed_body, webhook_id, content_type=headers["content-type"], **_keys(keys)
            )
        if change_headers:
            sent = mutate_headers(random.Random(header_rng.random()), sent, signed=signed)
        return new_body, sent, False, "POST", "/v1/requests"

    return make


def _keys(keys: WebhookKeys | None) -> dict[str, WebhookKeys]:
    return {"keys": keys} if keys is not None else {}


RAW_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/requests HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
    b"POST /v1/requests HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
    b"POST /v1/requests HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/requests HTTP/1.1\r\nhost: x\r\nno-colon-here\r\n\r\n",
    b"POST /v1/requests HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"POST /v1/requests HTTP/9.9\r\nhost: x\r\n\r\n",
    b"POST /v1/requests\x00 HTTP/1.1\r\nhost: x\r\n\r\n",
    b"POST /v1/requests HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"content-length: 999999999\r\n\r\n{}",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
]


async def raw(port: int, rng: random.Random, tally: Tally, n: int) -> None:
    request = rng.choice(RAW_REQUESTS)
    if rng.random() < 0.3:
        request = bytes(b if rng.random() > 0.05 else rng.randrange(256) for b in request)
    stream = await anyio.connect_tcp("127.0.0.1", port)
    answer = bytearray()
    async with stream:
        await stream.send(request)
        await stream.send_eof()
        try:
            with anyio.fail_after(10):
                while True:
                    answer.extend(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            pass
    if not answer:  # headers cut short by the client's close: nothing to answer
        tally.unanswered += 1
        tally.mutated += 1
        return
    status = int(answer.split(b" ", 2)[1])
    tally.answer(f"raw-{n} {request[:60]!r}", status, bytes(answer), valid=False)


async def run_fuzz(signed: bool, count: int, rng: random.Random, tally: Tally) -> None:
    options = {"keys": SECRET} if signed else {}
    limits = Limits(header_timeout=10, body_timeout=10)
    async with system(worker=False, limits=limits, max_pending=100_000, **options) as (
        http,
        _,
        _,
    ):
        if signed:  # an accepted webhook, so that replays of its id are among the mutations
            body = json.dumps(runtime_request("seed")).encode()
            replayed = webhook_headers(body, "msg_replayed")
            assert (
                await http.post("/v1/requests", content=body, headers=replayed)
            ).status_code == 202
        work = requests(rng, signed=signed, count=count - (0 if signed else RAW))
        port = int(str(http.base_url).rsplit(":", 1)[1].rstrip("/"))

        async def worker(items: list[tuple[str, Callable]]) -> None:
            for label, make in items:
                body, headers, valid, method, path = make()
                await fire(http, tally, label, body, headers, valid=valid, method=method, path=path)

        async with anyio.create_task_group() as tg:
            for i in range(4):  # a few at once, as real senders would
                tg.start_soon(worker, work[i::4])
        if not signed:
            for n in range(RAW):
                await raw(port, rng, tally, n)


async def test_3000_mutated_requests_get_no_5xx_and_every_valid_one_gets_202() -> None:
    rng = random.Random(SEED)
    tally = Tally()
    began = time.monotonic()
    await run_fuzz(True, MUTATED_SIGNED, rng, tally)
    await run_fuzz(False, MUTATED_OPEN, rng, tally)
    took = time.monotonic() - began
    print(
        f"\nfuzz: {tally.mutated} mutated ({tally.mutated_accepted} still valid, 202;"
        f" {tally.unanswered} raw ones closed unanswered), {tally.valid} valid"
        f" ({tally.valid_accepted} got 202), statuses {dict(sorted(tally.statuses.items()))},"
        f" {took:.1f} s"
    )
    assert tally.problems == []
    assert tally.mutated >= 3000
    assert tally.valid >= 500 and tally.valid_accepted == tally.valid
    assert not [s for s in tally.statuses if s >= 500]
