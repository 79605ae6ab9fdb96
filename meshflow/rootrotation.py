"""Root rotation without downtime: its recorded state, and the trust bundles of each phase. Pure.

The three phases (each done in **every** cluster before the next starts):

1. **Trust both**: ``root-cert`` (every cluster's ``root-cert.pem``) and the App Gateway's
   trusted root hold the old root, byte for byte as before, then the new root. Intermediates
   are still issued by the old root.
2. **Issue from the new root**: the new root becomes the mesh root; every intermediate (and the
   ingress leaf) is reissued under it; chains end with the new root; both roots still trusted.
3. **Trust only the new root**: ``root-cert`` and the App Gateway hold the new root alone.

The state is a Key Vault secret (:data:`STATE_SECRET`, public facts only) so that a re-run from
any machine continues the rotation where it stopped and never starts a second new root.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STATE_SECRET = "meshflow-root-rotation"  # noqa: S105 - a Key Vault object name
NEXT_TAG = "meshflow-rotation"
"""Key Vault tag on the new root key version while it is not yet the mesh root (value ``next``)."""
NEXT = "next"

Phase = Literal[1, 2, 3]
Status = Literal["in progress", "done", "aborted"]

PHASE_TITLES: dict[int, str] = {
    1: "trust old and new root everywhere (still issuing from the old root)",
    2: "issue every intermediate from the new root (both roots still trusted)",
    3: "trust only the new root",
}


class RootRotationState(BaseModel):
    """Where a root rotation stands: recorded in Key Vault after every step."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rotation_id: str
    status: Status = "in progress"
    phase: Phase = 1
    """The phase in progress, or the last one completed when ``completed == phase``."""
    completed: int = Field(default=0, ge=0, le=3)
    old_kind: Literal["vault-key", "exportable"]
    old_name: str
    old_version: str
    old_pem: str
    old_bundle: str
    """``root-cert`` as it was before the rotation, exactly (an abort restores it)."""
    new_version: str
    new_pem: str
    history: tuple[str, ...] = ()

    @property
    def phase_done(self) -> bool:
        """Whether the current phase is complete (the next one waits for approval)."""
        return self.completed >= self.phase

    @property
    def abortable(self) -> bool:
        """Whether an abort can still return to the old root: not once phase 3 has started."""
        return self.status == "in progress" and self.phase < 3

    def advanced(self, note: str) -> RootRotationState:
        """The state with the next phase started."""
        if not self.phase_done or self.phase == 3:
            raise ValueError(f"phase {self.phase} is not complete; it cannot advance")
        nxt: Phase = 2 if self.phase == 1 else 3
        return self.model_copy(update={"phase": nxt, "history": (*self.history, note)})

    def with_completed(self, note: str) -> RootRotationState:
        """The state with the current phase complete (and the rotation done after phase 3)."""
        status: Status = "done" if self.phase == 3 else self.status
        return self.model_copy(
            update={"completed": self.phase, "status": status, "history": (*self.history, note)}
        )

    def with_status(self, status: Status, note: str) -> RootRotationState:
        """The state ended (``done`` or ``aborted``)."""
        return self.model_copy(update={"status": status, "history": (*self.history, note)})


def pem_blocks(text: str) -> list[str]:
    """The ``CERTIFICATE`` PEM blocks of ``text``, each as its own text, in order."""
    end = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + end for part in text.split(end) if "BEGIN CERTIFICATE" in part]


def both_roots(old_bundle: str, new_pem: str) -> str:
    """Phase 1's ``root-cert``: the old bundle byte for byte, then the new root.

    Istio 1.26-1.29 compare the new ``root-cert.pem`` with the old one as raw bytes, so the old
    root's PEM must appear unchanged. Idempotent: a bundle that already ends with the new root
    is returned as is.
    """
    new_block = new_pem.strip()
    if new_block in (b.strip() for b in pem_blocks(old_bundle)):
        return old_bundle
    prefix = old_bundle if old_bundle.endswith("\n") else old_bundle + "\n"
    return prefix + new_block + "\n"


def bundle_holds(bundle: str, pem: str) -> bool:
    """Whether PEM text ``bundle`` contains the certificate ``pem`` (compared block by block)."""
    return pem.strip() in (b.strip() for b in pem_blocks(bundle))


def phase_trust(state: RootRotationState) -> str:
    """What ``root-cert`` and the App Gateway must trust while ``state``'s phase runs or holds."""
    if state.status == "aborted":
        return state.old_bundle
    if state.phase == 3:
        return state.new_pem.strip() + "\n"
    return both_roots(state.old_bundle, state.new_pem)
