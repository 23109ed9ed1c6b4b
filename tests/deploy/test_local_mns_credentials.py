"""`agentqueue local mns` takes its credentials from flags or the environment, not from code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import QueueMeta

from agentqueue.deploy.local.mns import (
    DEFAULT_ACCESS_ID,
    DEFAULT_ACCESS_KEY,
    server_credentials,
)

ROOT = Path(__file__).resolve().parents[2]
NO_ENV: dict[str, str] = {}


def test_without_flags_or_environment_the_documented_test_pair_is_used_on_loopback() -> None:
    credentials = server_credentials("127.0.0.1", environ=NO_ENV)
    assert (credentials.access_id, credentials.access_key) == ("local-mns", "local-mns-secret")
    assert credentials.describe() == (
        "credentials: ALIBABA_CLOUD_ACCESS_KEY_ID=local-mns"
        " ALIBABA_CLOUD_ACCESS_KEY_SECRET=local-mns-secret (the documented test defaults)"
    )


def test_the_environment_gives_the_pair_and_its_secret_is_never_printed() -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "ak-env", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "sk-env-9"}
    credentials = server_credentials("127.0.0.1", environ=env)
    assert (credentials.access_id, credentials.access_key) == ("ak-env", "sk-env-9")
    assert credentials.describe() == (
        "credentials: AccessKeyId ak-env, secret from ALIBABA_CLOUD_ACCESS_KEY_SECRET (not shown)"
    )
    assert "sk-env-9" not in repr(credentials)


def test_flags_win_over_the_environment() -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "ak-env", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "sk-env"}
    credentials = server_credentials("127.0.0.1", "ak-flag", "sk-flag", environ=env)
    assert (credentials.access_id, credentials.access_key) == ("ak-flag", "sk-flag")


def test_half_a_pair_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(ValueError) as flags:
        server_credentials("127.0.0.1", "ak-only", None, environ=NO_ENV)
    with pytest.raises(ValueError) as env:
        server_credentials("127.0.0.1", environ={"ALIBABA_CLOUD_ACCESS_KEY_ID": "ak"})
    assert str(flags.value) == (
        "give both --access-key-id and --access-key-secret, or neither (then"
        " ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET are used)"
    )
    assert str(env.value) == (
        "set both ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or neither"
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_the_public_test_pair_is_refused_off_loopback(host: str) -> None:
    with pytest.raises(ValueError) as caught:
        server_credentials(host, environ=NO_ENV)
    assert str(caught.value) == (
        f"local MNS on {host} with the documented test credentials: anyone who can reach it"
        " could use them; pass --access-key-id and --access-key-secret (or set"
        " ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET), or listen on 127.0.0.1"
    )
    assert server_credentials(host, "ak", "sk-chosen", environ=NO_ENV).access_id == "ak"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_mns_command(
    tmp_path: Path, *flags: str, env: dict[str, str]
) -> Iterator[tuple[str, list[str]]]:
    """`agentqueue local mns` as a child process; yields its endpoint and its stderr lines."""
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentqueue.cli",
            "local",
            "mns",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "mns.db"),
            *flags,
        ],
        cwd=ROOT,
        env={**clean, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not _accepts(port):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", lines
    finally:
        proc.terminate()
        proc.wait(30)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _create_queue(endpoint: str, access_id: str, access_key: str) -> None:
    Account(endpoint, access_id, access_key).get_queue("creds-check").create(QueueMeta())


def test_the_server_accepts_the_pair_from_its_flags_and_refuses_the_default(tmp_path: Path) -> None:
    flags = ("--access-key-id", "ak-flag", "--access-key-secret", "sk-flag-3e1")
    with local_mns_command(tmp_path, *flags, env={}) as (endpoint, lines):
        _create_queue(endpoint, "ak-flag", "sk-flag-3e1")
        with pytest.raises(MNSServerException) as refused:
            _create_queue(endpoint, DEFAULT_ACCESS_ID, DEFAULT_ACCESS_KEY)
    assert refused.value.type in ("InvalidAccessKeyId", "SignatureDoesNotMatch")
    output = "".join(lines)
    assert "credentials: AccessKeyId ak-flag, secret from --access-key-secret (not shown)" in output
    assert "sk-flag-3e1" not in output


def test_the_server_takes_the_pair_from_the_environment(tmp_path: Path) -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "ak-env", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "sk-env-7"}
    with local_mns_command(tmp_path, env=env) as (endpoint, lines):
        _create_queue(endpoint, "ak-env", "sk-env-7")
        with pytest.raises(MNSServerException):
            _create_queue(endpoint, DEFAULT_ACCESS_ID, DEFAULT_ACCESS_KEY)
    assert "sk-env-7" not in "".join(lines)
