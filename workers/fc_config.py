"""The Function Compute entrypoint's settings: `Settings` read from the function's environment,
plus the two things only a function is told (its app and what to preload)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from agentqueue.broker.topology import Topology
from agentqueue.workers.errors import WorkerError
from agentqueue.workers.settings import Settings


@dataclass(frozen=True)
class FCConfig:
    """The function's settings, from `AGENTQUEUE_*` environment variables."""

    app: str
    settings: Settings
    preload: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FCConfig:
        """Read the configuration; names each missing or malformed variable."""
        env = os.environ if env is None else env
        # Required here, with no default: a function must be told its app, broker and store.
        missing = [n for n in ("APP", "BROKER", "STORE") if not env.get(f"AGENTQUEUE_{n}")]
        if missing:
            names = ", ".join(f"AGENTQUEUE_{n}" for n in missing)
            raise WorkerError(
                f"the function's environment lacks {names}: set AGENTQUEUE_APP=module:app,"
                " AGENTQUEUE_BROKER=mnss://<account>.mns.<region>.aliyuncs.com and a store all"
                " instances share, e.g. AGENTQUEUE_STORE=redis://host:6379/0"
            )
        try:
            settings = Settings.load(env)
        except ValueError as exc:
            raise WorkerError(str(exc)) from None
        preload = tuple(m.strip() for m in (settings.preload or "").split(",") if m.strip())
        assert settings.app is not None  # checked above
        return cls(settings.app, settings, preload)

    # The settings the handler uses, by name.
    @property
    def broker(self) -> str:
        return self.settings.broker

    @property
    def store(self) -> str:
        return self.settings.store

    @property
    def topology(self) -> Topology:
        return self.settings.topology
