"""Browser sandboxes in the real Chromium under bubblewrap, driven by ToolCall events."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentqueue import App
from agentqueue.client import Client
from agentqueue.workers.sandbox_tools import Sandboxes
from tests.conftest import server_unavailable
from tests.workers.test_sandbox import harness

FORM = (
    "<html><head><title>Sign in</title></head><body><h1>Guest book</h1>"
    "<form method='post' action='/submit'><input name='name' placeholder='Your name'>"
    "<button type='submit'>Sign</button></form></body></html>"
)
HOG = "<script>const a=[];for(;;){a.push(new Float64Array(8e6).fill(1))}</script>"
NOISE = (  # random pixels: a PNG of them does not compress below the inline limit
    "<html><body style='margin:0'><canvas id='c' width='600' height='400'></canvas><script>"
    "const c=document.getElementById('c').getContext('2d');const d=c.createImageData(600,400);"
    "for(let i=0;i<d.data.length;i++)d.data[i]=Math.random()*256;c.putImageData(d,0,0);"
    "</script></body></html>"
)


@pytest.fixture(autouse=True)
def chromium() -> None:
    """Browser tests need bwrap and Debian's chromium (scripts/setup.sh); CI fails without."""
    if shutil.which("bwrap") is None or not os.access("/usr/bin/chromium", os.X_OK):
        server_unavailable("bwrap or chromium is not installed: run scripts/setup.sh")


class Pages(http.server.BaseHTTPRequestHandler):
    """The test's site: a form, the page it posts to (which sets a cookie), and a cookie echo."""

    def do_GET(self) -> None:
        if self.path == "/whoami":
            cookie = self.headers.get("Cookie") or "no cookie"
            self._send(f"<html><body><p>cookie: {cookie}</p></body></html>")
        elif self.path == "/noise":
            self._send(NOISE)
        else:
            self._send(FORM)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        name = urllib.parse.parse_qs(body)["name"][0]
        self._send(f"<html><body><p>Thanks, {name}!</p></body></html>", f"visitor={name}")

    def _send(self, html: str, cookie: str | None = None) -> None:
        data = html.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def serve() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """host:port of the test's page server (on the host's loopback)."""
    yield from serve()


@pytest.fixture(scope="module")
def other_site() -> Iterator[str]:
    """host:port of a second server, never on any allow list."""
    yield from serve()


async def close_all(boxes: Sandboxes) -> None:
    for worker in {*boxes.managers, *boxes.browsers}:
        await boxes.close_worker(worker)


@pytest.mark.broker
async def test_over_rabbitmq_a_session_signs_a_form_keeps_page_and_cookie_and_another_starts_fresh(
    tmp_path: Path, rabbitmq_url: str, site: str
) -> None:
    app = App("web")
    boxes = app.sandbox_tools("browser", root=str(tmp_path), pool_size=1, network=[site])
    try:
        async with harness(app, "w1", broker_url=rabbitmq_url) as (h, workers):
            opened = await h.call("s-ann", "browser_navigate", url=f"http://{site}/")
            assert opened.ok, opened.output
            assert boxes.browsers["w1"].sessions["s-ann"].from_pool  # the warm pool served it
            snapshot = await h.call("s-ann", "browser_snapshot")
            assert snapshot.output == (
                f"Page URL: http://{site}/\nPage title: Sign in\nPage snapshot:\n"
                '- heading "Guest book" [level=1] [ref=e1]\n'
                "- form [ref=e2]\n"
                '  - textbox "Your name" [ref=e3]\n'
                '  - button "Sign" [ref=e4]'
            )
            typed = await h.call("s-ann", "browser_type", element="name", ref="e3", text="Ann")
            assert '- textbox "Your name" [ref=e3]: "Ann"' in typed.output
            clicked = await h.call("s-ann", "browser_click", element="Sign button", ref="e4")
            assert clicked.output.endswith(
                f"Page URL: http://{site}/submit\nPage title: \nPage snapshot:\n"
                '- paragraph "Thanks, Ann!" [ref=e1]'
            )
            stale = await h.call("s-ann", "browser_click", element="Sign button", ref="e4")
            assert (stale.ok, stale.output) == (
                False,
                "tool browser_click failed: SandboxError: element ref 'e4' is not on the page (it"
                " changed since the snapshot that gave it): call browser_snapshot and use a ref"
                " from it",
            )

            # A later turn of the same session: the same page, and the cookie it set.
            later = await h.call("s-ann", "browser_snapshot")
            assert '- paragraph "Thanks, Ann!"' in later.output
            who = await h.call("s-ann", "browser_navigate", url=f"http://{site}/whoami")
            assert '- paragraph "cookie: visitor=Ann"' in who.output

            # Another session: its own browser, no page, no cookie.
            tabs = await h.call("s-bob", "browser_tab_list")
            assert tabs.output == "- 0: (current) [] (about:blank)"
            fresh = await h.call("s-bob", "browser_navigate", url=f"http://{site}/whoami")
            assert '- paragraph "cookie: no cookie"' in fresh.output
            manager = boxes.browsers["w1"]
            sessions = manager.sessions
            assert sessions["s-ann"].browser is not sessions["s-bob"].browser

            # A stopping worker closes its browsers, pooled ones too, and their cgroups.
            running = [*sessions.values(), *manager.pool]
            workers[0].stop()
            with anyio.fail_after(30):
                while "w1" in boxes.browsers:
                    await anyio.sleep(0.05)
            assert not any(box.alive for box in running)
            assert not any(group.exists() for box in running for group in box.cgroups)
    finally:
        await close_all(boxes)


@pytest.mark.broker
async def test_the_browser_reaches_only_its_allow_list_never_the_broker_nor_host_files(
    tmp_path: Path, rabbitmq_url: str, site: str, other_site: str
) -> None:
    broker_port = int(rabbitmq_url.rsplit(":", 1)[1].split("/")[0])
    workspace = tmp_path / ".browser" / "s-net"
    workspace.mkdir(parents=True)
    (workspace / "page.html").write_text("<p>from the workspace</p>")
    app = App("net")
    boxes = app.sandbox_tools("browser", root=str(tmp_path), pool_size=0, network=[site])
    try:
        async with harness(app, "w1") as (h, _):
            allowed = await h.call("s-net", "browser_navigate", url=f"http://{site}/whoami")
            assert '- paragraph "cookie: no cookie"' in allowed.output
            for target in (other_site, f"127.0.0.1:{broker_port}"):
                refused = await h.call("s-net", "browser_navigate", url=f"http://{target}/")
                assert refused.output.endswith(
                    '- text: "agentqueue sandbox proxy refused the request:'
                    f" {target} is not on the sandbox's network allow list\""
                )
            own = await h.call("s-net", "browser_navigate", url="file:///workspace/page.html")
            assert '- paragraph "from the workspace"' in own.output
            waited = await h.call("s-net", "browser_wait_for", text="from the workspace")
            assert waited.output.startswith("Text 'from the workspace' appeared\nPage URL: file:")
            for path in ("/etc/passwd", str(Path(__file__)), "/root/.bashrc"):
                host = await h.call("s-net", "browser_navigate", url=f"file://{path}")
                assert (host.ok, host.output) == (
                    False,
                    "tool browser_navigate failed: SandboxError: browser_navigate failed:"
                    f" Page.goto: net::ERR_FILE_NOT_FOUND at file://{path}",
                )
    finally:
        await close_all(boxes)


async def test_with_network_none_nothing_is_reached_and_a_memory_hog_crashes_only_its_page(
    tmp_path: Path, site: str
) -> None:
    app = App("closed")
    limit = 400 << 20
    boxes = app.sandbox_tools("browser", root=str(tmp_path), pool_size=0, memory_max=limit)
    try:
        async with harness(app, "w1") as (h, _):
            closed = await h.call("s-none", "browser_navigate", url=f"http://{site}/")
            assert (closed.ok, closed.output) == (
                False,
                "tool browser_navigate failed: SandboxError: browser_navigate failed: Page.goto:"
                f" net::ERR_CONNECTION_REFUSED at http://{site}/",
            )
            # Chromium runs without RLIMIT_AS; its memory cgroup holds it.
            hog = await h.call("s-hog", "browser_navigate", url=f"data:text/html,{HOG}")
            assert (hog.ok, hog.output) == (
                False,
                "tool browser_navigate failed: SandboxError: browser_navigate failed: Page.goto:"
                " Page crashed",
            )
            memory = boxes.browsers["w1"].sessions["s-hog"].cgroups[1]
            assert (memory / "memory.limit_in_bytes").read_text() == f"{limit}\n"
            assert int((memory / "memory.failcnt").read_text()) > 0  # the limit was what hit
            tabs = await h.call("s-hog", "browser_tab_list")  # the browser itself lives on
            assert tabs.ok and tabs.output.startswith("- 0: (current) [] (data:text/html,")
            other = await h.call("s-none", "browser_tab_list")  # and so does everyone else's
            assert other.ok and other.output.endswith(" (chrome-error://chromewebdata/)")
    finally:
        await close_all(boxes)


async def test_a_screenshot_over_the_inline_limit_travels_by_reference_and_the_caller_fetches_it(
    tmp_path: Path, site: str
) -> None:
    app = App("shots")
    boxes = app.sandbox_tools("browser", root=str(tmp_path), pool_size=0, network=[site])
    try:
        async with harness(app, "w1") as (h, workers):
            await h.call("s-shot", "browser_resize", width=600, height=400)
            small = await h.call("s-shot", "browser_take_screenshot")  # a blank page, JPEG
            (inline,) = small.images
            assert (inline.media_type, inline.width, inline.height) == ("image/jpeg", 600, 400)
            assert inline.ref is None and inline.data is not None
            assert inline.data[:2] == b"\xff\xd8" and inline.size == len(inline.data) < 32 * 1024

            await h.call("s-shot", "browser_navigate", url=f"http://{site}/noise")
            big = await h.call("s-shot", "browser_take_screenshot", raw=True)
            (image,) = big.images
            assert image.data is None and image.ref is not None
            assert image.size > 32 * 1024
            assert big.output == (
                f"Screenshot: image/png, 600x400, {image.size} bytes, stored as {image.ref}"
            )
            store = workers[0].store.url  # large images are kept in the worker's own store
            png = await Client("memory://unused").fetch_artifact(image.ref, store=store)
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) == image.size
            with pytest.raises(LookupError) as gone:
                await Client("memory://unused").fetch_artifact("artifact:s-shot/x.png", store=store)
            assert str(gone.value) == (
                f"artifact 'artifact:s-shot/x.png' is not in the store {store!r}: it expired"
                " (artifacts are kept as long as handled results) or another store holds it;"
                " pass store= the tool workers' store URL"
            )
            assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (
                600,
                400,
            )
    finally:
        await close_all(boxes)
