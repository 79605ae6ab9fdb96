"""Shared names and small builders for the manifest modules. Pure: no SDK, no I/O."""

from __future__ import annotations

from typing import Any

import yaml

Manifest = dict[str, Any]
"""A JSON-ready Kubernetes object: ``apiVersion``, ``kind``, ``metadata`` and the rest."""

ISTIO_NAMESPACE = "istio-system"
INGRESS_NAMESPACE = "istio-ingress"
ECHOSERVER_NAMESPACE = "echoserver"
REVISION_LABEL = "istio.io/rev"
"""Namespace label selecting the sidecar injector of a revision (``istioctl install -r``)."""


def metadata(
    name: str,
    namespace: str | None = None,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An ``ObjectMeta`` with only the fields that are set (so read-back compares stay exact)."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def require(value: str, what: str) -> str:
    """``value`` if it is a non-blank string; ``ValueError`` naming ``what`` otherwise."""
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")
    return value


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line strings (the SPC's ``objects``) as ``|`` blocks, readable like the docs.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(doc: Manifest) -> str:
    """YAML text of ``doc`` in its key order, without anchors or aliases."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)
