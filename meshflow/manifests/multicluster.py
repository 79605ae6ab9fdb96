"""Remote secrets (step 08), shaped exactly as ``istioctl create-remote-secret`` makes them.

In the *source* cluster: the reader ServiceAccount, its ClusterRole and ClusterRoleBinding (as
the chart of the mesh's Istio minor renders them: ``manifests/charts/istio-control/
istio-discovery/templates/reader-clusterrole.yaml`` and ``reader-clusterrolebinding.yaml``; the
rules per minor in :data:`READER_RULES`) and a long-lived token Secret
(``getOrCreateServiceAccountSecret`` in ``istioctl/pkg/multicluster/remote_secret.go``; since
Kubernetes 1.24 nothing creates it for you). In every *other* cluster: the remote secret
(``createRemoteServiceAccountSecret`` in the same file).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from meshflow.kubeconfig import parse_kubeconfig
from meshflow.manifests._meta import ISTIO_NAMESPACE, Manifest, metadata

READER_SERVICE_ACCOUNT = "istio-reader-service-account"
READER_TOKEN_SECRET = f"{READER_SERVICE_ACCOUNT}-istio-remote-secret-token"
REMOTE_SECRET_PREFIX = "istio-remote-secret-"  # noqa: S105 - a name prefix
MULTICLUSTER_SECRET_LABEL = "istio/multiCluster"  # noqa: S105 - a label key
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshflow"
"""The label value marking the remote secrets meshflow wrote: the only ones it ever deletes."""
"""The label istiod's secret controller watches (``MultiClusterSecretLabel``)."""
CLUSTER_NAME_ANNOTATION = "networking.istio.io/cluster"
"""``clusterNameAnnotationKey`` in ``istioctl/pkg/multicluster``."""
SERVICE_ACCOUNT_NAME_ANNOTATION = "kubernetes.io/service-account.name"
MCS_API_GROUP = "multicluster.x-k8s.io"
_READER_LABELS = {"app": "istio-reader", "app.kubernetes.io/name": "istio-reader"}
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RELEASE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def reader_cluster_role_name(revision: str) -> str:
    """``istio-reader-clusterrole-<rev>-istio-system``: the chart's name with a revision."""
    return f"istio-reader-clusterrole-{revision}-{ISTIO_NAMESPACE}"


def reader_service_account() -> Manifest:
    """Step 08: ServiceAccount ``istio-reader-service-account`` in ``istio-system``.

    ``istioctl install`` renders the same account; applying it again is harmless.
    """
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(READER_SERVICE_ACCOUNT, ISTIO_NAMESPACE, labels=_READER_LABELS),
    }


class ReaderRule(NamedTuple):
    """One ``PolicyRule`` of the reader ClusterRole, spelt and ordered as the chart spells it.

    Order matters: ``rules`` and ``verbs`` are lists, and ``istioctl install`` applies the same
    ClusterRole; meshflow's copy compares equal to istioctl's only if every list is the same.
    """

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def manifest(self) -> dict[str, list[str]]:
        """The rule as a JSON-ready ``PolicyRule`` (fresh lists)."""
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


_READ = ("get", "list", "watch")
_GET_WATCH_LIST = ("get", "watch", "list")  # the chart's order for workloadentries and gateways
_ISTIO_CONFIG = ReaderRule(
    (
        "config.istio.io",
        "security.istio.io",
        "networking.istio.io",
        "authentication.istio.io",
        "rbac.istio.io",
        "telemetry.istio.io",
        "extensions.istio.io",
    ),
    ("*",),
    _READ,
)
_CORE = (
    "endpoints",
    "pods",
    "services",
    "nodes",
    "replicationcontrollers",
    "namespaces",
    "secrets",
)
_AFTER_CORE = (
    ReaderRule(("networking.istio.io",), ("workloadentries",), _GET_WATCH_LIST),
    ReaderRule(
        ("networking.x-k8s.io", "gateway.networking.k8s.io"), ("gateways",), _GET_WATCH_LIST
    ),
    ReaderRule(("apiextensions.k8s.io",), ("customresourcedefinitions",), _READ),
    ReaderRule(("discovery.k8s.io",), ("endpointslices",), _READ),
    ReaderRule((MCS_API_GROUP,), ("serviceexports",), (*_READ, "create", "delete")),
    ReaderRule((MCS_API_GROUP,), ("serviceimports",), _READ),
    ReaderRule(("apps",), ("replicasets",), _READ),
    ReaderRule(("authentication.k8s.io",), ("tokenreviews",), ("create",)),
    ReaderRule(("authorization.k8s.io",), ("subjectaccessreviews",), ("create",)),
)

READER_RULES: Mapping[str, tuple[ReaderRule, ...]] = {
    # Core configmaps are read too (istio/istio#56097); the same in 1.26.0 to 1.26.8.
    "1.26": (_ISTIO_CONFIG, ReaderRule(("",), (*_CORE, "configmaps"), _READ), *_AFTER_CORE),
    # istiod stops reading remote clusters' configmaps (istio/istio#56838); 1.27.0 to 1.27.9.
    "1.27": (_ISTIO_CONFIG, ReaderRule(("",), _CORE, _READ), *_AFTER_CORE),
}
"""The reader ClusterRole's rules per Istio minor, as that release's chart renders them.

``manifests/charts/istio-control/istio-discovery/templates/reader-clusterrole.yaml`` without
``istiodRemote`` and with the default ``MCS_API_GROUP``: what ``istioctl install`` applies for
the profile meshflow uses. ``tests/data/istio/<version>/`` holds each chart's text; the tests
check every table against it.
"""


def istio_minor(istio_version: str) -> str:
    """``"1.27"`` for ``"1.27.3"``: the Istio minor a release belongs to.

    Raises:
        ValueError: ``istio_version`` is not ``MAJOR.MINOR.PATCH``.
    """
    found = _RELEASE.match(istio_version)
    if not found:
        raise ValueError(
            f"Istio version {istio_version!r} is not MAJOR.MINOR.PATCH; give a release such "
            "as 1.27.3"
        )
    return f"{found[1]}.{found[2]}"


def _minor_key(minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in minor.split("."))


def reader_rules(istio_version: str) -> list[dict[str, Any]]:
    """What a remote istiod reads, exactly as ``istio_version``'s chart grants it (fresh dicts).

    Without ``istiodRemote``: read Istio config and the objects service discovery watches
    (endpoint slices, pods, services, nodes, namespaces, secrets for remote credentials; core
    configmaps only before 1.27), create/delete MCS service exports, and create token and
    access reviews. Chosen by the release's minor from :data:`READER_RULES`.

    Raises:
        ValueError: ``istio_version`` is not ``MAJOR.MINOR.PATCH``, or its minor has no table
            (the message lists the minors that have one).
    """
    minor = istio_minor(istio_version)
    table = READER_RULES.get(minor)
    if table is None:
        supported = ", ".join(sorted(READER_RULES, key=_minor_key))
        raise ValueError(
            f"Istio {istio_version}: meshflow has no reader rules for Istio {minor} (it has "
            f"them for {supported}); use a release of those, or add the {minor} table to "
            "meshflow.manifests.multicluster.READER_RULES from that release's "
            "reader-clusterrole.yaml"
        )
    return [rule.manifest() for rule in table]


def reader_cluster_role(revision: str, istio_version: str) -> Manifest:
    """Step 08: ClusterRole ``istio-reader-clusterrole-<rev>-istio-system`` of ``istio_version``.

    Its rules are :func:`reader_rules` of that release: the object ``istioctl install`` of that
    release applies too (same name and rules, labels a subset of the chart's), so where istioctl
    applied it first, meshflow's apply finds it already satisfied and writes nothing.

    Raises:
        ValueError: see :func:`reader_rules`.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": metadata(reader_cluster_role_name(revision), labels=_READER_LABELS),
        "rules": reader_rules(istio_version),
    }


def reader_cluster_role_binding(revision: str) -> Manifest:
    """Step 08: binds the reader ClusterRole (same name) to the reader ServiceAccount."""
    name = reader_cluster_role_name(revision)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": metadata(name, labels=_READER_LABELS),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": READER_SERVICE_ACCOUNT, "namespace": ISTIO_NAMESPACE}
        ],
    }


def reader_token_secret() -> Manifest:
    """Step 08: the reader's long-lived token, filled in by the token controller.

    Same name, type and annotation as istioctl's; the controller adds ``token`` and ``ca.crt``.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            READER_TOKEN_SECRET,
            ISTIO_NAMESPACE,
            annotations={SERVICE_ACCOUNT_NAME_ANNOTATION: READER_SERVICE_ACCOUNT},
        ),
        "type": "kubernetes.io/service-account-token",
    }


def remote_secret_name(source_cluster: str) -> str:
    """``istio-remote-secret-<source>``."""
    return REMOTE_SECRET_PREFIX + source_cluster


def remote_secret(*, source_cluster: str, kubeconfig: str) -> Manifest:
    """Step 08: the secret that lets every other cluster's istiod read ``source_cluster``.

    One ``data`` key, ``source_cluster`` (its ``clusterName``), holding ``kubeconfig`` (build it
    with :func:`meshflow.kubeconfig.token_kubeconfig`). istioctl prints ``stringData`` for
    review; the API server stores it as ``data``, which is written here directly so that a
    read-back compares equal.

    Raises:
        ValueError: ``source_cluster`` is not a DNS-1123 label (it names the Secret, istioctl
            checks the same), or ``kubeconfig`` does not authenticate with a token (istiod
            rejects exec, auth-provider and client-key kubeconfigs by default).
    """
    if not _DNS1123_LABEL.match(source_cluster) or len(source_cluster) > 63:
        raise ValueError(f"cluster name {source_cluster!r} is not a DNS-1123 label")
    access = parse_kubeconfig(kubeconfig)
    if access.auth != "token":
        raise ValueError(
            f"remote secret for {source_cluster!r}: the kubeconfig uses {access.auth}, "
            "istiod accepts token kubeconfigs only; use the reader service account's token"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            remote_secret_name(source_cluster),
            ISTIO_NAMESPACE,
            labels={MULTICLUSTER_SECRET_LABEL: "true", MANAGED_BY_LABEL: MANAGED_BY},
            annotations={CLUSTER_NAME_ANNOTATION: source_cluster},
        ),
        "type": "Opaque",
        "data": {source_cluster: base64.b64encode(kubeconfig.encode()).decode()},
    }


def managed_remote_secret_selector() -> str:
    """The label selector of the remote secrets meshflow manages."""
    return f"{MULTICLUSTER_SECRET_LABEL}=true,{MANAGED_BY_LABEL}={MANAGED_BY}"


def departed_sources(secret_names: list[str], members: set[str]) -> list[str]:
    """The remote secrets among ``secret_names`` whose source is no longer a mesh member."""
    prefix = REMOTE_SECRET_PREFIX
    return sorted(
        n for n in secret_names if n.startswith(prefix) and n.removeprefix(prefix) not in members
    )


# -- Reader-token rotation ---------------------------------------------------------------------

READER_INTERIM_TOKEN_SECRET = f"{READER_TOKEN_SECRET}-interim"
"""The reader token Secret that carries the remote secrets while istioctl's name gets a new one."""
READER_TOKEN_GENERATION_LABEL = "meshflow.io/reader-token-generation"  # noqa: S105 - a label key
"""Which rotation made a reader token Secret: 1, 2, ...; absent (0) on the one install makes."""


class ReaderTokenSecret(NamedTuple):
    """A reader token Secret in a source cluster, by name and generation; never its token."""

    name: str
    generation: int

    def describe(self) -> str:
        """``<name> (generation <n>)``, as reports show it."""
        return f"{self.name} (generation {self.generation})"


def rotated_reader_token_secret(token: ReaderTokenSecret) -> Manifest:
    """The reader token Secret a rotation creates: :func:`reader_token_secret` as ``token``.

    Same type and annotation (the token controller fills it the same way), named
    ``token.name`` and labelled with its generation and ``managed-by: meshflow``. A later
    install's apply of :func:`reader_token_secret` finds it satisfied: labels it does not ask
    for are no difference.

    Raises:
        ValueError: ``token.name`` is neither istioctl's name nor the interim one, or its
            generation is below 1 (generation 0 is the Secret install makes).
    """
    if token.name not in (READER_TOKEN_SECRET, READER_INTERIM_TOKEN_SECRET):
        raise ValueError(
            f"{token.name!r} is not a reader token Secret meshflow rotates (those are "
            f"{READER_TOKEN_SECRET} and {READER_INTERIM_TOKEN_SECRET})"
        )
    if token.generation < 1:
        raise ValueError(f"{token.describe()}: a rotation's generations start at 1")
    secret = reader_token_secret()
    secret["metadata"]["name"] = token.name
    secret["metadata"]["labels"] = {
        MANAGED_BY_LABEL: MANAGED_BY,
        READER_TOKEN_GENERATION_LABEL: str(token.generation),
    }
    return secret


def reader_token_generation(secret: Mapping[str, Any]) -> int:
    """The generation of a live reader token Secret: its label, or 0 without a usable one."""
    labels = (secret.get("metadata") or {}).get("labels") or {}
    value = str(labels.get(READER_TOKEN_GENERATION_LABEL, ""))
    return int(value) if value.isdigit() else 0


class TokenHop(NamedTuple):
    """One step of a rotation: ``new`` gets a token and every remote secret, then ``old`` goes.

    ``old`` is None where it is gone already (an earlier run deleted it).
    """

    old: ReaderTokenSecret | None
    new: ReaderTokenSecret


def reader_token_hops(present: Mapping[str, int]) -> list[TokenHop]:
    """The steps that rotate a source's reader token, from the token Secrets it has now.

    ``present`` maps the reader token Secrets the source has (of istioctl's name and the
    interim one; others are ignored) to their generations. A rotation ends where it started,
    under istioctl's name, so that install (which applies :func:`reader_token_secret` and
    exchanges its token) and ``istioctl create-remote-secret`` keep using the current token:
    first to the interim Secret (generation n+1), then to a new Secret of istioctl's name
    (n+2). Each step deletes its old Secret only after every remote secret holds the new one.

    An interim Secret present means an earlier rotation stopped; its steps are finished, not
    begun again: where istioctl's name is newer than the interim Secret, only the step back to
    it is left; otherwise the interim Secret is reused for the first step (and istioctl's
    name, if an install recreated it meanwhile, is the old one). Pure.

    Raises:
        ValueError: the source has neither Secret (install the mesh first).
    """
    stable = present.get(READER_TOKEN_SECRET)
    interim = present.get(READER_INTERIM_TOKEN_SECRET)
    if interim is None:
        if stable is None:
            raise ValueError(
                f"no {READER_TOKEN_SECRET} to rotate; install the mesh first (`meshflow install`)"
            )
        via = ReaderTokenSecret(READER_INTERIM_TOKEN_SECRET, stable + 1)
        return [
            TokenHop(ReaderTokenSecret(READER_TOKEN_SECRET, stable), via),
            TokenHop(via, ReaderTokenSecret(READER_TOKEN_SECRET, stable + 2)),
        ]
    via = ReaderTokenSecret(READER_INTERIM_TOKEN_SECRET, interim)
    if stable is not None and stable > interim:  # made after the first step had ended
        return [TokenHop(via, ReaderTokenSecret(READER_TOKEN_SECRET, stable))]
    old = None if stable is None else ReaderTokenSecret(READER_TOKEN_SECRET, stable)
    return [TokenHop(old, via), TokenHop(via, ReaderTokenSecret(READER_TOKEN_SECRET, interim + 1))]
