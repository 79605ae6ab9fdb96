"""Where objects live in the REST API, and when a live object already satisfies a desired one."""
# ruff: noqa: E501 - path tables read best one row per line

from __future__ import annotations

import base64
from typing import Any

import pytest

from meshflow.objects import object_path, satisfies


@pytest.mark.parametrize(
    ("obj", "collection", "item"),
    [
        ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
         "/api/v1/namespaces", "/api/v1/namespaces/istio-system"),
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"}},
         "/api/v1/namespaces/n/secrets", "/api/v1/namespaces/n/secrets/s"),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"}},
         "/apis/apps/v1/namespaces/n/deployments", "/apis/apps/v1/namespaces/n/deployments/d"),
        ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}},
         "/apis/rbac.authorization.k8s.io/v1/clusterroles",
         "/apis/rbac.authorization.k8s.io/v1/clusterroles/r"),
        ({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
          "metadata": {"name": "istio-tls", "namespace": "istio-system"}},
         "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/istio-system/secretproviderclasses",
         "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/istio-system/secretproviderclasses/istio-tls"),
    ],
)  # fmt: skip
def test_object_paths(obj: dict[str, Any], collection: str, item: str) -> None:
    path = object_path(obj)
    assert (path.collection, path.item) == (collection, item)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"}},
         "does not manage Pod"),
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, "needs metadata.namespace"),
        ({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}, "without metadata.name"),
    ],
)  # fmt: skip
def test_object_path_rejects_what_it_cannot_place(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        object_path(obj)


DESIRED = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "echoserver", "namespace": "echoserver", "labels": {"app": "e"}},
    "spec": {"ports": [{"port": 8080, "name": "http"}], "selector": {"run": "echoserver"}},
}
LIVE = {
    **DESIRED,
    "metadata": {**DESIRED["metadata"], "uid": "u", "resourceVersion": "7",
                 "labels": {"app": "e", "other-manager": "x"}},
    "spec": {"ports": [{"port": 8080, "name": "http", "protocol": "TCP", "targetPort": 8080}],
             "selector": {"run": "echoserver"}, "clusterIP": "10.0.0.7", "type": "ClusterIP"},
    "status": {"loadBalancer": {}},
}  # fmt: skip


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(DESIRED)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("desired", "expected"),
    [
        (DESIRED, True),  # server defaults, status and extra labels are not differences
        (_with(["spec", "ports", 0, "port"], 9090), False),
        (_with(["spec", "ports"], [{"port": 8080}, {"port": 9090}]), False),  # list length
        (_with(["metadata", "labels", "app"], "f"), False),
        (_with(["metadata", "annotations"], {"a": "b"}), False),
        (_with(["spec", "sessionAffinity"], "ClientIP"), False),
    ],
)
def test_satisfies(desired: dict[str, Any], expected: bool) -> None:
    assert satisfies(LIVE, desired) is expected


def _secret(**body: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "n"},
    } | body


def test_secrets_compare_decoded_data_whether_data_or_string_data() -> None:
    live = _secret(data={"k": base64.b64encode(b"v1").decode()}, type="Opaque")
    assert satisfies(live, _secret(stringData={"k": "v1"}))
    assert satisfies(live, _secret(data={"k": base64.b64encode(b"v1").decode()}))
    assert not satisfies(live, _secret(stringData={"k": "v2"}))


def test_a_token_secret_filled_by_the_controller_still_satisfies_its_manifest() -> None:
    desired = _secret(type="kubernetes.io/service-account-token")
    live = _secret(
        type="kubernetes.io/service-account-token", data={"token": "dA==", "ca.crt": "Yw=="}
    )
    assert satisfies(live, desired)
