"""Real local Kubernetes control planes: etcd + kube-apiserver + kube-controller-manager.

Each cluster lives in its own folder with its own CA, serving certificate (clients verify TLS),
service-account signing key, static tokens, admin kubeconfig and audit log, and listens on free
ports of 127.0.0.1. The Istio and SecretProviderClass CRDs from ``sandbox/crds`` are installed so
that objects meshflow writes are validated by the real schemas. There is no scheduler or kubelet:
Pods stay Pending, so data-plane checks must report "not run".

Everything a cluster's command lines are built from is its :class:`ClusterLayout` (folder and
ports), recorded in ``cluster.json``: :func:`restart_cluster` runs the processes that stopped
with the same data, certificates, tokens, audit log and ports as :func:`start_cluster` did.

The binaries are built once from Debian's Kubernetes source package by ``sandbox/build-kube.sh``
(see ``docs/design.md``, "Local control planes") and cached under ``$MESHFLOW_CACHE`` (default
``~/.cache/meshflow``).
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from meshflow import yamlio
from meshflow.cache import cache_root
from sandbox import certs, processes
from sandbox.processes import SandboxError as SandboxError  # where callers have found it

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")

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
class ClusterLayout:
    """A control plane's folder and ports: all that its processes' command lines are built from.

    Recorded so that a restart runs each process on the same data, files and ports.
    """

    directory: Path
    etcd_port: int
    peer_port: int
    api_port: int

    @classmethod
    def allocate(cls, directory: Path) -> ClusterLayout:
        """A layout in ``directory`` on ports of 127.0.0.1 that are free right now."""
        etcd_port, peer_port, api_port = (processes.free_port() for _ in range(3))
        return cls(directory, etcd_port, peer_port, api_port)

    @property
    def pki(self) -> Path:
        """Folder of the TLS files and the service-account key pair."""
        return self.directory / "pki"

    @property
    def tls(self) -> certs.ServerTls:
        """The cluster CA and the API server's certificate (as :func:`certs.write_server_tls`)."""
        return certs.ServerTls(
            self.pki / "ca.pem", self.pki / "server.pem", self.pki / "server-key.pem"
        )

    @property
    def sa_key(self) -> Path:
        """Service-account token signing key."""
        return self.pki / "sa.key"

    @property
    def sa_pub(self) -> Path:
        """Its public half, which the API server verifies tokens with."""
        return self.pki / "sa.pub"

    @property
    def etcd_data(self) -> Path:
        """The etcd data folder: the cluster's objects, kept across restarts."""
        return self.directory / "etcd"

    @property
    def tokens(self) -> Path:
        """Static bearer tokens (admin, user, controller manager)."""
        return self.directory / "tokens.csv"

    @property
    def audit_policy(self) -> Path:
        """What the API server audits."""
        return self.directory / "audit-policy.yaml"

    @property
    def audit_log(self) -> Path:
        """The audit log (JSON lines; a restarted API server appends)."""
        return self.directory / "audit.log"

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig of ``admin`` (system:masters)."""
        return self.directory / "admin.kubeconfig"

    @property
    def user_kubeconfig(self) -> Path:
        """Kubeconfig of ``user`` (no role bindings)."""
        return self.directory / "user.kubeconfig"

    @property
    def controller_manager_kubeconfig(self) -> Path:
        """Kubeconfig of the controller manager's own identity."""
        return self.directory / "controller-manager.kubeconfig"

    @property
    def etcd_url(self) -> str:
        """The etcd client URL."""
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def peer_url(self) -> str:
        """The etcd peer URL (one member, but etcd listens on it)."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def api_url(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.api_port}"

    def ports(self, process: str) -> tuple[int, ...]:
        """The ports ``process`` (one of :data:`PROCESSES`) listens on."""
        return {
            "etcd": (self.etcd_port, self.peer_port),
            "kube-apiserver": (self.api_port,),
            "kube-controller-manager": (),
        }[process]

    def log(self, process: str) -> Path:
        """Where ``process``'s output goes (appended to, across restarts)."""
        return self.directory / f"{process}.log"


def _etcd_argv(layout: ClusterLayout, bins: Path) -> list[str]:
    return [
        "etcd", "--name", "default", "--data-dir", str(layout.etcd_data),
        "--listen-client-urls", layout.etcd_url, "--advertise-client-urls", layout.etcd_url,
        "--listen-peer-urls", layout.peer_url, "--initial-advertise-peer-urls", layout.peer_url,
        "--initial-cluster", f"default={layout.peer_url}",
    ]  # fmt: skip


def _apiserver_argv(layout: ClusterLayout, bins: Path) -> list[str]:
    return [
        str(bins / "kube-apiserver"),
        f"--etcd-servers={layout.etcd_url}",
        f"--secure-port={layout.api_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
        f"--cert-dir={layout.pki}",
        f"--tls-cert-file={layout.tls.cert}",
        f"--tls-private-key-file={layout.tls.key}",
        f"--client-ca-file={layout.tls.ca_cert}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={layout.sa_pub}",
        f"--service-account-signing-key-file={layout.sa_key}",
        "--authorization-mode=RBAC",
        f"--token-auth-file={layout.tokens}",
        "--service-cluster-ip-range=10.0.0.0/24",
        f"--audit-policy-file={layout.audit_policy}",
        f"--audit-log-path={layout.audit_log}",
        "--audit-log-format=json",
        # Reads go to etcd instead of a per-resource watch cache: an idle API server uses
        # markedly less CPU (docs/design.md), and four sandbox clusters share 2 cores.
        # Semantics only get stricter: no read is served from a stale cache.
        "--watch-cache=false",
    ]


def _controller_manager_argv(layout: ClusterLayout, bins: Path) -> list[str]:
    return [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={layout.controller_manager_kubeconfig}",
        f"--service-account-private-key-file={layout.sa_key}",
        f"--root-ca-file={layout.tls.ca_cert}",
        "--controllers=*",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--port=0",
    ]


_ARGV = {
    "etcd": _etcd_argv,
    "kube-apiserver": _apiserver_argv,
    "kube-controller-manager": _controller_manager_argv,
}


def command_line(process: str, layout: ClusterLayout, bins: Path) -> list[str]:
    """The argv of ``process`` (one of :data:`PROCESSES`), for its first start and any restart."""
    return _ARGV[process](layout, bins)


@dataclass(frozen=True)
class LocalCluster:
    """A local control plane, as recorded in its ``cluster.json``: layout and process IDs."""

    name: str
    layout: ClusterLayout
    pids: tuple[int, ...]

    @property
    def directory(self) -> Path:
        """The cluster's folder."""
        return self.layout.directory

    @property
    def api_url(self) -> str:
        """The API server's URL."""
        return self.layout.api_url

    @property
    def ca_bundle(self) -> Path:
        """The CA certificate that the API server's certificate chains to."""
        return self.layout.tls.ca_cert

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig of ``admin`` (system:masters), CA data embedded."""
        return self.layout.admin_kubeconfig

    @property
    def user_kubeconfig(self) -> Path:
        """Kubeconfig of ``user`` (no role bindings), CA data embedded."""
        return self.layout.user_kubeconfig

    @property
    def audit_log(self) -> Path:
        """The API server's audit log of writes."""
        return self.layout.audit_log

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {
            "name": self.name,
            "directory": str(self.directory),
            "api_url": self.api_url,
            "ca_bundle": str(self.ca_bundle),
            "admin_kubeconfig": str(self.admin_kubeconfig),
            "user_kubeconfig": str(self.user_kubeconfig),
            "audit_log": str(self.audit_log),
            "etcd_port": self.layout.etcd_port,
            "peer_port": self.layout.peer_port,
            "api_port": self.layout.api_port,
            "pids": list(self.pids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalCluster:
        """Inverse of :meth:`to_json`.

        Raises:
            KeyError: ``data`` was recorded by a meshflow that did not record ports.
        """
        layout = ClusterLayout(
            directory=Path(data["directory"]),
            etcd_port=int(data["etcd_port"]),
            peer_port=int(data["peer_port"]),
            api_port=int(data["api_port"]),
        )
        return cls(name=str(data["name"]), layout=layout, pids=tuple(int(p) for p in data["pids"]))

    @property
    def marker(self) -> str:
        """The string that identifies this cluster's processes (its folder)."""
        return str(self.directory)

    def stopped(self) -> list[str]:
        """Which of :data:`PROCESSES` are no longer running."""
        return [
            proc
            for proc, pid in zip(PROCESSES, self.pids, strict=True)
            if not processes.is_running(pid, self.marker)
        ]

    def is_running(self) -> bool:
        """Whether all of its processes are alive."""
        return not self.stopped()

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


def _wait_ready(layout: ClusterLayout, pid: int, timeout: float) -> None:
    """Wait until the API server (process ``pid``) answers ``/readyz`` with 200.

    Raises:
        SandboxError: it exited, or was not ready within ``timeout`` seconds (with its log's
            tail).
    """
    ctx = ssl.create_default_context(cafile=str(layout.tls.ca_cert))
    req = urllib.request.Request(  # noqa: S310 - an https:// URL we built
        f"{layout.api_url}/readyz", headers={"Authorization": f"Bearer {_admin_token(layout)}"}
    )
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline and processes.is_running(pid, str(layout.directory)):
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.2)
    log = layout.log("kube-apiserver")
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    if not processes.is_running(pid, str(layout.directory)):
        raise SandboxError(f"the API server {layout.api_url} (pid {pid}) exited; log tail:\n{tail}")
    raise SandboxError(
        f"{layout.api_url} was not ready after {timeout:.0f}s ({last}); log tail:\n{tail}"
    )


def _require_running(name: str, layout: ClusterLayout, proc: str, pid: int) -> None:
    """Raise, with its log's tail, if the cluster's ``proc`` has exited.

    An API server can be ready on an etcd that is not its own: one that lost its port to
    another server has exited, and the port answers for someone else.
    """
    if not processes.is_running(pid, str(layout.directory)):
        log = layout.log(proc)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise SandboxError(f"{name} {proc} (pid {pid}) exited; log tail:\n{tail}")


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


def _create_crd(ext: Any, doc: dict[str, Any]) -> None:
    """Create one CRD; one that already exists counts as created.

    A loaded API server can answer 409 to the first create: the client's connection was
    retried after the server had stored the object (seen in CI).
    """
    from kubernetes.client.exceptions import ApiException

    try:
        # The client sends a plain dict as is; no need to build the typed model.
        ext.create_custom_resource_definition(doc)
    except ApiException as err:
        if err.status != 409:
            raise


def _ensure_crds(kubeconfig_path: Path) -> None:
    """Create those of :func:`crd_documents` the cluster lacks; wait until all are Established.

    Only reads when none is missing (a restarted API server keeps its CRDs in etcd), so no
    audited write is made.
    """
    from kubernetes import client, config  # the sandbox may use the SDK directly

    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path)
    )
    ext = client.ApiextensionsV1Api(api_client)
    try:
        present = {
            str(c.metadata.name) for c in ext.list_custom_resource_definition().items if c.metadata
        }
        docs = list(crd_documents())
        for doc in docs:
            if doc["metadata"]["name"] not in present:
                _create_crd(ext, doc)
        pending = {str(doc["metadata"]["name"]) for doc in docs}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for crd in ext.list_custom_resource_definition().items:
                conds = crd.status.conditions or [] if crd.status else []
                if crd.metadata and any(
                    c.type == "Established" and c.status == "True" for c in conds
                ):
                    pending.discard(str(crd.metadata.name))
            if pending:
                time.sleep(0.1)
    finally:
        api_client.close()
    if pending:
        raise SandboxError(f"CRDs not established after 30s: {sorted(pending)}")


def _write_files(name: str, layout: ClusterLayout) -> None:
    """Write a new cluster's CA, certificates, keys, tokens, kubeconfigs and audit policy."""
    layout.directory.mkdir(parents=True, exist_ok=True)
    tls = certs.write_server_tls(  # at the paths layout.tls names (a test checks it)
        layout.pki,
        ca_name=f"{name}-ca",
        dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
    )
    certs.write_key_pair(layout.sa_key, layout.sa_pub)
    admin_token, user_token, kcm_token = (secrets.token_hex(24) for _ in range(3))
    # The controller manager gets its own identity so that audit counts of "admin" writes are
    # the writes meshflow made, not the controllers' (the audit policy ignores this user).
    _write_private(
        layout.tokens,
        f"{admin_token},admin,admin,system:masters\n{user_token},user,user\n"
        f'{kcm_token},system:kube-controller-manager,kcm,"system:masters"\n',
    )
    layout.audit_policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
    ca_pem = tls.ca_cert.read_bytes()
    for path, user, token in (
        (layout.admin_kubeconfig, "admin", admin_token),
        (layout.user_kubeconfig, "user", user_token),
        (layout.controller_manager_kubeconfig, "kcm", kcm_token),
    ):
        _write_private(path, yaml.safe_dump(kubeconfig(name, layout.api_url, ca_pem, user, token)))


def _admin_token(layout: ClusterLayout) -> str:
    doc = yaml.safe_load(layout.admin_kubeconfig.read_text())
    return str(doc["users"][0]["user"]["token"])


def _bring_up(
    name: str, layout: ClusterLayout, bins: Path, running: dict[str, int]
) -> tuple[int, ...]:
    """Start, in order, those of :data:`PROCESSES` not in ``running``; wait for the API; CRDs.

    ``running`` maps the processes still alive to their PIDs (empty on a first start). Returns
    the PIDs of all of :data:`PROCESSES`. On failure, stops what this call started (the running
    ones are left alone) and raises.
    """
    marker = str(layout.directory)
    pids = dict(running)
    started: list[int] = []
    try:
        for proc in PROCESSES:
            if proc not in pids:
                processes.require_free_ports(f"{name} {proc}", layout.ports(proc))
                pids[proc] = processes.spawn(
                    proc, command_line(proc, layout, bins),
                    log=layout.log(proc), marker=marker, cwd=layout.directory,
                ).pid  # fmt: skip
                started.append(pids[proc])
            if proc == "kube-apiserver":
                _wait_ready(layout, pids[proc], READY_TIMEOUT)
                _require_running(name, layout, "etcd", pids["etcd"])
        _ensure_crds(layout.admin_kubeconfig)
    except BaseException:
        processes.stop([(pid, marker) for pid in reversed(started)])
        raise
    return tuple(pids[proc] for proc in PROCESSES)


def _record(cluster: LocalCluster) -> LocalCluster:
    (cluster.directory / "cluster.json").write_text(json.dumps(cluster.to_json(), indent=2))
    return cluster


def start_cluster(name: str, directory: Path, bins: Path) -> LocalCluster:
    """Start a new control plane in ``directory``, on free ports; return it ready, CRDs installed.

    On any failure the processes started so far are stopped before the error propagates.
    """
    layout = ClusterLayout.allocate(directory)
    _write_files(name, layout)
    return _record(LocalCluster(name, layout, _bring_up(name, layout, bins, running={})))


def restart_cluster(cluster: LocalCluster, bins: Path) -> tuple[LocalCluster, list[str]]:
    """Start again, in place, those of the cluster's processes that stopped.

    Same data (etcd's folder), certificates, tokens, audit log (appended to) and ports as the
    first start; CRDs are created only if missing. Idempotent: a running cluster is returned as
    is. Returns the cluster with its new PIDs (also written to ``cluster.json``) and the names
    of the processes restarted, e.g. ``["cluster-2 kube-apiserver"]``.

    Raises:
        SandboxError: a recorded port is taken by another program, or a process did not come
            up (what this call started is stopped again; the cluster's record is unchanged).
    """
    stopped = cluster.stopped()
    if not stopped:
        return cluster, []
    running = {}
    for proc, pid in zip(PROCESSES, cluster.pids, strict=True):
        if proc in stopped:
            processes.clear_after(pid, cluster.marker)
        else:
            running[proc] = pid
    pids = _bring_up(cluster.name, cluster.layout, bins, running)
    restarted = _record(LocalCluster(cluster.name, cluster.layout, pids))
    return restarted, [f"{cluster.name} {proc}" for proc in stopped]


def _in_parallel(
    work: Callable[[_T], _R], items: Sequence[_T]
) -> tuple[list[_R], list[tuple[_T, Exception]]]:
    """Run ``work`` on every item at once; its results and the ``(item, error)`` of failures."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = [(item, pool.submit(work, item)) for item in items]
        results, errors = [], []
        for item, fut in futures:
            try:
                results.append(fut.result())
            except Exception as exc:
                errors.append((item, exc))
    return results, errors


def start_clusters(names: Sequence[str], root: Path) -> list[LocalCluster]:
    """Start several clusters in parallel under ``root/<name>``; all or none.

    If any cluster fails to start, the ones that did start are stopped again.
    """
    bins = ensure_binaries()
    results, errors = _in_parallel(lambda n: start_cluster(n, root / n, bins), names)
    if errors:
        for cluster in results:
            cluster.stop()
        raise SandboxError(
            f"{len(errors)} of {len(names)} clusters failed to start: {errors[0][1]}"
        ) from errors[0][1]
    return results


def restart_clusters(clusters: Sequence[LocalCluster]) -> list[str]:
    """:func:`restart_cluster` on each cluster, in parallel; the names of the processes restarted.

    Each cluster that restarted records its new PIDs in its ``cluster.json`` (read them with
    :func:`load_cluster`), also when another one failed.

    Raises:
        SandboxError: some cluster could not be restarted (the message says why).
    """
    if all(c.is_running() for c in clusters):
        return []
    bins = ensure_binaries()
    results, errors = _in_parallel(lambda c: restart_cluster(c, bins), clusters)
    if errors:
        reasons = "; ".join(f"{cluster.name}: {exc}" for cluster, exc in errors)
        raise SandboxError(f"could not restart {reasons}") from errors[0][1]
    return [name for _, names in results for name in names]


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
