"""One settings object: from arguments, then `AGENTQUEUE_*` environment variables, then defaults.

It is the one reader of `AGENTQUEUE_*` settings for the CLI, the client, local workers, the
Function Compute handler (`fc_config`) and `deploy fc` (`function_env`), so a default lives here
once. It sits with the workers, below the client, because the FC handler reads it too.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentqueue.broker.base import Broker
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import key_ring, open_broker, redact_url
from agentqueue.protocol.codec import DEFAULT_MAX_SIZE
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.approval_turn import DEFAULT_APPROVAL_TIMEOUT
from agentqueue.workers.retry import RetryPolicy
from agentqueue.workers.session_store import DEFAULT_RETENTION, SessionStore, open_store
from agentqueue.workers.stream_log import (
    DEFAULT_STREAM_EVENTS,
    DEFAULT_STREAM_RETENTION,
    StreamLog,
    open_stream_log,
)

MISSED_POLICIES = ("once", "skip")  # what a schedule does with ticks missed while no worker ran
SECRET_FIELDS = frozenset({"signing_keys", "ingress_key", "console_token"})
# What a worker elsewhere (a Function Compute function) must be told to behave like this one.
WORKER_FIELDS = (
    "store",
    "namespace",
    "partitions",
    "tool_partitions",
    "concurrency",
    "max_attempts",
    "delivery_limit",
    "lease_ttl",
    "store_retention",
    "session_ttl",
    "approval_timeout",
    "stream_events",
    "stream_retention",
)


def state_dir(environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_STATE_HOME/agentqueue` (`~/.local/state/agentqueue` without it), absolute."""
    env = os.environ if environ is None else environ
    # One absolute place: a worker started from another directory still finds its state.
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(state), "agentqueue")


def default_store(environ: Mapping[str, str] | None = None) -> str:
    """`sqlite:///$XDG_STATE_HOME/agentqueue/sessions.db` (`~/.local/state/…` without it)."""
    return f"sqlite:///{os.path.join(state_dir(environ), 'sessions.db')}"


@dataclass
class Settings:
    """Everything a client, worker or CLI command is configured with."""

    broker: str = "memory://"
    store: str = field(default_factory=default_store)
    namespace: str = "aq"
    partitions: int = 16
    tool_partitions: int = 16
    concurrency: int = 32
    max_attempts: int = 3
    # Runs of one event that started and never finished (counted in the store) before it is
    # dead-lettered unrun as poison (it keeps killing its worker). The partition queues'
    # x-delivery-limit is far higher (`Topology.broker_delivery_limit`), a crash-loop guard.
    delivery_limit: int = 20
    lease_ttl: float = 30.0
    store_retention: float = DEFAULT_RETENTION  # seconds handled-event records are kept
    session_ttl: float | None = None  # seconds idle before a session's state is deleted; off
    # A streaming request's events are kept beside the store for attachers: its last
    # `stream_events` (0: none kept, no attach), until `stream_retention` s after its last one.
    stream_events: int = DEFAULT_STREAM_EVENTS
    stream_retention: float = DEFAULT_STREAM_RETENTION
    retry_base_delay: float = 0.2  # seconds before the first retry; doubles, with jitter
    retry_max_delay: float = 10.0
    timeout: float = 300.0
    shutdown_grace: float = 30.0
    reply_grace: float = 10.0  # seconds an answer waits for its missing reply queue to return
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT  # seconds a paused turn waits, then denied
    # Seconds a durable reply queue (a batch's) may sit unused before RabbitMQ deletes it, so
    # an abandoned batch does not leave a queue behind for good; a resume within it is safe.
    reply_queue_expiry: float = 7 * 24 * 3600.0
    max_message_size: int = DEFAULT_MAX_SIZE  # bytes; larger messages are refused unread
    freshness_window: float = 300.0  # seconds a signed envelope may take to arrive
    queue_max_length: int | None = None  # partition depth past which publishes are refused
    balance: bool = True  # share partitions with the other live workers of the namespace
    heartbeat_interval: float = 1.0  # seconds between a balancing worker's heartbeats
    # Schedule ticks that fell while no worker ran: `once` runs them once, as one turn (the
    # latest tick); `skip` drops every tick more than `schedule_grace` seconds late.
    schedule_missed: str = "once"
    schedule_grace: float = 5.0
    # `id:secret,…` or `@/path/to/file`; shown masked by `agentqueue config`.
    signing_keys: str | None = field(default=None, repr=False)
    # The ingress's Standard Webhooks secret (`whsec_…`, or `@/path/to/file`); shown masked.
    ingress_key: str | None = field(default=None, repr=False)
    # The web console's bearer token (or `@/path/to/file`); its own, never a signing key. Shown
    # masked; required when the console listens beyond loopback.
    console_token: str | None = field(default=None, repr=False)
    trace_file: str | None = None
    # The chat model (read as given; `workers/models.py` checks them and owns their defaults,
    # so its errors name the variable): AGENTQUEUE_MODEL, _MODEL_PROVIDER, _MODEL_TIMEOUT,
    # _MODEL_ATTEMPTS, _MODEL_MAX_WAIT, the shared _RATE_LIMIT and where it is kept, _PRICES.
    model: str | None = None
    model_provider: str | None = None
    model_timeout: str | None = None
    model_attempts: str | None = None
    model_max_wait: str | None = None
    rate_limit: str | None = None
    rate_limit_store: str | None = None
    prices: str | None = None
    # What a Function Compute function runs: the app (module:attribute) and modules its
    # initializer imports (comma-separated).
    app: str | None = None
    preload: str | None = None
    # Function Compute's provisioned instances of the function: a warm pool started and
    # initialised before events arrive (`deploy fc` sets it with PutProvisionConfig; the FC
    # emulator starts them too). 0: none, every instance starts cold on its first event.
    provisioned_instances: int = 0
    # Where this worker keeps its sandboxes' workspaces when the app names no `root` (default
    # `<state dir>/sandboxes`); each machine its own: workspaces travel by store snapshots.
    sandbox_root: str | None = None

    def __post_init__(self) -> None:
        if self.schedule_missed not in MISSED_POLICIES:
            raise ValueError(
                f"setting schedule_missed (AGENTQUEUE_SCHEDULE_MISSED) must be one of"
                f" {', '.join(MISSED_POLICIES)}, got {self.schedule_missed!r}"
            )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Arguments (non-None `overrides`) win over `AGENTQUEUE_<FIELD>` variables and defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = env.get(f"AGENTQUEUE_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _convert(f.name, raw, f.type)
        values.setdefault("store", default_store(env))
        return cls(**values)

    @property
    def topology(self) -> Topology:
        """The queue names these settings describe."""
        return Topology(
            self.namespace,
            self.partitions,
            self.tool_partitions,
            self.delivery_limit,
            self.queue_max_length,
        )

    def key_ring(self) -> KeyRing | None:
        """The signing keys these settings name (None: envelopes go unsigned)."""
        return key_ring(self.signing_keys)

    def open_broker(self, url: str | None = None) -> Broker:
        """A broker for `url` (default: these settings' broker), signing with their keys."""
        return open_broker(self.broker if url is None else url, signing=self.key_ring())

    def open_store(self) -> SessionStore:
        """The session store these settings name, with their retention."""
        return open_store(self.store, retention=self.store_retention, session_ttl=self.session_ttl)

    def open_stream_log(self, store_url: str | None = None) -> StreamLog | None:
        """The log of kept streams beside the store `store_url` (default: these settings');
        None when `stream_events` is 0 (streams are not kept)."""
        if self.stream_events == 0:
            return None
        return open_stream_log(
            self.store if store_url is None else store_url,
            max_events=self.stream_events,
            retention=self.stream_retention,
        )

    @property
    def retry(self) -> RetryPolicy:
        """How failing events are retried."""
        return RetryPolicy(self.max_attempts, self.retry_base_delay, self.retry_max_delay)

    def function_env(self) -> dict[str, str]:
        """The `AGENTQUEUE_*` variables that give a Function Compute worker these settings."""
        return {
            f"AGENTQUEUE_{name.upper()}": _text(getattr(self, name))
            for name in WORKER_FIELDS
            if getattr(self, name) is not None
        }

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
    if text.startswith("bool"):
        if isinstance(raw, bool):
            return raw
        value = str(raw).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(
            f"setting {name} (AGENTQUEUE_{name.upper()}) must be true or false, got {raw!r}"
        )
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


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
