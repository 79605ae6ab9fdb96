"""An environment's Prefect blocks, saved from a small file and the process environment.

``deployments/blocks/<env>.yaml`` says where the environment's Azure resources are: the
identity (service principal, workload identity or the default chain), the mesh's Key Vault (and
the root key's, if separate) and each cluster's AKS coordinates, keyed by the mesh's cluster
names. It holds no secret: a service principal's client secret comes from ``AZURE_CLIENT_SECRET``
(or a hidden prompt, asked by the ``meshflow env init`` command), the App Gateway listener's PFX
from ``MESHFLOW_FRONTEND_PFX``. Block names come from the environment's mesh description, so the
flows find what was saved.

Saving is idempotent: a block already saved under its name is updated in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from blocks import AksCluster, AzureCredentials, KeyVault, forget_blocks
from deployments.render import ROOT
from meshflow import yamlio
from meshflow.errors import InvalidError
from meshflow.infra import InfraOutputs
from meshflow.spec import MeshSpec, spec_problems

BLOCKS_DIR = ROOT / "deployments" / "blocks"
CLIENT_SECRET_VARIABLE = "AZURE_CLIENT_SECRET"  # noqa: S105 (a variable name, not its value)
FRONTEND_PFX_VARIABLE = "MESHFLOW_FRONTEND_PFX"


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CredentialsEntry(_Entry):
    """The identity meshflow uses (see blocks.AzureCredentials); never its secret."""

    auth: Literal["service-principal", "workload-identity", "default"] = "service-principal"
    tenant_id: str | None = None
    client_id: str | None = None
    authority_host: str | None = None
    arm_endpoint: str | None = None
    ca_bundle: str | None = None


class VaultEntry(_Entry):
    """A Key Vault (see blocks.KeyVault)."""

    vault_name: str = Field(min_length=3, max_length=24)
    vault_url: str | None = None
    tenant_id: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    hsm_keys: bool = True


class ClusterEntry(_Entry):
    """An AKS cluster's ARM coordinates (see blocks.AksCluster)."""

    subscription_id: str
    resource_group: str
    cluster_name: str
    region: str


class EnvironmentBlocks(_Entry):
    """The contents of ``deployments/blocks/<env>.yaml``."""

    credentials: CredentialsEntry
    key_vault: VaultEntry | None = None
    root_key_vault: VaultEntry | None = None
    clusters: dict[str, ClusterEntry] = Field(default_factory=dict)

    def with_outputs(self, outputs: InfraOutputs) -> EnvironmentBlocks:
        """These entries with the vault and the clusters taken from Terraform's outputs."""
        kv = outputs.key_vault
        vault = VaultEntry(
            vault_name=kv.name, vault_url=kv.url, tenant_id=kv.tenant_id,
            subscription_id=outputs.subscription_id, resource_group=kv.resource_group,
            hsm_keys=self.key_vault.hsm_keys if self.key_vault else True,
        )  # fmt: skip
        clusters = {
            name: ClusterEntry(subscription_id=outputs.subscription_id,
                               resource_group=c.resource_group, cluster_name=c.name,
                               region=c.region)
            for name, c in outputs.clusters.items()
        }  # fmt: skip
        return self.model_copy(update={"key_vault": vault, "clusters": clusters})


def blocks_file(env: str) -> Path:
    """Where environment ``env``'s blocks file is."""
    return BLOCKS_DIR / f"{env}.yaml"


def load_blocks_file(path: Path) -> EnvironmentBlocks:
    """Read and validate a blocks file.

    Raises:
        InvalidError: missing, not YAML, or not a blocks file: one line per problem naming the
            file and the field.
    """
    try:
        data = yamlio.load(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidError(
            f"{path}: no such file; copy deployments/blocks/dev.yaml and fill in the "
            "environment's Azure coordinates"
        ) from exc
    except OSError as exc:
        raise InvalidError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise InvalidError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    try:
        return EnvironmentBlocks.model_validate(data)
    except ValidationError as exc:
        raise InvalidError("\n".join(f"{path}: {p}" for p in spec_problems(exc))) from exc


def problems_with(spec: MeshSpec, found: EnvironmentBlocks, path: Path) -> list[str]:
    """What the blocks file lacks (or has too many of) for the mesh ``spec``; one line each."""
    if found.key_vault is None:
        return [
            f"{path}: key_vault: say which vault holds the mesh CA, or take it from Terraform's "
            "outputs with --from-terraform"
        ]
    problems = [
        f"{path}: clusters: no entry for the mesh's cluster {c!r}"
        for c in spec.cluster_names if c not in found.clusters
    ] + [
        f"{path}: clusters: {c!r} is not a cluster of mesh {spec.environment} "
        f"(known: {', '.join(spec.cluster_names)})"
        for c in found.clusters if c not in spec.cluster_names
    ]  # fmt: skip
    if spec.root_key_vault_block and found.root_key_vault is None:
        problems.append(
            f"{path}: root_key_vault: the mesh keeps its root key in block "
            f"{spec.root_key_vault_block!r}; say which vault that is"
        )
    return problems


def needed_secrets(spec: MeshSpec, found: EnvironmentBlocks) -> list[str]:
    """The environment variables whose secrets saving these blocks needs."""
    needed = [CLIENT_SECRET_VARIABLE] if found.credentials.auth == "service-principal" else []
    return needed + ([FRONTEND_PFX_VARIABLE] if spec.frontend_pfx_block else [])


def build_blocks(
    spec: MeshSpec, found: EnvironmentBlocks, secrets: Mapping[str, str]
) -> list[tuple[str, Block]]:
    """The block documents to save, ``(name, block)``, in the order they are saved.

    ``secrets``: the values of :func:`needed_secrets`. Tenant and client id default to
    ``AZURE_TENANT_ID`` and ``AZURE_CLIENT_ID`` from ``secrets`` when the file leaves them out.

    Raises:
        InvalidError: the credentials are incomplete (one line saying what to set).
    """
    creds = build_credentials(spec, found, secrets)
    out: list[tuple[str, Block]] = [(spec.credentials_block, creds)]
    if found.key_vault is None:
        raise InvalidError(f"blocks of {spec.environment}: no key_vault entry")

    def vault(entry: VaultEntry) -> KeyVault:
        return KeyVault(**entry.model_dump(), credentials=creds)

    out.append((spec.key_vault_block, vault(found.key_vault)))
    if spec.root_key_vault_block and found.root_key_vault is not None:
        out.append((spec.root_key_vault_block, vault(found.root_key_vault)))
    if spec.frontend_pfx_block:
        out.append((spec.frontend_pfx_block, Secret(value=secrets[FRONTEND_PFX_VARIABLE])))
    for cluster in spec.clusters:
        entry = found.clusters[cluster.name]
        out.append((cluster.aks_block, AksCluster(**entry.model_dump(), credentials=creds)))
    return out


def build_credentials(
    spec: MeshSpec, found: EnvironmentBlocks, secrets: Mapping[str, str]
) -> AzureCredentials:
    """The credentials block to save under ``spec.credentials_block`` (see :func:`build_blocks`).

    Raises:
        InvalidError: the credentials are incomplete (one line saying what to set).
    """
    c = found.credentials
    try:
        creds = AzureCredentials(
            auth=c.auth,
            tenant_id=c.tenant_id or secrets.get("AZURE_TENANT_ID"),
            client_id=c.client_id or secrets.get("AZURE_CLIENT_ID"),
            client_secret=(
                SecretStr(secrets[CLIENT_SECRET_VARIABLE])
                if secrets.get(CLIENT_SECRET_VARIABLE) else None
            ),
            authority_host=c.authority_host,
            ca_bundle=c.ca_bundle,
            **({"arm_endpoint": c.arm_endpoint} if c.arm_endpoint else {}),
        )  # fmt: skip
    except ValidationError as exc:
        lines = [e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False)]
        raise InvalidError(
            f"credentials of {spec.environment}: {'; '.join(lines)} (tenant_id and client_id in "
            f"the blocks file or AZURE_TENANT_ID/AZURE_CLIENT_ID; the secret in "
            f"{CLIENT_SECRET_VARIABLE})"
        ) from None
    return creds


def register_block_types() -> None:
    """Register meshflow's block types on the Prefect server in force; idempotent."""
    from prefect.exceptions import ObjectAlreadyExists

    for block in (AzureCredentials, KeyVault, AksCluster):
        try:
            block.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
        except ObjectAlreadyExists:  # registered by another client in between: update it
            block.register_type_and_schema(_sync=True)  # type: ignore[call-arg]


def save_blocks(blocks: list[tuple[str, Block]]) -> list[tuple[str, str, str]]:
    """Save each block under its name, updating one that exists; ``(name, type, action)``."""
    register_block_types()
    saved = []
    for name, block in blocks:
        try:
            type(block).load(name, _sync=True)  # type: ignore[call-arg]
            action = "updated"
        except ValueError:
            action = "created"
        block.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]
        saved.append((name, block.get_block_type_name(), action))
    forget_blocks()
    return saved
