"""The ``meshflow`` command: run the flows and the local sandbox from a terminal.

``--env sandbox`` reads the sandbox's state (Prefect API URL, mesh description) written by
``meshflow sandbox up``; any other environment reads ``deployments/environments/<env>.yaml`` and
uses the Prefect API of the active profile.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from meshflow.spec import MeshSpec

_QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
for _key, _value in _QUIET.items():
    os.environ.setdefault(_key, _value)

app = typer.Typer(help="Build and run a multi-primary Istio mesh across AKS clusters.",
                  no_args_is_help=True, add_completion=False)  # fmt: skip
sandbox_app = typer.Typer(help="The local sandbox: real control planes + Azure emulator.",
                          no_args_is_help=True)  # fmt: skip
app.add_typer(sandbox_app, name="sandbox")
pki_app = typer.Typer(help="The mesh CA in Key Vault.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")

ENVIRONMENTS_DIR = Path(__file__).resolve().parent.parent / "deployments" / "environments"

EnvOption = Annotated[str, typer.Option("--env", "-e", help="dev, staging, prod or sandbox.")]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@contextmanager
def _environment(env: str) -> Iterator[tuple[MeshSpec, str]]:
    """Yield (mesh spec, Prefect API URL) for ``env``, with Prefect pointed at that API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if env == "sandbox":
        from sandbox.stack import Sandbox

        sbx = Sandbox()
        state = sbx.state()
        if state is None:
            raise _fail("the sandbox is not running; start it with `meshflow sandbox up`")
        if stopped := sbx.stopped():
            raise _fail(
                f"the sandbox is not running: {', '.join(stopped)} stopped (logs under "
                f"{sbx.root}); `meshflow sandbox up` starts it again"
            )
        spec = MeshSpec.from_yaml(sbx.root / "mesh.yaml")
        api_url = str(state["prefect"]["api_url"])
    else:
        path = ENVIRONMENTS_DIR / f"{env}.yaml"
        if not path.exists():
            known = [*sorted(p.stem for p in ENVIRONMENTS_DIR.glob("*.yaml")), "sandbox"]
            raise _fail(f"no environment {env!r}; known: {', '.join(known)}")
        spec = MeshSpec.from_yaml(path)
        api_url = str(PREFECT_API_URL.value() or "")
    with temporary_settings(updates={PREFECT_API_URL: api_url} if api_url else {}):
        yield spec, api_url


@sandbox_app.command("up")
def sandbox_up(
    clusters: Annotated[int, typer.Option(help="How many clusters.")] = 2,
    database: Annotated[
        str, typer.Option(help="Prefect server database: sqlite, or postgres for many clusters.")
    ] = "sqlite",
) -> None:
    """Start N local clusters, the Azure emulator and a Prefect server; save the blocks."""
    from sandbox.kube import SandboxError
    from sandbox.stack import Sandbox

    typer.echo(f"starting the sandbox with {clusters} clusters (the first run builds Kubernetes)")
    try:
        Sandbox().up(clusters, database=database)
    except (SandboxError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    _print_status()


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Stop everything the sandbox started and delete its state."""
    from sandbox.stack import Sandbox

    stopped = Sandbox().down()
    typer.echo(f"sandbox stopped ({len(stopped)} processes)")


@sandbox_app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show where the sandbox's services are."""
    if as_json:
        from sandbox.stack import Sandbox

        typer.echo(json.dumps(Sandbox().status(), indent=2))
    else:
        _print_status()


def _print_status() -> None:
    from sandbox.stack import Sandbox

    status = Sandbox().status()
    if "environment" not in status:
        typer.echo("sandbox: not running")
        return
    typer.echo(
        f"sandbox: {'running' if status['running'] else 'DEGRADED'}  ({status['state_dir']})"
    )
    typer.echo(f"  Prefect UI      {status['prefect_ui_url']}")
    typer.echo(f"  Azure emulator  {status['emulator_url']}")
    for c in status["clusters"]:
        typer.echo(f"  {c['name']:<15} {c['api_server']}  kubeconfig: {c['admin_kubeconfig']}")


@app.command("verify")
def verify(env: EnvOption = "sandbox") -> None:
    """Prove access: every cluster's credentials and API server, and Key Vault."""
    from flows.verify import verify_access

    with _environment(env) as (spec, _):
        report = asyncio.run(verify_access(spec))
    typer.echo(f"access verified for {report.environment}:")
    for c in report.clusters:
        typer.echo(f"  {c.cluster:<15} {c.server}  {c.namespaces} namespaces ({c.auth})")
    kv = report.key_vault
    typer.echo(
        f"  Key Vault       {kv.vault}: probe secret written and read in {kv.round_trip_ms} ms"
    )


@app.command("install")
def install(env: EnvOption = "sandbox") -> None:
    """Install the mesh: PKI, every cluster in parallel, remote secrets, validation."""
    from flows.install import install_mesh

    with _environment(env) as (spec, api_url):
        _use_sandbox_istioctl(env)
        report = asyncio.run(install_mesh(spec))
    typer.echo(f"mesh {report.environment} (Istio revision {report.revision}):")
    peers = len(report.clusters) - 1
    for c in report.clusters:
        secrets = f"remote secrets {report.readable_into(c.cluster)}/{peers} readable"
        typer.echo(f"  {c.cluster:<15} istio {c.istio.action:<9} {secrets}")
    for d in report.data_plane:
        typer.echo(f"  {d.check} on {d.cluster}: {d.status}: {d.detail}")
    typer.echo(f"  {report.writes} writes; details: {api_url.removesuffix('/api')} (artifacts)")
    if not report.ok:
        raise _fail("the mesh has problems; see the mesh artifact in the Prefect UI")


def _use_sandbox_istioctl(env: str) -> None:
    # The sandbox cannot download istioctl: use the labelled stand-in unless told otherwise.
    if env == "sandbox":
        from sandbox import ISTIOCTL_STANDIN

        os.environ.setdefault("MESHFLOW_ISTIOCTL", str(ISTIOCTL_STANDIN))


@pki_app.command("ensure")
def pki_ensure(env: EnvOption = "sandbox") -> None:
    """Create or reuse the root CA, per-cluster intermediates and ingress certificates."""
    from flows.pki import ensure_mesh_pki

    with _environment(env) as (spec, _):
        report = asyncio.run(ensure_mesh_pki(spec))
    typer.echo(f"mesh PKI for {report.environment}: {len(report.written)} new versions")
    for o in report.objects:
        state = "new version" if o.written else "unchanged"
        until = o.not_after.date().isoformat() if o.not_after else "-"
        typer.echo(f"  {o.kind:<11} {o.name:<24} {state:<11} until {until}")


@pki_app.command("export")
def pki_export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the public files to.")],
    env: EnvOption = "sandbox",
) -> None:
    """Write the public CA files: root-cert.pem, <cluster>/ca-cert.pem, <cluster>/cert-chain.pem."""
    from tasks.keyvault import read_public_pki

    with _environment(env) as (spec, _):
        # A local read for the terminal: run the function itself, outside any flow run.
        files = read_public_pki.fn(spec.key_vault_block, [c.name for c in spec.clusters])
    for rel, text in sorted(files.items()):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        typer.echo(f"  wrote {target}")


def main() -> None:
    """Entry point for ``python -m meshflow``."""
    app()
