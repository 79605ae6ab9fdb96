"""Kubernetes objects and IstioOperator files of the runbook, as plain JSON-ready dicts.

Pure and deterministic: the same input gives the same objects, with no SDK, no clock and no
I/O, so flows can diff, log and apply them and tests can check them as tables. Names and fields
follow ``docs/runbook.md`` and the Istio sources each module cites.
"""

from meshflow.manifests._meta import (
    ECHOSERVER_NAMESPACE,
    INGRESS_NAMESPACE,
    ISTIO_NAMESPACE,
    REVISION_LABEL,
    Manifest,
    to_yaml,
)
from meshflow.manifests.bundles import (
    post_install_manifests,
    pre_install_manifests,
)
from meshflow.manifests.install import (
    INGRESS_GATEWAY,
    INGRESS_GATEWAY_LABELS,
    MULTIROOT_ISTIOD_ENV,
    MULTIROOT_PROXY_ENV,
    aks_node_affinity,
    istio_operator,
    istio_operator_documents,
    istio_operator_files,
    istioctl_install_flags,
    istiod_deployment_name,
)
from meshflow.manifests.multicluster import (
    CLUSTER_NAME_ANNOTATION,
    MANAGED_BY_LABEL,
    MULTICLUSTER_SECRET_LABEL,
    READER_SERVICE_ACCOUNT,
    READER_TOKEN_SECRET,
    departed_sources,
    managed_remote_secret_selector,
    reader_cluster_role,
    reader_cluster_role_binding,
    reader_cluster_role_name,
    reader_rules,
    reader_service_account,
    reader_token_secret,
    remote_secret,
    remote_secret_name,
)
from meshflow.manifests.namespaces import (
    echoserver_namespace,
    ingress_namespace,
    istio_system_namespace,
)
from meshflow.manifests.sample import (
    CALL_JOB,
    ECHOSERVER,
    cross_cluster_call_job,
    echoserver_deployment,
    echoserver_service,
)
from meshflow.manifests.secretstore import (
    INGRESS_CERTIFICATE,
    ROOT_CERT_SECRET,
    SECRET_PROVIDER_CLASS,
    KeyVaultObject,
    ca_certificate_name,
    cert_chain_secret_name,
    ingress_secret_provider_class,
    keyvault_objects_parameter,
    secret_provider_class,
)

__all__ = [
    "CALL_JOB",
    "CLUSTER_NAME_ANNOTATION",
    "ECHOSERVER",
    "ECHOSERVER_NAMESPACE",
    "INGRESS_CERTIFICATE",
    "INGRESS_GATEWAY",
    "INGRESS_GATEWAY_LABELS",
    "INGRESS_NAMESPACE",
    "ISTIO_NAMESPACE",
    "MANAGED_BY_LABEL",
    "MULTICLUSTER_SECRET_LABEL",
    "MULTIROOT_ISTIOD_ENV",
    "MULTIROOT_PROXY_ENV",
    "READER_SERVICE_ACCOUNT",
    "READER_TOKEN_SECRET",
    "REVISION_LABEL",
    "ROOT_CERT_SECRET",
    "SECRET_PROVIDER_CLASS",
    "KeyVaultObject",
    "Manifest",
    "aks_node_affinity",
    "ca_certificate_name",
    "cert_chain_secret_name",
    "cross_cluster_call_job",
    "departed_sources",
    "echoserver_deployment",
    "echoserver_namespace",
    "echoserver_service",
    "ingress_namespace",
    "ingress_secret_provider_class",
    "istio_operator",
    "istio_operator_documents",
    "istio_operator_files",
    "istio_system_namespace",
    "istioctl_install_flags",
    "istiod_deployment_name",
    "keyvault_objects_parameter",
    "managed_remote_secret_selector",
    "post_install_manifests",
    "pre_install_manifests",
    "reader_cluster_role",
    "reader_cluster_role_binding",
    "reader_cluster_role_name",
    "reader_rules",
    "reader_service_account",
    "reader_token_secret",
    "remote_secret",
    "remote_secret_name",
    "secret_provider_class",
    "to_yaml",
]
