"""The affine eigenvalue PMM (AE-PMM): outputs are selected eigenvalues of M(x)."""
from __future__ import annotations

from .. import checks
from ..functional import eigenvalue_pmm_backward, eigenvalue_pmm_forward
from ..ops.eigh import WHICH
from .base import PMM


class AffineEigenvaluePMM(PMM):
    """AE-PMM: the outputs are k selected eigenvalues of M(x) (docs/DESIGN.md §1).

        y(x) = (λ_s(M(x)))_{s ∈ S},  S chosen by ``which`` (SA, LA, SM, LM, EA, EM, IA, IM),
        reverse mode Ā = V_S diag(ȳ) V_Sᴴ (``functional.eigenvalue_pmm_backward``).

    n: matrix size; n_features: p; n_eig: k ≤ n; field "complex" (Hermitian, n² real parameters per
    matrix) or "real" (symmetric, n(n+1)/2); dtype float32/float64 (complex64/128 matrices);
    device "auto"/"cpu"/"cuda"; seed: initialization; smoothing: s (complex field only);
    init_scale: each M_i starts as a random matrix with spectrum in about [−2, 2]·init_scale;
    rank: None (full matrices) or r: M_i = U_i diag(l_i) U_iᴴ of rank r (pyPMM's low-rank affine Hermitian
        matrix; parameters "primaries_l" (m, r), "primaries_u" (m, n, r, 2) re/im (real field (m, n, r)):
        m·r·(2n + 1) real parameters (complex field) or m·r·(n + 1) (real) instead of m·n² (m·n(n+1)/2);
    constant: False drops M_0 (pyPMM's bias_term=False): M(x) = Σ_i x_i M_i, m = p stored primaries
        (m = p + 1 otherwise);
    Ms: optional initial primaries (m, n, n), Hermitian (``set_matrices``);
    eigh_solver: the CUDA eigensolver, "cusolver" (cupy.linalg.eigh), "jacobi" (pmm_gpu's batched
        Jacobi kernel, n <= 32; fused with the assembly of M(x) when smoothing = 0; matrices that miss
        its sweep cap are reported by ``fit`` once per epoch; ``predict`` then has the kernel write the
        eigenvalues only, and the AO-PMM's ``predict`` the observables only, eigenvectors staying in the
        kernel) or "auto" (backend.AUTO_JACOBI_MAX_N: cuSOLVER until a GPU measurement favours the
        kernel). The NumPy backend always uses numpy.linalg.eigh, the reference every solver is
        tested against.
    """

    def __init__(self, n: int, n_features: int, n_eig: int = 1, which: str = "SA", **kwargs):
        self.n_eig = checks.positive_int("n_eig", n_eig)
        if n_eig > checks.positive_int("n", n):
            raise ValueError(f"n_eig must be <= n = {n}, got {n_eig}")
        self.which = checks.choice("which", which, WHICH)
        super().__init__(n, n_features, **kwargs)

    @property
    def n_outputs(self) -> int:
        return self.n_eig

    def get_config(self) -> dict:
        return {**super().get_config(), "n_eig": self.n_eig, "which": self.which}

    def forward(self, X, need_grad: bool = False):
        P, pcache = self._primaries()
        out, cache = eigenvalue_pmm_forward(X, P, n_eig=self.n_eig, which=self.which, field=self.field,
                                            smoothing=self.smoothing, eigh_solver=self.eigh_solver,
                                            need_grad=need_grad, backend=self.backend,
                                            eigh_failures=self.eigh_failures)
        return out, (None if cache is None else (cache, pcache))

    def _backward_fn(self, cache, gout, input_grad: bool) -> dict:
        return self._primaries_grads(cache[1], eigenvalue_pmm_backward(cache[0], gout, input_grad=input_grad))
