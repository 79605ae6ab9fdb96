"""A local webhook endpoint for tests: an HTTP server on 127.0.0.1 that records every request.

Prefect's notification blocks POST JSON to a URL; the server runs automation actions, so the
receiver must be reachable from the Prefect server's process (127.0.0.1 is, in the tests).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request the receiver got: method, path, headers and body (JSON if it parsed)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    """``time.monotonic()`` when it arrived."""


class WebhookReceiver:
    """Records the requests to ``url`` (any path under it); answers 200 ``{}`` to each.

    Use as a context manager: it listens on a free port of 127.0.0.1 while open.
    """

    def __init__(self) -> None:
        self._received: list[Received] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                receiver._add(
                    Received(self.command, self.path, dict(self.headers.items()), body,
                             time.monotonic())
                )  # fmt: skip
                reply = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        """The receiver's base URL, ``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _add(self, request: Received) -> None:
        with self._arrived:
            self._received.append(request)
            self._arrived.notify_all()

    @property
    def received(self) -> list[Received]:
        """Every request so far, in order."""
        with self._arrived:
            return list(self._received)

    def wait_for(self, matches: Callable[[Received], bool], timeout: float) -> Received | None:
        """The first request (so far or within ``timeout`` seconds) that ``matches``, or None."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = next((r for r in self._received if matches(r)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._arrived.wait(left)
