"""Transient failures are retried, permanent ones fail at once; kinds are given at the boundary."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.core.pipeline.transport import HttpRequest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, NewConnectionError

from meshflow.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    MeshflowError,
    NotFoundError,
    TransientError,
)
from tasks.blocking import at_boundary
from tasks.retry import is_transient
from tasks.sdk_errors import from_azure, kube_connection_error, kube_status_error

SECRET = "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2ln"
BODY = b'{"value": "-----BEGIN PRIVATE KEY-----\\nMIIE...\\n-----END PRIVATE KEY-----"}'


class _Response:
    """What HttpResponseError reads of a transport response (status, reason, body, request)."""

    def __init__(self, status: int, body: bytes, request: HttpRequest) -> None:
        self.status_code, self.reason, self.request = status, "Reason", request
        self.content_type = "application/json"
        self._body = body

    def text(self, encoding: str | None = None) -> str:
        return self._body.decode()


def _azure(status: int, code: str = "SomeCode", path: str = "/secrets/root-cert") -> Any:
    request = HttpRequest("PUT", f"https://kv.example{path}?api-version=7.5", data=BODY)
    request.headers["Authorization"] = SECRET
    body = f'{{"error": {{"code": "{code}", "message": "Service says {status}."}}}}'.encode()
    return HttpResponseError(response=_Response(status, body, request))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, TransientError),
        (500, TransientError),
        (503, TransientError),
        (408, TransientError),
        (400, InvalidError),
        (401, ForbiddenError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (409, ConflictError),
        (412, ConflictError),
        (422, InvalidError),
    ],
)
def test_azure_statuses_get_their_kind_and_the_retry_follows_it(
    status: int, kind: type[MeshflowError]
) -> None:
    error = from_azure(_azure(status), system="Key Vault", target="'mesh-kv'")
    assert type(error) is kind
    assert is_transient(error) is kind.retryable
    assert error.status == status
    assert error.code == "SomeCode"
    assert error.object == "secrets/root-cert"
    assert str(error).startswith("Key Vault 'mesh-kv': secrets/root-cert failed with HTTP")
    assert f"Service says {status}." in str(error)


def test_the_translated_error_holds_no_request_and_pickles_without_it() -> None:
    try:
        try:
            raise _azure(503)
        except HttpResponseError as sdk:
            raise from_azure(sdk, system="Key Vault", target="'kv'") from sdk
    except MeshflowError as exc:
        error = exc
    assert error.__cause__ is not None  # kept for the log's traceback, in memory only
    blob = pickle.dumps(error)
    for secret in (b"eyJ0eXAi", b"PRIVATE KEY", b"Authorization", b"HttpRequest"):
        assert secret not in blob
    back = pickle.loads(blob)  # noqa: S301 - our own bytes
    assert type(back) is TransientError
    assert str(back) == str(error)
    assert back.status == 503
    assert back.__cause__ is None


def test_entra_failures_name_the_credentials_block() -> None:
    request = HttpRequest("POST", "https://login.example/tenant/oauth2/v2.0/token")
    body = b'{"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}'  # noqa: E501
    sdk = ClientAuthenticationError(
        message="ClientSecretCredential.get_token failed: AADSTS7000215: Invalid client secret",
        response=_Response(401, body, request),
    )
    error = from_azure(sdk, system="Key Vault", target="'kv'", credentials="dev")
    assert type(error) is ForbiddenError
    assert not is_transient(error)
    assert "AADSTS7000215" in str(error)
    assert "of block 'dev'" in str(error)


def test_an_unreachable_service_is_transient_and_says_why() -> None:
    inner = NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"
    )  # type: ignore[arg-type]
    sdk = ServiceRequestError("connection failed", error=MaxRetryError(None, "/", inner))  # type: ignore[arg-type]
    error = from_azure(sdk, system="Key Vault", target="'kv'")
    assert type(error) is TransientError
    assert "'kv' is unreachable (connection refused)" in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(409, ConflictError), (422, InvalidError), (503, TransientError), (403, ForbiddenError)],
)
def test_kube_statuses_get_their_kind(status: int, kind: type[MeshflowError]) -> None:
    body = '{"kind": "Status", "message": "secrets \\"x\\" is forbidden: nope"}'
    error = kube_status_error(
        status, body, "Reason", cluster="c1", method="PATCH", obj="Secret a/b"
    )
    assert type(error) is kind
    assert is_transient(error) is kind.retryable
    assert str(error).startswith(f"cluster 'c1': PATCH Secret a/b failed with HTTP {status}: ")


def test_an_unreachable_api_server_is_named_by_cluster_not_port() -> None:
    inner = NewConnectionError(None, "[Errno 111] Connection refused")  # type: ignore[arg-type]
    exc = MaxRetryError(None, "/api/v1/namespaces", inner)  # type: ignore[arg-type]
    error = kube_connection_error(
        exc, cluster="cluster-2", server="https://127.0.0.1:58201", method="GET", obj="Namespace"
    )
    assert type(error) is TransientError
    assert "cluster 'cluster-2'" in str(error)
    assert "connection refused" in str(error)
    assert "MaxRetryError" not in str(error)


def test_the_task_boundary_lets_only_meshflow_errors_out() -> None:
    def leaky() -> None:
        raise _azure(500)

    def bug() -> None:
        raise KeyError(f"token {SECRET}")

    def own() -> None:
        raise NotFoundError("absent")

    with pytest.raises(TransientError):
        at_boundary(leaky)
    with pytest.raises(MeshflowError, match="unexpected KeyError") as raised:
        at_boundary(bug)
    assert "eyJ0eXAi" not in str(raised.value)
    with pytest.raises(NotFoundError, match="absent"):
        at_boundary(own)


def test_a_kubernetes_error_that_escaped_its_boundary_leaves_without_its_response() -> None:
    # tasks.kube_client translates every Kubernetes failure; one that slipped past it (a bug)
    # still leaves the task as meshflow's error, not as the SDK's with its HTTP response.
    def escaped() -> None:
        raise ApiException(status=500, reason=f"token {SECRET}")

    with pytest.raises(MeshflowError, match=r"^Kubernetes: ApiException$") as raised:
        at_boundary(escaped)
    assert raised.value.system == "Kubernetes"
    assert "eyJ0eXAi" not in str(raised.value)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TransientError("x"), True),
        (ConflictError("x"), True),
        (InvalidError("x"), False),
        (ValueError("bad input"), False),
        (RuntimeError("a bug"), False),
        (ConnectionResetError(), False),  # only what a boundary classified is retried
    ],
)
def test_only_classified_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
    outer = RuntimeError("wrapped")
    outer.__cause__ = exc
    assert is_transient(outer) is transient
