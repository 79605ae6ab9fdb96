"""The ingress probes against real HTTP and HTTPS servers on 127.0.0.1 (threads, no process).

Certificates come from meshflow.pki (through tests/pki_offline.py): a root, a leaf for the
echoserver's DNS name signed by it, and an unrelated root. The servers' keys are loaded from
memfd files, never written to disk.
Deadlines are fractions of a second; the tests assert attempts, statuses and details, never
elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from meshflow.errors import InvalidError
from meshflow.pki import ECHOSERVER_HOST, CertKeyPair
from tasks.probes import (
    SELF_SIGNED_FRONTEND,
    ProbeRequest,
    ProbeResult,
    not_run,
    probe,
    probe_endpoint,
    run_probe,
    verification_context,
)
from tests.pki_offline import generate_ingress_leaf, generate_root_ca

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ENVOY = "istio-envoy"
GATEWAY = "Microsoft-Azure-Application-Gateway/v2"
# Tiny timings: a probe that passes stops early; one that fails tries for SHORT's deadline.
FAST: dict[str, Any] = {"deadline_seconds": 0.6, "attempt_timeout": 0.2, "retry_interval": 0.01}
SHORT: dict[str, Any] = {"deadline_seconds": 1.5, "attempt_timeout": 0.2, "retry_interval": 0.01}


@dataclass(frozen=True)
class Pki:
    root: CertKeyPair
    leaf: CertKeyPair
    other_root: CertKeyPair


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = generate_root_ca(now=NOW, key_size=2048)
    leaf = generate_ingress_leaf(root, now=NOW, host=ECHOSERVER_HOST)
    other = generate_root_ca(now=NOW, key_size=2048, common_name="Another Root CA")
    return Pki(root=root, leaf=leaf, other_root=other)


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers ``answers[n]`` (status, Server header) to its n-th request, then the last one."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[int, str]], tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
        self.tls = tls
        self.hosts: list[str] = []
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def next_answer(self, host: str) -> tuple[int, str]:
        with self._lock:
            self.hosts.append(host)
            return self.answers[min(len(self.hosts), len(self.answers)) - 1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.tls is not None:  # the handshake happens in the handler's thread
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake is what some tests are about


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ScriptedServer
    answer_server = "BaseHTTP"

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def version_string(self) -> str:
        return self.answer_server

    def do_GET(self) -> None:
        status, self.answer_server = self.server.next_answer(self.headers.get("Host", ""))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server_context(pair: CertKeyPair) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    fd = os.memfd_create("probe-test-leaf")  # the key stays in memory
    try:
        os.write(fd, pair.cert_pem() + pair.key_pem())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


@contextlib.contextmanager
def serving(
    answers: list[tuple[int, str]], tls: CertKeyPair | None = None
) -> Iterator[ScriptedServer]:
    server = ScriptedServer(answers, _server_context(tls) if tls is not None else None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _https(server: ScriptedServer, timings: dict[str, Any] = FAST) -> dict[str, Any]:
    return {"connect_to": ("127.0.0.1", server.port), **timings}


URL = f"https://{ECHOSERVER_HOST}/"


# -- HTTPS -------------------------------------------------------------------------------------


def test_404_from_envoy_before_the_route_after_a_warming_gateway_503(pki: Pki) -> None:
    with serving([(503, GATEWAY), (404, ENVOY)], tls=pki.leaf) as server:
        result = probe(
            URL,
            expect_status=404,
            expect_server=ENVOY,
            ca_pem=pki.root.cert_pem(),
            **_https(server),
        )

    assert result.passed
    assert result.attempts == 2  # the 503 was retried
    assert result.detail == "answered 404 from istio-envoy as expected (after 2 attempts)"
    assert (result.http_status, result.server, result.tls) == (404, ENVOY, "verified")
    # connect_to changes where the probe connects, not the name it asks for (Host, TLS name).
    assert server.hosts == [ECHOSERVER_HOST] * 2


def test_the_probe_retries_until_the_route_answers_200(pki: Pki) -> None:
    with serving([(404, ENVOY)] * 3 + [(200, ENVOY)], tls=pki.leaf) as server:
        result = probe(URL, expect_status=200, ca_pem=pki.root.cert_pem(), **_https(server))

    assert result.passed
    assert result.attempts == 4
    assert result.detail == "answered 200 from istio-envoy as expected (after 4 attempts)"
    assert len(server.hosts) == 4


def test_a_certificate_from_an_unknown_ca_is_rejected_at_once(pki: Pki) -> None:
    with serving([(200, ENVOY)], tls=pki.leaf) as server:
        result = probe(URL, expect_status=200, ca_pem=pki.other_root.cert_pem(), **_https(server))

    assert result.status == "failed"
    assert result.attempts == 1
    assert result.detail == "TLS: certificate signed by an unknown CA"
    assert result.tls == "not verified: certificate signed by an unknown CA"
    assert result.http_status is None
    assert server.hosts == []  # not retried, and no request was sent


def test_a_certificate_for_another_host_is_rejected_at_once(pki: Pki) -> None:
    with serving([(200, ENVOY)], tls=pki.leaf) as server:
        by_name = probe(
            "https://other.example/",
            expect_status=200,
            ca_pem=pki.root.cert_pem(),
            **_https(server),
        )
        by_ip = probe(
            f"https://127.0.0.1:{server.port}/",
            expect_status=200,
            ca_pem=pki.root.cert_pem(),
            **FAST,
        )

    assert by_name.status == "failed"
    assert by_name.attempts == 1
    assert by_name.detail == "TLS: certificate is not for host other.example"
    assert by_ip.detail == "TLS: certificate is not for host 127.0.0.1"
    assert by_ip.attempts == 1
    assert server.hosts == []


def test_skipping_verification_for_the_self_signed_frontend_says_so(pki: Pki) -> None:
    with serving([(200, ENVOY)], tls=pki.leaf) as server:
        result = probe(
            "https://frontend.example/", expect_status=200, verify=False, **_https(server)
        )

    assert result.passed
    assert result.tls == SELF_SIGNED_FRONTEND
    assert (
        result.tls
        == "not verified: the frontend certificate is self-signed (Key Vault's default policy)"
    )


def test_an_https_server_that_never_answers_times_out(pki: Pki) -> None:
    with silent_listener() as port:
        result = probe(
            URL, expect_status=200, ca_pem=pki.root.cert_pem(), connect_to=("127.0.0.1", port),
            deadline_seconds=1.5, attempt_timeout=0.2, retry_interval=0,
        )  # fmt: skip

    assert result.status == "failed"
    assert result.attempts >= 2
    assert result.detail == f"timed out after 1.5 s ({result.attempts} attempts)"
    assert result.tls == "not verified: no TLS handshake completed"


def test_a_failed_handshake_that_is_not_about_the_certificate_is_retried(pki: Pki) -> None:
    with serving([(200, ENVOY)]) as server:  # plain HTTP behind an https URL
        result = probe(URL, expect_status=200, ca_pem=pki.root.cert_pem(), **_https(server, SHORT))

    assert result.status == "failed"
    assert result.attempts >= 2
    assert result.detail.startswith("TLS handshake failed: ")
    assert result.detail.endswith(f"({result.attempts} attempts in 1.5 s)")
    assert result.tls == "not verified: no TLS handshake completed"


# -- Plain HTTP --------------------------------------------------------------------------------


def test_plain_http_404_before_the_route_and_200_after() -> None:
    with serving([(404, ENVOY), (200, ENVOY)]) as server:
        url = f"http://127.0.0.1:{server.port}/"
        before = probe(url, expect_status=404, expect_server=ENVOY, **FAST)
        after = probe(url, expect_status=200, expect_server=ENVOY, **FAST)

    assert before == ProbeResult(
        url=url, expected_status=404, status="passed", http_status=404, server=ENVOY,
        tls="plain HTTP", attempts=1, detail="answered 404 from istio-envoy as expected",
    )  # fmt: skip
    assert after.passed
    assert after.attempts == 1
    assert after.tls == "plain HTTP"


def test_a_wrong_server_header_fails_with_what_was_expected() -> None:
    with serving([(404, GATEWAY)]) as server:
        result = probe(
            f"http://127.0.0.1:{server.port}/", expect_status=404, expect_server=ENVOY, **SHORT
        )

    assert result.status == "failed"
    assert result.attempts >= 2  # retried: AGIC may not have written the gateway yet
    assert result.server == GATEWAY
    assert result.detail == (
        f"answered 404 from {GATEWAY}, expected 404 from istio-envoy "
        f"({result.attempts} attempts in 1.5 s)"
    )


def test_a_wrong_status_fails_with_the_last_answer() -> None:
    with serving([(503, ENVOY)]) as server:
        result = probe(f"http://127.0.0.1:{server.port}/", expect_status=200, **SHORT)

    assert result.status == "failed"
    assert result.http_status == 503
    assert result.detail == (
        f"answered 503 from istio-envoy, expected 200 ({result.attempts} attempts in 1.5 s)"
    )


def test_a_plain_http_server_that_never_answers_times_out() -> None:
    with silent_listener() as port:
        result = probe(
            f"http://127.0.0.1:{port}/", expect_status=404,
            deadline_seconds=1.5, attempt_timeout=0.2, retry_interval=0,
        )  # fmt: skip

    assert result.status == "failed"
    assert result.attempts >= 2
    assert result.detail == f"timed out after 1.5 s ({result.attempts} attempts)"
    assert result.http_status is None
    assert result.tls == "plain HTTP"


def test_a_refused_connection_is_retried_then_reported() -> None:
    port = _closed_port()
    result = probe(f"http://127.0.0.1:{port}/", expect_status=404, **SHORT)

    assert result.status == "failed"
    assert result.attempts >= 2
    assert result.detail == (
        f"connection refused by 127.0.0.1:{port} ({result.attempts} attempts in 1.5 s)"
    )


# -- Not run, inputs, the context, the task ----------------------------------------------------


def test_not_run_says_why() -> None:
    result = not_run("https://1.2.3.4.nip.io/", 200, "no data plane")

    assert result.status == "not run"
    assert not result.passed
    assert result.detail == "not run: no data plane"
    assert (result.attempts, result.http_status, result.server) == (0, None, None)
    assert result.tls == "not verified: not run"
    assert not_run("http://1.2.3.4/", 404, "not run: no nodes").detail == "not run: no nodes"
    assert not_run("http://1.2.3.4/", 404, "no nodes").tls == "plain HTTP"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("ftp://echo.example/", {}, "is not an http(s) URL"),
        ("https:///path", {}, "is not an http(s) URL"),
        ("https://user:hunter2@echo.example/", {}, "carries credentials"),
        ("https://echo.example/", {}, "nothing to verify"),
        ("https://echo.example/", {"ca_pem": b"not a certificate"}, "not PEM certificates"),
        ("http://echo.example/", {"deadline_seconds": 0}, "must be positive"),
        ("http://echo.example/", {"expect_status": 42}, "not an HTTP status"),
        ("http://echo.example:99999/", {}, "has an invalid port"),
        ("http://echo.example/", {"connect_to": ("", 80)}, "is not an (ip, port)"),
        ("http://echo.example/", {"connect_to": ("10.0.0.1", 0)}, "is not an (ip, port)"),
    ],
)
def test_unusable_requests_are_refused_before_any_attempt(
    url: str, options: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"expect_status": 200, **FAST, **options}
    with pytest.raises(InvalidError, match=re.escape(message)) as raised:
        probe(url, **kwargs)
    assert "hunter2" not in str(raised.value)


def test_the_context_trusts_only_the_given_ca_and_requires_tls_1_2(pki: Pki) -> None:
    context = verification_context(pki.root.cert_pem() + pki.other_root.cert_pem())

    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 2  # the two roots, not the system store
    skipped = verification_context(None, verify=False)
    assert skipped.verify_mode == ssl.CERT_NONE
    assert not skipped.check_hostname
    assert skipped.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_private_key_is_never_taken_as_a_ca(pki: Pki) -> None:
    key = pki.leaf.key_pem()
    with pytest.raises(InvalidError, match="private key") as raised:
        verification_context(pki.root.cert_pem() + key)
    assert key.decode() not in str(raised.value)
    with pytest.raises(ValidationError, match="private key") as invalid:
        ProbeRequest(name="x", url=URL, expect_status=200, ca_pem=key.decode(), **FAST)
    assert "BEGIN" not in str(invalid.value)


def test_the_task_probes_once_per_run_without_task_retries(pki: Pki) -> None:
    assert probe_endpoint.name == "probe"
    assert probe_endpoint.task_run_name == "probe-{request.name}"
    assert probe_endpoint.retries == 0  # the probe retries itself, bounded by its deadline

    with serving([(404, ENVOY)], tls=pki.leaf) as server:
        request = ProbeRequest(
            name="https-route-missing", url=URL, expect_status=404, expect_server=ENVOY,
            ca_pem=pki.root.cert_pem().decode(), connect_to=("127.0.0.1", server.port), **FAST,
        )  # fmt: skip
        # The request survives Prefect's JSON parameters; the task's body runs on the I/O pool.
        request = ProbeRequest.model_validate_json(request.model_dump_json())
        direct = run_probe(request)
        via_task = asyncio.run(probe_endpoint.fn(request))

    assert direct == via_task
    assert via_task.passed
    assert via_task.tls == "verified"
    assert ProbeResult.model_validate_json(via_task.model_dump_json()) == via_task
