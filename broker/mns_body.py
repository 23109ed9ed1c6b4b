"""Message bodies on MNS: JSON envelopes as plain text, any other bytes as base64.

MNS carries a body as XML text, so bytes that are not XML-safe text must be base64-encoded (the
SDK's default does that for every message). A JSON envelope is already XML-safe text, so it goes
as is: the full 64 KB limit stays usable (base64 would leave 48 KB) and the queue is readable in
the console. Readers tell the two apart by the first character: a JSON object starts with `{`,
which base64 never contains; so bodies other publishers sent with the SDK's default base64
encoding are read correctly too. For the Function Compute trigger set `IsBase64Decode` to false;
the FC handler decodes base64 itself when it sees it.
"""

from __future__ import annotations

import base64
import binascii
import re

MAX_BODY_BYTES = 65536  # MNS's limit on one message body as sent (after any base64)

# Characters XML 1.0 allows, less CR (XML parsers turn it into LF, which would change the bytes).
_NOT_XML_SAFE = re.compile("[^\x09\x0a\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def to_wire(body: bytes) -> str:
    """The text MNS carries for `body`: the JSON itself when it is XML-safe, else base64."""
    if body[:1] == b"{":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if not _NOT_XML_SAFE.search(text):
                return text
    return base64.b64encode(body).decode("ascii")


def from_wire(text: str | bytes) -> bytes:
    """The bytes a publisher sent, whichever of the two forms it used."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if raw.lstrip()[:1] == b"{":
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw  # plain text from another publisher: pass it on for the decoder to judge
