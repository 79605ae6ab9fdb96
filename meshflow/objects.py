"""Kubernetes objects as plain dicts: where they live in the REST API, and whether they differ.

Pure: no SDK. :func:`satisfies` is what makes re-runs write nothing: an object is applied only
when the live one lacks something the desired one says. Fields the server adds (defaults,
status, managed fields, a service-account token filled in by the controller) are not a
difference.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# (apiVersion, kind) → (plural, namespaced). Only the kinds meshflow manages: a typo in a
# manifest fails here, before any request, instead of as a 404 from some API server.
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("networking.k8s.io/v1", "Ingress"): ("ingresses", True),
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"): ("secretproviderclasses", True),
    ("networking.istio.io/v1", "Gateway"): ("gateways", True),
    ("networking.istio.io/v1", "VirtualService"): ("virtualservices", True),
    ("networking.istio.io/v1beta1", "Gateway"): ("gateways", True),
    ("networking.istio.io/v1beta1", "VirtualService"): ("virtualservices", True),
    ("install.istio.io/v1alpha1", "IstioOperator"): ("istiooperators", True),
}

_SERVER_OWNED_METADATA = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"}
)


@dataclass(frozen=True)
class ObjectPath:
    """Where an object lives: its collection URL and its own URL."""

    collection: str
    item: str
    describe: str


def object_path(obj: Mapping[str, Any]) -> ObjectPath:
    """The REST paths of ``obj``; ``ValueError`` for kinds meshflow does not manage."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    try:
        plural, namespaced = RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"meshflow does not manage {kind or '?'} ({api_version or '?'})") from None
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name:
        raise ValueError(f"{kind} without metadata.name")
    if namespaced and not namespace:
        raise ValueError(f"{kind} {name!r} needs metadata.namespace")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"{base}/namespaces/{namespace}" if namespaced else base
    where = f"{namespace}/{name}" if namespaced else name
    return ObjectPath(f"{scope}/{plural}", f"{scope}/{plural}/{name}", f"{kind} {where}")


def _secret_data(obj: Mapping[str, Any]) -> dict[str, str]:
    # Compare Secrets by their decoded bytes, whether written as data or stringData.
    data = {k: v for k, v in (obj.get("data") or {}).items()}
    for key, text in (obj.get("stringData") or {}).items():
        data[key] = base64.b64encode(str(text).encode()).decode()
    return data


def _subset(desired: Any, live: Any) -> bool:
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and _subset(v, live[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def satisfies(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``live`` already has everything ``desired`` specifies (so no write is needed).

    Extra fields in ``live`` are fine (server defaults, status, other managers' labels); lists
    must match element by element. Secrets compare their data after decoding ``stringData``.
    """
    desired_meta = {
        k: v for k, v in (desired.get("metadata") or {}).items() if k not in _SERVER_OWNED_METADATA
    }
    if not _subset(desired_meta, live.get("metadata") or {}):
        return False
    body_keys = [k for k in desired if k not in ("apiVersion", "kind", "metadata", "stringData")]
    if desired.get("kind") == "Secret":
        body_keys = [k for k in body_keys if k != "data"]
        if not _subset(_secret_data(desired), live.get("data") or {}):
            return False
    return all(k in live and _subset(desired[k], live[k]) for k in body_keys)
