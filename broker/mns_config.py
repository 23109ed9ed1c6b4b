"""How an `mns://` URL and the environment configure the MNS broker; credentials never in the URL.

    mns://127.0.0.1:9911               plain HTTP (a local MNS-compatible server)
    mnss://123456.mns.cn-hangzhou.aliyuncs.com?wait=10&visibility=30

Query options: `wait` (long-poll seconds, 1-30, default 10), `visibility` (seconds a received
message stays hidden before the keep-alive must extend it, default 30), `threads` (worker threads
for sends, acks and other short calls, default 16).

Credentials come from `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and
`ALIBABA_CLOUD_SECURITY_TOKEN` (STS), or from the file named by `ALIBABA_CLOUD_CREDENTIALS_FILE`:
JSON with `AccessKeyId`/`AccessKeySecret`/`SecurityToken`, or the INI profile format of the
Alibaba Cloud CLI tools (`access_key_id`, `access_key_secret`, `security_token` under `[default]`).
"""

from __future__ import annotations

import configparser
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from agentqueue.broker.errors import BrokerError
from agentqueue.broker.urls import redact_url

MAX_WAIT_SECONDS = 30  # MNS caps a long poll at 30 s
ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"
ENV_FILE = "ALIBABA_CLOUD_CREDENTIALS_FILE"


@dataclass(frozen=True)
class Credentials:
    """An AccessKey pair, with the STS token when it is temporary. Never printed."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class MNSEndpoint:
    """Where the broker connects and how it polls."""

    url: str
    host: str  # what `mns.account.Account` takes: http(s)://host[:port]
    wait_seconds: int = 10
    visibility: int = 30
    threads: int = 16


def parse_mns_url(url: str) -> MNSEndpoint:
    """The endpoint and options of an `mns://` or `mnss://` URL; refuses embedded credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("mns", "mnss"):
        raise BrokerError(
            f"{redact_url(url)!r} is not an MNS URL; use mns://host:port or mnss://host"
        )
    if parts.username or parts.password:
        raise BrokerError(
            "MNS credentials do not go in the broker URL (it is logged and shown by"
            f" `agentqueue config`); set {ENV_ID} and {ENV_SECRET}, or {ENV_FILE}"
        )
    if not parts.hostname:
        raise BrokerError(
            f"MNS URL {redact_url(url)!r} names no host; e.g. mnss://<account>.mns.<region>.aliyuncs.com"
        )
    scheme = "https" if parts.scheme == "mnss" else "http"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"wait", "visibility", "threads"}
    if unknown:
        raise BrokerError(
            f"unknown option(s) {', '.join(sorted(unknown))} in MNS URL {redact_url(url)!r};"
            " known: wait, visibility, threads"
        )
    wait = _int_option(url, query, "wait", 10, 1, MAX_WAIT_SECONDS)
    visibility = _int_option(url, query, "visibility", 30, 3, 43200)
    threads = _int_option(url, query, "threads", 16, 1, 256)
    return MNSEndpoint(url, f"{scheme}://{parts.netloc}", wait, visibility, threads)


def _int_option(
    url: str, query: dict[str, str], name: str, default: int, low: int, high: int
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BrokerError(
            f"option {name}={raw!r} in MNS URL {redact_url(url)!r} must be a whole number"
            f" {low}-{high}"
        )
    return value


def load_credentials(environ: dict[str, str] | None = None) -> Credentials:
    """Credentials from the environment variables, else from the credentials file."""
    env = os.environ if environ is None else environ
    key_id, secret = env.get(ENV_ID), env.get(ENV_SECRET)
    if key_id and secret:
        return Credentials(key_id, secret, env.get(ENV_TOKEN, ""))
    path = env.get(ENV_FILE)
    if path:
        return _read_file(Path(path))
    raise BrokerError(
        f"no MNS credentials: set {ENV_ID} and {ENV_SECRET} (and {ENV_TOKEN} for STS),"
        f" or {ENV_FILE} to a JSON or INI credentials file"
    )


def _read_file(path: Path) -> Credentials:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BrokerError(
            f"cannot read MNS credentials file {str(path)!r} ({ENV_FILE}): {exc.strerror}"
        ) from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        key_id, secret, token = (
            data.get("AccessKeyId"),
            data.get("AccessKeySecret"),
            data.get("SecurityToken"),
        )
    else:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error:
            parser = configparser.ConfigParser()
        section = parser["default"] if parser.has_section("default") else {}
        key_id, secret, token = (
            section.get(k) for k in ("access_key_id", "access_key_secret", "security_token")
        )
    if not key_id or not secret:
        raise BrokerError(
            f"MNS credentials file {str(path)!r} has no AccessKey pair: write JSON"
            ' {"AccessKeyId": ..., "AccessKeySecret": ...} or an INI [default] section with'
            " access_key_id and access_key_secret"
        )
    return Credentials(str(key_id), str(secret), str(token or ""))
