"""Distributed fan-out: each cluster's install as a run of the environment's deployment.

``install_mesh(spec, fan_out="deployments")`` starts ``install-cluster-<env>`` once per cluster
with ``run_deployment``: the runs wait in the environment's work pool, any of its workers takes
them (more workers, on more machines, for a larger fleet), and each shows in the UI as a child
of the install run. The parent waits for all of them, then joins among those that completed,
as the in-process fan-out does.

- **A worker that stops.** A child whose worker died stops sending heartbeats; the server's
  automation ``meshflow-crashed-runs-<env>`` (:mod:`deployments.automations`, set up by
  ``meshflow deploy``) marks it ``Crashed``. A crashed child is started again, once, for
  another worker to take (its steps are idempotent). A child that *failed* (its cluster
  refused, its retries spent) is not: its cluster is reported failed, by name, with its run.
- **Results.** A child's result is references only and is persisted as JSON in the result
  storage of the worker that ran it; the parent reads it back from its own, so parent and
  workers must share one (the sandbox: one folder; across machines: a remote result storage
  block, ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from meshflow.errors import MeshflowError, NotFoundError
from meshflow.spec import MeshSpec

FanOut = Literal["in-process", "deployments"]
"""How ``install_mesh`` runs each cluster's install: a sub-flow, or a deployment run."""

RESTARTS_AFTER_CRASH = 1
"""How many times a child whose worker died is started again."""
POLL_SECONDS = 2.0
CHILD_TIMEOUT = 2 * 3600.0
"""The longest the parent waits for one child (no worker on the pool, say); then it fails."""


def cluster_deployment(spec: MeshSpec) -> str:
    """The full name of the per-cluster deployment of ``spec``'s environment."""
    return f"install-cluster/install-cluster-{spec.environment}"


async def require_cluster_deployment(spec: MeshSpec) -> None:
    """Fail before any write if the environment's ``install-cluster`` deployment is missing.

    Raises:
        NotFoundError: it is not registered (with the command that registers it).
    """
    name = cluster_deployment(spec)
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise NotFoundError(
                f"fan_out 'deployments' needs the deployment {name!r}, which does not exist; "
                f"register it with `meshflow deploy --env {spec.environment}` and start a worker "
                f"on pool meshflow-{spec.environment}",
                system="Prefect", object=name,
            ) from None  # fmt: skip


def _ui_url(run: FlowRun) -> str:
    from prefect.settings import PREFECT_UI_URL

    return f"{PREFECT_UI_URL.value() or ''}/runs/flow-run/{run.id}"


async def run_cluster_deployment(spec: MeshSpec, cluster: str) -> Any:
    """Run ``cluster``'s install on a worker and return its result; not idempotent itself.

    The child run is linked to the calling flow run; its idempotency key is the parent run's
    id and the cluster, so a parent that is retried does not start a second child.

    Raises:
        MeshflowError: the child failed, was cancelled, or crashed again after its restart;
            the message names the cluster, the run and its state.
    """
    context = FlowRunContext.get()
    parent = str(context.flow_run.id) if context and context.flow_run else "none"
    parameters = {"spec": spec.model_dump(mode="json", exclude_none=True), "cluster": cluster}
    for attempt in range(RESTARTS_AFTER_CRASH + 1):
        run = await run_deployment(  # type: ignore[misc]  # sync/async dispatch
            cluster_deployment(spec), parameters=parameters, timeout=CHILD_TIMEOUT,
            poll_interval=POLL_SECONDS, as_subflow=True,
            idempotency_key=f"{parent}:{cluster}:{attempt}",
            flow_run_name=f"install-cluster-{cluster}",
        )  # fmt: skip
        state = run.state
        if state is not None and state.type == StateType.COMPLETED:
            return await state.aresult()
        if state is not None and state.type == StateType.CRASHED and attempt < RESTARTS_AFTER_CRASH:
            get_run_logger().warning(
                "cluster %s: run %s crashed (%s); starting it again for another worker",
                cluster, run.name, state.message,
            )  # fmt: skip
            continue
        break
    pool = f"meshflow-{spec.environment}"
    if state is None or not state.is_final():
        shown = state.name if state is not None else "no state"
        how = (
            f"did not end within {CHILD_TIMEOUT / 60:.0f} min (still {shown}): is a worker "
            f"polling pool {pool}, and is its crash detection set up (`meshflow deploy --env "
            f"{spec.environment}`)?"
        )
    else:
        how = f"ended {state.type.value.lower()}: {state.message or ''}"
    raise MeshflowError(
        f"cluster {cluster}: its install-cluster run {run.name!r} on pool {pool} {how}; see "
        f"{_ui_url(run)}",
        system="Prefect", target=cluster, object=str(run.id),
    )  # fmt: skip
