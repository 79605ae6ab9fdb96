"""istioctl: release naming, verified and cached downloads, and the sandbox stand-in end to end.

Downloads run against a local HTTP server started here (counting requests); the stand-in runs
as a real subprocess against the local control planes through ``run_istioctl_install``.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from meshflow import istioctl as rel
from sandbox import ISTIOCTL_STANDIN, kube
from sandbox import istioctl_standin as standin
from tasks import istioctl_binary as istio
from tasks.retry import is_transient

REPO = Path(__file__).resolve().parent.parent
STANDIN = ISTIOCTL_STANDIN
VERSION = "1.27.3"
ASSET = f"istioctl-{VERSION}-linux-amd64.tar.gz"
FAKE_ISTIOCTL = b'#!/bin/sh\necho fake istioctl "$@"\n'

# ------------------------------------------------------------------ pure: meshflow.istioctl


@pytest.mark.parametrize(
    ("version", "os_name", "arch", "archive"),
    [
        ("1.27.3", "linux", "amd64", "istioctl-1.27.3-linux-amd64.tar.gz"),
        ("1.27.3", "linux", "arm64", "istioctl-1.27.3-linux-arm64.tar.gz"),
        ("1.26.0", "linux", "armv7", "istioctl-1.26.0-linux-armv7.tar.gz"),
        ("1.27.3", "osx", "arm64", "istioctl-1.27.3-osx-arm64.tar.gz"),
        ("1.27.3", "osx", "amd64", "istioctl-1.27.3-osx-amd64.tar.gz"),
    ],
)
def test_release_asset_names_and_urls(version: str, os_name: str, arch: str, archive: str) -> None:
    asset = rel.release_asset(version, os=os_name, arch=arch)
    base = f"https://github.com/istio/istio/releases/download/{version}"
    assert asset.archive == archive
    assert asset.archive_url == f"{base}/{archive}"
    assert asset.checksum_url == f"{base}/{archive}.sha256"


def test_release_asset_base_url_is_a_parameter() -> None:
    mirror = rel.release_asset("1.27.3", base_url="https://mirror.example/istio/")
    assert mirror.archive_url == f"https://mirror.example/istio/1.27.3/{ASSET}"
    local = rel.release_asset("1.27.3", base_url="http://127.0.0.1:8080")
    assert local.checksum_url == f"http://127.0.0.1:8080/1.27.3/{ASSET}.sha256"
    with pytest.raises(rel.IstioctlArgumentError, match="https"):
        rel.release_asset("1.27.3", base_url="http://mirror.example/istio")
    with pytest.raises(rel.IstioctlArgumentError, match="unsupported platform"):
        rel.release_asset("1.27.3", os="win", arch="amd64")


@pytest.mark.parametrize("bad", ["v1.27.3", "1.27", "1.27.3-beta.0", "", "01.27.3", "1.27.3 "])
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(rel.IstioctlArgumentError, match=r"MAJOR\.MINOR\.PATCH"):
        rel.release_asset(bad)


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [
        ("Linux", "x86_64", ("linux", "amd64")),
        ("Linux", "aarch64", ("linux", "arm64")),
        ("Linux", "armv7l", ("linux", "armv7")),
        ("Darwin", "arm64", ("osx", "arm64")),
    ],
)
def test_platform_mapping(system: str, machine: str, expected: tuple[str, str]) -> None:
    assert rel.platform_of(system, machine) == expected


def test_unpublished_platform_points_at_the_override() -> None:
    with pytest.raises(rel.IstioctlArgumentError, match="MESHFLOW_ISTIOCTL"):
        rel.platform_of("Windows", "AMD64")


DIGEST = "ab" * 32


@pytest.mark.parametrize(
    "text",
    [
        f"{DIGEST} {ASSET}\n",  # what istio/release-builder writes (one space)
        f"{DIGEST}  {ASSET}\n",  # sha256sum text mode
        f"{DIGEST} *{ASSET}\n",  # sha256sum binary mode
        f"{DIGEST}\n",  # the bare digest
        f"{DIGEST.upper()}  {ASSET}",  # upper case, no newline
        f"{'cd' * 32}  other.tar.gz\n{DIGEST}  ./{ASSET}\n",  # a SHA256SUMS-style list
    ],
)
def test_sha256_file_formats(text: str) -> None:
    assert rel.parse_sha256_file(text, filename=ASSET) == DIGEST


@pytest.mark.parametrize("text", ["", "not a digest\n", f"{'cd' * 32}  other.tar.gz\n", "abc  x"])
def test_sha256_file_without_a_digest_for_the_file(text: str) -> None:
    with pytest.raises(rel.IstioctlArgumentError, match="no SHA-256 digest"):
        rel.parse_sha256_file(text, filename=ASSET)


def test_cache_layout_is_version_then_checksum_prefix(tmp_path: Path) -> None:
    path = rel.cached_binary(tmp_path, VERSION, f"sha256:{DIGEST.upper()}")
    assert path == tmp_path / "istioctl" / VERSION / DIGEST[:16] / "istioctl"
    with pytest.raises(rel.IstioctlArgumentError):
        rel.cached_binary(tmp_path, VERSION, "abc")
    with pytest.raises(rel.IstioctlArgumentError):
        rel.cached_binary(tmp_path, "../1.27.3", DIGEST)


@pytest.mark.parametrize(
    ("name", "kind", "unsafe"),
    [
        ("istioctl", "file", False),
        ("./istioctl", "file", False),
        ("bin/", "dir", False),
        ("../evil", "file", True),
        ("a/../../evil", "file", True),
        ("/etc/passwd", "file", True),
        ("dev", "other", True),
    ],
)
def test_unsafe_archive_members(name: str, kind: str, unsafe: bool) -> None:
    reason = rel.unsafe_member_reason(
        name, is_file=kind == "file", is_dir=kind == "dir", is_link=False
    )
    assert (reason is not None) is unsafe


def test_install_argv_owns_files_and_kubeconfig() -> None:
    argv = rel.install_argv(
        "istioctl", ["install", "-y"], ["/t/a.yaml", "/t/b.yaml"], "/proc/1/fd/3"
    )
    assert argv == [
        "istioctl", "install", "-y", "-f", "/t/a.yaml", "-f", "/t/b.yaml",
        "--kubeconfig", "/proc/1/fd/3",
    ]  # fmt: skip
    for owned in (["-f", "x"], ["--kubeconfig=/k"], ["-c", "/k"]):
        with pytest.raises(rel.IstioctlArgumentError, match="separately"):
            rel.install_argv("istioctl", ["install", *owned], ["/t/a.yaml"], "/k")
    with pytest.raises(rel.IstioctlArgumentError, match="at least one"):
        rel.install_argv("istioctl", ["install"], [], "/k")


def test_redact_hides_token_shaped_strings() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    text = (
        f"Authorization: Bearer abc.def\ntoken: {'f' * 48}\n{jwt}\npassword=hunter2\n"
        "plain words stay\nmy-own-secret here\n"
    )
    out = rel.redact(text, ["my-own-secret"])
    for secret in ("abc.def", "f" * 48, jwt, "hunter2", "my-own-secret"):
        assert secret not in out
    assert "plain words stay" in out
    assert out.count(rel.REDACTED) == 5


@pytest.mark.parametrize("name", ["a/b.yaml", "../x.yaml", ".hidden", "", "x y.yaml"])
def test_operator_file_names_must_be_plain(name: str) -> None:
    with pytest.raises(rel.IstioctlArgumentError):
        rel.validate_file_name(name)


# ------------------------------------------------------------------ ensure_istioctl


@dataclass
class Release:
    """A local release server: path → body, every request counted."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)

    def publish(self, archive: bytes, *, sha256: str | None = None, name: str = ASSET) -> str:
        digest = sha256 or hashlib.sha256(archive).hexdigest()
        self.files[f"/{VERSION}/{name}"] = archive
        self.files[f"/{VERSION}/{name}.sha256"] = f"{digest} {name}\n".encode()
        return digest


@pytest.fixture
def release() -> Iterator[Release]:
    state = Release(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            code = state.status.get(self.path, 200 if body is not None else 404)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            if code == 200 and body:
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ensure(release: Release, cache: Path, **kwargs: Any) -> Path:
    return istio.ensure_istioctl(
        VERSION, cache_dir=cache, base_url=release.url, os_name="linux", arch="amd64", **kwargs
    )


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(istio.OVERRIDE_ENV, raising=False)


@pytest.mark.kube
def test_download_verifies_caches_and_then_does_no_network_io(
    release: Release, tmp_path: Path
) -> None:
    digest = release.publish(_tarball({"istioctl": FAKE_ISTIOCTL}))
    binary = _ensure(release, tmp_path)
    assert binary == tmp_path / "istioctl" / VERSION / digest[:16] / "istioctl"
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    run = subprocess.run([binary, "version"], capture_output=True, text=True, check=True)
    assert run.stdout == "fake istioctl version\n"
    assert sorted(release.requests) == [f"/{VERSION}/{ASSET}", f"/{VERSION}/{ASSET}.sha256"]

    release.requests.clear()
    assert _ensure(release, tmp_path) == binary  # the checksum recorded at first download
    assert _ensure(release, tmp_path, expected_sha256=digest) == binary  # pinned by the caller
    assert release.requests == []
    assert not list((tmp_path / "istioctl" / VERSION).glob(".download-*"))


def test_checksum_mismatch_is_refused_and_nothing_is_cached(
    release: Release, tmp_path: Path
) -> None:
    release.publish(_tarball({"istioctl": FAKE_ISTIOCTL}), sha256="00" * 32)
    with pytest.raises(istio.IstioctlChecksumError) as err:
        _ensure(release, tmp_path)
    message = str(err.value)
    assert f"expected sha256 {'00' * 32}" in message
    assert "got " in message
    assert "discarded" in message
    assert _files_under(tmp_path) == []
    assert not is_transient(err.value)


def test_pinned_checksum_wins_over_the_published_one(release: Release, tmp_path: Path) -> None:
    release.publish(_tarball({"istioctl": FAKE_ISTIOCTL}))
    with pytest.raises(istio.IstioctlChecksumError, match="expected sha256 1111"):
        _ensure(release, tmp_path, expected_sha256="11" * 32)
    assert f"/{VERSION}/{ASSET}.sha256" not in release.requests
    assert _files_under(tmp_path) == []


def test_archive_with_a_path_traversal_member_is_refused(release: Release, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    release.publish(_tarball({"istioctl": FAKE_ISTIOCTL, "../evil": b"pwned"}))
    with pytest.raises(istio.IstioctlArchiveError, match=r"\.\./evil"):
        _ensure(release, cache)
    assert _files_under(cache) == []
    assert not list(tmp_path.rglob("evil"))


def test_archive_without_istioctl_is_refused(release: Release, tmp_path: Path) -> None:
    release.publish(_tarball({"bin/istioctl": FAKE_ISTIOCTL}))
    with pytest.raises(istio.IstioctlArchiveError, match="no 'istioctl' file"):
        _ensure(release, tmp_path)
    assert _files_under(tmp_path) == []


@pytest.mark.parametrize(("status", "transient"), [(404, False), (503, True)])
def test_http_errors_are_clear_and_classified(
    release: Release, tmp_path: Path, status: int, transient: bool
) -> None:
    release.publish(_tarball({"istioctl": FAKE_ISTIOCTL}))
    release.status[f"/{VERSION}/{ASSET}"] = status
    with pytest.raises(istio.IstioctlDownloadError, match=f"HTTP {status}") as err:
        _ensure(release, tmp_path)
    assert err.value.status == status
    assert is_transient(err.value) is transient
    assert _files_under(tmp_path) == []


def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    with pytest.raises(istio.IstioctlDownloadError) as err:
        istio.ensure_istioctl(
            VERSION, cache_dir=tmp_path, base_url="http://127.0.0.1:9", os_name="linux",
            arch="amd64",
        )  # fmt: skip
    assert is_transient(err.value)


def test_override_is_used_without_any_download(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(istio.OVERRIDE_ENV, str(STANDIN))
    assert _ensure(release, tmp_path / "cache") == STANDIN.resolve()
    assert release.requests == []
    plain = tmp_path / "not-executable"
    plain.write_text("")
    monkeypatch.setenv(istio.OVERRIDE_ENV, str(plain))
    with pytest.raises(istio.IstioctlOverrideError, match="MESHFLOW_ISTIOCTL"):
        _ensure(release, tmp_path / "cache")


# ------------------------------------------------------------------ run_istioctl_install


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-istioctl"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.kube
def test_install_timeout_is_transient(tmp_path: Path) -> None:
    fake = _script(tmp_path, "sleep 5")
    with pytest.raises(istio.IstioInstallTimeout, match="cluster 'c1' did not finish") as err:
        istio.run_istioctl_install(
            fake, cluster="c1", kubeconfig_text="x", args=["install"], files={"a.yaml": "{}"},
            timeout=0.3,
        )  # fmt: skip
    assert is_transient(err.value)


@pytest.mark.kube
def test_failure_names_the_cluster_and_redacts_the_output(tmp_path: Path) -> None:
    token = "s3cr3t-" + "9" * 40
    kubeconfig = yaml.safe_dump(kube.kubeconfig("c2", "https://127.0.0.1:1", b"ca", "u", token))
    fake = _script(
        tmp_path, 'cat "$(eval echo \\${$#})"; echo boom; exit 3'
    )  # prints the kubeconfig
    with pytest.raises(istio.IstioInstallError, match=r"cluster 'c2' failed \(exit 3\)") as err:
        istio.run_istioctl_install(
            fake, cluster="c2", kubeconfig_text=kubeconfig, args=["install"],
            files={"a.yaml": "{}"}, timeout=10,
        )  # fmt: skip
    assert err.value.result.exit_code == 3
    assert "boom" in err.value.result.output_tail
    assert "server: https://127.0.0.1:1" in err.value.result.output_tail  # it did read it
    assert token not in str(err.value)
    assert not is_transient(err.value)


# ------------------------------------------------------------------ the stand-in, end to end

REV = "1-27-3"
GATEWAY_NS = "istio-ingress"


def _operator(spec: dict[str, Any]) -> str:
    doc = {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": "standin-test"},
        "spec": spec,
    }
    return yaml.safe_dump(doc)


def _operator_files(cluster: str, *, revision: str = REV) -> dict[str, str]:
    csi = {
        "name": "cacerts",
        "csi": {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": "istio-tls"},
        },
    }
    mesh = {
        "profile": "minimal",
        "revision": revision,
        "meshConfig": {"accessLogFile": "/dev/stdout"},
        "values": {
            "global": {
                "meshID": "mesh1",
                "multiCluster": {"clusterName": cluster},
                "network": "network1",
            }
        },
    }
    istiod = {
        "components": {
            "pilot": {
                "k8s": {
                    "overlays": [
                        {
                            "kind": "Deployment",
                            "name": f"istiod-{revision}",
                            "patches": [
                                {"path": "spec.template.spec.volumes.[name:cacerts]", "value": csi}
                            ],
                        }
                    ]
                }
            }
        }
    }
    gateway = {
        "components": {
            "ingressGateways": [
                {
                    "name": "ingressgateway",
                    "namespace": GATEWAY_NS,
                    "enabled": True,
                    "label": {"istio": "ingressgateway"},
                    "k8s": {"service": {"type": "ClusterIP"}},
                }
            ]
        },
        "values": {"gateways": {"istio-ingressgateway": {"injectionTemplate": "gateway"}}},
    }
    return {
        "mesh.yaml": _operator(mesh),
        "istiod.yaml": _operator(istiod),
        "ingress-gateway.yaml": _operator(gateway),
    }


ARGS = ["install", "-y", "--set", "profile=minimal", "--revision", REV, "--set", f"tag={VERSION}"]


def _api(cluster: kube.LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def _token(cluster: kube.LocalCluster) -> str:
    return str(yaml.safe_load(cluster.admin_kubeconfig.read_text())["users"][0]["user"]["token"])


def _install(
    cluster: kube.LocalCluster,
    *,
    args: list[str] = ARGS,
    files: dict[str, str] | None = None,
    istioctl: Path = STANDIN,
    kubeconfig: str | None = None,
) -> istio.InstallResult:
    return istio.run_istioctl_install(
        istioctl,
        cluster=cluster.name,
        kubeconfig_text=kubeconfig or cluster.admin_kubeconfig.read_text(),
        args=args,
        files=_operator_files(cluster.name) if files is None else files,
        timeout=60,
    )


def _writes(cluster: kube.LocalCluster) -> list[str]:
    """Writes by the admin user, except the controller manager's (it runs with that kubeconfig)."""
    return [
        f"{e['verb']} {e['requestURI']}"
        for e in kube.audit_writes(cluster, user="admin")
        if not e.get("userAgent", "").startswith("kube-controller-manager")
    ]


def _ensure_namespaces(cluster: kube.LocalCluster) -> None:
    core = client.CoreV1Api(_api(cluster))
    for ns in ("istio-system", GATEWAY_NS):
        try:
            core.create_namespace({"metadata": {"name": ns}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise


@pytest.fixture(scope="module")
def installed(kube_clusters: list[kube.LocalCluster]) -> Iterator[tuple[kube.LocalCluster, str]]:
    cluster = kube_clusters[0]
    _ensure_namespaces(cluster)
    result = _install(cluster)
    yield cluster, result.output_tail
    # These installs use this module's own files, not meshflow's: drop meshflow's record of its
    # last install, so that the next install_mesh of the session runs istioctl again.
    try:
        client.CoreV1Api(_api(cluster)).delete_namespaced_config_map(
            "meshflow-istio-install", "istio-system"
        )
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.mark.kube
def test_standin_creates_istiod_objects(installed: tuple[kube.LocalCluster, str]) -> None:
    cluster, output = installed
    apps, core = client.AppsV1Api(_api(cluster)), client.CoreV1Api(_api(cluster))
    istiod = apps.read_namespaced_deployment(f"istiod-{REV}", "istio-system")
    assert istiod.metadata.labels["app"] == "istiod"
    assert istiod.metadata.labels["istio.io/rev"] == REV
    pod = istiod.spec.template.spec
    cacerts = next(v for v in pod.volumes if v.name == "cacerts")
    assert cacerts.secret is None
    assert cacerts.csi.driver == "secrets-store.csi.k8s.io"
    assert cacerts.csi.volume_attributes == {"secretProviderClass": "istio-tls"}
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env["CLUSTER_ID"] == cluster.name
    assert pod.containers[0].image == f"docker.io/istio/pilot:{VERSION}"

    service = core.read_namespaced_service(f"istiod-{REV}", "istio-system")
    assert sorted(p.port for p in service.spec.ports) == [443, 15010, 15012, 15014]
    assert service.spec.selector == {"app": "istiod", "istio.io/rev": REV}

    mesh = yaml.safe_load(
        core.read_namespaced_config_map(f"istio-{REV}", "istio-system").data["mesh"]
    )
    assert mesh["accessLogFile"] == "/dev/stdout"
    assert mesh["defaultConfig"]["meshId"] == "mesh1"
    values = core.read_namespaced_config_map(f"values-{REV}", "istio-system").data
    merged = yaml.safe_load(values["merged-values"])["global"]
    assert merged["multiCluster"]["clusterName"] == cluster.name
    assert merged["network"] == "network1"

    assert "meshflow sandbox istioctl stand-in — NOT Istio" in output
    assert "pods not started: sandbox has no nodes" in output


@pytest.mark.kube
def test_standin_creates_the_ingress_gateway(installed: tuple[kube.LocalCluster, str]) -> None:
    cluster, _ = installed
    apps, core = client.AppsV1Api(_api(cluster)), client.CoreV1Api(_api(cluster))
    gateway = apps.read_namespaced_deployment("ingressgateway", GATEWAY_NS)
    labels = gateway.spec.template.metadata.labels
    assert labels["istio"] == "ingressgateway"
    assert labels["app"] == "istio-ingressgateway"
    assert gateway.spec.template.metadata.annotations["inject.istio.io/templates"] == "gateway"
    service = core.read_namespaced_service("ingressgateway", GATEWAY_NS)
    assert service.spec.type == "ClusterIP"
    ports = {p.name: (p.port, p.target_port) for p in service.spec.ports}
    assert ports["http2"] == (80, 8080)
    assert ports["https"] == (443, 8443)


@pytest.mark.kube
def test_second_run_writes_nothing(
    installed: tuple[kube.LocalCluster, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, _ = installed
    apps = client.AppsV1Api(_api(cluster))
    before = apps.read_namespaced_deployment(f"istiod-{REV}", "istio-system")
    writes = _writes(cluster)
    monkeypatch.chdir(REPO)
    result = _install(cluster, istioctl=Path("sandbox/bin/istioctl"))  # relative, as documented
    assert result.exit_code == 0
    assert _writes(cluster) == writes
    after = apps.read_namespaced_deployment(f"istiod-{REV}", "istio-system")
    assert after.metadata.uid == before.metadata.uid
    assert "0 object(s) written" in result.output_tail


@pytest.mark.kube
def test_changed_input_updates_in_place(installed: tuple[kube.LocalCluster, str]) -> None:
    cluster, _ = installed
    files = _operator_files(cluster.name)
    files["mesh.yaml"] = files["mesh.yaml"].replace("/dev/stdout", "/dev/null")
    try:
        result = _install(cluster, files=files)
        assert "ConfigMap istio-system/istio-1-27-3: updated" in result.output_tail
        cm = client.CoreV1Api(_api(cluster)).read_namespaced_config_map(
            f"istio-{REV}", "istio-system"
        )
        assert yaml.safe_load(cm.data["mesh"])["accessLogFile"] == "/dev/null"
    finally:
        _install(cluster)  # back to the shared state the other tests expect


@pytest.mark.kube
@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        ([*ARGS, "--frobnicate"], None, "unknown flag '--frobnicate'"),
        (["install", "--set", "profile=minimal", "--revision", REV], None, "-y"),
        ([*ARGS[:5], "9-9-9", *ARGS[6:]], None, "does not match spec.revision '1-27-3'"),
        (["install", "-y", "--set", "profile=demo", "--revision", REV], None, "profile 'demo'"),
        (ARGS, {"bad.yaml": "a: [unclosed"}, "not valid YAML"),
        (ARGS, {"pod.yaml": "apiVersion: v1\nkind: Pod\n"}, "kind IstioOperator"),
    ],
)
def test_bad_arguments_exit_64_with_a_clear_message(
    installed: tuple[kube.LocalCluster, str],
    args: list[str],
    files: dict[str, str] | None,
    message: str,
) -> None:
    cluster, _ = installed
    writes = _writes(cluster)
    with pytest.raises(istio.IstioInstallError, match=f"cluster '{cluster.name}'") as err:
        _install(cluster, args=args, files=files)
    assert err.value.result.exit_code == 64
    assert message in err.value.result.output_tail
    assert _writes(cluster) == writes


@pytest.mark.kube
def test_missing_operator_file_exits_64(
    installed: tuple[kube.LocalCluster, str], tmp_path: Path
) -> None:
    cluster, _ = installed
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.admin_kubeconfig.read_text())
    missing = tmp_path / "missing.yaml"
    run = subprocess.run(
        [STANDIN, *ARGS, "-f", str(missing), "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 64
    assert f"-f {missing}: cannot read file" in run.stderr


@pytest.mark.kube
def test_missing_namespace_fails_like_istioctl(kube_clusters: list[kube.LocalCluster]) -> None:
    cluster = kube_clusters[1]
    files = _operator_files(cluster.name, revision="standin-nons")
    files["ingress-gateway.yaml"] = files["ingress-gateway.yaml"].replace(
        GATEWAY_NS, "no-such-namespace"
    )
    args = ["install", "-y", "--set", "profile=minimal", "--revision", "standin-nons"]
    _ensure_namespaces(cluster)
    with pytest.raises(istio.IstioInstallError) as err:
        _install(cluster, args=args, files=files)
    assert err.value.result.exit_code == 1
    assert 'namespaces "no-such-namespace" not found' in err.value.result.output_tail
    apps = client.AppsV1Api(_api(cluster))
    with pytest.raises(client.ApiException) as missing:
        apps.read_namespaced_deployment("istiod-standin-nons", "istio-system")
    assert missing.value.status == 404  # checked before any write


@pytest.mark.kube
def test_kubeconfig_never_touches_disk(
    kube_clusters: list[kube.LocalCluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = kube_clusters[0]
    _ensure_namespaces(cluster)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR in this process
    seen: list[list[str]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        seen.append(list(argv))
        workdir = Path(argv[argv.index("-f") + 1]).parent
        assert workdir.parent == scratch
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        return real_run(argv, **kwargs)

    monkeypatch.setattr(istio.subprocess, "run", spy)
    result = _install(cluster)
    kubeconfig_arg = seen[0][seen[0].index("--kubeconfig") + 1]
    assert kubeconfig_arg.startswith(f"/proc/{os.getpid()}/fd/")
    assert not Path(kubeconfig_arg).exists()  # the in-memory file is closed afterwards
    token = _token(cluster)
    assert token not in result.output_tail
    assert list(scratch.iterdir()) == []  # the operator files' folder is gone
    for path in _files_under(scratch.parent):
        assert token.encode() not in path.read_bytes(), path


@pytest.mark.kube
def test_standin_verifies_the_api_server_certificate(
    installed: tuple[kube.LocalCluster, str], kube_clusters: list[kube.LocalCluster]
) -> None:
    cluster, _ = installed
    other = next(c for c in kube_clusters if c is not cluster)
    doc = yaml.safe_load(cluster.admin_kubeconfig.read_text())
    foreign = yaml.safe_load(other.admin_kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = foreign["clusters"][0]["cluster"][
        "certificate-authority-data"
    ]
    writes = _writes(cluster)
    with pytest.raises(istio.IstioInstallError) as err:
        _install(cluster, kubeconfig=yaml.safe_dump(doc))
    assert err.value.result.exit_code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in err.value.result.output_tail
    assert _writes(cluster) == writes


# ------------------------------------------------------------------ the stand-in, pure parts


@pytest.mark.kube
def test_standin_version_is_labelled() -> None:
    run = subprocess.run([STANDIN, "version", "--remote=false"], capture_output=True, text=True)
    assert run.returncode == 0
    assert run.stdout.splitlines()[0] == standin.LABEL
    assert f"client version: {standin.EMULATED_VERSION}" in run.stdout
    remote = subprocess.run([STANDIN, "version"], capture_output=True, text=True)
    assert remote.returncode == 64
    assert "--remote=false" in remote.stderr


def _rendered_istiod(overlays: list[dict[str, Any]]) -> standin.Rendered:
    spec = {
        "profile": "minimal",
        "revision": REV,
        "components": {"pilot": {"k8s": {"overlays": overlays}}},
    }
    return standin.render_istiod(standin.Operator("t", spec))


def test_overlay_paths_select_replace_append_and_delete() -> None:
    patches = [
        {"path": "spec.template.spec.volumes.[name:cacerts]", "value": {"name": "cacerts"}},
        {"path": "spec.template.spec.volumes[99]", "value": {"name": "extra", "emptyDir": {}}},
        {"path": "spec.template.spec.containers.[name:discovery].args.[30m]", "value": "60m"},
        {"path": "spec.template.spec.containers.[name:discovery].env.[name:REVISION]"},
        {"path": "metadata.labels.extra", "value": "yes"},
    ]
    rendered = _rendered_istiod(
        [{"kind": "Deployment", "name": f"istiod-{REV}", "patches": patches}]
    )
    deployment = next(o for o in rendered.objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "cacerts"} in pod["volumes"]
    assert pod["volumes"][-1]["name"] == "extra"
    assert "60m" in pod["containers"][0]["args"]
    assert "REVISION" not in {e["name"] for e in pod["containers"][0]["env"]}
    assert deployment["metadata"]["labels"]["extra"] == "yes"
    assert rendered.warnings == []


def test_overlay_on_the_unrevisioned_name_is_ignored_with_a_warning() -> None:
    patch = {"path": "spec.template.spec.volumes.[name:cacerts]", "value": {}}
    rendered = _rendered_istiod([{"kind": "Deployment", "name": "istiod", "patches": [patch]}])
    assert "31076" in rendered.warnings[0]


def test_overlay_path_that_matches_nothing_is_a_usage_error() -> None:
    patch = {"path": "spec.template.spec.volumes.[name:nope].csi", "value": {}}
    with pytest.raises(standin.UsageError, match=r"no list item matches \[name:nope\]"):
        _rendered_istiod([{"kind": "Deployment", "name": f"istiod-{REV}", "patches": [patch]}])


def test_standin_refuses_an_istio_release_meshflow_does_not_know(tmp_path: Path) -> None:
    # As a real istioctl finds no images for a tag that was never released.
    operator = tmp_path / "mesh.yaml"
    operator.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {}\n")
    argv = [*ARGS[1:-1], "tag=9.99.0", "-f", str(operator), "--kubeconfig", str(operator)]
    req = standin.parse_install_args(argv)
    with pytest.raises(standin.UsageError, match=r"Istio 9\.99\.0 is not a release meshflow knows"):
        standin.effective_operator(req)
