"""Gui sandboxes: a real Xvfb desktop per session under bubblewrap, driven by ToolCall events."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import anyio
import pytest

from agentqueue import App
from tests.conftest import server_unavailable
from tests.workers.test_sandbox import Harness, harness

TK_APP = """
import tkinter as tk
root = tk.Tk()
root.geometry("640x480+0+0")
def press():
    button.configure(bg="#00c000", activebackground="#00c000", text="done")
    with open("/workspace/state.txt", "w") as f:
        f.write("clicked")
button = tk.Button(root, text="press", bg="#e00000", activebackground="#e00000", command=press)
button.place(x={x}, y={y}, width=120, height=60)
root.mainloop()
"""
RED, GREEN = (0xE0, 0x00, 0x00), (0x00, 0xC0, 0x00)


@pytest.fixture(autouse=True)
def desktop() -> None:
    """Gui tests need bwrap, Xvfb, xdotool and a window manager (scripts/setup.sh); CI fails."""
    for program in ("bwrap", "Xvfb", "xdotool", "matchbox-window-manager"):
        if shutil.which(program) is None:
            server_unavailable(f"{program} is not installed: run scripts/setup.sh")
    probe = subprocess.run([sys._base_executable, "-c", "import tkinter"], capture_output=True)
    if probe.returncode:
        server_unavailable(
            f"{sys._base_executable} has no tkinter: run scripts/setup.sh (Debian's python3-tk)"
        )


def decode_png(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB PNG, every chunk's CRC checked."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", b""
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, body = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        at += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(idat)
    stride = width * 3 + 1
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)  # filter "none", the one our encoder writes
    return width, height, [row[1:] for row in rows]


def find(rows: list[bytes], colour: tuple[int, int, int]) -> tuple[int, int] | None:
    """The centre of the pixels of `colour` (their bounding box), or None."""
    needle = bytes(colour)
    xs, ys = [], []
    for y, row in enumerate(rows):
        first = row.find(needle)
        while first != -1 and first % 3:  # a match must start on a pixel
            first = row.find(needle, first + 1)
        if first == -1:
            continue
        last = row.rfind(needle)
        while last % 3:
            last = row.rfind(needle, 0, last)
        xs += [first // 3, last // 3]
        ys.append(y)
    if not xs:
        return None
    return (min(xs) + max(xs)) // 2, (min(ys) + max(ys)) // 2


async def screenshot(h: Harness, session: str) -> tuple[int, int, list[bytes]]:
    shot = await h.call(session, "computer_use", action="screenshot")
    assert shot.ok, shot.output
    (image,) = shot.images
    assert image.data is not None and image.media_type == "image/png"
    width, height, rows = decode_png(image.data)
    assert (width, height) == (image.width, image.height)
    return width, height, rows


async def test_a_click_where_a_screenshot_shows_the_tk_button_presses_it_on_the_sessions_desktop(
    tmp_path: Path,
) -> None:
    app = App("desk")
    boxes = app.sandbox_tools(
        "base", "filesystem", "gui", root=str(tmp_path), pool_size=1, screen=(640, 480)
    )
    try:
        async with harness(app, "w1") as (h, _):
            await h.call("s-desk", "write_file", path="app.py", content=TK_APP.format(x=410, y=330))
            assert boxes.managers["w1"].sessions["s-desk"].from_pool  # a warm desktop served it
            python = sys._base_executable  # the interpreter the sandbox mounts, with tkinter
            started = await h.call(
                "s-desk", "run_shell_command", command=f"nohup {python} app.py >tk.log 2>&1 &"
            )
            assert started.ok, started.output
            with anyio.fail_after(20):  # until the window is mapped and drawn
                while (spot := find((await screenshot(h, "s-desk"))[2], RED)) is None:
                    await anyio.sleep(0.1)
            # The button's centre (410 + 60, 330 + 30), found from the picture alone; its
            # raised border is not red, hence a pixel or two either way.
            assert abs(spot[0] - 470) <= 3 and abs(spot[1] - 360) <= 3

            clicked = await h.call(
                "s-desk", "computer_use", action="left_click", coordinate=list(spot)
            )
            assert clicked.output == f"left click at {list(spot)}"
            with anyio.fail_after(10):
                while (await h.call("s-desk", "read_file", path="state.txt")).output != "clicked":
                    await anyio.sleep(0.05)
            width, height, rows = await screenshot(h, "s-desk")
            assert (width, height) == (640, 480)
            x, y = spot
            assert tuple(rows[y - 20][(x - 40) * 3 : (x - 40) * 3 + 3]) == GREEN
            where = await h.call("s-desk", "computer_use", action="cursor_position")
            assert where.output == f"X={x}, Y={y}"

            typed = await h.call("s-desk", "computer_use", action="type", text="hi")
            assert typed.output == "typed 2 characters"
            unknown = await h.call("s-desk", "computer_use", action="wave")
            assert unknown.output == (
                "tool computer_use failed: SandboxError: ValueError: unknown computer_use action"
                " 'wave': use screenshot, mouse_move, left_click, right_click, middle_click,"
                " double_click, left_click_drag, type, key, scroll or cursor_position"
            )
            other = await h.call("s-other", "computer_use", action="screenshot")
            assert find(decode_png(other.images[0].data or b"")[2], RED) is None  # its own desktop
    finally:
        for worker in list(boxes.managers):
            await boxes.close_worker(worker)
