"""Losses: each maps (pred, target) to (value, ∂value/∂pred).

pred (B, k) model outputs; target (B, k) (or (B,) integer labels for cross_entropy). The value is a
0-d array on the model's device (never a Python float, so training does not synchronise per step);
the gradient has pred's shape. All losses are means over the batch (and over outputs where the
outputs are independent), so their scale does not depend on the batch size.

A custom loss is any callable with this signature, built from array operators (which work on NumPy
and CuPy alike), e.g.

    def quartic(pred, target):
        d = pred - target
        return (d**4).mean(), 4 * d**3 / d.size
    m.fit(X, Y, loss=quartic)

(``pmm_gpu.array_module(pred)`` gives NumPy or CuPy where a function such as exp is needed.)
"""
from __future__ import annotations

import functools

from ._xp import array_module


def mse(pred, target):
    """Mean squared error: mean((p − t)²); gradient 2 (p − t) / size."""
    d = pred - target
    return (d * d).mean(), (2.0 / d.size) * d


def mae(pred, target):
    """Mean absolute error: mean|p − t|; gradient sign(p − t) / size (0 at p = t)."""
    d = pred - target
    return abs(d).mean(), array_module(d).sign(d) / d.size


def huber(pred, target, delta: float = 1.0):
    """Huber loss: mean of ½d² for |d| ≤ δ, δ(|d| − ½δ) otherwise; gradient clip(d, −δ, δ) / size."""
    xp = array_module(pred)
    d = pred - target
    a = abs(d)
    value = xp.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta)).mean()
    return value, xp.clip(d, -delta, delta) / d.size


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


LOSSES = {"mse": mse, "mae": mae, "huber": huber, "cross_entropy": cross_entropy}


def get_loss(loss, huber_delta: float = 1.0):
    """Resolve a loss name (one of LOSSES) or pass a custom callable through."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable (pred, target) -> (value, grad), got {loss!r}")
    if loss == "huber":
        return functools.partial(huber, delta=huber_delta)
    return LOSSES[loss]
