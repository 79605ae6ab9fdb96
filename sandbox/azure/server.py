"""HTTP plumbing of the emulator: request/response types, routing, faults, request log, server.

The server is the stdlib ``ThreadingHTTPServer`` made fast enough for tight SDK loops:

* HTTP/1.1 keep-alive (``protocol_version``) with a ``Content-Length`` on every response;
* ``TCP_NODELAY`` on every accepted socket and the whole response (status line, headers, body)
  written with one ``send``: without both, Nagle's algorithm meets the client's delayed ACK and
  each request stalls ~40 ms;
* the TLS handshake runs in the connection's worker thread (not in the accept loop), and no
  reverse DNS is ever done for logging.

``naive=True`` keeps the stdlib defaults instead (no ``TCP_NODELAY``, headers and body written
separately); it exists only so the latency benchmark can show the difference.

Handlers are plain functions ``(Request, re.Match) -> Response`` registered as :class:`Route`
objects; they raise :class:`HttpError` for Azure-style ``{"error": {"code", "message"}}`` replies.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

AuthKind = Literal["none", "arm", "keyvault"]
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    host: str

    @property
    def base_url(self) -> str:
        """The ``https://host:port`` the client addressed (used to build resource ids)."""
        return f"https://{self.host}"

    def json(self) -> Any:
        """Return the JSON body (``{}`` when empty).

        Raises:
            HttpError: 400 when the body is not JSON.
        """
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(
                400, "BadParameter", f"The request body is not valid JSON: {exc}"
            ) from exc


@dataclass
class Response:
    """A reply: ``body`` is JSON-serialised unless it is ``bytes``."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_TYPE

    def payload(self) -> bytes:
        """Return the encoded body."""
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":")).encode()


class HttpError(Exception):
    """An error reply in the shape shared by ARM and Key Vault: ``{"error": {code, message}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        inner: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.inner = inner

    def response(self) -> Response:
        """Return the error as a :class:`Response`."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return Response(self.status, {"error": error}, dict(self.headers))


Handler = Callable[[Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class Route:
    """A handler for ``methods`` on paths fully matching ``pattern``."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    auth: AuthKind
    locked: bool = True
    """Whether the emulator's state lock is held around ``handler`` (else it locks itself)."""
    mutates: bool = False
    """Whether a ``GET`` changes state too (a poll that advances an operation)."""

    def changes_state(self, method: str) -> bool:
        """Whether serving ``method`` on this route may change the emulator's state."""
        return self.mutates or method != "GET"


def route(
    methods: str,
    pattern: str,
    handler: Handler,
    auth: AuthKind,
    *,
    nocase: bool = False,
    locked: bool = True,
    mutates: bool = False,
) -> Route:
    """Build a :class:`Route`; ``methods`` is space separated, ``pattern`` a full-match regex.

    ``mutates`` marks a route whose ``GET`` also changes state (every other method is assumed to).
    """
    flags = re.IGNORECASE if nocase else 0
    return Route(
        frozenset(methods.split()), re.compile(pattern, flags), handler, auth, locked, mutates
    )


class Router:
    """Ordered list of routes; the first route whose pattern matches the path wins."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = routes

    def resolve(self, method: str, path: str) -> tuple[Route, re.Match[str]]:
        """Find the route for a request.

        Raises:
            HttpError: 404 when no pattern matches, 405 when only the method does not.
        """
        path_matched = False
        for candidate in self._routes:
            match = candidate.pattern.fullmatch(path)
            if match is None:
                continue
            if method in candidate.methods:
                return candidate, match
            path_matched = True
        if path_matched:
            raise HttpError(
                405,
                "MethodNotAllowed",
                f"The requested resource does not support http method '{method}'.",
            )
        raise HttpError(404, "NotFound", f"No route for '{method} {path}' in the emulator.")


@dataclass
class FaultRule:
    """Make the next ``times`` requests matching ``method``/``path`` slow and/or fail."""

    method: str
    path: re.Pattern[str]
    status: int | None
    retry_after: float | None
    times: int
    delay_ms: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        """Parse the admin API's JSON rule."""
        status, retry_after = data.get("status"), data.get("retry_after")
        try:
            rule = cls(
                method=str(data.get("method", "*")).upper(),
                path=re.compile(str(data.get("path", ".*"))),
                status=None if status is None else int(status),
                retry_after=None if retry_after is None else float(retry_after),
                times=int(data.get("times", 1)),
                delay_ms=int(data.get("delay_ms", 0)),
            )
        except (ValueError, TypeError, re.error) as exc:
            raise HttpError(400, "BadParameter", f"Invalid fault rule: {exc}") from exc
        if rule.status is not None and not 400 <= rule.status <= 599:
            raise HttpError(400, "BadParameter", "status must be an HTTP error code or null")
        return rule

    def response(self) -> Response:
        """The injected error reply."""
        codes = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
        assert self.status is not None  # noqa: S101 - only called for failing rules
        err = HttpError(
            self.status, codes.get(self.status, "InjectedFault"), "Injected by the emulator."
        )
        if self.retry_after is not None:
            err.headers["Retry-After"] = f"{self.retry_after:g}"
        return err.response()


class Faults:
    """Thread-safe set of fault rules, consumed in insertion order."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> None:
        """Add a rule."""
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """Return (and use up once) the first rule matching the request, if any."""
        with self._lock:
            for rule in self._rules:
                if rule.method in ("*", method) and rule.path.search(path):
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                    return rule
        return None


def _body_text(data: bytes) -> tuple[str, str]:
    """A body as text and its encoding: UTF-8 as is, anything else as base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), "base64"


def _logged_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers with the ``Authorization`` value reduced to its scheme (``Bearer``)."""
    return {
        k: v.partition(" ")[0] if k.lower() == "authorization" else v for k, v in headers.items()
    }


class RequestLog:
    """Bounded, thread-safe log of the public (non-admin) requests served.

    With ``bodies`` on, each entry also carries ``request_headers`` (``Authorization`` reduced to
    its scheme), ``request_body`` and ``response_body`` (text; base64 when not UTF-8, as said by
    ``request_body_encoding``/``response_body_encoding``): what leak tests scan. Off by default,
    so benchmarks pay nothing for it.
    """

    def __init__(self, maxlen: int = 10_000, *, bodies: bool = False) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.bodies = bodies

    def append(self, req: Request, resp: Response, started: float) -> None:
        """Record one request and its reply."""
        entry: dict[str, Any] = {
            "method": req.method,
            "path": req.path,
            "status": resp.status,
            "host": req.host,
            "api_version": req.query.get("api-version"),
            "auth_header": "authorization" in {k.lower() for k in req.headers},
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if self.bodies:
            entry["request_headers"] = _logged_headers(req.headers)
            entry["request_body"], entry["request_body_encoding"] = _body_text(req.body)
            entry["response_body"], entry["response_body_encoding"] = _body_text(resp.payload())
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        """Return a copy of the log."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()


App = Callable[[Request], Response]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer
    timeout = 120

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=unquote(parts.path),
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k: v for k, v in self.headers.items()},
            body=body,
            host=self.headers.get("Host") or self.server.authority,
        )
        try:
            resp = self.server.app(req)
        except HttpError as exc:
            resp = exc.response()
        except Exception:
            log.exception("unhandled error for %s %s", req.method, req.path)
            resp = HttpError(500, "InternalServerError", "Unhandled emulator error.").response()
        self._write(resp)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

    def _write(self, resp: Response) -> None:
        payload = resp.payload()
        reason = self.responses.get(resp.status, ("",))[0]
        headers = {
            "Date": formatdate(usegmt=True),
            "Server": "meshflow-azure-emulator",
            "x-ms-request-id": str(uuid.uuid4()),
            "Content-Length": str(len(payload)),
            **({"Content-Type": resp.content_type} if payload else {}),
            **resp.headers,
        }
        head = f"HTTP/1.1 {resp.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        data = (head + "\r\n").encode("latin-1")
        if self.server.naive:
            self.wfile.write(data)
            self.wfile.write(payload)
        else:
            self.wfile.write(data + payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """Threaded HTTPS server; TLS is negotiated in each connection's own thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], app: App, tls: ssl.SSLContext, *, naive: bool = False
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.app = app
        self.tls = tls
        self.naive = naive
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    @property
    def authority(self) -> str:
        """``host:port`` the server listens on."""
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and disable Nagle's algorithm on it (unless naive)."""
        sock, addr = self.socket.accept()
        if not self.naive:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the TLS handshake, then serve the connection (in the worker thread)."""
        try:
            request.settimeout(10)  # bounds the handshake; the handler sets its own timeout
            tls_sock = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        with self._open_lock:
            self._open.add(tls_sock)
        try:
            super().finish_request(tls_sock, client_address)
        finally:
            with self._open_lock:
                self._open.discard(tls_sock)
            tls_sock.close()  # wrap_socket detached the raw socket that shutdown_request closes

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log connection errors at debug level instead of printing tracebacks."""
        log.debug("connection error from %s", client_address[0], exc_info=True)

    def close_connections(self) -> None:
        """Shut down every open keep-alive connection so worker threads exit."""
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
