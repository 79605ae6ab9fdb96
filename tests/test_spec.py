"""The mesh description rejects bad input up front, with messages that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from meshflow.spec import MeshSpec


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
        ({"istio_version": "1.27.3", "revision": "1-26-0"}, "does not match istio_version"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
        ({"clusters": [{"name": "one", "aks_block": "a", "color": "red"}]}, "Extra inputs"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        MeshSpec.model_validate(_spec(**overrides))


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
