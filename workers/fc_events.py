"""What an MNS queue trigger hands a Function Compute function, read into plain messages.

The EventBridge trigger delivers bytes:

- event-streaming mode: a JSON array of CloudEvents, one per message;
- event-driven mode: one CloudEvent;
- with the `RawData` event schema: only each event's `data` (an array in streaming mode).

A CloudEvent's `data` is `{requestId, messageId, messageBody}`; `subject` names the queue as
`acs:mns:<region>:<account>:queues/<queue>`. `messageBody` is the text that was sent, or its
base64 decoding when the trigger's `IsBase64Decode` is on; `mns_body.from_wire` tells which.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from agentqueue.broker.mns_body import from_wire
from agentqueue.protocol.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class TriggerMessage:
    """One queue message from a trigger payload."""

    body: bytes
    message_id: str | None = None
    queue: str | None = None  # None when the payload does not say (RawData)


def read_trigger_payload(event: bytes | bytearray | str | Any) -> list[TriggerMessage]:
    """The messages in a trigger payload (any of the shapes above), in delivery order."""
    if isinstance(event, bytes | bytearray | memoryview):
        event = bytes(event).decode("utf-8")
    if isinstance(event, str):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise ProtocolError(
                f"the trigger payload is not JSON ({exc});"
                " expected a CloudEvent or an array of them",
                field="$",
            ) from None
    items = event if isinstance(event, list) else [event]
    return [_message(item, f"$[{i}]") for i, item in enumerate(items)]


def _message(item: Any, path: str) -> TriggerMessage:
    if not isinstance(item, dict):
        raise ProtocolError(
            f"trigger event {path} is a {type(item).__name__}, not an object", field=path
        )
    queue = None
    data: Any = item
    if "specversion" in item or "data" in item:  # a CloudEvent; otherwise RawData's bare `data`
        data = item.get("data")
        subject = item.get("subject") or ""
        if "queues/" in subject:
            queue = subject.rsplit("queues/", 1)[1] or None
        path += ".data"
        if not isinstance(data, dict):
            raise ProtocolError(f"trigger event {path} is missing or not an object", field=path)
    if "messageBody" not in data:
        raise ProtocolError(
            f"trigger event {path} has no messageBody; is the trigger's source an MNS queue?",
            field=f"{path}.messageBody",
        )
    body = data["messageBody"]
    if isinstance(body, dict | list):
        # An event bus may hand JSON text over already parsed; the envelope survives re-encoding.
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    elif isinstance(body, str):
        raw = from_wire(body)
    else:
        raise ProtocolError(
            f"{path}.messageBody is a {type(body).__name__}, not text", field=f"{path}.messageBody"
        )
    return TriggerMessage(raw, data.get("messageId"), queue)


def cloud_event(
    queue: str,
    message_id: str,
    message_body: str,
    *,
    region: str = "cn-hangzhou",
    account_id: str = "1234567890123456",
    source: str = "MNS-agentqueue-trigger",
    request_id: str | None = None,
    sent_at: float | None = None,
) -> dict[str, Any]:
    """The CloudEvent an EventBridge MNS trigger makes of one queue message."""
    now = time.time() if sent_at is None else sent_at
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {
        "id": str(uuid.uuid4()),
        "source": source,
        "specversion": "1.0",
        "type": "mns:Queue:SendMessage",
        "datacontenttype": "application/json; charset=utf-8",
        "subject": f"acs:mns:{region}:{account_id}:queues/{queue}",
        "time": stamp,
        "aliyunaccountid": account_id,
        "aliyunpublishtime": stamp,
        "aliyuneventbusname": source,
        "aliyunregionid": region,
        "aliyunpublishaddr": "127.0.0.1",
        "data": {
            "requestId": request_id or uuid.uuid4().hex[:24].upper(),
            "messageId": message_id,
            "messageBody": message_body,
        },
    }
