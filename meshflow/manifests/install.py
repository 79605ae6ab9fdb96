"""The IstioOperator files and ``istioctl install`` arguments of step 07 (and step 20).

Field names follow the IstioOperator Go types (istio/istio ``operator/pkg/apis/types.go``):
``istioctl`` decodes the files with unknown fields disallowed, so a typo fails the install.
Overlays are applied after Helm rendering (``operator/pkg/render/postprocess.go``) to the
rendered object of that ``kind`` and ``name``; paths use Istio's syntax where ``[key:value]``
selects a list element (``operator/pkg/util/path.go``) and the value replaces it whole.
"""

from __future__ import annotations

from typing import Any

from meshflow.manifests._meta import INGRESS_NAMESPACE, Manifest, to_yaml
from meshflow.manifests.secretstore import csi_volume
from meshflow.spec import ClusterSpec, MeshSpec

PROFILE = "minimal"
INGRESS_GATEWAY = "ingressgateway"
INGRESS_GATEWAY_LABELS = {"istio": "ingressgateway"}
INGRESS_CERTS_VOLUME = "ingressgateway-certs"
"""Gateway chart volume mounted at ``/etc/istio/ingressgateway-certs`` (``secretVolumes``)."""
ISTIOD_CA_VOLUME = "cacerts"
"""istiod chart volume mounted at ``/etc/cacerts``: an optional Secret ``cacerts`` by default."""
OPERATOR_FILES = ("mesh.yaml", "istiod.yaml", "ingress-gateway.yaml")


MULTIROOT_ISTIOD_ENV = "ISTIO_MULTIROOT_MESH"
"""istiod's switch for a trust bundle of several roots (else: "Multi root is disabled")."""
MULTIROOT_PROXY_ENV = "PROXY_CONFIG_XDS_AGENT"
"""The proxies' switch to take the trust bundle istiod serves over PCDS."""


def istiod_deployment_name(revision: str) -> str:
    """``istiod-<revision>``: revisioned installs suffix the Deployment (Istio issue 31076)."""
    return f"istiod-{revision}"


def aks_node_affinity() -> dict[str, Any]:
    """Prefer AKS system nodes; require a Linux AKS node that is not a virtual kubelet (ACI)."""
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.azure.com/mode",
                                "operator": "In",
                                "values": ["system"],
                            }
                        ]
                    },
                }
            ],
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.azure.com/cluster", "operator": "Exists"},
                            {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
                            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                        ]
                    }
                ]
            },
        }
    }


def volume_overlay(kind: str, name: str, volume: str) -> dict[str, Any]:
    """A k8s overlay replacing pod volume ``volume`` of ``kind``/``name`` by the CSI volume."""
    return {
        "kind": kind,
        "name": name,
        "patches": [
            {"path": f"spec.template.spec.volumes.[name:{volume}]", "value": csi_volume(volume)}
        ],
    }


def _operator(name: str, spec: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": name},
        "spec": spec,
    }


def _operator_name(spec: MeshSpec) -> str:
    # Becomes the install.operator.istio.io/owning-resource label value: at most 63 characters.
    return f"meshflow-{spec.istio_revision}"[:63].rstrip("-")


def mesh_operator(spec: MeshSpec, cluster: ClusterSpec) -> Manifest:
    """Profile, revision, tag, mesh config and the multi-cluster identity of ``cluster``.

    ``network`` is the same everywhere: the peered VNets are one flat network, so no east-west
    gateway is needed. ``clusterName`` is also the key of the cluster's remote secret.
    """
    return _operator(
        _operator_name(spec),
        {
            "profile": PROFILE,
            "revision": spec.istio_revision,
            "tag": spec.istio_version,
            "meshConfig": {
                "accessLogFile": "/dev/stdout",
                # Proxies take a new trust bundle over PCDS only with the XDS agent on: what
                # lets a root rotation proceed without restarting every workload.
                "defaultConfig": {"proxyMetadata": {MULTIROOT_PROXY_ENV: "true"}},
            },
            "values": {
                "global": {
                    "meshID": spec.mesh_id,
                    "multiCluster": {"clusterName": cluster.name},
                    "network": spec.network,
                }
            },
        },
    )


def istiod_operator(spec: MeshSpec) -> Manifest:
    """The pilot component: plug-in CA from Key Vault (CSI volume ``cacerts``), AKS affinity."""
    deployment = istiod_deployment_name(spec.istio_revision)
    return _operator(
        _operator_name(spec),
        {
            "components": {
                "pilot": {
                    "enabled": True,
                    "k8s": {
                        "affinity": aks_node_affinity(),
                        # istiod accepts a root-cert.pem with a second root (root rotation).
                        "env": [{"name": MULTIROOT_ISTIOD_ENV, "value": "true"}],
                        "overlays": [volume_overlay("Deployment", deployment, ISTIOD_CA_VOLUME)],
                    },
                }
            }
        },
    )


def ingress_gateway_operator(
    spec: MeshSpec, cluster: ClusterSpec, *, ingress_certificates: bool = False
) -> Manifest:
    """The ``ingressgateway`` component in ``istio-ingress``, enabled where ``cluster.ingress``.

    ClusterIP: the Application Gateway (AGIC) is the public entry. ``injectionTemplate: gateway``
    makes the revision's injector build the pods. With ``ingress_certificates`` (step 20) its
    ``ingressgateway-certs`` volume is replaced by the ``istio-ingress`` SecretProviderClass.
    """
    k8s: dict[str, Any] = {"service": {"type": "ClusterIP"}, "affinity": aks_node_affinity()}
    if ingress_certificates:
        k8s["overlays"] = [volume_overlay("Deployment", INGRESS_GATEWAY, INGRESS_CERTS_VOLUME)]
    gateway = {
        "name": INGRESS_GATEWAY,
        "namespace": INGRESS_NAMESPACE,
        "enabled": cluster.ingress,
        "label": dict(INGRESS_GATEWAY_LABELS),
        "k8s": k8s,
    }
    return _operator(
        _operator_name(spec),
        {
            "components": {"ingressGateways": [gateway]},
            "values": {"gateways": {"istio-ingressgateway": {"injectionTemplate": "gateway"}}},
        },
    )


def _merge(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    # Key-wise, other wins, like istioctl's merge of several -f files (values.Map.MergeFrom).
    out = dict(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def istio_operator_documents(
    spec: MeshSpec, cluster: ClusterSpec, *, ingress_certificates: bool = False
) -> dict[str, Manifest]:
    """Step 07: file name → IstioOperator, in ``istioctl install -f`` order.

    The three files never set the same leaf, so their merge is :func:`istio_operator`.
    """
    docs = (
        mesh_operator(spec, cluster),
        istiod_operator(spec),
        ingress_gateway_operator(spec, cluster, ingress_certificates=ingress_certificates),
    )
    return dict(zip(OPERATOR_FILES, docs, strict=True))


def istio_operator(
    spec: MeshSpec, cluster: ClusterSpec, *, ingress_certificates: bool = False
) -> Manifest:
    """Step 07 (and 20 with ``ingress_certificates``): the whole IstioOperator for ``cluster``."""
    merged: dict[str, Any] = {}
    for doc in istio_operator_documents(
        spec, cluster, ingress_certificates=ingress_certificates
    ).values():
        merged = _merge(merged, doc)
    return merged


def istio_operator_files(
    spec: MeshSpec, cluster: ClusterSpec, *, ingress_certificates: bool = False
) -> dict[str, str]:
    """Step 07: file name → YAML text, to write out and pass as ``istioctl install -f`` files."""
    documents = istio_operator_documents(spec, cluster, ingress_certificates=ingress_certificates)
    return {name: to_yaml(doc) for name, doc in documents.items()}


def istioctl_install_flags(spec: MeshSpec) -> list[str]:
    """Step 07: ``install -y --set profile=minimal --revision <rev> --set tag=<version>``."""
    args = ["install", "-y", "--set", f"profile={PROFILE}", "--revision", spec.istio_revision]
    return [*args, "--set", f"tag={spec.istio_version}"]
