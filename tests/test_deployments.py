"""Every deployment in prefect.yaml loads, and its parameters pass the flow's own validation."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from deployments.render import PREFECT_YAML, load_environments, render

DEPLOYMENTS: list[dict[str, Any]] = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def test_prefect_yaml_is_rendered_from_the_environment_files() -> None:
    assert PREFECT_YAML.read_text() == render(), "run: python -m deployments.render"


def test_every_environment_has_every_flow() -> None:
    names = {d["name"] for d in DEPLOYMENTS}
    for env in load_environments():
        flows = ("install-mesh", "install-cluster", "verify-mesh", "verify-access",
                 "ensure-mesh-pki", "rotate-certificates", "rotate-root",
                 "rotate-reader-tokens")  # fmt: skip
        assert {f"{f}-{env}" for f in flows} <= names


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_loads_and_its_parameters_validate(deployment: dict[str, Any]) -> None:
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment["parameters"])
    assert validated["spec"].environment in deployment["tags"]
    assert deployment["work_pool"]["name"] == f"meshflow-{validated['spec'].environment}"


def test_production_keeps_the_root_key_in_its_own_vault() -> None:
    prod = load_environments()["prod"]
    assert prod.root_key_vault_block not in (None, prod.key_vault_block)


def test_the_ui_form_is_the_mesh_description_schema() -> None:
    flow = load_flow_from_entrypoint("flows/install.py:install_mesh")
    schema = flow.parameters.model_dump()
    assert schema["required"] == ["spec"]
    definitions = schema["definitions"]
    assert {"MeshSpec", "ClusterSpec", "PkiSettings"} <= set(definitions)
    mesh = definitions["MeshSpec"]
    assert mesh["additionalProperties"] is False  # unknown fields are rejected by the form
    assert mesh["properties"]["clusters"]["minItems"] == 1
    cluster_name = definitions["ClusterSpec"]["properties"]["name"]
    assert cluster_name["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
