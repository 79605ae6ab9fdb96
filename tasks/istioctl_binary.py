"""The istioctl binary: fetched once and verified, then run with no kubeconfig on disk.

Design:

- **Fetching** (:func:`ensure_istioctl`): the archive is streamed to a private folder inside the
  cache, hashed while it arrives, and compared with the expected SHA-256 *before* anything is
  extracted. The expected value is, in order: the caller's ``expected_sha256``, the release's
  entry in :data:`meshflow.istioctl.KNOWN_RELEASES`, the checksum recorded when this platform's
  archive was first verified, and finally the ``.sha256`` file published next to the archive.
  Only the ``istioctl`` member is written (mode 0755); an archive with an absolute, ``..`` or
  special-file member is refused. The finished folder is renamed into place atomically, so a
  reader never sees half a binary and concurrent runs cannot corrupt each other.
- **Caching**: by version *and* checksum (``<cache>/istioctl/<version>/<sha256-prefix>/istioctl``,
  see :mod:`meshflow.istioctl`). A second call with the same version and checksum does no network
  I/O. The install itself is never cached: it is idempotent on the cluster's side.
- **Override**: ``MESHFLOW_ISTIOCTL=/path/to/istioctl`` skips the download entirely (air-gapped
  sites bring their own binary; the sandbox points it at ``sandbox/bin/istioctl``, a stand-in).
- **Running** (:func:`run_istioctl_install`): IstioOperator files (not secret) go into a private
  temporary folder removed afterwards. The kubeconfig (secret) goes into a sealed anonymous
  in-memory file (``memfd_create``) that istioctl opens as ``/proc/<our pid>/fd/<n>``; it never
  touches a disk and the child cannot alter it. Output is captured, and only a short tail with
  token-shaped strings redacted is returned or put into an error.

Errors follow ``tasks/retry.py``: HTTP 5xx/429, refused connections and timeouts come out as
transient; checksum mismatches, missing members, bad arguments and a failed install as permanent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from meshflow import istioctl as rel
from meshflow.errors import InvalidError, MeshflowError, TransientError
from meshflow.kubeconfig import KubeconfigError, parse_kubeconfig

IstioctlArgumentError = rel.IstioctlArgumentError
"""Re-exported: bad version, platform, URL, checksum or argument list (a ``ValueError``)."""

OVERRIDE_ENV = "MESHFLOW_ISTIOCTL"
"""Environment variable: path of an istioctl to use instead of downloading one."""

CHUNK = 1 << 20
HTTP_TIMEOUT = 60.0
USER_AGENT = "meshflow-istioctl-fetch"

Opener = Callable[[str], AbstractContextManager[IO[bytes]]]
"""Opens a URL for reading (``urllib.request.urlopen`` with a timeout, by default)."""


class IstioError(MeshflowError):
    """istioctl could not be fetched or run."""


class IstioctlDownloadError(IstioError):
    """An istioctl archive or its checksum could not be downloaded (permanent: 4xx)."""


class IstioctlUnavailableError(IstioctlDownloadError, TransientError):
    """The download server answered 5xx/429, or could not be reached (retried)."""


class IstioctlChecksumError(IstioError, InvalidError):
    """The downloaded archive does not have the expected SHA-256 (never retried)."""


class IstioctlArchiveError(IstioError, InvalidError):
    """The archive verified but is unusable: no ``istioctl`` member, or an unsafe member."""


class IstioctlOverrideError(IstioError, InvalidError):
    """``MESHFLOW_ISTIOCTL`` does not name an executable file."""


class IstioInstallError(IstioError):
    """``istioctl install`` exited non-zero (or did not finish) on a cluster."""

    def __init__(self, message: str, result: InstallResult | None = None) -> None:
        super().__init__(message, system="istioctl", target=result.cluster if result else "")
        self.result = result


class IstioInstallTimeout(IstioInstallError, TransientError):
    """``istioctl install`` did not finish in time (transient: retried)."""


@dataclass(frozen=True)
class InstallResult:
    """The outcome of one ``istioctl install`` run. ``output_tail`` is redacted."""

    cluster: str
    exit_code: int
    output_tail: str
    argv: tuple[str, ...]
    seconds: float


def _urlopen(url: str) -> AbstractContextManager[IO[bytes]]:
    # Schemes are checked by meshflow.istioctl.release_asset: https, or http on loopback only.
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310
    response: AbstractContextManager[IO[bytes]] = urllib.request.urlopen(  # noqa: S310
        request, timeout=HTTP_TIMEOUT
    )
    return response


def istioctl_override() -> Path | None:
    """The istioctl named by ``MESHFLOW_ISTIOCTL``, or ``None`` when it is unset.

    Raises:
        IstioctlOverrideError: it is set but does not name an executable regular file.
    """
    value = os.environ.get(OVERRIDE_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise IstioctlOverrideError(
            f"{OVERRIDE_ENV}={value!r} is not an executable file; unset it to download istioctl"
        )
    return path.resolve()


@contextlib.contextmanager
def _fetch(opener: Opener, url: str) -> Iterator[IO[bytes]]:
    try:
        with opener(url) as response:
            yield response
    except urllib.error.HTTPError as exc:
        kind = IstioctlUnavailableError if exc.code in (429,) or exc.code >= 500 else None
        raise (kind or IstioctlDownloadError)(
            f"GET {url} failed: HTTP {exc.code} {exc.reason}", status=exc.code
        ) from exc
    except urllib.error.URLError as exc:
        cause = exc.reason if isinstance(exc.reason, BaseException) else exc
        raise IstioctlUnavailableError(f"GET {url} failed: {exc.reason}") from cause
    except (ConnectionError, TimeoutError) as exc:
        raise IstioctlUnavailableError(f"GET {url} failed: {exc}") from exc
    except http.client.HTTPException as exc:
        # A transfer cut short is a connection problem; say so for the retry policy.
        cut = ConnectionError(f"{type(exc).__name__}: {exc}")
        cut.__cause__ = exc
        raise IstioctlUnavailableError(f"GET {url} failed: {cut}") from cut


def _published_sha256(opener: Opener, asset: rel.ReleaseAsset) -> str:
    with _fetch(opener, asset.checksum_url) as response:
        text = response.read(64 * 1024).decode("utf-8", errors="replace")
    try:
        return rel.parse_sha256_file(text, filename=asset.archive)
    except rel.IstioctlArgumentError as exc:
        raise IstioctlDownloadError(f"{asset.checksum_url}: {exc}") from exc


def _download(opener: Opener, url: str, dest: Path) -> str:
    digest = hashlib.sha256()
    with _fetch(opener, url) as response, dest.open("wb") as out:
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _extract_istioctl(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                reason = rel.unsafe_member_reason(
                    member.name,
                    is_file=member.isfile(),
                    is_dir=member.isdir(),
                    is_link=member.issym() or member.islnk(),
                )
                if reason:
                    raise IstioctlArchiveError(f"refusing {archive.name}: {reason}")
            found = [m for m in members if rel.is_istioctl_member(m.name) and m.isfile()]
            if not found:
                names = [m.name for m in members][:10]
                raise IstioctlArchiveError(f"{archive.name} has no 'istioctl' file (has {names})")
            source = tar.extractfile(found[0])
            if source is None:
                raise IstioctlArchiveError(f"{archive.name}: 'istioctl' is not readable")
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
            with source, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            dest.chmod(0o755)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IstioctlArchiveError(f"{archive.name} is not a readable .tar.gz: {exc}") from exc


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _cached(cache_dir: Path, version: str, sha256: str) -> Path | None:
    binary = rel.cached_binary(cache_dir, version, sha256)
    stamp = binary.with_name("archive.sha256")
    try:
        recorded = rel.parse_sha256_file(stamp.read_text())
    except (OSError, rel.IstioctlArgumentError):
        return None
    if recorded == sha256 and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def _recorded_sha256(cache_dir: Path, asset: rel.ReleaseAsset) -> str | None:
    record = rel.checksum_record(cache_dir, asset.version, asset.os, asset.arch)
    try:
        return rel.parse_sha256_file(record.read_text(), filename=asset.archive)
    except (OSError, rel.IstioctlArgumentError):
        return None


def _asset(version: str, base_url: str, os_name: str | None, arch: str | None) -> rel.ReleaseAsset:
    if os_name is None or arch is None:
        here = rel.platform_of(platform.system(), platform.machine())
        os_name, arch = os_name or here[0], arch or here[1]
    return rel.release_asset(version, os=os_name, arch=arch, base_url=base_url)


def _expected_sha256(
    asset: rel.ReleaseAsset, cache_dir: Path, expected_sha256: str | None
) -> tuple[str | None, str | None]:
    """(the digest pinned by the caller or the release table, the digest to expect if known)."""
    pinned = expected_sha256 or rel.known_release(asset.version).sha256.get(asset.archive)
    known = rel.normalize_sha256(pinned) if pinned else _recorded_sha256(cache_dir, asset)
    return pinned, known


def cached_istioctl(version: str, *, cache_dir: Path) -> Path | None:
    """The istioctl :func:`ensure_istioctl` would return without downloading, if there is one.

    ``MESHFLOW_ISTIOCTL``'s, or this platform's verified binary of ``version`` in the cache;
    None when a download is needed. No network I/O.
    """
    override = istioctl_override()
    if override is not None:
        return override
    asset = _asset(version, rel.DEFAULT_BASE_URL, None, None)
    _, known = _expected_sha256(asset, cache_dir, None)
    return _cached(cache_dir, version, known) if known else None


def _install_into_cache(
    opener: Opener, asset: rel.ReleaseAsset, sha256: str, cache_dir: Path
) -> Path:
    final = rel.cache_dir_for(cache_dir, asset.version, sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=final.parent))
    try:
        archive = work / asset.archive
        got = _download(opener, asset.archive_url, archive)
        if got != sha256:
            raise IstioctlChecksumError(
                f"checksum mismatch for {asset.archive} from {asset.archive_url}: "
                f"expected sha256 {sha256}, got {got}; the download was discarded"
            )
        staged = work / "staged"
        staged.mkdir()
        _extract_istioctl(archive, staged / "istioctl")
        (staged / "archive.sha256").write_text(f"{sha256} {asset.archive}\n")
        try:
            staged.rename(final)
        except OSError:
            if _cached(cache_dir, asset.version, sha256) is None:
                raise  # not a concurrent winner's finished copy: something else is in the way
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "istioctl"


def ensure_istioctl(
    version: str,
    *,
    cache_dir: Path,
    base_url: str = rel.DEFAULT_BASE_URL,
    expected_sha256: str | None = None,
    opener: Opener = _urlopen,
    os_name: str | None = None,
    arch: str | None = None,
) -> Path:
    """An istioctl of ``version`` for this machine, downloaded and verified once, then cached.

    Idempotent: a second call for the same version and checksum returns the cached binary with
    no network I/O. ``MESHFLOW_ISTIOCTL``, when set, wins over everything (no download at all).

    Args:
        version: ``MAJOR.MINOR.PATCH``.
        cache_dir: the cache root; the binary lands in ``<cache>/istioctl/<v>/<sha-prefix>/``.
        base_url: release download root (a mirror, or a local server in tests).
        expected_sha256: the archive's digest, pinned by the caller; otherwise
            the release's entry in ``KNOWN_RELEASES``, the digest recorded at first download,
            then the published
            ``.sha256`` file.
        opener: opens a URL for reading.
        os_name: Istio's os name (``linux``, ``osx``); defaults to this machine's.
        arch: Istio's arch name (``amd64``, ``arm64``, ``armv7``); defaults to this machine's.

    Raises:
        IstioctlArgumentError: bad version, platform, base URL or ``expected_sha256``.
        IstioctlOverrideError: ``MESHFLOW_ISTIOCTL`` is set but not an executable file.
        IstioctlDownloadError: HTTP error or unreachable server (5xx/429/connection: transient).
        IstioctlChecksumError: the archive's digest differs; nothing is kept.
        IstioctlArchiveError: the archive has no ``istioctl`` or has an unsafe member.
    """
    override = istioctl_override()
    if override is not None:
        return override
    asset = _asset(version, base_url, os_name, arch)
    pinned, known = _expected_sha256(asset, cache_dir, expected_sha256)
    if known and (hit := _cached(cache_dir, version, known)):
        return hit
    sha256 = known or _published_sha256(opener, asset)
    binary = _install_into_cache(opener, asset, sha256, cache_dir)
    record = rel.checksum_record(cache_dir, version, asset.os, asset.arch)
    if not pinned and not record.exists():
        _write_atomically(record, f"{sha256} {asset.archive}\n")
    return binary


def _sealed_memfile(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _secrets_of(kubeconfig_text: str) -> list[str]:
    try:
        access = parse_kubeconfig(kubeconfig_text)
    except KubeconfigError:
        return []
    return [access.token] if access.token else []


def _child_env() -> dict[str, str]:
    # Only the --kubeconfig we pass may be read: no ambient KUBECONFIG.
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}


def run_istioctl_install(
    istioctl: Path,
    *,
    cluster: str,
    kubeconfig_text: str,
    args: list[str],
    files: dict[str, str],
    timeout: float,
) -> InstallResult:
    """Run ``istioctl <args> -f <files>... --kubeconfig <in-memory file>`` against ``cluster``.

    ``files`` maps file names to IstioOperator YAML, passed with ``-f`` in order. Not cached and
    not idempotent by itself: istioctl reconciles, so re-running an unchanged install leaves the
    cluster as it was. Needs whatever RBAC istioctl needs (cluster-admin, in practice).

    Raises:
        IstioctlArgumentError: a file name is not a plain name, no file is given, or ``args``
            carries ``-f``/``--kubeconfig`` itself.
        IstioInstallError: istioctl exited non-zero; ``.result`` holds the redacted output tail.
        IstioInstallTimeout: istioctl did not finish within ``timeout`` seconds (killed).
    """
    names = [rel.validate_file_name(name) for name in files]
    secrets = _secrets_of(kubeconfig_text)
    fd = _sealed_memfile(f"meshflow-kubeconfig-{cluster}", kubeconfig_text.encode())
    workdir = Path(tempfile.mkdtemp(prefix="meshflow-istioctl-"))  # mode 0700
    try:
        for name in names:
            (workdir / name).write_text(files[name])
        # A relative path would be looked up from cwd (the temporary folder): make it absolute.
        exe = os.path.abspath(istioctl) if os.sep in str(istioctl) else str(istioctl)
        argv = rel.install_argv(
            exe, args, [str(workdir / n) for n in names], f"/proc/{os.getpid()}/fd/{fd}"
        )
        return _run(argv, cluster=cluster, timeout=timeout, secrets=secrets, cwd=workdir)
    finally:
        os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _run(
    argv: list[str], *, cluster: str, timeout: float, secrets: list[str], cwd: Path
) -> InstallResult:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_child_env(),
            timeout=timeout,
            check=False,
        )
        output, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = exc.output or b"", -1
        result = _result(cluster, code, output, argv, started, secrets)
        raise IstioInstallTimeout(
            f"istioctl install on cluster {cluster!r} did not finish in {timeout:g}s and was "
            f"stopped; output tail:\n{result.output_tail}",
            result,
        ) from exc
    result = _result(cluster, code, output, argv, started, secrets)
    if code != 0:
        raise IstioInstallError(
            f"istioctl install on cluster {cluster!r} failed (exit {code}); output tail:\n"
            f"{result.output_tail}",
            result,
        )
    return result


def _result(
    cluster: str, code: int, output: bytes, argv: list[str], started: float, secrets: list[str]
) -> InstallResult:
    text = rel.redact(output.decode("utf-8", errors="replace"), secrets)
    return InstallResult(
        cluster=cluster,
        exit_code=code,
        output_tail=rel.tail(text),
        argv=tuple(argv),
        seconds=round(time.monotonic() - started, 3),
    )
