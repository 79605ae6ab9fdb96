"""Kubernetes API clients from in-memory credentials, and the one call all requests go through.

A ``kubernetes`` client normally writes a kubeconfig's ``*-data`` fields to temporary files. Here
they go into anonymous in-memory files (``memfd_create``) that belong to the client and are
closed with it: no client key or CA ever lands on disk, and a token travels only in the
``Authorization`` header. The clients of the clusters' admin credentials are kept per process
(:mod:`blocks.runtime`) and rebuilt when the credentials are fetched again; the old one is
closed then. :func:`request_json` is the boundary: what an API server or the network does wrong
comes out as a :mod:`meshflow.errors` error that names the cluster.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from pydantic import BaseModel, ConfigDict

from blocks.runtime import RUNTIME, Memo
from meshflow.errors import ConflictError, InvalidError
from meshflow.kubeconfig import ClusterAccess
from meshflow.objects import object_path, satisfies
from tasks.aks import cluster_access
from tasks.sdk_errors import kube_connection_error, kube_status_error

FIELD_MANAGER = "meshflow"
Action = Literal["created", "updated", "unchanged", "kept", "deleted"]
"""What :func:`apply_object` did; ``kept``: it differs, but in a co-owner's fields, left alone."""


class KubeClient(k8s.ApiClient):
    """An API client for one set of credentials; it owns their in-memory files.

    Errors of its calls (:func:`request_json`) name the cluster by the credentials' context.

    Raises:
        InvalidError: the credentials hold neither a token nor a client certificate.
    """

    def __init__(self, access: ClusterAccess) -> None:
        self._fds: list[int] = []
        cfg = k8s.Configuration()
        cfg.host = access.server
        cfg.meshflow_cluster = access.context  # read back by cluster_of()
        cfg.ssl_ca_cert = self._memfile("ca", access.ca_pem)
        cfg.verify_ssl = True
        if access.auth == "token" and access.token:
            cfg.api_key = {"authorization": access.token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        elif access.client_cert_pem and access.client_key_pem:
            cfg.cert_file = self._memfile("cert", access.client_cert_pem)
            cfg.key_file = self._memfile("key", access.client_key_pem)
        else:
            self._close_files()
            raise InvalidError(
                f"context {access.context!r}: no usable credential ({access.auth}); istiod and "
                "meshflow need a token or a client certificate",
                system="Kubernetes", target=access.context,
            )  # fmt: skip
        super().__init__(cfg)

    def _memfile(self, name: str, data: bytes) -> str:
        fd = os.memfd_create(f"meshflow-{name}", os.MFD_CLOEXEC)
        self._fds.append(fd)
        os.write(fd, data)
        return f"/proc/{os.getpid()}/fd/{fd}"

    def _close_files(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        """Close the connection pool and the credentials' in-memory files."""
        try:
            super().close()  # type: ignore[no-untyped-call]
        finally:
            self._close_files()


def api_client_for(access: ClusterAccess) -> KubeClient:
    """A Kubernetes API client for ``access``, TLS verified against its CA; close it after use."""
    return KubeClient(access)


def cluster_of(api: k8s.ApiClient) -> str:
    """The cluster an API client talks to, as its errors name it."""
    return str(getattr(api.configuration, "meshflow_cluster", "") or api.configuration.host)


_CLIENTS: Memo[tuple[ClusterAccess, KubeClient]] = RUNTIME.memo(
    "kube-clients", close=lambda entry: entry[1].close()
)


def api_client(aks_block: str, *, admin: bool = True) -> KubeClient:
    """The process's API client of a cluster, rebuilt when its credentials were fetched again."""
    access = cluster_access(aks_block, admin=admin)
    entry = _CLIENTS.get(
        (aks_block, admin),
        lambda: (access, api_client_for(access)),
        valid=lambda cached: cached[0] is access,
    )
    return entry[1]


class Applied(BaseModel):
    """The outcome of applying one object: what, where, and whether anything was written."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    object: str
    action: Action

    @property
    def written(self) -> bool:
        """Whether this apply wrote the object (``kept`` and ``unchanged`` wrote nothing)."""
        return self.action in ("created", "updated", "deleted")


def request_json(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
    what: str | None = None,
) -> Any:
    """One authenticated REST call; the decoded JSON reply, or None for 404 on GET.

    The boundary to every Kubernetes API server: failures come out as meshflow errors naming
    the cluster and ``what`` (default: the path), never as the client's exceptions.

    Raises:
        TransientError: the API server is unreachable, or answered 408, 429 or 5xx.
        ConflictError: 409 (the object changed, or exists).
        ForbiddenError, NotFoundError, InvalidError: 401/403, 404 (not on GET), 400/422.
    """
    params = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()) or None,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    obj = what or path
    try:
        resp = api.call_api(*params)
        resp.read()  # type: ignore[no-untyped-call]
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise kube_connection_error(
            exc, cluster=cluster_of(api), server=api.configuration.host, method=method, obj=obj
        ) from exc
    if method == "GET" and resp.status == 404:
        return None
    if not 200 <= resp.status <= 299:
        body_text = (resp.data or b"").decode(errors="replace")
        raise kube_status_error(
            resp.status, body_text, str(resp.reason or ""),
            cluster=cluster_of(api), method=method, obj=obj,
        )  # fmt: skip
    return json.loads(resp.data) if resp.data else None


CO_OWNERS: frozenset[str] = frozenset({"istio-operator"})
"""Field managers whose fields meshflow never takes over (server-side apply's ``force``).

``istio-operator`` is what ``istioctl install`` applies as (``fieldOwnerOperator`` in istio/istio
``operator/pkg/install/install.go``, with force): it renders objects meshflow also applies (the
reader ClusterRole). Were meshflow to force its copy, the two would take each other's fields on
every run. Other managers' fields (``kubectl edit``; meshflow's own create, which the server
records as an ``Update`` by ``meshflow``) are taken.
"""


def _changed_fields(desired: Any, live: Any, owned: dict[str, Any], at: str) -> list[str]:
    """The paths under ``at`` that ``owned`` covers and where ``desired`` is not ``live``.

    ``owned`` is one manager's FieldsV1 tree at ``at``. A map it owns key by key is followed
    key by key (owning only its presence, ``.``, owns none of its keys); a node it owns whole
    (``{}``: a scalar, an atomic list such as ``rules``) or in parts meshflow cannot tell apart
    (a list's ``k:``/``v:``/``i:`` items) counts as one field, changed unless it equals the
    live value.
    """
    if not owned or not isinstance(desired, dict):
        return [] if desired == live else [at]
    have = live if isinstance(live, dict) else {}
    paths = []
    for key, want in desired.items():
        sub = owned.get(f"f:{key}")
        if sub is not None:
            paths += _changed_fields(want, have.get(key), sub, f"{at}.{key}")
    return paths


def co_owned_changes(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, list[str]]:
    """The fields ``desired`` would change in ``live`` that a co-owner (:data:`CO_OWNERS`) owns.

    Read from ``live``'s ``metadata.managedFields``: manager → paths as server-side apply names
    them in a conflict (``.rules``, ``.metadata.labels.app``). Empty when applying ``desired``
    would take nothing from a co-owner. Pure.
    """
    changes: dict[str, list[str]] = {}
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        manager = str(entry.get("manager") or "")
        owned = entry.get("fieldsV1")
        if manager not in CO_OWNERS or not isinstance(owned, dict):
            continue
        paths = _changed_fields(body, live, owned, "")
        if paths:
            known = changes.setdefault(manager, [])
            known += [p for p in paths if p not in known]
    return changes


def apply_object(api: k8s.ApiClient, obj: dict[str, Any], *, cluster: str) -> Applied:
    """Create ``obj``, or server-side apply it if the live object differs; else write nothing.

    Idempotent: a converged object costs one GET. Conflicting create races are retried by
    reading again. An object whose apply would change a field a co-owner manages
    (:data:`CO_OWNERS`, e.g. the reader ClusterRole ``istioctl install`` applied with other
    rules; see :func:`co_owned_changes`) is not written at all, its other differences
    included, and comes back ``kept``: it is the co-owner's to change, and a re-run writes
    nothing. Otherwise the apply is forced: other managers' fields are meshflow's to restore.

    Raises:
        InvalidError, ForbiddenError, NotFoundError: the server rejected the object (400/422,
            403, 404 on create), naming the cluster and the object.
        TransientError: see :func:`request_json`.
    """
    path = object_path(obj)
    what = path.describe
    live = request_json(api, "GET", path.item, what=what)
    if live is None:
        try:
            request_json(
                api, "POST", path.collection, body=obj,
                query={"fieldManager": FIELD_MANAGER}, what=what,
            )  # fmt: skip
            return Applied(cluster=cluster, object=what, action="created")
        except ConflictError:
            live = request_json(api, "GET", path.item, what=what) or {}
    if satisfies(live, obj):
        return Applied(cluster=cluster, object=what, action="unchanged")
    if co_owned_changes(live, obj):
        return Applied(cluster=cluster, object=what, action="kept")
    request_json(
        api,
        "PATCH",
        path.item,
        body=obj,
        query={"fieldManager": FIELD_MANAGER, "force": "true"},
        content_type="application/apply-patch+yaml",
        what=what,
    )
    return Applied(cluster=cluster, object=what, action="updated")
