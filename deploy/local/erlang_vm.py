"""The Erlang VM flags a local RabbitMQ node boots with: rabbitmq-server's, tuned for tests."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from agentqueue.deploy.local.erlang_apps import link_apps, needed_apps

_PRELOAD = (
    'spawn(fun() -> code:ensure_modules_loaded([list_to_atom(filename:basename(F, ".beam"))'
    ' || F <- filelib:wildcard(os:getenv("RABBITMQ_PLUGINS_DIR") ++ "/*/ebin/*.beam")]) end).'
)


def node_command(
    script: Path, plugins: Sequence[str], data_dir: Path
) -> tuple[list[str], dict[str, str]]:
    """Return the argv that boots a node with these plugins and the env it adds."""
    plugins_dir = script.resolve().parent.parent / "plugins"
    apps = needed_apps(plugins_dir, ["rabbit", *plugins]) if plugins_dir.is_dir() else None
    erl = shutil.which("erl") or "/usr/lib/erlang/bin/erl"
    if apps is None or not Path(erl).exists():
        # Unknown layout: let RabbitMQ's own script start it, slower but sure.
        extra = "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
        return [str(script)], {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": extra}
    # What the rabbitmq-server script runs, minus two things. Its code path holds all
    # ~70 bundled plugins, and searching them for each of ~900 modules at boot more
    # than doubles the start-up time, so the node gets a plugins dir of links to the
    # apps it needs. And +stbt db binds schedulers to cores, which hurts when several
    # nodes share two cores.
    link_dir = data_dir / "plugins"
    link_apps(apps, link_dir)
    env = {"ERL_LIBS": str(link_dir), "RABBITMQ_PLUGINS_DIR": str(link_dir)}
    argv = [
        erl,
        # Loading ~750 modules one by one is most of the boot; a helper process that
        # loads them in parallel up front takes about a fifth off on two cores.
        "-eval", _PRELOAD,
        "-noinput",
        "-s", "rabbit", "boot",
        "-boot", "start_sasl",
        "+W", "w",
        "+MBas", "ageffcbf", "+MHas", "ageffcbf",
        "+MBlmbcs", "512", "+MHlmbcs", "512", "+MMmcs", "30",
        "+P", "1048576", "+t", "5000000",
        "+zdbbl", "128000",
        # Busy-waiting schedulers would burn the few cores the tests have.
        "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none",
        "+B", "i",
        "-syslog", "logger", "[]",
        "-syslog", "syslog_error_logger", "false",
        "-kernel", "prevent_overlapping_partitions", "false",
        "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
        "-start_epmd", "false",
    ]  # fmt: skip
    return argv, env
