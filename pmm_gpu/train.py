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
import signal
import sys
import threading
import time
import warnings
from functools import partial

import numpy as np

from . import checks
from .distributed import abort_on_error, data_parallel
from .losses import get_loss, with_sigma
from .optim import Adam


@abort_on_error
def fit(model, X, Y, *, epochs: int = 100, batch_size: int = 256, lr: float = 1e-2, loss="mse",
        huber_delta: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        clip_norm: float | None = None, weight_decay: float = 0.0, schedule="constant", validation_data=None,
        patience: int | None = None, min_delta: float = 0.0, restore_best: bool = True,
        seed: int | None = 0, verbose: bool = True, callback=None, micro_batch=None, distributed=None,
        sigma=None, val_loss=None, target_loss: float | None = None, geometry: str = "real") -> dict:
    """Train ``model`` on (X, Y) with mini-batch Adam; returns the history dict (also ``model.history``).

    epochs, batch_size: passes over the data and samples per step (the last batch may be partial), reshuffled
        every epoch from ``seed``; micro_batch (int, "auto"): a step's memory bound (PMM.device_loss_and_grad).
    lr, betas, eps, clip_norm, weight_decay, schedule, geometry: the optimizer (pmm_gpu.optim.Adam; weight_decay
        decoupled, AdamW; schedule "constant", "cosine" or a callable (step, total_steps) -> factor; geometry
        "real" = per-parameter Adam, "complex" = pyPMM's complex Adam, one 2nd moment per complex entry).
    loss, val_loss: training and validation loss (val_loss None: the same): losses.LOSSES names ("mse", "mae",
        "huber"/"pseudo_huber" with huber_delta, "mre", "mrd", "cross_entropy") or callables; sigma: per-sample
        σ (N,) or (N, k) > 0 dividing the residuals (losses.py; validation_data then (Xv, Yv, σv)).
    validation_data (Xv, Yv) is evaluated after every epoch. Early stopping monitors the validation loss (the
        training loss without validation data): stop after ``patience`` epochs without an improvement larger
        than ``min_delta``, or once <= ``target_loss``; ``restore_best`` puts the best parameters back.
    verbose: progress line; callback(epoch, history) per epoch: returning True or raising StopTraining stops.
    distributed: data parallelism over MPI ranks (pmm_gpu/distributed.py): None = on when launched by
        mpiexec/mpirun/srun with several ranks; True; False. Each rank trains on its shard of every global batch
        (the steps of one process); progress on rank 0; callback on every rank (distributed.checkpoint: rank 0).
    Divergence stops with a warning, the epoch's start restored; Ctrl-C after the current step, the best kept
    (``_guarded_epoch``). history["eigh_not_converged"][e]: failed eigendecompositions of epoch e, also warned.
    """
    epochs, batch_size = checks.positive_int("epochs", epochs), checks.positive_int("batch_size", batch_size)
    loss_fn, val_fn, (Xd, Yd, val) = _losses_and_data(model, X, Y, validation_data, loss, huber_delta, sigma, val_loss)
    opt = Adam(model, lr=lr, betas=betas, eps=eps, clip_norm=clip_norm, weight_decay=weight_decay,
               schedule=schedule, total_steps=epochs * -(-len(Xd) // batch_size), geometry=geometry)
    stop = _EarlyStopping(model, patience, min_delta, restore_best, target_loss)
    micro_batch = check_step_memory(model, min(batch_size, len(Xd)), micro_batch)  # "auto" resolved once
    rng = np.random.default_rng(checks.seed("seed", seed))
    dp = data_parallel(model, distributed, Xd, Yd, val, rng, epochs, batch_size)  # None: this process alone
    with _SigintStop(enabled=dp is None) as sigint:
        train_epoch, evaluate_fn = (dp.train_epoch, dp.evaluate) if dp else (partial(_train_epoch, stop=sigint), evaluate)
        bar = _Progress(epochs, verbose and (dp is None or dp.rank == 0))
        hist = {"loss": [], "val_loss": [], "lr": [], "epoch_time": [], "samples_per_s": [],
                "eigh_not_converged": [], "best_epoch": None, "stop_reason": "epochs"}
        for epoch in range(1, epochs + 1):
            epoch_loss, dt = _guarded_epoch(model, opt, stop, hist, epoch, sigint, dp is not None, lambda: train_epoch(
                model, opt, Xd, Yd, batch_size, rng, loss_fn, micro_batch))  # one synchronisation
            if epoch_loss is None:  # diverged or interrupted: hist["stop_reason"] says which
                break
            failed = int(model.eigh_failures)  # already computed: a copy, not a wait
            _record(hist, epoch_loss, opt, len(Xd), dt)
            monitored = epoch_loss
            if val is not None:
                monitored = _validate(evaluate_fn, model, val, val_fn, _eval_chunk(model, batch_size, micro_batch))
                hist["val_loss"].append(monitored)
                failed = int(model.eigh_failures)  # evaluate synchronised: now with the validation pass
            _note_unconverged(model, hist, epoch, failed)
            stop.update(monitored, epoch, hist)
            bar.update(epoch, hist)
            if _callback_stops(callback, epoch, hist) or stop.should_stop(hist):
                break
    bar.close()
    stop.restore(hist)
    model.history = hist
    return hist


class StopTraining(Exception):
    """Raise it in a ``fit`` callback to stop training after the current epoch (its message, if any, goes
    into history["stop_reason"]); returning True from the callback does the same."""


def _callback_stops(callback, epoch: int, hist: dict) -> bool:
    """Run callback(epoch, hist); True (and history["stop_reason"] set) when it asks to stop."""
    if callback is None:
        return False
    try:
        stop, why = callback(epoch, hist) is True, "callback returned True"
    except StopTraining as e:
        stop, why = True, f"callback raised StopTraining{f': {e}' if str(e) else ''}"
    if stop:
        hist["stop_reason"] = why
    return stop


def _guarded_epoch(model, opt, stop, hist: dict, epoch: int, sigint, distributed: bool, run_epoch):
    """run_epoch() (one pass, one synchronisation) under the divergence guard: (epoch loss, seconds), or
    (None, None) when training stops here, hist["stop_reason"] set. Divergence, a non-finite loss or non-finite
    parameters after the epoch (one device reduction) or LinAlgError (LAPACK refusing NaN parameters
    mid-epoch), restores the epoch's starting parameters and optimizer state and warns; any other error
    restores them too and propagates; a Ctrl-C during the epoch keeps the best parameters so far."""
    t0, snapshot = time.perf_counter(), opt.snapshot()
    try:
        epoch_loss = run_epoch()
        seconds = time.perf_counter() - t0
        _check_finite(model, epoch_loss, epoch)
    except (_Diverged, np.linalg.LinAlgError) as e:
        if distributed and not isinstance(e, _Diverged):
            raise  # one rank alone: abort_on_error ends the job
        _diverged(opt, snapshot, hist, epoch, e, int(model.eigh_failures))
        return None, None
    except BaseException:  # e.g. a custom loss or schedule failing, a second Ctrl-C
        opt.restore(snapshot)
        raise
    if sigint.requested:
        _interrupted(model, stop, hist, epoch)
        return None, None
    return epoch_loss, seconds


class _Diverged(Exception):
    """Internal: the epoch ended with a non-finite loss or non-finite parameters."""


def _check_finite(model, epoch_loss: float, epoch: int):
    """_Diverged unless the epoch's loss and the parameters after its last step are finite (the latter
    one device reduction per epoch: a NaN from the last update leaves the measured loss finite)."""
    if not math.isfinite(epoch_loss):
        raise _Diverged(f"non-finite training loss in epoch {epoch}")
    if not bool(model.backend.xp.isfinite(model.theta).all()):
        raise _Diverged(f"non-finite parameters after the last step of epoch {epoch}")


def _diverged(opt, snapshot, hist: dict, epoch: int, cause: Exception, failed: int):
    """Divergence (``cause``: _Diverged, or LinAlgError from an eigensolver fed non-finite parameters):
    restore the epoch's starting parameters and optimizer state, set the stop reason, and warn."""
    opt.restore(snapshot)
    why = (str(cause) if isinstance(cause, _Diverged)
           else f"the eigensolver failed in epoch {epoch} ({cause}): non-finite parameters")
    hist["stop_reason"] = f"diverged: {why}"
    unconverged = f" ({failed} eigendecompositions did not converge)" if failed else ""
    warnings.warn(f"training diverged ({why}{unconverged}); stopped and restored the parameters from the "
                  f"start of that epoch. Try a smaller lr or clip_norm.", RuntimeWarning)


def _interrupted(model, stop, hist: dict, epoch: int):
    """Ctrl-C: the step in progress has finished; keep the best parameters so far (restore_best), else
    the current ones (finite: checked with the epoch)."""
    hist["stop_reason"] = f"interrupted (SIGINT) in epoch {epoch}"
    if stop.restore_best and stop.best_theta is not None:
        model.theta[...] = stop.best_theta


class _SigintStop:
    """While ``fit`` runs in the main thread, the first Ctrl-C (SIGINT) only sets ``requested``: the epoch
    ends after the step in progress and fit returns; a second Ctrl-C raises KeyboardInterrupt as usual.
    Installed only over Python's default handler (not where SIGINT is ignored or handled by the
    application) and not for distributed training (the ranks would leave their step loops apart)."""

    def __init__(self, enabled: bool):
        self.enabled, self.requested, self.previous = enabled, False, None

    def __enter__(self):
        if (self.enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)  # a second Ctrl-C interrupts at once

    def __exit__(self, *exc):
        if self.previous is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self.previous)
        return False


def check_step_memory(model, batch: int, micro_batch=None):
    """Before training: a ValueError when a step of ``batch`` samples cannot fit in the backend's free
    memory (``free_memory``) even by a lower bound, M(x) and its eigenvectors V (two n×n matrices per
    sample; measured: 3.3–3.7 on the CPU, n = 8–16), and a RuntimeWarning when the conservative estimate
    ``step_bytes_per_sample`` exceeds it. With ``micro_batch`` a step holds one micro-batch at a time.
    Returns ``micro_batch`` with "auto" resolved to its size, so that the training loop does not query
    the free memory (a driver call on CUDA) at every step."""
    if micro_batch == "auto":
        micro_batch = model.micro_batch_size(micro_batch, batch)
    m = min(batch, model.micro_batch_size(micro_batch, batch))
    try:
        free = model.backend.free_memory()
    except Exception:  # the backend cannot tell (e.g. the CUDA emulation of the tests): no check
        return micro_batch
    elem = np.result_type(model.real_dtype, np.complex64 if model.field == "complex" else model.real_dtype).itemsize
    floor, estimate = 2 * model.n ** 2 * elem * m, model.step_bytes_per_sample() * m
    step = f"a training step of {m} samples" + (f" (a micro-batch of batch_size={batch})" if m < batch else "")
    if floor > free:
        raise ValueError(f"batch_size={batch}: {step} needs at least {floor / 2**30:.2f} GiB (two {model.n}×{model.n} "
                         f"matrices per sample) but the {model.backend.name} backend has {free / 2**30:.2f} GiB "
                         "free; use a smaller batch_size or micro_batch='auto'")
    if estimate > free:
        warnings.warn(f"batch_size={batch}: {step} may need up to {estimate / 2**30:.2f} GiB, more than the "
                      f"{free / 2**30:.2f} GiB free; consider micro_batch='auto'", RuntimeWarning, stacklevel=3)
    return micro_batch


def _validate(evaluate_fn, model, val, val_fn, chunk: int) -> float:
    """The validation loss; a clear ValueError when M(x) of the validation inputs overflows."""
    try:
        return evaluate_fn(model, *val, val_fn, batch_size=chunk)
    except np.linalg.LinAlgError:
        Xv = model.backend.to_numpy(val[0])
        raise checks.overflow_error("fit: validation_data", Xv, "the eigensolver failed") from None


def _record(hist: dict, epoch_loss: float, opt, n_samples: int, dt: float):
    hist["loss"].append(epoch_loss)
    hist["lr"].append(opt.lr_at(opt.steps_taken - 1))
    hist["epoch_time"].append(dt)
    hist["samples_per_s"].append(n_samples / dt)


def _losses_and_data(model, X, Y, validation_data, loss, huber_delta, sigma, val_loss):
    """(training loss, validation loss, (Xd, Yd, (Xv, Yv) or None)). With sigma, the targets on the device
    are [Y | σ] (B, 2k) and the losses ``losses.with_sigma`` of the named ones, so that the batch
    indexing of the epoch carries σ along; validation_data must then be (Xv, Yv, σv)."""
    loss_fn = get_loss(loss, huber_delta)
    val_fn = loss_fn if val_loss is None else get_loss(val_loss, huber_delta, "val_loss")
    has_val_sigma = isinstance(validation_data, (tuple, list)) and len(validation_data) == 3
    if sigma is None:
        if has_val_sigma:
            raise ValueError("validation_data has a sigma_val but fit got no sigma; pass sigma= or (X_val, Y_val)")
        return loss_fn, val_fn, _device_data(model, X, Y, validation_data, loss)
    if loss == "cross_entropy":
        raise ValueError("sigma: per-sample uncertainties need a regression loss, not cross_entropy")
    if validation_data is not None and not has_val_sigma:
        raise ValueError("validation_data must be (X_val, Y_val, sigma_val) when sigma is given")
    Xd, Yd, val = _device_data(model, X, Y, validation_data and validation_data[:2], loss)
    xp, k = model.backend.xp, Yd.shape[1]
    Yd = xp.concatenate([Yd, sigma_array(model, sigma, Yd.shape, "sigma")], axis=1)
    if val is not None:
        val = (val[0], xp.concatenate([val[1], sigma_array(model, validation_data[2], val[1].shape, "sigma_val")], 1))
    return with_sigma(loss_fn, k), with_sigma(val_fn, k), (Xd, Yd, val)


def sigma_array(model, sigma, shape, name: str = "sigma"):
    """σ (N,) or (N, k), finite and > 0, broadcast to the targets' shape (N, k), on the model's device."""
    s = checks.numeric_array(name, sigma, (1, 2), model.real_dtype)
    s = s.reshape(len(s), -1)
    if len(s) != shape[0] or s.shape[1] not in (1, shape[1]) or not np.all(s > 0):
        raise ValueError(f"{name} must be > 0 of shape ({shape[0]},) or {tuple(shape)}, got {np.shape(sigma)}")
    return model.backend.asarray(np.ascontiguousarray(np.broadcast_to(s, shape)))


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


def _train_epoch(model, opt, Xd, Yd, batch_size: int, rng, loss_fn, micro_batch=None, stop=None) -> float:
    """One pass over the data in a fresh random order; the mean training loss (one synchronisation).
    Each step's gradient is accumulated over micro-batches of ``micro_batch`` samples (None: unsplit).
    stop: a _SigintStop; once it is ``requested`` the pass ends after the step in progress."""
    N = len(Xd)
    perm = model.backend.asarray(rng.permutation(N))  # host RNG: identical batches on every backend
    total = model.backend.xp.zeros((), dtype=model.real_dtype)
    model.eigh_failures.fill(0)  # counted on the device by every forward pass of the epoch
    for s in range(0, N, batch_size):
        idx = perm[s:s + batch_size]
        total += model.device_loss_and_grad(Xd[idx], Yd[idx], loss_fn, micro_batch=micro_batch) * len(idx)
        opt.step()
        if stop is not None and stop.requested:  # a host flag: no synchronisation
            break
    return float(total) / N


def _note_unconverged(model, hist, epoch: int, failed: int):
    hist["eigh_not_converged"].append(failed)
    if failed:
        warnings.warn(f"epoch {epoch}: {failed} eigendecompositions did not converge (Jacobi: sweep cap missed; "
                      f"cuSOLVER: failed the sampled residual/orthogonality probe; eigh_solver="
                      f"{model.eigh_solver!r}); their eigenpairs, outputs and gradients "
                      "are inaccurate. Check the data and parameters for NaN/Inf, or try the other eigh_solver.",
                      RuntimeWarning)


class _EarlyStopping:
    """Tracks the best monitored loss; stops after ``patience`` epochs without an improvement larger
    than ``min_delta``; with ``restore_best`` keeps a copy of the best parameters and puts it back."""

    def __init__(self, model, patience, min_delta: float, restore_best: bool, target_loss=None):
        self.model, self.restore_best = model, restore_best
        self.min_delta = checks.finite_float("min_delta", min_delta, minimum=0.0)
        self.patience = None if patience is None else checks.positive_int("patience", patience)
        self.target_loss = None if target_loss is None else checks.finite_float("target_loss", target_loss)
        self.best, self.best_theta, self.since_best, self.last = math.inf, None, 0, math.inf

    def update(self, monitored: float, epoch: int, hist: dict):
        self.last = monitored
        if monitored < self.best - self.min_delta:
            self.best, self.since_best, hist["best_epoch"] = monitored, 0, epoch
            if self.restore_best:
                self.best_theta = self.model.theta.copy()
        else:
            self.since_best += 1

    def should_stop(self, hist: dict) -> bool:
        if self.target_loss is not None and self.last <= self.target_loss:
            hist["stop_reason"] = f"target_loss {self.target_loss:g} reached"
            return True
        if self.patience is not None and self.since_best >= self.patience:
            hist["stop_reason"] = f"early stopping: no improvement for {self.patience} epochs"
            return True
        return False

    def restore(self, hist: dict):
        if self.restore_best and self.best_theta is not None and hist["best_epoch"] != len(hist["loss"]):
            self.model.theta[...] = self.best_theta


def _eval_chunk(model, batch_size: int, micro_batch) -> int:
    """Validation chunk: max(batch_size, 8192) samples, at most the training step's micro-batch bound."""
    return min(max(batch_size, 8192), model.micro_batch_size(micro_batch, max(batch_size, 8192)))


def evaluate(model, X, Y, loss_fn, batch_size: int = 8192) -> float:
    """Mean loss over device arrays (X, Y), in chunks; returns a float (one synchronisation)."""
    xp = model.backend.xp
    total = xp.zeros((), dtype=model.real_dtype)
    for s in range(0, len(X), batch_size):
        out = model.device_predict(X[s:s + batch_size])
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
