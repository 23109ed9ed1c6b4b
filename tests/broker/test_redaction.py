"""One redaction for every URL and DSN shown: errors, logs and `agentqueue config`."""

from __future__ import annotations

import pytest

from agentqueue.broker.errors import BrokerError, UnknownBroker
from agentqueue.broker.mns_config import parse_mns_url
from agentqueue.broker.rabbitmq_nodes import split_node_urls
from agentqueue.broker.urls import open_broker, redact_url
from agentqueue.cli import main
from agentqueue.workers.redis_store import RedisSessionStore
from agentqueue.workers.session_store import open_store


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://u:pa,ss@h/", "amqp://u:***@h/"),
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),
        ("redis://:p%40ss%2C@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://u:pässwörd€@h/", "amqp://u:***@h/"),
        ("redis://:pa/ss?x#y@h/0", "redis://:***@h/0"),
        (
            "amqp://u:a,1@h1:5672/,amqp://v:b@2@h2:5673/",
            "amqp://u:***@h1:5672/,amqp://v:***@h2:5673/",
        ),
        (
            "amqps://u:a@h1/?cafile=/ca.pem, amqps://u:b@h2/",
            "amqps://u:***@h1/?cafile=/ca.pem,amqps://u:***@h2/",
        ),
        ("postgres+psycopg://admin:s3cr,t@db:5432/app", "postgres+psycopg://admin:***@db:5432/app"),
        ("u:secret@h:5672", "u:***@h:5672"),
        ("redis://h:6379/0?password=secret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("mns://h/?access_key=AK&wait=1", "mns://h/?access_key=***&wait=1"),
        ("redis://:hunter2@/0", "redis://:***@/0"),
    ],
    ids=[
        "comma",
        "at-sign",
        "percent-encoded",
        "unicode",
        "slash-question-hash",
        "cluster-list-with-odd-passwords",
        "cluster-list-with-space",
        "unknown-scheme",
        "no-scheme",
        "password-query-parameter",
        "key-query-parameter",
        "no-host",
    ],
)
def test_every_password_is_shown_as_stars(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["memory://", "sqlite:///.agentqueue/sessions.db", "amqp://guest@h/", "mns://h:9911?wait=1"],
)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert redact_url(url) == url


def test_a_comma_in_a_password_does_not_split_a_node_list() -> None:
    assert split_node_urls("amqp://u:pa,ss@h1/,amqp://u:x@h2/") == [
        "amqp://u:pa,ss@h1/",
        "amqp://u:x@h2/",
    ]


def test_a_redis_url_without_a_host_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        RedisSessionStore("redis://:hunter2@/0")
    assert str(caught.value) == (
        "redis store URL 'redis://:***@/0' names no host; use redis://host:6379/0"
    )


def test_an_unknown_store_scheme_is_refused_without_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        open_store("postgres://app:pa,ss@db/app")
    assert str(caught.value) == (
        "no session store for URL 'postgres://app:***@db/app';"
        " use memory://, sqlite:///path or redis://host:port/0"
    )


def test_an_unknown_broker_scheme_is_refused_without_the_password() -> None:
    with pytest.raises(UnknownBroker) as caught:
        open_broker("kafka://u:p@ss@k:9092", signing=None)
    assert str(caught.value) == (
        "no broker for URL scheme 'kafka' in 'kafka://u:***@k:9092';"
        " use memory://, amqp://, amqps:// or mns://"
    )


def test_an_mns_url_error_does_not_show_a_secret_query_parameter() -> None:
    with pytest.raises(BrokerError) as caught:
        parse_mns_url("mns://h/?token=tok-123&wait=x")
    assert "tok-123" not in str(caught.value)
    assert str(caught.value) == (
        "unknown option(s) token in MNS URL 'mns://h/?token=***&wait=x'; known: wait,"
        " visibility, threads"
    )


def test_config_shows_the_broker_and_store_with_passwords_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTQUEUE_SIGNING_KEYS", raising=False)
    code = main(
        [
            "config",
            "--broker",
            "amqp://u:pa,ss@h1/,amqp://u:p@ss%€@h2/",
            "--store",
            "redis://:hunter2@r:6379/0?password=hunter3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "pa,ss" not in out and "p@ss" not in out and "hunter" not in out
    shown = dict(line.split(None, 1) for line in out.splitlines() if " " in line.strip())
    assert shown["broker"] == "amqp://u:***@h1/,amqp://u:***@h2/"
    assert shown["store"] == "redis://:***@r:6379/0?password=***"
