"""The Terraform code itself, with the real binary: fmt, and the peering pairs for N clusters.

The pairs are evaluated by ``terraform console`` on a root module that calls the shared
``infra/modules/mesh-pairs`` (as both infra/azure and infra/sandbox do), for N = 1, 2, 3, 5.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_terraform_fmt_check_passes_on_infra(terraform_bin: Path) -> None:
    done = subprocess.run(
        [terraform_bin, "fmt", "-check", "-recursive", "-no-color", "infra"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_terraform_fmt_check_fails_on_unformatted_code(terraform_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('variable "x" {\n type=string\n}\n')
    done = subprocess.run(
        [terraform_bin, "fmt", "-check", "-recursive", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert "main.tf" in done.stdout


def evaluate_pairs(terraform_bin: Path, root: Path, names: list[str]) -> dict[str, object]:
    root.mkdir()
    module = REPO / "infra" / "modules" / "mesh-pairs"
    (root / "main.tf").write_text(
        f'module "mesh_pairs" {{\n  source = "{module}"\n  names  = {json.dumps(names)}\n}}\n'
    )
    env = {"TF_DATA_DIR": str(root / ".data"), "TF_IN_AUTOMATION": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [terraform_bin, "init", "-input=false", "-no-color", "-backend=false"],
        cwd=root, env=env, capture_output=True, check=True,
    )  # fmt: skip
    expression = "{pairs = module.mesh_pairs.pairs, peerings = module.mesh_pairs.peerings}"
    done = subprocess.run(
        [terraform_bin, "console", "-no-color"],
        input=f"jsonencode({expression})\n",
        cwd=root, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(json.loads(done.stdout)))


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_peering_covers_every_pair_once_in_both_directions(
    terraform_bin: Path, tmp_path: Path, count: int
) -> None:
    names = [f"c{i}" for i in reversed(range(1, count + 1))]  # order does not matter
    result = evaluate_pairs(terraform_bin, tmp_path / "root", names)
    pairs, peerings = result["pairs"], result["peerings"]
    assert isinstance(pairs, dict)
    assert isinstance(peerings, dict)
    expected_pairs = {f"{a}--{b}" for a, b in itertools.combinations(sorted(names), 2)}
    assert set(pairs) == expected_pairs
    assert len(pairs) == count * (count - 1) // 2
    directed = {(p["local"], p["remote"]) for p in peerings.values()}
    assert directed == {(a, b) for a in names for b in names if a != b}
    assert len(peerings) == count * (count - 1)
    for key, peering in peerings.items():
        assert key == f"{peering['local']}-to-{peering['remote']}"
        assert peering["pair"] in pairs
