"""The web console over RabbitMQ with two worker processes, looked at by a real browser
(Debian's chromium driven by Playwright), and the workers' Prometheus metrics."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.ports import free_port
from agentqueue.protocol import new_id
from agentqueue.workers.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.conftest import server_unavailable
from tests.processes import ROOT, WorkerProcess
from tests.proxies import ThreadedProxy

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts"


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last saw {last!r}")


class ConsoleProcess:
    """`agentqueue console` as a child process; its stderr is kept for failures."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.log = open(ARTIFACTS / "console.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentqueue.cli", "console", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@dataclass
class Stack:
    url: str  # the console
    broker_url: str
    topology: Topology
    workers: list[WorkerProcess]
    metrics: list[str]  # each worker's /metrics
    proxy: ThreadedProxy  # between the console and the broker
    broken: Path  # while it exists, the `fragile` agent fails
    store_url: str  # the workers' (and the console's) session store

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def call(self, text: str, *, agent: str = "assistant", session: str | None = None) -> str:
        """Send one request through a client of this process; its id (failed ones too)."""

        async def go() -> str:
            async with Client(self.broker_url, topology=self.topology, default_timeout=30) as c:
                handle = await c.submit(text, session_id=session or new_id(), agent=agent)
                async for event in handle.events():
                    if event.terminal:
                        break
                return handle.id

        return anyio.run(go)

    def batch(self, name: str, lines: int, tmp: Path) -> None:
        """Run a small batch whose progress the store keeps."""
        from agentqueue.batch.run import run_batch
        from agentqueue.workers.session_store import open_store

        source = tmp / f"{name}.jsonl"
        source.write_text(
            "".join(f'{{"id": "q{i}", "prompt": "item {i}"}}\n' for i in range(lines))
        )

        async def go() -> None:
            store = open_store(self.store_url)
            try:
                summary = await run_batch(
                    self.broker_url, source, tmp / f"{name}-out.jsonl", topology=self.topology,
                    name=name, progress=False, progress_store=store,
                )  # fmt: skip
                assert summary.complete
            finally:
                await store.close()

        anyio.run(go)


@pytest.fixture(scope="module")
def stack(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("console")
    ns = f"con{new_id()[:6]}"
    env = {
        "AGENTQUEUE_NAMESPACE": ns,
        "AGENTQUEUE_PARTITIONS": "4",
        "AGENTQUEUE_TOOL_PARTITIONS": "4",
        "AGENTQUEUE_MAX_ATTEMPTS": "1",
        "AGENTQUEUE_STORE": f"sqlite:///{tmp / 'sessions.db'}",
        "AGENTQUEUE_HEARTBEAT_INTERVAL": "0.5",
        # A replayed dead letter's caller is gone; its answer waits this long for the caller's
        # reply queue before its span ends (and the console, reading spans, shows it).
        "AGENTQUEUE_REPLY_GRACE": "0.5",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "CONSOLE_TEST_BROKEN": str(tmp / "broken"),
    }
    spans = [tmp / "worker-a.jsonl", tmp / "worker-b.jsonl"]
    metrics_ports = [free_port(), free_port()]
    proxy = ThreadedProxy(int(rabbitmq_url.rsplit(":", 1)[1].split("/")[0]))
    workers: list[WorkerProcess] = []
    console = None
    try:
        for path, port in zip(spans, metrics_ports, strict=True):
            workers.append(
                WorkerProcess(
                    "--app",
                    "tests.apps.console:app",
                    "--broker",
                    rabbitmq_url,
                    "--trace-file",
                    str(path),
                    "--metrics-port",
                    str(port),
                    env=env,
                )
            )
        for worker in workers:
            worker.wait_serving()
        port = free_port()
        console = ConsoleProcess(
            "--broker",
            proxy.url(rabbitmq_url),
            "--port",
            str(port),
            "--interval",
            "0.5",
            "--spans",
            str(spans[0]),
            "--spans",
            str(spans[1]),
            env=env,
        )
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert console.proc.poll() is None, (ARTIFACTS / "console.log").read_text()
                return False

        wait_for("the console to answer", healthy)
        yield Stack(
            url,
            rabbitmq_url,
            Topology(ns, 4, 4),
            workers,
            [f"http://127.0.0.1:{p}/metrics" for p in metrics_ports],
            proxy,
            tmp / "broken",
            env["AGENTQUEUE_STORE"],
        )
    finally:
        if console is not None:
            console.stop()
        for worker in workers:  # both shut down at once, then each is waited for
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.terminate(10)
        proxy.close()


def chromium_or_fail() -> str:
    """Debian's chromium (Playwright never downloads one); missing, skip, and fail under CI=true."""
    if shutil.which(CHROMIUM) is None:
        server_unavailable(f"{CHROMIUM} is not installed: run scripts/setup.sh (Debian's chromium)")
    return CHROMIUM


def test_the_console_shows_both_owners_a_request_waterfall_and_replays_a_dead_letter_in_a_browser(
    stack: Stack, tmp_path: Path
) -> None:
    executable = chromium_or_fail()
    from playwright.sync_api import expect, sync_playwright

    worker_pids = {str(w.pid) for w in stack.workers}
    answered = stack.call("hello console", session="s-browser")
    stack.broken.touch()
    dead = stack.call("please fail", agent="fragile", session="s-dead")
    stack.batch("eval-console", 3, tmp_path)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(stack.url + "/")

            def owners() -> set[str]:
                cells = page.locator("#partitions td.owner").all_inner_texts()
                return {m.group(1) for c in cells if (m := re.search(r"-(\d+)-", c))}

            # The live page refreshes itself: both workers come to own partitions.
            assert wait_for("both workers to own partitions", lambda: owners() == worker_pids)
            expect(page.locator(f"#dead-letters tr[data-dead='{dead}']")).to_be_visible()
            expect(page.locator(f"tr[data-dead='{dead}'] .reason")).to_have_text(
                "the fragile agent is broken while its marker file exists"
            )
            session = page.locator("#sessions tr[data-session='s-browser']")
            expect(session.locator("a.turn")).to_have_text(re.compile(r"^final \d+ ms$"))
            last_worker = session.locator("td").nth(4).inner_text()
            assert re.search(r"-(\d+)-", last_worker).group(1) in worker_pids, last_worker
            expect(page.locator("#sessions tr[data-session='s-dead'] a.turn")).to_contain_text(
                "dead_letter"
            )
            batch = page.locator("#batches tr[data-batch='eval-console']")
            expect(batch).to_contain_text("done")
            expect(batch).to_contain_text("3/3")
            page.screenshot(path=ARTIFACTS / "console.png", full_page=True)

            page.goto(f"{stack.url}/requests/{answered}")
            page.wait_for_selector(".waterfall tr.span")
            expect(page.locator("#answer .kind")).to_have_text("final")
            spans = page.locator(".waterfall tr.span").all_inner_texts()
            assert any("process con" in s and "requests-" in s for s in spans), spans
            assert any("invoke_agent assistant" in s for s in spans), spans
            page.screenshot(path=ARTIFACTS / "console-request.png", full_page=True)

            stack.broken.unlink()
            page.goto(stack.url + "/")
            page.locator(f"button[name='replay'][data-key='{dead}']").click()
            expect(page.locator("#said")).to_contain_text(f"replayed {dead} to ")
            expect(page.locator(f"tr[data-dead='{dead}']")).to_have_count(0)

            def answered_after_replay() -> bool:
                page.goto(f"{stack.url}/requests/{dead}")
                kind = page.locator("#answer .kind")
                return kind.count() == 1 and kind.inner_text() == "final"

            assert wait_for("the replayed request's answer", answered_after_replay)
        finally:
            browser.close()


def sums(text: str, metric: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of `metric` summed by the values of `labels` (over the worker label)."""
    counts: dict[tuple[str, ...], float] = {}
    pattern = re.compile(rf"^{metric}\{{(.*)\}} (\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = (metric, *(found[label] for label in labels))
        counts[key] = counts.get(key, 0) + float(m.group(2))
    return counts


def scrape(stack: Stack) -> dict[tuple[str, ...], float]:
    """Events handled by type and outcome, and token observations by type, over both workers."""
    total: dict[tuple[str, ...], float] = {}
    for url in stack.metrics:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        text = response.text
        found = {
            **sums(
                text,
                "agentqueue_events_handled_total",
                "agentqueue_event_type",
                "agentqueue_outcome",
            ),
            **sums(text, "gen_ai_client_token_usage_count", "gen_ai_token_type"),
        }
        for key, value in found.items():
            total[key] = total.get(key, 0) + value
    return total


def test_workers_metrics_count_exactly_the_requests_that_were_sent(stack: Stack) -> None:
    before = scrape(stack)
    sessions = [f"s-metrics-{i}" for i in range(5)]
    for session in sessions:
        stack.call("count me", session=session)
    stack.broken.touch()
    try:
        stack.call("fail me", agent="fragile", session="s-metrics-dead")
    finally:
        stack.broken.unlink()

    def delta() -> dict[tuple[str, ...], float]:
        after = scrape(stack)
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

    expected = {
        ("agentqueue_events_handled_total", "agent_request", "final"): 5,
        ("agentqueue_events_handled_total", "agent_request", "dead_letter"): 1,
        # One turn, one observation of each token type (the dead-lettered turn has no usage).
        ("gen_ai_client_token_usage_count", "input"): 5,
        ("gen_ai_client_token_usage_count", "output"): 5,
    }
    wait_for("the handled counters to match what was sent", lambda: delta() == expected)
    text = "".join(httpx.get(url, timeout=10).text for url in stack.metrics)
    for name in (
        "messaging_process_duration_seconds_bucket",
        "agentqueue_queue_wait_seconds_bucket",
        "agentqueue_dead_letters_total",
        "agentqueue_in_flight",
        "agentqueue_sessions_owned",
    ):
        assert name in text, f"{name} not in the workers' /metrics"
    console = stack.get("/metrics").text
    assert re.search(r"^agentqueue_workers_live\{[^}]*\} 2\.0$", console, re.M), console
    assert re.search(r"^agentqueue_broker_up\{[^}]*\} 1\.0$", console, re.M), console
    assert 'agentqueue_queue_ready{messaging_destination_name="con' in console


def test_an_unknown_request_id_is_answered_404_naming_where_the_console_looked(
    stack: Stack,
) -> None:
    response = stack.get("/requests/no-such-request")
    assert response.status_code == 404
    assert "no request no-such-request" in response.text
    assert "worker-a.jsonl" in response.text and "worker-b.jsonl" in response.text


def test_the_page_says_when_the_broker_goes_away_and_recovers_when_it_returns(
    stack: Stack,
) -> None:
    def banner() -> str:
        match = re.search(
            r"<div class='banner (\w+)' id='broker'>([^<]*)", stack.get("/fragments/overview").text
        )
        assert match is not None
        return f"{match.group(1)}: {match.group(2)}"

    assert banner().startswith("ok: broker connected")
    stack.proxy.refuse(True)
    stack.proxy.cut()
    try:
        down = str(
            wait_for("the page to say the broker is away", lambda: "down:" in banner() and banner())
        )
        where = stack.proxy.url(stack.broker_url).replace("guest:guest", "guest:***")
        # The reason is the connection's own (closed, refused, no answer in time); the rest is ours.
        assert re.fullmatch(
            rf"down: cannot reach the broker {re.escape(where)}: .+; retrying every 0\.5 s"
            r" \(figures below are from \d\d:\d\d:\d\d\)",
            down,
        ), down
        assert stack.get("/healthz").status_code == 503
    finally:
        stack.proxy.refuse(False)
    # Back, and hearing the workers' heartbeats again on a subscription made anew.
    wait_for(
        "the page to say the broker is back",
        lambda: (
            banner()
            == "ok: broker connected · namespace " + stack.topology.namespace + " · 2 live workers"
        ),
        60,
    )
    assert stack.get("/healthz").status_code == 200


def test_a_console_beyond_loopback_without_a_token_refuses_to_start() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentqueue.cli",
            "console",
            "--host",
            "0.0.0.0",
            "--broker",
            "amqp://guest:guest@127.0.0.1:1/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "AGENTQUEUE_CONSOLE_TOKEN"},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "agentqueue console: --host 0.0.0.0 is not a loopback address, and the console shows"
        " envelopes and replays dead letters: set AGENTQUEUE_CONSOLE_TOKEN (or --token, @path"
        " reads a file) to a secret of its own, or listen on 127.0.0.1"
    )


async def test_a_console_with_a_token_answers_401_without_it_and_takes_it_once_in_the_address() -> (
    None
):
    from agentqueue.broker.memory import MemoryBroker
    from agentqueue.console.app import Console
    from agentqueue.console.state import ConsoleState

    broker = MemoryBroker(f"memory://console-{new_id()[:6]}")
    console = Console(ConsoleState(broker, Topology("tok", 2, 2)), token="console-secret-1")
    transport = httpx.ASGITransport(app=console.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as http:
        refused = await http.get("/")
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "this console needs its token: send Authorization: Bearer <token>, or open"
            " the page once with ?token=<token> (AGENTQUEUE_CONSOLE_TOKEN)"
        }
        assert (await http.get("/?token=wrong")).status_code == 401
        taken = await http.get("/requests/x?token=console-secret-1")
        assert taken.status_code == 303 and taken.headers["location"] == "/requests/x"
        assert "httponly" in taken.headers["set-cookie"].lower()
        assert (
            await http.get("/", headers={"Authorization": "Bearer console-secret-1"})
        ).status_code == 200
        assert (await http.get("/healthz")).status_code == 200  # for load balancers, no token


async def test_a_partition_with_messages_and_no_consumer_is_highlighted_as_stuck() -> None:
    from agentqueue.broker.memory import MemoryBroker
    from agentqueue.console.pages import overview
    from agentqueue.console.state import ConsoleState

    topology = Topology(f"stuck{new_id()[:4]}", 2, 1)
    async with MemoryBroker(f"memory://console-{new_id()[:6]}") as broker:
        await broker.declare(topology)
        queue = topology.queue("requests", 1)
        await broker.publish(queue, b'{"waiting": true}')
        state = ConsoleState(broker, topology)
        await state.poll()
        assert [(p.queue, p.ready, p.stuck) for p in state.partitions] == [
            (topology.queue("requests", 0), 0, False),
            (queue, 1, True),
            (topology.queue("tools", 0), 0, False),
        ]
        html = overview(state)
        assert (
            f"<tr class='stuck' title='messages wait and no worker consumes them' data-queue='{queue}'>"
            in html
        )
        assert "partitions · 1 stuck" in html


def test_a_console_token_that_is_a_signing_key_is_refused() -> None:
    from agentqueue.console.app import check_binding
    from agentqueue.errors import ConsoleRefused
    from agentqueue.settings import Settings

    settings = Settings(signing_keys="k1:0123456789abcdef-secret")
    check_binding("0.0.0.0", "a-console-secret-of-its-own", settings)
    check_binding("127.0.0.1", None, settings)
    with pytest.raises(ConsoleRefused) as refused:
        check_binding("127.0.0.1", "0123456789abcdef-secret", settings)
    assert str(refused.value) == (
        "the console token is one of the signing keys (AGENTQUEUE_SIGNING_KEYS); whoever holds"
        " it could sign envelopes: give the console a secret of its own"
    )
