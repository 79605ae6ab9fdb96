"""SecretProviderClasses that mount the Key Vault PKI through the Secrets Store CSI driver.

Steps 04 (istiod's plug-in CA in ``istio-system``) and 20 (the ingress gateway's serving
certificate in ``istio-ingress``). The Azure provider reads ``parameters.objects`` as a YAML
document ``array:`` of strings, each string itself a YAML mapping (``StringArray`` and
``KeyVaultObject`` in Azure/secrets-store-csi-driver-provider-azure
``pkg/provider/types/types.go``); the file name in the mount is ``objectAlias``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import yaml

from meshflow.manifests._meta import INGRESS_NAMESPACE, ISTIO_NAMESPACE, Manifest, metadata, require

SECRET_PROVIDER_CLASS = "istio-tls"  # noqa: S105 - an object name, not a value
CSI_DRIVER = "secrets-store.csi.k8s.io"
ROOT_CERT_SECRET = "root-cert"  # noqa: S105 - a Key Vault object name, not a value
INGRESS_CERTIFICATE = "echoserver"

ObjectType = Literal["secret", "cert", "key"]


@dataclass(frozen=True)
class KeyVaultObject:
    """One Key Vault object to mount, and the file name it gets."""

    name: str
    type: ObjectType
    alias: str


def ca_certificate_name(cluster: str) -> str:
    """Key Vault certificate holding a cluster's intermediate CA (cert + key), step 03."""
    return f"{cluster}-ca-cert"


def cert_chain_secret_name(cluster: str) -> str:
    """Key Vault secret holding a cluster's ``cert-chain.pem``, step 03."""
    return f"{cluster}-cert-chain"


def istio_ca_objects(cluster: str) -> tuple[KeyVaultObject, ...]:
    """The four files istiod reads from ``/etc/cacerts`` (step 04).

    A certificate fetched as ``secret`` yields the PEM private key and certificate together,
    which is what ``ca-key.pem`` must contain; fetched as ``cert`` it yields the certificate only.
    """
    ca = ca_certificate_name(cluster)
    return (
        KeyVaultObject(ca, "secret", "ca-key.pem"),
        KeyVaultObject(ca, "cert", "ca-cert.pem"),
        KeyVaultObject(ROOT_CERT_SECRET, "secret", "root-cert.pem"),
        KeyVaultObject(cert_chain_secret_name(cluster), "secret", "cert-chain.pem"),
    )


def ingress_certificate_objects(
    certificate: str = INGRESS_CERTIFICATE,
) -> tuple[KeyVaultObject, ...]:
    """The gateway's serving key and certificate (step 20), from one Key Vault certificate."""
    return (
        KeyVaultObject(certificate, "secret", "ca-key.pem"),
        KeyVaultObject(certificate, "cert", "ca-cert.pem"),
    )


def keyvault_objects_parameter(objects: Sequence[KeyVaultObject]) -> str:
    """The ``objects`` parameter text: ``array:`` of ``|`` blocks, as the provider's docs write it.

    Each block is dumped by PyYAML, so a name that needs quoting gets it.

    Raises:
        ValueError: ``objects`` is empty or two objects share an alias (one file would win).
    """
    if not objects:
        raise ValueError("a SecretProviderClass needs at least one Key Vault object")
    aliases = [o.alias for o in objects]
    if len(set(aliases)) != len(aliases):
        raise ValueError(f"object aliases must be unique: {aliases}")
    lines = ["array:"]
    for obj in objects:
        block = yaml.safe_dump(
            {"objectName": obj.name, "objectType": obj.type, "objectAlias": obj.alias},
            sort_keys=False,
        )
        lines.append("  - |")
        lines.extend(f"    {line}" for line in block.splitlines())
    return "\n".join(lines) + "\n"


def _provider_class(
    *,
    namespace: str,
    objects: Sequence[KeyVaultObject],
    keyvault_name: str,
    tenant_id: str,
    identity_client_id: str,
) -> Manifest:
    # The AKS Key Vault Secrets Provider add-on authenticates as its user-assigned identity on
    # the node (VM managed identity), hence useVMManagedIdentity + userAssignedIdentityID.
    return {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": metadata(SECRET_PROVIDER_CLASS, namespace),
        "spec": {
            "provider": "azure",
            "parameters": {
                "usePodIdentity": "false",
                "useVMManagedIdentity": "true",
                "userAssignedIdentityID": require(identity_client_id, "identity_client_id"),
                "keyvaultName": require(keyvault_name, "keyvault_name"),
                "tenantId": require(tenant_id, "tenant_id"),
                "objects": keyvault_objects_parameter(objects),
            },
        },
    }


def secret_provider_class(
    *,
    cluster: str,
    namespace: str = ISTIO_NAMESPACE,
    keyvault_name: str,
    tenant_id: str,
    identity_client_id: str,
) -> Manifest:
    """Step 04: SPC ``istio-tls`` mounting ``cluster``'s plug-in CA for istiod.

    Args:
        cluster: The cluster name (Key Vault objects ``<cluster>-ca-cert``, ``-cert-chain``).
        namespace: Where istiod runs.
        keyvault_name: The mesh Key Vault.
        tenant_id: Entra tenant of the vault.
        identity_client_id: Client id of the cluster's Key Vault Secrets Provider identity
            (it needs ``get`` on secrets and certificates of the vault).

    Raises:
        ValueError: an empty argument.
    """
    return _provider_class(
        namespace=namespace,
        objects=istio_ca_objects(require(cluster, "cluster")),
        keyvault_name=keyvault_name,
        tenant_id=tenant_id,
        identity_client_id=identity_client_id,
    )


def ingress_secret_provider_class(
    *,
    keyvault_name: str,
    tenant_id: str,
    identity_client_id: str,
    certificate: str = INGRESS_CERTIFICATE,
) -> Manifest:
    """Step 20: SPC ``istio-tls`` in ``istio-ingress`` mounting the gateway's certificate.

    ``certificate`` is fetched as ``ca-key.pem`` (secret: key + certificate) and ``ca-cert.pem``
    (cert), the files the TLS Gateway of step 21 names.

    Raises:
        ValueError: an empty argument.
    """
    return _provider_class(
        namespace=INGRESS_NAMESPACE,
        objects=ingress_certificate_objects(require(certificate, "certificate")),
        keyvault_name=keyvault_name,
        tenant_id=tenant_id,
        identity_client_id=identity_client_id,
    )


def csi_volume(name: str) -> dict[str, object]:
    """A pod volume ``name`` backed by the ``istio-tls`` SecretProviderClass of its namespace."""
    return {
        "name": name,
        "csi": {
            "driver": CSI_DRIVER,
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": SECRET_PROVIDER_CLASS},
        },
    }
