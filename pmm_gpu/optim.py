"""Adam on a model's flat parameter buffer: state, learning-rate schedules, clipping, weight decay.

One step, given the gradient g of the flat buffer θ (all on the device, no host synchronisation):

    s = min(1, clip_norm / ‖g‖₂)              (global-norm clipping; s = 1 without clip_norm)
    θ ← (1 − lr_t·λ) θ                        (decoupled weight decay λ, AdamW; skipped for λ = 0)
    θ ← adam_step(θ, s·g)                     (ops/adam.py: bias-corrected Adam, one fused kernel on CUDA)
    lr_t = lr · schedule factor at this fit's step

The state (moments m, v and the step count t) lives on the model as ``model.opt_state``, so it is
saved with the model and training resumes where it stopped. The step count is a host integer: the
bias correction needs it without reading the device.

Geometry. "real" (default): Adam per real parameter, v_j from g_j² (the fused kernel). "complex": the
complex Adam of the authors' library (pyPMM), whose second moment is |g|² per complex entry of the full
Hermitian matrices: the real and imaginary parts (a_ij, b_ij) of each off-diagonal entry (and of each
complex entry of low-rank U_i) share one second moment,

    v_a = v_b ← β2 v + (1 − β2)(g_a² + g_b²),    θ_a ← θ_a − lr m̂_a / (√v̂ + ε)  (likewise θ_b)

so each complex entry moves by ≈ lr along its gradient's direction (rotation invariant in the complex
plane), where real Adam moves a and b by ≈ lr each (|Δ| ≈ √2·lr, along a sign-like direction). Diagonal
entries, real fields and the bias are unchanged. Array code (a few elementwise passes; not fused).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import checks
from ._xp import nvtx_range
from .ops.assemble import triu_pairs

SCHEDULES = ("constant", "cosine")
GEOMETRIES = ("real", "complex")


def lr_factor(schedule, step: int, total: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total`` steps in this fit.

    "constant": 1;  "cosine": ½(1 + cos(π·step/total));  a callable: schedule(step, total).
    """
    if callable(schedule):  # a user's function: its value must be a finite number >= 0
        return checks.finite_float(f"schedule({step}, {total})", schedule(step, total), minimum=0.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return 1.0


class Adam:
    """Adam with clipping, schedule and decoupled weight decay on ``model.theta`` (see module doc).

    lr, betas = (β1, β2), eps: Adam's hyperparameters; clip_norm: global gradient-norm bound or None;
    weight_decay: λ >= 0; schedule: "constant", "cosine" or a callable (step, total_steps) -> factor;
    total_steps: the optimizer steps this fit will take (the schedule's horizon); geometry: "real" or
    "complex" (module docstring).
    """

    def __init__(self, model, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, clip_norm: float | None = None,
                 weight_decay: float = 0.0, schedule="constant", total_steps: int = 1, geometry: str = "real"):
        self.lr = checks.finite_float("lr", lr, minimum=0.0)
        self.beta1, self.beta2 = checks.betas(betas)  # each in [0, 1): β = 1 divides by 1 − β^t = 0
        self.eps = checks.finite_float("eps", eps, positive=True)
        self.clip_norm = None if clip_norm is None else checks.finite_float("clip_norm", clip_norm, positive=True)
        self.weight_decay = checks.finite_float("weight_decay", weight_decay, minimum=0.0)
        if not callable(schedule):
            checks.choice("schedule", schedule, SCHEDULES)
        lr_factor(schedule, 0, total_steps)  # a callable schedule's first value, checked before any step
        self.schedule, self.total_steps, self.steps_taken = schedule, total_steps, 0
        self.model, self.backend = model, model.backend
        st = model.opt_state
        if st is None or st["m"].shape != model.theta.shape:
            xp = self.backend.xp
            st = {"m": xp.zeros_like(model.theta), "v": xp.zeros_like(model.theta), "step": np.array(0)}
        st["step"] = np.array(int(st["step"]))  # host-side: the bias correction needs it without a sync
        model.opt_state = self.state = st
        self._unit = self.backend.xp.ones((), dtype=model.real_dtype)  # made once: the kernel reads the scale
        self.geometry = checks.choice("geometry", geometry, GEOMETRIES)
        pairs = complex_pairs(model) if geometry == "complex" else None
        self.pairs = None if pairs is None or not pairs[0].size else tuple(map(self.backend.asarray, pairs))

    def lr_at(self, step: int) -> float:
        """The learning rate at this fit's optimizer step ``step`` (0-based)."""
        return self.lr * lr_factor(self.schedule, step, self.total_steps)

    def step(self):
        """One update of ``model.theta`` from ``model.grad``."""
        theta, grad, st, xp = self.model.theta, self.model.grad, self.state, self.backend.xp
        with nvtx_range("optimizer"):
            scale = self._unit
            if self.clip_norm is not None:
                gnorm = xp.sqrt((grad * grad).sum())
                scale = xp.minimum(1.0, self.clip_norm / (gnorm + 1e-30))
            st["step"] += 1
            lr_t = self.lr_at(self.steps_taken)
            if self.weight_decay:
                theta *= 1.0 - lr_t * self.weight_decay
            step = self.backend.ops.adam_step if self.pairs is None else functools.partial(paired_adam_step,
                                                                                           pairs=self.pairs)
            step(theta, grad, st["m"], st["v"], lr=lr_t, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                 step=int(st["step"]), scale=scale)
        self.steps_taken += 1

    def snapshot(self):
        """A copy of the parameters and the optimizer state, for ``restore``."""
        st = self.state
        return self.model.theta.copy(), st["m"].copy(), st["v"].copy(), int(st["step"])

    def restore(self, snapshot):
        """Put back the parameters and optimizer state of a ``snapshot``."""
        theta, m, v, step = snapshot
        self.model.theta[...], self.state["m"][...], self.state["v"][...] = theta, m, v
        self.state["step"] = np.array(step)


def complex_pairs(model) -> tuple[np.ndarray, np.ndarray]:
    """(re, im): flat indices into ``model.theta`` of the real and imaginary part of every complex
    parameter entry, for the "complex" geometry: the off-diagonal (a_ij, b_ij) of each packed complex
    matrix ("primaries", "secondaries"; ops/assemble.py layout) and the (Re, Im) of each entry of the
    low-rank "primaries_u" (m, n, r, 2). Empty for field "real"."""
    re, im, off = [], [], 0
    n, T = model.n, model.n * (model.n + 1) // 2
    (iu, ju), _ = triu_pairs(n)
    re_local = np.flatnonzero(iu != ju)  # strict upper triangle, in the order of its imaginary parts
    for name, view in model.params.items():
        if model.field == "complex" and name in ("primaries", "secondaries"):
            starts = off + model.packed_size * np.arange(view.size // model.packed_size)[:, None]
            re.append((starts + re_local).ravel())
            im.append((starts + T + np.arange(len(re_local))).ravel())
        elif model.field == "complex" and name == "primaries_u":
            re.append(off + np.arange(0, view.size, 2))
            im.append(off + np.arange(1, view.size, 2))
        off += view.size
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.intp)
    return cat(re), cat(im)


def paired_adam_step(theta, grad, m, v, *, pairs, lr: float, beta1: float, beta2: float, eps: float, step: int,
                     scale):
    """Adam with one second moment per (re, im) pair (the "complex" geometry): as ops/adam.py's adam_step,
    with g² replaced by g_a² + g_b² on both members of each pair ``pairs`` = (re, im) index arrays."""
    g = grad * scale
    g2 = g * g
    re, im = pairs
    shared = g2[re] + g2[im]
    g2[re] = shared
    g2[im] = shared
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g2
    theta -= lr * (m / (1 - beta1**step)) / ((v / (1 - beta2**step)) ** 0.5 + eps)
