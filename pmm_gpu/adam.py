"""adam: one bias-corrected Adam step on the flat parameter buffer (Kingma & Ba, 2015).

    g ← scale · g                       (scale: global-norm clipping factor, a device scalar)
    m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
    θ ← θ − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)

All arrays are 1-D and updated in place; ``scale`` is a 0-d array so that clipping never needs a
host synchronisation. ``adam_step`` is the NumPy reference; ``adam_step_cuda`` is the fused RawKernel.
"""
from __future__ import annotations


def adam_step(theta, grad, m, v, *, lr: float, beta1: float, beta2: float, eps: float, step: int, scale):
    """In-place Adam update of theta (N,) with grad (N,) and moments m, v (N,); step t >= 1."""
    g = grad * scale
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    theta -= lr * (m / bc1) / ((v / bc2) ** 0.5 + eps)
