"""The install plan's listing (pure)."""

from __future__ import annotations

from meshflow.plan import InstallPlan, PlannedChange


def test_a_plan_lists_each_change_its_notes_and_what_would_be_refused() -> None:
    refused = PlannedChange(system="Key Vault", target="kv", object="istio-root-ca-key",
                            change="refuse", reason="alpha-ca-cert exists")  # fmt: skip
    create = PlannedChange(system="Kubernetes", target="alpha", object="Namespace istio-system",
                           change="create", reason="absent")  # fmt: skip
    plan = InstallPlan(environment="dev", changes=(refused, create), notes=("a note",))
    assert plan.refused == [refused]
    assert plan.lines() == [
        "plan for dev (dry run, nothing written):",
        "  kv                     refuse   istio-root-ca-key  (alpha-ca-cert exists)",
        "  alpha                  create   Namespace istio-system  (absent)",
        "  note: a note",
        "  2 changes",
    ]
    assert "| Kubernetes | alpha | Namespace istio-system | create | absent |" in plan.markdown()
    assert InstallPlan(environment="dev", changes=()).markdown().endswith("Nothing to change.\n\n")
