"""Affine observable PMM (AO-PMM): regression and classification outputs from selected eigenvectors.

    M(x) = M_0 + Σ_i x_i M_i,  M(x) = V Λ Vᴴ,  V_S (n, r) the r eigenvectors chosen by ``which``
    Q_qm = V_Sᴴ D_qm V_S                                   (r × r, one per output q and secondary m)
    transition:  z_q = b_q + Σ_m ( ‖Q_qm‖_F² − ½‖D_qm‖₂² )   (‖Q‖_F² = Σ_{i,j∈S} |v_iᴴ D v_j|²)
    expectation: z_q = b_q + Σ_m ( Re tr Q_qm − ½‖D_qm‖₂² )

(DESIGN.md §1.) The centering term −½‖D‖₂² (spectral norm: largest |eigenvalue| of D) is optional
and x-independent; the bias b is optional. Reverse mode (DESIGN.md §2) is written by hand:
``observable_backward`` gives the cotangents of V_S and of the D's, ``eigen.eigh_vjp`` carries the
V_S cotangent to M(x) (Lorentzian broadening η), the base class takes it to the primaries.
All math is array code on ``backend.xp`` (NumPy or CuPy), batched over samples and over the
K = n_outputs·n_secondaries secondaries with matmul; no loop over pairs (i, j) or over samples.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import checks
from .backend import array_module, nvtx_range
from .eigen import WHICH, select, select_indices
from .model import PMM

FORMS = ("transition", "expectation")


def observable_forward(V_S, D, form: str):
    """Uncentered, unbiased observables t_k = ‖Q_k‖_F² (transition) or Re tr Q_k (expectation).

    V_S (B, n, r) selected eigenvectors, D (K, n, n) Hermitian secondaries ->
    t (B, K) real, DV (B, K, n, r) = D_k V_S, Q (B, K, r, r) = V_Sᴴ D_k V_S (DV and Q feed the backward).
    D_k V_S for every k is one matmul (K·n, n) @ (B, n, r); Q is a batched (r, n) @ (n, r) matmul.
    """
    xp = array_module(V_S)
    B, n, r = V_S.shape
    K = D.shape[0]
    DV = (D.reshape(K * n, n) @ V_S).reshape(B, K, n, r)  # (B, K, n, r)
    Q = xp.conj(V_S.swapaxes(1, 2))[:, None] @ DV  # (B, K, r, r)
    if form == "transition":
        t = (Q * xp.conj(Q)).real.sum(axis=(2, 3))
    else:
        t = xp.diagonal(Q, axis1=2, axis2=3).real.sum(axis=2)
    return t, DV, Q


def observable_backward(V_S, DV, Q, tbar, form: str):
    """Cotangents of V_S and of D from tbar = ∂L/∂t (B, K), for t of ``observable_forward``.

    With dL = Re tr(Q̄ᴴ dQ) and dQ = dV_Sᴴ D V_S + V_Sᴴ dD V_S + V_Sᴴ D dV_S (D Hermitian):
        V̄_S = Σ_k D_k V_S (Q̄_k + Q̄_kᴴ),     D̄_k = Σ_b V_S Q̄_bk V_Sᴴ,
    transition: Q̄ = 2 t̄ Q (d‖Q‖_F² = 2 Re tr(Qᴴ dQ)), Q Hermitian, so V̄_S = Σ_k 4 t̄_k D_k V_S Q_k;
    expectation: Q̄ = t̄ I, so V̄_S = Σ_k 2 t̄_k D_k V_S and D̄_k = Σ_b t̄_bk V_S V_Sᴴ.

    V_S (B, n, r), DV (B, K, n, r), Q (B, K, r, r), tbar (B, K) -> V̄_S (B, n, r), D̄ (K, n, n).
    """
    B, n, r = V_S.shape
    K = DV.shape[1]
    Vh = array_module(V_S).conj(V_S.swapaxes(1, 2))  # (B, r, n)
    if form == "transition":
        Qbar = (2 * tbar)[:, :, None, None] * Q  # (B, K, r, r)
        # Σ_k DV_k (2 Q̄_k): contract (k, r) in one batched matmul (B, n, K·r) @ (B, K·r, r)
        Vbar_S = DV.transpose(0, 2, 1, 3).reshape(B, n, K * r) @ (2 * Qbar).reshape(B, K * r, r)
        W = V_S[:, None] @ Qbar  # (B, K, n, r): V_S Q̄_bk
        # Σ_b W_bk V_Sbᴴ: contract (b, r) as one GEMM (K·n, B·r) @ (B·r, n)
        Dbar = (W.transpose(1, 2, 0, 3).reshape(K * n, B * r) @ Vh.reshape(B * r, n)).reshape(K, n, n)
    else:
        Vbar_S = ((2 * tbar)[:, :, None, None] * DV).sum(axis=1)
        P = (V_S @ Vh).reshape(B, n * n)  # projectors V_S V_Sᴴ, (B, n²)
        Dbar = (tbar.T.astype(P.dtype) @ P).reshape(K, n, n)  # one GEMM (K, B) @ (B, n²)
    return Vbar_S, Dbar


def spectral_norm_forward(D, eigh):
    """c_k = ½‖D_k‖₂² and its gradient G_k = ∂c_k/∂D_k = μ_k u_k u_kᴴ.

    μ_k is the eigenvalue of D_k with the largest |μ|, u_k its eigenvector: ‖D‖₂ = |μ| and
    d|μ| = sign(μ) uᴴ dD u, so d(½μ²) = μ uᴴ dD u = Re tr((μ u uᴴ)ᴴ dD). Not differentiable where
    the top |μ| is degenerate (e.g. μ and −μ); there one of the eigenvectors is used.
    D (K, n, n), eigh the backend's batched eigensolver -> c (K,), G (K, n, n).
    """
    xp = array_module(D)
    mu, U = eigh(D)  # K small matrices per step
    top = xp.argmax(xp.abs(mu), axis=1)
    k = xp.arange(D.shape[0])
    m, u = mu[k, top], U[k, :, top]  # (K,), (K, n)
    G = m[:, None, None] * (u[:, :, None] * xp.conj(u[:, None, :]))
    return 0.5 * m * m, G


class AffineObservablePMM(PMM):
    """AO-PMM (DESIGN.md §1): outputs z_q from the r selected eigenvectors of M(x) and secondaries D_qm.

        z_q = b_q + Σ_m ( ‖V_Sᴴ D_qm V_S‖_F² − ½‖D_qm‖₂² )     form="transition"
        z_q = b_q + Σ_m ( Re tr V_Sᴴ D_qm V_S − ½‖D_qm‖₂² )    form="expectation"

    n: matrix size; n_features: p; n_outputs: Q (the number of logits for classification);
    n_eig: r, the number of selected eigenvectors (default min(n, 4)); n_secondaries: l per output;
    which: "SA", "LA", "SM", "LM" (+ "EA", "EM", "IA", "IM"), as for the AE-PMM;
    centered: include −½‖D‖₂²; bias: include a trainable real b_q (initialized to 0);
    eta: Lorentzian broadening η of the eigenvector reverse mode (``eigen.eigh_vjp``): the factor
        1/(λ_j − λ_i) becomes Δ/(Δ² + η²). Default 1e-4, small against typical level spacings
        (≈ 4·init_scale/n at initialization): gradients are exact up to a relative O(η²/Δ²) for
        spacings Δ ≫ η and bounded by 1/(2η) at (near-)degeneracies, so they stay finite even at an
        exact degeneracy. As η → 0 the gradients converge to the exact ones (and to finite
        differences) wherever the levels are non-degenerate; η = 0 is the exact formula.
        Degeneracies among selected levels, or among unselected ones, do not affect the outputs
        (they depend on the projector V_S V_Sᴴ only) and contribute nothing to the gradient; only
        near-crossings between a selected and an unselected level are biased by η.
    Base arguments: field, dtype, device, seed, smoothing, init_scale, eigh_solver (see
    ``AffineEigenvaluePMM``).

    Parameters: "primaries" (p+1, P); "secondaries" (n_outputs, n_secondaries, P), packed like the
    primaries; "bias" (n_outputs,) when bias=True. Initialization: the secondaries use the same
    Wigner scaling as the primaries (E|D_ij|² = init_scale²/n, spectrum ≈ [−2, 2]·init_scale), so
    ‖Q‖_F² ≲ r²·init_scale²/n and ½‖D‖₂² ≈ 2·init_scale²: initial outputs are O(init_scale²) = O(1).
    """

    def __init__(self, n: int, n_features: int, n_outputs: int = 1, n_eig: int | None = None,
                 n_secondaries: int = 1, which: str = "LM", form: str = "transition", centered: bool = True,
                 bias: bool = True, eta: float = 1e-4, **kwargs):
        n = checks.positive_int("n", n)
        self._n_outputs = checks.positive_int("n_outputs", n_outputs)
        self.n_eig = min(n, 4) if n_eig is None else checks.positive_int("n_eig", n_eig)
        if self.n_eig > n:
            raise ValueError(f"n_eig must be <= n = {n}, got {self.n_eig}")
        self.n_secondaries = checks.positive_int("n_secondaries", n_secondaries)
        self.which = checks.choice("which", which, WHICH)
        self.form = checks.choice("form", form, FORMS)
        self.centered = bool(checks.choice("centered", centered, (True, False)))
        self.bias = bool(checks.choice("bias", bias, (True, False)))
        self.eta = checks.finite_float("eta", eta, minimum=0.0)
        if self.n_eig == n:
            warnings.warn(f"n_eig = n = {n}: every eigenvector is selected, so V_S V_Sᴴ = 1 and the outputs "
                          "(‖D‖_F² or tr D) do not depend on x; choose n_eig < n", UserWarning, stacklevel=2)
        super().__init__(n, n_features, **kwargs)

    # --- configuration and parameters ------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return self._n_outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "n_outputs": self.n_outputs, "n_eig": self.n_eig,
                "n_secondaries": self.n_secondaries, "which": self.which, "form": self.form,
                "centered": self.centered, "bias": self.bias, "eta": self.eta}

    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {**super()._param_shapes(), "secondaries": (self.n_outputs, self.n_secondaries, self.P)}
        if self.bias:
            shapes["bias"] = (self.n_outputs,)
        return shapes

    def _init_params(self, rng) -> dict[str, np.ndarray]:
        values = {**super()._init_params(rng),
                  "secondaries": self._random_packed(rng, (self.n_outputs, self.n_secondaries))}
        if self.bias:
            values["bias"] = np.zeros(self.n_outputs)
        return values

    def secondaries(self) -> np.ndarray:
        """The secondaries D_qm as full matrices: NumPy (n_outputs, n_secondaries, n, n)."""
        from .model import _unpack_host

        return _unpack_host(self.backend.to_numpy(self.params["secondaries"]), self.n, self.field)

    # --- forward / backward ----------------------------------------------------------------------
    def _forward(self, X, need_grad: bool):
        """X (B, p) -> z (B, n_outputs) and the cache for ``_backward``."""
        xp = self.backend.xp
        Qn, l = self.n_outputs, self.n_secondaries
        D = self.backend.assemble_forward(self.params["secondaries"].reshape(Qn * l, self.P), self.n, self.field)
        t = None
        if not need_grad and not self.smoothing:  # inference: t from one fused launch where there is one
            t = self.backend.eigh_observable(X, self.params["primaries"], D, self.n, self.field, self.n_eig,
                                             self.which, self.form, self.eigh_solver, self._eigh_failures)
        if need_grad:
            w, V, X1 = self._assemble_eigh(X)  # (B, n), (B, n, n), (B, p+1)
            idx = select_indices(w, self.n_eig, self.which)  # (B, r)
            _, V_S = select(w, V, idx)  # (B, n, r)
        elif t is None:  # inference without the fused launch: only the selected eigenvectors
            _, V_S, _ = self._assemble_eigh(X, vectors=(self.n_eig, self.which))  # (B, n, r)
        with nvtx_range("observable"):
            if t is None:
                t, DV, Q = self.backend.observable_forward(V_S, D, self.form)  # (B, K)
            z = t.reshape(-1, Qn, l).sum(axis=2)  # (B, Q)
            G = None
            if self.centered:
                c, G = spectral_norm_forward(D, self._eigh)  # (K,), (K, n, n)
                z = z - c.reshape(Qn, l).sum(axis=1)
            if self.bias:
                z = z + self.params["bias"]
            z = xp.ascontiguousarray(z.astype(self.real_dtype, copy=False))
        cache = (X1, w, V, idx, V_S, DV, Q, G) if need_grad else None
        return z, cache

    def _backward(self, cache, gout):
        """gout = ∂L/∂z (B, Q) -> gradients of bias, secondaries and primaries in self._grads."""
        xp = self.backend.xp
        X1, w, V, idx, V_S, DV, Q, G = cache
        l = self.n_secondaries
        tbar = xp.repeat(gout, l, axis=1)  # (B, K): ∂z_q/∂t_qm = 1
        Vbar_S, Dbar = self.backend.observable_backward(V_S, DV, Q, tbar, self.form)
        if self.centered:
            Dbar = Dbar - tbar.sum(axis=0)[:, None, None] * G  # ∂z_q/∂c_qm = −1
        self._grads["secondaries"][...] = self.backend.assemble_backward(Dbar, self.n, self.field).reshape(
            self._grads["secondaries"].shape)
        if self.bias:
            self._grads["bias"][...] = gout.sum(axis=0)
        Abar = self.backend.eigh_vjp(w, V, idx, Vbar_S, self.eta)  # (B, n, n)
        self._grads["primaries"][...] = self._assemble_backward(X1, Abar)


def observable_forward_cuda(V_S, D, form: str):
    """RawKernel version of observable_forward (kernels/observable.cu): same arguments and results.

    One block per (sample, secondary) forms D_k V_S and Q_k in shared memory and reduces t; n above
    the largest tile (32) falls back to the array code.
    V_S (B, n, r), D (K, n, n) on the device -> t (B, K), DV (B, K, n, r), Q (B, K, r, r).
    """
    from . import _cuda

    xp = array_module(V_S)
    B, n, r = V_S.shape
    K = D.shape[0]
    tile = _cuda.tile_for(n)
    if tile is None:
        return observable_forward(V_S, D, form)
    V_S, D = xp.ascontiguousarray(V_S), xp.ascontiguousarray(D, dtype=V_S.dtype)
    real = np.finfo(V_S.dtype).dtype
    t = xp.empty((B, K), real)
    DV = xp.empty((B, K, n, r), V_S.dtype)
    Q = xp.empty((B, K, r, r), V_S.dtype)
    block = min(256, max(32, -(-max(n * r, r * r) // 32) * 32))
    kernel = _cuda.get_kernel("observable_forward", real, V_S.dtype, tile)
    kernel((max(1, min(B * K, _cuda.MAX_GRID)),), (block,), (V_S, D, t, DV, Q, B, K, n, r, FORMS.index(form)))
    return t, DV, Q


def observable_backward_cuda(V_S, DV, Q, tbar, form: str):
    """RawKernel version of observable_backward: same arguments and results.

    One launch gives V̄_S and, for the transition form, W_bk = V_S Q̄_bk written in the (K, n, B, r)
    layout of the D̄ GEMM; D̄ = Σ_b (W_bk or t̄_bk V_S) V_Sᴴ is then one cuBLAS GEMM, as in the reference.
    """
    from . import _cuda

    xp = array_module(V_S)
    B, n, r = V_S.shape
    K = DV.shape[1]
    real = np.finfo(V_S.dtype).dtype
    V_S, DV, Q = (xp.ascontiguousarray(a, dtype=V_S.dtype) for a in (V_S, DV, Q))
    tbar = xp.ascontiguousarray(tbar, dtype=real)
    Vbar_S = xp.empty_like(V_S)
    W = xp.empty((K, n, B, r) if form == "transition" else (1,), V_S.dtype)
    grid, block = _cuda.grid_for(B * n * r)
    _cuda.get_kernel("observable_backward", real, V_S.dtype)(
        grid, block, (V_S, DV, Q, tbar, Vbar_S, W, B, K, n, r, FORMS.index(form)))
    Vh = xp.conj(V_S.swapaxes(1, 2))  # (B, r, n)
    if form == "transition":
        Dbar = (W.reshape(K * n, B * r) @ Vh.reshape(B * r, n)).reshape(K, n, n)  # (K·n, B·r) @ (B·r, n)
    else:
        Dbar = (tbar.T.astype(V_S.dtype) @ (V_S @ Vh).reshape(B, n * n)).reshape(K, n, n)  # (K, B) @ (B, n²)
    return Vbar_S, Dbar
