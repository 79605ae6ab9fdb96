"""meshflow.yamlio: libyaml's parser, same objects and errors as yaml.safe_load."""

from __future__ import annotations

import pytest
import yaml

from meshflow import yamlio
from sandbox.kube import CRD_DIR


def test_uses_libyaml_when_pyyaml_has_it() -> None:
    assert yaml.__with_libyaml__, "this project's PyYAML wheel ships libyaml"
    assert yamlio.SafeLoader is yaml.CSafeLoader


def test_reads_the_crds_exactly_as_safe_load_does() -> None:
    text = (CRD_DIR / "istio-crds.yaml").read_text()
    docs = list(yamlio.load_all(text))
    assert len(docs) > 10
    assert docs == list(yaml.safe_load_all(text))


@pytest.mark.parametrize(
    "text",
    ["a: 1\nb: [x, 'y', 2.5, null, true]\n", "on: yes\nwhen: 2026-11-27\n", b"bytes: ok\n"],
)
def test_same_objects_as_safe_load(text: str | bytes) -> None:
    assert yamlio.load(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text", ["a: [1, 2\n", "!!python/object/apply:os.system ['true']\n", "a: *nowhere\n"]
)
def test_bad_or_unsafe_yaml_is_a_yaml_error(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        yamlio.load(text)
