"""The architecture layer: families told apart by their keys, strict loads, descriptors,
and a layout in which network code knows nothing of devices, files or budgets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, TINY, run_cli
from ttsr_cli import archs
from ttsr_cli.archs.blocks import fold_batchnorm
from ttsr_cli.archs.ttsr import TTSR
from ttsr_cli.errors import TTSRError
from ttsr_cli.weights import load, save_safetensors

PACKAGE = ROOT / "ttsr_cli"
#: What network code may import: torch, numpy (arrays, e.g. the authors' TF variables), a few
#: pure standard modules, its own layer, errors.
ALLOWED = ("torch", "numpy", "ttsr_cli.archs", "ttsr_cli.errors")
ALLOWED_STDLIB = {"__future__", "collections", "dataclasses", "typing", "math", "re"}


def tiny_csnln(scale: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return archs.family("csnln").create({"scale": scale, "n_feats": 8, "depth": 1})[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_network_packages_import_no_devices_files_or_budgets() -> None:
    files = sorted((PACKAGE / "archs").rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        for module in _imports(path):
            ok = module.split(".")[0] in ALLOWED_STDLIB or module.startswith(ALLOWED)
            assert ok, f"{path.relative_to(ROOT)} imports {module}"


def test_no_function_body_is_longer_than_60_lines() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            first = body[1] if docstring and len(body) > 1 else body[0]
            length = node.end_lineno - first.lineno + 1
            assert length <= 60, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}"


def test_each_family_recognises_only_its_own_keys() -> None:
    ttsr_state = TTSR(TINY).state_dict()
    csnln_state = tiny_csnln().state_dict()
    assert archs.detect(ttsr_state).name == "ttsr"
    assert archs.detect(csnln_state).name == "csnln"
    assert archs.detect({f"module.{k}": v for k, v in ttsr_state.items()}).name == "ttsr"
    with pytest.raises(TTSRError) as caught:
        archs.detect({"conv.weight": torch.zeros(3), "fc.bias": torch.zeros(1)})
    message = str(caught.value)
    assert "\n" not in message and "conv.weight" in message and "2 tensors" in message


def test_descriptors_say_what_the_rest_of_the_program_needs() -> None:
    ttsr = archs.describe(TTSR(TINY))
    assert (ttsr.family, ttsr.scale, ttsr.takes_reference) == ("ttsr", 4, True)
    assert ttsr.tiling.kind == "local" and ttsr.size_multiple == 1
    for scale, multiple in ((2, 2), (3, 3), (4, 2)):
        csnln = archs.describe(tiny_csnln(scale))
        assert (csnln.family, csnln.scale, csnln.takes_reference) == ("csnln", scale, False)
        assert csnln.tiling.kind == "global" and csnln.size_multiple == multiple
        assert csnln.config["scale"] == scale and set(csnln.dtypes) == {"fp32", "fp16", "bf16"}
    assert json.dumps(ttsr.to_dict())  # plain data


def test_a_file_of_one_family_where_another_is_needed_is_one_line(tmp_path: Path) -> None:
    ttsr_file, csnln_file = tmp_path / "t.safetensors", tmp_path / "c.safetensors"
    save_safetensors(TTSR(TINY), ttsr_file)
    save_safetensors(tiny_csnln(), csnln_file)
    assert load(csnln_file)[1].family == "csnln"
    for path, expect, found in ((csnln_file, "ttsr", "CSNLN"), (ttsr_file, "csnln", "TTSR")):
        with pytest.raises(TTSRError) as caught:
            load(path, expect=expect)
        assert "\n" not in str(caught.value) and found in str(caught.value)
    # Through the CLI: match-ref scores with a TTSR's LTE, so a CSNLN is refused there.
    result = run_cli("match-ref", csnln_file, "--pool", tmp_path, "--weights", csnln_file)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "CSNLN" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_metadata_naming_another_family_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_safetensors(TTSR(TINY), path, {"arch": "csnln"})
    with pytest.raises(TTSRError, match="metadata says a csnln network"):
        load(path)


@pytest.mark.parametrize("affine", [True, False])
def test_fold_batchnorm_keeps_the_values_and_leaves_no_batchnorm(affine: bool) -> None:
    """Conv (with and without a bias) then BatchNorm (trained statistics, with and without
    its affine part), folded: the same map up to rounding, one pass fewer."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8, affine=affine),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, affine=affine)),
    )
    for bn in (net[1], net[3][1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        if affine:
            nn.init.uniform_(bn.weight, 0.5, 2)
            nn.init.uniform_(bn.bias, -1, 1)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        folded = fold_batchnorm(net)
        got = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert expected.abs().max() > 1  # the statistics did something
