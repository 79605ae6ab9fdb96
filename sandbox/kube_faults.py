"""A TLS proxy in front of one local API server that fails chosen requests: faults for tests.

The real ``kube-apiserver`` has no way to fail a request on purpose. Registered as the cluster's
endpoint (its AKS credentials point here), the proxy forwards every request unchanged, headers
and body included, to the API server and answers with what it answered, except for requests
that match a fault rule: those get the rule's status and a Kubernetes ``Status`` body (or are
delayed). It serves the API server's own certificate, valid for 127.0.0.1 on any port, so
clients verify it with the cluster's CA as before.

Reuses the emulator's HTTP plumbing (:mod:`sandbox.azure.server`): fault rules, the threaded
TLS server.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import yaml

from sandbox.azure.server import EmulatorHTTPServer, FaultRule, Faults, Request, Response
from sandbox.kube import LocalCluster, kubeconfig

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class KubeFaultProxy:
    """Forward to ``cluster``'s API server; fail what :meth:`add_fault` says."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._upstream = cluster.api_url.removeprefix("https://")
        pki = cluster.directory / "pki"
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(pki / "server.pem", pki / "server-key.pem")
        self._client_tls = ssl.create_default_context(cafile=str(cluster.ca_bundle))
        self._faults = Faults()
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.seen: list[tuple[str, str, int]] = []
        self._seen_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> KubeFaultProxy:
        """Listen on a free port of 127.0.0.1."""
        self._server = EmulatorHTTPServer(("127.0.0.1", 0), self._handle, self._tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()

    def __enter__(self) -> KubeFaultProxy:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>``: where clients should send the cluster's requests."""
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"https://{self._server.authority}"

    def kubeconfig(self, source: Path) -> str:
        """``source`` (one of the cluster's token kubeconfigs) pointed at the proxy."""
        data = yaml.safe_load(source.read_text())
        user = data["users"][0]
        ca_pem = self.cluster.ca_bundle.read_bytes()
        name = self.cluster.name
        token = str(user["user"]["token"])
        return yaml.safe_dump(kubeconfig(name, self.url, ca_pem, user["name"].split("_")[0], token))

    # -- faults -----------------------------------------------------------------------------

    def add_fault(
        self, path: str, *, method: str = "*", status: int | None = 503, times: int = 1,
        delay_ms: int = 0,
    ) -> None:  # fmt: skip
        """Fail (``status``) and/or delay the next ``times`` requests whose path matches."""
        rule = {"method": method, "path": path, "status": status, "times": times}
        self._faults.add(FaultRule.from_json(rule | {"delay_ms": delay_ms}))

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._faults.clear()

    # -- serving ----------------------------------------------------------------------------

    def _handle(self, req: Request) -> Response:
        rule = self._faults.take(req.method, req.path)
        if rule is not None:
            if rule.delay_ms:
                time.sleep(rule.delay_ms / 1000)
            if rule.status is not None:
                self._record(req, rule.status)
                return _status(rule.status, f"injected by the test proxy for {req.path}")
        resp = self._forward(req)
        self._record(req, resp.status)
        return resp

    def _record(self, req: Request, status: int) -> None:
        with self._seen_lock:
            self.seen.append((req.method, req.path, status))

    def _forward(self, req: Request) -> Response:
        query = urlencode(req.query)
        target = quote(req.path, safe="/:") + (f"?{query}" if query else "")
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPSConnection(self._upstream, context=self._client_tls, timeout=30)
        try:
            conn.request(req.method, target, body=req.body or None, headers=headers)
            upstream = conn.getresponse()
            body = upstream.read()
            kept = {k: v for k, v in upstream.getheaders() if k.lower() not in _HOP_BY_HOP}
            content_type = kept.pop("Content-Type", "application/json")
            return Response(upstream.status, body, kept, content_type=content_type)
        finally:
            conn.close()


def _status(code: int, message: str) -> Response:
    reasons = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reasons.get(code, "InternalError"), "code": code,
    }  # fmt: skip
    return Response(code, json.dumps(body).encode(), content_type="application/json")
