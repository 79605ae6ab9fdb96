"""Where SDK exceptions become meshflow's errors: Azure (Key Vault, ARM, Entra) and Kubernetes.

The one place where HTTP statuses and SDK exception types are looked at
(:func:`meshflow.errors.kind_of_status` maps a status to a kind). What comes out names the system,
the vault or cluster, the object and the service's own error code and message, and carries no
SDK object (see :mod:`meshflow.errors` for why). The SDK error stays attached as ``__cause__``
for the traceback in the run's log; Python does not pickle it.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import urllib3.exceptions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from meshflow.errors import (
    ForbiddenError,
    InvalidError,
    MeshflowError,
    TransientError,
    hint_for_status,
    kind_of_status,
)

_AADSTS = re.compile(r"AADSTS\d+")
_MAX_DETAIL = 300


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _azure_object(exc: HttpResponseError) -> str:
    request = getattr(exc.response, "request", None)
    url = str(getattr(request, "url", "") or "")
    path = urlsplit(url).path
    if "/providers/" in path:  # ARM: Microsoft.X/type/name[/...]
        return path.split("/providers/", 1)[1]
    return path.strip("/")  # Key Vault: secrets/<name>[/<version>]


def _azure_detail(exc: HttpResponseError) -> tuple[str, str]:
    """The service's error code and message (never the request, never the body verbatim)."""
    error = exc.error
    if error is not None:
        return str(error.code or ""), _short(str(error.message or ""))
    text = str(exc.message or exc.reason or "")
    aadsts = _AADSTS.search(text)
    return (aadsts.group() if aadsts else ""), _short(text.split("\nContent:")[0])


def from_azure(
    exc: AzureError, *, system: str, target: str, permission: str = "", credentials: str = ""
) -> MeshflowError:
    """The meshflow error for an Azure SDK exception raised while talking to ``target``.

    Args:
        exc: what the SDK raised.
        system: ``"Key Vault"``, ``"Azure Resource Manager"`` ...
        target: which one, e.g. ``"vault 'mesh-kv'"``.
        permission: the permission a 403 lacks, for the message.
        credentials: the name of the credentials block, named when authentication fails.
    """
    where = f"{system} {target}".strip()
    creds = f" of block {credentials!r}" if credentials else ""
    if isinstance(exc, ClientAuthenticationError):
        code, detail = _azure_detail(exc)
        return ForbiddenError(
            f"{where}: authentication failed ({detail or 'no detail'}); check the tenant, "
            f"client id and client secret{creds} (meshflow env init updates them)",
            system="Entra ID", target=target, status=exc.status_code, code=code,
        )  # fmt: skip
    if isinstance(exc, HttpResponseError) and exc.status_code:
        status = exc.status_code
        code, detail = _azure_detail(exc)
        obj = _azure_object(exc)
        kind = kind_of_status(status)
        hint = hint_for_status(status, permission=permission)
        if status == 401 and creds:
            hint = f"check the credentials{creds}"
        return kind(
            f"{where}: {obj or 'request'} failed with HTTP {status}"
            f"{f' {code}' if code else ''}: {detail or exc.reason}; {hint}",
            system=system, target=target, object=obj, status=status, code=code,
        )  # fmt: skip
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        reason = _connection_reason(exc.inner_exception or exc)
        return TransientError(
            f"{where} is unreachable ({reason}); check its endpoint and the network",
            system=system, target=target,
        )  # fmt: skip
    return MeshflowError(f"{where}: {type(exc).__name__}: {_short(str(exc))}", system=system)


@contextmanager
def azure_errors(
    system: str, target: str, *, permission: str = "", credentials: str = ""
) -> Iterator[None]:
    """Turn Azure SDK exceptions raised inside the block into meshflow errors (see above)."""
    try:
        yield
    except AzureError as exc:
        raise from_azure(
            exc, system=system, target=target, permission=permission, credentials=credentials
        ) from exc


def _connection_reason(exc: BaseException | None) -> str:
    """Why a connection failed ("connection refused", "TLS certificate not trusted" ...)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {exc.verify_message}"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate not trusted"
        if isinstance(exc, ConnectionRefusedError) or "Connection refused" in text:
            return "connection refused"
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
            continue
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "host name does not resolve"
        # urllib3's NewConnectionError is a TimeoutError too: ask the text first (above).
        if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
            return "timed out"
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            return _short(f"{type(exc).__name__}: {text}")
        exc = nxt
    return "connection failed"


def _kube_message(status: int, body: str, reason: str) -> str:
    try:
        parsed = json.loads(body or "{}")
    except ValueError:
        parsed = {}
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return _short(str(message or reason or f"HTTP {status}"))


def kube_status_error(
    status: int, body: str, reason: str, *, cluster: str, method: str, obj: str
) -> MeshflowError:
    """The meshflow error for a non-2xx answer of a Kubernetes API server."""
    kind = kind_of_status(status)
    detail = _kube_message(status, body, reason)
    hint = hint_for_status(status, permission="the RBAC rights this step needs")
    if status == 401:
        hint = "its credentials were rejected; fetch them again (re-run) or check the AKS block"
    return kind(
        f"cluster {cluster!r}: {method} {obj} failed with HTTP {status}: {detail}; {hint}",
        system="Kubernetes", target=cluster, object=obj, status=status,
    )  # fmt: skip


def kube_connection_error(
    exc: BaseException, *, cluster: str, server: str, method: str, obj: str
) -> MeshflowError:
    """The meshflow error for an API server that could not be reached (or not trusted)."""
    reason = _connection_reason(exc)
    if reason.startswith("TLS"):
        return InvalidError(
            f"cluster {cluster!r}: the API server {server} is not trusted ({reason}); check the "
            "CA data of its credentials",
            system="Kubernetes", target=cluster, object=obj,
        )  # fmt: skip
    return TransientError(
        f"cluster {cluster!r}: API server {server} is unreachable ({reason}) during {method} "
        f"{obj}; check that the cluster runs and its AKS block points at it",
        system="Kubernetes", target=cluster, object=obj,
    )  # fmt: skip
