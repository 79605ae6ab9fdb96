"""The provision-infrastructure flow on a real Prefect server with the real Terraform binary.

infra/sandbox with the sandbox's inputs (sandbox/terraform.py): apply, then a run with
nothing to apply, plan (artifact, stop), adopt; and a failing apply whose error, logs and
folders do not hold the credentials block's client secret (the session's prefect_server
fixture also scans everything the server stored for it).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from blocks import AzureCredentials, forget_blocks
from flows.provision import Provisioned, artifact_key, provision_infrastructure
from meshflow.spec import ClusterSpec, MeshSpec, TerraformSettings
from sandbox import terraform as sandbox_terraform
from sandbox.prefect_server import PrefectServer
from tasks.terraform import TerraformError

SECRET = "flow-arm-client-secret-7d2e91b04c"
REPO = Path(__file__).resolve().parents[1]
BLOCK = "tf-flow-test"


@pytest.fixture(scope="module")
def credentials(prefect_server: PrefectServer, terraform_bin: Path) -> str:
    block = AzureCredentials(
        auth="service-principal", tenant_id="tenant", client_id="client",
        client_secret=SecretStr(SECRET),
    )  # fmt: skip
    block.save(BLOCK, overwrite=True, _sync=True)  # type: ignore[call-arg]
    forget_blocks()
    return BLOCK


def mesh(environment: str, provision: str, terraform: TerraformSettings) -> MeshSpec:
    return MeshSpec.model_validate(
        {
            "environment": environment,
            "credentials_block": BLOCK,
            "key_vault_block": "unused",
            "clusters": [ClusterSpec(name="cluster-1", aks_block="unused")],
            "provision": provision,
            "terraform": terraform,
        }
    )


def run(spec: MeshSpec) -> Provisioned | None:
    return asyncio.run(provision_infrastructure(spec))


async def artifact_markdown(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return str(found[0].data) if found else ""


async def all_logs() -> str:
    """Every log record on the server (read page by page: the API returns 200 at a time)."""
    messages: list[str] = []
    async with get_client() as client:
        while page := await client.read_logs(limit=200, offset=len(messages)):
            messages += [log.message for log in page]
    return "\n".join(messages)


def test_apply_then_nothing_to_apply_then_plan_and_adopt(credentials: str, tmp_path: Path) -> None:
    urls = {"cluster-1": "https://127.0.0.1:6443", "cluster-2": "https://127.0.0.1:6444"}
    settings = sandbox_terraform.write_terraform_inputs(tmp_path, urls, "https://127.0.0.1:8443")

    first = run(mesh("tf-apply", "apply", settings))
    assert first is not None
    assert (first.applied, first.stop, first.plan and first.plan.add) == (True, False, 5)
    assert first.outputs is not None
    assert first.outputs.cluster("cluster-2").api_server_fqdn == "127.0.0.1:6444"
    assert first.outputs.cluster("cluster-1").secrets_provider_client_id == (
        sandbox_terraform.secrets_provider_client_id("cluster-1")
    )

    second = run(mesh("tf-apply", "apply", settings))
    assert second is not None
    assert second.applied is False
    assert second.plan is not None
    assert not second.plan.has_changes
    assert second.outputs == first.outputs
    assert second.line() == "infrastructure infra/sandbox: no changes"

    urls["cluster-3"] = "https://127.0.0.1:6445"
    sandbox_terraform.write_terraform_inputs(tmp_path, urls, "https://127.0.0.1:8443")
    planned = run(mesh("tf-plan", "plan", settings))
    assert planned is not None
    assert planned.stop
    assert planned.outputs is None
    assert planned.plan is not None
    assert planned.plan.add == 5  # the cluster and its four peerings: not applied
    text = asyncio.run(artifact_markdown(artifact_key("tf-plan")))
    assert "**5 to add, 0 to change, 0 to destroy.**" in text
    assert '`null_resource.cluster["cluster-3"]`' in text

    adopted = run(mesh("tf-adopt", "adopt", settings))
    assert adopted is not None
    assert adopted.plan is None
    assert adopted.outputs is not None
    assert sorted(adopted.outputs.clusters) == ["cluster-1", "cluster-2"]  # plan applied nothing


def test_no_terraform_module_provisions_nothing(credentials: str) -> None:
    spec = MeshSpec(
        environment="tf-none", credentials_block=BLOCK, key_vault_block="unused",
        clusters=(ClusterSpec(name="cluster-1", aks_block="unused"),),
    )  # fmt: skip
    assert run(spec) is None


def test_a_failing_apply_leaks_the_secret_nowhere(credentials: str, tmp_path: Path) -> None:
    module = tmp_path / "infra" / "sandbox"
    shutil.copytree(REPO / "infra" / "sandbox", module)
    shutil.copytree(REPO / "infra" / "modules", tmp_path / "infra" / "modules")
    (module / "fail.tf").write_text(
        'resource "null_resource" "fails" {\n'
        '  provisioner "local-exec" {\n'
        '    command = "echo \\"secret: $ARM_CLIENT_SECRET\\" >&2; exit 3"\n'
        "  }\n}\n"
    )
    state = tmp_path / "state"
    state.mkdir()
    inputs = sandbox_terraform.write_terraform_inputs(
        state, {"cluster-1": "https://127.0.0.1:6443"}, "https://127.0.0.1:8443"
    )
    settings = inputs.model_copy(update={"module": str(module)})
    with pytest.raises(TerraformError) as caught:
        run(mesh("tf-fail", "apply", settings))
    assert "local-exec provisioner error" in caught.value.message
    assert "secret: [REDACTED]" in caught.value.message
    assert SECRET not in str(caught.value)
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # deliver the run's logs before reading them
    logs = asyncio.run(all_logs())
    assert "terraform apply of module" in logs  # the failure was logged ...
    assert SECRET not in logs  # ... without the secret
    hits = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
