"""What the HTTP ingress accepts: request JSON and CloudEvents 1.0 (structured and binary).

Every way in ends as one `AgentRequest` plus the attributes that pick its id and session; every
way to get it wrong ends as one `IngressError` with the HTTP status, a message and, where there
is one, the JSON path of the bad field (`$.input[0].role`, `$.data.input`, `ce-id`): 415 for a
content type other than JSON or a structured CloudEvent, 400 for an empty body, bytes that are
not UTF-8, JSON nested deeper than `MAX_DEPTH`, malformed JSON, a field of the wrong shape or
an empty `input`. When the ingress has a signing key (`signed=True`), headers are outside the
signature, so none may choose the session or the request id: `X-Session-Id` and binary-mode
`ce-*` attributes are refused, and the signed body says it all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from agentqueue.protocol.messages import AgentRequest

JSON = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"
SESSION_HEADER = "x-session-id"
MAX_DEPTH = 64  # nesting of JSON arrays and objects; a request needs about 6
_CE_REQUIRED = ("id", "source", "type")
_AT = re.compile(r" - at `([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]*)`")
# Strings as whole tokens (so brackets inside them are skipped at C speed), and brackets.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_ACCEPTED = f"send {JSON} (a request, or a binary-mode CloudEvent) or {CLOUDEVENTS_JSON}"


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


def content_kind(headers: Mapping[str, str]) -> str:
    """`json` or `cloudevent` from Content-Type; a 415 `IngressError` for anything else."""
    raw = headers.get("content-type", "")
    media, _, parameters = raw.partition(";")
    media = media.strip().lower()
    if not media:
        raise IngressError(415, f"Content-Type is missing; {_ACCEPTED}", "Content-Type")
    if media not in (JSON, CLOUDEVENTS_JSON):
        raise IngressError(
            415, f"Content-Type {media[:80]!r} is not accepted; {_ACCEPTED}", "Content-Type"
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise IngressError(
                415, f"charset {charset[:40]!r} is not accepted; send UTF-8", "Content-Type"
            )
    return "cloudevent" if media == CLOUDEVENTS_JSON else "json"


def parse_incoming(headers: Mapping[str, str], body: bytes, *, signed: bool = False) -> Incoming:
    """The agent request in a plain JSON, structured CloudEvent or binary CloudEvent body.

    `signed`: the body is signed but the headers are not, so headers that would choose the
    session or the request id are refused.
    """
    kind = content_kind(headers)
    binary = any(name.lower().startswith("ce-") for name in headers)
    if signed:
        if headers.get(SESSION_HEADER):
            raise IngressError(
                400,
                "X-Session-Id is not covered by the signature, so it may not choose the session;"
                " put session_id in the signed body",
                "X-Session-Id",
            )
        if binary:
            raise IngressError(
                400,
                "binary-mode CloudEvent attributes (ce-* headers) are not covered by the"
                f" signature; send the event in structured mode ({CLOUDEVENTS_JSON})",
                "ce-id",
            )
    if not body.strip():
        raise IngressError(400, "the body is empty; send the agent request as JSON", "$")
    header_session = headers.get(SESSION_HEADER) or None
    if kind == "cloudevent":
        event = _json_object(body, "$")
        _check_cloudevent({k: event.get(k) for k in ("specversion", *_CE_REQUIRED)}, "$.")
        data = _cloudevent_data(event)
        request = _agent_request(data, "$.data")
        return Incoming(request, header_session or request.session_id, _event_key(event))
    if binary:
        attributes = {k: headers.get(f"ce-{k}") for k in ("specversion", *_CE_REQUIRED)}
        _check_cloudevent(attributes, "ce-")
        request = _agent_request(_json_object(body, "$"), "$")
        return Incoming(request, header_session or request.session_id, _event_key(attributes))
    request = _agent_request(_json_object(body, "$"), "$")
    return Incoming(request, header_session or request.session_id)


def _json_object(body: bytes, where: str) -> dict[str, Any]:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngressError(
            400,
            f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})",
            where,
        ) from None
    _check_depth(body, where)
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        detail = str(exc).removeprefix("JSON is malformed: ")
        raise IngressError(400, f"the body is malformed JSON: {detail}", where) from None
    except RecursionError:  # a guard behind _check_depth
        raise IngressError(400, f"JSON nested deeper than {MAX_DEPTH} levels", where) from None
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise IngressError(400, f"expected a JSON object, got {kind}", where)
    return value


def _check_depth(body: bytes, where: str) -> None:
    depth = 0
    for token in _STRUCTURE.finditer(body):
        char = body[token.start()]
        if char in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise IngressError(
                    400,
                    f"JSON nested deeper than {MAX_DEPTH} levels (at byte {token.start()})",
                    where,
                )
        elif char in b"]}":
            depth -= 1


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
        request = msgspec.convert(data, AgentRequest)
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
    if not request.input:
        raise IngressError(
            400,
            f"{root}.input is empty; an agent request needs at least one message",
            f"{root}.input",
        )
    return request


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
