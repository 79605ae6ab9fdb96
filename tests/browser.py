"""A small driver of headless Chromium over the DevTools protocol, for tests of the Prefect UI.

``with chromium(out_dir) as page:`` starts Debian's ``chromium`` headless in a fresh profile,
connects to its first tab with the ``websockets`` package (a dependency of Prefect's) and stops
the browser, every process of it, when the block ends, also on failure. The page can open a
URL, wait until a text or a CSS selector appears, return its visible text and save PNG
screenshots in ``out_dir``. A wait that times out raises :class:`BrowserError` naming what it
waited for and what the page shows, after saving a screenshot of it.

Processes are started and stopped through :mod:`sandbox.processes`, marked with the profile's
folder, so the leak check finds anything left behind.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import connect
from websockets.sync.connection import Connection

from sandbox import processes

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / ".test-output" / "screenshots"
"""Where the UI tests keep their screenshots (ignored by git)."""

STARTUP_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 30.0
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
_PNG = b"\x89PNG\r\n\x1a\n"


class BrowserError(AssertionError):
    """The browser could not start, a command failed, or a wait timed out."""


def chromium_binary() -> str | None:
    """The path of the ``chromium`` command, or None when it is not installed."""
    return shutil.which("chromium")


def _command(binary: str, profile: Path, size: tuple[int, int]) -> list[str]:
    return [
        binary, "--headless", "--remote-debugging-port=0", f"--user-data-dir={profile}",
        "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--metrics-recording-only",
        f"--window-size={size[0]},{size[1]}", "about:blank",
    ]  # fmt: skip


def _poll(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """``check()``'s first truthy result within ``timeout`` seconds, or None."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def _devtools_url(log: Path, timeout: float) -> str:
    """The browser's DevTools WebSocket URL, read from the line Chromium writes to stderr."""

    def listening() -> str | None:
        found = _LISTENING.search(log.read_text(errors="replace")) if log.exists() else None
        return found[1] if found else None

    url: str | None = _poll(listening, timeout)
    if url is None:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no output)"
        raise BrowserError(f"chromium did not listen for DevTools within {timeout:.0f}s:\n{tail}")
    return url


def _page_socket_url(browser_url: str, timeout: float) -> str:
    """The WebSocket URL of the browser's first tab (``/json/list`` of its DevTools port)."""
    port = browser_url.split("//", 1)[1].split("/", 1)[0]

    def first_page() -> str | None:
        with urllib.request.urlopen(f"http://{port}/json/list", timeout=5) as resp:
            targets = json.load(resp)
        pages = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
        return pages[0] if pages else None

    url: str | None = _poll(first_page, timeout)
    if url is None:
        raise BrowserError(f"chromium at {port} opened no tab within {timeout:.0f}s")
    return url


class Page:
    """One browser tab driven over the DevTools protocol (commands answered in order)."""

    def __init__(self, socket: Connection, out_dir: Path, marker: str) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self.out_dir = out_dir
        self.marker = marker
        """The marker of the browser's processes (:func:`sandbox.processes.running_under`)."""
        self.url = "about:blank"

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call DevTools ``method``; its result. Events that arrive meanwhile are dropped.

        Raises:
            BrowserError: the browser answered with an error.
        """
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self._socket.recv(timeout=DEFAULT_TIMEOUT))
            if message.get("id") != call_id:
                continue
            if "error" in message:
                raise BrowserError(f"{method} failed: {message['error']}")
            result: dict[str, Any] = message.get("result", {})
            return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values).

        Raises:
            BrowserError: the expression threw.
        """
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Navigate to ``url`` and wait until its document has loaded (scripts may still render).

        Raises:
            BrowserError: the page could not be loaded, or did not finish within ``timeout``.
        """
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.url = url
        self._wait(lambda: self.evaluate("document.readyState") == "complete",
                   f"{url} to finish loading", timeout)  # fmt: skip

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``; empty before there is a body)."""
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def field_values(self) -> list[str]:
        """The values of the page's text inputs and text areas (not part of its text)."""
        return list(self.evaluate(
            "[...document.querySelectorAll('input, textarea')].map(e => e.value)"
        ))  # fmt: skip

    def click(self, selector: str) -> None:
        """Click the first element that matches the CSS ``selector``.

        Raises:
            BrowserError: no element matches.
        """
        script = (
            f"(e => e ? (e.click(), true) : false)(document.querySelector({json.dumps(selector)}))"
        )
        if not self.evaluate(script):
            raise BrowserError(f"no element {selector!r} to click on {self.url}")

    def wait_for_text(self, text: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait until the page's visible text contains ``text``; return the whole text.

        Raises:
            BrowserError: not within ``timeout``: names ``text`` and shows the page's text.
        """
        self._wait(lambda: text in self.text(), f"the text {text!r}", timeout)
        return self.text()

    def wait_for_selector(self, selector: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until an element matches the CSS ``selector``.

        Raises:
            BrowserError: not within ``timeout``: names ``selector`` and shows the page's text.
        """
        found = f"document.querySelector({json.dumps(selector)}) !== null"
        self._wait(lambda: self.evaluate(found), f"an element {selector!r}", timeout)

    def screenshot(self, name: str) -> Path:
        """Save what the tab shows as ``<out_dir>/<name>.png``; return the file's path."""
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        if not data.startswith(_PNG):
            raise BrowserError(f"Page.captureScreenshot gave no PNG for {self.url}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{name}.png"
        path.write_bytes(data)
        return path

    def _wait(self, done: Callable[[], Any], what: str, timeout: float) -> None:
        if _poll(done, timeout, interval=0.2):
            return
        shot = self.screenshot("timed-out-" + re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-"))
        shown = self.text().strip() or "(no text)"
        raise BrowserError(
            f"waited {timeout:.0f}s for {what} on {self.url}; screenshot {shot}; "
            f"the page shows:\n{shown[:3000]}"
        )


@contextmanager
def chromium(
    out_dir: Path = SCREENSHOTS, *, size: tuple[int, int] = (1440, 2200)
) -> Iterator[Page]:
    """Headless Chromium with one tab of ``size`` pixels, screenshots saved in ``out_dir``.

    Every process of the browser is stopped and its profile deleted when the block ends.

    Raises:
        BrowserError: ``chromium`` is not installed, or did not start.
    """
    binary = chromium_binary()
    if binary is None:
        raise BrowserError("chromium is not installed (scripts/bootstrap.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="meshflow-chromium-") as folder:
        profile = Path(folder) / "profile"
        marker = str(Path(folder).resolve())
        log = Path(folder) / "chromium.log"
        try:
            processes.spawn("chromium", _command(binary, profile, size), log=log,
                            marker=marker, cwd=Path(folder))  # fmt: skip
            page_url = _page_socket_url(_devtools_url(log, STARTUP_TIMEOUT), STARTUP_TIMEOUT)
            with connect(page_url, max_size=None, open_timeout=STARTUP_TIMEOUT) as socket:
                yield Page(socket, out_dir, marker)
        finally:
            processes.stop(processes.running_under(marker))
