"""Adam on a model's flat parameter buffer: state, learning-rate schedules, clipping, weight decay.

One step, given the gradient g of the flat buffer θ (all on the device, no host synchronisation):

    s = min(1, clip_norm / ‖g‖₂)              (global-norm clipping; s = 1 without clip_norm)
    θ ← (1 − lr_t·λ) θ                        (decoupled weight decay λ, AdamW; skipped for λ = 0)
    θ ← adam_step(θ, s·g)                     (ops/adam.py: bias-corrected Adam, one fused kernel on CUDA)
    lr_t = lr · schedule factor at this fit's step

The state (moments m, v and the step count t) lives on the model as ``model.opt_state``, so it is
saved with the model and training resumes where it stopped. The step count is a host integer: the
bias correction needs it without reading the device.
"""
from __future__ import annotations

import math

import numpy as np

from . import checks
from ._xp import nvtx_range

SCHEDULES = ("constant", "cosine")


def lr_factor(schedule, step: int, total: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total`` steps in this fit.

    "constant": 1;  "cosine": ½(1 + cos(π·step/total));  a callable: schedule(step, total).
    """
    if callable(schedule):
        return float(schedule(step, total))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return 1.0


class Adam:
    """Adam with clipping, schedule and decoupled weight decay on ``model.theta`` (see module doc).

    lr, betas = (β1, β2), eps: Adam's hyperparameters; clip_norm: global gradient-norm bound or None;
    weight_decay: λ >= 0; schedule: "constant", "cosine" or a callable (step, total_steps) -> factor;
    total_steps: the optimizer steps this fit will take (the schedule's horizon).
    """

    def __init__(self, model, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, clip_norm: float | None = None,
                 weight_decay: float = 0.0, schedule="constant", total_steps: int = 1):
        self.lr = checks.finite_float("lr", lr, minimum=0.0)
        self.beta1, self.beta2 = (checks.finite_float("betas", b, minimum=0.0) for b in betas)
        self.eps = eps
        self.clip_norm = None if clip_norm is None else checks.finite_float("clip_norm", clip_norm, minimum=0.0)
        self.weight_decay = checks.finite_float("weight_decay", weight_decay, minimum=0.0)
        if not callable(schedule):
            checks.choice("schedule", schedule, SCHEDULES)
        self.schedule, self.total_steps, self.steps_taken = schedule, total_steps, 0
        self.model, self.backend = model, model.backend
        st = model.opt_state
        if st is None or st["m"].shape != model.theta.shape:
            xp = self.backend.xp
            st = {"m": xp.zeros_like(model.theta), "v": xp.zeros_like(model.theta), "step": np.array(0)}
        st["step"] = np.array(int(st["step"]))  # host-side: the bias correction needs it without a sync
        model.opt_state = self.state = st
        self._unit = self.backend.xp.ones((), dtype=model.real_dtype)  # made once: the kernel reads the scale

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
            self.backend.ops.adam_step(theta, grad, st["m"], st["v"], lr=lr_t, beta1=self.beta1, beta2=self.beta2,
                                       eps=self.eps, step=int(st["step"]), scale=scale)
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
