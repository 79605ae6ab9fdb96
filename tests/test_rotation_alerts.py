"""The rotation alerts: automations on meshflow's rotation events, sending through a webhook.

The definitions are checked as tables (and against the Prefect server's own schema and template
renderer); then on a real Prefect server, whose triggers and actions services run inside
``prefect server start``: saved idempotently, and firing into a local webhook receiver for an
injected rotation failure (Key Vault refusing a read) and for an overdue rotation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

# The server's modules, imported while collecting: their import runs `file` (Prefect's vendored
# croniter calls platform.architecture()), which a pure test may not.
from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
from prefect.server.utilities.user_templates import render_user_template_sync

from deployments.automations import (
    EnsuredAutomation,
    ensure_rotation_alerts,
    failed_alert_name,
    overdue_alert_name,
    rotation_alerts,
)
from flows.install import MeshReport
from flows.rotate import rotate_certificates
from meshflow.errors import InvalidError, NotFoundError
from meshflow.spec import MeshSpec
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.aks import forget_credentials
from tests.webhook_receiver import Received, WebhookReceiver

BLOCK = "meshflow-rotation-alerts-test"
ALERT_WAIT = 60.0
"""How long the event -> trigger -> action -> webhook path may take (usually a few seconds)."""


def _ensure(environment: str, block: str = BLOCK, **kwargs: Any) -> list[EnsuredAutomation]:
    return asyncio.run(ensure_rotation_alerts(environment, block, **kwargs))


def _saved(name: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        return list(client.read_automations_by_name(name))


def _delete_alerts(environment: str) -> None:
    with get_client(sync_client=True) as client:
        for name in (failed_alert_name(environment), overdue_alert_name(environment)):
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)


def _about(environment: str, word: str) -> Any:
    def matches(message: Received) -> bool:
        subject = str((message.body or {}).get("subject", ""))
        return environment in subject and word in subject

    return matches


# -- the definitions, pure ---------------------------------------------------------------------


def test_the_definitions_name_the_event_the_mesh_the_block_and_the_posture() -> None:
    block = uuid.uuid4()
    failed, overdue = rotation_alerts("prod", block)
    assert failed.name == "meshflow-rotation-failed-prod"
    assert overdue.name == "meshflow-rotation-overdue-prod"
    rows = [
        (a.name, t.posture, t.expect, t.after, t.threshold, t.within, t.match.model_dump())
        for a in (failed, overdue)
        if isinstance(t := a.trigger, EventTrigger)
    ]
    assert rows == [
        ("meshflow-rotation-failed-prod", Posture.Reactive, {"meshflow.rotation.failed"},
         set(), 1, dt.timedelta(0), {"prefect.resource.id": "meshflow.mesh.prod"}),
        ("meshflow-rotation-overdue-prod", Posture.Proactive, {"meshflow.rotation.completed"},
         {"meshflow.rotation.completed"}, 1, dt.timedelta(hours=26),
         {"prefect.resource.id": "meshflow.mesh.prod", "meshflow.dry-run": "false"}),
    ]  # fmt: skip
    for automation in (failed, overdue):
        (action,) = automation.actions
        assert action.type == "send-notification"
        assert action.block_document_id == block  # type: ignore[union-attr]
        assert "prod" in action.subject  # type: ignore[union-attr]
        assert automation.tags == ["meshflow", "prod"]
    assert "failed" in failed.actions[0].subject  # type: ignore[union-attr]
    assert "overdue" in overdue.actions[0].subject  # type: ignore[union-attr]
    short = rotation_alerts("prod", block, overdue_after=dt.timedelta(seconds=10))[1].trigger
    assert isinstance(short, EventTrigger) and short.within == dt.timedelta(seconds=10)  # noqa: PT018


def test_the_server_accepts_the_definitions_and_renders_their_messages() -> None:
    # The Prefect server's own models validate the templates (its Jinja sandbox), and its
    # renderer fills them as the notification action does.
    failed, overdue = (
        ServerAutomation.model_validate(a.model_dump(mode="json"))
        for a in rotation_alerts("staging", uuid.uuid4())
    )
    event = {
        "occurred": "2026-12-01T03:00:04Z",
        "resource": {"prefect.resource.id": "meshflow.mesh.staging"},
        "payload": {"problems": ["alpha-ca-cert (alpha): Key Vault refused", "x: y"],
                    "dry_run": False},
    }  # fmt: skip
    body = render_user_template_sync(
        failed.actions[0].body,  # type: ignore[union-attr]
        {"event": event, "flow_run": {"name": "brave-otter"}},
    )
    assert body.splitlines() == [
        "Certificate rotation of mesh staging failed at 2026-12-01T03:00:04Z.",
        "Problems:",
        "- alpha-ca-cert (alpha): Key Vault refused",
        "- x: y",
        "Flow run: brave-otter (rotate-certificates); its logs, and its rotation-staging table "
        "when it got that far, say more. Fix the cause, then run `meshflow rotate --env staging`.",
    ]
    template = overdue.actions[0].body  # type: ignore[union-attr]
    never = render_user_template_sync(template, {"event": None})
    assert never.startswith(
        "No certificate rotation of mesh staging completed within 26 hours (none seen since"
    )
    assert "rotate-certificates-staging" in never
    last = render_user_template_sync(template, {"event": event})
    assert "(last completed at 2026-12-01T03:00:04Z)" in last


# -- on the Prefect server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def webhook_block(prefect_server: PrefectServer, receiver: WebhookReceiver) -> str:
    """A Custom Webhook block posting ``{"subject": ..., "body": ...}`` to the receiver."""
    CustomWebhookNotificationBlock(
        name="meshflow tests",
        url=f"{receiver.url}/hooks/rotation",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(BLOCK, overwrite=True)
    return BLOCK


def test_ensuring_twice_creates_once_and_a_changed_definition_is_replaced(
    webhook_block: str,
) -> None:
    env = "alerts-idem"
    try:
        first = _ensure(env)
        assert [(e.name, e.action) for e in first] == [
            (failed_alert_name(env), "created"), (overdue_alert_name(env), "created"),
        ]  # fmt: skip
        again = _ensure(env)
        assert [(e.id, e.action) for e in again] == [(e.id, "unchanged") for e in first]
        assert [len(_saved(e.name)) for e in first] == [1, 1]
        # Another window replaces the overdue automation in place; the failed one is kept.
        changed = _ensure(env, overdue_after=dt.timedelta(hours=50))
        assert [(e.id, e.action) for e in changed] == [
            (first[0].id, "unchanged"), (first[1].id, "updated"),
        ]  # fmt: skip
        (saved,) = _saved(overdue_alert_name(env))
        assert saved.trigger.within == dt.timedelta(hours=50)
        # A second automation of a meshflow name (made by hand, say) is removed.
        with get_client(sync_client=True) as client:
            client.create_automation(
                AutomationCore.model_validate(saved.model_dump(exclude={"id"}))
            )
        assert len(_saved(overdue_alert_name(env))) == 2
        back = _ensure(env)
        assert [e.action for e in back] == ["unchanged", "updated"]
        assert [len(_saved(e.name)) for e in first] == [1, 1]
    finally:
        _delete_alerts(env)


def test_a_missing_or_wrong_block_is_named(webhook_block: str) -> None:
    with pytest.raises(NotFoundError, match=r"no custom-webhook block named 'nobody'"):
        _ensure("alerts-missing", "nobody")
    with pytest.raises(NotFoundError, match=r"no slack-webhook block named 'meshflow-rot"):
        _ensure("alerts-missing", f"slack-webhook/{BLOCK}")
    from prefect.blocks.system import Secret

    Secret(value="not-a-webhook").save("meshflow-alerts-not-a-webhook", overwrite=True)
    with pytest.raises(InvalidError, match="cannot send notifications"):
        _ensure("alerts-missing", "secret/meshflow-alerts-not-a-webhook")
    assert _saved(failed_alert_name("alerts-missing")) == []


def test_an_overdue_rotation_is_reported(webhook_block: str, receiver: WebhookReceiver) -> None:
    # No completed rotation of this mesh ever arrives: the window (Prefect's minimum, 10 s)
    # runs from the automation's creation, and Prefect evaluates proactive triggers every 5 s.
    env = "alerts-overdue"
    try:
        _ensure(env, overdue_after=dt.timedelta(seconds=10))
        message = receiver.wait_for(_about(env, "overdue"), ALERT_WAIT)
        assert message is not None, [r.body for r in receiver.received]
        assert message.method == "POST" and message.path == "/hooks/rotation"  # noqa: PT018
        assert "none seen since this alert was set up" in message.body["body"]
    finally:
        _delete_alerts(env)


# -- end to end: an injected rotation failure reaches the webhook ------------------------------


@pytest.fixture(scope="module")
def installed(installed_mesh: MeshReport) -> MeshReport:
    return installed_mesh


def test_a_failed_rotation_reaches_the_webhook(
    installed: MeshReport, mesh_env: MeshSpec, azure_emulator: AzureEmulator,
    webhook_block: str, receiver: WebhookReceiver,
) -> None:  # fmt: skip
    env, cluster = mesh_env.environment, mesh_env.clusters[0].name
    try:
        first = _ensure(env)
        assert [e.action for e in _ensure(env)] == ["unchanged", "unchanged"]
        assert [len(_saved(e.name)) for e in first] == [1, 1]
        # Key Vault refuses to read the cluster's intermediate (403: permanent, no retries).
        azure_emulator.add_fault(
            rf"^/certificates/{cluster}-ca-cert/?$", method="GET", status=403, times=1000
        )
        try:
            forget_credentials()
            state = asyncio.run(rotate_certificates(mesh_env, return_state=True))  # type: ignore[call-overload]
        finally:
            azure_emulator.clear_faults()
        assert state.is_failed()
        message = receiver.wait_for(_about(env, "failed"), ALERT_WAIT)
        assert message is not None, [r.body for r in receiver.received]
        assert message.body["subject"] == f"meshflow: certificate rotation of {env} failed"
        body = message.body["body"]
        assert f"Certificate rotation of mesh {env} failed at " in body
        assert f"- {cluster}-ca-cert ({cluster}): " in body
        assert "403" in body
        assert f"Flow run: {_run_name(state)} " in body
    finally:
        _delete_alerts(env)


def _run_name(state: Any) -> str:
    with get_client(sync_client=True) as client:
        return str(client.read_flow_run(state.state_details.flow_run_id).name)
