"""The JSON Schema other languages publish against."""

from __future__ import annotations

from typing import Any

import msgspec

from agentqueue.protocol.messages import Envelope


def envelope_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a v1 `Envelope` and every body type."""
    schema = msgspec.json.schema(Envelope)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "agentqueue envelope v1"
    return schema
