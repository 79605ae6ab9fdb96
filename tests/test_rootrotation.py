"""The root rotation's phases and bundles (pure)."""

from __future__ import annotations

import pytest

from meshflow.rootrotation import RootRotationState, both_roots, bundle_holds, phase_trust

OLD = "-----BEGIN CERTIFICATE-----\nMIIold\n-----END CERTIFICATE-----"
NEW = "-----BEGIN CERTIFICATE-----\nMIInew\n-----END CERTIFICATE-----\n"


def _state(**changes: object) -> RootRotationState:
    base = RootRotationState(
        rotation_id="r1", old_kind="vault-key", old_name="istio-root-ca-key", old_version="v1",
        old_pem=OLD + "\n", old_bundle=OLD, new_version="v2", new_pem=NEW,
    )  # fmt: skip
    return base.model_copy(update=changes)


def test_the_old_bundle_stays_byte_for_byte_in_front_of_the_new_root() -> None:
    bundle = both_roots(OLD, NEW)  # the old bundle without a final newline, as stored
    assert bundle == OLD + "\n" + NEW
    assert bundle.startswith(OLD)
    assert both_roots(bundle, NEW) == bundle  # idempotent
    assert bundle_holds(bundle, OLD) and bundle_holds(bundle, NEW)  # noqa: PT018
    assert not bundle_holds(OLD, NEW)


@pytest.mark.parametrize(
    ("phase", "status", "trusted"),
    [
        (1, "in progress", OLD + "\n" + NEW),
        (2, "in progress", OLD + "\n" + NEW),
        (3, "in progress", NEW),
        (3, "done", NEW),
        (2, "aborted", OLD),
    ],
)
def test_each_phase_trusts_what_it_says(phase: int, status: str, trusted: str) -> None:
    assert phase_trust(_state(phase=phase, status=status)) == trusted


def test_a_phase_advances_only_once_complete_and_an_abort_only_before_phase_3() -> None:
    state = _state()
    with pytest.raises(ValueError, match="phase 1 is not complete"):
        state.advanced("too early")
    done1 = state.with_completed("phase 1 complete")
    assert done1.phase_done and done1.abortable  # noqa: PT018
    two = done1.advanced("phase 2 approved")
    assert (two.phase, two.completed, two.phase_done) == (2, 1, False)
    three = two.with_completed("phase 2 complete").advanced("phase 3 approved")
    assert not three.abortable
    finished = three.with_completed("phase 3 complete")
    assert finished.status == "done"
    assert finished.history == ("phase 1 complete", "phase 2 approved", "phase 2 complete",
                                "phase 3 approved", "phase 3 complete")  # fmt: skip


def test_an_abort_once_phase_3_started_is_refused_before_any_vault_call() -> None:
    from meshflow.errors import InvalidError
    from meshflow.spec import PkiStore
    from tasks.root_rotation import restore_old_root

    late = _state(phase=3, completed=2)
    with pytest.raises(InvalidError, match="finish the rotation instead"):
        restore_old_root(PkiStore(key_vault_block="never-read"), late)
