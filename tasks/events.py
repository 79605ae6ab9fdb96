"""Prefect events: what meshflow's runs announce, for automations and notifications.

The events themselves are built by pure code (:func:`meshflow.rotation.rotation_events`); this
module only hands them to Prefect's event client, which sends them in the background.
"""

from __future__ import annotations

from collections.abc import Iterable

from prefect.events import emit_event

from meshflow.rotation import EventSpec


def emit(events: Iterable[EventSpec]) -> int:
    """Emit ``events`` from the current run (Prefect relates them to it); how many were sent."""
    count = 0
    for spec in events:
        emit_event(
            event=spec.event,
            resource=spec.resource,
            related=list(spec.related),
            payload=spec.payload,
        )
        count += 1
    return count
