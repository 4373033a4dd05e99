"""The functional API (pmm_gpu/functional.py): input gradients X̄ against central finite differences, and
its outputs and parameter gradients against the models that wrap it.

X̄_bi = Re tr(Ā_bᴴ M_i) is checked for both PMM types, both fields, smoothing on/off, every ``which``,
several outputs: L = Σ ȳ ∘ y with a fixed random ȳ, central differences in float64 with step
1e-6·max(1, |x|), relative error (norm-wise) <= 1e-6. The same on the emulated CUDA path (every
kernel launcher running in the g++ emulator, the Jacobi eigensolver included).
"""
from __future__ import annotations

import numpy as np
import pytest

import emulator
import pmm_gpu as pg
from fd import rel_err
from pmm_gpu import functional as F
from pmm_gpu.ops.eigh import WHICH

TOL = 1e-6
FIELDS = [("real", 0.0), ("complex", 0.0), ("complex", 0.25)]


def setup(kind, field, smoothing, which, seed=0, B=4, p=3, n=5):
    """A model's parameters (NumPy), its functional keyword arguments, X and ȳ."""
    rng = np.random.default_rng(seed)
    if kind == "eigenvalue":
        m = pg.AffineEigenvaluePMM(n=n, n_features=p, n_eig=2, which=which, field=field, smoothing=smoothing,
                                   device="cpu", seed=seed)
        kw = dict(n_eig=2, which=which, field=field, smoothing=smoothing)
        args = (m.params["primaries"],)
    else:
        m = pg.AffineObservablePMM(n=n, n_features=p, n_outputs=3, n_eig=2, n_secondaries=2, which=which,
                                   field=field, smoothing=smoothing, eta=0.0, device="cpu", seed=seed)
        m.params["bias"][...] = rng.normal(size=3)
        kw = dict(n_eig=2, which=which, field=field, smoothing=smoothing, eta=0.0, form="transition")
        args = (m.params["primaries"], m.params["secondaries"], m.params["bias"])
    X = rng.uniform(-1, 1, (B, p))
    ybar = rng.normal(size=(B, m.n_outputs))
    return m, args, kw, X, ybar


def functions(kind):
    if kind == "eigenvalue":
        return F.eigenvalue_pmm_forward, F.eigenvalue_pmm_backward
    return F.observable_pmm_forward, F.observable_pmm_backward


def fd_input_grad(forward, args, kw, X, ybar, backend=None):
    """Central differences of L(X) = Σ ȳ ∘ y(X) in every entry of X."""
    g = np.empty_like(X)
    for idx in np.ndindex(X.shape):
        h = 1e-6 * max(1.0, abs(X[idx]))
        vals = []
        for sign in (1, -1):
            Xs = X.copy()
            Xs[idx] += sign * h
            vals.append(float((forward(Xs, *args, need_grad=False, backend=backend, **kw)[0] * ybar).sum()))
        g[idx] = (vals[0] - vals[1]) / (2 * h)
    return g


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("field,smoothing", FIELDS)
@pytest.mark.parametrize("kind", ["eigenvalue", "observable"])
def test_input_gradient_matches_finite_differences(kind, field, smoothing, which):
    m, args, kw, X, ybar = setup(kind, field, smoothing, which)
    forward, backward = functions(kind)
    _, cache = forward(X, *args, **kw)
    Xbar = backward(cache, ybar)["X"]
    assert Xbar.shape == X.shape
    assert rel_err(Xbar, fd_input_grad(forward, args, kw, X, ybar)) <= TOL


@pytest.mark.parametrize("which", ["SA", "LM", "IA"])
@pytest.mark.parametrize("field,smoothing", FIELDS)
@pytest.mark.parametrize("kind", ["eigenvalue", "observable"])
def test_input_gradient_on_emulated_cuda(kind, field, smoothing, which, monkeypatch):
    """The CUDA launchers (assemble, eigh_vjp/eigvals_vjp, observable) and the Jacobi eigensolver in the
    emulator: X̄ against central differences of the same emulated forward."""
    emulator.route_kernels_to_emulator(monkeypatch)
    be = emulator.cuda_backend_on_numpy()
    m, args, kw, X, ybar = setup(kind, field, smoothing, which, seed=1)
    forward, backward = functions(kind)
    _, cache = forward(X, *args, backend=be, eigh_solver="jacobi", **kw)
    Xbar = backward(cache, ybar)["X"]
    assert rel_err(Xbar, fd_input_grad(forward, args, {**kw, "eigh_solver": "jacobi"}, X, ybar, be)) <= TOL


@pytest.mark.parametrize("kind", ["eigenvalue", "observable"])
def test_functional_equals_the_model(kind):
    """The model is a wrapper: its predict and loss_and_grad are the functional results, bitwise."""
    m, args, kw, X, ybar = setup(kind, "complex", 0.25, "SA")
    forward, backward = functions(kind)
    np.testing.assert_array_equal(forward(X, *args, need_grad=False, **kw)[0], m.predict(X))
    y, cache = forward(X, *args, **kw)
    grads = backward(cache, 2.0 / y.size * (y - ybar), input_grad=False)
    assert "X" not in grads
    _, model_grads = m.loss_and_grad(X, ybar)
    for name, g in model_grads.items():
        np.testing.assert_array_equal(grads[name], g)


def test_shape_errors_name_the_arguments():
    m, args, kw, X, _ = setup("eigenvalue", "complex", 0.0, "SA")
    with pytest.raises(ValueError, match="primaries"):
        F.eigenvalue_pmm_forward(X[:, :2], *args, **kw)
    with pytest.raises(ValueError, match="packed parameters"):
        F.eigenvalue_pmm_forward(X, args[0][:, :-1], **kw)
