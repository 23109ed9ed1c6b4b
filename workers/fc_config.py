"""The Function Compute entrypoint's settings, read from the function's environment.

Workers do not import the `agentqueue` client package, so this reads `AGENTQUEUE_*` itself,
with the same names and defaults as `agentqueue.settings.Settings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agentqueue.broker.topology import Topology
from agentqueue.workers.errors import WorkerError


@dataclass(frozen=True)
class FCConfig:
    """The function's settings, from `AGENTQUEUE_*` environment variables."""

    app: str
    broker: str
    store: str
    namespace: str = "aq"
    partitions: int = 16
    tool_partitions: int = 16
    max_attempts: int = 3
    # Invocations an event may be part of before it is dead-lettered unrun: an event that kills
    # its instance kills the events running beside it too, so this leaves room for them.
    delivery_limit: int = 10
    lease_ttl: float = 30.0
    concurrency: int = 32
    preload: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FCConfig:
        """Read the configuration; names each missing or malformed variable."""
        env = dict(os.environ if env is None else env)
        missing = [n for n in ("APP", "BROKER", "STORE") if not env.get(f"AGENTQUEUE_{n}")]
        if missing:
            names = ", ".join(f"AGENTQUEUE_{n}" for n in missing)
            raise WorkerError(
                f"the function's environment lacks {names}: set AGENTQUEUE_APP=module:app,"
                " AGENTQUEUE_BROKER=mnss://<account>.mns.<region>.aliyuncs.com and a store all"
                " instances share, e.g. AGENTQUEUE_STORE=redis://host:6379/0"
            )
        values: dict[str, Any] = {}
        for name, kind in (
            ("namespace", str),
            ("partitions", int),
            ("tool_partitions", int),
            ("max_attempts", int),
            ("delivery_limit", int),
            ("lease_ttl", float),
            ("concurrency", int),
        ):
            raw = env.get(f"AGENTQUEUE_{name.upper()}")
            if raw is None:
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                raise WorkerError(
                    f"AGENTQUEUE_{name.upper()} must be a number, got {raw!r}"
                ) from None
        preload = tuple(
            m.strip() for m in env.get("AGENTQUEUE_PRELOAD", "").split(",") if m.strip()
        )
        return cls(
            env["AGENTQUEUE_APP"],
            env["AGENTQUEUE_BROKER"],
            env["AGENTQUEUE_STORE"],
            preload=preload,
            **values,
        )

    @property
    def topology(self) -> Topology:
        """The queue names of this deployment."""
        return Topology(self.namespace, self.partitions, self.tool_partitions)
