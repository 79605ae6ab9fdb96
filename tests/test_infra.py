"""The Terraform pure core: the output contract, plan summaries, the child's environment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshflow import infra
from meshflow.errors import InvalidError

MODULE = "infra/sandbox"


def cluster(name: str, **changes: str) -> dict[str, str]:
    return {
        "name": name,
        "resource_group": "rg",
        "node_resource_group": f"MC_rg_{name}_westeurope",
        "region": "westeurope",
        "api_server_fqdn": f"{name}-dns.hcp.westeurope.azmk8s.io",
        "secrets_provider_client_id": "11111111-2222-3333-4444-555555555555",
        "app_gateway_name": "aks-appgw-westeurope",
        "app_gateway_resource_group": f"MC_rg_{name}_westeurope",
        **changes,
    }


def contract(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "subscription_id": "sub",
        "clusters": {"one": cluster("one"), "two": cluster("two")},
        "key_vault": {
            "name": "mesh-kv",
            "url": "https://mesh-kv.vault.azure.net/",
            "tenant_id": "tenant",
            "resource_group": "shared-rg",
        },
    }
    return value | changes


def output_json(value: Any, name: str = infra.OUTPUT_NAME) -> str:
    return json.dumps({name: {"sensitive": False, "type": "object", "value": value}})


def test_the_contract_is_parsed_from_terraform_output_json() -> None:
    outputs = infra.parse_outputs(output_json(contract()), MODULE)
    assert sorted(outputs.clusters) == ["one", "two"]
    assert outputs.cluster("two").node_resource_group == "MC_rg_two_westeurope"
    assert outputs.key_vault.url == "https://mesh-kv.vault.azure.net/"
    with pytest.raises(KeyError, match=r"no cluster 'three'; known: \['one', 'two'\]"):
        outputs.cluster("three")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", r"output 'meshflow' of module infra/sandbox is missing \(outputs: none\); apply"),
        (output_json(1, name="other"), r"is missing \(outputs: other\)"),
        ("not json", r"did not print JSON"),
        (output_json(contract(key_vault={})), r"does not match .*key_vault.name: Field required"),
        (
            output_json(contract(clusters={"one": cluster("one", region="")})),
            r"clusters.one.region: String should have at least 1 character",
        ),
        (output_json(contract(clusters={"one": cluster("uno")})), r"keyed by another name.*one"),
        (output_json(contract(clusters={})), r"clusters: Dictionary should have at least 1 item"),
        (
            output_json(contract(extra="x")),
            r"output 'meshflow' of module infra/sandbox does not match .*extra",
        ),
    ],
)
def test_a_missing_or_malformed_output_names_the_output_and_the_module(
    text: str, message: str
) -> None:
    with pytest.raises(InvalidError, match=message) as caught:
        infra.parse_outputs(text, MODULE)
    assert MODULE in str(caught.value)


def test_the_contract_model_is_frozen() -> None:
    outputs = infra.parse_outputs(output_json(contract()), MODULE)
    with pytest.raises(ValueError, match="frozen"):
        outputs.key_vault.name = "other"  # type: ignore[misc]


def plan_json(*actions: list[str]) -> str:
    changes = [
        {"address": f"null_resource.r[{i}]", "change": {"actions": a}}
        for i, a in enumerate(actions)
    ]
    return json.dumps({"format_version": "0.2", "resource_changes": changes})


def test_a_plan_summary_counts_as_terraform_does() -> None:
    summary = infra.summarize_plan(
        plan_json(["create"], ["update"], ["delete", "create"], ["no-op"], ["read"], ["delete"]),
        MODULE,
    )
    assert (summary.add, summary.change, summary.destroy) == (2, 1, 2)
    assert [r.action for r in summary.resources] == ["create", "update", "replace", "delete"]
    assert summary.has_changes
    text = summary.markdown()
    assert "**2 to add, 1 to change, 2 to destroy.**" in text
    assert "| replace | `null_resource.r[2]` |" in text


def test_a_plan_without_changes_says_so() -> None:
    summary = infra.summarize_plan(plan_json(["no-op"]), MODULE)
    assert not summary.has_changes
    assert "No changes" in summary.markdown()


@pytest.mark.parametrize("text", ["", "[]", '{"resource_changes": [{"address": "x"}]}'])
def test_a_plan_that_is_not_terraform_json_is_refused(text: str) -> None:
    with pytest.raises(InvalidError, match="module infra/sandbox: `terraform show -json`"):
        infra.summarize_plan(text, MODULE)


ARGS = {"tenant_id": "t", "client_id": "c", "client_secret": "s3cr3t", "subscription_id": "sub"}


@pytest.mark.parametrize(
    ("auth", "parent", "expected"),
    [
        ("service-principal", {}, {"ARM_CLIENT_SECRET": "s3cr3t"}),
        (
            "workload-identity",
            {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/token"},
            {
                "ARM_USE_OIDC": "true",
                "ARM_USE_AKS_WORKLOAD_IDENTITY": "true",
                "ARM_OIDC_TOKEN_FILE_PATH": "/var/run/token",
            },
        ),
        (
            "workload-identity",
            {},
            {"ARM_USE_OIDC": "true", "ARM_USE_AKS_WORKLOAD_IDENTITY": "true"},
        ),
        ("default", {"IDENTITY_ENDPOINT": "http://169.254.169.254"}, {"ARM_USE_MSI": "true"}),
        ("default", {}, {"ARM_USE_CLI": "true"}),
    ],
)
def test_arm_variables_follow_the_credentials_block(
    auth: infra.AuthKind, parent: dict[str, str], expected: dict[str, str]
) -> None:
    common = {"ARM_SUBSCRIPTION_ID": "sub", "ARM_TENANT_ID": "t", "ARM_CLIENT_ID": "c"}
    assert infra.arm_environment(auth, **ARGS, parent=parent) == common | expected


def test_the_child_environment_drops_the_parents_arm_and_tf_variables() -> None:
    parent = {
        "PATH": "/bin",
        "ARM_CLIENT_SECRET": "parent-secret",
        "TF_LOG": "TRACE",
        "ARM_SUBSCRIPTION_ID": "parent-sub",
    }
    env = infra.child_environment(parent, {"ARM_CLIENT_ID": "c"}, {"TF_DATA_DIR": "/d"})
    assert env == {
        "PATH": "/bin",
        "ARM_SUBSCRIPTION_ID": "parent-sub",
        "ARM_CLIENT_ID": "c",
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "TF_DATA_DIR": "/d",
    }
    own = infra.child_environment(parent, {"ARM_SUBSCRIPTION_ID": "own"}, {})
    assert own["ARM_SUBSCRIPTION_ID"] == "own"


def test_backend_config_keys_are_checked() -> None:
    assert infra.backend_config_args({"path": "/s/terraform.tfstate"}) == {
        "path": "/s/terraform.tfstate"
    }
    with pytest.raises(InvalidError, match=r"invalid keys \['a=b'\]"):
        infra.backend_config_args({"a=b": "c"})


@pytest.mark.parametrize(
    ("path", "expected"),
    [("infra/sandbox", "/repo/infra/sandbox"), ("/abs/x.tfvars", "/abs/x.tfvars")],
)
def test_paths_are_relative_to_the_repository_unless_absolute(path: str, expected: str) -> None:
    assert infra.resolve_path(path, "/repo") == expected


def test_the_cli_configuration_mirrors_only_the_listed_providers() -> None:
    text = infra.mirror_cli_config("/d/mirror", ["registry.terraform.io/hashicorp/null"])
    assert 'path    = "/d/mirror"' in text
    assert 'include = ["registry.terraform.io/hashicorp/null"]' in text
    assert 'exclude = ["registry.terraform.io/hashicorp/null"]' in text


def test_secrets_are_redacted_longest_first() -> None:
    assert infra.redact_secrets("a abc b", ["ab", "abc", ""]) == "a [REDACTED] b"


def test_the_tail_keeps_the_last_non_empty_lines() -> None:
    assert infra.tail_lines("1\n\n2\n3\n", lines=2) == "2\n3"
