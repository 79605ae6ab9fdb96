"""Automations on meshflow's events: a notification when a rotation fails or is overdue.

A rotation run (``flows/rotate.py``) announces its outcome as a Prefect event on the mesh
(resource ``meshflow.mesh.<env>``): ``meshflow.rotation.completed``, or
``meshflow.rotation.failed`` with the problems in its payload (also when the run raised, e.g.
Key Vault refused a read). Prefect's automations turn those events, or their absence, into
actions; meshflow ships two per environment, built by :func:`rotation_alerts` and saved on the
Prefect server by :func:`ensure_rotation_alerts`:

- ``meshflow-rotation-failed-<env>`` (reactive): every ``meshflow.rotation.failed`` of the mesh
  sends a notification naming the environment and the problems.
- ``meshflow-rotation-overdue-<env>`` (proactive): no ``meshflow.rotation.completed`` of the mesh
  within :data:`OVERDUE_AFTER` of the last one (or of the automation's creation) sends a
  notification; it repeats every such period while none arrives.

Both send through one notification block the user saves first. The Prefect server (or Prefect
Cloud) runs the action, so the server must reach the block's URL.

A third, ``meshflow-crashed-runs-<env>`` (:func:`crash_detection`, saved by
:func:`ensure_crash_detection`, which ``meshflow deploy`` calls), is Prefect's zombie-run
recipe for the environment's deployment runs: a run on a worker sends
``prefect.flow-run.heartbeat`` every :data:`HEARTBEAT_SECONDS` (the deployments' job
environment sets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``); when none, and no final state, follows
a heartbeat within :data:`CRASH_AFTER`, the server marks the run ``Crashed`` (its worker or its
machine died). ``install-mesh`` with ``fan_out="deployments"`` starts a crashed child again, once
(:mod:`flows.fanout`). It needs no block.

A fourth, ``meshflow-unstarted-runs-<env>`` (:func:`start_detection`), covers the moment before
the first heartbeat: a worker takes a run by moving it to ``Pending`` (then ``Submitting``) and
starts its process; a worker that stops in between leaves the run ``Pending`` for ever, with no
heartbeat to miss (PrefectHQ/prefect#22664). When a run sends neither ``Running`` nor any other
state within :data:`START_WITHIN` of entering ``Pending`` (by work pool type: a process starts in
seconds, a pod may first pull its image), the server marks it ``Crashed`` too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import httpx
from prefect.automations import (
    AutomationCore,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    SendNotification,
)
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.events.schemas.automations import Automation
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from deployments.render import HEARTBEAT_SECONDS, PoolType
from meshflow.errors import (
    InvalidError,
    MeshflowError,
    NotFoundError,
    TransientError,
    kind_of_status,
)
from meshflow.rotation import EVENT_ROTATION_COMPLETED, EVENT_ROTATION_FAILED

__all__ = [
    "CRASH_AFTER",
    "DEFAULT_BLOCK_TYPE",
    "HEARTBEAT_SECONDS",
    "OVERDUE_AFTER",
    "START_WITHIN",
    "EnsuredAutomation",
    "crash_detection",
    "crashed_runs_name",
    "ensure_crash_detection",
    "ensure_rotation_alerts",
    "failed_alert_name",
    "overdue_alert_name",
    "rotation_alerts",
    "start_detection",
    "unstarted_runs_name",
]

OVERDUE_AFTER = dt.timedelta(hours=26)
"""How long after the last completed rotation one is overdue: the daily schedule plus margin."""
DEFAULT_BLOCK_TYPE = "custom-webhook"
"""The block type of a notification block named without one: Prefect's Custom Webhook."""


CRASH_AFTER = dt.timedelta(seconds=3 * HEARTBEAT_SECONDS)
"""No heartbeat for this long after the last one: the run's process is gone (three missed)."""
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# What ends a heartbeat's window: the next heartbeat, or a state after which none is due. A
# suspended run (its process exits until it is resumed) stops its heartbeats on purpose.
_ALIVE_OR_ENDED = frozenset(
    {HEARTBEAT_EVENT}
    | {
        f"prefect.flow-run.{s}"
        for s in ("Completed", "Failed", "Cancelled", "Crashed", "Suspended")
    }
)


START_WITHIN: dict[PoolType, dt.timedelta] = {
    "process": dt.timedelta(minutes=2),
    "kubernetes": dt.timedelta(minutes=15),
}
"""By work pool type, how long a run may stay ``Pending`` before it is judged abandoned."""
PENDING_EVENT = "prefect.flow-run.Pending"
# Any state after Pending but its own sub-state Submitting: the run started, ended, or went back
# to a queue (a deployment's concurrency limit, a retry, a pause).
_LEFT_PENDING = frozenset(
    f"prefect.flow-run.{s}"
    for s in (
        "Running", "Completed", "Failed", "Cancelled", "Cancelling", "Crashed", "Scheduled",
        "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Paused", "Suspended",
    )
)  # fmt: skip


def crashed_runs_name(environment: str) -> str:
    """The name of the automation that marks ``environment``'s dead deployment runs Crashed."""
    return f"meshflow-crashed-runs-{environment}"


def crash_detection(environment: str, *, crash_after: dt.timedelta = CRASH_AFTER) -> AutomationCore:
    """The automation that marks a run of ``environment``'s deployments Crashed. Pure.

    Prefect's zombie-run recipe, one bucket per flow run (``for_each``), restricted to the runs
    tagged ``meshflow`` and ``environment`` (the tags of every deployment
    :mod:`deployments.render` describes, which their runs carry): after a heartbeat, neither
    another heartbeat nor a final state within ``crash_after``. Runs started from the command
    line carry neither tag, and are judged by the next run of their mesh (:mod:`flows.runs`).
    """
    beats = _span(dt.timedelta(seconds=HEARTBEAT_SECONDS))
    return AutomationCore(
        name=crashed_runs_name(environment),
        description=(
            f"Marks a deployment run of mesh {environment} Crashed when it sent no heartbeat "
            f"for {_span(crash_after)} (it sends one every {beats}): its worker or machine died."
        ),
        tags=["meshflow", environment],
        trigger=_silent_run(environment, after=HEARTBEAT_EVENT, expect=_ALIVE_OR_ENDED,
                            within=crash_after),
        actions=[_mark_crashed(
            f"No heartbeat for {_span(crash_after)} (one is sent every {beats}): the run's "
            f"process, its worker or its machine stopped. Marked Crashed by the automation "
            f"{crashed_runs_name(environment)}."
        )],
    )  # fmt: skip


def _silent_run(
    environment: str, *, after: str, expect: frozenset[str], within: dt.timedelta
) -> EventTrigger:
    """Fires for one of ``environment``'s deployment runs: ``after``, none of ``expect`` within."""
    return EventTrigger(
        posture=Posture.Proactive,
        after={after},
        expect=set(expect),
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=[_tag("meshflow"), _tag(environment)],  # every one must match
        for_each={"prefect.resource.id"},  # one bucket per flow run
        threshold=1,
        within=within,
    )


def _mark_crashed(message: str) -> ChangeFlowRunState:
    return ChangeFlowRunState(state=StateType.CRASHED, message=message)


def unstarted_runs_name(environment: str) -> str:
    """The name of the automation that marks ``environment``'s abandoned Pending runs Crashed."""
    return f"meshflow-unstarted-runs-{environment}"


def start_detection(environment: str, *, start_within: dt.timedelta) -> AutomationCore:
    """The automation that marks a run of ``environment`` left ``Pending`` Crashed. Pure.

    One bucket per flow run tagged ``meshflow`` and ``environment``: after
    ``prefect.flow-run.Pending``, no other state (``Submitting`` excepted, the worker's own
    next step) within ``start_within``: the worker that took it stopped before its process ran.
    """
    return AutomationCore(
        name=unstarted_runs_name(environment),
        description=(
            f"Marks a deployment run of mesh {environment} Crashed when it stayed Pending for "
            f"{_span(start_within)}: the worker that took it stopped before starting it."
        ),
        tags=["meshflow", environment],
        trigger=_silent_run(environment, after=PENDING_EVENT, expect=_LEFT_PENDING,
                            within=start_within),
        actions=[_mark_crashed(
            f"Pending for {_span(start_within)} without starting: the worker that took it "
            f"stopped before its process ran. Marked Crashed by the automation "
            f"{unstarted_runs_name(environment)}."
        )],
    )  # fmt: skip


def _tag(tag: str) -> dict[str, str]:
    return {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}


async def ensure_crash_detection(
    environment: str,
    *,
    pool_type: PoolType = "process",
    crash_after: dt.timedelta = CRASH_AFTER,
    start_within: dt.timedelta | None = None,
) -> tuple[EnsuredAutomation, EnsuredAutomation]:
    """Create or update the two crash automations of ``environment``; idempotent (as the alerts).

    ``meshflow-crashed-runs-<environment>`` and ``meshflow-unstarted-runs-<environment>``, in
    that order. ``start_within``: default :data:`START_WITHIN` of ``pool_type``.

    Raises:
        InvalidError: the server refused a definition.
        TransientError: the Prefect API could not be reached, or is unavailable.
    """
    window = start_within if start_within is not None else START_WITHIN[pool_type]
    async with get_client() as client, _prefect_errors(client):
        crashed = await _ensure(client, crash_detection(environment, crash_after=crash_after))
        unstarted = await _ensure(client, start_detection(environment, start_within=window))
    return crashed, unstarted


def failed_alert_name(environment: str) -> str:
    """The name of the automation that reports a failed rotation of ``environment``."""
    return f"meshflow-rotation-failed-{environment}"


def overdue_alert_name(environment: str) -> str:
    """The name of the automation that reports an overdue rotation of ``environment``."""
    return f"meshflow-rotation-overdue-{environment}"


def _mesh(environment: str) -> dict[str, str]:
    # The resource of the run's outcome events (meshflow.rotation.outcome_event).
    return {"prefect.resource.id": f"meshflow.mesh.{environment}"}


# Prefect renders subject and body as Jinja (its sandbox; a missing attribute renders empty)
# with `event` (the triggering event, or for a proactive trigger the last one seen, or None),
# `automation`, `firing`, and `flow_run` fetched from the event's related flow run. The
# environment is a DNS label (MeshSpec), so it is written into the templates as text.
_FAILED_BODY = """\
Certificate rotation of mesh {env} failed{{% if event.payload.dry_run %}} (dry run){{% endif %}} \
at {{{{ event.occurred }}}}.
Problems:
{{% for problem in event.payload.problems %}}- {{{{ problem }}}}
{{% endfor %}}Flow run: {{{{ flow_run.name }}}} (rotate-certificates); its logs, and its \
rotation-{env} table when it got that far, say more. Fix the cause, then run \
`meshflow rotate --env {env}`."""

_OVERDUE_BODY = """\
No certificate rotation of mesh {env} completed within {span} \
({{% if event %}}last completed at {{{{ event.occurred }}}}\
{{% else %}}none seen since this alert was set up{{% endif %}}).
Check the deployment rotate-certificates-{env} (its schedule is daily), its work pool \
meshflow-{env} and a worker on it, then run `meshflow rotate --env {env}`."""


def rotation_alerts(
    environment: str, block_document_id: UUID, *, overdue_after: dt.timedelta = OVERDUE_AFTER
) -> list[AutomationCore]:
    """The automations that report a failed or overdue rotation of ``environment``. Pure.

    Args:
        environment: The mesh's environment (``MeshSpec.environment``).
        block_document_id: The notification block the actions send through.
        overdue_after: How long after the last completed rotation the next one is overdue
            (at least 10 seconds, Prefect's minimum for a proactive trigger).

    Returns:
        ``[failed, overdue]``, as Prefect's automation models.
    """
    tags = ["meshflow", environment]
    failed = AutomationCore(
        name=failed_alert_name(environment),
        description=f"A certificate rotation of mesh {environment} failed or found problems.",
        tags=tags,
        trigger=EventTrigger(
            posture=Posture.Reactive,
            expect={EVENT_ROTATION_FAILED},
            match=_mesh(environment),
            threshold=1,
            within=dt.timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject=f"meshflow: certificate rotation of {environment} failed",
                body=_FAILED_BODY.format(env=environment),
            )
        ],
    )
    # `after` and `expect` the same event: each completed rotation restarts the window (a
    # sliding deadline); without one, the window runs from the automation's creation.
    overdue = AutomationCore(
        name=overdue_alert_name(environment),
        description=(
            f"No certificate rotation of mesh {environment} completed within "
            f"{_span(overdue_after)}."
        ),
        tags=tags,
        trigger=EventTrigger(
            posture=Posture.Proactive,
            after={EVENT_ROTATION_COMPLETED},
            expect={EVENT_ROTATION_COMPLETED},
            match={**_mesh(environment), "meshflow.dry-run": "false"},  # a plan is no rotation
            threshold=1,
            within=overdue_after,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject=f"meshflow: certificate rotation of {environment} is overdue",
                body=_OVERDUE_BODY.format(env=environment, span=_span(overdue_after)),
            )
        ],
    )
    return [failed, overdue]


def _span(period: dt.timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit if count != 1 else unit[:-1]}"
    return f"{seconds} seconds"


@dataclass(frozen=True)
class EnsuredAutomation:
    """One automation :func:`ensure_rotation_alerts` saved, and what it did."""

    name: str
    id: UUID
    action: Literal["created", "updated", "unchanged"]


async def ensure_rotation_alerts(
    environment: str,
    webhook_block: str,
    *,
    overdue_after: dt.timedelta = OVERDUE_AFTER,
) -> list[EnsuredAutomation]:
    """Create or update the failed and overdue rotation automations of ``environment``.

    Save the notification block first, on the Prefect server the flows report to, e.g.
    ``CustomWebhookNotificationBlock(name="ops", url="https://...", json_data={"text":
    "{{subject}}: {{body}}"}).save("rotation-alerts")`` (any URL that takes a JSON POST; put
    a token in its ``secrets`` and use it as ``{{token}}`` in the URL), or a Slack, Microsoft
    Teams or other notification block of Prefect's. The server runs the action: it must reach
    the URL.

    Idempotent: each automation is read by name and created if absent, replaced if it differs
    from :func:`rotation_alerts`, left alone otherwise; extra automations of the same name
    (meshflow's names) are deleted. Needs the rights to read blocks and write automations.

    Args:
        environment: The mesh's environment (``MeshSpec.environment``).
        webhook_block: The notification block's name (a Custom Webhook block), or
            ``<block-type-slug>/<name>`` for another type, e.g. ``slack-webhook/ops``.
        overdue_after: See :func:`rotation_alerts`.

    Returns:
        The two automations, failed then overdue, with what was done to each.

    Raises:
        NotFoundError: there is no such block.
        InvalidError: the block cannot send notifications, or the server refused a definition.
        TransientError: the Prefect API could not be reached, or is unavailable.
    """
    slug, _, name = webhook_block.rpartition("/")
    slug = slug or DEFAULT_BLOCK_TYPE
    async with get_client() as client, _prefect_errors(client):
        block_id = await _notification_block(client, slug, name)
        ensured = []
        for wanted in rotation_alerts(environment, block_id, overdue_after=overdue_after):
            ensured.append(await _ensure(client, wanted))
    return ensured


async def _notification_block(client: PrefectClient, slug: str, name: str) -> UUID:
    try:
        doc = await client.read_block_document_by_name(
            name=name, block_type_slug=slug, include_secrets=False
        )
    except ObjectNotFound as exc:
        raise NotFoundError(
            f"no {slug} block named {name!r} on the Prefect server at {client.api_url}: save "
            "the notification block first (see `ensure_rotation_alerts`), or name another "
            "type as <block-type-slug>/<name>",
            system="Prefect", target=str(client.api_url), object=f"{slug}/{name}",
        ) from exc  # fmt: skip
    if doc.block_schema is None or "notify" not in doc.block_schema.capabilities:
        raise InvalidError(
            f"block {slug}/{name} cannot send notifications; use a notification block "
            "(Custom Webhook, Slack Webhook, Microsoft Teams Webhook ...)",
            system="Prefect", target=str(client.api_url), object=f"{slug}/{name}",
        )  # fmt: skip
    return doc.id


async def _ensure(client: PrefectClient, wanted: AutomationCore) -> EnsuredAutomation:
    found = await client.read_automations_by_name(wanted.name)  # newest first
    if not found:
        created = await client.create_automation(wanted)
        return EnsuredAutomation(name=wanted.name, id=created, action="created")
    current, extra = found[0], found[1:]
    for duplicate in extra:
        await client.delete_automation(duplicate.id)
    if _definition(current) == _normal(wanted.model_dump(mode="json")) and not extra:
        return EnsuredAutomation(name=wanted.name, id=current.id, action="unchanged")
    await client.update_automation(current.id, wanted)
    return EnsuredAutomation(name=wanted.name, id=current.id, action="updated")


def _definition(automation: Automation) -> dict[str, Any]:
    """What the server holds, in the shape :func:`rotation_alerts` builds."""
    core = AutomationCore.model_validate(automation.model_dump(exclude={"id"}))
    return _normal(core.model_dump(mode="json"))


def _normal(definition: dict[str, Any]) -> dict[str, Any]:
    """``definition`` with the trigger's event and label sets sorted (JSON gives them unordered)."""
    trigger = dict(definition.get("trigger") or {})
    for key in ("after", "expect", "for_each"):
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return {**definition, "trigger": trigger}


@asynccontextmanager
async def _prefect_errors(client: PrefectClient) -> AsyncIterator[None]:
    """The Prefect API's failures as meshflow's errors, naming the server."""
    where = str(client.api_url)
    try:
        yield
    except MeshflowError:
        raise
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        kind = kind_of_status(status)
        raise kind(
            f"the Prefect API at {where} answered HTTP {status} to {exc.request.method} "
            f"{exc.request.url.path}: {exc.response.text[:300]}",
            system="Prefect", target=where, status=status,
        ) from exc  # fmt: skip
    except httpx.TransportError as exc:
        raise TransientError(
            f"the Prefect API at {where} cannot be reached ({type(exc).__name__}): start the "
            "server, or point PREFECT_API_URL at it",
            system="Prefect", target=where,
        ) from exc  # fmt: skip
