"""Kubernetes: the steps that act on the clusters (apply, remote secrets, checks) as tasks.

Tasks take the cluster as its :class:`~meshflow.spec.ClusterSpec`; the clients and the request
boundary are in :mod:`tasks.kube_client`. Every write is idempotent (see
:func:`~tasks.kube_client.apply_object`).
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Literal, NamedTuple, TypeVar

from kubernetes import client as k8s
from pydantic import BaseModel, ConfigDict

from blocks.runtime import RUNTIME
from meshflow.appgateway import ingress_ip
from meshflow.errors import ForbiddenError, MeshflowError, NotFoundError
from meshflow.kubeconfig import ClusterAccess, KubeconfigError, parse_kubeconfig, token_kubeconfig
from meshflow.manifests import (
    ISTIO_NAMESPACE,
    READER_TOKEN_SECRET,
    SECRET_PROVIDER_CLASS,
    cross_cluster_call_job,
    departed_sources,
    managed_remote_secret_selector,
    remote_secret,
    remote_secret_name,
)
from meshflow.manifests.ingress import tls_gateway
from meshflow.manifests.install import istiod_deployment_name
from meshflow.manifests.multicluster import (
    READER_INTERIM_TOKEN_SECRET,
    ReaderTokenSecret,
    reader_token_generation,
    rotated_reader_token_secret,
)
from meshflow.objects import object_path, satisfies
from meshflow.plan import Change, PlannedChange
from meshflow.rotation import IstiodRestart, MountCheck, restart_reason, stale_mounts
from meshflow.spec import ClusterSpec
from tasks.aks import cluster_access
from tasks.blocking import blocking_task
from tasks.kube_client import (
    Applied,
    api_client,
    api_client_for,
    apply_object,
    co_owned_changes,
    request_json,
)
from tasks.retry import is_transient

__all__ = [
    "Applied",
    "DataPlaneCheck",
    "IngressState",
    "KubeError",
    "RemoteAccess",
    "apply_manifests",
    "call_echoserver_across",
    "check_istiod_sync",
    "check_remote_secrets",
    "count_cluster_nodes",
    "delete_reader_token",
    "ensure_reader_token",
    "exchange_reader_token",
    "exchange_remote_secrets",
    "list_namespaces",
    "read_ingress_state",
    "read_reader_tokens",
]

T = TypeVar("T")
R = TypeVar("R")


class KubeError(MeshflowError):
    """A cluster is not in the state a step needs, for a reason retrying will not fix."""


def namespaces(cluster: ClusterSpec) -> list[str]:
    """The cluster's namespace names: a read that proves credentials, TLS and RBAC work."""
    reply = request_json(api_client(cluster.aks_block), "GET", "/api/v1/namespaces") or {}
    return sorted(str(ns["metadata"]["name"]) for ns in reply.get("items", []))


def apply_all(cluster: ClusterSpec, manifests: list[dict[str, Any]]) -> list[Applied]:
    """Apply public (non-secret) ``manifests`` in order to ``cluster``.

    Idempotent: writes only differences (see :func:`~tasks.kube_client.apply_object`).
    """
    api = api_client(cluster.aks_block)
    return [apply_object(api, obj, cluster=cluster.name) for obj in manifests]


# -- Remote secrets: the istio-reader identity and its token kubeconfig ---------------------

TOKEN_WAIT = 30.0


def _token_secret_path(name: str) -> str:
    return f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{name}"


def _filled(api: k8s.ApiClient, name: str, wait: float) -> dict[str, Any] | None:
    """Token Secret ``name`` once the token controller filled its token and CA.

    None if it has not within ``wait`` seconds, or does not exist. A read.
    """
    deadline = time.monotonic() + wait
    while True:
        secret = request_json(api, "GET", _token_secret_path(name)) or {}
        data = secret.get("data") or {}
        if data.get("token") and data.get("ca.crt"):
            return secret
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _token_and_ca(secret: dict[str, Any]) -> tuple[str, bytes]:
    data = secret["data"]
    return base64.b64decode(data["token"]).decode(), base64.b64decode(data["ca.crt"])


def reader_token(api: k8s.ApiClient, *, cluster: str) -> tuple[str, bytes]:
    """The istio-reader token and the cluster CA, once the token controller has filled them.

    Held in memory by the caller only; never returned from a task.
    """
    secret = _filled(api, READER_TOKEN_SECRET, TOKEN_WAIT)
    if secret is None:
        raise KubeError(
            f"cluster {cluster!r}: {READER_TOKEN_SECRET} has no token after "
            f"{TOKEN_WAIT:.0f}s; is the token controller (kube-controller-manager) running?"
        )
    return _token_and_ca(secret)


JOIN_THREADS = 16
"""At most this many remote-secret writes or checks run at once in one flow process (each
check opens 4 connections of its own); the join's tasks share them, so a large mesh queues
instead of opening thousands of connections."""


def _each(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(i) for i in items]``, concurrently on the join's threads, in the caller's context.

    Every item runs to its end. The error raised is a transient one if there is one (so the
    task's retry policy retries it), else the first; the others are attached to it as notes.
    """
    pool = RUNTIME.pool("join", JOIN_THREADS)
    futures = [pool.submit(contextvars.copy_context().run, fn, i) for i in items]
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


def exchange_from(source: ClusterSpec, targets: Sequence[ClusterSpec]) -> list[Applied]:
    """Step 08 from one source: write ``istio-remote-secret-<source>`` into every target.

    What ``istioctl create-remote-secret
    --context <source>`` applied to each other cluster does: the source's reader token is read
    once and the same token kubeconfig is written into every target, concurrently. The token
    goes from the source API server to the target API servers through this process's memory
    only. Idempotent: a retry after a partial failure reports the secrets the failed attempt
    wrote as unchanged. One task per source, not per pair: a mesh of N clusters has N of these
    instead of N x (N - 1) task runs.
    """
    if not targets:
        return []
    token, ca_pem = reader_token(api_client(source.aks_block), cluster=source.name)
    return _write_remote_secrets(source, targets, token, ca_pem)


def _write_remote_secrets(
    source: ClusterSpec, targets: Sequence[ClusterSpec], token: str, ca_pem: bytes
) -> list[Applied]:
    """``istio-remote-secret-<source>`` holding ``token`` into every target, concurrently."""
    name = source.name
    server = cluster_access(source.aks_block).server
    kubeconfig = token_kubeconfig(cluster_name=name, server=server, ca_pem=ca_pem, token=token)
    secret = remote_secret(source_cluster=name, kubeconfig=kubeconfig)

    def write(target: ClusterSpec) -> Applied:
        return apply_object(api_client(target.aks_block), secret, cluster=target.name)

    return _each(write, targets)


def prune_departed(cluster: ClusterSpec, members: Sequence[str]) -> list[Applied]:
    """Delete from ``cluster`` the remote secrets of sources that left the mesh; what it deleted.

    Only secrets meshflow wrote (label ``app.kubernetes.io/managed-by: meshflow``) whose source
    is not in ``members`` are deleted; istiod then drops that cluster. Idempotent: a secret
    already gone is not reported again.
    """
    api = api_client(cluster.aks_block)
    path = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets"
    listed = request_json(
        api, "GET", path, query={"labelSelector": managed_remote_secret_selector()},
        what=f"remote secrets in {ISTIO_NAMESPACE}",
    )  # fmt: skip
    names = [str(i["metadata"]["name"]) for i in (listed or {}).get("items", [])]
    deleted = []
    for name in departed_sources(names, set(members)):
        what = f"Secret {ISTIO_NAMESPACE}/{name}"
        try:
            request_json(api, "DELETE", f"{path}/{name}", what=what)
        except NotFoundError:
            continue  # deleted since the listing (a retry, or another run)
        deleted.append(Applied(cluster=cluster.name, object=what, action="deleted"))
    return deleted


# -- Validation ------------------------------------------------------------------------------

# What istiod needs to read in a remote cluster (its informers list and watch these). Not
# configmaps: since Istio 1.27 istiod reads none from remote clusters (istio/istio#56838).
READER_NEEDS: tuple[tuple[str, str], ...] = (
    ("", "pods"),
    ("", "services"),
    ("", "endpoints"),
    ("", "namespaces"),
    ("", "nodes"),
    ("", "secrets"),
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


def _stored_kubeconfig(target: ClusterSpec, source: str) -> str | None:
    """The kubeconfig in ``source``'s remote secret stored in ``target``, or None if absent."""
    path = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{remote_secret_name(source)}"
    stored = request_json(api_client(target.aks_block), "GET", path)
    if stored is None:
        return None
    return base64.b64decode((stored.get("data") or {}).get(source, "")).decode()


def _reader_access(kubeconfig: str) -> _Reach:
    """Reach the source API server with ``kubeconfig`` exactly as istiod would, and review."""
    access = parse_kubeconfig(kubeconfig)
    reader = api_client_for(access)
    needs = [(verb, group, resource) for group, resource in READER_NEEDS for verb in REVIEWED]
    try:
        # 14 independent round trips to the source cluster: asked 4 at a time (4 connections).
        with ThreadPoolExecutor(4, thread_name_prefix="meshflow-review") as pool:
            allowed = list(pool.map(lambda n: _access_review(reader, *n), needs))
    except MeshflowError as exc:
        return _Reach(False, (), f"cannot use it against {access.server}: {exc}")
    finally:
        reader.close()
    missing = tuple(
        f"{verb} {group or 'core'}/{resource}"
        for (verb, group, resource), ok in zip(needs, allowed, strict=True)
        if not ok
    )
    return _Reach(True, missing, "" if missing else "reader can list and watch what istiod needs")


def check_from(source: ClusterSpec, targets: Sequence[ClusterSpec]) -> list[RemoteAccess]:
    """Step 09 for one source: its remote secret in each target reaches it with reader rights.

    From the API side, what ``istioctl remote-clusters`` in each target reports about
    ``source``: the stored kubeconfig authenticates to the source (TLS verified with its own
    CA), whose reader may list and watch what istiod needs. A read. The exchange writes one
    kubeconfig into every target, and the same bytes (server, CA, token) get the same answers:
    identical copies are reviewed once, so a source costs 14 access reviews rather than 14 per
    target. A copy that differs (a stale token, an edit) is reviewed on its own, and each
    target's copy is read.
    """
    stored = _each(lambda t: _stored_kubeconfig(t, source.name), targets)
    distinct = sorted({text for text in stored if text is not None})
    reach = dict(zip(distinct, _each(_reader_access, distinct), strict=True))
    results = []
    for target_spec, text in zip(targets, stored, strict=True):
        target, name = target_spec.name, source.name
        if text is None:
            results.append(RemoteAccess(source=name, target=target, present=False,
                                        reachable=False, read_ok=False,
                                        detail="remote secret missing"))  # fmt: skip
            continue
        r = reach[text]
        results.append(RemoteAccess(source=name, target=target, present=True,
                                    reachable=r.reachable, read_ok=r.reachable and not r.missing,
                                    missing=r.missing, detail=r.detail))  # fmt: skip
    return results


class DataPlaneCheck(BaseModel):
    """A check that needs running pods: its outcome, or why it was not run."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    check: str
    status: Literal["passed", "failed", "not run"]
    detail: str


def istiod_sync(cluster: ClusterSpec, revision: str, peers: Sequence[str]) -> DataPlaneCheck:
    """Step 09's ``istioctl remote-clusters``, natively: are all ``peers`` synced in istiod?

    Reads istiod's ``/debug/clusterz`` through the API server's pod proxy; "not run" without a
    running istiod. A read.
    """
    api = api_client(cluster.aks_block)
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
        return DataPlaneCheck(cluster=cluster.name, check="istiod sync", status="not run",
                              detail="no running istiod (no nodes to run pods)")  # fmt: skip
    name = running[0]["metadata"]["name"]
    proxy = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/pods/{name}:15014/proxy/debug/clusterz"
    reply = request_json(api, "GET", proxy)
    clusters: list[Any] = reply if isinstance(reply, list) else []
    status = {str(c.get("ID")): str(c.get("SyncStatus", "")) for c in clusters}
    unsynced = [f"{p}={status.get(p, 'absent')}" for p in peers if status.get(p) != "synced"]
    detail = f"not synced: {', '.join(unsynced)}" if unsynced else f"{len(peers)} peers synced"
    status_word: Literal["passed", "failed"] = "failed" if unsynced else "passed"
    return DataPlaneCheck(
        cluster=cluster.name, check="istiod sync", status=status_word, detail=detail
    )


def count_nodes(aks_block: str) -> int:
    """How many nodes the cluster has (0 in the sandbox: no kubelet)."""
    reply = request_json(api_client(aks_block), "GET", "/api/v1/nodes") or {}
    return len(reply.get("items", []))


def node_count(cluster: ClusterSpec) -> int:
    """How many nodes ``cluster`` has: whether any pod (istiod, a probe) can run there. A read."""
    return count_nodes(cluster.aks_block)


def call_across(cluster: ClusterSpec, timeout: float = 120.0) -> DataPlaneCheck:
    """Step 11: a Job in ``cluster`` curls ``echoserver:8080``, served by another cluster.

    Without nodes nothing can run, so the check reports "not run" instead of passing. Writes
    the Job (replaced on each run: its pod template is immutable).
    """
    name = cluster.name
    if count_nodes(cluster.aks_block) == 0:
        return DataPlaneCheck(cluster=name, check="cross-cluster call", status="not run",
                              detail="no nodes: the Job's pod cannot run")  # fmt: skip
    api = api_client(cluster.aks_block)
    job = cross_cluster_call_job()
    path = object_path(job)
    if request_json(api, "GET", path.item) is not None:  # a Job's pod template is immutable
        request_json(api, "DELETE", path.item, query={"propagationPolicy": "Background"})
    apply_object(api, job, cluster=name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (request_json(api, "GET", path.item) or {}).get("status") or {}
        if status.get("succeeded"):
            return DataPlaneCheck(cluster=name, check="cross-cluster call", status="passed",
                                  detail="echoserver answered from the other cluster")  # fmt: skip
        if status.get("failed"):
            break
        time.sleep(2)
    return DataPlaneCheck(cluster=name, check="cross-cluster call", status="failed",
                          detail=f"the call Job did not succeed within {timeout:.0f}s")  # fmt: skip


# -- Ingress: what the cluster already serves ------------------------------------------------

AGIC_DEPLOYMENT = "ingress-appgw-deployment"
"""The AKS ingress-appgw add-on's controller, in ``kube-system``."""


class IngressState(BaseModel):
    """What an ingress cluster runs and serves before the ingress steps write anything."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    nodes: int
    serves_tls: bool  # the live Gateway is already step 21's
    agic_ready: bool  # the AGIC add-on's controller has a ready pod


def ingress_state(cluster: ClusterSpec) -> IngressState:
    """Nodes, the live Gateway's protocol and the AGIC controller's readiness. A read."""
    api = api_client(cluster.aks_block)
    gateway = tls_gateway()
    live = request_json(api, "GET", object_path(gateway).item)
    agic = request_json(
        api, "GET", f"/apis/apps/v1/namespaces/kube-system/deployments/{AGIC_DEPLOYMENT}"
    )
    return IngressState(
        cluster=cluster.name,
        nodes=count_nodes(cluster.aks_block),
        serves_tls=live is not None and satisfies(live, gateway),
        agic_ready=int(((agic or {}).get("status") or {}).get("readyReplicas") or 0) > 0,
    )


def ingress_ip_of(cluster: ClusterSpec, ingress: dict[str, Any]) -> str | None:
    """The address a controller wrote into the live ``ingress``'s status, if any. A read."""
    return ingress_ip(request_json(api_client(cluster.aks_block), "GET", object_path(ingress).item))


# -- Rotation: new Key Vault versions reaching the pods --------------------------------------

SPC_STATUS_API = "/apis/secrets-store.csi.x-k8s.io/v1"
ROOT_CONFIGMAP = "istio-ca-root-cert"
"""The ConfigMap istiod writes its root into, in every namespace (``root-cert.pem``)."""
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
ROTATION_RUN_ANNOTATION = "meshflow.io/rotation-run"


def mounted_versions(
    cluster: ClusterSpec, namespace: str, expected: dict[str, str], wait_seconds: float
) -> MountCheck:
    """Wait (bounded) until every pod mounting ``istio-tls`` in ``namespace`` holds ``expected``.

    Reads the CSI driver's ``SecretProviderClassPodStatus`` objects: one per pod and mount, each
    listing the ``<type>/<name>`` id and Key Vault version of every mounted object. Without a
    pod that mounts it the check is "not run: no pods". A read.
    """
    api = api_client(cluster.aks_block)
    path = f"{SPC_STATUS_API}/namespaces/{namespace}/secretproviderclasspodstatuses"
    deadline = time.monotonic() + wait_seconds
    while True:
        reply = request_json(api, "GET", path, what=f"SecretProviderClassPodStatus in {namespace}")
        mine = [
            i for i in (reply or {}).get("items", [])
            if (i.get("status") or {}).get("secretProviderClassName") == SECRET_PROVIDER_CLASS
        ]  # fmt: skip
        if not mine:
            return MountCheck(
                cluster=cluster.name, namespace=namespace, status="not run: no pods",
                detail=f"no pod mounts {SECRET_PROVIDER_CLASS} (no nodes to run pods)",
            )  # fmt: skip
        stale = stale_mounts(mine, expected)
        if not stale:
            return MountCheck(
                cluster=cluster.name, namespace=namespace, status="current", pods=len(mine),
                detail=f"{len(mine)} pods hold the new versions",
            )  # fmt: skip
        if time.monotonic() >= deadline:
            shown = ", ".join(stale[:4]) + (f" (+{len(stale) - 4})" if len(stale) > 4 else "")
            return MountCheck(
                cluster=cluster.name, namespace=namespace, status="stale", pods=len(mine),
                detail=f"after {wait_seconds:.0f}s still old: {shown}",
            )  # fmt: skip
        time.sleep(min(5.0, max(0.2, wait_seconds / 20)))


def restart_istiod(
    cluster: ClusterSpec, revision: str, root_pem: str, *, mounts_stale: bool,
    restart_on_timeout: bool, run_id: str, dry_run: bool = False,
) -> IstiodRestart:  # fmt: skip
    """Restart ``istiod-<rev>`` (a rollout, as ``kubectl rollout restart``) only where needed.

    Needed where istiod did not start with the plug-in CA (its ``istio-ca-root-cert`` is not the
    mesh root: it does not hot-reload ``/etc/cacerts`` then), or where its mounts stayed stale
    and ``restart_on_timeout``. "not run: no pods" without a ready istiod. Idempotent per
    rotation run: the rollout is annotated with ``run_id`` and not repeated by its retries.

    Raises:
        KubeError: the cluster has no ``istiod-<rev>`` (install the mesh first).
    """
    api = api_client(cluster.aks_block)
    name = istiod_deployment_name(revision)
    path = f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/{name}"
    deployment = request_json(api, "GET", path, what=f"Deployment {ISTIO_NAMESPACE}/{name}")
    if deployment is None:
        raise KubeError(
            f"cluster {cluster.name!r} has no Deployment {ISTIO_NAMESPACE}/{name}; install the "
            "mesh first (`meshflow install`)"
        )
    if not (deployment.get("status") or {}).get("readyReplicas"):
        return IstiodRestart(
            cluster=cluster.name, deployment=name, action="not run: no pods",
            reason="no ready istiod pod (no nodes to run pods); it loads the new CA when it starts",
        )  # fmt: skip
    template = (deployment.get("spec") or {}).get("template") or {}
    if ((template.get("metadata") or {}).get("annotations") or {}).get(
        ROTATION_RUN_ANNOTATION
    ) == run_id:
        return IstiodRestart(cluster=cluster.name, deployment=name, action="restarted",
                             reason="restarted earlier in this rotation run")  # fmt: skip
    cm_path = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/configmaps/{ROOT_CONFIGMAP}"
    served = ((request_json(api, "GET", cm_path) or {}).get("data") or {}).get("root-cert.pem", "")
    reason = restart_reason(
        served_root=served, root_pem=root_pem, mounts_stale=mounts_stale,
        restart_on_timeout=restart_on_timeout,
    )  # fmt: skip
    if reason is None:
        return IstiodRestart(cluster=cluster.name, deployment=name, action="not needed",
                             reason="istiod reloads /etc/cacerts by itself")  # fmt: skip
    if dry_run:
        return IstiodRestart(cluster=cluster.name, deployment=name, action="would restart",
                             reason=reason)  # fmt: skip
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT: stamp, ROTATION_RUN_ANNOTATION: run_id,
    }}}}}  # fmt: skip
    request_json(api, "PATCH", path, body=patch, what=f"Deployment {ISTIO_NAMESPACE}/{name}",
                 content_type="application/strategic-merge-patch+json")  # fmt: skip
    return IstiodRestart(cluster=cluster.name, deployment=name, action="restarted", reason=reason)


# -- Reader-token rotation: a new token into every remote secret before the old one goes -----


def reader_token_secrets(source: ClusterSpec) -> dict[str, int]:
    """The reader token Secrets ``source`` has, by name, with their generations. A read.

    Only the two names a rotation uses (istioctl's and the interim one, see
    :func:`~meshflow.manifests.multicluster.reader_token_hops`); a Secret without the
    generation label is generation 0.

    Raises:
        KubeError: ``source`` has neither (the mesh is not installed there).
    """
    api = api_client(source.aks_block)
    found = {}
    for name in (READER_TOKEN_SECRET, READER_INTERIM_TOKEN_SECRET):
        what = f"Secret {ISTIO_NAMESPACE}/{name}"
        live = request_json(api, "GET", _token_secret_path(name), what=what)
        if live is not None:
            found[name] = reader_token_generation(live)
    if not found:
        raise KubeError(
            f"cluster {source.name!r} has no {READER_TOKEN_SECRET}: there is no reader token "
            "to rotate; install the mesh first (`meshflow install`)"
        )
    return found


def _rotation_token(
    api: k8s.ApiClient, cluster: str, token: ReaderTokenSecret
) -> tuple[str, bytes]:
    """``token``'s token and CA once filled, if the Secret is still of ``token.generation``.

    Held in memory by the caller only; never returned from a task.

    Raises:
        KubeError: the Secret is missing or unfilled after :data:`TOKEN_WAIT`, or it is of
            another generation (it changed since the run read it).
    """
    secret = _filled(api, token.name, TOKEN_WAIT)
    if secret is None:
        raise KubeError(
            f"cluster {cluster!r}: {token.name} has no token after {TOKEN_WAIT:.0f}s (missing, "
            "or the token controller is not running); run the rotation again"
        )
    if (found := reader_token_generation(secret)) != token.generation:
        raise KubeError(
            f"cluster {cluster!r}: {token.name} is of generation {found}, not "
            f"{token.generation}: it changed since this run read it; run the rotation again"
        )
    return _token_and_ca(secret)


def _accepted(access: ClusterAccess, wait: float) -> bool:
    """Whether the API server of ``access`` accepts its token within ``wait`` seconds."""
    client = api_client_for(access)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                request_json(client, "GET", "/api", what="the API server's discovery")
                return True
            except ForbiddenError:  # 401 until this API server has seen the Secret
                if time.monotonic() > deadline:
                    return False
            time.sleep(0.1)
    finally:
        client.close()


def new_reader_token(source: ClusterSpec, token: ReaderTokenSecret) -> Applied:
    """Create reader token Secret ``token`` in ``source`` unless it exists; wait until it works.

    Waits (bounded by :data:`TOKEN_WAIT`) until the token controller filled it and the source
    API server accepts its token: an API server learns of a new Secret through its own cache,
    and the check that follows must not judge the token before then (if it still does not,
    the check fails and nothing is deleted). Idempotent: an existing Secret of that name is
    kept as it is, and reported unchanged. Needs create and get on Secrets in
    ``istio-system`` of ``source``.

    Raises:
        KubeError: see :func:`_rotation_token`.
        InvalidError, ForbiddenError, TransientError: see :func:`~tasks.kube_client.apply_object`.
    """
    api = api_client(source.aks_block)
    what = f"Secret {ISTIO_NAMESPACE}/{token.name}"
    if request_json(api, "GET", _token_secret_path(token.name), what=what) is None:
        applied = apply_object(api, rotated_reader_token_secret(token), cluster=source.name)
    else:
        applied = Applied(cluster=source.name, object=what, action="unchanged")
    value, ca_pem = _rotation_token(api, source.name, token)
    server = cluster_access(source.aks_block).server
    access = ClusterAccess(
        context=source.name, server=server, ca_pem=ca_pem, auth="token", token=value
    )
    _accepted(access, TOKEN_WAIT)
    return applied


def exchange_token(
    source: ClusterSpec, targets: Sequence[ClusterSpec], token: ReaderTokenSecret
) -> list[Applied]:
    """Step 08 with reader token Secret ``token``: its token into every target's remote secret.

    :func:`exchange_from` with a chosen token Secret, which must still be of
    ``token.generation``: ``istio-remote-secret-<source>`` written into every target,
    concurrently, the token passing through this process's memory only. Idempotent.

    Raises:
        KubeError: see :func:`_rotation_token` (nothing written then).
        InvalidError, ForbiddenError, TransientError: see :func:`~tasks.kube_client.apply_object`.
    """
    if not targets:
        return []
    value, ca_pem = _rotation_token(api_client(source.aks_block), source.name, token)
    return _write_remote_secrets(source, targets, value, ca_pem)


def _token_in(kubeconfig: str) -> str | None:
    """The token a stored kubeconfig authenticates with; None if it does not parse."""
    try:
        return parse_kubeconfig(kubeconfig).token
    except KubeconfigError:
        return None  # istiod cannot use it either: it holds no token that works


def retire_token(
    source: ClusterSpec, targets: Sequence[ClusterSpec], token: ReaderTokenSecret
) -> Applied:
    """Delete reader token Secret ``token`` from ``source`` unless a remote secret holds it.

    The last step of each rotation step, once every remote secret holds the new token and
    was checked. Just before the delete, each target's ``istio-remote-secret-<source>`` is
    read again and compared with the token to be deleted: while one holds it, nothing is
    deleted. The delete is conditional on the Secret's uid, so a Secret made under that name
    since the read is never deleted. Idempotent: a Secret already gone is reported unchanged.
    Needs get and delete on Secrets in ``istio-system`` of ``source``, get on Secrets in
    ``istio-system`` of every target.

    Raises:
        KubeError: a remote secret still holds its token, or the Secret is of another
            generation than ``token`` (it changed since the run read it); nothing deleted.
        ConflictError: the Secret was replaced between the read and the delete (retried).
    """
    api = api_client(source.aks_block)
    what = f"Secret {ISTIO_NAMESPACE}/{token.name}"
    path = _token_secret_path(token.name)
    live = request_json(api, "GET", path, what=what)
    if live is None:
        return Applied(cluster=source.name, object=what, action="unchanged")
    if (found := reader_token_generation(live)) != token.generation:
        raise KubeError(
            f"cluster {source.name!r}: not deleting {token.name}: it is of generation {found}, "
            f"not {token.generation} (it changed since this run read it); run the rotation again"
        )
    value = base64.b64decode((live.get("data") or {}).get("token") or "").decode()
    stored = _each(lambda t: _stored_kubeconfig(t, source.name), targets)
    holders = [
        t.name for t, text in zip(targets, stored, strict=True)
        if value and text is not None and _token_in(text) == value
    ]  # fmt: skip
    if holders:
        raise KubeError(
            f"cluster {source.name!r}: not deleting {token.name}: "
            f"{remote_secret_name(source.name)} in {', '.join(holders)} still holds its token; "
            "run the rotation again"
        )
    preconditions = {"apiVersion": "v1", "kind": "DeleteOptions",
                     "preconditions": {"uid": live["metadata"]["uid"]}}  # fmt: skip
    try:
        request_json(api, "DELETE", path, body=preconditions, what=what)
    except NotFoundError:
        return Applied(cluster=source.name, object=what, action="unchanged")
    return Applied(cluster=source.name, object=what, action="deleted")


# -- Plan: what the apply and the exchange would write, read only -----------------------------


def plan_manifests(cluster: ClusterSpec, manifests: list[dict[str, Any]]) -> list[PlannedChange]:
    """What :func:`apply_all` would write for ``manifests`` now: one GET per object.

    Absent: created; present but lacking a field meshflow sets: updated, unless the field
    belongs to istioctl (then left alone, as the apply leaves it).
    """
    api, changes = api_client(cluster.aks_block), []
    for obj in manifests:
        path = object_path(obj)
        live = request_json(api, "GET", path.item, what=path.describe)
        if live is None:
            change, reason = "create", "absent"
        elif satisfies(live, obj) or co_owned_changes(live, obj):
            continue
        else:
            change, reason = "update", "differs from what meshflow sets"
        planned = PlannedChange(
            system="Kubernetes", target=cluster.name, object=path.describe, change=change,
            reason=reason,
        )  # fmt: skip
        changes.append(planned)
    return changes


def plan_secrets(cluster: ClusterSpec, members: Sequence[ClusterSpec]) -> list[PlannedChange]:
    """The remote secrets ``cluster`` would receive or lose in the join: read only.

    One per other member: created when absent, updated when its kubeconfig names another API
    server than the source's current one (its token is checked by the join's check, not here);
    and those meshflow wrote for clusters no longer in ``members``: deleted.
    """
    api = api_client(cluster.aks_block)
    base = f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets"
    changes = []

    def add(name: str, change: Change, reason: str) -> None:
        changes.append(PlannedChange(system="Kubernetes", target=cluster.name,
                                     object=f"Secret {ISTIO_NAMESPACE}/{name}", change=change,
                                     reason=reason))  # fmt: skip

    for source in members:
        if source.name == cluster.name:
            continue
        name = remote_secret_name(source.name)
        stored = request_json(api, "GET", f"{base}/{name}")
        if stored is None:
            add(name, "create", f"lets istiod read {source.name}")
            continue
        text = base64.b64decode((stored.get("data") or {}).get(source.name, "") or b"")
        server = cluster_access(source.aks_block).server
        try:
            held = parse_kubeconfig(text).server
        except KubeconfigError:
            held = ""
        if held != server:
            add(name, "update", f"it names {held or 'no server'}, {source.name} is at {server}")
    listed = request_json(
        api, "GET", base, query={"labelSelector": managed_remote_secret_selector()}
    )
    names = [str(i["metadata"]["name"]) for i in (listed or {}).get("items", [])]
    for name in departed_sources(names, {m.name for m in members}):
        add(name, "delete", "its cluster left the mesh")
    return changes


# -- The steps as Prefect tasks --------------------------------------------------------------

list_namespaces = blocking_task("list-namespaces", task_run_name="list-namespaces-{cluster.name}")(
    namespaces
)
apply_manifests = blocking_task("apply-manifests", task_run_name="apply-manifests-{cluster.name}")(
    apply_all
)
exchange_remote_secrets = blocking_task(
    "exchange-remote-secrets", task_run_name="exchange-remote-secrets-from-{source.name}"
)(exchange_from)
check_remote_secrets = blocking_task(
    "check-remote-secrets", task_run_name="check-remote-secrets-of-{source.name}"
)(check_from)
check_istiod_sync = blocking_task(
    "check-istiod-sync", task_run_name="check-istiod-sync-{cluster.name}"
)(istiod_sync)
count_cluster_nodes = blocking_task("count-nodes", task_run_name="count-nodes-{cluster.name}")(
    node_count
)
call_echoserver_across = blocking_task(
    "call-echoserver-across", task_run_name="call-echoserver-across-from-{cluster.name}"
)(call_across)
read_ingress_state = blocking_task(
    "read-ingress-state", task_run_name="read-ingress-state-{cluster.name}"
)(ingress_state)
wait_for_mounts = blocking_task(
    "wait-for-mounts", task_run_name="wait-for-mounts-{cluster.name}-{namespace}"
)(mounted_versions)
restart_istiod_where_needed = blocking_task(
    "restart-istiod", task_run_name="restart-istiod-{cluster.name}"
)(restart_istiod)
prune_remote_secrets = blocking_task(
    "prune-remote-secrets", task_run_name="prune-remote-secrets-in-{cluster.name}"
)(prune_departed)
read_reader_tokens = blocking_task(
    "read-reader-tokens", task_run_name="read-reader-tokens-of-{source.name}"
)(reader_token_secrets)
ensure_reader_token = blocking_task(
    "ensure-reader-token", task_run_name="ensure-reader-token-{token.generation}-of-{source.name}"
)(new_reader_token)
exchange_reader_token = blocking_task(
    "exchange-reader-token",
    task_run_name="exchange-reader-token-{token.generation}-from-{source.name}",
)(exchange_token)
delete_reader_token = blocking_task(
    "delete-reader-token", task_run_name="delete-reader-token-{token.generation}-of-{source.name}"
)(retire_token)
plan_objects = blocking_task("plan-objects", task_run_name="plan-objects-{cluster.name}")(
    plan_manifests
)
plan_remote_secrets = blocking_task(
    "plan-remote-secrets", task_run_name="plan-remote-secrets-in-{cluster.name}"
)(plan_secrets)
