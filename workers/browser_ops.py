"""The operations of the `browser` tools, run by the worker against a sandboxed Chromium.

Each action answers as Playwright MCP does: what happened, then the page's URL, title and a
fresh snapshot (whose refs the next action takes). Screenshots come back as `Screenshot`.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentqueue.workers.browser_snapshot import SNAPSHOT_JS, ref_selector
from agentqueue.workers.errors import SandboxError

if TYPE_CHECKING:
    from agentqueue.workers.browser import BrowserBox


SNAPSHOT_CAP = 40_000  # characters: with the envelope, under MNS's 64 KB


@dataclass(frozen=True)
class Screenshot:
    """An image a sandbox produced, before it is put inline or in the artifact store."""

    data: bytes
    media_type: str
    width: int
    height: int


def image_size(data: bytes, media_type: str, fallback: tuple[int, int]) -> tuple[int, int]:
    """Width and height from a PNG's header (JPEG: `fallback`, the area that was shot)."""
    if media_type == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return fallback


def page(box: BrowserBox) -> Any:
    """The selected tab; a context whose tabs were all closed gets a fresh one."""
    pages = box.context.pages
    if not pages:
        raise SandboxError("no tab is open: open one with browser_tab_new")
    box.current = min(box.current, len(pages) - 1)
    return pages[box.current]


async def describe(box: BrowserBox, done: str = "") -> str:
    """`done`, then the selected tab's URL, title and snapshot."""
    tab = page(box)
    snapshot = await tab.evaluate(SNAPSHOT_JS)
    if len(snapshot) > SNAPSHOT_CAP:  # the reply must stay within the broker's message size
        snapshot = (
            snapshot[:SNAPSHOT_CAP] + f"\n[snapshot cut at {SNAPSHOT_CAP} characters of"
            f" {len(snapshot)}: refs past it exist; browser_take_screenshot shows the page]"
        )
    head = f"{done}\n" if done else ""
    return f"{head}Page URL: {tab.url}\nPage title: {await tab.title()}\nPage snapshot:\n{snapshot}"


async def element(box: BrowserBox, ref: str) -> Any:
    """The element a ref of the latest snapshot names; a stale or unknown ref is refused."""
    try:
        selector = ref_selector(ref)
    except ValueError as exc:
        raise SandboxError(str(exc)) from None
    locator = page(box).locator(selector)
    if await locator.count() == 0:
        raise SandboxError(
            f"element ref {ref!r} is not on the page (it changed since the snapshot that gave"
            " it): call browser_snapshot and use a ref from it"
        )
    return locator.first


async def run_op(box: BrowserBox, op: str, a: dict[str, Any]) -> str | Screenshot:
    """Run one `browser_*` operation on the box."""
    if op == "browser_navigate":
        await page(box).goto(str(a["url"]), wait_until="load")
        return await describe(box, f"Navigated to {a['url']}")
    if op == "browser_navigate_back":
        await page(box).go_back(wait_until="load")
        return await describe(box, "Navigated back")
    if op == "browser_navigate_forward":
        await page(box).go_forward(wait_until="load")
        return await describe(box, "Navigated forward")
    if op == "browser_snapshot":
        return await describe(box)
    if op == "browser_click":
        await (await element(box, a["ref"])).click()
        await settle(box)
        return await describe(box, f"Clicked {a['element']}")
    if op == "browser_type":
        target = await element(box, a["ref"])
        if a.get("slowly"):
            await target.press_sequentially(a["text"])
        else:
            await target.fill(a["text"])
        if a.get("submit"):
            await target.press("Enter")
            await settle(box)
        return await describe(box, f"Typed into {a['element']}")
    if op == "browser_hover":
        await (await element(box, a["ref"])).hover()
        return await describe(box, f"Hovered over {a['element']}")
    if op == "browser_select_option":
        await (await element(box, a["ref"])).select_option(list(a["values"]))
        return await describe(box, f"Selected {', '.join(a['values'])} in {a['element']}")
    if op == "browser_press_key":
        await page(box).keyboard.press(a["key"])
        await settle(box)
        return await describe(box, f"Pressed {a['key']}")
    if op == "browser_wait_for":
        return await wait_for(box, a)
    if op == "browser_take_screenshot":
        return await screenshot(box, a)
    if op == "browser_resize":
        await page(box).set_viewport_size({"width": int(a["width"]), "height": int(a["height"])})
        return f"Resized the viewport to {a['width']}x{a['height']}"
    if op == "browser_tab_list":
        return await tab_list(box)
    if op == "browser_tab_new":
        tab = await box.context.new_page()
        box.current = len(box.context.pages) - 1
        if a.get("url"):
            await tab.goto(str(a["url"]), wait_until="load")
        return await tab_list(box)
    if op == "browser_tab_select":
        pages = box.context.pages
        index = int(a["index"])
        if not 0 <= index < len(pages):
            raise SandboxError(f"tab {index} does not exist: there are {len(pages)} (from 0)")
        box.current = index
        await pages[index].bring_to_front()
        return await describe(box, f"Selected tab {index}")
    if op == "browser_tab_close":
        pages = box.context.pages
        index = box.current if a.get("index") is None else int(a["index"])
        if not 0 <= index < len(pages):
            raise SandboxError(f"tab {index} does not exist: there are {len(pages)} (from 0)")
        await pages[index].close()
        box.current = max(0, min(box.current, len(box.context.pages) - 1))
        return await tab_list(box)
    raise SandboxError(f"unknown browser operation {op!r}")


async def settle(box: BrowserBox) -> None:
    """Let a navigation an action started finish loading before the snapshot is taken."""
    try:
        await page(box).wait_for_load_state("load")
    except Exception:  # the page went away mid-navigation: the snapshot shows where we are
        await asyncio.sleep(0)


async def wait_for(box: BrowserBox, a: dict[str, Any]) -> str:
    """Wait for a number of seconds, for text to appear, or for text to go."""
    if a.get("time") is not None:
        await asyncio.sleep(float(a["time"]))
        return await describe(box, f"Waited {a['time']} s")
    if a.get("text"):
        await page(box).get_by_text(a["text"]).first.wait_for(state="visible")
        return await describe(box, f"Text {a['text']!r} appeared")
    if a.get("text_gone"):
        await page(box).get_by_text(a["text_gone"]).first.wait_for(state="hidden")
        return await describe(box, f"Text {a['text_gone']!r} is gone")
    raise SandboxError("browser_wait_for needs one of time, text or text_gone")


async def screenshot(box: BrowserBox, a: dict[str, Any]) -> Screenshot:
    """The viewport or one element as PNG (`raw`) or JPEG, optionally saved in the workspace."""
    kind = "png" if a.get("raw") else "jpeg"
    tab = page(box)
    if a.get("ref"):
        target = await element(box, a["ref"])
        box_size = await target.bounding_box() or {"width": 0, "height": 0}
        area = (round(box_size["width"]), round(box_size["height"]))
        data = await target.screenshot(type=kind)
    else:
        size = tab.viewport_size or {"width": 0, "height": 0}
        area = (size["width"], size["height"])
        data = await tab.screenshot(type=kind)
    if a.get("filename"):
        await asyncio.to_thread(_save, str(box.workspace), str(a["filename"]), data)
    media_type = f"image/{kind}"
    width, height = image_size(data, media_type, area)
    return Screenshot(data, media_type, width, height)


def _save(workspace: str, filename: str, data: bytes) -> None:
    path = os.path.realpath(os.path.join(workspace, filename))
    if not path.startswith(os.path.realpath(workspace) + os.sep):
        raise SandboxError(f"filename {filename!r} leaves the workspace: give a path inside it")
    with open(path, "wb") as f:
        f.write(data)


async def tab_list(box: BrowserBox) -> str:
    """One line per tab: index, the selected one marked, title and URL."""
    lines = []
    for index, tab in enumerate(box.context.pages):
        mark = " (current)" if index == box.current else ""
        lines.append(f"- {index}:{mark} [{await tab.title()}] ({tab.url})")
    return "\n".join(lines) or "no tabs open"
