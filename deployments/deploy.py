"""Register an environment's deployments and work pool on a Prefect server, without prompts.

The deployments are the ones :func:`deployments.render.deployments_for` describes, the same that
``prefect.yaml`` holds, so ``meshflow deploy --env E`` and ``prefect deploy --all`` register the
same thing. Registering is idempotent: a deployment whose every field already matches is left
alone (its ``updated`` time does not move), one that differs is updated in place, schedules
included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    DeploymentUpdate,
    WorkPoolCreate,
)
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectNotFound
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from deployments.automations import (
    EnsuredAutomation,
    ensure_crash_detection,
)
from deployments.render import ROOT, PoolType, deployments_for, pool_name
from meshflow.errors import InvalidError
from meshflow.spec import MeshSpec

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Registered:
    """One deployment as registered: its full name, id and what registering did."""

    name: str
    id: UUID
    action: Action


@dataclass(frozen=True)
class DeployResult:
    """What ``deploy_environment`` did: the work pool and every deployment."""

    pool: str
    pool_action: Literal["created", "exists"]
    deployments: tuple[Registered, ...]
    crash_detection: tuple[EnsuredAutomation, ...] = ()
    """The automations that mark a run whose worker died Crashed (running, then not started)."""

    @property
    def worker_command(self) -> str:
        """The command that starts a worker for this environment."""
        return f"prefect worker start --pool {self.pool}"


async def ensure_work_pool(
    client: PrefectClient, name: str, pool_type: PoolType = "process"
) -> Literal["created", "exists"]:
    """Create the work pool ``name`` of ``pool_type`` unless it exists. Idempotent.

    Raises:
        InvalidError: a pool of that name exists with another type.
    """
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
        return "created"
    if pool.type != pool_type:
        raise InvalidError(
            f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}; use "
            f"--pool-type {pool.type}, or delete the pool (`prefect work-pool delete {name}`)",
            system="Prefect", object=name,
        )  # fmt: skip
    return "exists"


def _schedules(d: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    return sorted((s["cron"], s["timezone"], s["active"]) for s in d.get("schedules", []))


def _concurrency(d: Mapping[str, Any]) -> tuple[int | None, ConcurrencyOptions | None]:
    limit = d.get("concurrency_limit")
    if limit is None:
        return None, None
    strategy = ConcurrencyLimitStrategy(limit["collision_strategy"])
    return int(limit["limit"]), ConcurrencyOptions(collision_strategy=strategy)


def desired_fields(d: Mapping[str, Any], openapi_schema: dict[str, Any]) -> dict[str, Any]:
    """The server-side fields of deployment ``d`` (a ``prefect.yaml`` entry) meshflow manages."""
    limit, options = _concurrency(d)
    return {
        "description": d.get("description"),
        "entrypoint": d["entrypoint"],
        "path": str(ROOT),
        "tags": sorted(d.get("tags", [])),
        "parameters": d.get("parameters", {}),
        "work_pool_name": d["work_pool"]["name"],
        "job_variables": d["work_pool"].get("job_variables", {}),
        "pull_steps": d.get("pull", []),
        "enforce_parameter_schema": bool(d.get("enforce_parameter_schema", False)),
        "parameter_openapi_schema": openapi_schema,
        "concurrency_limit": limit,
        "collision_strategy": options.collision_strategy.value if options else None,
    }


def current_fields(deployment: DeploymentResponse) -> dict[str, Any]:
    """The same fields as :func:`desired_fields`, read from a registered deployment."""
    options = deployment.concurrency_options
    limit = deployment.global_concurrency_limit
    return {
        "description": deployment.description,
        "entrypoint": deployment.entrypoint,
        "path": deployment.path,
        "tags": sorted(deployment.tags),
        "parameters": deployment.parameters,
        "work_pool_name": deployment.work_pool_name,
        "job_variables": deployment.job_variables or {},
        "pull_steps": deployment.pull_steps or [],
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
        "parameter_openapi_schema": deployment.parameter_openapi_schema,
        "concurrency_limit": limit.limit if limit is not None else None,
        "collision_strategy": options.collision_strategy.value if options else None,
    }


def changed_fields(desired: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The names of the fields whose registered value differs from the desired one."""
    return sorted(k for k, v in desired.items() if current.get(k) != v)


async def _register_one(client: PrefectClient, d: Mapping[str, Any]) -> Registered:
    flow: Flow[..., Any] = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
    schema = parameter_schema(flow).model_dump_for_openapi()
    want = desired_fields(d, schema)
    limit, options = _concurrency(d)
    schedules = [
        DeploymentScheduleCreate(schedule=CronSchedule(cron=c, timezone=tz), active=a)
        for c, tz, a in _schedules(d)
    ]
    full_name = f"{flow.name}/{d['name']}"
    try:
        existing = await client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        flow_id = await client.create_flow_from_name(flow.name)
        new_id = await client.create_deployment(
            flow_id=flow_id, name=d["name"], schedules=schedules, concurrency_limit=limit,
            concurrency_options=options, parameters=want["parameters"],
            description=want["description"], work_pool_name=want["work_pool_name"],
            tags=want["tags"], path=want["path"], entrypoint=want["entrypoint"],
            parameter_openapi_schema=schema, pull_steps=want["pull_steps"],
            enforce_parameter_schema=want["enforce_parameter_schema"],
            job_variables=want["job_variables"],
        )  # fmt: skip
        return Registered(full_name, new_id, "created")
    registered = await client.read_deployment_schedules(existing.id)
    have_schedules = sorted(
        (s.schedule.cron, s.schedule.timezone, s.active)
        for s in registered
        if isinstance(s.schedule, CronSchedule)
    )
    changed = changed_fields(want, current_fields(existing))
    if not changed and have_schedules == _schedules(d):
        return Registered(full_name, existing.id, "unchanged")
    update = DeploymentUpdate(
        description=want["description"], parameters=want["parameters"], tags=want["tags"],
        work_pool_name=want["work_pool_name"], path=want["path"], entrypoint=want["entrypoint"],
        job_variables=want["job_variables"], pull_steps=want["pull_steps"],
        enforce_parameter_schema=want["enforce_parameter_schema"],
        parameter_openapi_schema=schema, concurrency_limit=limit, concurrency_options=options,
    )  # fmt: skip
    await client.update_deployment(existing.id, update)
    if have_schedules != _schedules(d):
        for s in registered:
            await client.delete_deployment_schedule(existing.id, s.id)
        if schedules:
            await client.create_deployment_schedules(
                existing.id, [(s.schedule, bool(s.active)) for s in schedules]
            )
    return Registered(full_name, existing.id, "updated")


async def deploy_environment(
    env: str,
    spec: MeshSpec,
    *,
    pool_type: PoolType = "process",
    job_env: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
) -> DeployResult:
    """Create ``env``'s work pool if missing and register its deployments. Idempotent.

    On the Prefect API of the current settings. ``job_env``: environment variables every run
    of these deployments gets on the worker (no secret: those live in blocks); every run also
    gets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (30 s), which the automation
    ``meshflow-crashed-runs-<env>``, set up here too, relies on to mark a run whose worker died
    Crashed (:func:`deployments.automations.crash_detection`); ``meshflow-unstarted-runs-<env>``
    marks one left ``Pending`` by a worker that stopped (``start_detection``). ``only``:
    deployment names (without the ``-<env>`` suffix) to register, default all.

    Raises:
        InvalidError: the pool exists with another type.
    """
    pool = pool_name(env)
    wanted = [
        d for d in deployments_for(env, spec, directory=str(ROOT), job_env=job_env)
        if only is None or d["name"].removesuffix(f"-{env}") in only
    ]  # fmt: skip
    async with get_client() as client:
        pool_action = await ensure_work_pool(client, pool, pool_type)
        registered = [await _register_one(client, d) for d in wanted]
    crashed = await ensure_crash_detection(env, pool_type=pool_type)
    return DeployResult(
        pool=pool, pool_action=pool_action, deployments=tuple(registered), crash_detection=crashed
    )
