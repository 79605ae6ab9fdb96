"""HTTP(S) probes of the ingress steps (13, 15, 22): GET a URL until it answers as expected.

A probe is a real client (``http.client`` over ``ssl``): it connects, verifies TLS against the CA
certificates it is given (in memory, never the system store unless asked), sends one GET and
reads the status line and headers. It retries, bounded by a deadline, what can change while the
App Gateway and the ingress gateway warm up: refused or reset connections, timeouts, 502/503 and
any other status or ``Server`` header than the one expected (404 from ``istio-envoy`` before the
VirtualService exists, 200 after). A certificate that does not verify, or is not for the URL's
host, is reported at once: another attempt would present the same certificate.

Every outcome of the HTTP exchange is a :class:`ProbeResult`, not an exception: the flow decides
what a failed probe means, and reports probes that could not run (no data plane in the sandbox)
with :func:`not_run`. A result holds the URL, statuses, the ``Server`` header and one line of
detail: never a response body, another header, or key material.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshflow.errors import InvalidError
from tasks.blocking import blocking_task

SYSTEM = "HTTP probe"

SELF_SIGNED_FRONTEND = (
    "not verified: the frontend certificate is self-signed (Key Vault's default policy)"
)
"""``ProbeResult.tls`` when the caller skipped verification (``verify=False``)."""

_NO_HANDSHAKE = "not verified: no TLS handshake completed"
_PLAIN = "plain HTTP"
_SERVER_HEADER_MAX = 200  # a Server header is a product name; longer is noise

# OpenSSL verify codes (x509_vfy.h) that mean "the chain does not end at a CA we trust".
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})
_HOST_MISMATCH_CODES = frozenset({62, 64})  # hostname, IP address
_NOT_YET_VALID, _EXPIRED = 9, 10


class ProbeResult(BaseModel):
    """What one probe found; a task result (public facts, no secret).

    Attributes:
        url: The URL probed.
        expected_status: The HTTP status the probe waited for.
        status: ``"passed"``, ``"failed"`` or ``"not run"``.
        http_status: The status of the last answer, or None when nothing answered.
        server: The last answer's ``Server`` header, or None.
        tls: ``"verified"``, ``"not verified: <why>"`` or ``"plain HTTP"``.
        attempts: How many GETs were tried (0 when not run).
        detail: One line: what happened, or why the probe did not run.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str
    expected_status: int
    status: Literal["passed", "failed", "not run"]
    http_status: int | None
    server: str | None
    tls: str = Field(pattern=r"^(verified|plain HTTP|not verified: .+)$")
    attempts: int = Field(ge=0)
    detail: str

    @property
    def passed(self) -> bool:
        """Whether the URL answered as expected."""
        return self.status == "passed"


class ProbeRequest(BaseModel):
    """The parameters of :data:`probe_endpoint`; see :func:`probe` for their meaning.

    ``ca_pem`` holds public certificates only (it is a task parameter, which Prefect stores):
    a bundle with a private key in it is refused, and validation errors do not echo inputs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    name: str = Field(min_length=1, description="Names the task run: probe-<name>.")
    url: str
    expect_status: int = Field(ge=100, le=599)
    expect_server: str | None = None
    ca_pem: str | None = None
    verify: bool = True
    trust_system_store: bool = False
    deadline_seconds: float = Field(gt=0, le=3600)
    attempt_timeout: float = Field(gt=0, le=600)
    retry_interval: float = Field(default=1.0, ge=0, le=60)
    connect_to: tuple[str, int] | None = None

    @field_validator("ca_pem")
    @classmethod
    def _public_only(cls, value: str | None) -> str | None:
        if value is not None and "PRIVATE KEY" in value:
            # The message must not echo the value: it holds a key.
            raise ValueError("ca_pem holds a private key: pass the CA certificates only")
        return value


def verification_context(
    ca_pem: bytes | None, *, verify: bool = True, system_store: bool = False
) -> ssl.SSLContext:
    """The TLS client context of a probe: TLS 1.2 or later, verifying against ``ca_pem``.

    Pure apart from ``system_store``, which reads the machine's CA store. The context checks
    the certificate chain against the given CA certificates (PEM, loaded from memory) and the
    certificate's names against the host the connection is for. ``verify=False`` turns both
    checks off: only for a frontend certificate made by Key Vault's default self-signed policy
    (step 16), which no CA signed; the probe's result then says so.

    Args:
        ca_pem: PEM certificates to trust (the Istio root, the frontend CA), or None.
        verify: Whether to verify the server's certificate and name.
        system_store: Also trust the machine's CA store (a publicly issued frontend certificate).

    Raises:
        InvalidError: ``ca_pem`` holds a private key or no certificate, or ``verify`` is on
            with nothing to verify against.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_pem:
        if b"PRIVATE KEY" in ca_pem:
            raise InvalidError(
                "the CA bundle holds a private key: pass the CA certificates only", system=SYSTEM
            )
        try:
            # cadata as str is PEM; as bytes it would be read as DER.
            context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
            raise InvalidError(
                "the CA bundle is not PEM certificates: pass the CA's certificate PEM",
                system=SYSTEM,
            ) from exc
    if system_store:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if not ca_pem and not system_store:
        raise InvalidError(
            "nothing to verify the server's certificate against: pass the CA certificates, "
            "trust the system store, or skip verification for Key Vault's self-signed default",
            system=SYSTEM,
        )
    return context


def not_run(url: str, expect_status: int, reason: str) -> ProbeResult:
    """The result of a probe that did not run, with its reason (e.g. ``"no data plane"``)."""
    reason = " ".join(reason.split()).removeprefix("not run: ")
    return ProbeResult(
        url=url,
        expected_status=expect_status,
        status="not run",
        http_status=None,
        server=None,
        tls=_PLAIN if url.lower().startswith("http:") else "not verified: not run",
        attempts=0,
        detail=f"not run: {reason}",
    )


def probe(
    url: str,
    *,
    expect_status: int,
    expect_server: str | None = None,
    ca_pem: bytes | None = None,
    verify: bool = True,
    trust_system_store: bool = False,
    deadline_seconds: float,
    attempt_timeout: float,
    retry_interval: float = 1.0,
    connect_to: tuple[str, int] | None = None,
) -> ProbeResult:
    """GET ``url`` until it answers ``expect_status`` (from ``expect_server``) or time is up.

    Idempotent: yes (a read). Each attempt opens a new connection, waits at most
    ``attempt_timeout`` (and no longer than the deadline), and is followed by a pause of
    ``retry_interval``; attempts start until ``deadline_seconds`` have passed, the first one
    always. Retried: connection errors, timeouts, TLS handshakes that fail for other reasons
    than the certificate, and answers with another status or ``Server`` header. Not retried:
    a certificate that does not verify or is not for the URL's host. Redirects are answers,
    not followed.

    Args:
        url: ``http://`` or ``https://`` URL; its host is the ``Host`` header and TLS name.
        expect_status: The status that passes (404 before the route exists, 200 after).
        expect_server: The ``Server`` header that passes (case-insensitive), or None for any.
        ca_pem: PEM certificates to verify an ``https`` server against.
        verify: False only for Key Vault's self-signed default frontend certificate.
        trust_system_store: Also trust the machine's CA store.
        deadline_seconds: How long to keep trying.
        attempt_timeout: How long one attempt may take: connect, handshake and answer.
        retry_interval: The pause between attempts, in seconds.
        connect_to: ``(ip, port)`` to connect to instead of the URL's host and port (as
            ``curl --resolve``).

    Returns:
        The outcome; HTTP and TLS outcomes, passed or not, are results.

    Raises:
        InvalidError: The request is unusable: not an http(s) URL, credentials in the URL,
            bad timings, or no usable CA to verify against (see :func:`verification_context`).
    """
    target = _target(url, connect_to)
    if not (100 <= expect_status <= 599):
        raise InvalidError(f"expected status {expect_status} is not an HTTP status", system=SYSTEM)
    if deadline_seconds <= 0 or attempt_timeout <= 0 or retry_interval < 0:
        raise InvalidError(
            "deadline_seconds and attempt_timeout must be positive, retry_interval not negative",
            system=SYSTEM,
            target=url,
        )
    context = (
        verification_context(ca_pem, verify=verify, system_store=trust_system_store)
        if target.tls
        else None
    )
    expected = _Expected(expect_status, expect_server)
    deadline = time.monotonic() + deadline_seconds
    attempts = 0
    previous: _Outcome | None = None
    while True:
        attempts += 1
        full = time.monotonic() + attempt_timeout
        attempt_end = min(full, deadline)
        outcome = _attempt(target, context, verify=verify, end=attempt_end)
        if outcome.timed_out and attempt_end < full and previous is not None:
            # Cut short by the deadline, not timed out on its own: the attempt before says why.
            outcome = previous
            break
        if outcome.permanent or (outcome.error is None and expected.met_by(outcome)):
            break
        previous = outcome
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(retry_interval, left))
        if deadline - time.monotonic() <= 0:
            break
    return _result(url, expected, outcome, attempts, deadline_seconds)


def run_probe(request: ProbeRequest) -> ProbeResult:
    """Probe ``request.url`` as :func:`probe` does; the task's blocking function.

    Idempotent: yes (a read). Errors raised: none for HTTP and TLS outcomes (they are results);
    :class:`~meshflow.errors.InvalidError` for an unusable request. Not retried as a task: the
    probe retries itself, bounded by ``deadline_seconds``.
    """
    return probe(
        request.url,
        expect_status=request.expect_status,
        expect_server=request.expect_server,
        ca_pem=request.ca_pem.encode() if request.ca_pem is not None else None,
        verify=request.verify,
        trust_system_store=request.trust_system_store,
        deadline_seconds=request.deadline_seconds,
        attempt_timeout=request.attempt_timeout,
        retry_interval=request.retry_interval,
        connect_to=request.connect_to,
    )


probe_endpoint = blocking_task("probe", task_run_name="probe-{request.name}", retry=False)(
    run_probe
)


# -- One attempt -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    tls: bool
    host: str
    port: int
    path: str
    address: tuple[str, int]

    @property
    def where(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _target(url: str, connect_to: tuple[str, int] | None) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidError(f"{url!r} is not an http(s) URL with a host", system=SYSTEM)
    if parts.username is not None or parts.password is not None:
        # No credentials in a probe: the URL goes into the result. Do not echo it.
        raise InvalidError("the probe URL carries credentials: remove them", system=SYSTEM)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidError(f"{url!r} has an invalid port", system=SYSTEM) from exc
    if connect_to is not None and not (connect_to[0] and 0 < connect_to[1] < 65536):
        raise InvalidError(f"connect_to {connect_to!r} is not an (ip, port)", system=SYSTEM)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(
        tls=scheme == "https",
        host=parts.hostname,
        port=port,
        path=path,
        address=connect_to or (parts.hostname, port),
    )


@dataclass(frozen=True)
class _Outcome:
    tls: str
    http_status: int | None = None
    server: str | None = None
    error: str | None = None  # why there is no answer
    permanent: bool = False
    timed_out: bool = False


@dataclass(frozen=True)
class _Expected:
    status: int
    server: str | None

    def server_ok(self, server: str | None) -> bool:
        return self.server is None or (server or "").strip().lower() == self.server.lower()

    def met_by(self, outcome: _Outcome) -> bool:
        return outcome.http_status == self.status and self.server_ok(outcome.server)


def _left(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's time is up")
    return left


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection to ``address`` for ``host`` (Host header, TLS server name)."""

    def __init__(self, target: _Target, context: ssl.SSLContext | None, end: float) -> None:
        super().__init__(target.host, target.port, timeout=_left(end))
        # The Host header leaves out the scheme's default port, as browsers and curl do.
        self.default_port = 443 if target.tls else 80
        self._address = target.address
        self._context = context
        self._end = end
        self.handshake_done = False

    def connect(self) -> None:
        sock = socket.create_connection(self._address, timeout=_left(self._end))
        if self._context is not None:
            try:
                sock.settimeout(_left(self._end))
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
            self.handshake_done = True
        self.sock = sock


def _attempt(
    target: _Target, context: ssl.SSLContext | None, *, verify: bool, end: float
) -> _Outcome:
    connection: _Connection | None = None

    def tls() -> str:
        if not target.tls:
            return _PLAIN
        if connection is not None and connection.handshake_done:
            return "verified" if verify else SELF_SIGNED_FRONTEND
        return _NO_HANDSHAKE

    try:
        connection = _Connection(target, context, end)
        connection.request(
            "GET",
            target.path,
            headers={"User-Agent": "meshflow-probe", "Accept": "*/*", "Connection": "close"},
        )
        if connection.sock is not None:
            connection.sock.settimeout(_left(end))
        response = connection.getresponse()
        server = response.getheader("Server")
        return _Outcome(
            tls=tls(),
            http_status=response.status,
            server=server[:_SERVER_HEADER_MAX] if server is not None else None,
        )
    except ssl.SSLCertVerificationError as exc:
        why = _verification_problem(exc, target.host)
        return _Outcome(tls=f"not verified: {why}", error=f"TLS: {why}", permanent=True)
    except TimeoutError:
        return _Outcome(tls=tls(), error="timed out", timed_out=True)
    except ssl.SSLError as exc:
        what = "TLS error" if tls() != _NO_HANDSHAKE else "TLS handshake failed"
        return _Outcome(tls=tls(), error=f"{what}: {exc.reason or type(exc).__name__}")
    except ConnectionRefusedError:
        return _Outcome(tls=tls(), error=f"connection refused by {target.where}")
    except (ConnectionError, http.client.RemoteDisconnected):
        return _Outcome(tls=tls(), error=f"{target.where} closed the connection without an answer")
    except socket.gaierror:
        return _Outcome(tls=tls(), error=f"cannot resolve {target.address[0]}")
    except http.client.HTTPException as exc:
        return _Outcome(tls=tls(), error=f"not an HTTP answer ({type(exc).__name__})")
    except OSError as exc:
        return _Outcome(
            tls=tls(),
            error=f"cannot connect to {target.where}: {exc.strerror or type(exc).__name__}",
        )
    finally:
        if connection is not None:
            connection.close()


def _verification_problem(exc: ssl.SSLCertVerificationError, host: str) -> str:
    code = exc.verify_code
    if code in _UNKNOWN_CA_CODES:
        return "certificate signed by an unknown CA"
    if code in _HOST_MISMATCH_CODES:
        return f"certificate is not for host {host}"
    if code == _EXPIRED:
        return "certificate has expired"
    if code == _NOT_YET_VALID:
        return "certificate is not yet valid"
    return f"certificate not accepted ({exc.verify_message or exc.reason or 'verification failed'})"


# -- The result --------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _result(
    url: str, expected: _Expected, outcome: _Outcome, attempts: int, deadline_seconds: float
) -> ProbeResult:
    passed = outcome.error is None and expected.met_by(outcome)
    if outcome.error is None:
        source = f" from {outcome.server}" if outcome.server else ""
        if expected.server is not None and not outcome.server:
            source = " without a Server header"
        answered = f"answered {outcome.http_status}{source}"
        if passed:
            after = f" (after {_attempts(attempts)})" if attempts > 1 else ""
            detail = f"{answered} as expected{after}"
        else:
            wanted = f"expected {expected.status}"
            if not expected.server_ok(outcome.server):
                wanted += f" from {expected.server}"
            detail = f"{answered}, {wanted} ({_attempts(attempts)} in {_seconds(deadline_seconds)})"
    elif outcome.permanent:
        detail = outcome.error
    elif outcome.timed_out:
        detail = f"timed out after {_seconds(deadline_seconds)} ({_attempts(attempts)})"
    else:
        detail = f"{outcome.error} ({_attempts(attempts)} in {_seconds(deadline_seconds)})"
    return ProbeResult(
        url=url,
        expected_status=expected.status,
        status="passed" if passed else "failed",
        http_status=outcome.http_status,
        server=outcome.server,
        tls=outcome.tls,
        attempts=attempts,
        detail=detail,
    )
