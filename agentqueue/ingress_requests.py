"""What the HTTP ingress accepts: request JSON, CloudEvents 1.0 (structured and binary), signatures.

Every way in ends as one `AgentRequest` plus the attributes that pick its id and session; every
way to get it wrong ends as one `IngressError` with the HTTP status, a message and, where there
is one, the JSON path of the bad field (`$.input[0].role`, `$.data.input`, `ce-id`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from agentqueue.protocol.messages import AgentRequest

CLOUDEVENTS_JSON = "application/cloudevents+json"
SIGNATURE_HEADER = "x-signature"
SESSION_HEADER = "x-session-id"
_CE_REQUIRED = ("id", "source", "type")
_AT = re.compile(r" - at `([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]*)`")


class IngressError(Exception):
    """A request the ingress refuses: the HTTP status, what was wrong, and the field if any."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": self.message, "field": self.field}


@dataclass(slots=True)
class Incoming:
    """One accepted request: the agent request and where its id and session come from."""

    request: AgentRequest
    session_id: str | None  # from X-Session-Id or the request's session_id; None: not given
    event_id: str | None = None  # a CloudEvent's `source` + `id`, unique per event by the spec


def sign(key: str | bytes, body: bytes) -> str:
    """The X-Signature value for `body`: `sha256=` and the hex HMAC-SHA256 under `key`."""
    key_bytes = key.encode() if isinstance(key, str) else key
    return "sha256=" + hmac.new(key_bytes, body, hashlib.sha256).hexdigest()


def check_signature(key: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise a 401 `IngressError` unless X-Signature is the HMAC of `body` under `key`."""
    given = headers.get(SIGNATURE_HEADER)
    if not given:
        raise IngressError(
            401,
            "missing X-Signature header; send sha256=<hex HMAC-SHA256 of the body>",
            "X-Signature",
        )
    if not hmac.compare_digest(given.strip().encode(), sign(key, body).encode()):
        raise IngressError(
            401,
            "X-Signature does not match the body; sign the exact bytes sent with the key",
            "X-Signature",
        )


def parse_incoming(headers: Mapping[str, str], body: bytes) -> Incoming:
    """The agent request in a plain JSON, structured CloudEvent or binary CloudEvent body."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    header_session = headers.get(SESSION_HEADER) or None
    if content_type == CLOUDEVENTS_JSON:
        event = _json_object(body, "$")
        _check_cloudevent({k: event.get(k) for k in ("specversion", *_CE_REQUIRED)}, "$.")
        data = _cloudevent_data(event)
        request = _agent_request(data, "$.data")
        return Incoming(request, header_session or request.session_id, _event_key(event))
    if "ce-specversion" in headers:
        attributes = {k: headers.get(f"ce-{k}") for k in ("specversion", *_CE_REQUIRED)}
        _check_cloudevent(attributes, "ce-")
        request = _agent_request(_json_object(body, "$"), "$")
        return Incoming(request, header_session or request.session_id, _event_key(attributes))
    request = _agent_request(_json_object(body, "$"), "$")
    return Incoming(request, header_session or request.session_id)


def _json_object(body: bytes, where: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise IngressError(400, f"body is not valid JSON: {exc}", where) from None
    if not isinstance(value, dict):
        raise IngressError(400, f"expected a JSON object, got {type(value).__name__}", where)
    return value


def _check_cloudevent(attributes: Mapping[str, Any], prefix: str) -> None:
    version = attributes.get("specversion")
    if version != "1.0":
        raise IngressError(
            400, f"CloudEvents specversion must be '1.0', got {version!r}", f"{prefix}specversion"
        )
    for name in _CE_REQUIRED:
        value = attributes.get(name)
        if not isinstance(value, str) or not value:
            raise IngressError(
                400,
                f"CloudEvent attribute {name!r} is required (a non-empty string)",
                f"{prefix}{name}",
            )


def _cloudevent_data(event: dict[str, Any]) -> dict[str, Any]:
    if "data_base64" in event:
        try:
            raw = base64.b64decode(event["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise IngressError(400, f"data_base64 is not base64: {exc}", "$.data_base64") from None
        return _json_object(raw, "$.data_base64")
    data = event.get("data")
    if not isinstance(data, dict):
        raise IngressError(
            400,
            "the CloudEvent's `data` must be the agent request (a JSON object with `input`)",
            "$.data",
        )
    return data


def _agent_request(data: dict[str, Any], root: str) -> AgentRequest:
    try:
        return msgspec.convert(data, AgentRequest)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = _AT.search(text)
        path = at.group(1) if at else "$"
        missing = _MISSING.search(text)
        if missing:
            path = f"{path}.{missing.group(1)}"
        field = root + path[1:]
        message = _AT.sub("", text)
        raise IngressError(400, f"not an agent request: {message} (at {field})", field) from None


def _event_key(attributes: Mapping[str, Any]) -> str:
    return f"{attributes['source']}\0{attributes['id']}"


def request_id_for(incoming: Incoming) -> str | None:
    """A deterministic request id when the caller gave one or the event has a unique key."""
    if incoming.request.id:
        return incoming.request.id
    if incoming.event_id is not None:
        # A CloudEvent delivered twice (same source and id) becomes the same request.
        return "ce-" + hashlib.sha256(incoming.event_id.encode()).hexdigest()[:32]
    return None
