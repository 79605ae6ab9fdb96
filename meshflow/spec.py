"""The mesh description: the one parameter every meshflow flow takes.

A frozen pydantic model with unknown fields forbidden, so the Prefect UI renders it as a form and
rejects a bad description before a run starts. Pure: no SDK, no Prefect. Per-environment values
live in ``deployments/environments/<env>.yaml``; the sandbox writes its own on ``sandbox up``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from meshflow import yamlio
from meshflow.errors import InvalidError
from meshflow.istioctl import KNOWN_RELEASES

_DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")

DnsLabel = Annotated[
    str,
    StringConstraints(max_length=63, pattern=_DNS1123_LABEL),
    Field(title="DNS label", description="A DNS-1123 label: lower-case letters, digits and '-'."),
]
BlockName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=120, pattern=r"^[a-z0-9][-a-z0-9]*$"),
    Field(title="Block name", description="The name of a saved Prefect block document."),
]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


ISTIO_VERSIONS: tuple[str, ...] = tuple(sorted(KNOWN_RELEASES, key=_version_key))
"""The Istio releases a mesh can run, oldest first: the run form's choices for the version."""


def _number_properties(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Give each property of ``model``'s JSON schema its place, so forms keep the field order.

    The Prefect UI sorts a form's fields by ``position``; without it a database that stores
    JSON with sorted keys (PostgreSQL's JSONB) would shuffle them.
    """
    for position, prop in enumerate(schema.get("properties", {}).values()):
        prop["position"] = position


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_number_properties)


class PkiSettings(_Frozen):
    """Validity, key sizes and rotation threshold of the mesh CA (Istio's defaults)."""

    model_config = ConfigDict(title="PKI settings")

    root_days: int = Field(
        default=3650, ge=30, le=7300, title="Root CA validity (days)",
        description="How long the mesh root CA is valid when it is made.",
    )  # fmt: skip
    intermediate_days: int = Field(
        default=730, ge=7, le=3650, title="Intermediate CA validity (days)",
        description="How long each cluster's intermediate CA (istiod's signing CA) is valid.",
    )  # fmt: skip
    leaf_days: int = Field(
        default=365, ge=1, le=825, title="Ingress certificate validity (days)",
        description="How long the ingress gateway's certificate is valid.",
    )  # fmt: skip
    ca_key_size: Literal[2048, 3072, 4096] = Field(
        default=4096, title="CA key size (bits)",
        description="RSA key size of the root and intermediate CAs.",
    )  # fmt: skip
    leaf_key_size: Literal[2048, 3072, 4096] = Field(
        default=2048, title="Ingress key size (bits)",
        description="RSA key size of the ingress gateway's certificate.",
    )  # fmt: skip
    rotation_threshold_days: int = Field(
        default=30, ge=1, title="Rotation threshold (days)",
        description="Reissue an intermediate or the ingress certificate with this many days left; "
        "shorter than the intermediate validity.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.rotation_threshold_days >= self.intermediate_days:
            raise ValueError(
                f"rotation_threshold_days ({self.rotation_threshold_days}) must be shorter than "
                f"intermediate_days ({self.intermediate_days}), or every run would reissue"
            )
        return self


class IngressSettings(_Frozen):
    """How the ingress clusters are exposed through their App Gateway (steps 12-22)."""

    model_config = ConfigDict(title="Ingress settings")

    host_pattern: str = Field(
        default="{ip}.nip.io", title="Public host name",
        description="Public host name; {ip} is the App Gateway's public IP. nip.io for trying, a "
        "name of your DNS zone in production.",
    )  # fmt: skip
    https: bool = Field(
        default=True, title="HTTPS end to end",
        description="Go on to HTTPS end to end after HTTP works (steps 16-22).",
    )  # fmt: skip
    probe_seconds: float = Field(
        default=60.0, ge=1, le=600, title="Probe timeout (seconds)",
        description="How long an HTTP(S) probe through the App Gateway retries before it fails.",
    )  # fmt: skip
    agic_seconds: float = Field(
        default=300.0, ge=0, le=3600, title="AGIC wait (seconds)",
        description="How long to wait for AGIC to write the App Gateway from the Ingress.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> Self:
        self.host_for("10.0.0.1")  # ValueError naming the pattern
        return self

    def host_for(self, ip: str) -> str:
        """The public host name for ``ip`` (``{ip}.nip.io`` gives ``1.2.3.4.nip.io``).

        Raises:
            ValueError: the pattern does not give a DNS name.
        """
        host = self.host_pattern.replace("{ip}", ip).lower()
        if not _DNS_NAME.match(host):
            raise ValueError(
                f"ingress host_pattern {self.host_pattern!r} gives {host!r}, not a DNS name; use "
                "e.g. '{ip}.nip.io', or a name of your DNS zone"
            )
        return host


class RotationSettings(_Frozen):
    """How a rotation run makes new certificate versions reach the clusters."""

    model_config = ConfigDict(title="Rotation settings")

    mount_wait_seconds: float = Field(
        default=150.0, ge=0, le=3600, title="CSI mount wait (seconds)",
        description="How long to wait for the pods' CSI mounts to show the new Key Vault "
        "versions (the driver polls every 2 minutes by default).",
    )  # fmt: skip
    restart_istiod_on_timeout: bool = Field(
        default=False, title="Restart istiod on timeout",
        description="Restart istiod where its mounts did not show the new versions in time.",
    )  # fmt: skip


ProvisionMode = Literal["adopt", "plan", "apply"]
"""How a run treats the infrastructure: ``adopt`` reads the Terraform outputs only (existing
meshes), ``plan`` stops after publishing the plan, ``apply`` applies a plan that has changes."""


class TerraformSettings(_Frozen):
    """The Terraform root module that provisions the mesh's infrastructure (seed step 00)."""

    model_config = ConfigDict(title="Terraform settings")

    module: str = Field(
        default="infra/azure", title="Root module",
        description="The root module's directory, relative to the repository or absolute "
        "(infra/azure; the sandbox uses infra/sandbox).",
    )  # fmt: skip
    var_file: Annotated[str, Field(title="Path")] | None = Field(
        default=None, title="Variables file",
        description="A .tfvars file, relative to the repository or absolute, e.g. "
        "deployments/environments/dev.tfvars.",
    )  # fmt: skip
    subscription_id: Annotated[str, Field(title="Subscription ID")] | None = Field(
        default=None, title="Subscription",
        description="The Azure subscription Terraform works in (ARM_SUBSCRIPTION_ID); none: the "
        "worker's own ARM_SUBSCRIPTION_ID.",
    )  # fmt: skip
    backend_config: dict[str, str] = Field(
        default_factory=dict, title="Backend configuration",
        description="`-backend-config` key/value pairs of the remote state (no secrets: those "
        "come from the credentials block through the environment).",
    )  # fmt: skip


class PkiStore(_Frozen):
    """Where the mesh PKI lives and how it is made: what every PKI task takes."""

    key_vault_block: BlockName = Field(description="The mesh vault's Meshflow Key Vault block.")
    root_key_vault_block: BlockName | None = Field(
        default=None, description="The root key's vault, if not the mesh vault."
    )
    frontend_pfx_block: BlockName | None = Field(
        default=None, description="Prefect Secret block with the App Gateway listener's PFX."
    )
    settings: PkiSettings = Field(default_factory=PkiSettings)


class ClusterSpec(_Frozen):
    """One cluster of the mesh."""

    model_config = ConfigDict(title="Cluster")

    name: DnsLabel = Field(
        title="Cluster name",
        description="Istio clusterName: unique in the mesh, the key of its remote secret.",
    )
    aks_block: BlockName = Field(
        title="AKS cluster block",
        description="The saved Meshflow AKS Cluster block that reaches this cluster.",
    )
    sample_workload: bool = Field(
        default=False, title="Sample workload",
        description="Run the echoserver Deployment here (step 10); the ingress routes to it.",
    )  # fmt: skip
    ingress: bool = Field(
        default=False, title="Ingress",
        description="Expose the ingress gateway here through the cluster's App Gateway (12-22).",
    )  # fmt: skip


class MeshSpec(_Frozen):
    """A multi-primary Istio mesh across AKS clusters, on one flat network."""

    # The docstring and every title and description show in the Prefect UI's run form, whose
    # fields come in this order, the runbook's: environment and clusters, the Istio release,
    # the mesh's identity, the saved blocks, provisioning, then PKI, ingress and rotation.
    model_config = ConfigDict(title="Mesh")

    environment: DnsLabel = Field(
        title="Environment",
        description="dev, staging, prod or sandbox: names the work pool, artifacts and alerts.",
    )
    clusters: tuple[ClusterSpec, ...] = Field(
        min_length=1, title="Clusters",
        description="The AKS clusters of the mesh, each a primary with its own istiod; at least "
        "one, names unique.",
    )  # fmt: skip
    istio_version: str = Field(
        default="1.27.3", title="Istio version",
        description="The Istio release installed on every cluster (a release meshflow knows).",
        json_schema_extra={"enum": list(ISTIO_VERSIONS)},
    )  # fmt: skip
    revision: DnsLabel | None = Field(
        default=None, title="Istio revision",
        description="The control plane's revision label; empty: the version with '-' for '.' "
        "(1.27.3 gives 1-27-3).",
    )  # fmt: skip
    mesh_id: DnsLabel = Field(
        default="mesh1", title="Mesh ID", description="Istio meshID, the same on every cluster."
    )
    network: DnsLabel = Field(
        default="network1", title="Network",
        description="Istio network: one flat network (peered VNets), the same on every cluster.",
    )  # fmt: skip
    credentials_block: BlockName = Field(
        title="Azure credentials block",
        description="The saved Meshflow Azure Credentials block the flows sign in with.",
    )
    key_vault_block: BlockName = Field(
        title="Key Vault block",
        description="The saved Meshflow Key Vault block of the mesh vault (intermediate CAs, "
        "ingress certificates).",
    )
    root_key_vault_block: BlockName | None = Field(
        default=None, title="Root CA Key Vault block",
        description="Vault for the root CA key if not the mesh vault (recommended for prod).",
    )  # fmt: skip
    frontend_pfx_block: BlockName | None = Field(
        default=None, title="App Gateway listener PFX block",
        description="Prefect Secret block with a base64 PFX for the App Gateway listener; "
        "empty: a self-signed certificate from Key Vault's default policy.",
    )  # fmt: skip
    provision: ProvisionMode = Field(
        default="adopt", title="Provisioning",
        description="adopt: read the Terraform outputs only; plan: stop after the plan; apply: "
        "apply the plan when it has changes.",
    )  # fmt: skip
    terraform: TerraformSettings | None = Field(
        default=None, title="Terraform module",
        description="The Terraform module of the infrastructure; empty: adopt the blocks' "
        "clusters and vault as they are.",
    )  # fmt: skip
    pki: PkiSettings = Field(
        default_factory=PkiSettings, title="PKI",
        description="Validity, key sizes and rotation threshold of the mesh CA.",
    )  # fmt: skip
    ingress: IngressSettings = Field(
        default_factory=IngressSettings, title="Ingress",
        description="How the ingress clusters are exposed through their App Gateway.",
    )  # fmt: skip
    rotation: RotationSettings = Field(
        default_factory=RotationSettings, title="Certificate rotation",
        description="How rotate-certificates and rotate-root make new certificate versions "
        "reach the pods.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster names must be unique; repeated: {', '.join(dupes)}")
        version = _VERSION.match(self.istio_version)
        if not version:
            raise ValueError(
                f"istio_version {self.istio_version!r} is not MAJOR.MINOR.PATCH (e.g. 1.27.3)"
            )
        if self.istio_version not in KNOWN_RELEASES:
            known = ", ".join(ISTIO_VERSIONS)
            raise ValueError(
                f"istio_version {self.istio_version!r} is not a release meshflow knows "
                f"(known: {known})"
            )
        exposed = [c.name for c in self.clusters if c.ingress]
        if exposed and not any(c.sample_workload for c in self.clusters):
            raise ValueError(
                f"clusters {', '.join(exposed)} have ingress: true, but no cluster runs the sample "
                "workload the ingress routes to; set sample_workload: true on one cluster, or "
                "ingress: false"
            )
        minor = f"{version[1]}-{version[2]}"
        if self.revision is not None and not re.match(rf"^{minor}(-|$)", self.revision):
            raise ValueError(
                f"revision {self.revision!r} does not match istio_version {self.istio_version}; "
                f"use e.g. {self.default_revision!r}"
            )
        return self

    @property
    def default_revision(self) -> str:
        """``1.27.3`` → ``1-27-3``: the revision Istio's docs use for a version."""
        return self.istio_version.replace(".", "-")

    @property
    def istio_revision(self) -> str:
        """The revision in force (explicit or derived from the version)."""
        return self.revision or self.default_revision

    @property
    def pki_store(self) -> PkiStore:
        """Where this mesh's PKI lives (the PKI tasks' input)."""
        return PkiStore(
            key_vault_block=self.key_vault_block,
            root_key_vault_block=self.root_key_vault_block,
            frontend_pfx_block=self.frontend_pfx_block,
            settings=self.pki,
        )

    @property
    def ingress_clusters(self) -> tuple[ClusterSpec, ...]:
        """The clusters exposed through their App Gateway."""
        return tuple(c for c in self.clusters if c.ingress)

    def serves_tls(self, cluster: ClusterSpec) -> bool:
        """Whether ``cluster``'s ingress gateway serves HTTPS (mounts its certificate, step 20)."""
        return cluster.ingress and self.ingress.https

    @property
    def cluster_names(self) -> tuple[str, ...]:
        """The clusters' names, in the spec's order."""
        return tuple(c.name for c in self.clusters)

    def cluster(self, name: str) -> ClusterSpec:
        """The cluster called ``name``; ``KeyError`` naming the known ones otherwise."""
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(f"no cluster {name!r} in the mesh; known: {[c.name for c in self.clusters]}")

    @classmethod
    def from_yaml(cls, path: Path) -> MeshSpec:
        """Load and validate a mesh description file.

        Raises:
            InvalidError: the file cannot be read, is not YAML, or does not describe a mesh:
                one line per problem, each naming the file and the field.
        """
        try:
            data = yamlio.load(path.read_text())
        except OSError as exc:
            raise InvalidError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise InvalidError(f"{where}: not valid YAML: {problem}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidError(
                "\n".join(f"{path}: {problem}" for problem in spec_problems(exc))
            ) from exc

    def to_yaml(self) -> str:
        """The description as YAML (round-trips through :meth:`from_yaml`)."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def spec_problems(exc: ValidationError) -> list[str]:
    """One ``field: message`` line per problem of a mesh description (``clusters[0].name``)."""
    errors = exc.errors(include_url=False, include_input=False)
    # pydantic reports a tuple whose items failed also as "too short": the items say it.
    failed_items = {e["loc"][:i] for e in errors for i in range(1, len(e["loc"]))}
    lines = []
    for error in errors:
        if error["type"] == "too_short" and error["loc"] in failed_items:
            continue
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f"{'.' if where else ''}{part}"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where or 'the mesh'}: {message}")
    return lines
