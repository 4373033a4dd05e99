"""Eigen reverse mode checked against finite differences on gauge-invariant losses, and chunked eigh."""
import numpy as np
import pytest

from pmm_gpu.eigen import eigh_chunked, eigh_vjp, eigvals_vjp, select, select_indices


def random_hermitian(rng, n, field, B=1):
    A = rng.normal(size=(B, n, n))
    if field == "complex":
        A = A + 1j * rng.normal(size=(B, n, n))
    return (A + np.conj(A.swapaxes(1, 2))) / 2


def projector_loss(M, W, S):
    """L = Re Σ_{s∈S} v_sᴴ W v_s + Σ_s c_s λ_s: invariant under eigenvector phases."""
    w, V = np.linalg.eigh(M)
    c = np.arange(1, len(S) + 1)
    return sum(np.real(np.conj(V[0, :, s]) @ W @ V[0, :, s]) for s in S) + float(c @ w[0, S])


@pytest.mark.parametrize("field", ["real", "complex"])
def test_eigh_vjp_matches_finite_differences(field):
    rng = np.random.default_rng(0)
    n, S = 5, [0, 2, 3]
    M = random_hermitian(rng, n, field)
    W = random_hermitian(rng, n, field)[0]
    w, V = np.linalg.eigh(M)
    Vbar = np.zeros_like(V)
    Vbar[0][:, S] = 2 * W @ V[0][:, S]  # ∂/∂V̄ of Re vᴴ W v = 2 W v (cotangent convention dL = Re tr(V̄ᴴ dV))
    wbar = np.zeros_like(w)
    wbar[0, S] = np.arange(1, len(S) + 1)
    Abar = eigh_vjp(w, V, wbar, Vbar, eta=0.0)[0]
    # directional derivatives along random Hermitian directions: dL = Re tr(Āᴴ dM)
    for _ in range(4):
        D = random_hermitian(rng, n, field)[0]
        h = 1e-6
        fd = (projector_loss(M + h * D, W, S) - projector_loss(M - h * D, W, S)) / (2 * h)
        assert np.real(np.trace(np.conj(Abar).T @ D)) == pytest.approx(fd, rel=1e-7, abs=1e-9)


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
    Vbar = np.ones_like(V)
    assert np.all(np.isfinite(eigh_vjp(w, V, None, Vbar, eta=1e-3)))


def test_eigh_chunked_equals_unchunked():
    rng = np.random.default_rng(2)
    M = random_hermitian(rng, 4, "complex", B=10)
    w1, V1 = np.linalg.eigh(M)
    w2, V2 = eigh_chunked(np.linalg.eigh, M, np, max_batch=3)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(V1, V2)
