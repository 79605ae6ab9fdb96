"""Check who signed a certificate, walk chains to a trusted root, and time rotation.

:func:`verify_chain` walks the chain itself so it can name the first
failure precisely (wrong root, expired link, pathlen exceeded, ...), then
asks ``cryptography.x509.verification`` for a second, independent RFC 5280
verdict. The library's client/server verifiers insist the leaf is an
end-entity certificate, so the leaf's own extensions are left to our walk
(``ExtensionPolicy.permit_all()``) while CA links keep the library defaults;
that way intermediate CAs can be checked too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509 import verification

from meshflow.pki._base import (
    PkiError,
    basic_constraints,
    checked_now,
    describe,
    is_ca,
    is_self_signed,
    key_usage,
    signature_problem,
)

# Longest chain we walk (leaf + intermediates + root); real meshes use 2-3.
MAX_CHAIN_LENGTH = 8


@dataclass(frozen=True)
class ChainResult:
    """Outcome of :func:`verify_chain`.

    Attributes:
        ok: True when the chain verifies to one of the trusted roots.
        error: The first failure in plain words, or None.
        path: The certificates walked, leaf first (up to the failure).
    """

    ok: bool
    error: str | None
    path: tuple[x509.Certificate, ...]


def issuer_problem(child: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Return why ``issuer`` is not a valid direct issuer of ``child``, or None if it is.

    Checks the issuer name, the signature, CA:true and keyCertSign; not
    validity periods or path lengths (see :func:`verify_chain`).

    Args:
        child: The issued certificate.
        issuer: The candidate issuing CA.

    Returns:
        A plain-words reason, or None.
    """
    if child.issuer != issuer.subject:
        return (
            f"{describe(child)!r} names issuer {child.issuer.rfc4514_string()!r}, "
            f"not {describe(issuer)!r}"
        )
    if signature_problem(child, issuer) is not None:
        return (
            f"the signature on {describe(child)!r} does not verify with the key of "
            f"{describe(issuer)!r}{_key_id_hint(child, issuer)}: it was signed by a different "
            "key (another CA with the same name?)"
        )
    if not is_ca(issuer):
        return f"{describe(issuer)!r} is not a CA (no basicConstraints CA:true)"
    usage = key_usage(issuer)
    if usage is not None and not usage.key_cert_sign:
        return f"{describe(issuer)!r} has keyUsage without keyCertSign"
    return None


def verify_signed_by(child: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check that ``issuer`` is a CA that directly signed ``child``.

    Args:
        child: The issued certificate.
        issuer: The expected issuing CA.

    Raises:
        PkiError: Names differ, the signature does not verify, or ``issuer``
            is not a certificate-signing CA.
    """
    problem = issuer_problem(child, issuer)
    if problem is not None:
        raise PkiError(f"{problem}; reissue the certificate from the intended CA")


def signed_by(child: x509.Certificate, root: x509.Certificate) -> bool:
    """Return True when ``root`` (or any CA) directly signed ``child``; see verify_signed_by."""
    return issuer_problem(child, root) is None


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> ChainResult:
    """Verify ``leaf`` up to one of ``roots`` at time ``now``.

    ``leaf`` may be an end-entity or a CA certificate (e.g. an intermediate
    checked against its root). ``intermediates`` may contain extra or
    repeated certificates, including the root itself as in ``cert-chain.pem``.

    Args:
        leaf: The certificate to verify.
        intermediates: Untrusted certificates available to build the path.
        roots: Trusted root certificates.
        now: Time of verification, timezone-aware.

    Returns:
        The verdict, the first failure in plain words, and the path walked.
    """
    now = checked_now(now)
    path = [leaf]
    if not roots:
        return ChainResult(False, "no trusted root was given; pass the root certificate", (leaf,))
    error = _walk(path, intermediates, roots, now)
    if error is None:
        error = _library_problem(leaf, intermediates, roots, now)
    return ChainResult(error is None, error, tuple(path))


def days_left(cert: x509.Certificate, *, now: datetime) -> int:
    """Return whole days until notAfter (floored; negative once expired)."""
    return (cert.not_valid_after_utc - checked_now(now)) // timedelta(days=1)


def rotation_due(cert: x509.Certificate, *, now: datetime, threshold_days: int) -> bool:
    """Return True when ``threshold_days`` or less of validity remain (or it expired).

    Args:
        cert: The certificate to check, e.g. a cluster's intermediate CA.
        now: Current time, timezone-aware.
        threshold_days: Reissue when this many days or fewer remain.

    Returns:
        Whether the certificate should be reissued now.

    Raises:
        PkiError: ``threshold_days`` is negative.
    """
    if threshold_days < 0:
        raise PkiError(f"threshold_days must be 0 or more; got {threshold_days}")
    remaining = cert.not_valid_after_utc - checked_now(now)
    return remaining <= timedelta(days=threshold_days)


def validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    """Return "expired"/"not yet valid" wording for ``cert`` at ``now``, or None if valid."""
    now = checked_now(now)
    if now < cert.not_valid_before_utc:
        return (
            f"{describe(cert)!r} is not yet valid (notBefore {_when(cert.not_valid_before_utc)}, "
            f"now {_when(now)}); check the clock or wait"
        )
    if now > cert.not_valid_after_utc:
        return f"{describe(cert)!r} expired at {_when(cert.not_valid_after_utc)}; reissue it"
    return None


def _walk(
    path: list[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> str | None:
    # Builds `path` in place so the caller can report how far it got.
    pool: list[x509.Certificate] = []
    for cert in intermediates:
        if cert not in roots and cert not in path and cert not in pool:
            pool.append(cert)
    current = path[0]
    while True:
        problem = validity_problem(current, now)
        if problem is not None:
            return problem
        if current in roots:
            return None
        if is_self_signed(current):
            return (
                f"the chain ends at self-signed {describe(current)!r} which is not a trusted "
                "root (a different root with this name?); verify against the root that issued it"
            )
        if len(path) >= MAX_CHAIN_LENGTH:
            return f"no trusted root within {MAX_CHAIN_LENGTH} certificates"
        issuer, problem = _find_issuer(current, [*roots, *pool])
        if issuer is None:
            return problem
        problem = _path_length_problem(issuer, path)
        if problem is not None:
            return problem
        path.append(issuer)
        if issuer in pool:
            pool.remove(issuer)
        current = issuer


def _find_issuer(
    child: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> tuple[x509.Certificate | None, str]:
    named = [cert for cert in candidates if cert.subject == child.issuer]
    if not named:
        return None, (
            f"no certificate in the chain or trusted roots is named "
            f"{child.issuer.rfc4514_string()!r}, the issuer of {describe(child)!r}; "
            "include the issuing CA in the chain or trust its root"
        )
    problems = []
    for candidate in named:
        problem = issuer_problem(child, candidate)
        if problem is None:
            return candidate, ""
        problems.append(problem)
    return None, "; ".join(problems)


def _path_length_problem(issuer: x509.Certificate, path: Sequence[x509.Certificate]) -> str | None:
    # pathlen counts the non-self-issued CA certificates between the issuer
    # and the leaf (RFC 5280 4.2.1.9); the leaf itself does not count.
    constraints = basic_constraints(issuer)
    if constraints is None or constraints.path_length is None:
        return None
    below = sum(1 for cert in path[1:] if cert.subject != cert.issuer)
    if below <= constraints.path_length:
        return None
    return (
        f"path length constraint violated: {describe(issuer)!r} has pathlen:"
        f"{constraints.path_length} but {below} CA certificate(s) sit below it; "
        "sign end-entity certificates directly with that CA"
    )


def _library_problem(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> str | None:
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(roots)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_LENGTH)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        return f"cryptography's RFC 5280 verifier rejected it: {exc}"
    return None


def _key_id_hint(child: x509.Certificate, issuer: x509.Certificate) -> str:
    # Key identifiers are public; showing both makes "wrong root" obvious.
    try:
        aki = child.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    if aki.key_identifier is None or aki.key_identifier == ski.digest:
        return ""
    return (
        f" (its authority key id is {aki.key_identifier.hex(':')}, "
        f"the issuer's subject key id is {ski.digest.hex(':')})"
    )


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"
