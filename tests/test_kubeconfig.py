"""Kubeconfig parsing (what AKS returns) and building (what istiod reads)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from meshflow.kubeconfig import KubeconfigError, parse_kubeconfig, token_kubeconfig

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _kubeconfig(user: dict[str, Any], **cluster: Any) -> str:
    return yaml.safe_dump(
        {
            "current-context": "c",
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "clusters": [
                {
                    "name": "k",
                    "cluster": {
                        "server": "https://k.example:443",
                        "certificate-authority-data": base64.b64encode(CA).decode(),
                    }
                    | cluster,
                }
            ],
            "users": [{"name": "u", "user": user}],
        }
    )


@pytest.mark.parametrize(
    ("user", "auth"),
    [
        ({"token": "t0k3n"}, "token"),
        (
            {
                "client-certificate-data": base64.b64encode(b"CERT").decode(),
                "client-key-data": base64.b64encode(b"KEY").decode(),
            },
            "client-certificate",
        ),
        ({"exec": {"command": "kubelogin", "args": ["get-token"]}}, "aad-exec"),
    ],
)
def test_the_three_aks_credential_shapes_parse(user: dict[str, Any], auth: str) -> None:
    access = parse_kubeconfig(_kubeconfig(user))
    assert access.auth == auth
    assert access.server == "https://k.example:443"
    assert access.ca_pem == CA


def test_repr_never_shows_the_token_or_key() -> None:
    access = parse_kubeconfig(
        _kubeconfig(
            {
                "token": "s3cr3t-token",
                "client-certificate-data": base64.b64encode(b"CERT").decode(),
                "client-key-data": base64.b64encode(b"PRIVATE-KEY-BYTES").decode(),
            }
        )
    )
    assert "s3cr3t-token" not in repr(access)
    assert "PRIVATE" not in repr(access)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key: [unclosed", "not valid YAML"),
        ("[]", "not a mapping"),
        ("{}", "no current-context"),
        (_kubeconfig({"token": "t"}, server="http://plain"), "https:// URL"),
        (_kubeconfig({"token": "t"}, **{"certificate-authority-data": "%%%"}), "not valid base64"),
        (_kubeconfig({"auth-provider": {"name": "azure"}}), "no token, client certificate"),
    ],
)
def test_bad_kubeconfigs_fail_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(KubeconfigError, match=message):
        parse_kubeconfig(text)


def test_token_kubeconfig_round_trips_and_has_istioctl_shape() -> None:
    text = token_kubeconfig(cluster_name="one", server="https://one:443", ca_pem=CA, token="tok")
    doc = yaml.safe_load(text)
    assert doc["current-context"] == "one"
    assert doc["users"] == [{"name": "one", "user": {"token": "tok"}}]
    access = parse_kubeconfig(text)
    assert (access.auth, access.token, access.ca_pem) == ("token", "tok", CA)


@pytest.mark.parametrize(
    "user",
    [
        {"token": "t0k3n"},
        {
            "client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode(),
        },
    ],
)
def test_access_kubeconfig_round_trips(user: dict[str, Any]) -> None:
    from meshflow.kubeconfig import access_kubeconfig

    access = parse_kubeconfig(_kubeconfig(user))
    again = parse_kubeconfig(access_kubeconfig(access))
    assert (again.server, again.ca_pem, again.auth) == (access.server, access.ca_pem, access.auth)
    assert (again.token, again.client_key_pem) == (access.token, access.client_key_pem)


def test_access_kubeconfig_refuses_an_unresolved_exec_entry() -> None:
    from meshflow.kubeconfig import access_kubeconfig

    access = parse_kubeconfig(_kubeconfig({"exec": {"command": "kubelogin"}}))
    with pytest.raises(KubeconfigError, match="no token or client certificate"):
        access_kubeconfig(access)
