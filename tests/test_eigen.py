"""Eigen reverse mode checked against finite differences on gauge-invariant losses, and chunked eigh."""
import numpy as np
import pytest

from pmm_gpu.ops.eigh import eigh_chunked, eigh_vjp, eigvals_vjp, select, select_indices


def random_hermitian(rng, n, field, B=1):
    A = rng.normal(size=(B, n, n))
    if field == "complex":
        A = A + 1j * rng.normal(size=(B, n, n))
    return (A + np.conj(A.swapaxes(1, 2))) / 2


def projector_loss(M, W, idx):
    """L = Re Σ_b Σ_{s∈S_b} v_sᴴ W v_s with S_b = idx[b]: invariant under eigenvector phases."""
    _, V = np.linalg.eigh(M)
    _, V_S = select(np.zeros(V.shape[:2]), V, idx)  # (B, n, r)
    return float(np.sum(np.real(np.conj(V_S) * (W @ V_S))))


@pytest.mark.parametrize("field", ["real", "complex"])
def test_eigh_vjp_matches_finite_differences(field):
    rng = np.random.default_rng(0)
    B, n, r = 3, 5, 3
    M = random_hermitian(rng, n, field, B)
    W = random_hermitian(rng, n, field)[0]
    w, V = np.linalg.eigh(M)
    idx = np.stack([rng.permutation(n)[:r] for _ in range(B)])  # any distinct columns, any order
    _, V_S = select(w, V, idx)
    Vbar_S = 2 * W @ V_S  # ∂/∂V̄ of Re vᴴ W v = 2 W v (cotangent convention dL = Re tr(V̄ᴴ dV))
    Abar = eigh_vjp(w, V, idx, Vbar_S, eta=0.0)
    np.testing.assert_allclose(Abar, np.conj(Abar.swapaxes(1, 2)), atol=1e-14)
    # directional derivatives along random Hermitian directions: dL = Σ_b Re tr(Ā_bᴴ dM_b)
    for _ in range(4):
        D = random_hermitian(rng, n, field, B)
        h = 1e-6
        fd = (projector_loss(M + h * D, W, idx) - projector_loss(M - h * D, W, idx)) / (2 * h)
        assert np.sum(np.real(np.conj(Abar) * D)) == pytest.approx(fd, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("eta", [0.0, 1e-3, 0.5])
def test_eigh_vjp_equals_full_formula_with_zero_padded_cotangent(eta):
    """The selected-column contract equals Ā = H(V (F ∘ (Vᴴ V̄)) Vᴴ) with V̄ zero outside the columns S."""
    rng = np.random.default_rng(3)
    B, n = 4, 6
    M = random_hermitian(rng, n, "complex", B)
    M[0] = np.diag([1.0, 1.0, 2.0, 3.0, 3.0, 4.0])  # exact degeneracies inside and across S
    w, V = np.linalg.eigh(M)
    for r in range(1, n + 1):
        idx = np.stack([rng.permutation(n)[:r] for _ in range(B)])
        Vbar_S = rng.normal(size=(B, n, r)) + 1j * rng.normal(size=(B, n, r))
        Vbar = np.zeros_like(V)
        Vbar[np.arange(B)[:, None], :, idx] = Vbar_S.swapaxes(1, 2)
        d = w[:, None, :] - w[:, :, None]  # Δ_ij = λ_j − λ_i
        den = d * d + eta * eta
        F = np.where(den == 0, 0.0, d / np.where(den == 0, 1.0, den))
        X = V @ (F * (np.conj(V.swapaxes(1, 2)) @ Vbar)) @ np.conj(V.swapaxes(1, 2))
        np.testing.assert_allclose(eigh_vjp(w, V, idx, Vbar_S, eta), (X + np.conj(X.swapaxes(1, 2))) / 2,
                                   rtol=0, atol=1e-12 * max(1.0, np.abs(X).max()))


def test_eigvals_vjp_matches_finite_differences():
    rng = np.random.default_rng(1)
    M = random_hermitian(rng, 6, "complex", B=3)
    ybar = rng.normal(size=(3, 2))
    w, V = np.linalg.eigh(M)
    idx = select_indices(w, 2, "LM")
    _, V_S = select(w, V, idx)
    Abar = eigvals_vjp(V_S, ybar)
    D = random_hermitian(rng, 6, "complex", B=3)
    h = 1e-6
    def L(Mx):
        wx = np.linalg.eigvalsh(Mx)
        return float(np.sum(np.take_along_axis(wx, idx, 1) * ybar))
    fd = (L(M + h * D) - L(M - h * D)) / (2 * h)
    assert np.sum(np.real(np.conj(Abar) * D)) == pytest.approx(fd, rel=1e-7)


def test_eigh_vjp_finite_at_exact_degeneracy():
    M = np.diag([1.0, 1.0, 2.0]).astype(complex)[None]
    w, V = np.linalg.eigh(M)
    idx = np.array([[1, 2]])
    Vbar_S = np.ones((1, 3, 2), complex)
    for eta in (1e-3, 0.0):
        assert np.all(np.isfinite(eigh_vjp(w, V, idx, Vbar_S, eta)))


def test_eigh_chunked_equals_unchunked():
    rng = np.random.default_rng(2)
    M = random_hermitian(rng, 4, "complex", B=10)
    w1, V1 = np.linalg.eigh(M)
    w2, V2 = eigh_chunked(np.linalg.eigh, M, np, max_batch=3)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(V1, V2)
