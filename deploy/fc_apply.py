"""`agentqueue deploy fc --apply | --destroy`: make Alibaba Cloud match an `FCPlan`, or remove it.

Apply reads each resource first, creates what is missing, updates what differs and leaves what
matches alone, so a second run changes nothing. Only the fields the plan sets are compared
(the services add defaults of their own), except the function's environment, which must match
exactly so a variable dropped from the plan is dropped from the function. The function's code
is sent when it is created and when its digest (kept in the description) changes.

- MNS queues through `alibabacloud-mns-open20220119` (CreateQueue, GetQueueAttributes,
  SetQueueAttributes, DeleteQueue): RPC-style POSTs to `mns-open.<region>.aliyuncs.com`.
- The function, its triggers and its provisioned instances through `alibabacloud-fc20230330`
  (GetFunction, CreateFunction, UpdateFunction, GetTrigger, CreateTrigger, UpdateTrigger,
  DeleteTrigger, DeleteFunction, GetProvisionConfig, PutProvisionConfig, DeleteProvisionConfig):
  REST under `/2023-03-30/functions` on the SDK's regional endpoint (`fcv3.<region>.aliyuncs.com`).
  A plan without provisioned instances removes a provision config left from an earlier one.

Both SDKs sign with ACS3-HMAC-SHA256. Credentials come from `ALIBABA_CLOUD_ACCESS_KEY_ID`,
`ALIBABA_CLOUD_ACCESS_KEY_SECRET` and `ALIBABA_CLOUD_SECURITY_TOKEN` (or the credentials file of
`broker.mns_config`) and are never printed. The SDK calls block: run this off any event loop.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alibabacloud_fc20230330 import models as fc
from alibabacloud_fc20230330.client import Client as FCClient
from alibabacloud_mns_open20220119 import models as mns
from alibabacloud_mns_open20220119.client import Client as MNSClient
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_openapi.utils_models import Config

from agentqueue.broker.errors import BrokerError
from agentqueue.broker.mns_config import Credentials, load_credentials
from agentqueue.deploy.fc_plan import DeployError, FCPlan, QueuePlan, TriggerPlan

_EXACT = frozenset({"environmentVariables"})  # compared whole, not field by field
PROVISION_QUALIFIER = "LATEST"  # what the triggers invoke


@dataclass(frozen=True)
class Change:
    """What happened to one resource: created, updated, unchanged, removed, absent, unmanaged."""

    action: str
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<9} {self.kind:<8} {self.name}" + (
            f"  ({self.detail})" if self.detail else ""
        )


Report = Callable[[Change], None]


class FCDeployer:
    """The two SDK clients of one region, and the plan operations on them."""

    def __init__(
        self,
        region: str,
        *,
        fc_endpoint: str | None = None,
        mns_endpoint: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        try:
            creds = credentials or load_credentials()
        except BrokerError as exc:
            raise DeployError(
                str(exc).replace("no MNS credentials", "no Alibaba Cloud credentials")
            ) from None
        self.fc = FCClient(_config(region, fc_endpoint, creds))
        self.mns = MNSClient(_config(region, mns_endpoint, creds))
        self.fc_endpoint = fc_endpoint or self.fc._endpoint
        self.mns_endpoint = mns_endpoint or self.mns._endpoint

    def apply(self, plan: FCPlan, report: Report = print) -> list[Change]:
        """Create what is missing, update what differs; one `Change` per resource."""
        plan.check_ready()
        changes: list[Change] = []

        def record(change: Change) -> None:
            changes.append(change)
            report(change)

        for queue in plan.queues:
            record(self._apply_queue(queue))
        record(self._apply_function(plan))
        provision = self._apply_provision(plan)
        if provision is not None:
            record(provision)
        for trigger in plan.triggers:
            record(self._apply_trigger(plan.function_name, trigger))
        record(
            Change(
                "unmanaged",
                "role",
                plan.role.arn,
                "RAM is not managed here: create it from the --plan documents",
            )
        )
        return changes

    def destroy(self, plan: FCPlan, report: Report = print) -> list[Change]:
        """Remove the triggers, then the function, then the queues; absent ones are reported."""
        changes: list[Change] = []

        def record(change: Change) -> None:
            changes.append(change)
            report(change)

        for trigger in plan.triggers:
            record(self._delete_trigger(plan.function_name, trigger.name))
        if self._provision(plan.function_name) is not None:
            record(self._delete_provision(plan.function_name))
        record(self._delete_function(plan.function_name))
        for queue in plan.queues:
            record(self._delete_queue(queue.name))
        return changes

    # MNS queues

    def _queue(self, name: str) -> dict[str, Any] | None:
        try:
            reply = self.mns.get_queue_attributes(mns.GetQueueAttributesRequest(queue_name=name))
        except AlibabaCloudException as exc:
            if _not_found(exc):
                return None
            raise self._failed("GetQueueAttributes", name, exc) from None
        except Exception as exc:
            raise self._unreachable(self.mns_endpoint, exc) from None
        body = reply.body
        if body.success is False:
            if str(body.code) in ("404", "QueueNotExist"):
                return None
            raise DeployError(f"GetQueueAttributes {name} failed: {body.code} {body.message}")
        return body.data.to_map() if body.data else {}

    def _apply_queue(self, queue: QueuePlan) -> Change:
        current = self._queue(queue.name)
        request = {"QueueName": queue.name, **queue.attributes}
        if current is None:
            self._call(
                self.mns,
                "CreateQueue",
                queue.name,
                lambda: self.mns.create_queue(mns.CreateQueueRequest().from_map(request)),
            )
            return Change("created", "queue", queue.name)
        changed = sorted(k for k, v in queue.attributes.items() if _differs(v, current.get(k)))
        if not changed:
            return Change("unchanged", "queue", queue.name)
        self._call(
            self.mns,
            "SetQueueAttributes",
            queue.name,
            lambda: self.mns.set_queue_attributes(
                mns.SetQueueAttributesRequest().from_map(request)
            ),
        )
        return Change("updated", "queue", queue.name, ", ".join(changed))

    def _delete_queue(self, name: str) -> Change:
        if self._queue(name) is None:
            return Change("absent", "queue", name)
        self._call(
            self.mns,
            "DeleteQueue",
            name,
            lambda: self.mns.delete_queue(mns.DeleteQueueRequest(queue_name=name)),
        )
        return Change("removed", "queue", name)

    # The function

    def _apply_function(self, plan: FCPlan) -> Change:
        name = plan.function_name
        current = self._get(lambda: self.fc.get_function(name, fc.GetFunctionRequest()), name)
        if current is None:
            spec = {**plan.function, "code": _code(plan)}
            self._call(
                self.fc,
                "CreateFunction",
                name,
                lambda: self.fc.create_function(
                    fc.CreateFunctionRequest(body=fc.CreateFunctionInput().from_map(spec))
                ),
            )
            return Change("created", "function", name)
        changed = sorted(
            k
            for k, v in plan.function.items()
            if k != "functionName" and _field_differs(k, v, current.get(k))
        )
        if not changed:
            return Change("unchanged", "function", name)
        update = {k: plan.function[k] for k in changed}
        if "description" in changed:  # it carries the code's digest
            update["code"] = _code(plan)
        self._call(
            self.fc,
            "UpdateFunction",
            name,
            lambda: self.fc.update_function(
                name, fc.UpdateFunctionRequest(body=fc.UpdateFunctionInput().from_map(update))
            ),
        )
        return Change("updated", "function", name, ", ".join(changed))

    def _delete_function(self, name: str) -> Change:
        if self._gone(lambda: self.fc.delete_function(name), "DeleteFunction", name):
            return Change("absent", "function", name)
        return Change("removed", "function", name)

    # Provisioned instances (the warm pool), on LATEST as the triggers invoke it

    def _provision(self, function: str) -> dict[str, Any] | None:
        """The function's provision config; None when it has none (or a target of 0)."""
        current = self._get(
            lambda: self.fc.get_provision_config(
                function, fc.GetProvisionConfigRequest(qualifier=PROVISION_QUALIFIER)
            ),
            f"{function} provision config",
        )
        if not current or not (current.get("defaultTarget") or current.get("target")):
            return None
        return current

    def _apply_provision(self, plan: FCPlan) -> Change | None:
        name, desired = plan.function_name, plan.provision
        current = self._provision(name)
        if desired is None:
            return None if current is None else self._delete_provision(name)
        if current is not None and not _differs(desired, current):
            return Change("unchanged", "provision", name, f"{desired['defaultTarget']} instances")
        body = fc.PutProvisionConfigInput().from_map(desired)
        self._call(
            self.fc,
            "PutProvisionConfig",
            name,
            lambda: self.fc.put_provision_config(
                name, fc.PutProvisionConfigRequest(body=body, qualifier=PROVISION_QUALIFIER)
            ),
        )
        action = "created" if current is None else "updated"
        return Change(action, "provision", name, f"{desired['defaultTarget']} instances")

    def _delete_provision(self, function: str) -> Change:
        request = fc.DeleteProvisionConfigRequest(qualifier=PROVISION_QUALIFIER)
        if self._gone(
            lambda: self.fc.delete_provision_config(function, request),
            "DeleteProvisionConfig",
            function,
        ):
            return Change("absent", "provision", function)
        return Change("removed", "provision", function)

    # Triggers

    def _apply_trigger(self, function: str, trigger: TriggerPlan) -> Change:
        name = trigger.name
        current = self._get(lambda: self.fc.get_trigger(function, name), name)
        config = json.dumps(trigger.config, separators=(",", ":"))
        if current is None:
            body = fc.CreateTriggerInput(
                trigger_name=name,
                trigger_type=trigger.trigger_type,
                qualifier=trigger.qualifier,
                trigger_config=config,
            )
            self._call(
                self.fc,
                "CreateTrigger",
                name,
                lambda: self.fc.create_trigger(function, fc.CreateTriggerRequest(body=body)),
            )
            return Change("created", "trigger", name)
        if current.get("triggerType") != trigger.trigger_type:
            raise DeployError(
                f"trigger {name} of function {function} exists with type"
                f" {current.get('triggerType')!r}, not {trigger.trigger_type!r}: delete it"
                " (FC cannot change a trigger's type), then apply again"
            )
        changed = sorted(
            k
            for k, desired, now in (
                ("triggerConfig", trigger.config, _json(current.get("triggerConfig"))),
                ("qualifier", trigger.qualifier, current.get("qualifier")),
            )
            if _differs(desired, now)
        )
        if not changed:
            return Change("unchanged", "trigger", name)
        body = fc.UpdateTriggerInput(trigger_config=config, qualifier=trigger.qualifier)
        self._call(
            self.fc,
            "UpdateTrigger",
            name,
            lambda: self.fc.update_trigger(function, name, fc.UpdateTriggerRequest(body=body)),
        )
        return Change("updated", "trigger", name, ", ".join(changed))

    def _delete_trigger(self, function: str, name: str) -> Change:
        if self._gone(lambda: self.fc.delete_trigger(function, name), "DeleteTrigger", name):
            return Change("absent", "trigger", name)
        return Change("removed", "trigger", name)

    # Calls and their errors

    def _get(self, call: Callable[[], Any], name: str) -> dict[str, Any] | None:
        try:
            return call().body.to_map()
        except AlibabaCloudException as exc:
            if _not_found(exc):
                return None
            raise self._failed("read", name, exc) from None
        except Exception as exc:
            raise self._unreachable(self.fc_endpoint, exc) from None

    def _gone(self, call: Callable[[], Any], action: str, name: str) -> bool:
        """Run a delete; True when there was nothing to delete."""
        try:
            call()
        except AlibabaCloudException as exc:
            if _not_found(exc):
                return True
            raise self._failed(action, name, exc) from None
        except Exception as exc:
            raise self._unreachable(self.fc_endpoint, exc) from None
        return False

    def _call(self, client: Any, action: str, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except AlibabaCloudException as exc:
            raise self._failed(action, name, exc) from None
        except Exception as exc:
            endpoint = self.fc_endpoint if client is self.fc else self.mns_endpoint
            raise self._unreachable(endpoint, exc) from None

    @staticmethod
    def _failed(action: str, name: str, exc: AlibabaCloudException) -> DeployError:
        hint = ""
        if exc.code == "QueueDeletedRecently":
            hint = ": MNS refuses to re-create a queue shortly after deleting it; retry later"
        elif exc.status_code == 403:
            hint = ": the AccessKey lacks permission (see the RAM notes of --plan)"
        return DeployError(
            f"{action} {name} failed with {exc.status_code} {exc.code}: {exc.message}{hint}"
        )

    @staticmethod
    def _unreachable(endpoint: str, exc: Exception) -> DeployError:
        return DeployError(
            f"calling {endpoint} failed: {exc}; check the region, the endpoint"
            " (--fc-endpoint / --mns-endpoint) and the network"
        )


def _config(region: str, endpoint: str | None, creds: Credentials) -> Config:
    protocol = "https"
    if endpoint and "://" in endpoint:
        parts = urlsplit(endpoint)
        protocol, endpoint = parts.scheme, parts.netloc
    return Config(
        access_key_id=creds.access_key_id,
        access_key_secret=creds.access_key_secret,
        security_token=creds.security_token or None,
        region_id=region,
        endpoint=endpoint,
        protocol=protocol,
    )


def _code(plan: FCPlan) -> dict[str, str]:
    """InputCodeLocation as on the wire: the zip inline (base64), or the OSS object."""
    oss = plan.code.oss
    if oss is not None:
        return {"ossBucketName": oss[0], "ossObjectName": oss[1]}
    return {"zipFile": base64.b64encode(Path(plan.code.location).read_bytes()).decode()}


def _not_found(exc: AlibabaCloudException) -> bool:
    return exc.status_code == 404 or str(exc.code).endswith(("NotFound", "NotExist"))


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _field_differs(key: str, desired: Any, current: Any) -> bool:
    if key in _EXACT:
        return (desired or {}) != (current or {})
    if key == "sessionAffinityConfig":
        return _differs(_json(desired), _json(current))
    return _differs(desired, current)


def _differs(desired: Any, current: Any) -> bool:
    """True when `current` lacks or disagrees with a value `desired` sets (extras are fine)."""
    if isinstance(desired, dict):
        return not isinstance(current, dict) or any(
            _differs(v, current.get(k)) for k, v in desired.items()
        )
    if isinstance(desired, bool) or isinstance(current, bool):
        return desired is not current
    if isinstance(desired, int | float) and isinstance(current, int | float):
        return abs(desired - current) > 1e-9
    return desired != current
