"""`agentqueue deploy fc`: plan, apply, destroy or package an app on Function Compute."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from agentqueue.cli.options import app_option
from agentqueue.cli.running import load_app
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `deploy fc`."""
    p = commands.add_parser("deploy", help="provision the cloud for an app's workers")
    targets = p.add_subparsers(dest="deploy_target", required=True, metavar="TARGET")
    d = targets.add_parser("fc", help="Alibaba Cloud Function Compute 3.0 behind MNS queues")
    action = d.add_mutually_exclusive_group(required=True)
    for flag, what in (
        ("plan", "print every resource it would create (--json for machines)"),
        ("apply", "create what is missing, update what differs"),
        ("destroy", "remove the triggers, the function and the queues"),
        ("package", "build the code zip FC runs"),
    ):
        action.add_argument(f"--{flag}", dest="action", action="store_const", const=flag, help=what)
    app_option(d)
    for flag, dest, kind in (
        ("--broker", "broker", str),
        ("--store", "store", str),
        ("--namespace", "namespace", str),
        ("--partition-count", "partition_count", int),
        ("--tool-partition-count", "tool_partition_count", int),
    ):
        d.add_argument(
            flag, dest=dest, type=kind, help=f"as for `worker` ({dest}; default: as for `worker`)"
        )
    d.add_argument(
        "--region",
        default=os.environ.get("ALIBABA_CLOUD_REGION_ID", "cn-hangzhou"),
        help="region id (ALIBABA_CLOUD_REGION_ID)",
    )
    d.add_argument(
        "--account-id",
        dest="account_id",
        help="Alibaba Cloud account (uid; default: from the credentials)",
    )
    d.add_argument("--function-name", dest="function_name", help="default <namespace>-worker")
    d.add_argument("--memory", type=int, default=1024, help="MB (default 1024)")
    d.add_argument("--cpu", type=float, help="vCPU (default 1 per GB of memory)")
    d.add_argument(
        "--timeout",
        dest="function_timeout",
        type=int,
        default=900,
        help="seconds one invocation (a batch) may run (default 900)",
    )
    d.add_argument(
        "--role-arn", dest="role_arn", help="RAM role the function runs as (default: none)"
    )
    d.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="extra function environment; NAME alone copies it from here (default: none)",
    )
    d.add_argument("--preload", default="", help="modules the initializer imports (default: none)")
    d.add_argument(
        "--provisioned-instances",
        dest="provisioned_instances",
        type=int,
        help="instances kept started and initialised, the warm pool (default: 0, none)",
    )
    d.add_argument(
        "--batch-size", dest="batch_size", type=int, default=10, help="messages per invocation"
    )
    d.add_argument("--batch-window", dest="batch_window", type=int, default=0, help="seconds")
    d.add_argument("--code", default="dist/agentqueue-fc.zip", help="zip or oss://bucket/object")
    d.add_argument("-o", "--output", default="dist/agentqueue-fc.zip", help="--package's zip")
    d.add_argument(
        "--no-deps",
        dest="no_deps",
        action="store_true",
        help="--package without dependencies (layout checks, offline)",
    )
    d.add_argument("--json", action="store_true", help="--plan as JSON")
    d.add_argument(
        "--fc-endpoint",
        dest="fc_endpoint",
        help="e.g. http://127.0.0.1:9000 (default: the region's endpoint)",
    )
    d.add_argument(
        "--mns-endpoint",
        dest="mns_endpoint",
        help="MNS control plane (open API; default: the region's endpoint)",
    )
    d.set_defaults(run=fc)


def fc(args: argparse.Namespace, settings: Settings) -> int:
    """Do the chosen action for FC."""
    from agentqueue.deploy.fc_plan import FCOptions, build_plan, render_plan, sandbox_needs

    needs, has_agents = None, True
    if args.action != "destroy":
        app = load_app(args.app)  # fail here when the app does not import
        needs, has_agents = sandbox_needs(app), bool(app.agents)
    if args.action == "package":
        from agentqueue.deploy.fc_package import build_package

        print(build_package(args.app, args.output, with_deps=not args.no_deps).listing())
        return 0
    env = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq and name not in os.environ:
            raise ValueError(f"--env {name}: give NAME=VALUE, or set {name} here to copy it")
        env[name] = value if eq else os.environ[name]
    plan = build_plan(
        FCOptions(
            app=args.app,
            settings=settings,
            region=args.region,
            account_id=args.account_id,
            function_name=args.function_name,
            broker=settings.broker,
            memory=args.memory,
            cpu=args.cpu,
            timeout=args.function_timeout,
            role_arn=args.role_arn,
            env=env,
            code=args.code,
            batch_size=args.batch_size,
            batch_window=args.batch_window,
            preload=args.preload,
            sandboxes=needs,
            has_agents=has_agents,
        )
    )
    if args.action == "plan":
        text = json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"
        print(text if args.json else render_plan(plan), end="")
        return 0
    from agentqueue.deploy.fc_apply import FCDeployer

    if args.action == "apply":
        plan.check_ready()  # before asking for credentials
    deployer = FCDeployer(args.region, fc_endpoint=args.fc_endpoint, mns_endpoint=args.mns_endpoint)
    (deployer.apply if args.action == "apply" else deployer.destroy)(plan)
    return 0
