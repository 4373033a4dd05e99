"""Issue 14, models: low-rank primaries, models without M_0, parameters from matrices, per-sample
Jacobians and the precision switch. Every new gradient is checked against central finite differences
in float64 (relative error <= 1e-6); the Jacobians against finite differences of ``predict`` per sample.
"""
from __future__ import annotations

import numpy as np
import pytest

import pmm_gpu as pg
from fd import fd_gradient, flat_grad, rel_err
from pmm_gpu.functional import primaries_backward, primaries_forward

AE, AO = pg.AffineEigenvaluePMM, pg.AffineObservablePMM
VARIANTS = [dict(rank=2), dict(constant=False), dict(rank=3, constant=False)]


def make(cls, field="complex", seed=3, **kw):
    extra = dict(n_eig=2, which="SA") if cls is AE else dict(n_outputs=2, n_eig=2, n_secondaries=2, eta=0.0)
    return cls(5, 3, field=field, device="cpu", seed=seed, **extra, **kw)


def data(m, B=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (B, m.n_features)), rng.normal(size=(B, m.n_outputs))


@pytest.mark.parametrize("cls", [AE, AO])
@pytest.mark.parametrize("field", ["complex", "real"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_gradients_match_finite_differences(cls, field, variant):
    m = make(cls, field, smoothing=0.2 if field == "complex" and cls is AE else 0.0, **variant)
    X, Y = data(m)
    _, grads = m.loss_and_grad(X, Y)
    fd = fd_gradient(m, lambda: m.loss_and_grad(X, Y)[0])
    assert rel_err(flat_grad(m, grads), fd) <= 1e-6


@pytest.mark.parametrize("field", ["complex", "real"])
def test_parameter_counts(field):
    n, p, r = 5, 3, 2
    per = n * n if field == "complex" else n * (n + 1) // 2
    u = 2 * n if field == "complex" else n
    assert make(AE, field).n_params == (p + 1) * per
    assert make(AE, field, constant=False).n_params == p * per
    assert make(AE, field, rank=r).n_params == (p + 1) * r * (u + 1)  # pyPMM: 2·us.size + ls.size
    assert make(AE, field, rank=r, constant=False).n_params == p * r * (u + 1)
    m = make(AE, field, rank=r)
    assert m.params["primaries_l"].shape == (p + 1, r)
    assert m.params["primaries_u"].shape == ((p + 1, n, r, 2) if field == "complex" else (p + 1, n, r))


@pytest.mark.parametrize("cls", [AE, AO])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_variant_equals_full_model_with_the_same_matrices(cls, variant):
    """A low-rank / no-M_0 model predicts what the full model with its matrices (M_0 = 0) predicts."""
    m = make(cls, **variant)
    Ms = m.matrices()
    assert Ms.shape == (m.n_primaries, 5, 5) and np.allclose(Ms, np.conj(Ms.swapaxes(1, 2)))
    if not m.constant:
        Ms = np.concatenate([np.zeros((1, 5, 5)), Ms])
    extra = dict(Ds=m.secondaries(), b=m.backend.to_numpy(m.params["bias"])) if cls is AO else {}
    full = make(cls, Ms=Ms, **extra)
    X, _ = data(m)
    np.testing.assert_allclose(full.predict(X), m.predict(X), rtol=1e-12, atol=1e-12)


def test_primaries_forward_is_identity_for_full_models():
    m = make(AE)
    P, cache = primaries_forward(m.params)
    assert P is m.params["primaries"]
    assert primaries_backward(cache, P)["primaries"] is P


def test_lowrank_set_matrices_round_trip_and_rank_error():
    m = make(AE, rank=2)
    Ms = m.matrices()
    m2 = make(AE, rank=2, seed=9, Ms=Ms)
    np.testing.assert_allclose(m2.matrices(), Ms, atol=1e-12)
    full_rank = make(AE).matrices()
    with pytest.raises(ValueError, match="rank > rank=2"):
        make(AE, rank=2, Ms=full_rank)


def test_constructor_matrices_and_clear_errors():
    m = make(AO, constant=False)
    Ms, Ds = m.matrices(), m.secondaries()
    m2 = make(AO, seed=8, constant=False, Ms=Ms, Ds=Ds, b=[0.5, -1.0])
    np.testing.assert_array_equal(m2.matrices(), Ms)
    np.testing.assert_array_equal(m2.params["bias"], [0.5, -1.0])
    bad = Ms.copy()
    bad[0, 0, 1] += 1e-3
    with pytest.raises(ValueError, match="primaries must be Hermitian"):
        make(AO, constant=False, Ms=bad)
    with pytest.raises(ValueError, match=r"primaries must have shape \(3, 5, 5\)"):
        make(AO, constant=False, Ms=np.zeros((4, 5, 5)))
    with pytest.raises(ValueError, match="no output bias"):
        make(AO, bias=False, b=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        make(AO, b=[1.0])
    with pytest.raises(ValueError, match="rank must be <= n"):
        make(AE, rank=6)


@pytest.mark.parametrize("cls", [AE, AO])
@pytest.mark.parametrize("variant", [{}, dict(rank=2, constant=False)], ids=str)
def test_grad_input_matches_finite_differences_of_predict(cls, variant):
    m = make(cls, **variant)
    X, _ = data(m, B=6)
    J = m.grad_input(X)
    assert J.shape == (6, m.n_outputs, 3)
    fd = np.empty_like(J)
    for i in range(3):
        h = 1e-6
        up, down = X.copy(), X.copy()
        up[:, i] += h
        down[:, i] -= h
        fd[:, :, i] = (m.predict(up) - m.predict(down)) / (2 * h)
    assert rel_err(J, fd) <= 1e-6


@pytest.mark.parametrize("cls", [AE, AO])
@pytest.mark.parametrize("variant", [{}, dict(rank=2, constant=False)], ids=str)
def test_grad_params_matches_finite_differences_of_predict(cls, variant):
    m = make(cls, **variant)
    X, _ = data(m, B=4)
    J = m.grad_params(X, flat=True)
    assert J.shape == (4, m.n_outputs, m.n_params)
    fd = np.empty_like(J)
    for j in range(m.n_params):
        old = float(m.theta[j])
        h = 1e-6 * max(1.0, abs(old))
        m.theta[j] = old + h
        up = m.predict(X)
        m.theta[j] = old - h
        down = m.predict(X)
        m.theta[j] = old
        fd[:, :, j] = (up - down) / (2 * h)
    assert rel_err(J, fd) <= 1e-6
    per_sample = m.grad_params(X)  # dict view of the same numbers
    assert list(per_sample) == list(m.params)
    np.testing.assert_array_equal(np.concatenate([g.reshape(4, m.n_outputs, -1) for g in per_sample.values()], 2), J)
    # summed over samples with the loss cotangent, the per-sample Jacobian gives loss_and_grad's gradient
    _, Y = data(m, B=4)
    _, grads = m.loss_and_grad(X, Y)
    gbar = 2 * (m.predict(X) - Y) / Y.size
    np.testing.assert_allclose(np.einsum("bq,bqj->j", gbar, J), flat_grad(m, grads), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cls", [AE, AO])
def test_train_float32_then_float64_inference_and_training(cls):
    X, Y = data(make(cls), B=64, seed=1)
    m32 = make(cls, dtype="float32", rank=2)
    m32.fit(X, Y, epochs=3, batch_size=16, lr=1e-2, verbose=False)
    m64 = m32.astype("float64")
    assert m64.dtype == "float64" and m64.theta.dtype == np.float64 and m32.theta.dtype == np.float32
    np.testing.assert_array_equal(m64.theta, m32.theta.astype(np.float64))
    p32, p64 = m32.predict(X), m64.predict(X)
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    scale = np.abs(p64).max()
    # f32 rounding: the eigensolver's error is ~ n·ε32·‖M‖
    assert np.abs(p32 - p64).max() <= 50 * np.finfo(np.float32).eps * scale
    before = m64.loss_and_grad(X, Y)[0]
    assert m64.opt_state["m"].dtype == np.float64 and int(m64.opt_state["step"]) == int(m32.opt_state["step"])
    hist = m64.fit(X, Y, epochs=5, batch_size=16, lr=1e-2, verbose=False)
    assert len(hist["loss"]) == 5 and m64.loss_and_grad(X, Y)[0] < before
    assert m32.astype("float32").predict(X).dtype == np.float32


def test_lowrank_without_m0_saves_and_loads(tmp_path):
    m = make(AO, rank=2, constant=False)
    X, Y = data(m)
    m.fit(X, Y, epochs=2, batch_size=3, verbose=False)
    m.save(tmp_path / "m.npz")
    again = pg.load(tmp_path / "m.npz", device="cpu")
    assert (again.rank, again.constant) == (2, False) and again.get_config() == {**m.get_config(), "device": "cpu"}
    np.testing.assert_array_equal(again.predict(X), m.predict(X))
