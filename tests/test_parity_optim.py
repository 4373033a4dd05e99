"""Issue 14, optimizer: the "complex" Adam geometry (pmm_gpu/optim.py), pyPMM's complex Adam with one
second moment per complex matrix entry, on pmm_gpu's packed real parameters."""
from __future__ import annotations

import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu.ops.adam import adam_step
from pmm_gpu.optim import complex_pairs, paired_adam_step

HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("kw", [dict(), dict(rank=2), dict(constant=False)], ids=str)
def test_pairs_are_real_and_imaginary_parts_of_one_entry(kw):
    m = pg.AffineObservablePMM(4, 2, n_outputs=2, n_eig=2, device="cpu", **kw)
    re, im = complex_pairs(m)
    m.theta[...] = np.arange(m.n_params) + 1.0
    found = set(zip(m.theta[re].tolist(), m.theta[im].tolist()))
    iu, ju = np.triu_indices(4, 1)
    entries = [m.secondaries().reshape(-1, 4, 4)[:, iu, ju]]
    if "rank" in kw:
        u = m.params["primaries_u"]
        entries.append(u[..., 0] + 1j * u[..., 1])
    else:
        entries.append(m.matrices()[:, iu, ju])
    expected = {(z.real, z.imag) for e in entries for z in np.ravel(e)}
    assert found == expected and len(re) == len(expected)
    assert not np.intersect1d(re, im).size
    assert complex_pairs(pg.AffineObservablePMM(4, 2, field="real", device="cpu"))[0].size == 0


def test_paired_step_is_complex_adam_per_entry():
    rng = np.random.default_rng(0)
    K, steps = 6, 4
    z = rng.normal(size=K) + 1j * rng.normal(size=K)
    theta = np.concatenate([z.real, z.imag, [0.3]])  # 6 pairs and one real parameter
    pairs = (np.arange(K), K + np.arange(K))
    m, v, mc, vc = np.zeros(2 * K + 1), np.zeros(2 * K + 1), np.zeros(K, complex), np.zeros(K)
    m_r, v_r, x = 0.0, 0.0, 0.3
    for t in range(1, steps + 1):
        g = rng.normal(size=K) + 1j * rng.normal(size=K)
        gr = rng.normal()
        paired_adam_step(theta, np.concatenate([g.real, g.imag, [gr]]), m, v, pairs=pairs, step=t, scale=1.0,
                         **HYPER)
        mc = 0.9 * mc + 0.1 * g  # pyPMM's complex Adam: |g|² per complex entry
        vc = 0.999 * vc + 0.001 * np.abs(g) ** 2
        z = z - 0.01 * (mc / (1 - 0.9**t)) / (np.sqrt(vc / (1 - 0.999**t)) + 1e-8)
        m_r, v_r = 0.9 * m_r + 0.1 * gr, 0.999 * v_r + 0.001 * gr**2
        x = x - 0.01 * (m_r / (1 - 0.9**t)) / (np.sqrt(v_r / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(theta, np.concatenate([z.real, z.imag, [x]]), rtol=1e-13, atol=1e-15)


def test_paired_step_without_pairs_is_adam():
    rng = np.random.default_rng(1)
    a, g = rng.normal(size=9), rng.normal(size=9)
    b = a.copy()
    state = [np.zeros(9) for _ in range(4)]
    adam_step(a, g, state[0], state[1], step=1, scale=1.0, **HYPER)
    paired_adam_step(b, g, state[2], state[3], pairs=(np.zeros(0, int), np.zeros(0, int)), step=1, scale=1.0, **HYPER)
    np.testing.assert_array_equal(a, b)


def test_fit_with_complex_geometry_trains_and_resumes(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, (64, 2))
    Y = np.sin(2 * X[:, :1]) + 0.5 * X[:, 1:] ** 2
    m = pg.AffineEigenvaluePMM(5, 2, device="cpu", seed=0)
    start = m.loss_and_grad(X, Y)[0]
    h = m.fit(X, Y, epochs=20, batch_size=16, lr=2e-2, geometry="complex", verbose=False)
    assert h["loss"][-1] < 0.5 * start
    real = pg.AffineEigenvaluePMM(5, 2, device="cpu", seed=0)
    real.fit(X, Y, epochs=20, batch_size=16, lr=2e-2, verbose=False)
    assert not np.allclose(real.theta, m.theta)  # a different optimizer
    with pytest.raises(ValueError, match="geometry must be one of"):
        m.fit(X, Y, epochs=1, geometry="hyperbolic", verbose=False)
    real_field = pg.AffineEigenvaluePMM(5, 2, field="real", device="cpu", seed=0)
    twin = pg.AffineEigenvaluePMM(5, 2, field="real", device="cpu", seed=0)
    real_field.fit(X, Y, epochs=2, batch_size=16, geometry="complex", verbose=False)
    twin.fit(X, Y, epochs=2, batch_size=16, verbose=False)
    np.testing.assert_array_equal(real_field.theta, twin.theta)  # no complex entries: plain Adam


def test_time_to_accuracy_runs_and_reports(tmp_path, monkeypatch):
    """profiling/time_to_accuracy.py end to end on a tiny case: same start, both geometries (and torch, whose
    steps are the real geometry's), the table and the per-epoch curves."""
    pytest.importorskip("torch")
    from profiling import bench, time_to_accuracy

    monkeypatch.setitem(bench.CASES, "A", bench.Case("A", "eigenvalue", 4, 2, 1, 1, batch=32, model_kw={"which": "SA"}))
    engines = "pmm_gpu,pmm_gpu:complex,torch"
    out = tmp_path / "tta.md"
    assert time_to_accuracy.main(["--cases", "A", "--engines", engines, "--max-epochs", "4", "--samples", "64",
                                  "--targets", "A=1e9", "--rounds", "1", "--curves", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| A | 1e+09 | pmm_gpu | 1 (1) |" in text and "| A | 1e+09 | pmm_gpu:complex | 1 (1) |" in text
    curves = {line.split()[1]: line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("A ")}
    assert curves["torch"] == curves["pmm_gpu"]  # the same steps from the same start on the same batches
