"""meshflow's errors: one small family, raised at the boundary to each external system.

Every error meshflow raises on purpose is a :class:`MeshflowError` whose message says what
failed, on which cluster, vault or object, and what to do. The kind decides what happens next:

- :class:`TransientError` (throttling, an outage, a refused connection) and
  :class:`ConflictError` (someone else wrote the same object between our read and our write)
  are retried: every meshflow task is idempotent, so running it again re-reads and decides anew.
- :class:`NotFoundError`, :class:`ForbiddenError` (authentication or permission) and
  :class:`InvalidError` (bad input, an object the server rejects) fail at once: retrying only
  delays the message the user needs.

An error holds strings and integers only, never an SDK request or response, a credential or key
material: Prefect persists a failed run's exception (see ``docs/secrets.md``), and an SDK
exception carries its request with the ``Authorization`` header and the body. Errors are
raised ``from`` the SDK error, which Python keeps in memory for the log's traceback but does
not pickle.
"""

from __future__ import annotations


class MeshflowError(Exception):
    """An error meshflow raises on purpose; permanent unless a subclass says otherwise.

    Attributes:
        system: the external system, e.g. ``"Key Vault"``, ``"Kubernetes"``.
        target: which one: a vault, a cluster, an ARM resource.
        object: the object the failed call was about, if any.
        status: the HTTP status, if the failure was an HTTP answer.
        code: the service's error code (``SecretNotFound``, ``AADSTS7000215`` ...), if any.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        system: str = "",
        target: str = "",
        object: str = "",
        status: int | None = None,
        code: str = "",
    ) -> None:
        # Only the message goes to Exception.args: pickling calls cls(*args) then restores
        # __dict__, so the keyword fields survive a round trip through Prefect's storage.
        super().__init__(message)
        self.system = system
        self.target = target
        self.object = object
        self.status = status
        self.code = code

    @property
    def message(self) -> str:
        """The message, as shown to the user."""
        return str(self.args[0]) if self.args else ""


class TransientError(MeshflowError):
    """Throttled, unavailable or unreachable: worth another attempt later."""

    retryable = True


class ConflictError(MeshflowError):
    """The object changed between our read and our write: re-read and decide again."""

    retryable = True


class NotFoundError(MeshflowError):
    """What the call needed does not exist."""


class ForbiddenError(MeshflowError):
    """Authentication failed (401) or the identity may not do this (403)."""


class InvalidError(MeshflowError, ValueError):
    """Bad input, or an object the service refused (400, 422): fix the input, then re-run."""


def kind_of_status(status: int) -> type[MeshflowError]:
    """The error kind for an HTTP error status (the one place where integers decide)."""
    if status in (401, 403):
        return ForbiddenError
    if status == 404:
        return NotFoundError
    if status in (409, 412):
        return ConflictError
    if status in (408, 429) or status >= 500:
        return TransientError
    if 400 <= status < 500:
        return InvalidError
    return MeshflowError


def hint_for_status(status: int, *, permission: str = "") -> str:
    """What the user can do about an HTTP error status, as the end of a message."""
    if status == 401:
        return "check the credentials (tenant, client id and secret) of the credentials block"
    if status == 403:
        needed = f" {permission}" if permission else " the permission this step needs"
        return f"give the flow's identity{needed}"
    if status == 404:
        return "check the name, and that it exists"
    if status in (409, 412):
        return "another writer changed it at the same time; the step is retried"
    if status in (408, 429) or status >= 500:
        return "the service is busy or unavailable; the step is retried, then re-run the flow"
    return "fix the request (see the message above)"
