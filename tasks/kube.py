"""Kubernetes API servers: clients built from in-memory credentials, and the tasks that use them.

A ``kubernetes`` client normally writes a kubeconfig's ``*-data`` fields to temporary files. Here
they go into anonymous in-memory files (``memfd_create``), so no client key or CA ever lands on
disk; the token travels only in the ``Authorization`` header.
"""

from __future__ import annotations

import os
import threading

from kubernetes import client as k8s
from prefect import task

from meshflow.kubeconfig import ClusterAccess
from tasks.aks import cluster_access
from tasks.retry import TRANSIENT_RETRIES

_lock = threading.Lock()
_clients: dict[tuple[str, bool], tuple[ClusterAccess, k8s.ApiClient]] = {}


def _memfile(name: str, data: bytes) -> str:
    # The descriptor stays open for the life of the process-wide client cache.
    fd = os.memfd_create(f"meshflow-{name}", os.MFD_CLOEXEC)
    os.write(fd, data)
    return f"/proc/{os.getpid()}/fd/{fd}"


def api_client_for(access: ClusterAccess) -> k8s.ApiClient:
    """A Kubernetes API client for ``access``, TLS verified against its CA."""
    cfg = k8s.Configuration()
    cfg.host = access.server
    cfg.ssl_ca_cert = _memfile("ca", access.ca_pem)
    cfg.verify_ssl = True
    if access.auth == "token" and access.token:
        cfg.api_key = {"authorization": access.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    elif access.client_cert_pem and access.client_key_pem:
        cfg.cert_file = _memfile("cert", access.client_cert_pem)
        cfg.key_file = _memfile("key", access.client_key_pem)
    else:
        raise ValueError(f"context {access.context!r}: no usable credential ({access.auth})")
    return k8s.ApiClient(cfg)


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


@task(name="list-namespaces", **TRANSIENT_RETRIES)
def list_namespaces(aks_block: str) -> list[str]:
    """List the cluster's namespaces (a read that proves credentials, TLS and RBAC work)."""
    core = k8s.CoreV1Api(api_client(aks_block))
    return sorted(str(ns.metadata.name) for ns in core.list_namespace().items if ns.metadata)
