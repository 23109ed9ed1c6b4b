"""The process that runs inside a session's sandbox: one JSON request per line on stdin.

It is started by `agentqueue.workers.sandbox` under bwrap with `python -I -S`, so it may use the
standard library only (the worker's virtualenv is not on its path). In a base sandbox Python cells
run in a real IPython kernel started with the server (`sandbox_kernel.py`): variables persist
across the calls of a session. Every path is resolved under the workspace and refused when it
leaves it (`..`, absolute paths, symlinks).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import traceback
import zlib

WORKSPACE = "/workspace"
sys.path.insert(0, "/sandbox")  # -I leaves the script's directory off the path
import files  # noqa: E402 - sandbox_files.py, mounted beside this file


def _cap(text: str) -> str:
    return files.cap(text)


def _limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, name)
        resource.setrlimit(which, (value, value))


def run_python(code: str, scope: dict[str, object]) -> str:
    kernel = scope.get("kernel")
    if kernel is not None:
        # The kernel.Kernel that main put in the cells' scope, which holds any object.
        return _cap(kernel.run(code))  # type: ignore[attr-defined]
    out = io.StringIO()  # a sandbox without a kernel (gui-only): plain exec in one globals dict
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile(code, "<cell>", "exec"), scope)
        except BaseException:  # the cell's own error is its output, as in IPython
            traceback.print_exc()
    return _cap(out.getvalue())


def run_shell(command: str) -> str:
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=WORKSPACE,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
    )
    text = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.stderr else "")
    return _cap(text) + (f"\n[exit code {done.returncode}]" if done.returncode else "")


def handle(request: dict[str, object], scope: dict[str, object]) -> str:
    op = request["op"]
    a = request.get("args", {})
    assert isinstance(a, dict)
    if op == "run_ipython_cell":
        return run_python(a["code"], scope)
    if op == "run_shell_command":
        return run_shell(a["command"])
    answer = files.handle(op, a)
    if answer is not None:
        return answer
    if op == "computer_use":
        return computer_use(a)
    raise ValueError(f"unknown sandbox operation {op!r}")


# --- the desktop of a gui sandbox: Xvfb on :0, its framebuffer in /tmp/Xvfb_screen0 (XWD) ----

BUTTONS = {"left_click": "1", "middle_click": "2", "right_click": "3"}
SCROLL = {"up": "4", "down": "5", "left": "6", "right": "7"}


def _xdotool(*args: str) -> str:
    done = subprocess.run(
        ["/usr/bin/xdotool", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode:
        raise RuntimeError(f"xdotool {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _point(a: dict, key: str = "coordinate") -> list[str]:
    value = a.get(key)
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ValueError(f"{key} must be [x, y] in screen pixels, got {value!r}")
    return [str(value[0]), str(value[1])]


def computer_use(a: dict) -> str:
    action = a.get("action")
    moved = ["mousemove", "--sync", *_point(a)] if a.get("coordinate") is not None else []
    if action == "screenshot":
        return json.dumps(screenshot())
    if action == "mouse_move":
        _xdotool("mousemove", "--sync", *_point(a))
        return f"moved the mouse to {a['coordinate']}"
    if action in BUTTONS:
        _xdotool(*moved, "click", BUTTONS[action])
        return f"{action.replace('_', ' ')} at {a.get('coordinate') or cursor()}"
    if action == "double_click":
        _xdotool(*moved, "click", "--repeat", "2", "1")
        return f"double click at {a.get('coordinate') or cursor()}"
    if action == "left_click_drag":
        start, end = _point(a, "start_coordinate"), _point(a)
        _xdotool("mousemove", "--sync", *start, "mousedown", "1")
        _xdotool("mousemove", "--sync", *end, "mouseup", "1")
        return f"dragged from {a['start_coordinate']} to {a['coordinate']}"
    if action == "type":
        _xdotool("type", "--delay", "10", "--", str(a.get("text") or ""))
        return f"typed {len(str(a.get('text') or ''))} characters"
    if action == "key":
        _xdotool("key", "--", str(a.get("text") or ""))
        return f"pressed {a.get('text')}"
    if action == "scroll":
        direction = a.get("scroll_direction") or "down"
        if direction not in SCROLL:
            raise ValueError(f"scroll_direction {direction!r} is not one of up, down, left, right")
        amount = str(int(a.get("scroll_amount") or 3))
        _xdotool(*moved, "click", "--repeat", amount, SCROLL[direction])
        return f"scrolled {direction} by {amount}"
    if action == "cursor_position":
        return f"X={cursor()[0]}, Y={cursor()[1]}"
    raise ValueError(
        f"unknown computer_use action {action!r}: use screenshot, mouse_move, left_click,"
        " right_click, middle_click, double_click, left_click_drag, type, key, scroll or"
        " cursor_position"
    )


def cursor() -> list[int]:
    values = dict(line.split("=", 1) for line in _xdotool("getmouselocation", "--shell").split())
    return [int(values["X"]), int(values["Y"])]


def screenshot() -> dict:
    """The display as PNG (base64), read from Xvfb's framebuffer file (XWD, 32 bits a pixel)."""
    with open("/tmp/Xvfb_screen0", "rb") as f:
        raw = f.read()
    fields = struct.unpack(">25I", raw[:100])
    header, width, height = fields[0], fields[4], fields[5]
    byte_order, bits, stride, ncolors = fields[7], fields[11], fields[12], fields[19]
    if bits != 32:
        raise RuntimeError(f"the display has {bits} bits a pixel; gui sandboxes use 24-bit depth")
    start = header + ncolors * 12
    pixels = raw[start : start + stride * height]
    rgb = bytearray(width * height * 3)
    # LSB-first 0x00RRGGBB is B, G, R, X in memory; MSB-first is X, R, G, B.
    order = (2, 1, 0) if byte_order == 0 else (1, 2, 3)
    rows = b"".join(pixels[y * stride : y * stride + width * 4] for y in range(height))
    for channel, offset in enumerate(order):
        rgb[channel::3] = rows[offset::4]
    lines = b"".join(
        b"\x00" + bytes(rgb[y * width * 3 : (y + 1) * width * 3]) for y in range(height)
    )
    png = _png(width, height, zlib.compress(lines, 6))
    return {"png": base64.b64encode(png).decode(), "width": width, "height": height}


def _png(width: int, height: int, data: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


class NoKernel(Exception):
    """Stands in for KernelDied in a sandbox that has no kernel."""


def main() -> None:
    _limits(json.loads(sys.argv[1]))
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")  # cells' prints never reach it
    scope: dict[str, object] = {"__name__": "__main__"}
    died: type[Exception] = NoKernel  # never raised: a sandbox without a kernel is never broken
    if options.get("kernel"):
        from kernel import Kernel, KernelDied

        kernel, died = Kernel(), KernelDied
        # Ready means the kernel answers: a pooled sandbox's first cell pays no kernel start.
        kernel.wait_connected()
        scope["kernel"] = kernel
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, "output": handle(request, scope)}
        except died as exc:  # the kernel is gone: the worker replaces this sandbox
            reply = {"ok": False, "output": str(exc), "broken": True}
        except Exception as exc:
            reply = {"ok": False, "output": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
