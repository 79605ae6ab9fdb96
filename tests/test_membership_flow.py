"""Clusters leaving and joining the mesh: install_mesh with a cluster removed, then added back."""

from __future__ import annotations

import asyncio
import base64
import time

from kubernetes import client, config

from flows.install import MeshReport, install_mesh
from meshflow.spec import MeshSpec
from sandbox import kube
from tasks.aks import forget_credentials


def _core(cluster: kube.LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(
        config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    )


def _remote_secrets(cluster: kube.LocalCluster) -> list[str]:
    listed = _core(cluster).list_namespaced_secret(
        "istio-system", label_selector="istio/multiCluster=true"
    )
    return sorted(s.metadata.name for s in listed.items)


def _install(spec: MeshSpec) -> MeshReport:
    forget_credentials()
    return asyncio.run(install_mesh(spec))


def test_a_cluster_that_leaves_loses_its_remote_secrets_and_gets_them_back_when_it_returns(
    installed_mesh: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    alpha, bravo = kube_clusters
    # A remote secret someone else manages: meshflow must never delete it.
    foreign = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name="istio-remote-secret-elsewhere", labels={"istio/multiCluster": "true"}
        ),
        data={"elsewhere": base64.b64encode(b"not meshflow's").decode()},
    )
    _core(alpha).create_namespaced_secret("istio-system", foreign)
    try:
        before_bravo = _remote_secrets(bravo)
        audit = len(kube.audit_writes(bravo, user="admin"))
        alone = mesh_env.model_copy(update={"clusters": mesh_env.clusters[:1]})
        left = _install(alone)
        assert [(r.cluster, r.object, r.action) for r in left.removed_secrets] == [
            ("alpha", "Secret istio-system/istio-remote-secret-bravo", "deleted")
        ]
        assert _remote_secrets(alpha) == ["istio-remote-secret-elsewhere"]
        time.sleep(1.0)  # the audit log is written asynchronously
        assert len(kube.audit_writes(bravo, user="admin")) == audit  # the leaver is not touched
        assert _remote_secrets(bravo) == before_bravo
        assert "istio-remote-secret-bravo" in left.markdown()
        again = _install(alone)
        assert again.removed_secrets == ()  # already gone: nothing to report
        back = _install(mesh_env)
        assert back.removed_secrets == ()
        assert _remote_secrets(alpha) == [
            "istio-remote-secret-bravo", "istio-remote-secret-elsewhere"
        ]  # fmt: skip
        assert _remote_secrets(bravo) == ["istio-remote-secret-alpha"]
        assert back.ok and all(a.read_ok for a in back.access)  # noqa: PT018
    finally:
        _core(alpha).delete_namespaced_secret("istio-remote-secret-elsewhere", "istio-system")
