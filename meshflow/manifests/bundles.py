"""The ordered objects a per-cluster sub-flow applies around ``istioctl install``."""

from __future__ import annotations

from meshflow.manifests._meta import Manifest
from meshflow.manifests.multicluster import (
    reader_cluster_role,
    reader_cluster_role_binding,
    reader_service_account,
    reader_token_secret,
)
from meshflow.manifests.namespaces import (
    echoserver_namespace,
    ingress_namespace,
    istio_system_namespace,
)
from meshflow.manifests.sample import echoserver_deployment, echoserver_service
from meshflow.manifests.secretstore import ingress_secret_provider_class, secret_provider_class
from meshflow.spec import ClusterSpec, MeshSpec


def pre_install_manifests(
    spec: MeshSpec,
    cluster: ClusterSpec,
    *,
    keyvault_name: str,
    tenant_id: str,
    identity_client_id: str,
) -> list[Manifest]:
    """Steps 04-05 (and 20), before ``istioctl install``: namespaces, SecretProviderClasses.

    istiod mounts ``cacerts`` from the SPC at start, and only hot-reloads plug-in certs if it
    started with them, so the SPC must exist first. Where the ingress gateway serves HTTPS
    (:meth:`MeshSpec.serves_tls`), its SPC in ``istio-ingress`` comes too: the gateway is
    installed with the certificate volume from the start, and step 20 finds nothing to do.

    Raises:
        ValueError: an empty Key Vault argument.
    """
    store = {
        "keyvault_name": keyvault_name,
        "tenant_id": tenant_id,
        "identity_client_id": identity_client_id,
    }
    objects = [
        istio_system_namespace(),
        ingress_namespace(spec.istio_revision),
        secret_provider_class(cluster=cluster.name, **store),
    ]
    if spec.serves_tls(cluster):
        objects.append(ingress_secret_provider_class(**store))
    return objects


def post_install_manifests(spec: MeshSpec, cluster: ClusterSpec) -> list[Manifest]:
    """Steps 08 (source side) and 10, after ``istioctl install``.

    The reader account, role, binding and token Secret (the account before its token), then the
    echoserver namespace (labelled, so pods created later are injected), the Service everywhere
    and the Deployment only where ``cluster.sample_workload``.
    """
    rev = spec.istio_revision
    objects = [
        reader_service_account(),
        reader_cluster_role(rev, spec.istio_version),
        reader_cluster_role_binding(rev),
        reader_token_secret(),
        echoserver_namespace(rev),
        echoserver_service(),
    ]
    if cluster.sample_workload:
        objects.append(echoserver_deployment())
    return objects
