"""Minimal Adam trainer: mini-batches, schedules, clipping, validation, early stopping, progress.

Throughput rule (DESIGN.md §3): nothing inside an epoch reads a device value on the host. The loss
is accumulated in a device scalar, the clipping factor stays on the device, the learning rate comes
from the host-side step count; the one synchronisation per epoch is the read of the epoch's loss.
Eigensolver non-convergence (the Jacobi kernel's sweep cap) is counted on the device by the forward
passes and read with the loss: a RuntimeWarning per epoch that had any, and history["eigh_not_converged"].
"""
from __future__ import annotations

import math
import sys
import time
import warnings

import numpy as np

from . import checks
from .backend import nvtx_range
from .losses import get_loss

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


def init_adam(model) -> dict:
    """Adam state for the model's flat buffer: moments m, v and the step count (kept on the model)."""
    xp = model.backend.xp
    st = model.opt_state
    if st is None or st["m"].shape != model._flat.shape:
        st = {"m": xp.zeros_like(model._flat), "v": xp.zeros_like(model._flat), "step": np.array(0)}
    st["step"] = np.array(int(st["step"]))  # host-side: the bias correction needs it without a sync
    model.opt_state = st
    return st


def fit(model, X, Y, *, epochs: int = 100, batch_size: int = 256, lr: float = 1e-2, loss="mse",
        huber_delta: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        clip_norm: float | None = None, weight_decay: float = 0.0, schedule="constant", validation_data=None,
        patience: int | None = None, min_delta: float = 0.0, restore_best: bool = True,
        seed: int | None = 0, verbose: bool = True, callback=None) -> dict:
    """Train ``model`` on (X, Y) with mini-batch Adam; returns the history dict (also ``model.history``).

    epochs, batch_size: passes over the data and samples per step (the last batch may be partial);
        the order is reshuffled every epoch from ``seed``.
    lr, betas, eps: Adam hyperparameters; schedule: "constant", "cosine" or a callable
        (step, total_steps) -> multiplier of lr; clip_norm: clip the global gradient norm.
    weight_decay: decoupled weight decay λ (AdamW, Loshchilov & Hutter 2019) on every parameter:
        θ ← θ − lr_t·(m̂/(√v̂ + ε) + λ·θ), applied as θ ← (1 − lr_t·λ)·θ before the Adam step (an
        array op on the flat buffer, so the Adam kernel contract is unchanged); 0 is plain Adam.
    loss: "mse", "mae", "huber" (with huber_delta), "cross_entropy" or a callable (see losses.py).
    validation_data: (Xv, Yv) evaluated after every epoch. Early stopping monitors the validation
        loss (the training loss without validation data): stop after ``patience`` epochs without an
        improvement larger than ``min_delta``; ``restore_best`` puts the best parameters back.
    verbose: progress line with loss, validation loss and samples/s; callback(epoch, history) per epoch.
    A non-finite epoch loss stops training with a RuntimeWarning and restores the parameters (and
    optimizer state) from the start of that epoch. history["eigh_not_converged"][e]: matrices of
    epoch e (training and validation passes) whose eigensolver did not converge (only the Jacobi
    solver on CUDA reports any; their eigenpairs are inaccurate), each epoch with any also warned.
    """
    epochs = checks.positive_int("epochs", epochs)
    batch_size = checks.positive_int("batch_size", batch_size)
    lr = checks.finite_float("lr", lr, minimum=0.0)
    clip_norm = None if clip_norm is None else checks.finite_float("clip_norm", clip_norm, minimum=0.0)
    weight_decay = checks.finite_float("weight_decay", weight_decay, minimum=0.0)
    if not callable(schedule):
        checks.choice("schedule", schedule, SCHEDULES)
    if patience is not None:
        patience = checks.positive_int("patience", patience)
    beta1, beta2 = (checks.finite_float("betas", b, minimum=0.0) for b in betas)
    loss_fn = get_loss(loss, huber_delta)
    be, xp = model.backend, model.backend.xp
    Xh = checks.features(X, model.n_features, model.real_dtype)
    Yh = model._check_targets(Y, len(Xh), loss)
    Xd, Yd = be.asarray(Xh), be.asarray(Yh)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, Y_val)")
        Xv = be.asarray(checks.features(validation_data[0], model.n_features, model.real_dtype, "validation X"))
        Yv = be.asarray(model._check_targets(validation_data[1], len(Xv), loss))

    N = len(Xh)
    steps_per_epoch = -(-N // batch_size)
    total_steps = epochs * steps_per_epoch
    st = init_adam(model)
    rng = np.random.default_rng(seed)
    hist = {"loss": [], "val_loss": [], "lr": [], "epoch_time": [], "samples_per_s": [],
            "eigh_not_converged": [], "best_epoch": None, "stop_reason": "epochs"}
    best, best_flat, since_best = math.inf, None, 0
    bar = _Progress(epochs, verbose)
    step = 0
    unit = xp.ones((), dtype=model.real_dtype)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        snapshot = (model._flat.copy(), st["m"].copy(), st["v"].copy(), int(st["step"]))
        perm = be.asarray(rng.permutation(N))  # host RNG: identical batches on every backend
        total = xp.zeros((), dtype=model.real_dtype)
        model._eigh_failures.fill(0)  # counted on the device by every forward pass of the epoch
        for s in range(0, N, batch_size):
            idx = perm[s:s + batch_size]
            value = model._loss_and_grad(Xd[idx], Yd[idx], loss_fn)
            total += value * len(idx)
            with nvtx_range("optimizer"):
                scale = unit  # a device scalar made once: the fused Adam kernel reads the scale there
                if clip_norm is not None:
                    gnorm = xp.sqrt((model._grad * model._grad).sum())
                    scale = xp.minimum(1.0, clip_norm / (gnorm + 1e-30))
                st["step"] += 1
                lr_t = lr * lr_factor(schedule, step, total_steps)
                if weight_decay:
                    model._flat *= 1.0 - lr_t * weight_decay
                be.adam_step(model._flat, model._grad, st["m"], st["v"], lr=lr_t,
                             beta1=beta1, beta2=beta2, eps=eps, step=int(st["step"]), scale=scale)
            step += 1
        epoch_loss = float(total) / N  # the one host synchronisation of the epoch
        failed = int(model._eigh_failures)  # already computed: a copy, not a wait
        if not math.isfinite(epoch_loss):
            model._flat[...], st["m"][...], st["v"][...] = snapshot[:3]
            st["step"] = np.array(snapshot[3])
            hist["stop_reason"] = f"diverged: non-finite training loss in epoch {epoch + 1}"
            unconverged = f" ({failed} eigendecompositions did not converge)" if failed else ""
            warnings.warn(f"training diverged (non-finite loss in epoch {epoch + 1}{unconverged}); stopped and restored "
                          f"the parameters from the start of that epoch. Try a smaller lr or clip_norm.", RuntimeWarning)
            break
        dt = time.perf_counter() - t0
        hist["loss"].append(epoch_loss)
        hist["lr"].append(lr * lr_factor(schedule, step - 1, total_steps))
        hist["epoch_time"].append(dt)
        hist["samples_per_s"].append(N / dt)
        monitored = epoch_loss
        if validation_data is not None:
            monitored = evaluate(model, Xv, Yv, loss_fn, batch_size=max(batch_size, 8192))
            hist["val_loss"].append(monitored)
            failed = int(model._eigh_failures)  # evaluate synchronised: now with the validation pass
        hist["eigh_not_converged"].append(failed)
        if failed:
            warnings.warn(f"epoch {epoch + 1}: {failed} eigendecompositions did not converge within the Jacobi "
                          f"sweep cap (eigh_solver={model.eigh_solver!r}); their eigenpairs, outputs and gradients "
                          "are inaccurate. Check the data and parameters for NaN/Inf, or use eigh_solver='cusolver'.",
                          RuntimeWarning)
        if monitored < best - min_delta:
            best, since_best, hist["best_epoch"] = monitored, 0, epoch + 1
            if restore_best:
                best_flat = model._flat.copy()
        else:
            since_best += 1
        bar.update(epoch + 1, hist)
        if callback is not None:
            callback(epoch + 1, hist)
        if patience is not None and since_best >= patience:
            hist["stop_reason"] = f"early stopping: no improvement for {patience} epochs"
            break
    bar.close()
    if restore_best and best_flat is not None and hist["best_epoch"] != len(hist["loss"]):
        model._flat[...] = best_flat
    model.history = hist
    return hist


def evaluate(model, X, Y, loss_fn, batch_size: int = 8192) -> float:
    """Mean loss over device arrays (X, Y), in chunks; returns a float (one synchronisation)."""
    xp = model.backend.xp
    total = xp.zeros((), dtype=model.real_dtype)
    for s in range(0, len(X), batch_size):
        out, _ = model._forward(X[s:s + batch_size], need_grad=False)
        total += loss_fn(out, Y[s:s + batch_size])[0] * len(out)
    return float(total) / len(X)


class _Progress:
    """One status line on stderr: redrawn in place on a terminal, every ~5% of epochs otherwise."""

    def __init__(self, epochs: int, enabled: bool):
        self.epochs, self.enabled = epochs, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.every = 1 if self.tty else max(1, epochs // 20)

    def update(self, epoch: int, hist: dict):
        if not self.enabled or (epoch % self.every and epoch != self.epochs):
            return
        val = f" | val {hist['val_loss'][-1]:.4e}" if hist["val_loss"] else ""
        line = (f"epoch {epoch:>{len(str(self.epochs))}}/{self.epochs} | loss {hist['loss'][-1]:.4e}{val}"
                f" | {hist['samples_per_s'][-1]:,.0f} samples/s")
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self):
        if self.tty:
            sys.stderr.write("\n")
