"""fit: the training loop. Mini-batches, validation, early stopping, divergence guard, progress.

Throughput rule (docs/DESIGN.md §3): nothing inside an epoch reads a device value on the host. The loss
is accumulated in a device scalar, the clipping factor stays on the device, the learning rate comes
from the host-side step count; the one synchronisation per epoch is the read of the epoch's loss.
Eigensolver non-convergence (the Jacobi kernel's sweep cap) is counted on the device by the forward
passes and read with the loss: a RuntimeWarning per epoch that had any, and history["eigh_not_converged"].

One step: ``model.device_loss_and_grad`` (forward, loss, reverse mode into ``model.grad``; the math is
pmm_gpu/functional.py), then ``Adam.step`` (pmm_gpu/optim.py).
"""
from __future__ import annotations

import math
import sys
import time
import warnings

import numpy as np

from . import checks
from .losses import get_loss
from .optim import Adam


def fit(model, X, Y, *, epochs: int = 100, batch_size: int = 256, lr: float = 1e-2, loss="mse",
        huber_delta: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        clip_norm: float | None = None, weight_decay: float = 0.0, schedule="constant", validation_data=None,
        patience: int | None = None, min_delta: float = 0.0, restore_best: bool = True,
        seed: int | None = 0, verbose: bool = True, callback=None) -> dict:
    """Train ``model`` on (X, Y) with mini-batch Adam; returns the history dict (also ``model.history``).

    epochs, batch_size: passes over the data and samples per step (the last batch may be partial);
        the order is reshuffled every epoch from ``seed``.
    lr, betas, eps, clip_norm, weight_decay, schedule: the optimizer (pmm_gpu.optim.Adam; weight_decay
        is decoupled, AdamW; schedule "constant", "cosine" or a callable (step, total_steps) -> factor).
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
    epochs, batch_size = checks.positive_int("epochs", epochs), checks.positive_int("batch_size", batch_size)
    loss_fn = get_loss(loss, huber_delta)
    Xd, Yd, val = _device_data(model, X, Y, validation_data, loss)
    opt = Adam(model, lr=lr, betas=betas, eps=eps, clip_norm=clip_norm, weight_decay=weight_decay,
               schedule=schedule, total_steps=epochs * -(-len(Xd) // batch_size))
    stop = _EarlyStopping(model, patience, min_delta, restore_best)
    rng, bar = np.random.default_rng(seed), _Progress(epochs, verbose)
    hist = {"loss": [], "val_loss": [], "lr": [], "epoch_time": [], "samples_per_s": [],
            "eigh_not_converged": [], "best_epoch": None, "stop_reason": "epochs"}
    for epoch in range(1, epochs + 1):
        t0, snapshot = time.perf_counter(), opt.snapshot()
        epoch_loss = _train_epoch(model, opt, Xd, Yd, batch_size, rng, loss_fn)  # synchronises once
        failed = int(model.eigh_failures)  # already computed: a copy, not a wait
        if not math.isfinite(epoch_loss):
            opt.restore(snapshot)
            hist["stop_reason"] = f"diverged: non-finite training loss in epoch {epoch}"
            unconverged = f" ({failed} eigendecompositions did not converge)" if failed else ""
            warnings.warn(f"training diverged (non-finite loss in epoch {epoch}{unconverged}); stopped and restored "
                          f"the parameters from the start of that epoch. Try a smaller lr or clip_norm.", RuntimeWarning)
            break
        dt = time.perf_counter() - t0
        hist["loss"].append(epoch_loss)
        hist["lr"].append(opt.lr_at(opt.steps_taken - 1))
        hist["epoch_time"].append(dt)
        hist["samples_per_s"].append(len(Xd) / dt)
        monitored = epoch_loss
        if val is not None:
            monitored = evaluate(model, *val, loss_fn, batch_size=max(batch_size, 8192))
            hist["val_loss"].append(monitored)
            failed = int(model.eigh_failures)  # evaluate synchronised: now with the validation pass
        _note_unconverged(model, hist, epoch, failed)
        stop.update(monitored, epoch, hist)
        bar.update(epoch, hist)
        if callback is not None:
            callback(epoch, hist)
        if stop.should_stop(hist):
            break
    bar.close()
    stop.restore(hist)
    model.history = hist
    return hist


def _device_data(model, X, Y, validation_data, loss):
    """Checked training (and validation) data on the model's device: Xd, Yd, (Xv, Yv) or None."""
    be = model.backend
    Xh = checks.features(X, model.n_features, model.real_dtype)
    Xd, Yd = be.asarray(Xh), be.asarray(model.check_targets(Y, len(Xh), loss))
    if validation_data is None:
        return Xd, Yd, None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be a pair (X_val, Y_val)")
    Xv = be.asarray(checks.features(validation_data[0], model.n_features, model.real_dtype, "validation X"))
    return Xd, Yd, (Xv, be.asarray(model.check_targets(validation_data[1], len(Xv), loss)))


def _train_epoch(model, opt, Xd, Yd, batch_size: int, rng, loss_fn) -> float:
    """One pass over the data in a fresh random order; the mean training loss (one synchronisation)."""
    N = len(Xd)
    perm = model.backend.asarray(rng.permutation(N))  # host RNG: identical batches on every backend
    total = model.backend.xp.zeros((), dtype=model.real_dtype)
    model.eigh_failures.fill(0)  # counted on the device by every forward pass of the epoch
    for s in range(0, N, batch_size):
        idx = perm[s:s + batch_size]
        total += model.device_loss_and_grad(Xd[idx], Yd[idx], loss_fn) * len(idx)
        opt.step()
    return float(total) / N


def _note_unconverged(model, hist, epoch: int, failed: int):
    hist["eigh_not_converged"].append(failed)
    if failed:
        warnings.warn(f"epoch {epoch}: {failed} eigendecompositions did not converge within the Jacobi "
                      f"sweep cap (eigh_solver={model.eigh_solver!r}); their eigenpairs, outputs and gradients "
                      "are inaccurate. Check the data and parameters for NaN/Inf, or use eigh_solver='cusolver'.",
                      RuntimeWarning)


class _EarlyStopping:
    """Tracks the best monitored loss; stops after ``patience`` epochs without an improvement larger
    than ``min_delta``; with ``restore_best`` keeps a copy of the best parameters and puts it back."""

    def __init__(self, model, patience, min_delta: float, restore_best: bool):
        self.model, self.min_delta, self.restore_best = model, min_delta, restore_best
        self.patience = None if patience is None else checks.positive_int("patience", patience)
        self.best, self.best_theta, self.since_best = math.inf, None, 0

    def update(self, monitored: float, epoch: int, hist: dict):
        if monitored < self.best - self.min_delta:
            self.best, self.since_best, hist["best_epoch"] = monitored, 0, epoch
            if self.restore_best:
                self.best_theta = self.model.theta.copy()
        else:
            self.since_best += 1

    def should_stop(self, hist: dict) -> bool:
        if self.patience is not None and self.since_best >= self.patience:
            hist["stop_reason"] = f"early stopping: no improvement for {self.patience} epochs"
            return True
        return False

    def restore(self, hist: dict):
        if self.restore_best and self.best_theta is not None and hist["best_epoch"] != len(hist["loss"]):
            self.model.theta[...] = self.best_theta


def evaluate(model, X, Y, loss_fn, batch_size: int = 8192) -> float:
    """Mean loss over device arrays (X, Y), in chunks; returns a float (one synchronisation)."""
    xp = model.backend.xp
    total = xp.zeros((), dtype=model.real_dtype)
    for s in range(0, len(X), batch_size):
        out, _ = model.forward(X[s:s + batch_size])
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
