"""istioctl releases and command lines as values. Pure: stdlib only, no I/O, no SDK.

What is decided here, and carried out by ``tasks/istio.py``:

- **Which file to fetch.** Istio publishes a standalone istioctl archive per platform next to a
  ``.sha256`` file: ``<base>/<version>/istioctl-<version>-<os>-<arch>.tar.gz`` (+ ``.sha256``),
  whose single member is ``istioctl`` (istio/release-builder ``createStandaloneIstioctl``). The
  ``.sha256`` holds ``<hex> <filename>`` (release-builder writes one space; ``sha256sum`` writes
  two, or `` *`` for binary mode); :func:`parse_sha256_file` accepts all three.
- **Where it is cached.** ``<cache>/istioctl/<version>/<sha256[:16]>/istioctl``: the key is the
  version *and* the archive's checksum, so a re-published or tampered archive never reuses a
  binary verified under another checksum, and two checksums of one version can coexist.
- **Which archive members are acceptable.** Only plain relative names; anything absolute, with a
  ``..`` step, or a device/fifo refuses the whole archive.
- **How istioctl is called and what its output may show.** :func:`install_argv` owns the ``-f``
  and ``--kubeconfig`` flags; :func:`redact` hides token-looking strings before output is logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from meshflow.errors import InvalidError

DEFAULT_BASE_URL = "https://github.com/istio/istio/releases/download"
"""Where Istio publishes releases; an asset is ``<base>/<version>/<file>``."""

SUPPORTED_PLATFORMS = frozenset(
    {("linux", "amd64"), ("linux", "arm64"), ("linux", "armv7"), ("osx", "amd64"), ("osx", "arm64")}
)
"""The ``(os, arch)`` pairs published as ``.tar.gz`` (Windows ships a ``.zip``: not handled)."""


@dataclass(frozen=True)
class IstioRelease:
    """An Istio release meshflow knows: installable, with the archive digests confirmed for it.

    ``sha256`` maps istioctl archive names to their published SHA-256. A platform without an
    entry falls back to the ``.sha256`` file published beside the archive, recorded at the
    first download and required to match ever after (trust on first use).
    """

    version: str
    sha256: Mapping[str, str]

    @property
    def minor(self) -> str:
        """``1.27`` for ``1.27.3``."""
        return ".".join(self.version.split(".")[:2])


KNOWN_RELEASES: Mapping[str, IstioRelease] = {
    # No digest of the linux/osx istioctl archives of 1.27.3 could be confirmed from a source
    # we trust while building this offline; add them from the release's own .sha256 files.
    "1.27.3": IstioRelease("1.27.3", sha256={}),
}
"""The Istio releases a mesh may use. Another version is refused when the mesh is described."""


def known_release(version: str) -> IstioRelease:
    """The :class:`IstioRelease` of ``version``.

    Raises:
        IstioctlArgumentError: meshflow does not know that release (the known ones are listed).
    """
    release = KNOWN_RELEASES.get(version)
    if release is None:
        known = ", ".join(sorted(KNOWN_RELEASES))
        raise IstioctlArgumentError(
            f"Istio {version} is not a release meshflow knows (known: {known}); use one of "
            "those, or add the release with its checksums to meshflow.istioctl.KNOWN_RELEASES"
        )
    return release


CHECKSUM_PREFIX_LEN = 16
"""Hex characters of the archive checksum used as the cache folder name."""

_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64})(?:[ \t]+\*?(\S.*?))?\s*$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_OWNED_FLAGS = frozenset({"-f", "--filename", "-c", "--kubeconfig"})

_SYSTEMS = {"linux": "linux", "darwin": "osx"}
_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armv7",
    "armv7": "armv7",
}


class IstioctlArgumentError(InvalidError):
    """A version, revision, checksum, platform, URL or argument list is not acceptable."""


@dataclass(frozen=True)
class ReleaseAsset:
    """The standalone istioctl archive of one version and platform, and its checksum file."""

    version: str
    os: str
    arch: str
    archive: str
    archive_url: str
    checksum_url: str


def validate_version(version: str) -> str:
    """Return ``version`` if it is ``MAJOR.MINOR.PATCH`` (e.g. ``1.27.3``).

    Raises:
        IstioctlArgumentError: anything else (a ``v`` prefix, a pre-release, a blank).
    """
    if not _VERSION.match(version):
        raise IstioctlArgumentError(
            f"istioctl version {version!r} is not MAJOR.MINOR.PATCH (e.g. 1.27.3)"
        )
    return version


def validate_revision(revision: str) -> str:
    """Return ``revision`` if it is a DNS-1123 label (Istio names ``istiod-<revision>`` after it).

    Raises:
        IstioctlArgumentError: upper case, dots, a leading or trailing ``-``, over 63 characters.
    """
    if not _DNS1123_LABEL.match(revision):
        raise IstioctlArgumentError(
            f"revision {revision!r} is not a DNS-1123 label (lower-case letters, digits, '-'; "
            "e.g. 1-27-3)"
        )
    return revision


def normalize_sha256(value: str) -> str:
    """A SHA-256 hex digest in lower case; a ``sha256:`` prefix is accepted.

    Raises:
        IstioctlArgumentError: not 64 hexadecimal characters.
    """
    digest = value.strip().removeprefix("sha256:")
    if not _HEX64.match(digest):
        raise IstioctlArgumentError(f"{value!r} is not a SHA-256 hex digest (64 hex characters)")
    return digest.lower()


def platform_of(system: str, machine: str) -> tuple[str, str]:
    """Istio's ``(os, arch)`` for ``platform.system()`` and ``platform.machine()`` values.

    Raises:
        IstioctlArgumentError: a platform Istio publishes no ``.tar.gz`` istioctl for.
    """
    os_name = _SYSTEMS.get(system.lower())
    arch = _MACHINES.get(machine.lower())
    if os_name is None or arch is None or (os_name, arch) not in SUPPORTED_PLATFORMS:
        raise IstioctlArgumentError(
            f"no istioctl .tar.gz is published for {system}/{machine}; "
            "set MESHFLOW_ISTIOCTL to an istioctl you provide"
        )
    return os_name, arch


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    plain_http_ok = parts.scheme == "http" and parts.hostname in _LOOPBACK
    if not parts.hostname or not (parts.scheme == "https" or plain_http_ok):
        raise IstioctlArgumentError(
            f"base URL {base_url!r} must be https:// (plain http only on the loopback interface)"
        )
    return base_url.rstrip("/")


def release_asset(
    version: str, *, os: str = "linux", arch: str = "amd64", base_url: str = DEFAULT_BASE_URL
) -> ReleaseAsset:
    """The istioctl archive of ``version`` for ``os``/``arch`` and the URLs to fetch it from.

    Raises:
        IstioctlArgumentError: bad version, unsupported platform, or a non-https base URL.
    """
    validate_version(version)
    if (os, arch) not in SUPPORTED_PLATFORMS:
        supported = ", ".join(f"{o}-{a}" for o, a in sorted(SUPPORTED_PLATFORMS))
        raise IstioctlArgumentError(f"unsupported platform {os}-{arch}; supported: {supported}")
    archive = f"istioctl-{version}-{os}-{arch}.tar.gz"
    url = f"{_check_base_url(base_url)}/{version}/{archive}"
    return ReleaseAsset(version, os, arch, archive, url, f"{url}.sha256")


def parse_sha256_file(text: str, *, filename: str | None = None) -> str:
    """The digest in a ``.sha256`` file, lower case.

    Accepts ``<hex>`` alone, ``<hex> <name>`` (what Istio publishes), ``<hex>  <name>`` and
    ``<hex> *<name>`` (``sha256sum``), one or more lines. With ``filename``, a line naming another
    file is skipped; a line without a name applies to any file.

    Raises:
        IstioctlArgumentError: no line carries a digest (for ``filename``).
    """
    for line in text.splitlines():
        match = _SHA_LINE.match(line.strip())
        if not match:
            continue
        named = match.group(2)
        if filename is None or named is None or PurePosixPath(named).name == filename:
            return match.group(1).lower()
    target = f" for {filename}" if filename else ""
    raise IstioctlArgumentError(f"no SHA-256 digest{target} in the checksum file")


def cache_dir_for(cache_dir: Path, version: str, sha256: str) -> Path:
    """The folder of the istioctl verified under ``sha256``: ``<cache>/istioctl/<v>/<prefix>``."""
    digest = normalize_sha256(sha256)
    return cache_dir / "istioctl" / validate_version(version) / digest[:CHECKSUM_PREFIX_LEN]


def cached_binary(cache_dir: Path, version: str, sha256: str) -> Path:
    """``<cache>/istioctl/<version>/<sha256-prefix>/istioctl``."""
    return cache_dir_for(cache_dir, version, sha256) / "istioctl"


def checksum_record(cache_dir: Path, version: str, os: str, arch: str) -> Path:
    """Where the checksum verified at the first download of a platform's archive is recorded.

    It lets a later run without a pinned checksum find the cached binary with no network I/O.
    """
    return cache_dir / "istioctl" / validate_version(version) / f"{os}-{arch}.sha256"


def unsafe_member_reason(name: str, *, is_file: bool, is_dir: bool, is_link: bool) -> str | None:
    """Why an archive member must not be accepted, or ``None`` if it is harmless.

    Only the ``istioctl`` member is ever written, but an archive holding anything that could
    escape an extraction folder is not what Istio publishes, so it is refused as a whole.
    """
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith("\\"):
        return f"member {name!r} has an absolute path"
    if ".." in path.parts:
        return f"member {name!r} escapes the extraction folder ('..')"
    if not (is_file or is_dir or is_link):
        return f"member {name!r} is a device, fifo or other special file"
    return None


def is_istioctl_member(name: str) -> bool:
    """Whether an archive member is the istioctl binary (``istioctl`` or ``./istioctl``)."""
    return PurePosixPath(name).parts in {("istioctl",), (".", "istioctl")}


def validate_file_name(name: str) -> str:
    """Return ``name`` if it is a plain file name safe to create in a private folder.

    Raises:
        IstioctlArgumentError: a path, a hidden name, or characters other than ``[A-Za-z0-9._-]``.
    """
    if not _FILE_NAME.match(name) or name in {".", ".."}:
        raise IstioctlArgumentError(f"{name!r} is not a plain file name (e.g. 'istiod.yaml')")
    return name


def install_argv(
    istioctl: str, args: Sequence[str], files: Iterable[str], kubeconfig: str
) -> list[str]:
    """``istioctl <args> -f <file>... --kubeconfig <kubeconfig>``.

    Raises:
        IstioctlArgumentError: ``args`` already carries ``-f``/``--filename`` or
            ``-c``/``--kubeconfig`` (those are this function's job), or no file is given.
    """
    owned = [a for a in args if a.split("=", 1)[0] in _OWNED_FLAGS]
    if owned:
        raise IstioctlArgumentError(
            f"pass files and the kubeconfig separately, not as arguments: {owned}"
        )
    argv = [istioctl, *args]
    for path in files:
        argv += ["-f", path]
    if "-f" not in argv[len(args) + 1 :]:
        raise IstioctlArgumentError("an install needs at least one IstioOperator file")
    return [*argv, "--kubeconfig", kubeconfig]


_TOKEN_PATTERNS = (
    # a JSON Web Token (service-account and Entra tokens)
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # an Authorization header value or a kubeconfig/JSON token field
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(r"(?i)(\"?(?:token|client-key-data|password)\"?\s*[:=]\s*\"?)[^\s\",]+"),
    # long hex or base64 runs: static tokens, keys
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"),
)
REDACTED = "[REDACTED]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the given secrets and anything token-shaped replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


def tail(text: str, *, lines: int = 20, chars: int = 4000) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters."""
    kept = "\n".join(text.rstrip().splitlines()[-lines:])
    return kept[-chars:]
