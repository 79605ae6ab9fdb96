"""Istio plug-in CA material for the mesh: issue, serialise, verify, inspect.

Pure functions over ``cryptography`` objects: no files, no network, no
clock (callers pass a timezone-aware ``now``), no global state. Profiles
follow Istio's ``tools/certs`` recipe; see :mod:`meshflow.pki.issuance`.
"""

from meshflow.pki._base import CertKeyPair, PkiError, PrivateKey
from meshflow.pki.encoding import (
    PKCS12_KDF_ROUNDS,
    Pkcs12Contents,
    Pkcs12Encryption,
    cert_chain_pem,
    from_pkcs12,
    load_cert_key_pair,
    load_pem_chain,
    load_private_key,
    pem_bundle,
    sha1_thumbprint_hex,
    sha256_fingerprint,
    to_pkcs12,
    x5t,
)
from meshflow.pki.issuance import (
    CA_KEY_SIZE,
    DEFAULT_BACKDATE,
    ECHOSERVER_HOST,
    INTERMEDIATE_DAYS,
    ISTIOD_SAN,
    LEAF_DAYS,
    LEAF_KEY_SIZE,
    ROOT_DAYS,
    generate_ingress_leaf,
    generate_intermediate_ca,
    generate_root_ca,
    intermediate_ca_subject,
    issue_intermediate_ca,
)
from meshflow.pki.report import BundleReport, inspect_bundle, san_strings, validate_bundle
from meshflow.pki.verify import (
    ChainResult,
    days_left,
    issuer_problem,
    rotation_due,
    signed_by,
    validity_problem,
    verify_chain,
    verify_signed_by,
)

__all__ = [
    "CA_KEY_SIZE",
    "DEFAULT_BACKDATE",
    "ECHOSERVER_HOST",
    "INTERMEDIATE_DAYS",
    "ISTIOD_SAN",
    "LEAF_DAYS",
    "LEAF_KEY_SIZE",
    "PKCS12_KDF_ROUNDS",
    "ROOT_DAYS",
    "BundleReport",
    "CertKeyPair",
    "ChainResult",
    "Pkcs12Contents",
    "Pkcs12Encryption",
    "PkiError",
    "PrivateKey",
    "cert_chain_pem",
    "days_left",
    "from_pkcs12",
    "generate_ingress_leaf",
    "generate_intermediate_ca",
    "generate_root_ca",
    "inspect_bundle",
    "intermediate_ca_subject",
    "issue_intermediate_ca",
    "issuer_problem",
    "load_cert_key_pair",
    "load_pem_chain",
    "load_private_key",
    "pem_bundle",
    "rotation_due",
    "san_strings",
    "sha1_thumbprint_hex",
    "sha256_fingerprint",
    "signed_by",
    "to_pkcs12",
    "validate_bundle",
    "validity_problem",
    "verify_chain",
    "verify_signed_by",
    "x5t",
]
