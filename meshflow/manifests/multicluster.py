"""Remote secrets (step 08), shaped exactly as ``istioctl create-remote-secret`` makes them.

In the *source* cluster: the reader ServiceAccount, its ClusterRole and ClusterRoleBinding (as
Istio's chart renders them: ``manifests/charts/istio-control/istio-discovery/templates/
reader-clusterrole.yaml`` and ``reader-clusterrolebinding.yaml``) and a long-lived token Secret
(``getOrCreateServiceAccountSecret`` in ``istioctl/pkg/multicluster/remote_secret.go``; since
Kubernetes 1.24 nothing creates it for you). In every *other* cluster: the remote secret
(``createRemoteServiceAccountSecret`` in the same file).
"""

from __future__ import annotations

import base64
import re
from typing import Any

from meshflow.kubeconfig import parse_kubeconfig
from meshflow.manifests._meta import ISTIO_NAMESPACE, Manifest, metadata

READER_SERVICE_ACCOUNT = "istio-reader-service-account"
READER_TOKEN_SECRET = f"{READER_SERVICE_ACCOUNT}-istio-remote-secret-token"
REMOTE_SECRET_PREFIX = "istio-remote-secret-"  # noqa: S105 - a name prefix
MULTICLUSTER_SECRET_LABEL = "istio/multiCluster"  # noqa: S105 - a label key
"""The label istiod's secret controller watches (``MultiClusterSecretLabel``)."""
CLUSTER_NAME_ANNOTATION = "networking.istio.io/cluster"
"""``clusterNameAnnotationKey`` in ``istioctl/pkg/multicluster``."""
SERVICE_ACCOUNT_NAME_ANNOTATION = "kubernetes.io/service-account.name"
MCS_API_GROUP = "multicluster.x-k8s.io"
_READER_LABELS = {"app": "istio-reader", "app.kubernetes.io/name": "istio-reader"}
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_READ = ["get", "list", "watch"]


def reader_cluster_role_name(revision: str) -> str:
    """``istio-reader-clusterrole-<rev>-istio-system``: the chart's name with a revision."""
    return f"istio-reader-clusterrole-{revision}-{ISTIO_NAMESPACE}"


def reader_service_account() -> Manifest:
    """Step 08: ServiceAccount ``istio-reader-service-account`` in ``istio-system``.

    ``istioctl install`` renders the same account; applying it again is harmless.
    """
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(READER_SERVICE_ACCOUNT, ISTIO_NAMESPACE, labels=_READER_LABELS),
    }


def reader_rules() -> list[dict[str, Any]]:
    """What a remote istiod reads, as Istio's ``reader-clusterrole.yaml`` grants it.

    Without ``istiodRemote``: read Istio config and the objects service discovery watches
    (endpoint slices, pods, services, nodes, namespaces, secrets for remote credentials...),
    create/delete MCS service exports, and create token and access reviews.
    """
    return [
        {
            "apiGroups": [
                "config.istio.io",
                "security.istio.io",
                "networking.istio.io",
                "authentication.istio.io",
                "rbac.istio.io",
                "telemetry.istio.io",
                "extensions.istio.io",
            ],
            "resources": ["*"],
            "verbs": list(_READ),
        },
        {
            "apiGroups": [""],
            "resources": [
                "endpoints",
                "pods",
                "services",
                "nodes",
                "replicationcontrollers",
                "namespaces",
                "secrets",
                "configmaps",
            ],
            "verbs": list(_READ),
        },
        {
            "apiGroups": ["networking.istio.io"],
            "resources": ["workloadentries"],
            "verbs": list(_READ),
        },
        {
            "apiGroups": ["networking.x-k8s.io", "gateway.networking.k8s.io"],
            "resources": ["gateways"],
            "verbs": list(_READ),
        },
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": list(_READ),
        },
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": list(_READ)},
        {
            "apiGroups": [MCS_API_GROUP],
            "resources": ["serviceexports"],
            "verbs": [*_READ, "create", "delete"],
        },
        {"apiGroups": [MCS_API_GROUP], "resources": ["serviceimports"], "verbs": list(_READ)},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": list(_READ)},
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]


def reader_cluster_role(revision: str) -> Manifest:
    """Step 08: ClusterRole ``istio-reader-clusterrole-<rev>-istio-system``."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": metadata(reader_cluster_role_name(revision), labels=_READER_LABELS),
        "rules": reader_rules(),
    }


def reader_cluster_role_binding(revision: str) -> Manifest:
    """Step 08: binds the reader ClusterRole (same name) to the reader ServiceAccount."""
    name = reader_cluster_role_name(revision)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": metadata(name, labels=_READER_LABELS),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": READER_SERVICE_ACCOUNT, "namespace": ISTIO_NAMESPACE}
        ],
    }


def reader_token_secret() -> Manifest:
    """Step 08: the reader's long-lived token, filled in by the token controller.

    Same name, type and annotation as istioctl's; the controller adds ``token`` and ``ca.crt``.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            READER_TOKEN_SECRET,
            ISTIO_NAMESPACE,
            annotations={SERVICE_ACCOUNT_NAME_ANNOTATION: READER_SERVICE_ACCOUNT},
        ),
        "type": "kubernetes.io/service-account-token",
    }


def remote_secret_name(source_cluster: str) -> str:
    """``istio-remote-secret-<source>``."""
    return REMOTE_SECRET_PREFIX + source_cluster


def remote_secret(*, source_cluster: str, kubeconfig: str) -> Manifest:
    """Step 08: the secret that lets every other cluster's istiod read ``source_cluster``.

    One ``data`` key, ``source_cluster`` (its ``clusterName``), holding ``kubeconfig`` (build it
    with :func:`meshflow.kubeconfig.token_kubeconfig`). istioctl prints ``stringData`` for
    review; the API server stores it as ``data``, which is written here directly so that a
    read-back compares equal.

    Raises:
        ValueError: ``source_cluster`` is not a DNS-1123 label (it names the Secret, istioctl
            checks the same), or ``kubeconfig`` does not authenticate with a token (istiod
            rejects exec, auth-provider and client-key kubeconfigs by default).
    """
    if not _DNS1123_LABEL.match(source_cluster) or len(source_cluster) > 63:
        raise ValueError(f"cluster name {source_cluster!r} is not a DNS-1123 label")
    access = parse_kubeconfig(kubeconfig)
    if access.auth != "token":
        raise ValueError(
            f"remote secret for {source_cluster!r}: the kubeconfig uses {access.auth}, "
            "istiod accepts token kubeconfigs only; use the reader service account's token"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            remote_secret_name(source_cluster),
            ISTIO_NAMESPACE,
            labels={MULTICLUSTER_SECRET_LABEL: "true"},
            annotations={CLUSTER_NAME_ANNOTATION: source_cluster},
        ),
        "type": "Opaque",
        "data": {source_cluster: base64.b64encode(kubeconfig.encode()).decode()},
    }
