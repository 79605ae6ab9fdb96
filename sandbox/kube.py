"""Real local Kubernetes control planes: etcd + kube-apiserver + kube-controller-manager.

Each cluster lives in its own folder with its own CA, serving certificate (clients verify TLS),
service-account signing key, static tokens, admin kubeconfig and audit log, and listens on free
ports of 127.0.0.1. The Istio and SecretProviderClass CRDs from ``sandbox/crds`` are installed so
that objects meshflow writes are validated by the real schemas. There is no scheduler or kubelet:
Pods stay Pending, so data-plane checks must report "not run".

The binaries are built once from Debian's Kubernetes source package by ``sandbox/build-kube.sh``
(see ``shared/KUBE-LOCAL.md``) and cached under ``$MESHFLOW_CACHE`` (default ``~/.cache/meshflow``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from meshflow import yamlio
from meshflow.cache import cache_root
from sandbox import certs, processes

log = logging.getLogger(__name__)

#: What runs per cluster, in the order of :attr:`LocalCluster.pids`.
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager")

KUBE_VERSION = "v1.20.2"
CRD_DIR = Path(__file__).parent / "crds"
BUILD_SCRIPT = Path(__file__).parent / "build-kube.sh"
READY_TIMEOUT = 60.0

# Audit only what changes state, so tests and benchmarks can count writes per cluster.
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:kube-controller-manager"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        # Access reviews are "create" calls that persist nothing: not writes.
        {
            "level": "None",
            "resources": [{"group": "authorization.k8s.io"}, {"group": "authentication.k8s.io"}],
        },
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


class SandboxError(RuntimeError):
    """The local sandbox could not be built, started or reached."""


def binaries_dir() -> Path:
    """The folder holding ``kube-apiserver`` and ``kube-controller-manager``."""
    return cache_root() / f"kube-{KUBE_VERSION}" / "bin"


def ensure_binaries() -> Path:
    """Return the binaries folder, building Kubernetes first if it is not cached yet."""
    bins = binaries_dir()
    have = all((bins / b).exists() for b in ("kube-apiserver", "kube-controller-manager"))
    if not have or shutil.which("etcd") is None:
        log.info("building the local Kubernetes binaries once (about 5 minutes)")
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False)
        if result.returncode != 0:
            raise SandboxError(f"{BUILD_SCRIPT} failed (exit {result.returncode}); see its output")
    return bins


@dataclass(frozen=True)
class LocalCluster:
    """A running local control plane, as recorded in its ``cluster.json``."""

    name: str
    directory: Path
    api_url: str
    ca_bundle: Path
    admin_kubeconfig: Path
    user_kubeconfig: Path
    audit_log: Path
    pids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()} | {
            "pids": list(self.pids)
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalCluster:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=str(data["name"]),
            directory=Path(data["directory"]),
            api_url=str(data["api_url"]),
            ca_bundle=Path(data["ca_bundle"]),
            admin_kubeconfig=Path(data["admin_kubeconfig"]),
            user_kubeconfig=Path(data["user_kubeconfig"]),
            audit_log=Path(data["audit_log"]),
            pids=tuple(int(p) for p in data["pids"]),
        )

    @property
    def marker(self) -> str:
        """The string that identifies this cluster's processes (its folder)."""
        return str(self.directory)

    def is_running(self) -> bool:
        """Whether all of its processes are alive."""
        return all(processes.is_running(pid, self.marker) for pid in self.pids)

    def stop(self) -> None:
        """Stop its processes (controller manager, API server, etcd), by PID."""
        processes.stop([(pid, self.marker) for pid in reversed(self.pids)])


def kubeconfig(name: str, server: str, ca_pem: bytes, user: str, token: str) -> dict[str, Any]:
    """A self-contained token kubeconfig (CA data embedded, as AKS returns them)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": f"{user}_{name}", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{user}_{name}"}}],
        "current-context": name,
    }


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _wait_ready(url: str, ca: Path, token: str, proc_log: Path, timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(  # noqa: S310 - an https:// URL we built
        f"{url}/readyz", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.2)
    tail = proc_log.read_text(errors="replace")[-2000:] if proc_log.exists() else ""
    raise SandboxError(f"{url} was not ready after {timeout:.0f}s ({last}); log tail:\n{tail}")


def _strip_keys(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _strip_keys(v, key) for k, v in node.items() if k != key}
    if isinstance(node, list):
        return [_strip_keys(v, key) for v in node]
    return node


def crd_documents() -> Iterator[dict[str, Any]]:
    """The CRDs to install, without the CEL rules a 1.20 API server does not know."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yamlio.load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                yield _strip_keys(doc, "x-kubernetes-validations")


def _install_crds(kubeconfig_path: Path) -> None:
    from kubernetes import client, config  # the sandbox may use the SDK directly

    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path)
    )
    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for doc in crd_documents():
        names.append(doc["metadata"]["name"])
        try:
            # The client sends a plain dict as is; no need to build the typed model.
            ext.create_custom_resource_definition(doc)  # type: ignore[arg-type]
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + 30
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for crd in ext.list_custom_resource_definition().items:
            conds = crd.status.conditions or [] if crd.status else []
            if crd.metadata and any(c.type == "Established" and c.status == "True" for c in conds):
                pending.discard(str(crd.metadata.name))
        if pending:
            time.sleep(0.1)
    api_client.close()
    if pending:
        raise SandboxError(f"CRDs not established after 30s: {sorted(pending)}")


def start_cluster(name: str, directory: Path, bins: Path) -> LocalCluster:
    """Start one control plane in ``directory`` and return it once ready, with CRDs installed.

    On any failure the processes started so far are stopped before the error propagates.
    """
    directory.mkdir(parents=True, exist_ok=True)
    marker = str(directory)
    tls = certs.write_server_tls(
        directory / "pki",
        ca_name=f"{name}-ca",
        dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
    )
    sa_key, sa_pub = directory / "pki" / "sa.key", directory / "pki" / "sa.pub"
    certs.write_key_pair(sa_key, sa_pub)
    admin_token, user_token, kcm_token = (secrets.token_hex(24) for _ in range(3))
    tokens = directory / "tokens.csv"
    # The controller manager gets its own identity so that audit counts of "admin" writes are
    # the writes meshflow made, not the controllers' (the audit policy ignores this user).
    _write_private(
        tokens,
        f"{admin_token},admin,admin,system:masters\n{user_token},user,user\n"
        f'{kcm_token},system:kube-controller-manager,kcm,"system:masters"\n',
    )
    audit_policy = directory / "audit-policy.yaml"
    audit_policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
    audit_log = directory / "audit.log"

    client_port, peer_port, api_port = (processes.free_port() for _ in range(3))
    api_url = f"https://127.0.0.1:{api_port}"
    ca_pem = tls.ca_cert.read_bytes()
    admin_kc = directory / "admin.kubeconfig"
    _write_private(
        admin_kc, yaml.safe_dump(kubeconfig(name, api_url, ca_pem, "admin", admin_token))
    )
    user_kc = directory / "user.kubeconfig"
    _write_private(user_kc, yaml.safe_dump(kubeconfig(name, api_url, ca_pem, "user", user_token)))
    kcm_kc = directory / "controller-manager.kubeconfig"
    _write_private(kcm_kc, yaml.safe_dump(kubeconfig(name, api_url, ca_pem, "kcm", kcm_token)))

    started: list[processes.Started] = []

    def spawn(proc: str, argv: Sequence[str]) -> processes.Started:
        s = processes.spawn(proc, argv, log=directory / f"{proc}.log", marker=marker, cwd=directory)
        started.append(s)
        return s

    try:
        etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        spawn(
            "etcd",
            [
                "etcd", "--name", "default", "--data-dir", str(directory / "etcd"),
                "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"default={peer_url}",
            ],
        )  # fmt: skip
        apiserver = spawn(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--secure-port={api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={directory / 'pki'}",
                f"--tls-cert-file={tls.cert}",
                f"--tls-private-key-file={tls.key}",
                f"--client-ca-file={tls.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--authorization-mode=RBAC",
                f"--token-auth-file={tokens}",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={audit_log}",
                "--audit-log-format=json",
                # Reads go to etcd instead of a per-resource watch cache: an idle API server
                # then uses about 0.045 instead of 0.07 of a core (measured here; the cache's
                # dispatch loops and timers for ~60 resource types, CRDs included, are the
                # largest part of an idle server's CPU profile). Four sandbox clusters share 2
                # cores. Semantics only get stricter: no read is served from a stale cache.
                "--watch-cache=false",
            ],
        )
        _wait_ready(api_url, tls.ca_cert, admin_token, apiserver.log, READY_TIMEOUT)
        spawn(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kcm_kc}",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={tls.ca_cert}",
                "--controllers=*",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--port=0",
            ],
        )
        _install_crds(admin_kc)
    except BaseException:
        processes.stop([(s.pid, marker) for s in reversed(started)])
        raise

    cluster = LocalCluster(
        name=name,
        directory=directory,
        api_url=api_url,
        ca_bundle=tls.ca_cert,
        admin_kubeconfig=admin_kc,
        user_kubeconfig=user_kc,
        audit_log=audit_log,
        pids=tuple(s.pid for s in started),
    )
    (directory / "cluster.json").write_text(json.dumps(cluster.to_json(), indent=2))
    return cluster


def start_clusters(names: Sequence[str], root: Path) -> list[LocalCluster]:
    """Start several clusters in parallel under ``root/<name>``; all or none.

    If any cluster fails to start, the ones that did start are stopped again.
    """
    bins = ensure_binaries()
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = [pool.submit(start_cluster, n, root / n, bins) for n in names]
        results, errors = [], []
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as exc:
                errors.append(exc)
    if errors:
        for cluster in results:
            cluster.stop()
        raise SandboxError(f"{len(errors)} of {len(names)} clusters failed to start") from errors[0]
    return results


def load_cluster(directory: Path) -> LocalCluster:
    """Read the ``cluster.json`` a previous :func:`start_cluster` wrote."""
    return LocalCluster.from_json(json.loads((directory / "cluster.json").read_text()))


def audit_writes(cluster: LocalCluster, *, user: str | None = None) -> list[dict[str, Any]]:
    """The write requests in a cluster's audit log (optionally only those by ``user``)."""
    if not cluster.audit_log.exists():
        return []
    events = []
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        if user is None or event.get("user", {}).get("username") == user:
            events.append(event)
    return events
