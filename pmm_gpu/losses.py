"""Losses: each maps (pred, target) to (value, ∂value/∂pred).

pred (B, k) model outputs; target (B, k) (or (B,) integer labels for cross_entropy). The value is a
0-d array on the model's device (never a Python float, so training does not synchronise per step);
the gradient has pred's shape. All losses are means over the batch (and over outputs where the
outputs are independent), so their scale does not depend on the batch size.

Regression losses take per-sample uncertainties σ (``sigma``, broadcastable to pred; ``fit(...,
sigma=σ)``): the residual e = p − t is divided by σ before the loss is applied, which gives the
authors' library's (pyPMM's) *_unc losses: mse with σ = mse_unc mean|e/σ|², mae with σ = mae_unc,
mre with σ = mre_unc mean|e/((t + 1e-4)σ)|, mrd with σ = mrd_unc. sigma=None is σ = 1 (and exactly the
unweighted code path).

A custom loss is any callable with this signature, built from array operators (which work on NumPy
and CuPy alike), e.g.

    def quartic(pred, target):
        d = pred - target
        return (d**4).mean(), 4 * d**3 / d.size
    m.fit(X, Y, loss=quartic)

(``pmm_gpu.array_module(pred)`` gives NumPy or CuPy where a function such as exp is needed; with
``fit(..., sigma=...)`` it is called as loss(pred, target, sigma=σ).)
"""
from __future__ import annotations

import functools

from . import checks
from ._xp import array_module


def mse(pred, target, sigma=None):
    """Mean squared error: mean((p − t)²); gradient 2 (p − t) / size.  With σ: mean((p − t)/σ)²
    (pyPMM's mse_unc), gradient 2 (p − t) / (σ² size)."""
    d = pred - target
    if sigma is None:
        return (d * d).mean(), (2.0 / d.size) * d
    r = d / sigma
    return (r * r).mean(), (2.0 / d.size) * r / sigma


def mae(pred, target, sigma=None):
    """Mean absolute error: mean|p − t|; gradient sign(p − t) / size (0 at p = t).  With σ: mean|(p − t)/σ|
    (pyPMM's mae_unc), gradient sign(p − t) / (σ size)."""
    d = pred - target
    if sigma is None:
        return abs(d).mean(), array_module(d).sign(d) / d.size
    return _abs_mean(d / sigma, 1.0 / sigma)


def huber(pred, target, delta: float = 1.0, sigma=None):
    """Huber loss: mean of ½d² for |d| ≤ δ, δ(|d| − ½δ) otherwise; gradient clip(d, −δ, δ) / size.
    With σ: of d/σ (gradient clip(d/σ, −δ, δ) / (σ size))."""
    xp = array_module(pred)
    d = pred - target
    if sigma is not None:
        d = d / sigma
    a = abs(d)
    value = xp.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta)).mean()
    grad = xp.clip(d, -delta, delta) / d.size
    return value, (grad if sigma is None else grad / sigma)


def pseudo_huber(pred, target, delta: float = 1.0, sigma=None):
    """Pseudo-Huber loss (as pyPMM's pseudo_huber): mean δ²(√(1 + (r/δ)²) − 1), r = (p − t)/σ (σ = 1
    without sigma); gradient r / √(1 + (r/δ)²) / (σ size). Quadratic for |r| ≪ δ, linear for |r| ≫ δ."""
    xp = array_module(pred)
    r = (pred - target) if sigma is None else (pred - target) / sigma
    root = xp.sqrt(1.0 + (r / delta) ** 2)
    grad = r / root / r.size
    return (delta * delta * (root - 1.0)).mean(), (grad if sigma is None else grad / sigma)


def mre(pred, target, sigma=None):
    """Mean relative error, as pyPMM defines it: mean|(p − t) / (t + 1e-4)| (with σ: / ((t + 1e-4)σ),
    pyPMM's mre_unc); gradient sign(r) / ((t + 1e-4)σ size). The 1e-4 guards t = 0 only for t >= 0."""
    den = target + 1e-4 if sigma is None else (target + 1e-4) * sigma
    return _abs_mean((pred - target) / den, 1.0 / den)


def mrd(pred, target, sigma=None):
    """Mean relative difference, as pyPMM defines it (sic: 2(t + p), not (t + p)/2):
    mean|(p − t) / (2(t + p) + 1e-4)| (with σ: / (… · σ), pyPMM's mrd_unc). With D = 2(t + p) + 1e-4 and
    r = (p − t)/(Dσ): ∂r/∂p = (D − 2(p − t)) / (D²σ) = (4t + 1e-4) / (D²σ); gradient sign(r) ∂r/∂p / size."""
    den = 2.0 * (target + pred) + 1e-4
    s = 1.0 if sigma is None else sigma
    return _abs_mean((pred - target) / (den * s), (4.0 * target + 1e-4) / (den * den * s))


def _abs_mean(r, drdp):
    """mean|r| and its gradient sign(r)·∂r/∂p / size (0 at r = 0)."""
    return abs(r).mean(), array_module(r).sign(r) * drdp / r.size


def cross_entropy(logits, labels):
    """Softmax cross-entropy over the outputs with integer class labels (B,): mean −log softmax(z)_y.

    Gradient (softmax(z) − onehot(y)) / B. Uses the max-shifted log-sum-exp for stability.
    """
    xp = array_module(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    rows = xp.arange(z.shape[0])
    lab = labels.reshape(-1).astype(xp.int64)
    value = -logp[rows, lab].mean()
    grad = xp.exp(logp)
    grad[rows, lab] -= 1.0
    return value, grad / z.shape[0]


LOSSES = {"mse": mse, "mae": mae, "huber": huber, "pseudo_huber": pseudo_huber, "mre": mre, "mrd": mrd,
          "cross_entropy": cross_entropy}


def get_loss(loss, huber_delta: float = 1.0, name: str = "loss"):
    """Resolve a loss name (one of LOSSES) or pass a custom callable through; huber_delta is δ of
    "huber" and "pseudo_huber"; ``name``: the argument named in the error."""
    if callable(loss):
        return checked_loss(loss, name)
    if loss not in LOSSES:
        raise ValueError(f"{name} must be one of {sorted(LOSSES)} or a callable (pred, target) -> (value, grad), "
                         f"got {loss!r}")
    if loss in ("huber", "pseudo_huber"):
        return functools.partial(LOSSES[loss], delta=checks.finite_float("huber_delta", huber_delta, positive=True))
    return LOSSES[loss]


def checked_loss(fn, name: str = "loss"):
    """A custom loss whose results are checked where a wrong one would fail obscurely later: it must return
    (value, grad) with a scalar value and grad of pred's shape. Shapes only: nothing is read from the device."""
    @functools.wraps(fn)
    def loss(pred, target, **kw):
        out = fn(pred, target, **kw)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"{name}: the custom loss {_name(fn)} must return a pair (value, grad), "
                            f"got {type(out).__name__}")
        value, grad = out
        if getattr(grad, "shape", None) != pred.shape:
            raise ValueError(f"{name}: the custom loss {_name(fn)} returned a gradient of shape "
                             f"{getattr(grad, 'shape', type(grad).__name__)}; expected pred's shape {pred.shape}")
        if getattr(value, "ndim", 0) != 0 or not hasattr(value, "__float__"):
            raise ValueError(f"{name}: the custom loss {_name(fn)} returned a value of shape "
                             f"{getattr(value, 'shape', type(value).__name__)}; expected a scalar")
        return value, grad

    return loss


def _name(fn) -> str:
    return repr(getattr(fn, "__qualname__", None) or type(fn).__name__)


def with_sigma(loss_fn, k: int):
    """The loss on targets packed with their σ, (B, 2k) = [t | σ]: loss_fn(pred, t, sigma=σ). The trainer
    packs them so that its batch indexing carries σ along with the targets."""
    def packed_loss(pred, packed):
        return loss_fn(pred, packed[:, :k], sigma=packed[:, k:])

    return packed_loss
