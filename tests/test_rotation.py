"""The rotation run's decisions, table, summary and events (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from meshflow.appgateway import frontend_secret_id, is_unversioned
from meshflow.rotation import (
    CertificateRotation,
    FrontendCheck,
    MountCheck,
    RotationReport,
    outcome_event,
    restart_reason,
    rotation_events,
    stale_mounts,
)

DAY = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def _row(action: str, obj: str = "alpha-ca-cert", cluster: str = "alpha") -> CertificateRotation:
    return CertificateRotation(
        object=obj, cluster=cluster, action=action, reason="r",  # type: ignore[arg-type]
        old_version="v1", new_version="v2" if action in ("reissued", "rolled") else None,
        old_not_after=DAY, new_not_after=DAY + dt.timedelta(days=730),
    )  # fmt: skip


def _status(pod: str, objects: dict[str, str], spc: str = "istio-tls") -> dict[str, object]:
    return {
        "metadata": {"name": f"{pod}-default-istio-tls"},
        "status": {
            "podName": pod, "secretProviderClassName": spc, "mounted": True,
            "objects": [{"id": k, "version": v} for k, v in objects.items()],
        },
    }  # fmt: skip


def test_a_mount_is_current_only_when_every_pod_lists_every_new_version() -> None:
    expected = {"cert/alpha-ca-cert": "v2", "secret/alpha-cert-chain": "c2"}
    current = _status("istiod-a", expected)
    old = _status("istiod-b", {"cert/alpha-ca-cert": "v1", "secret/alpha-cert-chain": "c2"})
    partial = _status("istiod-c", {"cert/alpha-ca-cert": "v2"})
    assert stale_mounts([current], expected) == []
    assert stale_mounts([current, old, partial], expected) == [
        "istiod-b: cert/alpha-ca-cert at v1",
        "istiod-c: secret/alpha-cert-chain at absent",
    ]


ROOT = "-----BEGIN CERTIFICATE-----\nMIIroot\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("served", "stale", "on_timeout", "reason"),
    [
        (ROOT, False, False, None),
        (ROOT, True, False, None),  # stale, but the spec does not say to restart
        (ROOT, True, True, "its mounts did not show the new versions in time"),
        ("-----BEGIN CERTIFICATE-----\nMIIself\n-----END CERTIFICATE-----\n", False, False,
         "istiod did not start with the plug-in CA (it serves another root)"),
        ("", False, False, "istiod did not start with the plug-in CA (it serves another root)"),
    ],
)  # fmt: skip
def test_istiod_is_restarted_only_where_it_cannot_reload_by_itself(
    served: str, stale: bool, on_timeout: bool, reason: str | None
) -> None:
    assert (
        restart_reason(
            served_root=served, root_pem=ROOT, mounts_stale=stale, restart_on_timeout=on_timeout
        )
        == reason
    )
    # During a root rotation the mesh trusts a bundle: istiod serving either root started
    # with the plug-in CA.
    bundle = ROOT + "-----BEGIN CERTIFICATE-----\nMIInew\n-----END CERTIFICATE-----\n"
    assert (
        restart_reason(
            served_root=served,
            root_pem=bundle,
            mounts_stale=stale,
            restart_on_timeout=on_timeout,
        )
        == reason
    )


def _report(*rows: CertificateRotation, **extra: object) -> RotationReport:
    return RotationReport(
        environment="dev", dry_run=False, threshold_days=30, forced=False,
        certificates=rows, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_table_has_the_columns_the_operator_reads() -> None:
    report = _report(_row("reissued"), _row("kept", "echoserver", "mesh"))
    table = report.table()
    assert table[0] == {
        "object": "alpha-ca-cert", "cluster": "alpha",
        "old_not_after": "2027-01-01", "new_not_after": "2028-12-31",
        "old_version": "v1", "new_version": "v2", "action": "reissued", "reason": "r",
    }  # fmt: skip
    assert [r["action"] for r in table] == ["reissued", "kept"]
    assert [r.object for r in report.written] == ["alpha-ca-cert"]
    assert report.lines()[-1] == "  1 new versions; 0 problems"


def test_problems_are_failures_stale_mounts_and_a_frontend_nobody_renews() -> None:
    frontend = FrontendCheck(
        certificate="frontend-certificate", not_after=DAY, auto_renew=False, detail="imported"
    )
    stale = MountCheck(cluster="alpha", namespace="istio-system", status="stale", detail="old")
    fine = MountCheck(cluster="bravo", namespace="istio-system", status="not run: no pods",
                      detail="no pod")  # fmt: skip
    report = _report(_row("failed"), _row("kept"), frontend=frontend, mounts=(stale, fine))
    assert report.problems == [
        "alpha-ca-cert (alpha): r",
        "istio-system on alpha: old",
        "frontend-certificate: imported",
    ]


def test_each_certificate_is_an_event_with_its_cluster_related() -> None:
    report = _report(
        _row("reissued"),
        _row("rolled", "alpha-cert-chain"),
        _row("kept", "echoserver", "mesh"),
        _row("failed", "bravo-ca-cert", "bravo"),
    )
    events = rotation_events(report)
    assert [e.event for e in events] == [
        "meshflow.certificate.reissued",
        "meshflow.certificate.rolled",
        "meshflow.certificate.within-threshold",
        "meshflow.certificate.failed",
        "meshflow.rotation.failed",
    ]
    first = events[0]
    assert first.resource["prefect.resource.id"] == "meshflow.certificate.dev.alpha-ca-cert"
    assert [r["prefect.resource.role"] for r in first.related] == ["mesh", "cluster"]
    assert first.related[1]["prefect.resource.id"] == "meshflow.cluster.dev.alpha"
    assert first.payload["new_version"] == "v2"
    assert [r["prefect.resource.role"] for r in events[2].related] == ["mesh"]
    assert events[-1].payload["problems"] == ["bravo-ca-cert (bravo): r"]


def test_a_clean_run_completes_and_a_failure_names_what_failed() -> None:
    assert outcome_event("dev", [], dry_run=False).event == "meshflow.rotation.completed"
    failed = outcome_event("dev", ["Key Vault 'kv' is unavailable"], dry_run=True)
    assert failed.event == "meshflow.rotation.failed"
    assert failed.resource["prefect.resource.id"] == "meshflow.mesh.dev"
    assert failed.resource["meshflow.dry-run"] == "true"  # a plan does not reset "overdue"
    assert failed.payload == {"problems": ["Key Vault 'kv' is unavailable"], "dry_run": True}


@pytest.mark.parametrize(
    ("secret_id", "unversioned"),
    [
        ("https://kv.vault.azure.net/secrets/frontend-certificate", True),
        ("https://kv.vault.azure.net/secrets/frontend-certificate/", True),
        ("https://kv.vault.azure.net/secrets/frontend-certificate/0123abcd", False),
        ("https://kv.vault.azure.net/certificates/frontend-certificate", False),
    ],
)
def test_only_an_unversioned_secret_id_follows_renewals(secret_id: str, unversioned: bool) -> None:
    assert is_unversioned(secret_id) is unversioned


def test_the_gateways_frontend_reference_is_read_by_name() -> None:
    gateway = {"properties": {"sslCertificates": [
        {"name": "other", "properties": {"keyVaultSecretId": "https://kv/secrets/other"}},
        {"name": "frontend-certificate",
         "properties": {"keyVaultSecretId": "https://kv/secrets/frontend-certificate"}},
    ]}}  # fmt: skip
    assert frontend_secret_id(gateway) == "https://kv/secrets/frontend-certificate"
    assert frontend_secret_id({"properties": {}}) is None


def test_the_mount_ids_are_the_providers_type_and_name_at_the_current_version() -> None:
    from meshflow.rotation import mount_ids

    rows = [_row("reissued"), _row("kept", "alpha-cert-chain"), _row("failed", "bravo-ca-cert")]
    rows[2] = rows[2].model_copy(update={"old_version": None})
    assert mount_ids(rows) == {
        "secret/alpha-ca-cert": "v2",
        "cert/alpha-ca-cert": "v2",
        "secret/alpha-cert-chain": "v1",  # kept: the version it has
    }
