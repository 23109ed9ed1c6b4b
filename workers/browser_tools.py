"""The `browser` tool set, with AgentScope Runtime's (Playwright MCP's) names and arguments.

Every tool runs in the calling session's browser sandbox (`browser.py`): one Chromium and one
browser context per session, kept across its calls, so pages, tabs and cookies stay. Element
refs (`ref="e3"`) come from the latest `browser_snapshot` (or from the snapshot each action
returns); see `browser_snapshot.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentqueue.workers.sandbox_tools import Sandboxes


def register_browser(tool: Callable[[Callable[..., Any]], Any], boxes: Sandboxes) -> None:
    """Register the `browser_*` tools with `tool` (the app's tool decorator)."""

    async def run(op: str, **args: object) -> Any:
        return await boxes.call_browser(op, dict(args))

    @tool
    async def browser_navigate(url: str) -> Any:
        """Open a URL in the selected tab and return the page's snapshot.

        Args:
            url: The URL to open (what the network policy allows, or file:///workspace/...).
        """
        return await run("browser_navigate", url=url)

    @tool
    async def browser_navigate_back() -> Any:
        """Go back to the previous page of the selected tab."""
        return await run("browser_navigate_back")

    @tool
    async def browser_navigate_forward() -> Any:
        """Go forward to the next page of the selected tab."""
        return await run("browser_navigate_forward")

    @tool
    async def browser_snapshot() -> Any:
        """An accessibility snapshot of the selected tab; its refs are what other tools take."""
        return await run("browser_snapshot")

    @tool
    async def browser_click(element: str, ref: str) -> Any:
        """Click an element of the page.

        Args:
            element: A human-readable description of the element.
            ref: The element's ref from the latest snapshot, e.g. "e3".
        """
        return await run("browser_click", element=element, ref=ref)

    @tool
    async def browser_type(
        element: str, ref: str, text: str, submit: bool = False, slowly: bool = False
    ) -> Any:
        """Type text into an editable element.

        Args:
            element: A human-readable description of the element.
            ref: The element's ref from the latest snapshot.
            text: The text to type.
            submit: Press Enter afterwards.
            slowly: Type one character at a time (fires key handlers) instead of filling.
        """
        return await run(
            "browser_type", element=element, ref=ref, text=text, submit=submit, slowly=slowly
        )

    @tool
    async def browser_hover(element: str, ref: str) -> Any:
        """Move the mouse over an element.

        Args:
            element: A human-readable description of the element.
            ref: The element's ref from the latest snapshot.
        """
        return await run("browser_hover", element=element, ref=ref)

    @tool
    async def browser_select_option(element: str, ref: str, values: list[str]) -> Any:
        """Select options of a drop-down.

        Args:
            element: A human-readable description of the element.
            ref: The element's ref from the latest snapshot.
            values: The options to select (values or labels).
        """
        return await run("browser_select_option", element=element, ref=ref, values=values)

    @tool
    async def browser_press_key(key: str) -> Any:
        """Press a key, e.g. "Enter", "ArrowLeft" or "a".

        Args:
            key: The key's name or character.
        """
        return await run("browser_press_key", key=key)

    @tool
    async def browser_wait_for(
        time: float | None = None,
        text: str | None = None,
        text_gone: str | None = None,
        textGone: str | None = None,  # Playwright MCP's spelling, accepted too
    ) -> Any:
        """Wait for a number of seconds, for a text to appear, or for a text to disappear.

        Args:
            time: Seconds to wait.
            text: Text to wait for.
            text_gone: Text to wait to be gone.
            textGone: The same as text_gone (Playwright MCP's name).
        """
        gone = text_gone or textGone
        return await run("browser_wait_for", time=time, text=text, text_gone=gone)

    @tool
    async def browser_take_screenshot(
        raw: bool = False,
        filename: str | None = None,
        element: str | None = None,
        ref: str | None = None,
    ) -> Any:
        """A screenshot of the selected tab (or of one element) as an image.

        Args:
            raw: PNG when true, else JPEG.
            filename: Also save it under this name in the browser's workspace.
            element: A human-readable description of the element to shoot.
            ref: The element's ref; without it the viewport is shot.
        """
        return await run(
            "browser_take_screenshot", raw=raw, filename=filename, element=element, ref=ref
        )

    @tool
    async def browser_resize(width: int, height: int) -> Any:
        """Resize the viewport of the selected tab.

        Args:
            width: Width in CSS pixels.
            height: Height in CSS pixels.
        """
        return await run("browser_resize", width=width, height=height)

    @tool
    async def browser_tab_list() -> Any:
        """List the open tabs, the selected one marked."""
        return await run("browser_tab_list")

    @tool
    async def browser_tab_new(url: str | None = None) -> Any:
        """Open a new tab (and select it).

        Args:
            url: A URL to open in it.
        """
        return await run("browser_tab_new", url=url)

    @tool
    async def browser_tab_select(index: int) -> Any:
        """Select a tab by index (from 0).

        Args:
            index: The tab's index in browser_tab_list.
        """
        return await run("browser_tab_select", index=index)

    @tool
    async def browser_tab_close(index: int | None = None) -> Any:
        """Close a tab (default: the selected one).

        Args:
            index: The tab's index in browser_tab_list.
        """
        return await run("browser_tab_close", index=index)

    @tool
    async def browser_close() -> str:
        """Close the session's browser (pages and cookies gone); the next call starts anew."""
        return await boxes.close_browser()
