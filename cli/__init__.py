"""The ``meshflow`` command: run the flows and the local sandbox from a terminal.

``--env sandbox`` reads the sandbox's state (Prefect API URL, mesh description) written by
``meshflow sandbox up``; any other environment reads ``deployments/environments/<env>.yaml`` and
uses the Prefect API of the active profile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from meshflow.errors import MeshflowError
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
env_app = typer.Typer(help="An environment's Prefect blocks.", no_args_is_help=True)
app.add_typer(env_app, name="env")
alerts_app = typer.Typer(help="Notifications on the rotation's events.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")

ENVIRONMENTS_DIR = Path(
    os.environ.get("MESHFLOW_ENVIRONMENTS_DIR")
    or Path(__file__).resolve().parent.parent / "deployments" / "environments"
)
"""Where ``--env E`` finds ``E.yaml`` (``MESHFLOW_ENVIRONMENTS_DIR`` overrides the repository's)."""

EnvOption = Annotated[str, typer.Option("--env", "-e", help="dev, staging, prod or sandbox.")]

_options = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of a failure, not one line.")
    ] = False,
) -> None:
    """Build and run a multi-primary Istio mesh across AKS clusters."""
    _options["debug"] = debug
    os.umask(0o077)  # whatever meshflow writes (results, exports) is the user's alone


def _fail(message: str) -> typer.Exit:
    for line in message.splitlines() or [""]:
        typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@contextmanager
def _reported() -> Iterator[None]:
    """Failures meshflow understands become one line each (and exit 1) unless --debug."""
    try:
        yield
    except MeshflowError as exc:
        if _options["debug"]:
            raise
        raise _fail(str(exc)) from exc


class _FailuresReportedByTheCommand(logging.Filter):
    """Keep flow and task failure records (and their tracebacks) off the terminal.

    The command prints the failure itself, one line per problem; the records still reach the
    Prefect API (the run's logs in the UI), whose handler sits on the run loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.levelno >= logging.ERROR
        return not (failure and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")))


def _concise_console() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    if _options["debug"]:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_FailuresReportedByTheCommand())


def _state_root(env: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "meshflow" / env


@contextmanager
def _environment(env: str) -> Iterator[tuple[MeshSpec, str]]:
    """Yield (mesh spec, Prefect API URL) for ``env``, with Prefect pointed at that API."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    _concise_console()

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
        with _reported():
            spec = MeshSpec.from_yaml(sbx.root / "mesh.yaml")
        api_url = str(state["prefect"]["api_url"])
        results = sbx.root / "results"  # removed with the sandbox by `sandbox down`
    else:
        path = ENVIRONMENTS_DIR / f"{env}.yaml"
        if not path.exists():
            known = [*sorted(p.stem for p in ENVIRONMENTS_DIR.glob("*.yaml")), "sandbox"]
            raise _fail(f"no environment {env!r}; known: {', '.join(known)}")
        with _reported():
            spec = MeshSpec.from_yaml(path)
        api_url = str(PREFECT_API_URL.value() or "")
        results = _state_root(env) / "results"
    # A failed run's exception (type and message only) is all Prefect writes there; see
    # flows/runs.py. The folder is the user's alone.
    results.mkdir(mode=0o700, parents=True, exist_ok=True)
    updates: dict[Any, Any] = {PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}
    if api_url:
        updates[PREFECT_API_URL] = api_url
    with temporary_settings(updates=updates), _reported():
        yield spec, api_url


@sandbox_app.command("up")
def sandbox_up(
    clusters: Annotated[
        int | None,
        typer.Option(
            help="How many clusters: 2 for a new sandbox unless given; a running sandbox keeps "
            "its number (another one needs --reset).",
            show_default=False,
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="The Prefect server's database: postgres (the default for a new sandbox) or "
            'sqlite. SQLite serialises concurrent sub-flows ("database is locked": they start '
            "seconds apart). A running sandbox keeps its database.",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Delete the sandbox (its Key Vault and mesh CA included) and start a new one.",
        ),
    ] = False,
) -> None:
    """Start N local clusters, the Azure emulator and a Prefect server; save the blocks.

    Run again, it restarts in place whatever of the sandbox stopped: same URLs, same data.
    """
    from sandbox.kube import SandboxError
    from sandbox.stack import DEFAULT_CLUSTERS, Sandbox

    sbx = Sandbox()
    if reset and sbx.state() is not None:
        typer.echo(f"--reset: deleting the sandbox in {sbx.root}")
    if reset or sbx.state() is None:
        count = clusters or DEFAULT_CLUSTERS
        typer.echo(f"starting the sandbox with {count} clusters (the first run builds Kubernetes)")
    try:
        result = sbx.up(clusters, database=database, reset=reset)
    except (SandboxError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if result.action == "restarted":
        typer.echo(f"restarted: {', '.join(result.restarted)}")
    elif result.action == "unchanged":
        typer.echo("the sandbox is already running; nothing to restart")
    _print_status()


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Stop everything the sandbox started and delete its state (Key Vault included)."""
    from sandbox.stack import Sandbox

    stopped = Sandbox().down()
    typer.echo(f"sandbox stopped ({len(stopped)} processes)")


@sandbox_app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show where the sandbox's services are, and which of its processes stopped."""
    from sandbox.stack import Sandbox

    if as_json:
        typer.echo(json.dumps(Sandbox().status(), indent=2))
        return
    _print_status()
    if stopped := Sandbox().stopped():
        typer.echo(f"  stopped: {', '.join(stopped)}; `meshflow sandbox up` restarts them")


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
    if status.get("work_pool"):
        running = "a worker running" if status["worker_running"] else "its worker STOPPED"
        typer.echo(f"  work pool       {status['work_pool']} ({running}); deployments: "
                   f"{status['prefect_ui_url']}/deployments")  # fmt: skip
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


@app.command("verify-mesh")
def verify_mesh_command(env: EnvOption = "sandbox") -> None:
    """Check the mesh, read only: credentials, remote secrets, istiod sync, certificates."""
    from flows.verify import verify_mesh

    with _environment(env) as (spec, api_url):
        report = asyncio.run(verify_mesh(spec))
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"  details: {api_url.removesuffix('/api')} (artifact mesh-health-{env})")


@app.command("install")
def install(
    env: EnvOption = "sandbox",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what the install would write; write nothing.")
    ] = False,
    fan_out: Annotated[
        str,
        typer.Option(
            "--fan-out",
            help="in-process: each cluster a sub-flow here; deployments: each cluster a run of "
            "install-cluster-<env> on the environment's workers (`meshflow deploy` first).",
        ),
    ] = "in-process",
) -> None:
    """Install the mesh: PKI, every cluster in parallel, remote secrets, validation."""
    from flows.install import install_mesh

    if fan_out not in ("in-process", "deployments"):
        raise _fail(f"--fan-out {fan_out!r}: use in-process or deployments")
    if dry_run:
        _plan(env)
        return
    with _environment(env) as (spec, api_url):
        _use_sandbox_istioctl(env)
        mode: Literal["in-process", "deployments"] = (
            "deployments" if fan_out == "deployments" else "in-process"
        )
        report = asyncio.run(install_mesh(spec, fan_out=mode))
    run_url = f"{api_url.removesuffix('/api')}/runs/flow-run/{report.run_id}"
    if report.infrastructure:
        typer.echo(report.infrastructure)
    if report.stopped:
        typer.echo(f"  review the plan: {run_url} (artifact terraform-plan-{env}); then run with "
                   "provision: apply")  # fmt: skip
        return
    typer.echo(f"mesh {report.environment} (Istio revision {report.revision}):")
    peers = len(report.clusters) - 1
    for c in report.clusters:
        secrets = f"remote secrets {report.readable_into(c.cluster)}/{peers} readable"
        typer.echo(f"  {c.cluster:<15} istio {c.istio.action:<9} {secrets}")
        if c.istio.other_revisions:
            others = ", ".join(c.istio.other_revisions)
            typer.echo(f"  {'':<15} also installed: istiod revision {others} (left alone)")
    for d in report.data_plane:
        typer.echo(f"  {d.check} on {d.cluster}: {d.status}: {d.detail}")
    for i in report.ingress:
        typer.echo(f"  ingress {i.line()}")
    for r in report.removed_secrets:
        typer.echo(f"  {r.cluster:<15} deleted {r.object} (its cluster left the mesh)")
    typer.echo(f"  {report.writes} writes; the run: {run_url}")
    if not report.ok:
        raise _fail("the mesh has problems; see the mesh artifact in the Prefect UI")


def _plan(env: str) -> None:
    from flows.plan import plan_install

    with _environment(env) as (spec, api_url):
        plan = asyncio.run(plan_install(spec))
    for line in plan.lines():
        typer.echo(line)
    typer.echo(f"  details: {api_url.removesuffix('/api')} (artifact plan-{env})")
    if plan.refused:
        raise _fail("the install would refuse: " + plan.refused[0].reason)


@app.command("provision")
def provision_command(
    env: EnvOption = "sandbox",
    plan: Annotated[bool, typer.Option("--plan", help="Plan and stop (artifact).")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Apply the plan if it changes.")] = False,
    adopt: Annotated[bool, typer.Option("--adopt", help="Read the outputs only.")] = False,
) -> None:
    """Seed step 00 on its own: the environment's Terraform module (default: its provision mode)."""
    from flows.provision import artifact_key, provision_infrastructure

    chosen = [m for m, on in (("plan", plan), ("apply", apply), ("adopt", adopt)) if on]
    if len(chosen) > 1:
        raise _fail("choose one of --plan, --apply and --adopt")
    with _environment(env) as (spec, api_url):
        if spec.terraform is None:
            raise _fail(
                f"the mesh description of {env} has no terraform: module (the blocks are adopted "
                "as they are); add `terraform: {module: infra/azure, var_file: ...}`"
            )
        subscription = spec.terraform.subscription_id
        if chosen:
            spec = spec.model_copy(update={"provision": chosen[0]})
        result = asyncio.run(provision_infrastructure(spec, subscription))
    if result is None:
        return
    typer.echo(result.line())
    if result.plan is not None:
        typer.echo(f"  plan: {api_url.removesuffix('/api')} (artifact {artifact_key(env)})")
    if result.outputs is not None:
        for c in result.outputs.clusters.values():
            typer.echo(f"  {c.name:<28} {c.region:<14} {c.api_server_fqdn}")
        typer.echo(f"  Key Vault {result.outputs.key_vault.name}: {result.outputs.key_vault.url}")


@app.command("expose")
def expose(
    env: EnvOption = "sandbox",
    http_only: Annotated[
        bool, typer.Option("--http-only", help="Stop after HTTP (steps 12-15) this run.")
    ] = False,
) -> None:
    """Expose the mesh through each ingress cluster's App Gateway (steps 12-22) on its own."""
    from flows.ingress import expose_mesh

    with _environment(env) as (spec, api_url):
        if not spec.ingress_clusters:
            raise _fail(f"no cluster of {env} has ingress: true; set it on the cluster to expose")
        _use_sandbox_istioctl(env)
        report = asyncio.run(expose_mesh(spec, http_only=http_only))
    typer.echo(f"ingress {report.environment}:")
    for i in report.clusters:
        typer.echo(f"  {i.line()}")
    typer.echo(f"  {report.writes} writes; details: {api_url.removesuffix('/api')} (artifacts)")
    if not report.ok:
        raise _fail("the ingress has problems; see the ingress artifact in the Prefect UI")


@app.command("rotate")
def rotate(
    env: EnvOption = "sandbox",
    force: Annotated[
        bool, typer.Option("--force", help="Reissue every intermediate and the ingress leaf.")
    ] = False,
    threshold_days: Annotated[
        int | None,
        typer.Option(
            "--threshold-days",
            min=1,
            help="Reissue what expires within N days "
            "(default: the mesh's pki.rotation_threshold_days).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be reissued; write nothing.")
    ] = False,
) -> None:
    """Rotate the intermediates and the ingress certificate (same root) and roll them out."""
    from flows.rotate import rotate_certificates

    with _environment(env) as (spec, api_url):
        report = asyncio.run(
            rotate_certificates(spec, threshold_days=threshold_days, force=force, dry_run=dry_run)
        )
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"  details: {api_url.removesuffix('/api')} (artifact rotation-{env})")
    if report.problems:
        raise _fail("the rotation found problems: " + "; ".join(report.problems[:3]))


@app.command("rotate-reader-tokens")
def rotate_reader_tokens_command(env: EnvOption = "sandbox") -> None:
    """Give every cluster's istio-reader a new token in each remote secret; delete the old one."""
    from flows.reader_tokens import rotate_reader_tokens

    with _environment(env) as (spec, api_url):
        report = asyncio.run(rotate_reader_tokens(spec))
    for line in report.lines():
        typer.echo(line)
    details = api_url.removesuffix("/api")
    typer.echo(f"  details: {details} (artifact reader-tokens-{report.environment})")


@app.command("rotate-root")
def rotate_root_command(
    env: EnvOption = "sandbox",
    approve: Annotated[
        str,
        typer.Option(
            "--approve",
            help="ask: pause between phases for approval in the Prefect UI; auto: do not pause.",
        ),
    ] = "ask",
) -> None:
    """Rotate the root CA in three phases (trust both, issue from the new, trust only the new)."""
    from flows.rotate_root import rotate_root

    if approve not in ("ask", "auto"):
        raise _fail(f"--approve {approve!r}: use ask or auto")
    mode: Literal["ask", "auto"] = "auto" if approve == "auto" else "ask"
    with _environment(env) as (spec, api_url):
        if approve == "ask":
            typer.echo(
                f"the run pauses after phases 1 and 2: approve or abort it in the Prefect UI "
                f"({api_url.removesuffix('/api')}, Runs, rotate-root)"
            )
        report = asyncio.run(rotate_root(spec, approve=mode))
    typer.echo(f"root rotation {report.rotation_id} of {report.environment}: {report.status}")
    for step in report.history:
        typer.echo(f"  {step}")
    if report.status == "aborted":
        raise _fail("the rotation was aborted; the mesh trusts and issues from the old root")


PoolTypeOption = Annotated[
    str,
    typer.Option(
        "--pool-type",
        help="The work pool's type if it is created: process (workers on hosts) or kubernetes "
        "(each run a Job; needs prefect-kubernetes on the workers).",
    ),
]


@app.command("deploy")
def deploy(env: EnvOption = "sandbox", pool_type: PoolTypeOption = "process") -> None:
    """Create the environment's work pool if missing and register its deployments (no prompts)."""
    from deployments.deploy import deploy_environment

    if pool_type not in ("process", "kubernetes"):
        raise _fail(f"--pool-type {pool_type!r}: use process or kubernetes")
    with _environment(env) as (spec, api_url):
        result = asyncio.run(
            deploy_environment(env, spec, pool_type=pool_type, job_env=_job_env(env))  # type: ignore[arg-type]
        )
    typer.echo(f"work pool {result.pool}: {result.pool_action}")
    for d in result.deployments:
        typer.echo(f"  {d.name:<50} {d.action}")
    for automation in result.crash_detection:
        typer.echo(f"  automation {automation.name}: {automation.action}")
    typer.echo(f"  UI: {api_url.removesuffix('/api')}/deployments")
    typer.echo(f"start a worker: PREFECT_API_URL={api_url} {result.worker_command}")


def _job_env(env: str) -> dict[str, str]:
    """What every deployment run of ``env`` gets in its environment on the worker."""
    if env == "sandbox":
        from sandbox.stack import Sandbox
        from sandbox.worker import job_env

        return job_env(Sandbox().root)
    return dict(_QUIET)


@env_app.command("init")
def env_init(
    env: Annotated[str, typer.Argument(help="The environment: dev, staging, prod, ...")],
    blocks_file: Annotated[
        Path | None,
        typer.Option("--file", help="The blocks file (default deployments/blocks/<env>.yaml)."),
    ] = None,
    from_terraform: Annotated[
        bool,
        typer.Option(
            "--from-terraform",
            help="Take the Key Vault and the clusters from the outputs of the environment's "
            "Terraform module (its `terraform:` settings); the file then needs credentials only.",
        ),
    ] = False,
) -> None:
    """Save the environment's Prefect blocks (credentials, Key Vault, AKS clusters); idempotent.

    Coordinates come from the blocks file, secrets only from the environment
    (AZURE_CLIENT_SECRET, MESHFLOW_FRONTEND_PFX) or a hidden prompt, never the command line.
    """
    import sys

    from deployments import environment as envblocks

    if env == "sandbox":
        raise _fail("the sandbox saves its own blocks: `meshflow sandbox up`")
    path = blocks_file or envblocks.blocks_file(env)
    with _environment(env) as (spec, api_url):
        found = envblocks.load_blocks_file(path)
        if not from_terraform and (problems := envblocks.problems_with(spec, found, path)):
            raise _fail("\n".join(problems))
        if from_terraform and spec.terraform is None:
            raise _fail(f"--from-terraform: the mesh description of {env} has no terraform: module")
        secrets = {k: os.environ[k] for k in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID")
                   if os.environ.get(k)}  # fmt: skip
        for name in envblocks.needed_secrets(spec, found):
            value = os.environ.get(name, "")
            if not value and sys.stdin.isatty():
                value = typer.prompt(f"{name} (hidden)", hide_input=True)
            if not value:
                raise _fail(
                    f"{name} is not set: export it (or run in a terminal to be asked for it); "
                    "secrets are never taken from the command line or the blocks file"
                )
            secrets[name] = value
        if from_terraform:
            found = _with_terraform_outputs(spec, found, secrets, path)
        blocks = envblocks.build_blocks(spec, found, secrets)
        saved = envblocks.save_blocks(blocks)
    typer.echo(f"blocks of {env} on {api_url or 'the active Prefect profile'}:")
    for name, kind, action in saved:
        typer.echo(f"  {kind:<28} {name:<32} {action}")


def _with_terraform_outputs(spec: MeshSpec, found: Any, secrets: dict[str, str], path: Path) -> Any:
    """Save the credentials, read the module's outputs with them, and fill in the rest."""
    from deployments import environment as envblocks
    from flows.provision import provision_infrastructure

    creds = envblocks.build_credentials(spec, found, secrets)
    envblocks.save_blocks([(spec.credentials_block, creds)])
    adopt = spec.model_copy(update={"provision": "adopt"})
    subscription = spec.terraform.subscription_id if spec.terraform else None
    try:
        provisioned = asyncio.run(provision_infrastructure(adopt, subscription))
    except MeshflowError as exc:
        raise _fail(
            f"{exc}\nthe credentials block {spec.credentials_block!r} is saved; provision first "
            f"(`meshflow provision --env {spec.environment} --apply`), then run this again"
        ) from exc
    if provisioned is None or provisioned.outputs is None:
        raise _fail(f"the Terraform module of {spec.environment} gave no outputs")
    merged = found.with_outputs(provisioned.outputs)
    if problems := envblocks.problems_with(spec, merged, path):
        raise _fail("\n".join(problems))
    return merged


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
    from tasks.keyvault import public_pki_files

    with _environment(env) as (spec, _):
        # A local read for the terminal: run the function itself, outside any flow run.
        files = public_pki_files(spec.key_vault_block, [c.name for c in spec.clusters])
    for rel, text in sorted(files.items()):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        typer.echo(f"  wrote {target}")


@alerts_app.command("ensure")
def alerts_ensure(
    webhook_block: Annotated[
        str,
        typer.Option(
            "--webhook-block",
            help="The saved notification block: NAME (a Custom Webhook block) or "
            "SLUG/NAME (e.g. slack-webhook/ops).",
        ),
    ],
    env: EnvOption = "sandbox",
) -> None:
    """Create or update the automations that report a failed or overdue rotation."""
    from deployments.automations import ensure_rotation_alerts

    with _environment(env) as (spec, api_url):
        ensured = asyncio.run(ensure_rotation_alerts(spec.environment, webhook_block))
    typer.echo(f"rotation alerts for {spec.environment} (through {webhook_block}):")
    for e in ensured:
        typer.echo(f"  {e.name:<40} {e.action}")
    typer.echo(f"  details: {api_url.removesuffix('/api')}/automations")


def main() -> None:
    """Entry point for ``python -m cli`` (the ``meshflow`` command)."""
    app()
