"""Istio on a cluster (steps 06-07): the pinned istioctl, then ``istioctl install``, as tasks.

Fetching and running the binary is :mod:`tasks.istioctl_binary`; the IstioOperator files and
flags are rendered by :mod:`meshflow.manifests`. An install is recorded (its digest) on the
cluster, so an unchanged one is not run again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from kubernetes import client as k8s
from prefect.cache_policies import CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from meshflow.cache import cache_root
from meshflow.kubeconfig import access_kubeconfig
from meshflow.manifests import (
    ISTIO_NAMESPACE,
    MULTIROOT_ISTIOD_ENV,
    MULTIROOT_PROXY_ENV,
    istio_operator_files,
    istioctl_install_flags,
    istiod_deployment_name,
)
from meshflow.plan import PlannedChange
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import cluster_access
from tasks.blocking import blocking_task
from tasks.istioctl_binary import cached_istioctl, ensure_istioctl, run_istioctl_install
from tasks.kube_client import api_client, apply_object, request_json

INSTALL_RECORD = "meshflow-istio-install"
"""ConfigMap in ``istio-system`` recording the digest of the last successful install."""

INSTALL_TIMEOUT = 600.0


class IstioInstall(BaseModel):
    """What ``install-istio`` did on one cluster."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    revision: str
    version: str
    digest: str
    action: Literal["installed", "unchanged"]
    seconds: float = 0.0
    other_revisions: tuple[str, ...] = ()
    """Revisions of istiod found beside this one (left alone: canary upgrades come later)."""


def install_digest(flags: list[str], files: dict[str, str]) -> str:
    """A short digest of exactly what istioctl would be asked to do."""
    canonical = json.dumps({"flags": flags, "files": files}, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:20]


def _record(revision: str, version: str, digest: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": INSTALL_RECORD,
            "namespace": ISTIO_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "meshflow"},
        },
        "data": {"revision": revision, "version": version, "digest": digest},
    }


def fetch(version: str) -> str:
    """Step 06: the pinned istioctl of ``version`` on this machine, downloaded and verified once.

    Returns its path (``MESHFLOW_ISTIOCTL``'s if set). Idempotent: cached per host, version and
    binary (see :func:`_binary_key`), so a run shows it ``Cached`` once the binary is there.

    Raises:
        IstioError: see :func:`~tasks.istioctl_binary.ensure_istioctl`.
    """
    return str(ensure_istioctl(version, cache_dir=cache_root()))


def _binary_key(context: Any, parameters: dict[str, Any]) -> str:
    """This host, the version and the verified binary already there (or "absent")."""
    version = str(parameters["version"])
    present = cached_istioctl(version, cache_dir=cache_root())
    return f"istioctl:{socket.gethostname()}:{version}:{present or 'absent'}"


def install_on_cluster(spec: MeshSpec, cluster: ClusterSpec, istioctl: str) -> IstioInstall:
    """Step 07 on one cluster: ``istioctl install`` with the rendered files, unless done.

    Where the ingress gateway serves HTTPS, the files give it the certificate volume of step 20,
    so the re-install the runbook does there is this same call (unchanged: no install).
    ``istioctl`` is the binary :func:`fetch` gave. Idempotent: the digest of flags and
    IstioOperator files is recorded after a successful install; a run with the same digest (and
    istiod present) makes no call and no write. Needs cluster-admin on the cluster.

    Raises:
        IstioInstallError: istioctl failed (its output tail, secrets redacted, in the message).
    """
    aks_block, name = cluster.aks_block, cluster.name
    files = istio_operator_files(spec, cluster, ingress_certificates=spec.serves_tls(cluster))
    flags = istioctl_install_flags(spec)
    digest = install_digest(flags, files)
    rev, version = spec.istio_revision, spec.istio_version
    api = api_client(aks_block)
    record = request_json(
        api, "GET", f"/api/v1/namespaces/{ISTIO_NAMESPACE}/configmaps/{INSTALL_RECORD}"
    )
    istiod = request_json(
        api,
        "GET",
        f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/{istiod_deployment_name(rev)}",
    )
    others = _other_revisions(api, rev)
    done = record is not None and (record.get("data") or {}).get("digest") == digest
    if done and istiod is not None:
        return IstioInstall(
            cluster=name, revision=rev, version=version, digest=digest, action="unchanged",
            other_revisions=others,
        )  # fmt: skip
    result = run_istioctl_install(
        Path(istioctl),
        cluster=name,
        kubeconfig_text=access_kubeconfig(cluster_access(aks_block)),
        args=flags,
        files=files,
        timeout=INSTALL_TIMEOUT,
    )
    apply_object(api, _record(rev, version, digest), cluster=name)
    return IstioInstall(
        cluster=name,
        revision=rev,
        version=version,
        digest=digest,
        action="installed",
        seconds=result.seconds,
        other_revisions=others,
    )


def _other_revisions(api: k8s.ApiClient, revision: str) -> tuple[str, ...]:
    """The ``istio.io/rev`` of every istiod Deployment in istio-system other than ``revision``."""
    found = request_json(
        api, "GET", f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments",
        query={"labelSelector": "app=istiod"},
    ) or {}  # fmt: skip
    revisions = {
        str(((d.get("metadata") or {}).get("labels") or {}).get("istio.io/rev") or "default")
        for d in found.get("items", [])
    }
    return tuple(sorted(revisions - {revision}))


# -- The steps as Prefect tasks --------------------------------------------------------------


def plan_install(spec: MeshSpec, cluster: ClusterSpec) -> PlannedChange | None:
    """Whether :func:`install_on_cluster` would run ``istioctl install`` now, and why. A read."""
    files = istio_operator_files(spec, cluster, ingress_certificates=spec.serves_tls(cluster))
    digest = install_digest(istioctl_install_flags(spec), files)
    api = api_client(cluster.aks_block)
    record = request_json(
        api, "GET", f"/api/v1/namespaces/{ISTIO_NAMESPACE}/configmaps/{INSTALL_RECORD}"
    )
    name = istiod_deployment_name(spec.istio_revision)
    istiod = request_json(
        api, "GET", f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/{name}"
    )
    if record is None or istiod is None:
        reason = "Istio is not installed (revision " + spec.istio_revision + ")"
    elif (record.get("data") or {}).get("digest") != digest:
        reason = "the IstioOperator files or flags changed since the last install"
    else:
        return None
    return PlannedChange(system="Istio", target=cluster.name, object=f"istioctl install ({name})",
                         change="install", reason=reason)  # fmt: skip


def multiroot_problem(cluster: ClusterSpec, revision: str) -> str | None:
    """Why ``cluster``'s istiod could not take a second root without restarts; None if it can.

    Reads the live ``istiod-<rev>`` Deployment (``ISTIO_MULTIROOT_MESH=true``) and the mesh
    config of the revision (``defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT``), which the
    install of this meshflow version sets. A read.
    """
    api = api_client(cluster.aks_block)
    name = istiod_deployment_name(revision)
    deployment = request_json(
        api, "GET", f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/{name}"
    )
    if deployment is None:
        return f"{cluster.name}: no Deployment {ISTIO_NAMESPACE}/{name}; run `meshflow install`"
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    env = {e.get("name"): e.get("value") for c in containers for e in c.get("env") or []}
    mesh_cm = request_json(
        api, "GET", f"/api/v1/namespaces/{ISTIO_NAMESPACE}/configmaps/istio-{revision}"
    )
    mesh = yaml.safe_load(((mesh_cm or {}).get("data") or {}).get("mesh") or "") or {}
    proxy = ((mesh.get("defaultConfig") or {}).get("proxyMetadata")) or {}
    missing = [f"{MULTIROOT_ISTIOD_ENV}=true on {name}"] if env.get(MULTIROOT_ISTIOD_ENV) != (
        "true"
    ) else []  # fmt: skip
    if proxy.get(MULTIROOT_PROXY_ENV) != "true":
        missing.append(f"{MULTIROOT_PROXY_ENV}=true in the proxies' proxyMetadata")
    if missing:
        return (
            f"{cluster.name}: {' and '.join(missing)} not set; run `meshflow install` first "
            "(it sets both), then rotate the root"
        )
    return None


fetch_istioctl = blocking_task(
    "fetch-istioctl",
    task_run_name="fetch-istioctl-{version}",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=_binary_key),
    cache_expiration=dt.timedelta(days=1),
)(fetch)
install_istio = blocking_task("install-istio", task_run_name="install-istio-{cluster.name}")(
    install_on_cluster
)
check_multiroot = blocking_task("check-multiroot", task_run_name="check-multiroot-{cluster.name}")(
    multiroot_problem
)
plan_istio_install = blocking_task(
    "plan-istio-install", task_run_name="plan-istio-install-{cluster.name}"
)(plan_install)
