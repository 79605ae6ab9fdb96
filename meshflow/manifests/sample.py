"""The echoserver sample (step 10) and the cross-cluster call that proves the mesh (step 11)."""

from __future__ import annotations

import json

from meshflow.manifests._meta import ECHOSERVER_NAMESPACE, Manifest, metadata

ECHOSERVER = "echoserver"
ECHOSERVER_IMAGE = "gcr.io/google_containers/echoserver:1.10"
ECHOSERVER_PORT = 8080
ECHOSERVER_SELECTOR = {"run": ECHOSERVER}
CURL_IMAGE = "curlimages/curl:8.11.1"
CALL_JOB = "echoserver-call"
CALL_TTL_SECONDS = 600
CALL_DEADLINE_SECONDS = 120
# The call must go through the sidecar: the local Service has no endpoints, only Envoy knows
# the remote ones. So hold the app until the proxy is up, and stop the proxy afterwards (a
# classic sidecar would keep the Job running forever; with native sidecars this is a no-op).
_CALL_SCRIPT = (
    "curl -fsS -m 10 http://{host}:{port}/; rc=$?; "
    "curl -fsS -m 5 -X POST http://127.0.0.1:15020/quitquitquit >/dev/null 2>&1; "
    "exit $rc"
)


def echoserver_deployment() -> Manifest:
    """Step 10: Deployment ``echoserver`` (only in clusters with ``sample_workload``)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ECHOSERVER, ECHOSERVER_NAMESPACE, labels=ECHOSERVER_SELECTOR),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(ECHOSERVER_SELECTOR)},
            "template": {
                "metadata": {"labels": dict(ECHOSERVER_SELECTOR)},
                "spec": {
                    "containers": [
                        {
                            "name": ECHOSERVER,
                            "image": ECHOSERVER_IMAGE,
                            "ports": [{"containerPort": ECHOSERVER_PORT, "protocol": "TCP"}],
                        }
                    ]
                },
            },
        },
    }


def echoserver_service() -> Manifest:
    """Step 10: Service ``echoserver`` in every cluster, so the name resolves everywhere.

    The port is named ``http`` so Istio treats it as HTTP without protocol sniffing.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ECHOSERVER, ECHOSERVER_NAMESPACE, labels=ECHOSERVER_SELECTOR),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(ECHOSERVER_SELECTOR),
            "ports": [
                {
                    "name": "http",
                    "port": ECHOSERVER_PORT,
                    "targetPort": ECHOSERVER_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def cross_cluster_call_job(*, name: str = CALL_JOB) -> Manifest:
    """Step 11: a one-shot Job in ``echoserver`` that calls ``http://echoserver:8080/``.

    Run it in a cluster without the Deployment: success means the request crossed to a
    cluster that has it. ``backoffLimit: 0`` makes one failed call fail the Job; the Job is
    garbage-collected ``ttlSecondsAfterFinished`` after it ends. ``-f`` makes an HTTP error
    (Envoy's 503 "no healthy upstream") fail the call too.
    """
    labels = {"app": name}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(name, ECHOSERVER_NAMESPACE, labels=labels),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": CALL_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": CALL_TTL_SECONDS,
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "proxy.istio.io/config": json.dumps(
                            {"holdApplicationUntilProxyStarts": True}
                        )
                    },
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "curl",
                            "image": CURL_IMAGE,
                            "command": [
                                "sh",
                                "-c",
                                _CALL_SCRIPT.format(host=ECHOSERVER, port=ECHOSERVER_PORT),
                            ],
                        }
                    ],
                },
            },
        },
    }
