"""Steps 12, 14 and 21: the Istio Gateway, the VirtualService and the Ingress that AGIC reads.

All three live in ``istio-ingress``. Over HTTP (12, 14): a Gateway on port 80 for any host, a
VirtualService for the public host routing ``/`` to the echoserver, and an Ingress of class
``azure-application-gateway`` sending ``/`` to the ingress gateway's Service on port 80. Over
HTTPS (21): the Gateway serves 443 with the certificate the CSI driver mounts (step 20), the
VirtualService answers for the echoserver's in-mesh name (the host the App Gateway's backend
settings send), and the Ingress carries the annotations with which AGIC builds the listener,
the backend settings and the health probe from the certificates of steps 17-18.
"""

from __future__ import annotations

from typing import Any

from meshflow.manifests._meta import INGRESS_NAMESPACE, Manifest, metadata
from meshflow.manifests.install import INGRESS_GATEWAY, INGRESS_GATEWAY_LABELS

GATEWAY = "istio-ingressgateway"
INGRESS = "istio-ingress-application-gateway"
VIRTUAL_SERVICE = "echoserver"
INGRESS_CLASS = "azure-application-gateway"
ECHOSERVER_HOST = "echoserver.echoserver.svc.cluster.local"
FRONTEND_CERTIFICATE = "frontend-certificate"
TRUSTED_ROOT_CERTIFICATE = "root-certificate"
CERTS_MOUNT = "/etc/istio/ingressgateway-certs"
HEALTH_PROBE_PORT = 8443
"""The ingress gateway pods' HTTPS port, behind the Service's 443: where AGIC's probe goes."""

_AGIC = "appgw.ingress.kubernetes.io/"


def _istio(kind: str, name: str, spec: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": metadata(name, namespace=INGRESS_NAMESPACE),
        "spec": spec,
    }


def http_gateway() -> Manifest:
    """Step 12: Gateway ``istio-ingressgateway``: port 80, HTTP, any host, on the gateway pods."""
    server = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
    return _istio(
        "Gateway", GATEWAY, {"selector": dict(INGRESS_GATEWAY_LABELS), "servers": [server]}
    )


def tls_gateway(host: str = ECHOSERVER_HOST) -> Manifest:
    """Step 21: the Gateway serves HTTPS on 443 for ``host`` with the mounted certificate."""
    server = {
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "hosts": [host],
        "tls": {
            "mode": "SIMPLE",
            "serverCertificate": f"{CERTS_MOUNT}/ca-cert.pem",
            "privateKey": f"{CERTS_MOUNT}/ca-key.pem",
        },
    }
    return _istio(
        "Gateway", GATEWAY, {"selector": dict(INGRESS_GATEWAY_LABELS), "servers": [server]}
    )


def virtual_service(host: str) -> Manifest:
    """Steps 14 and 21: VirtualService ``echoserver``: ``/`` on ``host`` to the echoserver."""
    return _istio(
        "VirtualService",
        VIRTUAL_SERVICE,
        {
            "hosts": [host],
            "gateways": [f"{INGRESS_NAMESPACE}/{GATEWAY}"],
            "http": [
                {
                    "match": [{"uri": {"prefix": "/"}}],
                    "route": [{"destination": {"host": ECHOSERVER_HOST}}],
                }
            ],
        },
    )


def _ingress(port: int, annotations: dict[str, str] | None) -> Manifest:
    backend = {"service": {"name": INGRESS_GATEWAY, "port": {"number": port}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(INGRESS, namespace=INGRESS_NAMESPACE, annotations=annotations),
        "spec": {
            "ingressClassName": INGRESS_CLASS,
            "rules": [
                {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
            ],
        },
    }


def http_ingress() -> Manifest:
    """Step 12: Ingress ``istio-ingress-application-gateway``: ``/`` to the gateway's port 80."""
    return _ingress(80, None)


def tls_ingress() -> Manifest:
    """Step 21: the Ingress over HTTPS end to end, with every annotation AGIC needs for it."""
    return _ingress(
        443,
        {
            f"{_AGIC}appgw-ssl-certificate": FRONTEND_CERTIFICATE,
            f"{_AGIC}ssl-redirect": "true",
            f"{_AGIC}backend-protocol": "https",
            f"{_AGIC}backend-hostname": ECHOSERVER_HOST,
            f"{_AGIC}appgw-trusted-root-certificate": TRUSTED_ROOT_CERTIFICATE,
            f"{_AGIC}health-probe-hostname": ECHOSERVER_HOST,
            f"{_AGIC}health-probe-port": str(HEALTH_PROBE_PORT),
            f"{_AGIC}health-probe-path": "/",
        },
    )
