"""The MNS queue wire protocol as `aliyun-mns-sdk` speaks it: errors, XML documents, signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from xml.sax.saxutils import escape

from agentqueue.deploy.local.mns_store import NewMessage, Property, QueueInfo, StoredMessage

MNS_VERSION = "2015-06-06"
XMLNS = "http://mns.aliyuncs.com/doc/v1/"
CONTENT_TYPE = "text/xml;charset=UTF-8"

MAX_BATCH = 16
MAX_WAIT_SECONDS = 30
MAX_DELAY_SECONDS = 604800
MAX_VISIBILITY_TIMEOUT = 43200
# BatchSendMessage: the bodies together may not exceed 64 KB.
MAX_BATCH_BODY_BYTES = 65536

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,119}")
_RECEIPT_HANDLE = re.compile(r"1-[0-9a-f]{32}")
_AUTHORIZATION = re.compile(r"MNS ([^:\s]+):(\S+)")

# QueueMeta element -> (attribute name, lowest, highest), ranges from the CreateQueue reference.
QUEUE_LIMITS: dict[str, tuple[str, int, int]] = {
    "VisibilityTimeout": ("visibility_timeout", 1, MAX_VISIBILITY_TIMEOUT),
    "MaximumMessageSize": ("maximum_message_size", 1024, 65536),
    "MessageRetentionPeriod": ("message_retention_period", 60, 604800),
    "DelaySeconds": ("delay_seconds", 0, MAX_DELAY_SECONDS),
    "PollingWaitSeconds": ("polling_wait_seconds", 0, MAX_WAIT_SECONDS),
}


class MNSError(Exception):
    """An error MNS answers with: HTTP status, error code and a message naming the bad value."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def invalid_argument(message: str) -> MNSError:
    """A 400 InvalidArgument error."""
    return MNSError(400, "InvalidArgument", message)


def queue_not_exist(name: str) -> MNSError:
    """The 404 QueueNotExist error for queue `name`."""
    return MNSError(404, "QueueNotExist", f"The queue name you provided is not exist: {name!r}.")


def message_not_exist(detail: str = "Message not exist.") -> MNSError:
    """The 404 MessageNotExist error: an empty queue or a receipt handle that is no longer valid."""
    return MNSError(404, "MessageNotExist", detail)


def new_request_id() -> str:
    """A request id shaped like MNS's: 24 upper-case hex digits."""
    return secrets.token_hex(12).upper()


def content_md5(data: bytes) -> str:
    """The SDK's Content-MD5 header: base64 of the *hex* MD5 string, not of the raw digest."""
    return base64.b64encode(hashlib.md5(data).hexdigest().encode("ascii")).decode("ascii")


# --------------------------------------------------------------------------- signatures


def string_to_sign(method: str, headers: Mapping[str, str], resource: str) -> str:
    """StringToSign exactly as mns_client.MNSClient.get_signature builds it.

    `headers` must have lower-case names; `resource` is the path and query as sent, undecoded.
    """
    canonical = "".join(
        f"{name}:{headers[name]}\n" for name in sorted(headers) if name.startswith("x-mns-")
    )
    return "\n".join(
        [
            method,
            headers.get("content-md5", ""),
            headers.get("content-type", ""),
            headers.get("date", ""),
            canonical + resource,
        ]
    )


def signature(access_key: str, to_sign: str) -> str:
    """base64(HMAC-SHA1(access_key, to_sign))."""
    digest = hmac.new(access_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def authorization(
    access_id: str, access_key: str, method: str, headers: Mapping[str, str], resource: str
) -> str:
    """The Authorization header value a client with these credentials sends."""
    return f"MNS {access_id}:{signature(access_key, string_to_sign(method, headers, resource))}"


def parse_authorization(value: str | None) -> tuple[str, str]:
    """Split `MNS AccessKeyId:Signature` into its two parts."""
    if value is None:
        raise MNSError(400, "MissingAuthorizationHeader", "Authorization header is required.")
    match = _AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        raise MNSError(
            400,
            "InvalidAuthorizationHeader",
            f"The Authorization header {value!r} is not of the form 'MNS AccessKeyId:Signature'.",
        )
    return match.group(1), match.group(2)


def check_signature(
    access_key: str, method: str, headers: Mapping[str, str], resource: str, presented: str
) -> None:
    """Raise SignatureDoesNotMatch unless `presented` is the signature of this request."""
    to_sign = string_to_sign(method, headers, resource)
    if not hmac.compare_digest(signature(access_key, to_sign), presented):
        raise MNSError(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            f"Check your key and signing method. StringToSign was {to_sign!r}.",
        )


# --------------------------------------------------------------------------- request parsing


def check_queue_name(name: str) -> None:
    """Raise InvalidQueueName unless `name` is 1-120 letters, digits or hyphens, not hyphen-led."""
    if _QUEUE_NAME.fullmatch(name) is None:
        raise MNSError(
            400,
            "InvalidQueueName",
            f"The queue name {name!r} is invalid: use 1 to 120 letters, digits and hyphens, "
            "starting with a letter or digit.",
        )


def check_receipt_handle(handle: str) -> None:
    """Raise ReceiptHandleError unless `handle` has the shape this server hands out."""
    if _RECEIPT_HANDLE.fullmatch(handle) is None:
        raise MNSError(
            400, "ReceiptHandleError", f"The receipt handle you provide is not valid: {handle!r}."
        )


def parse_int(name: str, text: str | None, low: int, high: int) -> int:
    """Parse `text` as the integer parameter `name` and check it lies in [low, high]."""
    try:
        value = int((text or "").strip())
    except ValueError:
        raise invalid_argument(f"The value of {name} should be an integer; got {text!r}.") from None
    if not low <= value <= high:
        raise invalid_argument(f"The value of {name} should between {low} and {high}; got {value}.")
    return value


def parse_xml(data: bytes, root: str | tuple[str, ...]) -> ET.Element:
    """Parse a request document whose root is one of `root`, dropping the namespace from tags."""
    try:
        element = ET.fromstring(data)
    except ET.ParseError as error:
        raise MNSError(
            400, "MalformedXML", f"The XML you provided was not well-formed: {error}."
        ) from None
    for node in element.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]
    roots = (root,) if isinstance(root, str) else root
    if element.tag not in roots:
        raise MNSError(
            400, "MalformedXML", f"The XML root element is <{element.tag}>; expected {roots}."
        )
    return element


def parse_queue_meta(data: bytes) -> dict[str, int | bool]:
    """The queue attributes a CreateQueue / SetQueueAttributes body sets, by attribute name."""
    if not data.strip():
        return {}
    element = parse_xml(data, "Queue")
    values: dict[str, int | bool] = {}
    for tag, (attribute, low, high) in QUEUE_LIMITS.items():
        text = element.findtext(tag)
        if text is not None:
            values[attribute] = parse_int(tag, text, low, high)
    logging_enabled = element.findtext("LoggingEnabled")
    if logging_enabled is not None:
        if logging_enabled.strip().lower() not in ("true", "false"):
            raise invalid_argument(
                f"The value of LoggingEnabled should be True or False; got {logging_enabled!r}."
            )
        values["logging_enabled"] = logging_enabled.strip().lower() == "true"
    return values


def _parse_properties(element: ET.Element, container: str, item: str) -> tuple[Property, ...]:
    found = element.find(container)
    if found is None:
        return ()
    return tuple(
        Property(
            name=node.findtext("Name") or "",
            value=node.findtext("Value") or "",
            type=node.findtext("Type") or "STRING",
        )
        for node in found.findall(item)
    )


def _parse_message(element: ET.Element) -> NewMessage:
    body = element.findtext("MessageBody")
    if not body:
        raise invalid_argument("The value of MessageBody should not be empty.")
    delay = element.findtext("DelaySeconds")
    priority = element.findtext("Priority")
    return NewMessage(
        body=body,
        delay_seconds=None
        if delay is None
        else parse_int("DelaySeconds", delay, 0, MAX_DELAY_SECONDS),
        priority=8 if priority is None else parse_int("Priority", priority, 1, 16),
        group_id=element.findtext("MessageGroupId") or "",
        user_properties=_parse_properties(element, "UserProperties", "PropertyValue"),
        system_properties=_parse_properties(element, "SystemProperties", "SystemPropertyValue"),
    )


def parse_send(data: bytes) -> tuple[list[NewMessage], bool]:
    """The messages of a SendMessage or BatchSendMessage body, and whether it was a batch."""
    element = parse_xml(data, ("Message", "Messages"))
    if element.tag == "Message":
        return [_parse_message(element)], False
    items = element.findall("Message")
    if not 1 <= len(items) <= MAX_BATCH:
        raise invalid_argument(
            f"A batch should hold between 1 and {MAX_BATCH} messages; got {len(items)}."
        )
    return [_parse_message(item) for item in items], True


def parse_receipt_handles(data: bytes) -> list[str]:
    """The receipt handles of a BatchDeleteMessage body."""
    element = parse_xml(data, "ReceiptHandles")
    handles = [(node.text or "").strip() for node in element.findall("ReceiptHandle")]
    if not 1 <= len(handles) <= MAX_BATCH:
        raise invalid_argument(
            f"A batch should hold between 1 and {MAX_BATCH} receipt handles; got {len(handles)}."
        )
    return handles


# --------------------------------------------------------------------------- response documents


def _text(value: object) -> str:
    # \r is escaped so XML end-of-line normalisation on the client cannot change a body.
    return escape(str(value), {"\r": "&#13;"})


def _leaves(pairs: Iterable[tuple[str, object]]) -> str:
    return "".join(f"<{tag}>{_text(value)}</{tag}>" for tag, value in pairs)


def document(root: str, inner: str) -> bytes:
    """A complete response document with the MNS namespace on its root."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{XMLNS}">{inner}</{root}>'
    ).encode()


def error_document(error: MNSError, request_id: str, host_id: str) -> bytes:
    """The `<Error>` document every failed request gets."""
    return document(
        "Error",
        _leaves(
            [
                ("Code", error.code),
                ("Message", error.message),
                ("RequestId", request_id),
                ("HostId", host_id),
            ]
        ),
    )


def _properties(tag: str, item: str, properties: tuple[Property, ...]) -> str:
    if not properties:
        return ""
    inner = "".join(
        f"<{item}>{_leaves([('Name', p.name), ('Value', p.value), ('Type', p.type)])}</{item}>"
        for p in properties
    )
    return f"<{tag}>{inner}</{tag}>"


def _message_fields(message: StoredMessage, received: bool) -> str:
    pairs: list[tuple[str, object]] = [("MessageId", message.message_id)]
    if received:
        pairs.append(("ReceiptHandle", message.receipt_handle))
    pairs += [
        ("MessageBodyMD5", message.body_md5),
        ("MessageBody", message.body),
        ("EnqueueTime", message.enqueue_time),
    ]
    if received:
        pairs.append(("NextVisibleTime", message.next_visible_time))
    pairs += [
        ("FirstDequeueTime", message.first_dequeue_time),
        ("DequeueCount", message.dequeue_count),
        ("Priority", message.priority),
    ]
    if message.group_id:
        pairs.append(("MessageGroupId", message.group_id))
    return (
        _leaves(pairs)
        + _properties("UserProperties", "PropertyValue", message.user_properties)
        + _properties("SystemProperties", "SystemPropertyValue", message.system_properties)
    )


def messages_document(messages: list[StoredMessage], *, batch: bool, received: bool) -> bytes:
    """A (Batch)ReceiveMessage or (Batch)PeekMessage response; peeks carry no receipt handle."""
    if not batch:
        return document("Message", _message_fields(messages[0], received))
    inner = "".join(f"<Message>{_message_fields(m, received)}</Message>" for m in messages)
    return document("Messages", inner)


def sent_document(messages: list[StoredMessage], *, batch: bool) -> bytes:
    """A SendMessage or BatchSendMessage response."""
    if not batch:
        message = messages[0]
        pairs: list[tuple[str, object]] = [
            ("MessageId", message.message_id),
            ("MessageBodyMD5", message.body_md5),
        ]
        # A delayed message can be deleted or re-timed before it is first received.
        if message.receipt_handle:
            pairs.append(("ReceiptHandle", message.receipt_handle))
        return document("Message", _leaves(pairs))
    inner = "".join(
        f"<Message>{_leaves([('MessageId', m.message_id), ('MessageBodyMD5', m.body_md5)])}"
        "</Message>"
        for m in messages
    )
    return document("Messages", inner)


def visibility_document(message: StoredMessage) -> bytes:
    """A ChangeMessageVisibility response: the new receipt handle and next visible time."""
    return document(
        "ChangeVisibility",
        _leaves(
            [
                ("ReceiptHandle", message.receipt_handle),
                ("NextVisibleTime", message.next_visible_time),
            ]
        ),
    )


def delete_errors_document(errors: list[tuple[str, MNSError]]) -> bytes:
    """A partly failed BatchDeleteMessage response: one `<Error>` per receipt handle that failed."""
    inner = "".join(
        "<Error>"
        + _leaves([("ErrorCode", e.code), ("ErrorMessage", e.message), ("ReceiptHandle", h)])
        + "</Error>"
        for h, e in errors
    )
    return document("Errors", inner)


def _queue_fields(queue: QueueInfo) -> list[tuple[str, object]]:
    a = queue.attributes
    return [
        ("QueueName", queue.name),
        ("CreateTime", queue.create_time),
        ("LastModifyTime", queue.last_modify_time),
        ("VisibilityTimeout", a.visibility_timeout),
        ("MaximumMessageSize", a.maximum_message_size),
        ("MessageRetentionPeriod", a.message_retention_period),
        ("DelaySeconds", a.delay_seconds),
        ("PollingWaitSeconds", a.polling_wait_seconds),
        ("ActiveMessages", queue.active_messages),
        ("InactiveMessages", queue.inactive_messages),
        ("DelayMessages", queue.delay_messages),
        ("LoggingEnabled", "True" if a.logging_enabled else "False"),
    ]


def queue_document(queue: QueueInfo) -> bytes:
    """A GetQueueAttributes response."""
    return document("Queue", _leaves(_queue_fields(queue)))


def queue_list_document(
    queues: list[QueueInfo], base_url: str, next_marker: str | None, with_meta: bool
) -> bytes:
    """A ListQueue response; the SDK's decoder rejects empty elements, so none are written."""
    items = []
    for queue in queues:
        pairs: list[tuple[str, object]] = [("QueueURL", f"{base_url}/queues/{queue.name}")]
        if with_meta:
            pairs += _queue_fields(queue)
        items.append(f"<Queue>{_leaves(pairs)}</Queue>")
    marker = _leaves([("NextMarker", next_marker)]) if next_marker else ""
    return document("Queues", "".join(items) + marker)
