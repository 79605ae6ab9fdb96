"""The mesh description rejects bad input up front, with messages that say what to fix."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from meshflow.errors import InvalidError
from meshflow.spec import ISTIO_VERSIONS, MeshSpec


def _spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "environment": "dev",
        "credentials_block": "dev",
        "key_vault_block": "dev",
        "clusters": [
            {"name": "one", "aks_block": "dev-one"},
            {"name": "two", "aks_block": "dev-two"},
        ],
    }
    return base | overrides


def test_a_valid_spec_derives_the_revision() -> None:
    spec = MeshSpec.model_validate(_spec(istio_version="1.27.3"))
    assert spec.istio_revision == "1-27-3"
    assert spec.cluster("two").aks_block == "dev-two"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clusters": []}, "at least 1"),
        (
            {"clusters": [{"name": "one", "aks_block": "a"}, {"name": "one", "aks_block": "b"}]},
            "repeated: one",
        ),
        ({"clusters": [{"name": "One", "aks_block": "a"}]}, "should match pattern"),
        ({"clusters": [{"name": "x" * 64, "aks_block": "a"}]}, "at most 63"),
        ({"istio_version": "1.27"}, "MAJOR.MINOR.PATCH"),
        ({"istio_version": "9.99.0"}, r"not a release meshflow knows \(known: 1\.27\.3\)"),
        ({"istio_version": "1.27.3", "revision": "1-26-0"}, "does not match istio_version"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
        ({"clusters": [{"name": "one", "aks_block": "a", "color": "red"}]}, "Extra inputs"),
        (
            {"clusters": [{"name": "one", "aks_block": "a", "ingress": True}]},
            "no cluster runs the sample workload the ingress routes to; set sample_workload",
        ),
        ({"ingress": {"host_pattern": "{ip}.nip io"}}, "gives '10.0.0.1.nip io', not a DNS name"),
        ({"ingress": {"host_pattern": "https://{ip}.nip.io"}}, "not a DNS name"),
        ({"ingress": {"host_pattern": "-{ip}.example.com"}}, "not a DNS name"),
        ({"ingress": {"probe_seconds": 0}}, "greater than or equal to 1"),
        ({"ingress": {"agic": 1}}, "Extra inputs"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        MeshSpec.model_validate(_spec(**overrides))


def test_ingress_hosts_follow_the_pattern() -> None:
    default = MeshSpec.model_validate(_spec())
    assert default.ingress.host_for("20.1.2.3") == "20.1.2.3.nip.io"
    named = MeshSpec.model_validate(_spec(ingress={"host_pattern": "mesh.Example.com"}))
    assert named.ingress.host_for("20.1.2.3") == "mesh.example.com"
    exposed = MeshSpec.model_validate(_spec(clusters=[
        {"name": "one", "aks_block": "a", "ingress": True},
        {"name": "two", "aks_block": "b", "sample_workload": True},
    ]))  # fmt: skip
    assert [c.name for c in exposed.ingress_clusters] == ["one"]
    assert exposed.serves_tls(exposed.cluster("one"))
    assert not exposed.serves_tls(exposed.cluster("two"))
    http = exposed.model_copy(
        update={"ingress": exposed.ingress.model_copy(update={"https": False})}
    )
    assert not http.serves_tls(http.cluster("one"))


def test_explicit_revision_with_a_suffix_is_accepted() -> None:
    assert MeshSpec.model_validate(_spec(revision="1-27-canary")).istio_revision == "1-27-canary"


def test_spec_is_frozen_and_round_trips_through_yaml(tmp_path: Any) -> None:
    spec = MeshSpec.model_validate(_spec())
    with pytest.raises(ValidationError):
        spec.mesh_id = "other"  # type: ignore[misc]
    path = tmp_path / "mesh.yaml"
    path.write_text(spec.to_yaml())
    assert MeshSpec.from_yaml(path) == spec


def test_unknown_cluster_lookup_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: \\['one', 'two'\\]"):
        MeshSpec.model_validate(_spec()).cluster("three")


def test_a_bad_file_gives_one_line_per_problem_naming_file_and_field(tmp_path: Any) -> None:
    bad = _spec(istio_version="9.99.0")
    bad["clusters"] = [{"name": "One", "aks_block": "a"}, {"name": "two", "aks_block": "b", "x": 1}]
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(InvalidError) as raised:
        MeshSpec.from_yaml(path)
    lines = str(raised.value).splitlines()
    assert lines == [
        f"{path}: clusters[0].name: String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        f"{path}: clusters[1].x: Extra inputs are not permitted",
    ]


def test_a_bad_version_alone_is_named_on_its_own_line(tmp_path: Any) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(_spec(istio_version="9.99.0")))
    with pytest.raises(InvalidError) as raised:
        MeshSpec.from_yaml(path)
    assert str(raised.value) == (
        f"{path}: the mesh: istio_version '9.99.0' is not a release meshflow knows (known: 1.27.3)"
    )


def test_yaml_syntax_errors_name_the_line(tmp_path: Any) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text("environment: dev\nclusters: [\n  - name: one\n")
    with pytest.raises(InvalidError, match=rf"^{re.escape(str(path))}:\d+:\d+: not valid YAML: "):
        MeshSpec.from_yaml(path)
    with pytest.raises(InvalidError, match="cannot be read"):
        MeshSpec.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("version", ISTIO_VERSIONS)
def test_every_version_the_form_offers_is_accepted(version: str) -> None:
    assert MeshSpec.model_validate(_spec(istio_version=version)).istio_version == version


def test_the_yaml_lists_the_fields_in_the_forms_order() -> None:
    spec = MeshSpec.model_validate(_spec())
    keys = list(yaml.safe_load(spec.to_yaml()))
    assert keys[:3] == ["environment", "clusters", "istio_version"]
    assert keys == [name for name in MeshSpec.model_fields if name in keys]
