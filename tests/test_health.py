"""The verify run's decisions, report, artifact and failure message (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from meshflow.errors import NotFoundError
from meshflow.health import (
    CertificateHealth,
    HealthCheck,
    MeshHealth,
    artifact_key,
    blocked,
    certificate_health,
    credentials_check,
    failed,
    istiod_check,
    reason_of,
    remote_secret_check,
)

NOW = dt.datetime(2027, 1, 1, 12, tzinfo=dt.UTC)


def _cert(days: float, **kw: object) -> CertificateHealth:
    return certificate_health(
        "alpha-ca-cert", "alpha", not_after=NOW + dt.timedelta(days=days), now=NOW,
        threshold_days=30, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("days", "status", "days_left", "says"),
    [
        (400.5, "passed", 400, "expires on 2028-02-06"),
        (30.5, "passed", 30, "expires on"),
        (30, "warning", 30, "within the rotation threshold (30 days)"),
        (0.5, "warning", 0, "within the rotation threshold"),
        (0, "failed", 0, "expired on 2027-01-01: run `meshflow rotate --force`"),
        (-3, "failed", -3, "expired on 2026-12-29"),
    ],
)
def test_certificate_is_flagged_within_the_threshold_and_failed_once_expired(
    days: float, status: str, days_left: int, says: str
) -> None:
    row = _cert(days, version="v1")
    assert (row.status, row.days_left, row.version) == (status, days_left, "v1")
    assert says in row.detail


def test_a_missing_certificate_fails_and_the_root_is_renewed_by_rotate_root() -> None:
    missing = certificate_health("echoserver", "mesh", not_after=None, now=NOW, threshold_days=30)
    assert (missing.status, missing.days_left) == ("failed", None)
    assert "meshflow install" in missing.detail
    root = certificate_health(
        "istio-root-ca-key", "mesh", not_after=NOW + dt.timedelta(days=10), now=NOW,
        threshold_days=30, root=True,
    )  # fmt: skip
    assert root.status == "warning"
    assert "rotate-root" in root.detail
    assert "rotate-certificates" not in root.detail
    expired_root = certificate_health(
        "istio-root-ca-key", "mesh", not_after=NOW, now=NOW, threshold_days=30, root=True
    )
    assert expired_root.status == "failed"
    assert "`meshflow rotate-root`" in expired_root.detail


def test_a_certificate_of_another_root_is_a_warning_not_a_failure() -> None:
    row = _cert(400, signed_by_root=False)
    assert row.status == "warning"
    assert "not signed by the current root" in row.detail
    assert _cert(-1, signed_by_root=False).status == "failed"  # expiry decides first


def test_remote_secret_rows_name_the_pair_and_what_to_do() -> None:
    ok = remote_secret_check(
        source="alpha", target="bravo", present=True, reachable=True, read_ok=True,
        detail="reader can list and watch what istiod needs",
    )  # fmt: skip
    assert (ok.cluster, ok.check, ok.status) == ("bravo", "remote secret of alpha", "passed")
    gone = remote_secret_check(
        source="alpha", target="bravo", present=False, reachable=False, read_ok=False
    )
    assert gone.status == "failed"
    assert gone.line().startswith("bravo: remote secret of alpha: missing")
    rejected = remote_secret_check(
        source="alpha", target="bravo", present=True, reachable=False, read_ok=False,
        detail="cannot use it against https://10.0.0.1: 401",
    )  # fmt: skip
    assert rejected.status == "failed"
    assert "does not reach alpha (cannot use it against https://10.0.0.1: 401)" in rejected.detail
    assert "rotate-reader-tokens" in rejected.detail
    short = remote_secret_check(
        source="alpha", target="bravo", present=True, reachable=True, read_ok=False,
        missing=("watch core/pods",),
    )  # fmt: skip
    assert short.status == "failed"
    assert "lacks watch core/pods" in short.detail
    skipped = blocked("bravo", "remote secret of alpha", by="bravo")
    assert (skipped.status, skipped.check) == ("not run", "remote secret of alpha")
    assert skipped.line() == "bravo: remote secret of alpha: the credentials check of bravo failed"


@pytest.mark.parametrize(
    ("status", "nodes", "expected", "says"),
    [
        ("passed", 3, "passed", "1 peers synced"),
        ("failed", 3, "failed", "not synced"),
        ("not run", 0, "not run", "no nodes"),
        ("not run", 2, "failed", "though the cluster has 2 nodes"),
    ],
)
def test_istiod_sync_is_not_run_without_nodes_and_failed_when_nodes_run_no_istiod(
    status: str, nodes: int, expected: str, says: str
) -> None:
    detail = {"passed": "1 peers synced", "failed": "not synced: bravo=absent"}.get(
        status, "no running istiod (no nodes to run pods)"
    )
    row = istiod_check("alpha", status=status, detail=detail, nodes=nodes)
    assert row.status == expected
    assert says in row.detail


def test_reason_of_is_one_line_and_names_other_errors_by_type_only() -> None:
    assert reason_of(NotFoundError("block a missing\nblock b missing")) == (
        "block a missing; block b missing"
    )
    assert reason_of(RuntimeError("token=abc")) == "RuntimeError"


def _report(*extra: HealthCheck, certs: tuple[CertificateHealth, ...] = ()) -> MeshHealth:
    checks = (
        credentials_check("alpha", server="https://a:443", auth="token", namespaces=5),
        istiod_check("alpha", status="not run", detail="no running istiod", nodes=0),
        *extra,
    )
    return MeshHealth(
        environment="dev", threshold_days=30, checked_at=NOW, checks=checks,
        certificates=certs or (_cert(400), _cert(10)),
    )  # fmt: skip


def test_a_healthy_report_has_warnings_but_no_problem() -> None:
    report = _report()
    assert report.ok
    assert report.problems == []
    assert report.warnings == [
        "not run: alpha: istiod sync: no nodes: no istiod can run on this cluster (sync not "
        "checked)",
        "warning: alpha-ca-cert (alpha): expires on 2027-01-11, within the rotation threshold "
        "(30 days): the next rotate-certificates run reissues it",
    ]
    text = report.markdown()
    assert text.startswith("# Mesh health: dev\n")
    assert "read only: healthy; 2 warnings" in text
    assert "| alpha | credentials | passed | https://a:443 (token): 5 namespaces listed |" in text
    assert "| alpha-ca-cert | alpha | 2028-02-05 | 400 | passed | expires on 2028-02-05 |" in text
    assert report.lines()[-1] == "  0 problems; 2 warnings or not run"


def test_problems_are_one_line_each_under_a_headline() -> None:
    report = _report(
        failed("bravo", "credentials", "AKS cluster 'b': 403 | forbidden"),
        remote_secret_check(
            source="bravo", target="alpha", present=False, reachable=False, read_ok=False
        ),
        certs=(_cert(-2),),
    )
    assert not report.ok
    message = report.failure_message().splitlines()
    assert message[0] == "mesh dev: 3 health problems (artifact mesh-health-dev)"
    assert message[1:] == [
        "bravo: credentials: AKS cluster 'b': 403 | forbidden",
        "alpha: remote secret of bravo: missing (istiod in alpha cannot see bravo): run "
        "`meshflow install` to exchange it again",
        "alpha-ca-cert (alpha): expired on 2026-12-30: run `meshflow rotate --force` now",
    ]
    text = report.markdown()
    assert "**3 problems** (the run failed)" in text
    assert "| bravo | credentials | **failed** | AKS cluster 'b': 403 \\| forbidden |" in text
    assert artifact_key("dev") == "mesh-health-dev"


def test_the_report_is_frozen() -> None:
    report = _report()
    with pytest.raises(ValueError, match="frozen"):
        report.environment = "prod"  # type: ignore[misc]
