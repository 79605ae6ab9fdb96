"""The install run form, as the Prefect UI gets it: human titles, the known Istio versions, the
runbook's order.

The schema is built exactly as Prefect builds a deployment's ``parameter_openapi_schema``
(:func:`prefect.utilities.callables.parameter_schema` of the flow's function). The UI labels a
field with its own ``title``, else its definition's, else the type's name, and sorts the
fields of every object by ``position``.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel

from flows.install import install_mesh
from meshflow.istioctl import KNOWN_RELEASES
from meshflow.spec import (
    ClusterSpec,
    IngressSettings,
    MeshSpec,
    PkiSettings,
    RotationSettings,
    TerraformSettings,
)

FORM_MODELS: tuple[type[BaseModel], ...] = (
    MeshSpec, ClusterSpec, PkiSettings, IngressSettings, RotationSettings, TerraformSettings,
)  # fmt: skip

RUNBOOK_ORDER = (
    "environment", "clusters", "istio_version", "revision", "mesh_id", "network",
    "credentials_block", "key_vault_block", "root_key_vault_block", "frontend_pfx_block",
    "provision", "terraform", "pki", "ingress", "rotation",
)  # fmt: skip


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The install flow's parameter schema, as Prefect sends it to the server."""
    return parameter_schema(install_mesh.fn).model_dump_for_openapi()


def _definition(schema: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    definition: dict[str, Any] = schema["definitions"][model.__name__]
    return definition


def _properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every property of every object of the form, by ``Model.field``.

    Nested models are definitions (their fields are no deeper than ``definitions``), so these
    are all the fields the form shows.
    """
    return {
        f"{model}.{name}": prop
        for model, definition in schema["definitions"].items()
        for name, prop in definition["properties"].items()
    }


def _objects(node: Any) -> int:
    """How many object schemas with properties there are anywhere below ``node``."""
    if isinstance(node, dict):
        return ("properties" in node) + sum(_objects(v) for k, v in node.items() if k != "enum")
    if isinstance(node, list):
        return sum(_objects(v) for v in node)
    return 0


def test_every_model_of_the_form_is_a_definition_with_a_human_title(
    schema: dict[str, Any],
) -> None:
    titles = {m.__name__: _definition(schema, m)["title"] for m in FORM_MODELS}
    assert titles == {
        "MeshSpec": "Mesh", "ClusterSpec": "Cluster", "PkiSettings": "PKI settings",
        "IngressSettings": "Ingress settings", "RotationSettings": "Rotation settings",
        "TerraformSettings": "Terraform settings",
    }  # fmt: skip


@pytest.mark.parametrize("model", FORM_MODELS, ids=lambda m: m.__name__)
def test_every_field_shows_the_title_and_description_set_for_it(
    schema: dict[str, Any], model: type[BaseModel]
) -> None:
    properties = _definition(schema, model)["properties"]
    assert list(properties) == list(model.model_fields)
    for name, field in model.model_fields.items():
        assert field.title, f"{model.__name__}.{name} has no title of its own"
        assert field.description, f"{model.__name__}.{name} has no description"
        assert properties[name]["title"] == field.title, name
        assert properties[name]["description"] == field.description, name


def test_no_property_anywhere_is_left_to_a_generated_label(schema: dict[str, Any]) -> None:
    # Without its own title the UI falls back to the pydantic title (``Mesh Id``), the
    # definition's (``PkiSettings``) or the type's name (``Field``): every property has one,
    # and none is pydantic's spelling of a multi-word field name.
    assert _objects(schema) == 1 + len(schema["definitions"])  # no inline object elsewhere
    found = _properties(schema)
    assert len(found) == sum(len(m.model_fields) for m in FORM_MODELS)
    assert [path for path, prop in found.items() if not prop.get("title")] == []
    generated = {
        path: prop["title"] for path, prop in found.items()
        if "_" in path and prop["title"] == path.split(".")[1].replace("_", " ").title()
    }  # fmt: skip
    assert generated == {}
    titles = {prop["title"] for prop in found.values()}
    assert not titles & {"Mesh Id", "Ca Key Size", "Pki", "Istio Version", "Aks Block"}


def test_the_istio_version_is_a_choice_among_the_known_releases(schema: dict[str, Any]) -> None:
    version = _definition(schema, MeshSpec)["properties"]["istio_version"]
    assert version["type"] == "string"
    assert sorted(version["enum"]) == sorted(KNOWN_RELEASES)
    assert version["default"] in version["enum"]


def test_the_provisioning_mode_is_a_choice(schema: dict[str, Any]) -> None:
    provision = _definition(schema, MeshSpec)["properties"]["provision"]
    assert provision["enum"] == ["adopt", "plan", "apply"]
    assert provision["title"] == "Provisioning"


def test_the_mesh_fields_come_in_the_runbooks_order(schema: dict[str, Any]) -> None:
    properties = _definition(schema, MeshSpec)["properties"]
    by_position = sorted(properties, key=lambda name: properties[name]["position"])
    assert tuple(by_position) == RUNBOOK_ORDER
    assert tuple(MeshSpec.model_fields) == RUNBOOK_ORDER  # and the YAML's order


@pytest.mark.parametrize("model", FORM_MODELS, ids=lambda m: m.__name__)
def test_every_object_numbers_its_fields_so_a_jsonb_store_cannot_reorder_them(
    schema: dict[str, Any], model: type[BaseModel]
) -> None:
    properties = _definition(schema, model)["properties"]
    positions = {name: prop["position"] for name, prop in properties.items()}
    assert positions == {name: i for i, name in enumerate(model.model_fields)}


def test_the_form_is_the_only_parameter_and_refers_to_the_mesh(schema: dict[str, Any]) -> None:
    assert schema["required"] == ["spec"]
    assert schema["properties"]["spec"]["$ref"] == "#/definitions/MeshSpec"


def test_every_parameter_of_every_deployed_flow_is_described_in_its_form() -> None:
    from prefect.flows import load_flow_from_entrypoint

    from deployments.render import FLOWS

    undescribed = {
        f"{f.name}.{name}"
        for f in FLOWS
        for name, prop in load_flow_from_entrypoint(f.entrypoint)
        .parameters.model_dump()["properties"]
        .items()
        if not prop.get("description")
    }
    assert undescribed == set()  # the UI shows the parameter's name above each field, bare
