"""lowrank: low-rank Hermitian (real-symmetric) primaries and their reverse mode.

    M_i = U_i diag(l_i) U_iᴴ = Σ_k l_ik u_ik u_ikᴴ        U_i (n, r) complex (field "complex") or real,
                                                            l_i (r,) real,  i over the m stored matrices

(the low-rank affine Hermitian matrix of the authors' library, pyPMM's LowRankAffineHermitianMatrix).
Stored as real arrays: ls (m, r) and us (m, n, r, 2) = (Re U, Im U) for the complex field, us (m, n, r)
for the real field: m·r·(2n + 1) real parameters (complex; pyPMM's 2·us.size + ls.size) or m·r·(n + 1)
(real), against m·n² (m·n(n+1)/2) for full matrices.

The PMM forwards take packed full matrices (ops/assemble.py), so ``lowrank_forward`` returns
hermitian_pack(M) (m, P), and ``lowrank_backward`` takes the packed cotangent P̄ (m, P). Its adjoint
on Hermitian matrices is M̄ = ½(A + diag A), A = assemble_forward(P̄) (the off-diagonal packed
entries carry both M_ij and M_ji), and with dL = Re tr(M̄ᴴ dM), dM = dU L Uᴴ + U L dUᴴ + U dL Uᴴ:

    Ū_i = 2 M̄_i U_i diag(l_i)          l̄_ik = Re u_ikᴴ M̄_i u_ik   (M̄_i Hermitian)

Array code on NumPy or CuPy.
"""
from __future__ import annotations

from .._xp import array_module
from .assemble import assemble_forward, hermitian_pack


def _complex_u(us, field: str):
    """us (m, n, r, 2) -> U (m, n, r) complex; the real field's us (m, n, r) unchanged."""
    return us[..., 0] + 1j * us[..., 1] if field == "complex" else us


def lowrank_matrices(ls, us, field: str):
    """Full M_i = U_i diag(l_i) U_iᴴ: ls (m, r), us (m, n, r[, 2]) -> (m, n, n)."""
    xp = array_module(ls)
    U = _complex_u(us, field)
    return (U * ls[:, None, :]) @ xp.conj(U.swapaxes(1, 2))  # (m, n, r) @ (m, r, n)


def lowrank_forward(ls, us, field: str):
    """Packed primaries (m, P) of M_i = U_i diag(l_i) U_iᴴ (module docstring)."""
    return hermitian_pack(lowrank_matrices(ls, us, field), field)


def lowrank_backward(ls, us, Pbar, field: str):
    """(l̄ (m, r), ū like us) from the packed cotangent P̄ (m, P) of ``lowrank_forward``'s output:
    M̄ = ½(A + diag A), A = assemble_forward(P̄);  Ū = 2 M̄ U diag(l),  l̄ = Re diag(Uᴴ M̄ U)."""
    xp = array_module(ls)
    n = us.shape[1]
    A = assemble_forward(Pbar, n, field)  # (m, n, n)
    idx = xp.arange(n)
    Mbar = 0.5 * A
    Mbar[:, idx, idx] = A[:, idx, idx]
    U = _complex_u(us, field)
    MU = Mbar @ U  # (m, n, r)
    lbar = (xp.conj(U) * MU).real.sum(axis=1)  # (m, r)
    Ubar = 2 * MU * ls[:, None, :]
    if field == "complex":
        return lbar, xp.stack([Ubar.real, Ubar.imag], axis=-1)
    return lbar, Ubar
