"""`agentqueue deploy fc`: the plan, apply/destroy through the real SDKs against a local control
plane on 127.0.0.1, and the code zip's layout.

Regenerate the stored plan after an intended change with
`AGENTQUEUE_REGENERATE_FC_PLAN=1 uv run pytest tests/deploy/test_deploy_fc.py`; the test still
compares, so review the diff of `expected_fc_plan.txt`.
"""

from __future__ import annotations

import base64
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentqueue.cli import main
from tests.deploy.control_plane import FC_PREFIX, ControlPlane

EXPECTED_PLAN = Path(__file__).with_name("expected_fc_plan.txt")
REGENERATE = os.environ.get("AGENTQUEUE_REGENERATE_FC_PLAN") == "1"  # read before fixtures clear it
ACCESS_KEY_ID = "LTAI-local-test"
ACCESS_KEY_SECRET = "local-secret-never-printed"
SECURITY_TOKEN = "local-sts-token-never-printed"
API_KEY = "sk-never-printed"
BASE = [
    "deploy",
    "fc",
    "--app",
    "examples.weather:app",
    "--store",
    "redis://r-agentqueue.redis.rds.aliyuncs.com:6379/0",
    "--namespace",
    "aq",
    "--partition-count",
    "2",
    "--tool-partition-count",
    "2",
    "--region",
    "cn-hangzhou",
    "--account-id",
    "1234567890123456",
    "--function-name",
    "aq-worker",
    "--memory",
    "2048",
    "--timeout",
    "600",
    "--role-arn",
    "acs:ram::1234567890123456:role/aq-worker-role",
    "--env",
    "AGENTQUEUE_MODEL=qwen-max",
    "--env",
    "DASHSCOPE_API_KEY",
    "--code",
    "fc.zip",
]


def write_code(path: Path, text: str = "print('v1')\n") -> bytes:
    """A tiny stored (uncompressed) zip with a fixed timestamp: the same bytes on every run."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("app.py", date_time=(1980, 1, 1, 0, 0, 0)), text)
    return path.read_bytes()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a code zip, credentials in the environment, no AGENTQUEUE_*."""
    for name in list(os.environ):
        if name.startswith(("AGENTQUEUE_", "ALIBABA_CLOUD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    monkeypatch.setenv("ALIBABA_CLOUD_SECURITY_TOKEN", SECURITY_TOKEN)
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    write_code(tmp_path / "fc.zip")
    return tmp_path


@pytest.fixture
def cloud() -> Iterator[ControlPlane]:
    """The local FC + MNS control plane."""
    with ControlPlane() as plane:
        yield plane


def run(
    capsys: pytest.CaptureFixture[str], *args: str, base: list[str] = BASE
) -> tuple[int, str, str]:
    code = main([*base, *args])
    out, err = capsys.readouterr()
    return code, out, err


def apply(
    capsys: pytest.CaptureFixture[str], cloud: ControlPlane, *args: str, base: list[str] = BASE
) -> list[str]:
    code, out, err = run(
        capsys, "--apply", "--fc-endpoint", cloud.url, "--mns-endpoint", cloud.url, *args, base=base
    )
    assert code == 0, err
    return out.splitlines()


def test_plan_prints_every_resource_as_the_stored_plan(workdir: Path, capsys) -> None:
    code, out, err = run(capsys, "--plan")
    assert code == 0, err
    if REGENERATE:
        EXPECTED_PLAN.write_text(out, encoding="utf-8")
    assert out == EXPECTED_PLAN.read_text(encoding="utf-8")
    assert API_KEY not in out and ACCESS_KEY_SECRET not in out


def test_plan_json_has_one_synchronous_trigger_per_partition_queue(workdir: Path, capsys) -> None:
    code, out, _ = run(capsys, "--plan", "--json")
    assert code == 0
    plan = json.loads(out)
    assert [q["name"] for q in plan["queues"]] == [
        "aq-dead-letters",
        "aq-requests-0",
        "aq-requests-1",
        "aq-tools-0",
        "aq-tools-1",
    ]
    assert [t["queue"] for t in plan["triggers"]] == [
        "aq-requests-0",
        "aq-requests-1",
        "aq-tools-0",
        "aq-tools-1",
    ]
    for trigger in plan["triggers"]:
        config = trigger["triggerConfig"]
        assert trigger["triggerType"] == "eventbridge"
        assert config["asyncInvocationType"] is False
        assert config["eventSinkConfig"]["deliveryOption"]["concurrency"] == 1
        assert config["runOptions"]["mode"] == "event-streaming"
        source = config["eventSourceConfig"]["eventSourceParameters"]["sourceMNSParameters"]
        assert source == {
            "QueueName": trigger["queue"],
            "RegionId": "cn-hangzhou",
            "IsBase64Decode": False,
        }
        assert config["runOptions"]["deadLetterQueue"]["Arn"].endswith("/queues/aq-dead-letters")
    function = plan["function"]
    assert function["handler"] == "agentqueue.workers.fc.handler"
    assert function["environmentVariables"]["DASHSCOPE_API_KEY"] == "***"
    assert not any(k.startswith("ALIBABA_CLOUD_") for k in function["environmentVariables"])
    assert plan["problems"] == []
    assert API_KEY not in out


def test_apply_sends_the_sdk_requests_that_create_everything(workdir: Path, cloud, capsys):
    lines = apply(capsys, cloud)
    assert [line.split()[:2] for line in lines] == [["created", "queue"]] * 5 + [
        ["created", "function"]
    ] + [["created", "trigger"]] * 4 + [["unmanaged", "role"]]
    sent = cloud.take()
    creates = [r for r in sent if r.action == "CreateQueue"]
    assert [(r.method, r.path) for r in creates] == [("POST", "/")] * 5
    assert creates[1].query == {
        "QueueName": "aq-requests-0",
        "MaximumMessageSize": "65536",
        "MessageRetentionPeriod": "345600",
        "VisibilityTimeout": "30",
    }
    (create,) = [r for r in sent if r.action == "CreateFunction"]
    assert (create.method, create.path) == ("POST", FC_PREFIX)
    body = create.body
    assert base64.b64decode(body["code"]["zipFile"]) == (workdir / "fc.zip").read_bytes()
    assert (body["functionName"], body["runtime"], body["handler"]) == (
        "aq-worker",
        "python3.12",
        "agentqueue.workers.fc.handler",
    )
    assert body["instanceLifecycleConfig"]["initializer"]["handler"] == (
        "agentqueue.workers.fc.initializer"
    )
    assert (body["memorySize"], body["cpu"], body["timeout"]) == (2048, 2.0, 600)
    assert body["role"] == "acs:ram::1234567890123456:role/aq-worker-role"
    assert body["sessionAffinity"] == "HEADER_FIELD"
    assert json.loads(body["sessionAffinityConfig"])["affinityHeaderFieldName"] == (
        "agentqueue-session"
    )
    env = body["environmentVariables"]
    assert env["AGENTQUEUE_BROKER"] == "mnss://1234567890123456.mns.cn-hangzhou.aliyuncs.com"
    assert env["DASHSCOPE_API_KEY"] == API_KEY  # the function needs it; it is only never shown
    triggers = [r for r in sent if r.action == "CreateTrigger"]
    assert [r.path for r in triggers] == [f"{FC_PREFIX}/aq-worker/triggers"] * 4
    assert [r.body["triggerName"] for r in triggers] == [
        "aq-requests-0",
        "aq-requests-1",
        "aq-tools-0",
        "aq-tools-1",
    ]
    config = json.loads(triggers[2].body["triggerConfig"])
    assert (
        config["eventSourceConfig"]["eventSourceParameters"]["sourceMNSParameters"]["QueueName"]
        == "aq-tools-0"
    )
    assert triggers[2].body["triggerType"] == "eventbridge"
    assert set(cloud.state.queues) == {q.split()[2] for q in lines[:5]}
    # Signed as the SDKs sign, and the secrets never leave this process in clear.
    for request in sent:
        assert request.headers["authorization"].startswith("ACS3-HMAC-SHA256 Credential=LTAI")
        assert request.headers["x-acs-security-token"] == SECURITY_TOKEN
        assert ACCESS_KEY_SECRET.encode() not in request.raw
        assert ACCESS_KEY_SECRET not in json.dumps(request.headers)
    assert ACCESS_KEY_SECRET not in "\n".join(lines) and SECURITY_TOKEN not in "\n".join(lines)


def test_second_apply_reads_everything_and_changes_nothing(workdir: Path, cloud, capsys) -> None:
    apply(capsys, cloud)
    cloud.take()
    lines = apply(capsys, cloud)
    assert [line.split()[0] for line in lines] == ["unchanged"] * 10 + ["unmanaged"]
    sent = cloud.take()
    assert {r.action for r in sent} == {
        "GetQueueAttributes",
        "GetFunction",
        "GetProvisionConfig",
        "GetTrigger",
    }
    assert {r.method for r in sent if r.path.startswith(FC_PREFIX)} == {"GET"}


def test_apply_updates_only_what_differs(workdir: Path, cloud, capsys) -> None:
    apply(capsys, cloud)
    cloud.take()
    lines = apply(capsys, cloud, "--memory", "4096", "--batch-size", "20")
    assert "updated   function aq-worker  (cpu, memorySize)" in lines
    assert sum(line.startswith("updated   trigger") for line in lines) == 4
    assert sum(line.startswith("unchanged queue") for line in lines) == 5
    sent = cloud.take()
    (update,) = [r for r in sent if r.action == "UpdateFunction"]
    assert (update.method, update.path) == ("PUT", f"{FC_PREFIX}/aq-worker")
    assert update.body == {"cpu": 4.0, "memorySize": 4096}  # no code: it did not change
    trigger = next(r for r in sent if r.action == "UpdateTrigger")
    assert trigger.method == "PUT"
    assert trigger.path == f"{FC_PREFIX}/aq-worker/triggers/aq-requests-0"
    assert json.loads(trigger.body["triggerConfig"])["runOptions"]["batchWindow"] == {
        "CountBasedWindow": 20,
        "TimeBasedWindow": 0,
    }

    new_code = write_code(workdir / "fc.zip", "print('v2')\n")
    lines = apply(capsys, cloud, "--memory", "4096", "--batch-size", "20")
    assert "updated   function aq-worker  (description)" in lines
    (update,) = [r for r in cloud.take() if r.action == "UpdateFunction"]
    assert base64.b64decode(update.body["code"]["zipFile"]) == new_code


def test_an_environment_variable_dropped_from_the_plan_is_dropped_from_the_function(
    workdir: Path, cloud, capsys
) -> None:
    apply(capsys, cloud)
    cloud.take()
    at = BASE.index("AGENTQUEUE_MODEL=qwen-max")
    lines = apply(capsys, cloud, base=BASE[: at - 1] + BASE[at + 1 :])
    assert "updated   function aq-worker  (environmentVariables)" in lines
    (update,) = [r for r in cloud.take() if r.action == "UpdateFunction"]
    assert "AGENTQUEUE_MODEL" not in update.body["environmentVariables"]
    assert (
        cloud.state.functions["aq-worker"]["environmentVariables"]
        == (update.body["environmentVariables"])
    )


def test_code_in_oss_is_referenced_not_uploaded(workdir: Path, cloud, capsys) -> None:
    apply(capsys, cloud, "--code", "oss://my-bucket/builds/agentqueue-fc.zip")
    (create,) = [r for r in cloud.take() if r.action == "CreateFunction"]
    assert create.body["code"] == {
        "ossBucketName": "my-bucket",
        "ossObjectName": "builds/agentqueue-fc.zip",
    }


def test_apply_restores_a_queue_attribute_changed_outside(workdir: Path, cloud, capsys) -> None:
    apply(capsys, cloud)
    cloud.state.queues["aq-tools-1"]["VisibilityTimeout"] = 120
    lines = apply(capsys, cloud)
    assert "updated   queue    aq-tools-1  (VisibilityTimeout)" in lines
    assert cloud.state.queues["aq-tools-1"]["VisibilityTimeout"] == 30


def test_destroy_removes_triggers_then_function_then_queues(workdir: Path, cloud, capsys) -> None:
    apply(capsys, cloud)
    cloud.take()
    code, out, err = run(
        capsys, "--destroy", "--fc-endpoint", cloud.url, "--mns-endpoint", cloud.url
    )
    assert code == 0, err
    assert [line.split()[:2] for line in out.splitlines()] == [["removed", "trigger"]] * 4 + [
        ["removed", "function"]
    ] + [["removed", "queue"]] * 5
    deletes = [
        (r.method, r.path, r.query.get("QueueName"))
        for r in cloud.take()
        if r.method == "DELETE" or r.action == "DeleteQueue"
    ]
    assert deletes[:5] == [
        ("DELETE", f"{FC_PREFIX}/aq-worker/triggers/{t}", None)
        for t in ("aq-requests-0", "aq-requests-1", "aq-tools-0", "aq-tools-1")
    ] + [("DELETE", f"{FC_PREFIX}/aq-worker", None)]
    assert [d[2] for d in deletes[5:]] == [
        "aq-dead-letters",
        "aq-requests-0",
        "aq-requests-1",
        "aq-tools-0",
        "aq-tools-1",
    ]
    assert cloud.state.functions == {} and cloud.state.queues == {}

    code, out, _ = run(capsys, "--destroy", "--fc-endpoint", cloud.url, "--mns-endpoint", cloud.url)
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()} == {"absent"}


def test_provisioned_instances_are_the_warm_pool_put_on_latest_and_removed_when_dropped(
    workdir: Path, cloud, capsys
) -> None:
    code, out, _ = run(capsys, "--plan", "--provisioned-instances", "3")
    assert code == 0
    assert (
        "  provisioned          3 instances of LATEST, started and initialised before events"
        " (the warm pool; billed while idle)"
    ) in out.splitlines()
    # The initializer imports AgentScope, so a provisioned instance is warm for agent turns.
    assert "AGENTQUEUE_PRELOAD" in out and "agentscope.agent" in out

    lines = apply(capsys, cloud, "--provisioned-instances", "3")
    assert "created   provision aq-worker  (3 instances)" in lines
    (put,) = [r for r in cloud.take() if r.action == "PutProvisionConfig"]
    assert (put.method, put.path, put.query) == (
        "PUT",
        f"{FC_PREFIX}/aq-worker/provision-config",
        {"qualifier": "LATEST"},
    )
    assert put.body["defaultTarget"] == 3 and put.body["alwaysAllocateCPU"] is True
    assert "unchanged provision aq-worker  (3 instances)" in apply(
        capsys, cloud, "--provisioned-instances", "3"
    )
    assert "updated   provision aq-worker  (5 instances)" in apply(
        capsys, cloud, "--provisioned-instances", "5"
    )
    assert "removed   provision aq-worker" in apply(capsys, cloud)  # the default is none
    assert cloud.state.provision == {}

    apply(capsys, cloud, "--provisioned-instances", "2")
    code, out, err = run(
        capsys, "--destroy", "--fc-endpoint", cloud.url, "--mns-endpoint", cloud.url
    )
    assert code == 0, err
    assert "removed   provision aq-worker" in out  # before the function: FC refuses it otherwise
    assert cloud.state.functions == {} and cloud.state.provision == {}


def test_a_provisioned_count_beyond_fc_s_limit_is_refused_naming_it(workdir: Path, capsys) -> None:
    code, _, err = run(capsys, "--plan", "--provisioned-instances", "10001")
    assert code != 0
    assert (
        "provisioned instances 10001 must be 0 (none) to 10000 (PutProvisionConfig's limit)" in err
    )


def test_apply_refuses_a_plan_with_problems_before_calling_anything(workdir, cloud, capsys):
    code = main(
        [
            *BASE,
            "--store",
            "sqlite:///sessions.db",
            "--apply",
            "--fc-endpoint",
            cloud.url,
            "--mns-endpoint",
            cloud.url,
        ]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "not shared by FC instances" in err and "redis://" in err
    assert cloud.take() == []


def test_credentials_in_the_function_environment_are_refused(workdir: Path, capsys) -> None:
    code, _, err = run(capsys, "--plan", "--env", "ALIBABA_CLOUD_ACCESS_KEY_SECRET=x")
    assert code == 1
    assert "from its role" in err


def test_package_without_deps_holds_the_handler_and_the_app(workdir: Path, capsys) -> None:
    code, out, err = run(capsys, "--package", "--no-deps", "-o", "dist/a.zip")
    assert code == 0, err
    assert "wrote dist/a.zip" in out
    names = zipfile.ZipFile(workdir / "dist/a.zip").namelist()
    for name in (
        "agentqueue/__init__.py",
        "agentqueue/workers/fc.py",
        "agentqueue/workers/fc_config.py",
        "agentqueue/broker/mns.py",
        "agentqueue/protocol/codec.py",
        "agentqueue/deploy/__init__.py",
        "examples/__init__.py",
        "examples/weather.py",
    ):
        assert name in names
    assert names == sorted(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # Deterministic: the same inputs give the same bytes, so --apply sees no code change.
    assert main([*BASE, "--package", "--no-deps", "-o", "dist/b.zip"]) == 0
    assert (workdir / "dist/a.zip").read_bytes() == (workdir / "dist/b.zip").read_bytes()


def test_the_plan_sizes_the_function_for_the_apps_browser_and_gui_sandboxes(
    workdir: Path, cloud, capsys
) -> None:
    app = ["--app", "tests.apps.browser_app:app"]
    code, out, _ = run(capsys, "--plan", *app)
    assert code == 0
    assert "  memory, cpu          2048 MB, 2.0 vCPU\n  disk                 10240 MB\n" in out
    assert (
        "memory 2048 MB is too little for the app's browser, base, gui sandboxes (each"
        " session's and the warm pool's): pass --memory 3584"
    ) in out
    code, out, _ = run(capsys, "--plan", "--json", *app, "--memory", "3584", "--cpu", "2")
    function = json.loads(out)["function"]
    assert (function["memorySize"], function["diskSize"]) == (3584, 10240)
    assert json.loads(out)["problems"] == []
    apply(capsys, cloud, *app, "--memory", "3584", "--cpu", "2")
    (create,) = [r for r in cloud.take() if r.action == "CreateFunction"]
    assert (create.body["memorySize"], create.body["diskSize"]) == (3584, 10240)
