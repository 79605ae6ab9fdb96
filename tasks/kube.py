"""Kubernetes API servers: clients built from in-memory credentials, and the tasks that use them.

A ``kubernetes`` client normally writes a kubeconfig's ``*-data`` fields to temporary files. Here
they go into anonymous in-memory files (``memfd_create``), so no client key or CA ever lands on
disk; the token travels only in the ``Authorization`` header.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Literal, NamedTuple, TypeVar

import urllib3
from kubernetes import client as k8s
from pydantic import BaseModel, ConfigDict

from meshflow.errors import ConflictError, InvalidError, MeshflowError
from meshflow.kubeconfig import ClusterAccess, parse_kubeconfig, token_kubeconfig
from meshflow.manifests import (
    ISTIO_NAMESPACE,
    READER_TOKEN_SECRET,
    cross_cluster_call_job,
    remote_secret,
    remote_secret_name,
)
from meshflow.objects import object_path, satisfies
from tasks.aks import cluster_access
from tasks.blocking import blocking_task
from tasks.retry import is_transient
from tasks.sdk_errors import kube_connection_error, kube_status_error

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_clients: dict[tuple[str, bool], tuple[ClusterAccess, k8s.ApiClient]] = {}
_memfiles_lock = threading.Lock()  # separate: api_client builds clients while holding _lock
_memfiles: dict[bytes, str] = {}


def _memfile(name: str, data: bytes) -> str:
    # One descriptor per distinct content, kept open for the life of the process: clients built
    # again and again (one per remote-secret check) reuse it instead of opening a new one.
    key = hashlib.sha256(name.encode() + b"\0" + data).digest()
    with _memfiles_lock:
        if key not in _memfiles:
            fd = os.memfd_create(f"meshflow-{name}", os.MFD_CLOEXEC)
            os.write(fd, data)
            _memfiles[key] = f"/proc/{os.getpid()}/fd/{fd}"
        return _memfiles[key]


def api_client_for(access: ClusterAccess) -> k8s.ApiClient:
    """A Kubernetes API client for ``access``, TLS verified against its CA.

    Errors of its calls (:func:`request_json`) name the cluster by the credentials' context.
    """
    cfg = k8s.Configuration()
    cfg.host = access.server
    cfg.meshflow_cluster = access.context  # read back by cluster_of()
    cfg.ssl_ca_cert = _memfile("ca", access.ca_pem)
    cfg.verify_ssl = True
    if access.auth == "token" and access.token:
        cfg.api_key = {"authorization": access.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    elif access.client_cert_pem and access.client_key_pem:
        cfg.cert_file = _memfile("cert", access.client_cert_pem)
        cfg.key_file = _memfile("key", access.client_key_pem)
    else:
        raise InvalidError(
            f"context {access.context!r}: no usable credential ({access.auth}); istiod and "
            "meshflow need a token or a client certificate",
            system="Kubernetes", target=access.context,
        )  # fmt: skip
    return k8s.ApiClient(cfg)


def cluster_of(api: k8s.ApiClient) -> str:
    """The cluster an API client talks to, as its errors name it."""
    return str(getattr(api.configuration, "meshflow_cluster", "") or api.configuration.host)


def api_client(aks_block: str, *, admin: bool = True) -> k8s.ApiClient:
    """The cached API client of a cluster, rebuilt when its credentials were refreshed."""
    access = cluster_access(aks_block, admin=admin)
    key = (aks_block, admin)
    with _lock:
        cached = _clients.get(key)
        if cached and cached[0] is access:
            return cached[1]
        api = api_client_for(access)
        _clients[key] = (access, api)
        return api


def namespaces(aks_block: str) -> list[str]:
    """The cluster's namespace names: a read that proves credentials, TLS and RBAC work."""
    reply = request_json(api_client(aks_block), "GET", "/api/v1/namespaces") or {}
    return sorted(str(ns["metadata"]["name"]) for ns in reply.get("items", []))


list_namespaces = blocking_task("list-namespaces")(namespaces)


# -- Generic, no-op-aware apply ------------------------------------------------------------

FIELD_MANAGER = "meshflow"
Action = Literal["created", "updated", "unchanged"]


class KubeError(MeshflowError):
    """A cluster is not in the state a step needs, for a reason retrying will not fix."""


class Applied(BaseModel):
    """The outcome of applying one object: what, where, and whether anything was written."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    object: str
    action: Action


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


def apply_object(api: k8s.ApiClient, obj: dict[str, Any], *, cluster: str) -> Applied:
    """Create ``obj``, or server-side apply it if the live object differs; else write nothing.

    Idempotent: a converged object costs one GET. Conflicting create races are retried by
    reading again.

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


def apply_all(aks_block: str, cluster: str, manifests: list[dict[str, Any]]) -> list[Applied]:
    """Apply public (non-secret) ``manifests`` in order to the cluster of ``aks_block``.

    Idempotent: writes only differences (see :func:`apply_object`).
    """
    api = api_client(aks_block)
    return [apply_object(api, obj, cluster=cluster) for obj in manifests]


apply_manifests = blocking_task("apply-manifests", task_run_name="apply-manifests-{cluster}")(
    apply_all
)


# -- Remote secrets: the istio-reader identity and its token kubeconfig ---------------------

TOKEN_WAIT = 30.0


def reader_token(api: k8s.ApiClient, *, cluster: str) -> tuple[str, bytes]:
    """The istio-reader token and the cluster CA, once the token controller has filled them.

    Held in memory by the caller only; never returned from a task.
    """
    path = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{READER_TOKEN_SECRET}"
    deadline = time.monotonic() + TOKEN_WAIT
    while True:
        secret = request_json(api, "GET", path) or {}
        data = secret.get("data") or {}
        if data.get("token") and data.get("ca.crt"):
            return base64.b64decode(data["token"]).decode(), base64.b64decode(data["ca.crt"])
        if time.monotonic() > deadline:
            raise KubeError(
                f"cluster {cluster!r}: {READER_TOKEN_SECRET} has no token after "
                f"{TOKEN_WAIT:.0f}s; is the token controller (kube-controller-manager) running?"
            )
        time.sleep(0.1)


JOIN_THREADS = 16
"""At most this many remote-secret writes or checks run at once in one flow process (each
check opens 4 connections of its own); the join's tasks share them, so a large mesh queues
instead of opening thousands of connections."""

_join_pool = ThreadPoolExecutor(max_workers=JOIN_THREADS, thread_name_prefix="meshflow-join")


def _each(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(i) for i in items]``, concurrently on the join's threads, in the caller's context.

    Every item runs to its end. The error raised is a transient one if there is one (so the
    task's retry policy retries it), else the first; the others are attached to it as notes.
    """
    futures = [_join_pool.submit(contextvars.copy_context().run, fn, i) for i in items]
    wait(futures)
    failures = [exc for f in futures if (exc := f.exception()) is not None]
    if not failures:
        return [f.result() for f in futures]
    raised = next((e for e in failures if is_transient(e)), failures[0])
    for other in failures:
        if other is not raised:
            raised.add_note(f"also failed: {_brief(other)}")
    raise raised


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def exchange_from(
    source_block: str, source: str, targets: Sequence[tuple[str, str]]
) -> list[Applied]:
    """Step 08 from one source: write ``istio-remote-secret-<source>`` into every target.

    ``targets`` are (AKS block, cluster name) pairs. What ``istioctl create-remote-secret
    --context <source>`` applied to each other cluster does: the source's reader token is read
    once and the same token kubeconfig is written into every target, concurrently. The token
    goes from the source API server to the target API servers through this process's memory
    only. Idempotent: a retry after a partial failure reports the secrets the failed attempt
    wrote as unchanged. One task per source, not per pair: a mesh of N clusters has N of these
    instead of N x (N - 1) task runs.
    """
    if not targets:
        return []
    source_api = api_client(source_block)
    token, ca_pem = reader_token(source_api, cluster=source)
    server = cluster_access(source_block).server
    kubeconfig = token_kubeconfig(cluster_name=source, server=server, ca_pem=ca_pem, token=token)
    secret = remote_secret(source_cluster=source, kubeconfig=kubeconfig)

    def write(target: tuple[str, str]) -> Applied:
        return apply_object(api_client(target[0]), secret, cluster=target[1])

    return _each(write, targets)


exchange_remote_secrets = blocking_task(
    "exchange-remote-secrets", task_run_name="exchange-remote-secrets-from-{source}"
)(exchange_from)


# -- Validation ------------------------------------------------------------------------------

# What istiod needs to read in a remote cluster (its informers list and watch these).
READER_NEEDS: tuple[tuple[str, str], ...] = (
    ("", "pods"),
    ("", "services"),
    ("", "endpoints"),
    ("", "namespaces"),
    ("", "nodes"),
    ("", "secrets"),
    ("", "configmaps"),
    ("discovery.k8s.io", "endpointslices"),
)
REVIEWED = ("list", "watch")


class RemoteAccess(BaseModel):
    """What one remote secret in ``target`` grants on ``source``."""

    model_config = ConfigDict(frozen=True)
    source: str
    target: str
    present: bool
    reachable: bool
    read_ok: bool
    missing: tuple[str, ...] = ()
    detail: str = ""


def _access_review(api: k8s.ApiClient, verb: str, group: str, resource: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}},
    }
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    reply = request_json(api, "POST", path, body=review) or {}
    return bool((reply.get("status") or {}).get("allowed"))


class _Reach(NamedTuple):
    """What one kubeconfig reaches: the source at all, and which of istiod's reads it lacks."""

    reachable: bool
    missing: tuple[str, ...]
    detail: str


def _stored_kubeconfig(target_block: str, source: str) -> str | None:
    """The kubeconfig in ``source``'s remote secret stored in the target, or None if absent."""
    path = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{remote_secret_name(source)}"
    stored = request_json(api_client(target_block), "GET", path)
    if stored is None:
        return None
    return base64.b64decode((stored.get("data") or {}).get(source, "")).decode()


def _reader_access(kubeconfig: str) -> _Reach:
    """Reach the source API server with ``kubeconfig`` exactly as istiod would, and review."""
    access = parse_kubeconfig(kubeconfig)
    reader = api_client_for(access)
    needs = [(verb, group, resource) for group, resource in READER_NEEDS for verb in REVIEWED]
    try:
        # 16 independent round trips to the source cluster: asked 4 at a time (4 connections).
        with ThreadPoolExecutor(4, thread_name_prefix="meshflow-review") as pool:
            allowed = list(pool.map(lambda n: _access_review(reader, *n), needs))
    except MeshflowError as exc:
        return _Reach(False, (), f"cannot use it against {access.server}: {exc}")
    finally:
        reader.close()  # type: ignore[no-untyped-call]
    missing = tuple(
        f"{verb} {group or 'core'}/{resource}"
        for (verb, group, resource), ok in zip(needs, allowed, strict=True)
        if not ok
    )
    return _Reach(True, missing, "" if missing else "reader can list and watch what istiod needs")


def check_from(source: str, targets: Sequence[tuple[str, str]]) -> list[RemoteAccess]:
    """Step 09 for one source: its remote secret in each target reaches it with reader rights.

    From the API side, what ``istioctl remote-clusters`` in each target reports about
    ``source``: the stored kubeconfig authenticates to the source (TLS verified with its own
    CA), whose reader may list and watch what istiod needs. A read. The exchange writes one
    kubeconfig into every target, and the same bytes (server, CA, token) get the same answers:
    identical copies are reviewed once, so a source costs 16 access reviews rather than 16 per
    target. A copy that differs (a stale token, an edit) is reviewed on its own, and each
    target's copy is read.
    """
    stored = _each(lambda t: _stored_kubeconfig(t[0], source), targets)
    distinct = sorted({text for text in stored if text is not None})
    reach = dict(zip(distinct, _each(_reader_access, distinct), strict=True))
    results = []
    for (_, target), text in zip(targets, stored, strict=True):
        if text is None:
            results.append(RemoteAccess(source=source, target=target, present=False,
                                        reachable=False, read_ok=False,
                                        detail="remote secret missing"))  # fmt: skip
            continue
        r = reach[text]
        results.append(RemoteAccess(source=source, target=target, present=True,
                                    reachable=r.reachable, read_ok=r.reachable and not r.missing,
                                    missing=r.missing, detail=r.detail))  # fmt: skip
    return results


check_remote_secrets = blocking_task(
    "check-remote-secrets", task_run_name="check-remote-secrets-of-{source}"
)(check_from)


class DataPlaneCheck(BaseModel):
    """A check that needs running pods: its outcome, or why it was not run."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    check: str
    status: Literal["passed", "failed", "not run"]
    detail: str


def istiod_sync(aks_block: str, cluster: str, revision: str, peers: list[str]) -> DataPlaneCheck:
    """Step 09's ``istioctl remote-clusters``, natively: are all ``peers`` synced in istiod?

    Reads istiod's ``/debug/clusterz`` through the API server's pod proxy; "not run" without a
    running istiod. A read.
    """
    api = api_client(aks_block)
    pods = (
        request_json(
            api,
            "GET",
            f"/api/v1/namespaces/{ISTIO_NAMESPACE}/pods",
            query={"labelSelector": f"app=istiod,istio.io/rev={revision}"},
        )
        or {}
    )
    running = [
        p for p in pods.get("items", []) if (p.get("status") or {}).get("phase") == "Running"
    ]
    if not running:
        return DataPlaneCheck(cluster=cluster, check="istiod sync", status="not run",
                              detail="no running istiod (no nodes to run pods)")  # fmt: skip
    name = running[0]["metadata"]["name"]
    proxy = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/pods/{name}:15014/proxy/debug/clusterz"
    reply = request_json(api, "GET", proxy)
    clusters: list[Any] = reply if isinstance(reply, list) else []
    status = {str(c.get("ID")): str(c.get("SyncStatus", "")) for c in clusters}
    unsynced = [f"{p}={status.get(p, 'absent')}" for p in peers if status.get(p) != "synced"]
    detail = f"not synced: {', '.join(unsynced)}" if unsynced else f"{len(peers)} peers synced"
    status_word: Literal["passed", "failed"] = "failed" if unsynced else "passed"
    return DataPlaneCheck(cluster=cluster, check="istiod sync", status=status_word, detail=detail)


check_istiod_sync = blocking_task("check-istiod-sync", task_run_name="check-istiod-sync-{cluster}")(
    istiod_sync
)


def count_nodes(aks_block: str) -> int:
    """How many nodes the cluster has (0 in the sandbox: no kubelet)."""
    reply = request_json(api_client(aks_block), "GET", "/api/v1/nodes") or {}
    return len(reply.get("items", []))


def call_across(aks_block: str, cluster: str, timeout: float = 120.0) -> DataPlaneCheck:
    """Step 11: a Job in ``cluster`` curls ``echoserver:8080``, served by another cluster.

    Without nodes nothing can run, so the check reports "not run" instead of passing. Writes
    the Job (replaced on each run: its pod template is immutable).
    """
    if count_nodes(aks_block) == 0:
        return DataPlaneCheck(cluster=cluster, check="cross-cluster call", status="not run",
                              detail="no nodes: the Job's pod cannot run")  # fmt: skip
    api = api_client(aks_block)
    job = cross_cluster_call_job()
    path = object_path(job)
    if request_json(api, "GET", path.item) is not None:  # a Job's pod template is immutable
        request_json(api, "DELETE", path.item, query={"propagationPolicy": "Background"})
    apply_object(api, job, cluster=cluster)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (request_json(api, "GET", path.item) or {}).get("status") or {}
        if status.get("succeeded"):
            return DataPlaneCheck(cluster=cluster, check="cross-cluster call", status="passed",
                                  detail="echoserver answered from the other cluster")  # fmt: skip
        if status.get("failed"):
            break
        time.sleep(2)
    return DataPlaneCheck(cluster=cluster, check="cross-cluster call", status="failed",
                          detail=f"the call Job did not succeed within {timeout:.0f}s")  # fmt: skip


call_echoserver_across = blocking_task(
    "call-echoserver-across", task_run_name="call-echoserver-across-from-{cluster}"
)(call_across)
