"""Where objects live in the REST API, when a live object already satisfies a desired one, and
whose fields meshflow's apply leaves alone (a co-owner's, such as ``istioctl install``'s)."""
# ruff: noqa: E501 - path tables read best one row per line

from __future__ import annotations

import base64
import copy
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshflow import manifests as m
from meshflow.errors import ConflictError
from meshflow.kubeconfig import parse_kubeconfig
from meshflow.objects import object_path, satisfies
from sandbox import kube
from tasks.kube_client import (
    CO_OWNERS,
    FIELD_MANAGER,
    KubeClient,
    api_client_for,
    apply_object,
    co_owned_changes,
    request_json,
)
from tests.test_reader_rules import chart_rules, chart_values

ISTIOCTL = (
    "istio-operator"  # fieldOwnerOperator, istio/istio 1.27.3 operator/pkg/install/install.go
)


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


# -- Fields a co-owner manages: read from managedFields (pure) -----------------------------------

ROLE = m.reader_cluster_role("1-27-3", "1.27.3")
OTHER_RULES = m.reader_rules("1.26.8")


def _managed(manager: str, fields: dict[str, Any], operation: str = "Apply") -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "apiVersion": "rbac.authorization.k8s.io/v1",
            "fieldsType": "FieldsV1", "fieldsV1": fields}  # fmt: skip


def _live(
    rules: list[dict[str, Any]], labels: dict[str, str], *entries: dict[str, Any]
) -> dict[str, Any]:
    meta = {"name": ROLE["metadata"]["name"], "labels": labels, "resourceVersion": "3",
            "managedFields": list(entries)}  # fmt: skip
    return {**ROLE, "metadata": meta, "rules": rules}


ISTIO_LABELS = {**ROLE["metadata"]["labels"], "release": "istio", "istio.io/rev": "1-27-3"}
ISTIOCTL_FIELDS: dict[str, Any] = {
    "f:metadata": {"f:labels": {f"f:{k}": {} for k in ISTIO_LABELS}},
    "f:rules": {},
}


def test_istioctls_other_rules_are_a_co_owned_change() -> None:
    assert ISTIOCTL in CO_OWNERS
    assert FIELD_MANAGER not in CO_OWNERS
    live = _live(OTHER_RULES, ISTIO_LABELS, _managed(ISTIOCTL, ISTIOCTL_FIELDS))
    assert not satisfies(live, ROLE)
    assert co_owned_changes(live, ROLE) == {ISTIOCTL: [".rules"]}


def test_istioctls_own_rendering_of_meshflows_object_takes_nothing() -> None:
    live = _live(ROLE["rules"], ISTIO_LABELS, _managed(ISTIOCTL, ISTIOCTL_FIELDS))
    assert satisfies(live, ROLE)
    assert co_owned_changes(live, ROLE) == {}


@pytest.mark.parametrize(
    ("labels", "fields", "expected"),
    [
        # A label istioctl manages with another value: that label, key by key.
        ({**ISTIO_LABELS, "app": "x"}, ISTIOCTL_FIELDS, [".metadata.labels.app"]),
        # A label meshflow adds that nobody manages: not istioctl's.
        ({"release": "istio"}, {"f:metadata": {"f:labels": {".": {}, "f:release": {}}}}, []),
        # Owning only the map's presence owns none of its keys.
        ({"app": "x"}, {"f:metadata": {"f:labels": {".": {}}}}, []),
        # Owned whole (an atomic map): any difference counts.
        ({**ROLE["metadata"]["labels"], "extra": "y"}, {"f:metadata": {"f:labels": {}}}, [".metadata.labels"]),
    ],
)  # fmt: skip
def test_co_owned_maps_are_followed_key_by_key(
    labels: dict[str, str], fields: dict[str, Any], expected: list[str]
) -> None:
    live = _live(ROLE["rules"], labels, _managed(ISTIOCTL, fields))
    assert co_owned_changes(live, ROLE) == ({ISTIOCTL: expected} if expected else {})


def test_a_list_owned_item_by_item_counts_whole() -> None:
    # Which k:/v:/i: item a desired element would be needs the schema: the whole list counts.
    fields: dict[str, Any] = {"f:rules": {"i:0": {"f:verbs": {}}}}
    live = _live(OTHER_RULES, ROLE["metadata"]["labels"], _managed(ISTIOCTL, fields))
    assert co_owned_changes(live, ROLE) == {ISTIOCTL: [".rules"]}


def test_other_managers_fields_are_not_co_owned() -> None:
    live = _live(
        OTHER_RULES,
        ISTIO_LABELS,
        _managed(FIELD_MANAGER, ISTIOCTL_FIELDS, "Update"),  # meshflow's own create
        _managed("kubectl-edit", {"f:rules": {}}, "Update"),
        {"manager": ISTIOCTL, "operation": "Apply", "fieldsType": "FieldsV1"},  # no fieldsV1
    )
    assert co_owned_changes(live, ROLE) == {}
    assert co_owned_changes({**ROLE, "metadata": {"name": "r"}}, ROLE) == {}  # no managedFields


def test_a_co_owner_recorded_twice_names_each_field_once() -> None:
    live = _live(
        OTHER_RULES,
        ISTIO_LABELS,
        _managed(ISTIOCTL, ISTIOCTL_FIELDS),
        _managed(ISTIOCTL, {"f:rules": {}}, "Update"),
    )
    assert co_owned_changes(live, ROLE) == {ISTIOCTL: [".rules"]}


# -- The same against a real API server -------------------------------------------------------


@pytest.fixture
def admin(kube_clusters: list[kube.LocalCluster]) -> Iterator[tuple[kube.LocalCluster, KubeClient]]:
    """meshflow's own client (the ``admin`` user) on the first cluster."""
    cluster = kube_clusters[0]
    api = api_client_for(parse_kubeconfig(cluster.admin_kubeconfig.read_text()))
    try:
        yield cluster, api
    finally:
        api.close()


@pytest.fixture
def reader_role(admin: tuple[kube.LocalCluster, KubeClient]) -> Iterator[dict[str, Any]]:
    """meshflow's 1.27 reader ClusterRole under a revision of its own; deleted afterwards."""
    role = m.reader_cluster_role(f"mf-test-{secrets.token_hex(3)}", "1.27.3")
    yield role
    request_json(admin[1], "DELETE", object_path(role).item)


def _apply_as(
    api: KubeClient, obj: dict[str, Any], manager: str, *, force: bool = True, dry_run: bool = False
) -> Any:
    """A server-side apply of ``obj`` by ``manager``, as istioctl or kubectl would send it."""
    query = {"fieldManager": manager} | ({"force": "true"} if force else {})
    query |= {"dryRun": "All"} if dry_run else {}
    return request_json(api, "PATCH", object_path(obj).item, body=obj, query=query,
                        content_type="application/apply-patch+yaml")  # fmt: skip


def _istioctls(role: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """``role`` as istioctl install renders it: the chart's labels, and ``rules``."""
    theirs = copy.deepcopy(role)
    theirs["metadata"]["labels"] |= {"release": "istio", "istio.io/rev": "1-27-3",
                                     "install.operator.istio.io/owning-resource": "unknown",
                                     "operator.istio.io/component": "Pilot"}  # fmt: skip
    theirs["rules"] = rules
    return theirs


def _audited(cluster: kube.LocalCluster, api: KubeClient) -> list[dict[str, Any]]:
    """The cluster's audited writes, up to and including a marker write made now.

    The audit log is written after the response: waiting for a write made after every other
    write of this test to show up means every earlier one is there too.
    """
    marker = f"mf-audit-marker-{secrets.token_hex(3)}"
    collection = "/api/v1/namespaces/default/configmaps"
    request_json(api, "POST", collection, body={"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": marker}})  # fmt: skip
    request_json(api, "DELETE", f"{collection}/{marker}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = kube.audit_writes(cluster)
        names = [(e.get("objectRef") or {}).get("name") for e in events]
        if names.count(marker) >= 2:
            return events
        time.sleep(0.05)
    raise AssertionError(f"the marker writes {marker} never reached the audit log")


def _writes_to(events: list[dict[str, Any]], name: str) -> list[str]:
    return [
        f"{e['verb']} {e['requestURI']}" for e in events
        if (e.get("objectRef") or {}).get("name") == name
    ]  # fmt: skip


def _managers(live: dict[str, Any]) -> set[str]:
    return {e["manager"] for e in live["metadata"].get("managedFields") or []}


@pytest.mark.kube
def test_a_reader_role_istioctl_applied_with_other_rules_is_left_to_it(
    admin: tuple[kube.LocalCluster, KubeClient], reader_role: dict[str, Any]
) -> None:
    cluster, api = admin
    name = reader_role["metadata"]["name"]
    # istioctl install with the remote values: the 1.27 chart's istiodRemote branch, with force.
    remote = chart_rules(
        (Path(__file__).parent / "data/istio/1.27.3/reader-clusterrole.yaml").read_text(),
        {**chart_values("1.27.3"), "istiodRemote": {"enabled": True}},
    )
    theirs = _istioctls(reader_role, remote)
    _apply_as(api, theirs, ISTIOCTL)
    live = request_json(api, "GET", object_path(reader_role).item)
    assert co_owned_changes(live, reader_role) == {ISTIOCTL: [".rules"]}
    # The server agrees: meshflow's apply without force conflicts with istioctl on .rules.
    with pytest.raises(ConflictError, match=r"conflict with \"?istio-operator\"?.*\.rules"):
        _apply_as(api, reader_role, FIELD_MANAGER, force=False, dry_run=True)

    before = len(_audited(cluster, api))
    first = apply_object(api, reader_role, cluster=cluster.name)
    again = apply_object(api, reader_role, cluster=cluster.name)
    assert (first.action, again.action) == ("kept", "kept")
    assert _writes_to(_audited(cluster, api)[before:], name) == []  # not a single write request
    after = request_json(api, "GET", object_path(reader_role).item)
    assert after["rules"] == remote
    assert after["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
    assert _managers(after) == {ISTIOCTL}


@pytest.mark.kube
def test_a_reader_role_istioctl_applied_as_meshflow_renders_it_is_unchanged(
    admin: tuple[kube.LocalCluster, KubeClient], reader_role: dict[str, Any]
) -> None:
    cluster, api = admin
    # istioctl install 1.27 as meshflow runs it (no istiodRemote): the chart's default rules.
    default = chart_rules(
        (Path(__file__).parent / "data/istio/1.27.3/reader-clusterrole.yaml").read_text(),
        chart_values("1.27.3"),
    )
    _apply_as(api, _istioctls(reader_role, default), ISTIOCTL)
    before = len(_audited(cluster, api))
    assert apply_object(api, reader_role, cluster=cluster.name).action == "unchanged"
    assert _writes_to(_audited(cluster, api)[before:], reader_role["metadata"]["name"]) == []
    # Nothing written: meshflow is not even recorded as a manager of the object.
    live = request_json(api, "GET", object_path(reader_role).item)
    assert _managers(live) == {ISTIOCTL}


@pytest.mark.kube
def test_other_managers_changes_are_restored_and_meshflows_own_create_is_no_obstacle(
    admin: tuple[kube.LocalCluster, KubeClient], reader_role: dict[str, Any]
) -> None:
    cluster, api = admin
    item = object_path(reader_role).item
    older = {**reader_role, "rules": m.reader_rules("1.26.8")}
    assert apply_object(api, older, cluster=cluster.name).action == "created"  # an Update entry
    # A later meshflow (new rules) takes the fields its own create recorded.
    assert apply_object(api, reader_role, cluster=cluster.name).action == "updated"
    assert request_json(api, "GET", item)["rules"] == reader_role["rules"]
    # A hand edit (not a co-owner) is put back, by force.
    _apply_as(api, {**reader_role, "rules": older["rules"]}, "kubectl-edit")
    assert apply_object(api, reader_role, cluster=cluster.name).action == "updated"
    live = request_json(api, "GET", item)
    assert live["rules"] == reader_role["rules"]
    assert apply_object(api, reader_role, cluster=cluster.name).action == "unchanged"
