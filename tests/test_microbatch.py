"""Micro-batching (issue 12): one optimizer step's gradient accumulated over micro-batches equals the
unsplit gradient to rounding, for both models, every loss, both fields, smoothing, the emulated CUDA
path; micro_batch >= batch is the unsplit computation bit for bit; fit, loss_and_grad and validation
honour the bound; and the memory of a step stays bounded (a subprocess measures peak RSS)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import emulator
import pmm_gpu as pg
from pmm_gpu.models import base
from profiling import step_memory

RTOL = 1e-12  # float64: accumulated vs unsplit gradient, relative (norm-wise per parameter)

CONFIGS = {
    "ae-complex-mse": (pg.AffineEigenvaluePMM, dict(n=6, n_features=3, n_eig=2, which="SA"), "mse"),
    "ae-real-huber-LM": (pg.AffineEigenvaluePMM, dict(n=5, n_features=2, n_eig=3, which="LM", field="real"), "huber"),
    "ae-smoothing-mae": (pg.AffineEigenvaluePMM, dict(n=4, n_features=2, n_eig=1, smoothing=0.3), "mae"),
    "ao-transition-xent": (pg.AffineObservablePMM, dict(n=6, n_features=3, n_outputs=3, n_eig=2, n_secondaries=2),
                           "cross_entropy"),
    "ao-expectation-real-mse": (pg.AffineObservablePMM, dict(n=5, n_features=2, n_outputs=2, n_eig=2,
                                                             form="expectation", field="real"), "mse"),
    "ao-smoothing-uncentered": (pg.AffineObservablePMM, dict(n=5, n_features=2, n_outputs=1, n_eig=2,
                                                             smoothing=0.2, centered=False, bias=False), "mse"),
}


def data(model, loss, B=53, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (B, model.n_features))
    if loss == "cross_entropy":
        return X, rng.integers(0, model.n_outputs, B)
    return X, rng.normal(size=(B, model.n_outputs))


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def assert_same_gradient(m, X, Y, loss, micro_batch):
    l_ref, g_ref = m.loss_and_grad(X, Y, loss)
    value, grads = m.loss_and_grad(X, Y, loss, micro_batch=micro_batch)
    assert abs(value - l_ref) <= RTOL * abs(l_ref)
    for k in g_ref:
        assert rel(grads[k], g_ref[k]) <= RTOL, (k, micro_batch, rel(grads[k], g_ref[k]))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("micro_batch", [1, 7, 26, 52])
def test_accumulated_gradient_equals_unsplit(name, micro_batch):
    cls, kw, loss = CONFIGS[name]
    m = cls(device="cpu", seed=1, **kw)
    X, Y = data(m, loss)
    assert_same_gradient(m, X, Y, loss, micro_batch)


@pytest.mark.parametrize("name", ["ae-complex-mse", "ao-transition-xent"])
def test_emulated_cuda_path(name, monkeypatch):
    """The CUDA backend's dispatch with every kernel in the g++ emulator: same equality."""
    emulator.route_kernels_to_emulator(monkeypatch)
    cls, kw, loss = CONFIGS[name]
    for solver in ("cusolver", "jacobi"):
        m = cls(device="cpu", seed=1, eigh_solver=solver, **kw)
        m.backend = emulator.cuda_backend_on_numpy(kernels=True)
        X, Y = data(m, loss, B=23)
        assert_same_gradient(m, X, Y, loss, 5)


@pytest.mark.parametrize("name", ["ae-complex-mse", "ao-transition-xent"])
def test_no_split_is_bitwise_unchanged(name):
    cls, kw, loss = CONFIGS[name]
    m = cls(device="cpu", seed=1, **kw)
    X, Y = data(m, loss)
    l0, g0 = m.loss_and_grad(X, Y, loss)
    for mb in (len(X), len(X) + 1, 10**9):
        l1, g1 = m.loss_and_grad(X, Y, loss, micro_batch=mb)
        assert l1 == l0
        for k in g0:
            np.testing.assert_array_equal(g1[k], g0[k])
    h = [cls(device="cpu", seed=1, **kw).fit(X, Y, loss=loss, epochs=2, batch_size=16, micro_batch=mb, verbose=False)
         for mb in (None, 16)]
    assert h[0]["loss"] == h[1]["loss"]


@pytest.mark.parametrize("name", ["ae-smoothing-mae", "ao-transition-xent"])
def test_fit_with_micro_batches(name):
    """Training with micro_batch: the parameters follow the unsplit run to rounding; no forward pass
    (training or validation) sees more than micro_batch samples."""
    cls, kw, loss = CONFIGS[name]
    X, Y = data(cls(device="cpu", **kw), loss, B=60)
    a, b = cls(device="cpu", seed=2, **kw), cls(device="cpu", seed=2, **kw)
    seen = []
    forward = b.forward
    b.forward = lambda X, need_grad=False: seen.append(len(X)) or forward(X, need_grad)
    ha = a.fit(X, Y, loss=loss, epochs=3, batch_size=32, validation_data=(X, Y), verbose=False)
    hb = b.fit(X, Y, loss=loss, epochs=3, batch_size=32, validation_data=(X, Y), micro_batch=9, verbose=False)
    np.testing.assert_allclose(hb["loss"], ha["loss"], rtol=1e-12)
    np.testing.assert_allclose(hb["val_loss"], ha["val_loss"], rtol=1e-12)
    assert rel(b.theta, a.theta) <= 1e-11
    assert max(seen) == 9 and len(seen) > 3 * 60 / 9


def test_auto_bound(monkeypatch):
    m = pg.AffineObservablePMM(n=6, n_features=3, n_outputs=2, n_eig=2, device="cpu", seed=1)
    per = m.step_bytes_per_sample()
    monkeypatch.setattr(m.backend, "free_memory", lambda: int(10 * per / base.AUTO_MEMORY_FRACTION))
    assert m.micro_batch_size("auto", 1000) == 10
    X, Y = data(m, "mse")
    assert_same_gradient(m, X, Y, "mse", "auto")
    monkeypatch.undo()
    assert m.micro_batch_size("auto", 10**6) >= 1000  # this machine's memory holds 1000 samples of n = 6


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("all", ValueError),
                                     (True, TypeError)])
def test_bad_micro_batch(bad, err):
    m = pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu")
    X, Y = np.zeros((4, 1)), np.zeros((4, 1))
    with pytest.raises(err, match="micro_batch"):
        m.loss_and_grad(X, Y, micro_batch=bad)
    with pytest.raises(err, match="micro_batch"):
        m.fit(X, Y, epochs=1, micro_batch=bad, verbose=False)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS needs Linux /proc")
def test_step_memory_is_bounded():
    """One step over 2¹⁶ samples (AO-PMM, n = 4) in a subprocess: micro-batches of 2¹² use a fraction of
    the unsplit step's memory (measured at 2²¹ samples: 3.7 GB unsplit, 0.19 GB with 2¹⁶; README)."""
    whole, split = (step_memory.measure("observable", 4, 2**16, mb, limit_gb=8, timeout=120) for mb in (None, 2**12))
    assert "error" not in whole and "error" not in split, (whole, split)
    assert split["step_mb"] < 0.4 * whole["step_mb"], (whole, split)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-12)
