"""The reader ClusterRole's rules per Istio minor equal what that release's own chart renders.

``tests/data/istio/<version>/`` holds, verbatim, ``reader-clusterrole.yaml`` and ``values.yaml`` of
``manifests/charts/istio-control/istio-discovery`` at that tag of istio/istio (each file's header
names the tag and commit). :func:`chart_rules` renders the template's ``rules`` the way Helm
does for the few constructs it uses: the ``$mcsAPIGroup := or .Values.env.MCS_API_GROUP "..."``
assignment, whole-line ``{{- if .Values.x }}`` / ``{{- end }}`` blocks and inline ``{{ $var }}``
references; anything else in the rules is refused, so a chart that grows a new construct fails
here instead of being read wrongly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshflow import istioctl as rel
from meshflow import manifests as m
from meshflow.manifests.multicluster import READER_RULES, istio_minor
from meshflow.spec import MeshSpec

DATA = Path(__file__).parent / "data" / "istio"
CHART_VERSIONS = {"1.26": "1.26.8", "1.27": "1.27.3"}
"""The release whose chart stands for each minor (every patch of these minors has the same
template: 1.26.0-1.26.8 and 1.27.0-1.27.9, checked in istio/istio's tags)."""

_WHOLE_LINE_ACTION = re.compile(r"^\{\{-?\s*(.*?)\s*-?\}\}$")
_INLINE_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
_ASSIGN_OR = re.compile(r'^\$(\w+) := or (\.Values(?:\.\w+)+) "([^"]*)"$')
_IF = re.compile(r"^if (\.Values(?:\.\w+)+)$")
_END = re.compile(r"^end$")
_VARIABLE = re.compile(r"^\$(\w+)$")


def chart_values(version: str) -> dict[str, Any]:
    """The chart's default ``.Values`` of ``version`` (``_internal_defaults_do_not_set``).

    ``templates/zzz_profile.yaml`` of the chart merges that key into ``.Values``; the profile
    meshflow installs (``minimal``) and meshflow's own values set nothing the rules read (see
    :func:`test_meshflow_installs_the_default_render`).
    """
    doc = yaml.safe_load((DATA / version / "values.yaml").read_text())
    return dict(doc["_internal_defaults_do_not_set"])


def _lookup(values: dict[str, Any], path: str) -> Any:
    """``.Values.a.b`` in ``values``; None where a key is missing (Helm renders it empty)."""
    node: Any = values
    for key in path.split(".")[2:]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _substitute(line: str, variables: dict[str, str], values: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        action = match[1]
        if found := _VARIABLE.match(action):
            return variables[found[1]]
        if action.startswith(".Values."):
            return str(_lookup(values, action))
        raise ValueError(f"template action in the rules the helper does not render: {action!r}")

    return _INLINE_ACTION.sub(value, line)


def chart_rules(template: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``rules`` a ``reader-clusterrole.yaml`` template renders with ``values``.

    Raises:
        ValueError: the template uses a construct this helper does not render (in the rules,
            or a conditional anywhere), or an ``if`` without its ``end``.
    """
    variables: dict[str, str] = {}
    branches: list[bool] = []
    rules_lines: list[str] = []
    in_rules = False
    for line in template.splitlines():
        if line.startswith("#"):
            continue  # a YAML comment line (the data files' header)
        whole = _WHOLE_LINE_ACTION.match(line.strip())
        if whole:
            action = whole[1]
            if found := _ASSIGN_OR.match(action):
                variables[found[1]] = str(_lookup(values, found[2]) or found[3])
            elif found := _IF.match(action):
                branches.append(bool(_lookup(values, found[1])))
            elif _END.match(action):
                branches.pop()
            elif in_rules or action.split()[0] in {"if", "else", "range", "with", "define"}:
                raise ValueError(f"template action the helper does not render: {action!r}")
            continue  # e.g. {{- include "istio.labels" . | nindent 4 }} in the metadata
        if not all(branches):
            continue
        if line.rstrip() == "rules:":
            in_rules = True
        elif in_rules and line and not line.startswith((" ", "-")):
            in_rules = False  # the next top-level key
        if in_rules:
            rules_lines.append(_substitute(line, variables, values))
    if branches:
        raise ValueError("an {{ if }} without its {{ end }}")
    rules = yaml.safe_load("\n".join(rules_lines))["rules"]
    assert isinstance(rules, list)
    return rules


def _template(version: str) -> str:
    return (DATA / version / "reader-clusterrole.yaml").read_text()


# -- The helper renders what Helm renders --------------------------------------------------------

SMALL = """\
{{ $group := or .Values.env.GROUP "default.example" }}
kind: ClusterRole
metadata:
  name: r{{- if not (eq .Values.revision "")}}-{{ .Values.revision }}{{- end }}
  labels:
    {{- include "istio.labels" . | nindent 4 }}
rules:
  - apiGroups: ["{{ $group }}"]
    resources: ["a"]
    verbs: ["get"]
{{- if .Values.extra.enabled }}
  - apiGroups: [""]
    resources: ["b"]
    verbs: ["create"]
{{- end}}
"""


def test_chart_rules_takes_the_branch_the_values_choose() -> None:
    off = chart_rules(SMALL, {"extra": {"enabled": False}, "env": {}})
    assert off == [{"apiGroups": ["default.example"], "resources": ["a"], "verbs": ["get"]}]
    on = chart_rules(SMALL, {"extra": {"enabled": True}, "env": {"GROUP": "set.example"}})
    assert on == [
        {"apiGroups": ["set.example"], "resources": ["a"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["b"], "verbs": ["create"]},
    ]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (SMALL.replace("{{- end}}\n", ""), "without its"),
        (SMALL.replace("if .Values.extra.enabled", "if not .Values.extra.enabled"), "not render"),
        (SMALL.replace('["a"]', '["{{ .Release.Name }}"]'), "not render"),
        ("{{- if or (eq .Values.a 1) (eq .Values.b 2) }}\n" + SMALL + "{{- end }}\n", "not render"),
    ],
)
def test_chart_rules_refuses_what_it_does_not_render(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chart_rules(template, {"extra": {"enabled": True}, "env": {}})


def test_the_remote_branch_of_the_real_chart_adds_its_rules() -> None:
    # The conditional is really there and handled: istiodRemote on renders three more rules.
    values = chart_values("1.27.3")
    remote = chart_rules(_template("1.27.3"), {**values, "istiodRemote": {"enabled": True}})
    default = chart_rules(_template("1.27.3"), values)
    assert remote[: len(default)] == default
    assert [r["resources"] for r in remote[len(default) :]] == [
        ["configmaps"],
        ["mutatingwebhookconfigurations"],
        ["validatingwebhookconfigurations"],
    ]


# -- meshflow's tables equal the charts ----------------------------------------------------------


def test_every_minor_with_a_table_has_its_chart_here() -> None:
    assert set(READER_RULES) == set(CHART_VERSIONS)
    for minor, version in CHART_VERSIONS.items():
        assert istio_minor(version) == minor
        header = _template(version).splitlines()[:3]
        assert f"tag: {version} " in header[1], header


@pytest.mark.parametrize(("minor", "version"), sorted(CHART_VERSIONS.items()))
def test_reader_rules_are_exactly_the_charts(minor: str, version: str) -> None:
    values = chart_values(version)
    assert values["istiodRemote"]["enabled"] is False
    assert not values["env"].get("MCS_API_GROUP")
    expected = chart_rules(_template(version), values)
    assert m.reader_rules(version) == expected  # same rules, same order, same verb order
    role = m.reader_cluster_role("1-2-3", version)
    assert role["rules"] == expected


def test_configmaps_are_read_in_1_26_and_not_from_1_27() -> None:
    def core(version: str) -> list[str]:
        (rule,) = [r for r in m.reader_rules(version) if r["apiGroups"] == [""]]
        return list(rule["resources"])

    assert "configmaps" in core("1.26.8")
    assert "configmaps" not in core("1.27.3")
    assert [r for r in core("1.26.0") if r != "configmaps"] == core("1.27.0")


def test_the_pinned_release_has_a_table() -> None:
    for version in rel.KNOWN_RELEASES:
        assert m.reader_rules(version)
    assert m.reader_rules("1.27.3") == m.reader_rules("1.27.9")  # chosen by the minor


def test_reader_rules_are_fresh_each_call() -> None:
    first = m.reader_rules("1.27.3")
    first[0]["verbs"].append("delete")
    assert "delete" not in m.reader_rules("1.27.3")[0]["verbs"]


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("1.28.0", r"no reader rules for Istio 1\.28 \(it has them for 1\.26, 1\.27\)"),
        ("1.25.5", r"no reader rules for Istio 1\.25 \(it has them for 1\.26, 1\.27\)"),
        ("1.27", r"'1\.27' is not MAJOR\.MINOR\.PATCH"),
        ("1.27.3-rc.0", "is not MAJOR.MINOR.PATCH"),
        ("", "is not MAJOR.MINOR.PATCH"),
    ],
)
def test_an_unsupported_version_is_refused_naming_the_supported_minors(
    version: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        m.reader_rules(version)
    with pytest.raises(ValueError, match=message):
        m.reader_cluster_role("rev", version)


def test_meshflow_installs_the_default_render() -> None:
    # The tables are the render without istiodRemote and with the default MCS group: meshflow's
    # IstioOperator (profile minimal, which sets only the ingress gateway off in 1.26 and 1.27)
    # sets neither, on any cluster, with or without the ingress certificates.
    spec = MeshSpec.model_validate(
        {
            "environment": "dev",
            "mesh_id": "mesh1",
            "network": "network1",
            "credentials_block": "azure",
            "key_vault_block": "vault",
            "clusters": [
                {
                    "name": "alpha",
                    "aks_block": "aks-alpha",
                    "ingress": True,
                    "sample_workload": True,
                },
                {"name": "bravo", "aks_block": "aks-bravo"},
            ],
        }
    )
    for cluster in spec.clusters:
        for certificates in (False, True):
            operator = m.istio_operator(spec, cluster, ingress_certificates=certificates)
            text = json.dumps(operator)
            assert "istiodRemote" not in text
            assert "MCS_API_GROUP" not in text
            assert operator["spec"]["profile"] == "minimal"
    flags = m.istioctl_install_flags(spec)
    assert not [f for f in flags if "istiodRemote" in f or "MCS_API_GROUP" in f], flags
    post = m.post_install_manifests(spec, spec.clusters[0])
    (role,) = [o for o in post if o["kind"] == "ClusterRole"]
    assert role["rules"] == m.reader_rules(spec.istio_version)
