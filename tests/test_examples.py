"""The examples run at reduced size (--quick) and their claims hold on the numbers they produce.

Each test runs one example as a script into tmp_path, checks it wrote its table, plot and JSON, and
asserts what the example's table notes claim, computed from the JSON (never hard-coded outputs).
Slow (tens of seconds to ~2 minutes each): run with ``pytest -m slow tests/test_examples.py``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")


def run_example(name: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for ext in ("md", "png", "json"):
        assert (out / f"{name}.{ext}").stat().st_size > 0
    assert "| model" in (out / f"{name}.md").read_text() or "| target" in (out / f"{name}.md").read_text()
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
def test_anharmonic(tmp_path):
    """AE-PMM: accurate on the training interval; extrapolates orders of magnitude better than polynomials."""
    med = run_example("anharmonic", tmp_path)["median"]
    train, *extrap = list(med["PMM"])
    assert med["PMM"][train] < 2e-2
    for k in extrap:
        assert med["PMM"][k] < 1e-2 * med["polynomial"][k], k
    # the PMM's error grows away from the training data, as any extrapolation's does
    assert med["PMM"][extrap[0]] < med["PMM"][extrap[1]]


@pytest.mark.slow
def test_spin_chain(tmp_path):
    """AE-PMM E_0 and AO-PMM m_z extrapolate past the training range better than polynomial and MLP."""
    data = run_example("spin_chain", tmp_path)
    med = data["median"]
    near = [k for k in med["E_0"]["PMM"] if k.startswith("extrapolation")][0]
    for out in ("E_0", "m_z"):
        assert med[out]["PMM"][near] < med[out]["MLP"][near], out
        assert med[out]["PMM"][near] < med[out]["polynomial"][near], out
    # the avoided crossing is inside the training range: the exact gap at c = 0 is small but open
    assert 0 < data["gap_at_0"] < 1


@pytest.mark.slow
def test_regression_benchmark(tmp_path):
    """PMM beats the local methods (k-NN, random forest) on every function; all seven models ran."""
    res = run_example("regression_benchmark", tmp_path)["results"]
    assert len(res) >= 4
    for fname, r in res.items():
        assert set(r) == {"PMM", "KRR", "GP", "MLP", "k-NN", "SVR", "RF"}
        assert r["PMM"]["mae"] < min(r["k-NN"]["mae"], r["RF"]["mae"]), fname
        assert r["PMM"]["params"] > 0 and r["PMM"]["fit_s"] > 0


@pytest.mark.slow
def test_conv_fashion_mnist(tmp_path):
    """Conv-PMM (pmm_gpu.torch AO-PMM head) and the linear-head CNN train at --quick size; the full recipe
    stays within the paper's 278,280 trainable parameters."""
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "conv_fashion_mnist.py"), "--quick", "--out", str(tmp_path),
                           "--runs", "pmm:0,linear:0"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "conv_fashion_mnist.json").read_text())
    assert "| pmm | 0 |" in (tmp_path / "conv_fashion_mnist.md").read_text()
    assert max(res["full_recipe_params"].values()) <= res["param_limit"] == 278_280
    for run in ("pmm:0", "linear:0"):
        r = res["runs"][run]
        assert r["val_acc"] > 0.5 and r["test_acc"] > 0.5, (run, r["val_acc"], r["test_acc"])
        assert [c["epoch"] for c in r["curve"]] == list(range(1, r["epochs"] + 1))
