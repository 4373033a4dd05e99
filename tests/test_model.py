"""AE-PMM: forward against NumPy's eigh of hand-assembled matrices, reverse mode against finite
differences (every field, which, k, smoothing and loss)."""
import numpy as np
import pytest

import pmm_gpu as pg
from fd import fd_gradient, flat_grad, rel_err

WHICH = ["SA", "LA", "SM", "LM", "EA", "EM", "IA", "IM"]


def hand_assembled(m, X):
    """M(x) = M_0 + Σ x_i M_i (+ s·i Σ_{i>j}[M_i, M_j]) from matrices(), by explicit loops."""
    Ms = m.matrices()
    C = sum(1j * (Ms[i] @ Ms[j] - Ms[j] @ Ms[i]) for i in range(len(Ms)) for j in range(i))
    return np.stack([Ms[0] + np.tensordot(x, Ms[1:], axes=1) + m.smoothing * C for x in X])


def reference_select(w, k, which):
    """Independent selection: sort (value, index) pairs per sample with Python's sorted."""
    out = []
    for row in w:
        key = (lambda i: row[i]) if which[1] == "A" else (lambda i: abs(row[i]))
        order = sorted(range(len(row)), key=key)
        n, lo = len(row), (len(row) - k) // 2
        pick = {"S": order[:k], "L": order[n - k:], "I": order[lo:lo + k],
                "E": order[:(k + 1) // 2] + order[n - k // 2:]}[which[0]]
        out.append(row[pick])
    return np.array(out)


@pytest.mark.parametrize("field,smoothing", [("real", 0.0), ("complex", 0.0), ("complex", 0.3)])
@pytest.mark.parametrize("which", WHICH)
def test_predict_equals_numpy_eigh(field, smoothing, which):
    m = pg.AffineEigenvaluePMM(n=7, n_features=3, n_eig=3, which=which, field=field, device="cpu",
                               seed=1, smoothing=smoothing)
    X = np.random.default_rng(2).normal(size=(11, 3))
    M = hand_assembled(m, X)
    assert np.allclose(M, np.conj(M.swapaxes(1, 2)), atol=0)  # Hermitian by construction
    expected = reference_select(np.linalg.eigvalsh(M), 3, which)
    # both sides are LAPACK eigenvalues of the same matrix up to summation order: ~1e-15 relative
    np.testing.assert_allclose(m.predict(X), expected, rtol=0, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("field,smoothing,k", [("real", 0.0, 1), ("real", 0.0, 3), ("complex", 0.0, 1),
                                               ("complex", 0.0, 3), ("complex", 0.25, 1), ("complex", 0.25, 3)])
def test_gradient_matches_finite_differences(field, smoothing, k, which, loss):
    rng = np.random.default_rng(3)
    m = pg.AffineEigenvaluePMM(n=5, n_features=2, n_eig=k, which=which, field=field, device="cpu",
                               seed=4, smoothing=smoothing)
    X = rng.normal(size=(6, 2))
    Y = rng.normal(size=(6, k)) * 2  # targets away from the outputs: no |d| = 0 or δ kinks nearby
    _, grads = m.loss_and_grad(X, Y, loss=loss, huber_delta=0.7)
    fd = fd_gradient(m, lambda: m.loss_and_grad(X, Y, loss=loss, huber_delta=0.7)[0])
    assert rel_err(flat_grad(m, grads), fd) <= 1e-6


def test_custom_loss_gradient():
    def quartic(pred, target):
        d = pred - target
        return (d**4).mean(), 4 * d**3 / d.size

    m = pg.AffineEigenvaluePMM(n=4, n_features=1, n_eig=2, device="cpu", seed=0)
    X, Y = np.linspace(-1, 1, 5)[:, None], np.ones((5, 2))
    _, grads = m.loss_and_grad(X, Y, loss=quartic)
    fd = fd_gradient(m, lambda: m.loss_and_grad(X, Y, loss=quartic)[0])
    assert rel_err(flat_grad(m, grads), fd) <= 1e-6


@pytest.mark.parametrize("field", ["real", "complex"])
def test_parameter_count_and_live_params(field):
    m = pg.AffineEigenvaluePMM(n=6, n_features=2, field=field, device="cpu")
    per = 36 if field == "complex" else 21
    assert m.n_params == 3 * per and m.params["primaries"].shape == (3, per)
    X = np.ones((2, 2))
    before = m.predict(X)
    m.params["primaries"][0, 0] += 1.0  # a_00 is the (0,0) entry of M_0: shifts that diagonal entry
    assert not np.allclose(before, m.predict(X))
    assert m.matrices()[0, 0, 0] == pytest.approx(float(m.params["primaries"][0, 0]))


def test_seed_reproducible_and_float32():
    a = pg.AffineEigenvaluePMM(n=5, n_features=2, device="cpu", seed=7)
    b = pg.AffineEigenvaluePMM(n=5, n_features=2, device="cpu", seed=7)
    c = pg.AffineEigenvaluePMM(n=5, n_features=2, device="cpu", seed=8)
    np.testing.assert_array_equal(a.params["primaries"], b.params["primaries"])
    assert not np.array_equal(a.params["primaries"], c.params["primaries"])
    f = pg.AffineEigenvaluePMM(n=5, n_features=2, device="cpu", seed=7, dtype="float32")
    X = np.random.default_rng(0).normal(size=(4, 2))
    assert f.predict(X).dtype == np.float32
    # float32 eigenvalues: rounding ~ n·eps32·‖M‖ ≈ 5·6e-8·5
    np.testing.assert_allclose(f.predict(X), a.predict(X), atol=1e-5)


def test_init_scale_sets_spectrum_width():
    m = pg.AffineEigenvaluePMM(n=64, n_features=1, device="cpu", seed=0, init_scale=0.5)
    w = np.linalg.eigvalsh(m.matrices()[0])
    # Wigner semicircle radius 2·init_scale, up to O(n^-2/3) edge fluctuations
    assert 0.8 < (w.max() - w.min()) / 2 < 1.2
