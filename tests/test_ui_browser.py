"""The Prefect UI seen in headless Chromium: the install run form and a completed run's artifact.

Against the session's Prefect server, which serves its UI at its root URL (the V1 UI under
``v1_base_url``, the V2 UI, the default for a browser without a saved choice, under
``v2_base_url``, both read from ``/ui-settings``). Screenshots go to ``.test-output/screenshots``.
Without ``chromium`` the module is skipped, except in CI (``CI=true``), where
``scripts/bootstrap.sh`` has installed it and its absence is a failure.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshflow.spec import MeshSpec
from sandbox import processes
from sandbox.prefect_server import PrefectServer
from tests.browser import SCREENSHOTS, BrowserError, Page, chromium, chromium_binary

NO_CHROMIUM = "chromium is not installed (scripts/bootstrap.sh installs it with apt-get)"
IN_CI = os.environ.get("CI") == "true"

# Skipped before any session fixture starts a server; in CI the tests run, and fail.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_binary() is None and not IN_CI, reason=NO_CHROMIUM),
]

UI_VERSIONS = ("v1", "v2")

# The run form's labels, in the order they must appear (the runbook's).
FORM_LABELS = (
    "Environment", "Clusters", "Cluster name", "AKS cluster block", "Istio version",
    "Istio revision", "Mesh ID", "Network", "Azure credentials block", "Key Vault block",
    "Provisioning", "Terraform module", "PKI", "CA key size (bits)", "Ingress",
    "Certificate rotation",
)  # fmt: skip
GENERATED_LABELS = ("Mesh Id", "Ca Key Size", "Pki (Optional)", "Istio Version", "Aks Block")


def require_chromium() -> None:
    """Skip the calling test without ``chromium``; fail it instead under ``CI=true``."""
    if chromium_binary() is None:
        if IN_CI:
            pytest.fail(f"CI=true: {NO_CHROMIUM}")
        pytest.skip(NO_CHROMIUM)


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    """One headless Chromium tab for the module (see :func:`require_chromium`)."""
    require_chromium()
    with chromium(SCREENSHOTS) as tab:
        yield tab


def ui_base(server: PrefectServer, version: str) -> str:
    """The URL under which ``server`` serves UI ``version`` (``v1`` or ``v2``)."""
    root = server.api_url.removesuffix("/api")
    with urllib.request.urlopen(f"{root}/ui-settings", timeout=10) as resp:
        settings = json.load(resp)
    assert version in settings["available_uis"], settings
    return root + str(settings[f"{version}_base_url"]).rstrip("/")


@pytest.fixture(scope="module")
def sandbox_deployment(mesh_env: MeshSpec) -> Any:
    """``install-mesh-sandbox``, registered as ``meshflow deploy`` registers it (the session's
    mesh, under the environment name ``sandbox``)."""
    import asyncio

    from deployments.deploy import deploy_environment

    spec = MeshSpec.model_validate(mesh_env.model_dump() | {"environment": "sandbox"})
    result = asyncio.run(deploy_environment("sandbox", spec, only=("install-mesh",)))
    (registered,) = result.deployments
    assert registered.name == "install-mesh/install-mesh-sandbox"
    return registered


def _in_order(text: str, labels: tuple[str, ...]) -> list[str]:
    """The labels missing from ``text`` or out of order there (empty: all present in order)."""
    wrong, at = [], 0
    for label in labels:
        found = text.find(label, at)
        if found < 0:
            wrong.append(label)
        else:
            at = found + len(label)
    return wrong


@pytest.mark.parametrize("version", UI_VERSIONS)
def test_the_install_run_form_shows_the_mesh_with_human_labels_in_the_runbooks_order(
    page: Page, prefect_server: PrefectServer, sandbox_deployment: Any, mesh_env: MeshSpec,
    version: str,
) -> None:  # fmt: skip
    url = f"{ui_base(prefect_server, version)}/deployments/deployment/{sandbox_deployment.id}/run"
    page.open(url)
    text = page.wait_for_text("Certificate rotation")
    page.screenshot(f"install-mesh-sandbox-run-form-{version}")
    assert "install-mesh-sandbox" in text
    assert _in_order(text, FORM_LABELS) == []
    assert [label for label in GENERATED_LABELS if label in text] == []
    version_choice = text[text.index("Istio version") :].split("Istio revision")[0]
    assert mesh_env.istio_version in version_choice
    values = page.field_values()
    assert "sandbox" in values
    assert {c.name for c in mesh_env.clusters} <= set(values)  # the clusters, as a list
    assert {c.aks_block for c in mesh_env.clusters} <= set(values)


def _latest_artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC, limit=1,
        )  # fmt: skip
        assert found, f"no artifact {key!r} on the server"
        assert found[0].flow_run_id is not None, found[0]
        run = client.read_flow_run(found[0].flow_run_id)
    return found[0], run


def test_a_completed_install_runs_page_shows_the_mesh_artifact(
    page: Page, prefect_server: PrefectServer, installed_mesh: Any, mesh_env: MeshSpec
) -> None:
    key = f"mesh-{mesh_env.environment}"
    artifact, run = _latest_artifact(key)
    assert run.state is not None
    assert run.state.is_completed(), run.state
    base = ui_base(prefect_server, "v2")
    page.open(f"{base}/runs/flow-run/{run.id}?tab=Artifacts")
    card = f'a[href$="/artifacts/artifact/{artifact.id}"]'
    page.wait_for_selector(card)  # the run's name holds the key too: wait for the card itself
    assert "MARKDOWN" in page.text().upper()
    page.screenshot("install-run-artifacts")
    page.click(card)
    text = page.wait_for_text(
        f"Mesh {mesh_env.environment}: {'OK' if installed_mesh.ok else 'PROBLEMS'}"
    )
    page.screenshot("install-run-mesh-artifact")
    assert "Istio revision" in text
    assert mesh_env.istio_revision in text
    assert all(c.name in text for c in mesh_env.clusters)


def test_the_driver_waits_reports_what_the_page_shows_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    require_chromium()
    later = (
        "setTimeout(() => document.body.insertAdjacentHTML('beforeend', '<p id=x>Later</p>'), 300)"
    )
    with chromium(tmp_path) as tab:
        tab.open(f"data:text/html,<h1>Hello</h1><script>{later}</script>")
        assert "Later" in tab.wait_for_text("Later")
        tab.wait_for_selector("p#x")
        shot = tab.screenshot("hello")
        with pytest.raises(BrowserError, match=r"(?s)for the text 'Never' .*shows:\nHello\s+Later"):
            tab.wait_for_text("Never", timeout=1)
        marker = tab.marker
        assert processes.running_under(marker) != []
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert processes.running_under(marker) == []
