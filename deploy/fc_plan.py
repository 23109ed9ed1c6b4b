"""What `agentqueue deploy fc` manages on Alibaba Cloud, as data: queues, function, triggers, role.

`build_plan(FCOptions(...))` computes every resource from the app and the settings without
talking to the cloud; `render_plan` prints it for people, `FCPlan.to_dict` for machines. Both
are deterministic (a fixed order, no timestamps), so a stored plan can be compared.

The choices, and why:
- Runtime python3.12, FC 3.0's built-in Python runtime: agentscope 2.x needs Python >= 3.11, so
  python3.10 cannot run it, and a custom runtime would need an HTTP server around the handler.
- One EventBridge trigger per partition queue, invoking synchronously (`asyncInvocationType`
  false) with delivery concurrency 1: the trigger waits for each batch, so a partition's events
  are handled one batch at a time, and a batch the handler raises on is retried in order.
- `errorsTolerance` ALL with the dead-letter queue: once the retry strategy gives up (about a
  day with EXPONENTIAL_DECAY_RETRY) the batch goes to `<ns>-dead-letters` rather than blocking
  its partition forever; the handler dead-letters poison events itself long before that.
- `IsBase64Decode` false: bodies are JSON text on the wire (`broker.mns_body`); the handler
  decodes base64 itself when another publisher used it.
- Built-in runtimes serve one request per instance, so `instanceConcurrency` is 1 and HEADER_FIELD
  session affinity (for HTTP invocations) binds one session per instance.
- Provisioned instances (`provisioned_instances`, default 0: none) are the warm pool: FC starts
  them and runs the initializer before any event arrives, and keeps them while idle (billed).
  The initializer then imports AgentScope too (unless `--preload` says otherwise), so the first
  agent turn on a provisioned instance pays no import: most of a cold start's seconds.
- No credentials in the environment: FC gives the function its role's STS credentials as
  ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET/SECURITY_TOKEN, which `broker.mns_config` reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agentqueue.broker.mns_body import MAX_BODY_BYTES
from agentqueue.broker.mns_config import ENV_ID, ENV_SECRET, ENV_TOKEN, parse_mns_url
from agentqueue.broker.topology import REQUESTS, TOOLS
from agentqueue.broker.urls import redact_url
from agentqueue.protocol.errors import AgentQueueError
from agentqueue.workers.agent_handler import AGENTSCOPE_MODULES
from agentqueue.workers.settings import Settings

RUNTIME = "python3.12"
PYTHON_VERSION = "3.12"  # of RUNTIME: what `fc_package` installs dependencies for
HANDLER = "agentqueue.workers.fc.handler"
INITIALIZER = "agentqueue.workers.fc.initializer"
INITIALIZER_TIMEOUT = 60
DEFAULT_CODE = "dist/agentqueue-fc.zip"
PARTITION_RETENTION = 345600  # MNS's default: 4 days
DEAD_LETTER_RETENTION = 604800  # MNS's longest: 7 days, so dead letters wait for `dlq replay`
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{4,39}$")
_FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
MAX_PROVISIONED = 10000  # PutProvisionConfig's limit


class DeployError(AgentQueueError):
    """A deployment that cannot be planned or applied; the message says what to change."""


@dataclass(frozen=True)
class FCOptions:
    """Everything a plan is computed from: the app, the settings and the function's sizing."""

    app: str
    settings: Settings  # what the function's workers are told (store, partitions, limits, …)
    region: str = "cn-hangzhou"
    account_id: str | None = None
    function_name: str | None = None  # default `<namespace>-worker`
    broker: str | None = None  # default mnss://<account>.mns.<region>.aliyuncs.com
    memory: int = 1024  # MB
    cpu: float | None = None  # vCPU; default 1 per GB of memory
    timeout: int = 900  # seconds one invocation (one batch) may take
    role_arn: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    code: str = DEFAULT_CODE  # a zip file, or oss://bucket/object
    batch_size: int = 10
    batch_window: int = 0  # seconds; 0 delivers at once, batches form while one is handled
    preload: str = ""
    affinity_header: str = "agentqueue-session"
    sandboxes: SandboxNeeds | None = None  # what the app's sandboxes need (`sandbox_needs`)
    has_agents: bool = True  # the app registers agents (a warm pool then preloads AgentScope)


# MB of memory one sandbox of each type takes, and whether it needs FC's large disk: a base
# sandbox's server and IPython kernel (~120 MB resident, measured), Chromium (its memory
# cgroup's default cap) and its profile, Xvfb's framebuffer and Tk.
SANDBOX_MEMORY = {"base": 256, "filesystem": 0, "browser": 1024, "gui": 256}
WORKER_MEMORY = 512  # MB the worker itself is given besides its sandboxes
LARGE_DISK = 10240  # MB: FC 3.0 offers 512 (the default) or 10240
ON_LARGE_DISK = {"browser", "gui"}


@dataclass(frozen=True)
class SandboxNeeds:
    """The sandbox types an app registers and what an instance needs to run them."""

    types: tuple[str, ...]
    memory: int  # MB, the worker's share included
    disk: int | None  # MB, None when FC's default disk will do


def sandbox_needs(app: object) -> SandboxNeeds | None:
    """What an app's sandboxes need on one instance: one per session plus the warm pool."""
    sets = getattr(app, "sandbox_sets", [])
    if not sets:
        return None
    types: list[str] = []
    memory = WORKER_MEMORY
    for boxes in sets:
        kinds = boxes.types
        types += [t for t in kinds if t not in types]
        sandboxes = boxes.config.pool_size + 1  # FC sends an instance one session at a time
        base = SANDBOX_MEMORY["base"] if {"base", "filesystem", "gui"} & set(kinds) else 0
        per_type = sum(SANDBOX_MEMORY[t] for t in kinds if t != "base")
        memory += sandboxes * (base + per_type)
    disk = LARGE_DISK if ON_LARGE_DISK & set(types) else None
    memory = -(-memory // 64) * 64  # FC takes multiples of 64 MB
    return SandboxNeeds(tuple(types), memory, disk)


@dataclass(frozen=True)
class CodeSource:
    """Where the function's code comes from, and a digest that tells when it changed."""

    location: str
    digest: str | None  # sha256 of the zip, None when it is in OSS or not built yet
    size: int | None = None

    @property
    def oss(self) -> tuple[str, str] | None:
        """(bucket, object) when the code is in OSS."""
        if not self.location.startswith("oss://"):
            return None
        parts = urlsplit(self.location)
        return parts.netloc, parts.path.lstrip("/")

    @property
    def marker(self) -> str:
        """What the function's description records about its code."""
        if self.digest:
            return f"sha256:{self.digest[:16]}"
        return self.location


@dataclass(frozen=True)
class QueuePlan:
    """One MNS queue with the attributes CreateQueue / SetQueueAttributes set."""

    name: str
    purpose: str
    attributes: dict[str, int]


@dataclass(frozen=True)
class TriggerPlan:
    """One EventBridge trigger: an MNS queue invoking the function."""

    name: str
    queue: str
    trigger_type: str
    qualifier: str
    config: dict[str, Any]  # trigger_config, sent as a JSON string


@dataclass(frozen=True)
class RolePlan:
    """The RAM role the function runs as, as documents to create (RAM is not managed here)."""

    name: str
    arn: str
    trust_policy: dict[str, Any]
    policy_name: str
    policy: dict[str, Any]


@dataclass(frozen=True)
class FCPlan:
    """Every resource of one deployment, in a fixed order."""

    region: str
    account_id: str | None
    function_name: str
    function: dict[str, Any]  # CreateFunctionInput as on the wire, without `code`
    code: CodeSource
    queues: tuple[QueuePlan, ...]
    triggers: tuple[TriggerPlan, ...]
    role: RolePlan
    problems: tuple[str, ...] = ()  # what stops --apply
    notes: tuple[str, ...] = ()
    # PutProvisionConfigInput as on the wire, for qualifier LATEST; None: no provisioned instances
    provision: dict[str, Any] | None = None

    def check_ready(self) -> None:
        """Raise `DeployError` listing the problems that stop --apply, if any."""
        if self.problems:
            raise DeployError("the plan is not ready to apply: " + "; ".join(self.problems))

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data, secrets masked."""
        function = dict(self.function)
        function["environmentVariables"] = masked_env(function["environmentVariables"])
        return {
            "region": self.region,
            "accountId": self.account_id,
            "function": function,
            "code": {
                "location": self.code.location,
                "sha256": self.code.digest,
                "size": self.code.size,
            },
            "queues": [
                {"name": q.name, "purpose": q.purpose, "attributes": q.attributes}
                for q in self.queues
            ],
            "triggers": [
                {
                    "triggerName": t.name,
                    "queue": t.queue,
                    "triggerType": t.trigger_type,
                    "qualifier": t.qualifier,
                    "triggerConfig": t.config,
                }
                for t in self.triggers
            ],
            "role": {
                "name": self.role.name,
                "arn": self.role.arn,
                "trustPolicy": self.role.trust_policy,
                "policyName": self.role.policy_name,
                "policy": self.role.policy,
            },
            "provisionConfig": self.provision,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def masked_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment values safe to print: secret-looking names as ***, URL passwords hidden."""
    return {k: "***" if _SECRET_NAME.search(k) else redact_url(v) for k, v in sorted(env.items())}


def read_code(location: str) -> CodeSource:
    """The code source at `location`: a zip's size and sha256, or an oss:// object as is."""
    if location.startswith("oss://"):
        parts = urlsplit(location)
        if not parts.netloc or not parts.path.strip("/"):
            raise DeployError(f"code location {location!r} must look like oss://bucket/object")
        return CodeSource(location, None)
    path = Path(location)
    if not path.is_file():
        return CodeSource(location, None)
    data = path.read_bytes()
    return CodeSource(location, hashlib.sha256(data).hexdigest(), len(data))


def build_plan(options: FCOptions, code: CodeSource | None = None) -> FCPlan:
    """Every resource the deployment needs; `problems` lists what must be fixed before --apply."""
    o = options
    topology = o.settings.topology
    if not o.settings.namespace[:1].isalpha():
        raise DeployError(
            f"namespace {o.settings.namespace!r} must start with a letter on FC"
            " (trigger names are the queue names and must)"
        )
    name = o.function_name or f"{o.settings.namespace}-worker"
    if not _FUNCTION.match(name):
        raise DeployError(
            f"function name {name!r} must be 1-64 letters, digits, '_' or '-',"
            " not starting with a digit or '-'"
        )
    if not _HEADER.match(o.affinity_header) or o.affinity_header.lower().startswith("x-fc-"):
        raise DeployError(
            f"affinity header {o.affinity_header!r} must be 5-40 letters, digits,"
            " '-' or '_', start with a letter and not with x-fc-"
        )
    if o.memory < 128 or o.memory % 64:
        raise DeployError(f"memory {o.memory} MB must be a multiple of 64, at least 128")
    cpu = o.cpu if o.cpu is not None else max(0.05, round(o.memory / 1024 / 0.05) * 0.05)
    cpu = round(cpu, 2)
    if not 0.25 <= cpu / (o.memory / 1024) <= 1.0 + 1e-9:
        raise DeployError(
            f"{cpu} vCPU with {o.memory} MB is outside FC's 1:1 to 1:4 ratio of"
            " vCPU to GB; pass --cpu or --memory to fix it"
        )
    if not 1 <= o.batch_size <= 10000 or not 0 <= o.batch_window <= 15:
        raise DeployError(
            f"batch size {o.batch_size} must be 1-10000 and batch window"
            f" {o.batch_window} s 0-15 (EventBridge's limits)"
        )
    provisioned = o.settings.provisioned_instances
    if not 0 <= provisioned <= MAX_PROVISIONED:
        raise DeployError(
            f"provisioned instances {provisioned} must be 0 (none) to {MAX_PROVISIONED}"
            " (PutProvisionConfig's limit)"
        )
    problems: list[str] = []
    needs = o.sandboxes
    if needs is not None and o.memory < needs.memory:
        problems.append(
            f"memory {o.memory} MB is too little for the app's {', '.join(needs.types)}"
            f" sandboxes (each session's and the warm pool's): pass --memory {needs.memory}"
        )
    account = o.account_id or _account_of(o.role_arn)
    if account is None:
        problems.append(
            "the account id is unknown: pass --account-id (or --role-arn"
            " acs:ram::<account-id>:role/<name>)"
        )
    shown_account = account or "<account-id>"
    broker = (
        o.broker
        if o.broker and o.broker.startswith(("mns:", "mnss:"))
        else (f"mnss://{shown_account}.mns.{o.region}.aliyuncs.com")
    )
    visibility = parse_mns_url(broker).visibility
    if urlsplit(o.settings.store).scheme not in ("redis", "rediss"):
        problems.append(
            f"session store {redact_url(o.settings.store)!r} is not shared by FC instances:"
            " pass --store redis://host:6379/0 (a Redis every instance reaches)"
        )
    for key in sorted(o.env):
        if key in (ENV_ID, ENV_SECRET, ENV_TOKEN):
            raise DeployError(
                f"--env {key} is refused: the function gets credentials from its"
                " role (--role-arn), never from its environment"
            )
    code = code or read_code(o.code)
    if code.digest is None and code.oss is None:
        problems.append(
            f"no code package at {code.location}: build it with `agentqueue deploy fc --package`"
        )

    role = _role(name, o.role_arn, shown_account, o.region, o.settings.namespace)
    preload = o.preload
    if not preload and provisioned and o.has_agents:  # a warm pool is warm for agent turns too
        preload = ",".join(AGENTSCOPE_MODULES)
    env = {
        "AGENTQUEUE_APP": o.app,
        "AGENTQUEUE_BROKER": broker,
        **o.settings.function_env(),
        **({"AGENTQUEUE_PRELOAD": preload} if preload else {}),
        **dict(o.env),
    }
    affinity = {
        "affinityHeaderFieldName": o.affinity_header,
        "disableSessionIdReuse": False,
        "sessionConcurrencyPerInstance": 1,
        "sessionIdleTimeoutInSeconds": 1800,
        "sessionTTLInSeconds": 21600,
    }
    function = {
        "functionName": name,
        "description": f"agentqueue {o.app} (code {code.marker})",
        "runtime": RUNTIME,
        "handler": HANDLER,
        "instanceLifecycleConfig": {
            "initializer": {"handler": INITIALIZER, "timeout": INITIALIZER_TIMEOUT}
        },
        "memorySize": o.memory,
        "cpu": cpu,
        "timeout": o.timeout,
        "instanceConcurrency": 1,
        "role": role.arn,
        "environmentVariables": dict(sorted(env.items())),
        "sessionAffinity": "HEADER_FIELD",
        "sessionAffinityConfig": json.dumps(affinity, sort_keys=True, separators=(",", ":")),
    }
    if needs is not None and needs.disk is not None:
        function["diskSize"] = needs.disk  # Chromium's profile and caches live on /tmp
    dead = topology.dead_letter_queue
    base = {"MaximumMessageSize": MAX_BODY_BYTES, "VisibilityTimeout": visibility}
    queues = [
        QueuePlan(dead, "dead letters", {**base, "MessageRetentionPeriod": DEAD_LETTER_RETENTION})
    ]
    triggers = []
    for family in (REQUESTS, TOOLS):
        for p, queue in enumerate(topology.queues(family)):
            queues.append(
                QueuePlan(
                    queue,
                    f"{family} partition {p}",
                    {**base, "MessageRetentionPeriod": PARTITION_RETENTION},
                )
            )
            triggers.append(
                TriggerPlan(
                    queue,
                    queue,
                    "eventbridge",
                    "LATEST",
                    _trigger_config(
                        o, name, queue, f"acs:mns:{o.region}:{shown_account}:/queues/{dead}"
                    ),
                )
            )
    notes = (
        "EventBridge must be activated in the region, with FC's EventBridge service-linked role"
        " authorized (once per account, in the FC console)",
        f"whoever runs --apply needs ram:PassRole on {role.arn}",
        f"reply queues ({o.settings.namespace}-reply-*) are created at run time by clients and"
        " workers; --destroy leaves them",
    )
    return FCPlan(
        o.region,
        account,
        name,
        function,
        code,
        tuple(queues),
        tuple(triggers),
        role,
        tuple(problems),
        notes,
        provision=(
            {"defaultTarget": provisioned, "alwaysAllocateCPU": True} if provisioned else None
        ),
    )


def _trigger_config(o: FCOptions, function: str, queue: str, dead_letter_arn: str) -> dict:
    return {
        "triggerEnable": True,
        "asyncInvocationType": False,
        "eventRuleFilterPattern": json.dumps(
            {"source": [f"MNS-{function}-{queue}"]}, separators=(",", ":")
        ),
        "eventSourceConfig": {
            "eventSourceType": "MNS",
            "eventSourceParameters": {
                "sourceMNSParameters": {
                    "QueueName": queue,
                    "RegionId": o.region,
                    "IsBase64Decode": False,
                }
            },
        },
        "runOptions": {
            "mode": "event-streaming",
            "batchWindow": {"CountBasedWindow": o.batch_size, "TimeBasedWindow": o.batch_window},
            "retryStrategy": {"PushRetryStrategy": "EXPONENTIAL_DECAY_RETRY"},
            "errorsTolerance": "ALL",
            "deadLetterQueue": {"Arn": dead_letter_arn},
        },
        "eventSinkConfig": {"deliveryOption": {"eventSchema": "CloudEvents", "concurrency": 1}},
    }


def _role(function: str, role_arn: str | None, account: str, region: str, ns: str) -> RolePlan:
    name = role_arn.rsplit("/", 1)[-1] if role_arn else f"{function}-role"
    arn = role_arn or f"acs:ram::{account}:role/{name.lower()}"
    trust = {
        "Statement": [
            {
                "Action": "sts:AssumeRole",
                "Effect": "Allow",
                "Principal": {"Service": ["fc.aliyuncs.com"]},
            }
        ],
        "Version": "1",
    }
    actions = sorted(
        f"mns:{a}"
        for a in (
            "SendMessage",
            "BatchSendMessage",
            "ReceiveMessage",
            "BatchReceiveMessage",
            "DeleteMessage",
            "BatchDeleteMessage",
            "ChangeMessageVisibility",
            "PeekMessage",
            "CreateQueue",
            "DeleteQueue",
            "GetQueueAttributes",
        )
    )
    policy = {
        "Statement": [
            {
                "Action": actions,
                "Effect": "Allow",
                "Resource": [f"acs:mns:{region}:{account}:/queues/{ns}-*"],
            }
        ],
        "Version": "1",
    }
    return RolePlan(name, arn, trust, f"{function}-mns", policy)


def _account_of(role_arn: str | None) -> str | None:
    match = re.match(r"^acs:ram::(\d+):role/", role_arn or "")
    return match.group(1) if match else None


def _provisioned(provision: dict[str, Any] | None) -> str:
    if provision is None:
        return "0 instances (each starts cold on its first event; --provisioned-instances N)"
    return (
        f"{provision['defaultTarget']} instances of LATEST, started and initialised before"
        " events (the warm pool; billed while idle)"
    )


def render_plan(plan: FCPlan) -> str:
    """The plan for people: every resource and setting, secrets masked, in a fixed order."""
    f = plan.function
    lines = [
        f"Plan: agentqueue on Function Compute 3.0, region {plan.region},"
        f" account {plan.account_id or '<account-id>'}",
        "",
    ]
    lines.append(f"MNS queues ({len(plan.queues)})")
    width = max(len(q.name) for q in plan.queues)
    for q in plan.queues:
        attrs = " ".join(f"{k}={v}" for k, v in sorted(q.attributes.items()))
        lines.append(f"  {q.name:<{width}}  {q.purpose:<20}  {attrs}")
    init = f["instanceLifecycleConfig"]["initializer"]
    code = plan.code
    built = (
        f" ({code.size} bytes, sha256 {code.digest})"
        if code.digest
        else ""
        if code.oss
        else " (not built yet)"
    )
    lines += ["", f"Function {plan.function_name}"]
    rows = [
        ("runtime", f["runtime"]),
        ("handler", f["handler"]),
        ("initializer", f"{init['handler']} (timeout {init['timeout']} s)"),
        ("memory, cpu", f"{f['memorySize']} MB, {f['cpu']} vCPU"),
        *([("disk", f"{f['diskSize']} MB")] if "diskSize" in f else []),
        ("timeout", f"{f['timeout']} s"),
        ("instance concurrency", str(f["instanceConcurrency"])),
        ("provisioned", _provisioned(plan.provision)),
        ("role", f["role"]),
        ("code", code.location + built),
        ("description", f["description"]),
        ("session affinity", f"{f['sessionAffinity']} {f['sessionAffinityConfig']}"),
        ("environment", ""),
    ]
    lines += [f"  {k:<21}{v}".rstrip() for k, v in rows]
    env = masked_env(f["environmentVariables"])
    width = max(len(k) for k in env)
    lines += [f"    {k:<{width}}  {v}" for k, v in env.items()]
    lines += [
        "",
        f"EventBridge triggers ({len(plan.triggers)}), one per partition queue,"
        " synchronous, delivery concurrency 1",
    ]
    width = max(len(t.name) for t in plan.triggers)
    for t in plan.triggers:
        lines.append(
            f"  {t.name:<{width}}  MNS queue {t.queue} -> {plan.function_name} ({t.qualifier})"
        )
    first = plan.triggers[0]
    lines.append(
        f"  trigger config of {first.name} (the others differ only in QueueName"
        " and the source in eventRuleFilterPattern):"
    )
    lines += ["    " + line for line in json.dumps(first.config, indent=2).splitlines()]
    role = plan.role
    lines += [
        "",
        f"RAM role {role.name} (create it yourself: --apply does not manage RAM)",
        f"  arn           {role.arn}",
        f"  trust policy  {json.dumps(role.trust_policy, sort_keys=True)}",
        f"  policy {role.policy_name}:",
    ]
    lines += ["    " + line for line in json.dumps(role.policy, indent=2).splitlines()]
    lines += ["", "Notes"] + [f"  - {n}" for n in plan.notes]
    if plan.problems:
        lines += ["", "Problems (fix these before --apply)"] + [f"  - {p}" for p in plan.problems]
    return "\n".join(lines) + "\n"
