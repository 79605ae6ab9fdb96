"""The namespaces the runbook creates (steps 04, 05 and 10)."""

from __future__ import annotations

from meshflow.manifests._meta import (
    ECHOSERVER_NAMESPACE,
    INGRESS_NAMESPACE,
    ISTIO_NAMESPACE,
    REVISION_LABEL,
    Manifest,
    metadata,
)


def namespace(name: str, *, labels: dict[str, str] | None = None) -> Manifest:
    """A ``v1`` Namespace called ``name`` with ``labels``."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(name, labels=labels)}


def istio_system_namespace() -> Manifest:
    """Step 04: ``istio-system``, home of istiod, its SecretProviderClass and remote secrets.

    No revision label: istiod's own namespace is not injected.
    """
    return namespace(ISTIO_NAMESPACE)


def ingress_namespace(revision: str) -> Manifest:
    """Step 05: ``istio-ingress``, labelled ``istio.io/rev=<revision>``.

    The ingress gateway uses ``injectionTemplate: gateway``, so its pods are built by the
    sidecar injector of ``revision``; the label selects that injector.
    """
    return namespace(INGRESS_NAMESPACE, labels={REVISION_LABEL: revision})


def echoserver_namespace(revision: str) -> Manifest:
    """Step 10: ``echoserver``, labelled ``istio.io/rev=<revision>`` in every cluster."""
    return namespace(ECHOSERVER_NAMESPACE, labels={REVISION_LABEL: revision})
