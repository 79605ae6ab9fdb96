"""Terraform, the pure part: the output contract, plan summaries and the child's environment.

Both root modules (``infra/azure`` for Azure, ``infra/sandbox`` for the local sandbox) declare
one output, :data:`OUTPUT_NAME`, of one shape: :class:`InfraOutputs`. What Terraform prints is
validated here, so a module that drifts from the contract fails with a message naming the
output and the module instead of a ``KeyError`` three stages later. Pure: no SDK, no Prefect,
no I/O; ``tasks/terraform.py`` runs the binary and hands its text to these functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshflow.errors import InvalidError

OUTPUT_NAME = "meshflow"
"""The one output both root modules declare."""

PLAN_NO_CHANGES, PLAN_ERROR, PLAN_CHANGES = 0, 1, 2
"""``terraform plan -detailed-exitcode``: 0 no changes, 1 an error, 2 changes to apply."""

AuthKind = Literal["service-principal", "workload-identity", "default"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClusterOutputs(_Frozen):
    """One cluster as the module made it: where it is and what the mesh needs from it."""

    name: str = Field(min_length=1, description="AKS resource name.")
    resource_group: str = Field(min_length=1, description="The cluster's resource group.")
    node_resource_group: str = Field(min_length=1, description="AKS's node resource group.")
    region: str = Field(min_length=1, description="Azure region, e.g. westeurope.")
    api_server_fqdn: str = Field(min_length=1, description="The API server's host name.")
    secrets_provider_client_id: str = Field(
        min_length=1, description="Client ID of the Key Vault Secrets Provider's identity."
    )
    app_gateway_name: str = Field(min_length=1, description="The AGIC add-on's App Gateway.")
    app_gateway_resource_group: str = Field(min_length=1, description="Its resource group.")


class KeyVaultOutputs(_Frozen):
    """The shared Key Vault that holds the mesh CA."""

    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https://", description="The vault URI, https://<name>.vault...")
    tenant_id: str = Field(min_length=1)
    resource_group: str = Field(min_length=1)


class InfraOutputs(_Frozen):
    """The output contract: every cluster by name, the vault, the subscription."""

    subscription_id: str = Field(min_length=1)
    clusters: dict[str, ClusterOutputs] = Field(min_length=1)
    key_vault: KeyVaultOutputs

    @model_validator(mode="after")
    def _keys_are_names(self) -> InfraOutputs:
        wrong = sorted(k for k, c in self.clusters.items() if k != c.name)
        if wrong:
            raise ValueError(f"clusters keyed by another name than their own: {', '.join(wrong)}")
        return self

    def cluster(self, name: str) -> ClusterOutputs:
        """The cluster called ``name``; ``KeyError`` naming the known ones otherwise."""
        try:
            return self.clusters[name]
        except KeyError:
            raise KeyError(
                f"the Terraform outputs have no cluster {name!r}; known: {sorted(self.clusters)}"
            ) from None


def parse_outputs(output_json: str, module: str) -> InfraOutputs:
    """The contract from ``terraform output -json`` of ``module``.

    Raises:
        InvalidError: the text is not JSON, the output is missing (not applied yet, or a module
            that does not declare it), or its value does not have the contract's shape: the
            message names the output, the module and the fields.
    """
    where = f"output {OUTPUT_NAME!r} of module {module}"
    try:
        outputs = json.loads(output_json or "{}")
    except ValueError as exc:
        raise InvalidError(f"{where}: `terraform output -json` did not print JSON") from exc
    entry = outputs.get(OUTPUT_NAME) if isinstance(outputs, dict) else None
    if not isinstance(entry, dict) or "value" not in entry:
        known = ", ".join(sorted(outputs)) if isinstance(outputs, dict) and outputs else "none"
        raise InvalidError(
            f"{where} is missing (outputs: {known}); apply the module first (provision: apply), "
            f"or declare the output {OUTPUT_NAME!r} in {module} (see docs/provisioning.md)",
            system="Terraform", target=module, object=OUTPUT_NAME,
        )  # fmt: skip
    try:
        return InfraOutputs.model_validate(entry["value"])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidError(
            f"{where} does not match meshflow's contract: {problems}; fix the output in "
            f"{module} (see docs/provisioning.md)",
            system="Terraform", target=module, object=OUTPUT_NAME,
        ) from exc  # fmt: skip


# -- plans -----------------------------------------------------------------------------------


class ResourceChange(_Frozen):
    """One resource a plan touches: its address and Terraform's actions for it."""

    address: str
    actions: tuple[str, ...]

    @property
    def action(self) -> str:
        """``create``, ``update``, ``delete`` or ``replace`` (delete and create)."""
        return "replace" if set(self.actions) == {"create", "delete"} else self.actions[0]


class PlanSummary(_Frozen):
    """What a saved plan would do: counts as Terraform prints them, and the resources."""

    module: str
    add: int = 0
    change: int = 0
    destroy: int = 0
    resources: tuple[ResourceChange, ...] = ()

    @property
    def has_changes(self) -> bool:
        """Whether applying the plan would change anything."""
        return bool(self.add or self.change or self.destroy)

    def markdown(self) -> str:
        """The summary as a Markdown artifact: the counts, then one row per resource."""
        head = (
            f"# Terraform plan: {self.module}\n\n"
            f"**{self.add} to add, {self.change} to change, {self.destroy} to destroy.**\n"
        )
        if not self.resources:
            return head + "\nNo changes: the infrastructure matches the configuration.\n"
        rows = "\n".join(f"| {r.action} | `{r.address}` |" for r in self.resources)
        return head + f"\n| action | resource |\n|---|---|\n{rows}\n"


def summarize_plan(show_json: str, module: str) -> PlanSummary:
    """The summary of ``terraform show -json <planfile>`` (only addresses and actions are read).

    Counts follow Terraform's own ``Plan: N to add, N to change, N to destroy``: a replacement
    counts once to add and once to destroy; no-op and read actions count nowhere.

    Raises:
        InvalidError: the text is not a plan in Terraform's JSON format.
    """
    try:
        plan = json.loads(show_json)
        changes = [
            ResourceChange(address=str(rc["address"]), actions=tuple(rc["change"]["actions"]))
            for rc in plan.get("resource_changes") or ()
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidError(
            f"module {module}: `terraform show -json` of the plan is not a plan in Terraform's "
            "JSON format; check the Terraform binary's version (>= 1.0)",
            system="Terraform", target=module,
        ) from exc  # fmt: skip
    touched = tuple(c for c in changes if set(c.actions) - {"no-op", "read"})
    return PlanSummary(
        module=module,
        add=sum("create" in c.actions for c in touched),
        change=sum("update" in c.actions for c in touched),
        destroy=sum("delete" in c.actions for c in touched),
        resources=touched,
    )


# -- the child's environment -----------------------------------------------------------------


def arm_environment(
    auth: AuthKind,
    *,
    tenant_id: str | None,
    client_id: str | None,
    client_secret: str | None,
    subscription_id: str | None,
    parent: Mapping[str, str],
) -> dict[str, str]:
    """The ``ARM_*`` variables azurerm reads for a credentials block of kind ``auth``.

    Only for the Terraform child's environment: never a command line or a file. ``parent`` is
    the calling process's environment, read for the workload identity's token file and for
    whether a managed identity is at hand (``default``).
    """
    env: dict[str, str] = {}
    if subscription_id:
        env["ARM_SUBSCRIPTION_ID"] = subscription_id
    if tenant_id:
        env["ARM_TENANT_ID"] = tenant_id
    if client_id:
        env["ARM_CLIENT_ID"] = client_id
    if auth == "service-principal":
        env["ARM_CLIENT_SECRET"] = client_secret or ""
    elif auth == "workload-identity":
        env |= {"ARM_USE_OIDC": "true", "ARM_USE_AKS_WORKLOAD_IDENTITY": "true"}
        token_file = parent.get("AZURE_FEDERATED_TOKEN_FILE")
        if token_file:
            env["ARM_OIDC_TOKEN_FILE_PATH"] = token_file
    elif parent.get("IDENTITY_ENDPOINT") or parent.get("MSI_ENDPOINT"):
        env["ARM_USE_MSI"] = "true"  # on Azure: the host's managed identity
    else:
        env["ARM_USE_CLI"] = "true"  # elsewhere: `az login`
    return env


def child_environment(
    parent: Mapping[str, str], arm: Mapping[str, str], terraform: Mapping[str, str]
) -> dict[str, str]:
    """The Terraform child's whole environment: ``parent``, then ``arm``, then ``terraform``.

    ``parent``'s own ``ARM_*`` and ``TF_*`` are left out (the block decides the identity,
    meshflow the data folder); ``ARM_SUBSCRIPTION_ID`` of ``parent`` is kept when ``arm`` has none.
    """
    env = {k: v for k, v in parent.items() if not k.startswith(("ARM_", "TF_"))}
    if "ARM_SUBSCRIPTION_ID" in parent and "ARM_SUBSCRIPTION_ID" not in arm:
        env["ARM_SUBSCRIPTION_ID"] = parent["ARM_SUBSCRIPTION_ID"]
    return env | dict(arm) | {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0"} | dict(terraform)


# -- command lines ---------------------------------------------------------------------------


def backend_config_args(backend_config: Mapping[str, str]) -> dict[str, str]:
    """``-backend-config`` pairs for python-terraform (which renders a dict as ``k=v`` pairs).

    Raises:
        InvalidError: a key that is empty or holds ``=``.
    """
    bad = sorted(k for k in backend_config if not k or "=" in k)
    if bad:
        raise InvalidError(f"terraform.backend_config: invalid keys {bad}")
    return dict(backend_config)


def resolve_path(path: str, repo_root: str) -> str:
    """``path`` as given when absolute, else relative to the repository ``repo_root``."""
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(repo_root, path))


def mirror_cli_config(mirror_dir: str, providers: Sequence[str]) -> str:
    """A Terraform CLI configuration taking ``providers`` from the filesystem mirror only.

    Every other provider still comes from its registry (``direct``), so one configuration
    serves the sandbox (``null`` from PyPI) and Azure (``azurerm`` from the registry).
    """
    listed = json.dumps(list(providers))
    return (
        "provider_installation {\n"
        f"  filesystem_mirror {{\n    path    = {json.dumps(mirror_dir)}\n"
        f"    include = {listed}\n  }}\n"
        f"  direct {{\n    exclude = {listed}\n  }}\n"
        "}\n"
    )


def redact_secrets(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every non-empty value of ``secrets`` replaced by ``[REDACTED]``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "[REDACTED]")
    return text


def tail_lines(text: str, *, lines: int = 30, chars: int = 4000) -> str:
    """The last ``lines`` non-empty lines of ``text``, at most ``chars`` characters."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-chars:]


def clusters_missing(outputs: InfraOutputs, names: Iterable[str], module: str) -> list[str]:
    """One line per mesh cluster that the module's outputs do not have, saying what to do."""
    return [
        f"cluster {name!r} is in the mesh description but not in the outputs of {module}; add it "
        "to the module's clusters variable (its .tfvars), or remove it from the mesh"
        for name in names
        if name not in outputs.clusters
    ]
