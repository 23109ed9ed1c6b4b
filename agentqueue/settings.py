"""One settings object: from arguments, then `AGENTQUEUE_*` environment variables, then defaults."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import redact_url

SECRET_FIELDS = frozenset({"signing_keys"})


@dataclass
class Settings:
    """Everything a client, worker or CLI command is configured with."""

    broker: str = "memory://"
    store: str = "sqlite:///.agentqueue/sessions.db"
    namespace: str = "aq"
    partitions: int = 16
    tool_partitions: int = 16
    concurrency: int = 32
    max_attempts: int = 3
    lease_ttl: float = 30.0
    timeout: float = 300.0
    shutdown_grace: float = 30.0
    # Shown (masked) by `agentqueue config`; brokers read and parse it themselves
    # (broker.urls.signing_keys_from_env), `@/path` included.
    signing_keys: str | None = field(default=None, repr=False)
    trace_file: str | None = None

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Arguments (non-None `overrides`) win over `AGENTQUEUE_<FIELD>` variables and defaults."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = os.environ.get(f"AGENTQUEUE_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _convert(f.name, raw, f.type)
        return cls(**values)

    @property
    def topology(self) -> Topology:
        """The queue names these settings describe."""
        return Topology(self.namespace, self.partitions, self.tool_partitions)

    def masked(self) -> dict[str, Any]:
        """The settings with secrets replaced by *** and URL passwords hidden, for printing."""
        shown = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if shown.get(name):
                shown[name] = "***"
        shown["broker"] = redact_url(self.broker)
        shown["store"] = redact_url(self.store)
        return shown


def _convert(name: str, raw: Any, annotation: Any) -> Any:
    text = str(annotation)
    try:
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(
            f"setting {name} (AGENTQUEUE_{name.upper()}) must be a number, got {raw!r}"
        ) from None
    return raw
