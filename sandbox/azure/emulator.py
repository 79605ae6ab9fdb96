"""The :class:`AzureEmulator`: wires TLS, routing, auth, faults, the request log and admin API.

Every public request goes through the same steps: a matching fault rule (delay and/or error)
is applied first; then the route is resolved (404/405); the bearer token is checked (ARM 401, or
Key Vault's 401 challenge); ARM and Key Vault calls must carry ``api-version``; finally the handler
runs under one state lock, and a request that may have changed state marks the state file dirty
(see :mod:`.persistence`). Admin calls (``/_emulator/...``) skip all of that and are not logged.

Admin API (JSON bodies; the in-process methods of the same names do the same):

* ``GET|DELETE /_emulator/requests``: the request log / clear it; ``PUT /_emulator/requests``
  ``{"bodies": true|false}`` records bodies and headers in it from now on (``record_bodies``).
* ``POST|DELETE /_emulator/faults``: add a fault rule / remove every rule.
* ``PUT /_emulator/clients/{client_id}`` ``{"secret": ...}``: register a client application
  or add a client secret to it (``register_client``).
* ``PUT /_emulator/{clusters|vaults}/{subscription}/{resourceGroup}/{name}``: register ARM
  resources; ``DELETE /_emulator/keyvault/{any}/{secrets|certificates|keys}/{name}``: drop one.
* ``GET|POST /_emulator/keys``: keys made ahead; ``GET /_emulator/info``: url and tenant.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from . import tls
from .arm import LIST_PAGE_SIZE, Arm
from .certificates import CertificateStore
from .identity import Identity
from .keys import KeyStore
from .keyvault import SecretStore
from .persistence import StateFile, ensure_private_dir
from .server import (
    EmulatorHTTPServer,
    FaultRule,
    Faults,
    HttpError,
    Request,
    RequestLog,
    Response,
    Route,
    Router,
    route,
)
from .x509util import keys_made_on_demand, keys_ready, make_keys_ahead

log = logging.getLogger(__name__)

DEFAULT_TENANT = "8c5d3e2f-6a1b-4c7d-9e0f-1a2b3c4d5e6f"


class AzureEmulator:
    """An HTTPS emulator of Entra ID token issuance, Key Vault and a slice of ARM.

    Args:
        state_dir: Where ``ca.pem``, the server certificate/key and ``vault-state.json`` live
            (made 0700). Starting again on the same folder reuses the TLS files and restores
            the state saved there.
        host: Address to listen on.
        port: Port to listen on (0 picks a free one).
        tenant_id: The only tenant the token endpoint knows; Key Vault challenges name it.
        pending_polls: ``inProgress`` answers a certificate creation gives before completing.
        lro_polls: ``InProgress`` answers an ARM async operation gives before ``Succeeded``.
        lro_retry_after_ms: ``Retry-After-Ms`` sent with ARM long-running operations.
        list_page_size: Resources per page of an ARM list (the rest behind ``nextLink``).
        naive: Serve like a plain stdlib server (Nagle on); for the latency benchmark only.
        clients: Client applications registered from the start: client id to client secret.
        record_bodies: Record request/response bodies and headers in the request log.
        persist: Save the state to ``state_dir`` (and restore it on start); off, all is lost
            when the emulator stops.
    """

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tenant_id: str = DEFAULT_TENANT,
        pending_polls: int = 1,
        lro_polls: int = 1,
        lro_retry_after_ms: int = 50,
        list_page_size: int = LIST_PAGE_SIZE,
        naive: bool = False,
        clients: Mapping[str, str] | None = None,
        record_bodies: bool = False,
        persist: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self._port = port
        self.tenant_id = tenant_id
        self._naive = naive
        self._identity = Identity(tenant_id, clients)
        self._secrets = SecretStore()
        self._lock = threading.RLock()
        self._keys = KeyStore(lock=self._lock)
        self._certificates = CertificateStore(
            self._secrets, pending_polls, keys=self._keys, lock=self._lock
        )
        self._keys.managed = self._certificates  # a certificate's key is a managed key
        self._arm = Arm(
            tenant_id,
            lro_polls=lro_polls,
            lro_retry_after_ms=lro_retry_after_ms,
            list_page_size=list_page_size,
        )
        self._faults = Faults()
        self._log = RequestLog(bodies=record_bodies)
        self._router = Router(
            self._identity.routes()
            + self._secrets.routes()
            + self._certificates.routes()
            + self._keys.routes()
            + self._arm.routes()
        )
        self._admin = Router(self._admin_routes())
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tls: tls.TlsFiles | None = None
        self._state = StateFile(self.state_dir, self.snapshot) if persist else None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> AzureEmulator:
        """Restore the saved state and TLS material (or make them), bind, serve in a thread.

        Raises:
            persistence.StateFileError: ``vault-state.json`` exists but cannot be restored
                (the message says how to start afresh).
            OSError: the port cannot be bound.
        """
        if self._server is not None:
            return self
        ensure_private_dir(self.state_dir)
        self._tls = tls.load_or_generate(self.state_dir)
        if self._state is not None and (saved := self._state.read()) is not None:
            try:
                self.restore(saved)
            except (KeyError, ValueError, TypeError) as exc:
                raise self._state.unusable(exc) from exc
            log.info("restored the emulator's state from %s", self._state.path)
        server = EmulatorHTTPServer(
            (self.host, self._port), self.handle, self._tls.server_context(), naive=self._naive
        )
        self._server = server
        if self._state is not None:
            self._state.start()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="azure-emulator"
        )
        self._thread.start()
        log.info("Azure emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close keep-alive connections, join the server thread, save the state."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._state is not None:
            self._state.stop()

    def __enter__(self) -> AzureEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``https://host:port``: the authority, the vault URL and the ARM base URL."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        """The CA certificate clients must trust."""
        if self._tls is None:
            raise RuntimeError("the emulator has not been started")
        return self._tls.ca_cert

    # -- state ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole emulated state as JSON-ready data (what ``vault-state.json`` holds).

        Holds the state lock only while copying: encoded keys and certificates are cached.
        """
        with self._lock:
            data = {
                "secrets": self._secrets.snapshot(),
                "certificates": self._certificates.snapshot(),
                "keys": self._keys.snapshot(),
                "arm": self._arm.snapshot(),
            }
        data["identity"] = self._identity.snapshot()
        return data

    def restore(self, data: Mapping[str, Any]) -> None:
        """Replace the emulated state with a :meth:`snapshot`'s (client applications are added).

        :meth:`start` calls it when ``vault-state.json`` exists, so register clusters, vaults and
        objects after :meth:`start`; clients given to the constructor are kept.

        Raises:
            KeyError, ValueError, TypeError: ``data`` is not a snapshot this emulator made.
        """
        with self._lock:
            self._secrets.restore(data["secrets"])
            self._certificates.restore(data["certificates"])  # links the secrets back
            self._keys.restore(data["keys"])
            self._arm.restore(data["arm"])
            self._identity.restore(data["identity"])

    def _changed(self) -> None:
        if self._state is not None:
            self._state.changed()

    # -- in-process admin -------------------------------------------------------------------

    def requests_log(self) -> list[dict[str, Any]]:
        """The public requests served so far (method, path, status, host, api_version, ...).

        With :meth:`record_bodies` on, entries also carry ``request_headers`` (Authorization
        reduced to its scheme), ``request_body`` and ``response_body``.
        """
        return self._log.entries()

    def clear_log(self) -> None:
        """Forget the request log."""
        self._log.clear()

    def record_bodies(self, on: bool = True) -> None:
        """Record (or stop recording) bodies and headers in the request log, from now on."""
        self._log.bodies = on

    def register_client(self, client_id: str, secret: str) -> None:
        """Register client application ``client_id``, or add ``secret`` to its client secrets.

        Idempotent; earlier secrets stay valid (an app registration holds several).

        Raises:
            ValueError: ``client_id`` or ``secret`` is empty.
        """
        self._identity.register_client(client_id, secret)
        self._changed()

    def add_fault(
        self,
        path: str,
        *,
        method: str = "*",
        status: int | None = 503,
        retry_after: float | None = None,
        times: int = 1,
        delay_ms: int = 0,
    ) -> None:
        """Fail (``status``) and/or delay the next ``times`` requests whose path matches."""
        rule = {"method": method, "path": path, "status": status, "retry_after": retry_after}
        self._faults.add(FaultRule.from_json({**rule, "times": times, "delay_ms": delay_ms}))

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._faults.clear()

    def register_cluster(
        self, subscription: str, resource_group: str, name: str, **spec: Any
    ) -> None:
        """Register an AKS cluster, with its add-on identities, App Gateway and public IP.

        ``spec`` takes the admin API's fields: ``location``, ``admin_kubeconfig``,
        ``user_kubeconfig``, ``fqdn``, ``aad``, and optionally ``application_gateway_id`` and
        ``kubernetes_version``. The cluster is replaced; the resources next to it are made if
        missing and otherwise kept (see :meth:`.arm.Arm.register_cluster`).

        Raises:
            ValueError: ``application_gateway_id`` is not an App Gateway resource id.
        """
        with self._lock:
            self._arm.register_cluster(subscription, resource_group, name, spec)
        self._changed()

    def register_vault(
        self, subscription: str, resource_group: str, name: str, **spec: Any
    ) -> None:
        """Register a Key Vault resource (``location``, ``sku``); its data plane is the one vault.

        A vault already registered is kept as it is, access policies included.

        Raises:
            ValueError: ``sku`` is neither ``standard`` nor ``premium``.
        """
        with self._lock:
            self._arm.register_vault(subscription, resource_group, name, spec)
        self._changed()

    def drop_secret(self, name: str) -> bool:
        """Remove a secret completely (all versions, no soft delete)."""
        with self._lock:
            dropped = self._secrets.drop(name)
        self._changed()
        return dropped

    def drop_certificate(self, name: str) -> bool:
        """Remove a certificate, its backing secret and its managed key completely."""
        with self._lock:
            dropped = self._certificates.drop(name)
        self._changed()
        return dropped

    def drop_key(self, name: str) -> bool:
        """Remove a standalone key completely (all versions, no soft delete)."""
        with self._lock:
            dropped = self._keys.drop(name)
        self._changed()
        return dropped

    def make_keys(self, size: int, count: int) -> list[float]:
        """Make RSA keys ahead until ``count`` of ``size`` bits wait (see x509util)."""
        return make_keys_ahead(size, count)

    def keys_ready(self) -> dict[int, int]:
        """Keys made ahead and not yet used, per RSA key size."""
        return keys_ready()

    def keys_made_on_demand(self) -> int:
        """How many RSA keys requests had the emulator make on demand so far."""
        return keys_made_on_demand()

    def apply_config(self, config: Mapping[str, Any]) -> None:
        """Register the ``clients``, ``clusters`` and ``vaults`` of a config mapping.

        ``clients`` is a list of ``{"client_id": ..., "secret": ...}``.

        Raises:
            ValueError: a ``clients`` entry lacks its client_id or secret.
        """
        for client in config.get("clients", []):
            if not isinstance(client, dict) or not {"client_id", "secret"} <= client.keys():
                raise ValueError(
                    f"each config 'clients' entry needs client_id and secret (got {client!r})"
                )
            self.register_client(client["client_id"], client["secret"])
        for kind, register in (
            ("clusters", self.register_cluster),
            ("vaults", self.register_vault),
        ):
            for item in config.get(kind, []):
                spec = dict(item)
                keys = (spec.pop("subscription"), spec.pop("resourceGroup"), spec.pop("name"))
                register(*keys, **spec)

    # -- request handling ---------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Serve one request (the server's application callable)."""
        if req.path.startswith("/_emulator/"):
            admin, match = self._admin.resolve(req.method, req.path)
            return admin.handler(req, match)
        started = time.perf_counter()
        try:
            resp = self._serve(req)
        except HttpError as exc:
            resp = exc.response()
        self._log.append(req, resp, started)
        return resp

    def _serve(self, req: Request) -> Response:
        rule = self._faults.take(req.method, req.path)
        if rule is not None:
            if rule.delay_ms:
                time.sleep(rule.delay_ms / 1000)
            if rule.status is not None:
                return rule.response()
        target, match = self._router.resolve(req.method, req.path)
        if target.auth == "keyvault":
            self._identity.require_keyvault(req)
        elif target.auth == "arm":
            self._identity.require_arm(req)
        if target.auth != "none" and "api-version" not in req.query:
            raise HttpError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        try:
            if not target.locked:
                return target.handler(req, match)
            with self._lock:
                return target.handler(req, match)
        finally:
            if target.changes_state(req.method):
                self._changed()

    def _keys_made_ahead(self) -> dict[str, Any]:
        ready = {str(size): n for size, n in self.keys_ready().items()}
        return {"ready": ready, "made_on_demand": self.keys_made_on_demand()}

    def _admin_routes(self) -> list[Route]:
        ok = Response(200, {"ok": True})

        def json_object(req: Request) -> dict[str, Any]:
            body = req.json()
            if not isinstance(body, dict):
                raise HttpError(400, "BadParameter", "The body must be a JSON object.")
            return body

        def requests(req: Request, m: re.Match[str]) -> Response:
            if req.method == "DELETE":
                self.clear_log()
                return ok
            if req.method == "PUT":
                bodies = json_object(req).get("bodies")
                if not isinstance(bodies, bool):
                    raise HttpError(400, "BadParameter", 'Send {"bodies": true} or false.')
                self.record_bodies(bodies)
                return ok
            return Response(200, {"requests": self.requests_log()})

        def client(req: Request, m: re.Match[str]) -> Response:
            secret = json_object(req).get("secret")
            try:
                self.register_client(m["client_id"], secret if isinstance(secret, str) else "")
            except ValueError as exc:
                message = f'Send {{"secret": "..."}}, a non-empty string ({exc}).'
                raise HttpError(400, "BadParameter", message) from exc
            return ok

        def faults(req: Request, m: re.Match[str]) -> Response:
            if req.method == "DELETE":
                self.clear_faults()
            else:
                self._faults.add(FaultRule.from_json(req.json()))
            return ok

        def register(req: Request, m: re.Match[str]) -> Response:
            spec = json_object(req)
            add = self.register_cluster if m["kind"] == "clusters" else self.register_vault
            try:
                add(m["sub"], m["rg"], m["name"], **spec)
            except ValueError as exc:
                raise HttpError(400, "BadParameter", str(exc)) from exc
            return ok

        def drop(req: Request, m: re.Match[str]) -> Response:
            store = {
                "secrets": self.drop_secret,
                "certificates": self.drop_certificate,
                "keys": self.drop_key,
            }[m["kind"]]
            if not store(m["name"]):
                raise HttpError(404, "NotFound", f"No {m['kind'][:-1]} named {m['name']}.")
            return ok

        def keys(req: Request, m: re.Match[str]) -> Response:
            if req.method == "POST":
                body = req.json()
                if not isinstance(body, dict):
                    raise HttpError(400, "BadParameter", "The body must be a JSON object.")
                try:
                    size, count = int(body.get("size", 0)), int(body.get("count", 0))
                except (TypeError, ValueError) as exc:
                    raise HttpError(
                        400, "BadParameter", "size and count must be integers."
                    ) from exc
                seconds = self.make_keys(size, count)
                return Response(200, {"made": seconds, **self._keys_made_ahead()})
            return Response(200, self._keys_made_ahead())

        def info(req: Request, m: re.Match[str]) -> Response:
            return Response(200, {"url": self.url, "tenant_id": self.tenant_id})

        triple = r"(?P<sub>[^/]+)/(?P<rg>[^/]+)/(?P<name>[^/]+)"
        return [
            route("GET PUT DELETE", r"/_emulator/requests", requests, "none"),
            route("POST DELETE", r"/_emulator/faults", faults, "none"),
            route("PUT", r"/_emulator/clients/(?P<client_id>[^/]+)", client, "none"),
            route("PUT", r"/_emulator/(?P<kind>clusters|vaults)/" + triple, register, "none"),
            route(
                "DELETE",
                r"/_emulator/keyvault/[^/]+/(?P<kind>secrets|certificates|keys)/(?P<name>[^/]+)",
                drop,
                "none",
            ),
            route("GET POST", r"/_emulator/keys", keys, "none"),
            route("GET", r"/_emulator/info", info, "none"),
        ]
