"""Built-in physics problems with exact truth from exact diagonalisation (docs/DESIGN.md §6)."""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _oscillator_operators(basis_size: int):
    """H0 = diag(m + ½) and x⁴ in the first ``basis_size`` harmonic-oscillator states.

    x = (a + a†)/√2 is tridiagonal; x⁴ is formed in a basis 4 states larger and then truncated, so
    every kept matrix element of x⁴ is exact (x⁴ couples m to m ± 4 at most).
    """
    N = basis_size + 4
    off = np.sqrt(np.arange(1, N) / 2.0)
    x = np.diag(off, 1) + np.diag(off, -1)
    x2 = x @ x
    x4 = (x2 @ x2)[:basis_size, :basis_size]
    return np.diag(np.arange(basis_size) + 0.5), x4


def anharmonic_levels(g, n_levels: int = 2, basis_size: int = 160) -> np.ndarray:
    """Lowest ``n_levels`` energies of H(g) = ½p² + ½x² + g·x⁴ for each g ≥ 0: (len(g), n_levels).

    Exact diagonalisation in a truncated harmonic-oscillator basis of ``basis_size`` states; the
    variational energies decrease monotonically towards the exact ones as the basis grows
    (``anharmonic_convergence`` measures how far from converged a basis size is).
    """
    g = np.atleast_1d(np.asarray(g, dtype=float))
    if np.any(g < 0):
        raise ValueError("g must be >= 0 (the spectrum is unbounded below for g < 0)")
    H0, x4 = _oscillator_operators(basis_size)
    return np.stack([np.linalg.eigvalsh(H0 + gi * x4)[:n_levels] for gi in g])


def anharmonic_convergence(g, n_levels: int = 2, basis_size: int = 160) -> float:
    """max |E(basis_size) − E(2·basis_size)| over g: the truncation error of ``anharmonic_levels``."""
    return float(np.abs(anharmonic_levels(g, n_levels, basis_size)
                        - anharmonic_levels(g, n_levels, 2 * basis_size)).max())
