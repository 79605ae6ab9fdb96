"""A plan: what a run would write or delete, listed by a read-only run. Pure: no SDK, no I/O."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Change = Literal["create", "update", "delete", "issue", "install", "refuse"]
"""``issue``: a new certificate version (key first); ``refuse``: the run would stop there."""


class PlannedChange(BaseModel):
    """One write (or deletion) a run would make, where, and why."""

    model_config = ConfigDict(frozen=True)
    system: Literal["Key Vault", "Kubernetes", "Istio", "App Gateway"]
    target: str
    """The vault, or the cluster."""
    object: str
    change: Change
    reason: str

    def line(self) -> str:
        """One console line."""
        return f"  {self.target:<22} {self.change:<8} {self.object}  ({self.reason})"


class InstallPlan(BaseModel):
    """What ``install-mesh`` would do now, found without writing anything."""

    model_config = ConfigDict(frozen=True)
    environment: str
    changes: tuple[PlannedChange, ...]
    notes: tuple[str, ...] = ()

    @property
    def refused(self) -> list[PlannedChange]:
        """The changes the install would refuse to make (it would stop with an error)."""
        return [c for c in self.changes if c.change == "refuse"]

    def lines(self) -> list[str]:
        """The console listing: each change, the notes, then a count."""
        head = f"plan for {self.environment} (dry run, nothing written):"
        body = [c.line() for c in self.changes] or ["  nothing to change"]
        notes = [f"  note: {n}" for n in self.notes]
        return [head, *body, *notes, f"  {len(self.changes)} changes"]

    def markdown(self) -> str:
        """The artifact ``plan-<env>``."""
        rows = "\n".join(
            f"| {c.system} | {c.target} | {c.object} | {c.change} | {c.reason} |"
            for c in self.changes
        )
        notes = "".join(f"- {n}\n" for n in self.notes)
        table = (
            "| system | where | object | change | why |\n|---|---|---|---|---|\n" + rows + "\n"
            if rows
            else "Nothing to change.\n"
        )
        return f"# Install plan: {self.environment}\n\n{table}\n{notes}"
