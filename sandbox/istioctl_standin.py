"""A stand-in for ``istioctl install`` in the sandbox: writes objects, runs nothing. NOT Istio.

The sandbox cannot download istioctl (no internet) and its control planes have no nodes, so no
Istio pod could run anyway. This command accepts the arguments meshflow passes to the real
istioctl, checks them as strictly as the real one does for that usage, and writes only the
objects later steps read, rendered the way Istio's charts render them:

- ``istio-system``: Deployment and Service ``istiod-<rev>``, ConfigMap ``istio-<rev>`` (mesh
  config) and ConfigMap ``values-<rev>`` (the merged values: meshID, clusterName, network);
- for each enabled ingress gateway component (e.g. ``ingressgateway`` in ``istio-ingress``): its
  Deployment and Service;
- the ServiceAccount of each Deployment (``istiod-<rev>``, ``<gateway>-service-account``), as the
  charts do: without it the ReplicaSet controller retries pod creation forever, a stream of
  writes that would hide whether a re-run wrote anything. Pods are created and stay Pending.

Component ``k8s`` settings and ``overlays`` patches (``a.b.[name:x].c``, ``[N]``, ``[value]``)
are applied as the operator applies them, so e.g. the ``cacerts`` CSI volume overlay shows up in
the pod template. Writes are idempotent: each object is read first and written only when absent
or different (a hash of the rendered object is kept in an annotation), so a re-run with the same
input makes no write. Every run prints ``meshflow sandbox istioctl stand-in — NOT Istio``.

Usage errors exit 64; cluster-side failures (missing namespace, API errors) exit 1.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshflow import istioctl as rel
from meshflow import yamlio
from meshflow.kubeconfig import ClusterAccess, KubeconfigError, parse_kubeconfig

LABEL = "meshflow sandbox istioctl stand-in — NOT Istio"
PREFIX = "[meshflow stand-in, NOT Istio]"
EMULATED_VERSION = "1.27.3"
EXIT_USAGE = 64
EXIT_FAILED = 1
HASH_ANNOTATION = "sandbox.meshflow.io/istioctl-standin-hash"
DEFAULT_HUB = "docker.io/istio"
REQUIRED_CRDS = ("gateways.networking.istio.io", "virtualservices.networking.istio.io")

_SPEC_KEYS = frozenset(
    {
        "profile", "installPackagePath", "namespace", "hub", "tag", "resourceSuffix", "revision",
        "compatibilityVersion", "meshConfig", "components", "values", "unvalidatedValues",
    }
)  # fmt: skip
_K8S_APPLIED = frozenset(
    {"affinity", "env", "nodeSelector", "tolerations", "resources", "replicaCount",
     "podAnnotations", "overlays", "service", "volumes", "volumeMounts"}
)  # fmt: skip
_K8S_IGNORED = frozenset(
    {"hpaSpec", "imagePullPolicy", "podDisruptionBudget", "priorityClassName", "readinessProbe",
     "strategy", "serviceAnnotations", "securityContext"}
)  # fmt: skip
_UNSUPPORTED_COMPONENTS = ("egressGateways", "cni", "ztunnel", "istiodRemote")
_TAG = re.compile(r"^\d+\.\d+\.\d+([-.+][0-9A-Za-z.-]+)?$")


class UsageError(Exception):
    """Arguments or files the real istioctl would reject for our usage (exit 64)."""


class InstallFailed(Exception):
    """The cluster refused the install (exit 1)."""


def say(line: str) -> None:
    """Print one line of the summary, labelled."""
    sys.stdout.write(f"{PREFIX} {line}\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- arguments


@dataclass
class InstallRequest:
    """What ``istioctl install ...`` was asked to do."""

    yes: bool = False
    revision: str | None = None
    sets: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    kubeconfig: Path | None = None
    context: str | None = None


_VALUE_FLAGS = {
    "--set": "set", "-s": "set", "--revision": "revision", "-r": "revision",
    "--filename": "file", "-f": "file", "--kubeconfig": "kubeconfig", "-c": "kubeconfig",
    "--context": "context",
}  # fmt: skip


def _split_flags(argv: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if name in {"-y", "--skip-confirmation"} and not eq:
            yield "yes", None
        elif name in _VALUE_FLAGS:
            if eq:
                yield _VALUE_FLAGS[name], inline
            elif args and not args[0].startswith("-"):
                yield _VALUE_FLAGS[name], args.pop(0)
            else:
                raise UsageError(f"flag needs an argument: {name}")
        else:
            what = "flag" if arg.startswith("-") else "argument"
            raise UsageError(f"unknown {what} {arg!r} (the stand-in implements meshflow's usage)")


def _set_revision(req: InstallRequest, revision: str) -> None:
    # --revision X is --set revision=X for istioctl; two different values cannot both win.
    if req.revision is not None and req.revision != revision:
        raise UsageError(f"two revisions given: {req.revision!r} and {revision!r}")
    req.revision = revision


def parse_install_args(argv: Sequence[str]) -> InstallRequest:
    """Parse the arguments after ``install``.

    Raises:
        UsageError: unknown flag, flag without value, missing ``-y``, ``-f`` or ``--kubeconfig``.
    """
    req = InstallRequest()
    for kind, value in _split_flags(argv):
        if kind == "yes":
            req.yes = True
        elif kind == "set":
            key, eq, val = (value or "").partition("=")
            if not eq or not key:
                raise UsageError(f"--set {value!r}: expected key=value")
            if key in {"revision", "spec.revision"}:
                _set_revision(req, val)
            else:
                req.sets.append((key, val))
        elif kind == "revision":
            _set_revision(req, value or "")
        elif kind == "file":
            req.files.append(Path(value or ""))
        elif kind == "kubeconfig":
            req.kubeconfig = Path(value or "")
        else:
            req.context = value
    if not req.yes:
        raise UsageError("-y/--skip-confirmation is required: the stand-in never prompts")
    if not req.files:
        raise UsageError("at least one -f <IstioOperator file> is required")
    if req.kubeconfig is None:
        raise UsageError("--kubeconfig is required: the stand-in reads no ambient kubeconfig")
    return req


# ---------------------------------------------------------------- IstioOperator


def _merge(base: Any, over: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v, k) if k in base else copy.deepcopy(v)
        return out
    if key.endswith("Gateways") and isinstance(base, list) and isinstance(over, list):
        merged = {g.get("name"): g for g in base if isinstance(g, dict)}
        for g in over:
            name = g.get("name") if isinstance(g, dict) else None
            merged[name] = _merge(merged.get(name, {}), g)
        return list(merged.values())
    return copy.deepcopy(over)


@dataclass(frozen=True)
class Operator:
    """An IstioOperator: its name (the ``owning-resource`` label) and effective spec."""

    name: str
    spec: dict[str, Any]


def load_operator_file(path: Path) -> Operator:
    """One IstioOperator file.

    Raises:
        UsageError: missing, unreadable, not YAML, not an IstioOperator, or unknown spec fields.
    """
    try:
        doc = yamlio.load(path.read_text())
    except OSError as exc:
        raise UsageError(f"-f {path}: cannot read file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"-f {path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise UsageError(f"-f {path}: not a YAML mapping")
    if doc.get("apiVersion") != "install.istio.io/v1alpha1" or doc.get("kind") != "IstioOperator":
        raise UsageError(
            f"-f {path}: expected apiVersion install.istio.io/v1alpha1, kind IstioOperator "
            f"(got {doc.get('apiVersion')!r}, {doc.get('kind')!r})"
        )
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise UsageError(f"-f {path}: spec is not a mapping")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise UsageError(f"-f {path}: unknown field(s) in IstioOperator spec: {unknown}")
    return Operator(str((doc.get("metadata") or {}).get("name") or ""), spec)


def _scalar(text: str) -> Any:
    if text in {"true", "false"}:
        return text == "true"
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _set_path(spec: dict[str, Any], key: str, value: str) -> None:
    node = spec
    parts = key.removeprefix("spec.").split(".")
    if any(not p or "[" in p for p in parts):
        raise UsageError(f"--set {key}: only dotted map paths are supported by the stand-in")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {key}: {part!r} is not a map")
        node = child
    node[parts[-1]] = _scalar(value)


def effective_operator(req: InstallRequest) -> Operator:
    """The files merged in order, then ``--set`` and ``--revision`` on top, checked.

    Raises:
        UsageError: a bad file, a revision mismatch, a profile or component the stand-in does not
            implement, a bad revision or tag.
    """
    spec: dict[str, Any] = {}
    name = ""
    file_revisions = []
    for path in req.files:
        one = load_operator_file(path)
        if one.spec.get("revision"):
            file_revisions.append((path, str(one.spec["revision"])))
        spec = _merge(spec, one.spec)
        name = one.name or name
    for key, value in req.sets:
        _set_path(spec, key, value)
    if req.revision is not None:
        for path, rev in file_revisions:
            if rev != req.revision:
                raise UsageError(
                    f"--revision {req.revision} does not match spec.revision {rev!r} in {path}"
                )
        spec["revision"] = req.revision
    _check_spec(spec)
    return Operator(name or "unknown", spec)


def _check_spec(spec: dict[str, Any]) -> None:
    profile = spec.get("profile", "default")
    if profile != "minimal":
        raise UsageError(f"profile {profile!r}: the stand-in implements only profile=minimal")
    try:
        if spec.get("revision"):
            rel.validate_revision(str(spec["revision"]))
    except rel.IstioctlArgumentError as exc:
        raise UsageError(str(exc)) from exc
    tag = str(spec.get("tag", EMULATED_VERSION))
    if not _TAG.match(tag):
        raise UsageError(f"tag {tag!r} is not an Istio version (e.g. 1.27.3)")
    try:
        rel.known_release(tag)  # a real istioctl would find no images for an unknown tag
    except rel.IstioctlArgumentError as exc:
        raise UsageError(str(exc)) from exc
    components = spec.get("components") or {}
    for name in _UNSUPPORTED_COMPONENTS:
        enabled = components.get(name)
        items = enabled if isinstance(enabled, list) else [enabled or {}]
        if any(isinstance(i, dict) and i.get("enabled") for i in items):
            raise UsageError(f"component {name} is not implemented by the stand-in")


# ---------------------------------------------------------------- overlays


_PATH_TOKEN = re.compile(r"\[[^\]]*\]|[^.\[\]]+")


def _select(node: Any, token: str, path: str) -> tuple[Any, Any]:
    """The container and key/index that ``token`` addresses inside ``node``."""
    if not token.startswith("["):
        if not isinstance(node, dict):
            raise UsageError(f"overlay path {path!r}: {token!r} is not under a map")
        return node, token
    inner = token[1:-1]
    if not isinstance(node, list):
        raise UsageError(f"overlay path {path!r}: {token} is not under a list")
    if re.fullmatch(r"\d+", inner):
        return node, int(inner)
    key, colon, want = inner.partition(":")
    for i, item in enumerate(node):
        if colon and isinstance(item, dict) and str(item.get(key)) == want:
            return node, i
        if not colon and str(item) == inner:
            return node, i
    raise UsageError(f"overlay path {path!r}: no list item matches {token}")


def _patch(obj: dict[str, Any], path: str, value: Any, delete: bool) -> None:
    tokens = _PATH_TOKEN.findall(path)
    node: Any = obj
    for token in tokens[:-1]:
        holder, key = _select(node, token, path)
        if isinstance(holder, dict) and key not in holder:
            holder[key] = {}
        if isinstance(holder, list) and key >= len(holder):
            raise UsageError(f"overlay path {path!r}: index {key} is past the end")
        node = holder[key]
    holder, key = _select(node, tokens[-1], path)
    if delete:
        if isinstance(holder, dict):
            holder.pop(key, None)
        elif key < len(holder):
            del holder[key]
    elif isinstance(holder, list) and key >= len(holder):
        holder.append(value)  # an index past the end appends, as the operator does
    else:
        holder[key] = value


def apply_overlays(objects: list[dict[str, Any]], overlays: list[dict[str, Any]]) -> list[str]:
    """Apply IstioOperator ``k8s.overlays`` in place; return warnings for unmatched targets.

    Raises:
        UsageError: a patch path that does not resolve inside a rendered object.
    """
    warnings = []
    for overlay in overlays:
        kind, name = overlay.get("kind"), overlay.get("name")
        targets = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        if not targets:
            hint = " (istio/istio#31076: istiod's name carries the revision)"
            warnings.append(
                f"overlay for {kind} {name!r} matches nothing this component renders; the "
                f"operator ignores it silently{hint if str(name).startswith('istiod') else ''}"
            )
        for target in targets:
            for patch in overlay.get("patches") or []:
                value = patch.get("value")
                if isinstance(value, str) and "\n" in value:
                    value = yamlio.load(value)  # a block string holding YAML, as Istio allows
                _patch(target, str(patch.get("path", "")), value, delete="value" not in patch)
    return warnings


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    """The objects of one component, and what the operator would have warned about."""

    component: str
    objects: list[dict[str, Any]]
    warnings: list[str]
    ignored: list[str]


def _meta(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def _env_list(env: Any) -> list[dict[str, Any]]:
    if isinstance(env, dict):
        return [{"name": str(k), "value": str(v)} for k, v in env.items()]
    return [dict(e) for e in env or []]


def _apply_k8s(objects: list[dict[str, Any]], k8s: dict[str, Any], where: str) -> Rendered:
    unknown = sorted(set(k8s) - _K8S_APPLIED - _K8S_IGNORED)
    if unknown:
        raise UsageError(f"{where}.k8s: unknown field(s) {unknown}")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    for key in ("affinity", "nodeSelector", "tolerations"):
        if key in k8s:
            pod[key] = copy.deepcopy(k8s[key])
    if "resources" in k8s:
        pod["containers"][0]["resources"] = copy.deepcopy(k8s["resources"])
    if "env" in k8s:
        pod["containers"][0]["env"] += _env_list(k8s["env"])
    pod["volumes"] += copy.deepcopy(list(k8s.get("volumes") or []))
    pod["containers"][0].setdefault("volumeMounts", []).extend(
        copy.deepcopy(list(k8s.get("volumeMounts") or []))
    )
    if "replicaCount" in k8s:
        deployment["spec"]["replicas"] = int(k8s["replicaCount"])
    if "podAnnotations" in k8s:
        deployment["spec"]["template"]["metadata"]["annotations"].update(k8s["podAnnotations"])
    warnings = apply_overlays(objects, list(k8s.get("overlays") or []))
    ignored = [f"{where}.k8s.{k}" for k in sorted(set(k8s) & _K8S_IGNORED)]
    return Rendered(where, objects, warnings, ignored)


@dataclass(frozen=True)
class Install:
    """The values of an install that the rendering needs."""

    owner: str
    revision: str
    tag: str
    hub: str
    namespace: str
    values: dict[str, Any]
    mesh_config: dict[str, Any]

    @property
    def suffix(self) -> str:
        """``-<rev>`` or nothing."""
        return f"-{self.revision}" if self.revision else ""

    @property
    def rev_label(self) -> str:
        """The value of ``istio.io/rev``."""
        return self.revision or "default"

    def global_value(self, *path: str) -> Any:
        """``values.global.<path>``, or None."""
        node: Any = self.values.get("global") or {}
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node


def install_of(op: Operator) -> Install:
    """The install settings in an effective IstioOperator."""
    spec = op.spec
    values = dict(spec.get("values") or {})
    namespace = spec.get("namespace") or (values.get("global") or {}).get("istioNamespace")
    return Install(
        owner=op.name,
        revision=str(spec.get("revision") or ""),
        tag=str(spec.get("tag", EMULATED_VERSION)),
        hub=str(spec.get("hub", DEFAULT_HUB)),
        namespace=str(namespace or "istio-system"),
        values=values,
        mesh_config=dict(spec.get("meshConfig") or {}),
    )


def _owner_labels(inst: Install, component: str) -> dict[str, str]:
    return {
        "istio.io/rev": inst.rev_label,
        "install.operator.istio.io/owning-resource": inst.owner,
        "operator.istio.io/component": component,
        "release": "istio",
    }


def _mesh(inst: Install) -> dict[str, Any]:
    default_config: dict[str, Any] = {
        "discoveryAddress": f"istiod{inst.suffix}.{inst.namespace}.svc:15012"
    }
    if inst.global_value("meshID"):
        default_config["meshId"] = str(inst.global_value("meshID"))
    base = {
        "trustDomain": "cluster.local",
        "rootNamespace": inst.namespace,
        "enablePrometheusMerge": True,
        "defaultProviders": {"metrics": ["prometheus"]},
        "defaultConfig": default_config,
    }
    merged: dict[str, Any] = _merge(base, inst.mesh_config)
    return merged


def _istiod_deployment(inst: Install) -> dict[str, Any]:
    name = f"istiod{inst.suffix}"
    selector = {"app": "istiod", "istio.io/rev": inst.rev_label}
    cluster_id = inst.global_value("multiCluster", "clusterName")
    env = [
        {"name": "REVISION", "value": inst.rev_label},
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KUBECONFIG", "value": "/var/run/secrets/remote/config"},
        *_env_list((inst.values.get("pilot") or {}).get("env")),
        {"name": "ISTIOD_ADDR", "value": f"{name}.{inst.namespace}.svc:15012"},
        {"name": "CLUSTER_ID", "value": str(cluster_id or "Kubernetes")},
    ]  # fmt: skip
    container = {
        "name": "discovery",
        "image": f"{inst.hub}/pilot:{inst.tag}",
        "args": ["discovery", "--monitoringAddr=:15014", "--log_output_level=default:info",
                 "--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m"],
        "ports": [{"containerPort": p, "protocol": "TCP"} for p in (8080, 15010, 15017)],
        "env": env,
        "volumeMounts": [
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": True},
            {"name": "local-certs", "mountPath": "/var/run/secrets/istio-dns"},
            {"name": "cacerts", "mountPath": "/etc/cacerts", "readOnly": True},
            {"name": "istio-kubeconfig", "mountPath": "/var/run/secrets/remote", "readOnly": True},
        ],
    }  # fmt: skip
    volumes = [
        {"name": "local-certs", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
        {"name": "cacerts", "secret": {"secretName": "cacerts", "optional": True}},
        {"name": "istio-kubeconfig",
         "secret": {"secretName": "istio-kubeconfig", "optional": True}},
        {"name": "config-volume", "configMap": {"name": f"istio{inst.suffix}"}},
    ]  # fmt: skip
    pod_labels = selector | {"istio": "istiod", "sidecar.istio.io/inject": "false"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, inst.namespace, selector | {"istio": "pilot"}
                          | _owner_labels(inst, "Pilot")),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {"serviceAccountName": name, "containers": [container],
                         "volumes": volumes},
            },
        },
    }  # fmt: skip


def _service_account(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(name, namespace, labels),
    }


def _istiod_service(inst: Install) -> dict[str, Any]:
    ports = [("grpc-xds", 15010, 15010), ("https-dns", 15012, 15012),
             ("https-webhook", 443, 15017), ("http-monitoring", 15014, 15014)]  # fmt: skip
    labels = {"app": "istiod", "istio": "pilot"} | _owner_labels(inst, "Pilot")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(f"istiod{inst.suffix}", inst.namespace, labels),
        "spec": {
            "ports": [
                {"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports
            ],
            "selector": {"app": "istiod", "istio.io/rev": inst.rev_label},
        },
    }


def _istiod_configmaps(inst: Install, original_values: dict[str, Any]) -> list[dict[str, Any]]:
    labels = _owner_labels(inst, "Pilot") | {"app.kubernetes.io/name": "istiod"}
    merged_values = _merge(
        {"global": {"hub": inst.hub, "tag": inst.tag, "istioNamespace": inst.namespace},
         "revision": inst.revision},
        inst.values,
    )  # fmt: skip
    mesh = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"istio{inst.suffix}", inst.namespace, labels),
        "data": {
            "mesh": yaml.safe_dump(_mesh(inst), sort_keys=True),
            "meshNetworks": "networks: {}",
        },
    }
    values = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"values{inst.suffix}", inst.namespace, labels)
        | {"annotations": {"kubernetes.io/description": "Helm values used during rendering "
                           "(written by the meshflow sandbox istioctl stand-in, NOT Istio)"}},
        "data": {
            "original-values": json.dumps(original_values, indent=2, sort_keys=True),
            "merged-values": json.dumps(merged_values, indent=2, sort_keys=True),
        },
    }  # fmt: skip
    return [mesh, values]


def render_istiod(op: Operator) -> Rendered:
    """The istiod Deployment, Service and ConfigMaps, with ``components.pilot.k8s`` applied."""
    inst = install_of(op)
    pilot = (op.spec.get("components") or {}).get("pilot") or {}
    labels = {"app": "istiod", "release": "istio", "app.kubernetes.io/name": "istiod"}
    objects = [
        _service_account(f"istiod{inst.suffix}", inst.namespace, labels),
        _istiod_deployment(inst),
        _istiod_service(inst),
        *_istiod_configmaps(inst, dict(op.spec.get("values") or {})),
    ]
    return _apply_k8s(objects, dict(pilot.get("k8s") or {}), "components.pilot")


_GATEWAY_SECRET_VOLUMES = (
    ("ingressgateway-certs", "istio-ingressgateway-certs", "/etc/istio/ingressgateway-certs"),
    ("ingressgateway-ca-certs", "istio-ingressgateway-ca-certs",
     "/etc/istio/ingressgateway-ca-certs"),
)  # fmt: skip
"""The gateway chart's default ``secretVolumes``: (volume, Secret, mount path)."""
_GATEWAY_PORTS = (("status-port", 15021, 15021), ("http2", 80, 8080), ("https", 443, 8443))


def _gateway_pod(inst: Install, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """The pod template of ``gateways/istio-ingress``'s (injected-)deployment.yaml."""
    gateway_values = (inst.values.get("gateways") or {}).get("istio-ingressgateway") or {}
    template = gateway_values.get("injectionTemplate")
    container = {
        "name": "istio-proxy",
        "image": "auto" if template else f"{inst.hub}/proxyv2:{inst.tag}",
        "ports": [{"containerPort": t, "protocol": "TCP"} for _, _, t in _GATEWAY_PORTS]
        + [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
        "env": [{"name": "ISTIO_META_UNPRIVILEGED_POD", "value": "true"}],
        "volumeMounts": [
            {"name": v, "mountPath": m, "readOnly": True} for v, _, m in _GATEWAY_SECRET_VOLUMES
        ],
    }
    annotations = {"sidecar.istio.io/inject": "true" if template else "false"}
    if template:
        annotations["inject.istio.io/templates"] = str(template)
    pod_labels = labels | {
        "install.operator.istio.io/owning-resource": inst.owner,
        "operator.istio.io/component": "IngressGateways",
        "sidecar.istio.io/inject": "true" if template else "false",
    }
    if inst.revision:
        pod_labels["istio.io/rev"] = inst.revision
    return {
        "metadata": {"labels": pod_labels, "annotations": annotations},
        "spec": {
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True},
            "serviceAccountName": f"{name}-service-account",
            "containers": [container],
            "volumes": [
                {"name": v, "secret": {"secretName": s, "optional": True}}
                for v, s, _ in _GATEWAY_SECRET_VOLUMES
            ],
        },
    }


def _gateway_objects(inst: Install, gw: dict[str, Any]) -> list[dict[str, Any]]:
    name = str(gw["name"])
    namespace = str(gw.get("namespace") or inst.namespace)
    labels = {"app": "istio-ingressgateway", "istio": "ingressgateway"} | {
        str(k): str(v) for k, v in (gw.get("label") or {}).items()
    }
    service_spec = dict((gw.get("k8s") or {}).get("service") or {})
    ports = service_spec.get("ports") or [
        {"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in _GATEWAY_PORTS
    ]
    meta = _meta(name, namespace, labels | _owner_labels(inst, "IngressGateways"))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": _gateway_pod(inst, name, labels),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(meta),
        "spec": {
            "type": service_spec.get("type", "LoadBalancer"),
            "selector": labels,
            "ports": copy.deepcopy(ports),
        },
    }
    account = _service_account(f"{name}-service-account", namespace, meta["labels"])
    return [account, deployment, service]


def render_gateways(op: Operator) -> list[Rendered]:
    """The enabled ``components.ingressGateways``, with their ``k8s`` settings applied.

    Raises:
        UsageError: a gateway without a name.
    """
    inst = install_of(op)
    out = []
    for i, gw in enumerate((op.spec.get("components") or {}).get("ingressGateways") or []):
        where = f"components.ingressGateways[{i}]"
        if not isinstance(gw, dict) or not gw.get("name"):
            raise UsageError(f"{where}: a gateway needs a name")
        if not gw.get("enabled"):
            continue
        k8s = dict(gw.get("k8s") or {})
        out.append(_apply_k8s(_gateway_objects(inst, gw), k8s, where))
    return out


# ---------------------------------------------------------------- the cluster

_COLLECTIONS = {
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
}
_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class ApiError(Exception):
    """The API server answered a request with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status


def _memfile(name: str, data: bytes) -> str:
    fd = os.memfd_create(f"standin-{name}", os.MFD_CLOEXEC)
    os.write(fd, data)
    return f"/proc/{os.getpid()}/fd/{fd}"


def read_access(path: Path, context: str | None) -> ClusterAccess:
    """The cluster access in the kubeconfig at ``path`` (its current context, or ``context``).

    Raises:
        UsageError: unreadable file, bad kubeconfig, or an unknown context.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"--kubeconfig {path}: cannot read ({exc.strerror})") from exc
    try:
        if context:
            doc = yamlio.load(text)
            if not isinstance(doc, dict):
                raise KubeconfigError("kubeconfig is not a mapping")
            doc["current-context"] = context
            text = yaml.safe_dump(doc)
        return parse_kubeconfig(text)
    except (KubeconfigError, yaml.YAMLError) as exc:
        raise UsageError(f"--kubeconfig {path}: {exc}") from exc


class ApiServer:
    """A minimal HTTPS client for one API server: TLS verified, credentials kept in memory.

    The standard library, not the ``kubernetes`` package: importing that takes about 0.3 CPU-s,
    most of what this command costs, and a real istioctl is a Go binary that pays nothing of the
    kind. Generic calls by path are all the stand-in needs. One connection, kept alive.
    """

    def __init__(self, access: ClusterAccess) -> None:
        url = urllib.parse.urlsplit(access.server)
        if url.scheme != "https" or not url.hostname:
            raise UsageError(f"context {access.context!r}: server {access.server!r} is not https")
        tls = ssl.create_default_context(cadata=access.ca_pem.decode())
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if access.auth == "token" and access.token:
            self._headers["Authorization"] = f"Bearer {access.token}"
        elif access.client_cert_pem and access.client_key_pem:
            tls.load_cert_chain(
                _memfile("cert", access.client_cert_pem), _memfile("key", access.client_key_pem)
            )
        else:
            raise UsageError(
                f"context {access.context!r}: the stand-in runs no exec credential plugin"
            )
        self._conn = http.client.HTTPSConnection(
            url.hostname, url.port or 443, context=tls, timeout=30
        )
        self._base = url.path.rstrip("/")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; the decoded JSON body, or None for a 404 GET.

        Raises:
            ApiError: any other non-2xx answer (with the server's message, which holds no
                secret).
        """
        data = json.dumps(body).encode() if body is not None else None
        self._conn.request(method, self._base + path, body=data, headers=self._headers)
        response = self._conn.getresponse()
        raw = response.read()
        if method == "GET" and response.status == 404:
            return None
        doc = json.loads(raw) if raw else {}
        if not 200 <= response.status < 300:
            raise ApiError(response.status, str(doc.get("message") or response.reason))
        return doc


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def ensure_object(api: ApiServer, obj: dict[str, Any]) -> str:
    """Create ``obj``, or replace it if it differs from what the stand-in last wrote.

    Returns ``created``, ``updated`` or ``unchanged``. Reads first; no write when unchanged.
    """
    body = copy.deepcopy(obj)
    meta = body["metadata"]
    meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: _digest(obj)}
    collection = _COLLECTIONS[obj["kind"]].format(namespace=meta["namespace"])
    current = api.call("GET", f"{collection}/{meta['name']}")
    if current is None:
        api.call("POST", collection, body)
        return "created"
    if (current["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) == _digest(obj):
        return "unchanged"
    meta["resourceVersion"] = current["metadata"]["resourceVersion"]
    if obj["kind"] == "Service" and current["spec"].get("clusterIP"):
        body["spec"]["clusterIP"] = current["spec"]["clusterIP"]  # immutable
    if obj["kind"] == "ServiceAccount" and current.get("secrets"):
        body["secrets"] = current["secrets"]  # filled in by the token controller
    api.call("PUT", f"{collection}/{meta['name']}", body)
    return "updated"


def check_cluster(api: ApiServer, namespaces: set[str]) -> None:
    """Fail before any write if a target namespace or the Istio CRDs are missing.

    Raises:
        InstallFailed: what is missing, worded as istioctl words it.
    """
    for ns in sorted(namespaces):
        if api.call("GET", f"/api/v1/namespaces/{ns}") is None:
            raise InstallFailed(
                f'namespaces "{ns}" not found: create namespace {ns} before installing'
            )
    for crd in REQUIRED_CRDS:
        if api.call("GET", f"{_CRDS}/{crd}") is None:
            raise InstallFailed(f"Istio CRD {crd} is missing (the sandbox installs them)")


# ---------------------------------------------------------------- commands


def _report(rendered: Rendered, results: list[tuple[dict[str, Any], str]], title: str) -> None:
    for warning in rendered.warnings:
        say(f"! {warning}")
    for ignored in rendered.ignored:
        say(f"! {ignored} is accepted but not modelled by the stand-in")
    for obj, action in results:
        m = obj["metadata"]
        say(f"  {obj['kind']} {m['namespace']}/{m['name']}: {action}")
    say(f"✔ {title} objects written (pods not started: sandbox has no nodes)")


def install(argv: Sequence[str]) -> int:
    """``istioctl install ...``: render, check the cluster, then create or leave unchanged."""
    req = parse_install_args(argv)
    op = effective_operator(req)
    inst = install_of(op)
    access = read_access(req.kubeconfig or Path(), req.context)
    istiod = render_istiod(op)
    gateways = render_gateways(op)
    say(
        f'This will install the Istio {inst.tag} profile "minimal" (revision '
        f"{inst.revision or 'default'}) into {access.server}: objects only"
    )
    api = ApiServer(access)
    namespaces = {o["metadata"]["namespace"] for r in [istiod, *gateways] for o in r.objects}
    check_cluster(api, namespaces)
    say("✔ Istio core: CRDs present (pre-installed by the sandbox)")
    total = 0
    for rendered, title in [(istiod, "Istiod"), *((g, "Ingress gateways") for g in gateways)]:
        results = [(o, ensure_object(api, o)) for o in rendered.objects]
        total += sum(action != "unchanged" for _, action in results)
        _report(rendered, results, title)
    say("pods not started: sandbox has no nodes")
    _simulated_install_time()
    say(f"✔ Installation complete ({total} object(s) written; nothing runs)")
    return 0


LATENCY_ENV = "MESHFLOW_STANDIN_INSTALL_SECONDS"


def _simulated_install_time() -> None:
    # Benchmarks inject the time a real install spends waiting for istiod to become ready.
    seconds = float(os.environ.get(LATENCY_ENV, "0") or 0)
    if seconds > 0:
        say(f"(simulating {seconds:g}s of install time: {LATENCY_ENV})")
        time.sleep(seconds)


def version(argv: Sequence[str]) -> int:
    """``istioctl version --remote=false``."""
    if list(argv) not in (["--remote=false"], ["--remote", "false"]):
        raise UsageError("the stand-in implements only `version --remote=false`")
    sys.stdout.write(f"client version: {EMULATED_VERSION} ({LABEL})\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print the label, dispatch, map failures to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(f"{LABEL}\n")
    sys.stdout.flush()  # before any error on stderr, when both go to one pipe
    commands = {"install": install, "version": version}
    try:
        if not args or args[0] not in commands:
            got = args[0] if args else "nothing"
            raise UsageError(f"unknown command {got!r}: the stand-in implements install, version")
        return commands[args[0]](args[1:])
    except UsageError as exc:
        sys.stderr.write(f"{PREFIX} Error: {exc}\n")
        return EXIT_USAGE
    except InstallFailed as exc:
        sys.stderr.write(f"{PREFIX} ✘ Installation failed: {exc}\n")
        return EXIT_FAILED
    except ApiError as exc:
        sys.stderr.write(f"{PREFIX} ✘ Installation failed: the API server answered {exc}\n")
        return EXIT_FAILED
    except Exception as exc:  # unreachable server, TLS failure: OSError, ssl.SSLError
        sys.stderr.write(f"{PREFIX} ✘ Installation failed: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
