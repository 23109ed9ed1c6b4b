"""A local stand-in for the FC 3.0 and MNS open API control planes, for `deploy fc` tests.

One HTTP server on 127.0.0.1 answers both:
- FC 3.0 REST (ROA): `/2023-03-30/functions[/{name}[/triggers[/{trigger}]]]` and
  `/2023-03-30/functions/{name}/provision-config` with GET, POST, PUT and DELETE, JSON bodies, errors as `{"Code", "Message", "RequestId"}` with 404 / 409;
- the MNS open API (RPC): `POST /` with the action in the `x-acs-action` header (ACS3 signing
  puts it there) and the parameters in the query string; answers `{"Code", "Success", "Data"}`.

State is kept in memory, so a GET reflects what was created. Every request is recorded (method,
path, query, action, parsed body, headers) for the tests to assert on. Signatures are not
checked; the SDKs' signing headers are accepted as they come. The server also adds fields of
its own to what it returns (ids, times, defaults), as the real services do, so a client that
compares whole objects instead of the fields it set would see differences that are not there.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

FC_PREFIX = "/2023-03-30/functions"
_INT_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "PollingWaitSeconds",
    "VisibilityTimeout",
)


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    action: str | None
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class State:
    """What exists: functions, triggers per function, queues."""

    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    triggers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    provision: dict[str, dict[str, Any]] = field(default_factory=dict)  # per function
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)


class ControlPlane:
    """The server; `with ControlPlane() as cp:` serves on `cp.url` until the block ends."""

    def __init__(self) -> None:
        self.state = State()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        plane = self

        class Handler(_Handler):
            control = plane

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ControlPlane:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def take(self) -> list[Recorded]:
        """The requests recorded since the last call, oldest first."""
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    def handle(self, r: Recorded) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(r)
            if r.path.startswith(FC_PREFIX):
                return self._fc(r)
            if r.path == "/" and r.action:
                return self._mns(r)
            return 404, _error("NotFound", f"no route for {r.method} {r.path}")

    # FC 3.0

    def _fc(self, r: Recorded) -> tuple[int, Any]:
        parts = [unquote(p) for p in r.path[len(FC_PREFIX) :].split("/") if p]
        functions, triggers = self.state.functions, self.state.triggers
        if not parts:
            if r.method == "POST":
                name = r.body["functionName"]
                if name in functions:
                    return 409, _error("FunctionAlreadyExists", f"function {name} exists")
                functions[name] = _stored_function(r.body)
                triggers[name] = {}
                return 200, _shown_function(functions[name])
            return 200, {"functions": [_shown_function(f) for f in functions.values()]}
        name = parts[0]
        if name not in functions:
            return 404, _error("FunctionNotFound", f"function {name} does not exist")
        if len(parts) == 1:
            if r.method == "GET":
                return 200, _shown_function(functions[name])
            if r.method == "PUT":
                functions[name].update(_stored_function(r.body, functions[name]))
                return 200, _shown_function(functions[name])
            if r.method == "DELETE":
                if triggers[name]:  # FC refuses to delete a function that still has triggers
                    return 400, _error("FunctionNotEmpty", f"function {name} has triggers")
                if name in self.state.provision:  # or provisioned instances
                    return 400, _error("FunctionNotEmpty", f"function {name} is provisioned")
                del functions[name], triggers[name]
                return 204, None
        if len(parts) == 2 and parts[1] == "provision-config":
            return self._provision(r, name)
        own = triggers[name]
        if len(parts) == 2 and parts[1] == "triggers":
            if r.method == "POST":
                trigger = r.body["triggerName"]
                if trigger in own:
                    return 409, _error("TriggerAlreadyExists", f"trigger {trigger} exists")
                own[trigger] = {
                    **r.body,
                    "triggerId": uuid.uuid4().hex,
                    "status": "Ready",
                    "createdTime": "2024-01-01T00:00:00Z",
                    "targetArn": f"acs:fc:cn-hangzhou:1:functions/{name}",
                }
                return 200, own[trigger]
            return 200, {"triggers": list(own.values()), "nextToken": ""}
        if len(parts) == 3 and parts[1] == "triggers":
            trigger = parts[2]
            if trigger not in own:
                return 404, _error("TriggerNotFound", f"trigger {trigger} does not exist")
            if r.method == "GET":
                return 200, own[trigger]
            if r.method == "PUT":
                own[trigger].update({k: v for k, v in r.body.items() if v is not None})
                return 200, own[trigger]
            if r.method == "DELETE":
                del own[trigger]
                return 204, None
        return 404, _error("NotFound", f"no route for {r.method} {r.path}")

    def _provision(self, r: Recorded, name: str) -> tuple[int, Any]:
        provision = self.state.provision
        if r.method == "PUT":
            provision[name] = {**r.body, "functionName": name, "current": 0}
            return 200, provision[name]
        if name not in provision:
            return 404, _error("ProvisionConfigNotFound", f"function {name} is not provisioned")
        if r.method == "GET":
            return 200, provision[name]
        if r.method == "DELETE":
            del provision[name]
            return 204, None
        return 404, _error("NotFound", f"no route for {r.method} {r.path}")

    # MNS open API

    def _mns(self, r: Recorded) -> tuple[int, Any]:
        queues = self.state.queues
        name = r.query.get("QueueName", "")
        attributes = {k: int(v) for k, v in r.query.items() if k in _INT_ATTRIBUTES}
        if r.action == "CreateQueue":
            if name in queues:
                return 409, _error("QueueAlreadyExist", f"queue {name} exists")
            queues[name] = {
                "QueueName": name,
                "DelaySeconds": 0,
                "PollingWaitSeconds": 0,
                "MaximumMessageSize": 65536,
                "MessageRetentionPeriod": 345600,
                "VisibilityTimeout": 30,
                "CreateTime": 1700000000,
                "LoggingEnabled": False,
                **attributes,
            }
            return 200, _ok(name)
        if name not in queues:
            return 404, _error("QueueNotExist", f"queue {name} does not exist")
        if r.action == "GetQueueAttributes":
            return 200, _ok(queues[name])
        if r.action == "SetQueueAttributes":
            queues[name].update(attributes)
            return 200, _ok(True)
        if r.action == "DeleteQueue":
            del queues[name]
            return 200, _ok(True)
        return 400, _error("InvalidAction", f"unknown action {r.action}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the SDK keeps connections alive
    disable_nagle_algorithm = True  # headers and body go out in two writes
    control: ControlPlane

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = dict(parse_qsl(raw.decode()))
        recorded = Recorded(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query)),
            self.headers.get("x-acs-action"),
            body,
            {k.lower(): v for k, v in self.headers.items()},
            raw,
        )
        status, answer = self.control.handle(recorded)
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-acs-request-id", uuid.uuid4().hex)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


def _error(code: str, message: str) -> dict[str, Any]:
    return {"Code": code, "Message": message, "RequestId": uuid.uuid4().hex}


def _ok(data: Any) -> dict[str, Any]:
    return {
        "Code": 200,
        "Success": True,
        "Status": "Success",
        "Message": "operation success",
        "RequestId": uuid.uuid4().hex,
        "Data": data,
    }


def _stored_function(body: dict[str, Any], current: dict[str, Any] | None = None) -> dict:
    stored = {k: v for k, v in body.items() if k != "code"}
    code = body.get("code")
    if code:
        stored["codeSize"] = len(code.get("zipFile", ""))
        stored["codeChecksum"] = str(abs(hash(json.dumps(code, sort_keys=True))))
    if current is None:
        stored.setdefault("diskSize", 512)
        stored.setdefault("internetAccess", True)
        stored["functionId"] = uuid.uuid4().hex
    return stored


def _shown_function(stored: dict[str, Any]) -> dict[str, Any]:
    name = stored["functionName"]
    return {
        **stored,
        "functionArn": f"acs:fc:cn-hangzhou:1:functions/{name}",
        "state": "Active",
        "lastUpdateStatus": "Successful",
        "createdTime": "2024-01-01T00:00:00Z",
        "lastModifiedTime": "2024-01-01T00:00:00Z",
    }
