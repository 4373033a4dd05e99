"""The affine observable PMM (AO-PMM): regression and classification outputs from selected eigenvectors."""
from __future__ import annotations

import warnings

import numpy as np

from .. import checks
from ..functional import observable_pmm_backward, observable_pmm_forward
from ..ops.assemble import packed_size
from ..ops.eigh import WHICH
from ..ops.observable import FORMS
from .base import PMM


class AffineObservablePMM(PMM):
    """AO-PMM (docs/DESIGN.md §1): outputs z_q from the r selected eigenvectors of M(x) and secondaries D_qm.

        z_q = b_q + Σ_m ( ‖V_Sᴴ D_qm V_S‖_F² − ½‖D_qm‖₂² )     form="transition"
        z_q = b_q + Σ_m ( Re tr V_Sᴴ D_qm V_S − ½‖D_qm‖₂² )    form="expectation"

    n: matrix size; n_features: p; n_outputs: Q (the number of logits for classification);
    n_eig: r, the number of selected eigenvectors (default min(4, n − 1), so that the outputs
        depend on x; n >= 2); n_secondaries: l per output;
    which: "SA", "LA", "SM", "LM" (+ "EA", "EM", "IA", "IM"), as for the AE-PMM;
    centered: include −½‖D‖₂²; bias: include a trainable real b_q (initialized to 0);
    eta: Lorentzian broadening η of the eigenvector reverse mode (``ops.eigh.eigh_vjp``): the factor
        1/(λ_j − λ_i) becomes Δ/(Δ² + η²). Default 1e-4, small against typical level spacings
        (≈ 4·init_scale/n at initialization): gradients are exact up to a relative O(η²/Δ²) for
        spacings Δ ≫ η and bounded by 1/(2η) at (near-)degeneracies, so they stay finite even at an
        exact degeneracy. As η → 0 the gradients converge to the exact ones (and to finite
        differences) wherever the levels are non-degenerate; η = 0 is the exact formula.
        Degeneracies among selected levels, or among unselected ones, do not affect the outputs
        (they depend on the projector V_S V_Sᴴ only) and contribute nothing to the gradient; only
        near-crossings between a selected and an unselected level are biased by η.
    Ds, b: optional initial secondaries (n_outputs, n_secondaries, n, n) Hermitian and bias (n_outputs,).
    Base arguments: field, dtype, device, seed, smoothing, init_scale, eigh_solver, rank, constant, Ms
    (see ``AffineEigenvaluePMM``).

    Parameters: "primaries" (p+1, P); "secondaries" (n_outputs, n_secondaries, P), packed like the
    primaries; "bias" (n_outputs,) when bias=True. Initialization: the secondaries use the same
    Wigner scaling as the primaries (E|D_ij|² = init_scale²/n, spectrum ≈ [−2, 2]·init_scale), so
    ‖Q‖_F² ≲ r²·init_scale²/n and ½‖D‖₂² ≈ 2·init_scale²: initial outputs are O(init_scale²) = O(1).
    """

    def __init__(self, n: int, n_features: int, n_outputs: int = 1, n_eig: int | None = None,
                 n_secondaries: int = 1, which: str = "LM", form: str = "transition", centered: bool = True,
                 bias: bool = True, eta: float = 1e-4, Ds=None, b=None, **kwargs):
        n = checks.positive_int("n", n)
        if n < 2:
            raise ValueError(f"n must be >= 2 for AffineObservablePMM (at n = 1 the selected eigenvector's "
                             f"projector V_S V_Sᴴ = 1 and the outputs cannot depend on x), got n = {n}")
        self._n_outputs = checks.positive_int("n_outputs", n_outputs)
        # default r = min(4, n − 1): r = n would select every eigenvector and make the outputs constant
        self.n_eig = min(4, n - 1) if n_eig is None else checks.positive_int("n_eig", n_eig)
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
        if Ds is not None:
            self.set_matrices(secondaries=Ds)
        if b is not None:
            self.set_bias(b)

    # --- configuration and parameters ------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return self._n_outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "n_outputs": self.n_outputs, "n_eig": self.n_eig,
                "n_secondaries": self.n_secondaries, "which": self.which, "form": self.form,
                "centered": self.centered, "bias": self.bias, "eta": self.eta}

    @classmethod
    def param_shapes(cls, config: dict) -> dict[str, tuple[int, ...]]:
        Q, P = config["n_outputs"], packed_size(config["n"], config["field"])
        shapes = {**super().param_shapes(config), "secondaries": (Q, config["n_secondaries"], P)}
        if config["bias"]:
            shapes["bias"] = (Q,)
        return shapes

    def _init_params(self, rng) -> dict[str, np.ndarray]:
        values = {**super()._init_params(rng),
                  "secondaries": self._random_packed(rng, (self.n_outputs, self.n_secondaries))}
        if self.bias:
            values["bias"] = np.zeros(self.n_outputs)
        return values

    def set_bias(self, b):
        """Set the output bias b (n_outputs,) (needs bias=True); finite reals."""
        if not self.bias:
            raise ValueError("b: this model has no output bias (bias=False)")
        b = checks.numeric_array("b", np.reshape(b, -1), (1,), self.real_dtype)
        if b.shape != (self.n_outputs,):
            raise ValueError(f"b must have shape ({self.n_outputs},), got {b.shape}")
        self.params["bias"][...] = self.backend.asarray(b, self.real_dtype)
        return self

    def secondaries(self) -> np.ndarray:
        """The secondaries D_qm as full matrices: NumPy (n_outputs, n_secondaries, n, n)."""
        return self._full_host("secondaries")

    # --- the functional core ---------------------------------------------------------------------
    def forward(self, X, need_grad: bool = False):
        P, pcache = self._primaries()
        out, cache = observable_pmm_forward(
            X, P, self.params["secondaries"], self.params.get("bias"), n_eig=self.n_eig,
            which=self.which, form=self.form, centered=self.centered, eta=self.eta, field=self.field,
            smoothing=self.smoothing, eigh_solver=self.eigh_solver, need_grad=need_grad, backend=self.backend,
            eigh_failures=self.eigh_failures)
        return out, (None if cache is None else (cache, pcache))

    def _backward_fn(self, cache, gout, input_grad: bool) -> dict:
        return self._primaries_grads(cache[1], observable_pmm_backward(cache[0], gout, input_grad=input_grad))
