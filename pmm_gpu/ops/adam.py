"""adam: one bias-corrected Adam step on the flat parameter buffer (Kingma & Ba, 2015).

    g ← scale · g                       (scale: global-norm clipping factor, a device scalar)
    m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
    θ ← θ − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)

All arrays are 1-D and updated in place; ``scale`` is a 0-d array so that clipping never needs a
host synchronisation. ``adam_step`` is the NumPy reference; ``adam_step_cuda`` is the fused RawKernel
(kernels/adam.cu). The optimizer around it (state, clipping, schedules, weight decay) is pmm_gpu/optim.py.
"""
from __future__ import annotations

from .. import _cuda
from .._xp import array_module


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


def adam_step_cuda(theta, grad, m, v, *, lr: float, beta1: float, beta2: float, eps: float, step: int, scale):
    """Fused RawKernel version of adam_step (kernels/adam.cu), same arguments, one launch.

    theta, m, v (N,) are updated in place and must be C-contiguous with grad's dtype (float32/64).
    ``scale`` is a Python number or a 1-element device array; an array is read by the kernel, never
    by the host, so a clipping factor computed on the device costs no synchronisation.
    """
    xp = array_module(theta)
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if a.dtype != theta.dtype or a.size != theta.size:
            raise ValueError(f"{name} must match theta ({theta.dtype}, {theta.size}); got ({a.dtype}, {a.size})")
    for name, a in (("theta", theta), ("m", m), ("v", v)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} is updated in place and must be C-contiguous")
    grad = xp.ascontiguousarray(grad)
    if isinstance(scale, xp.ndarray):
        if scale.size != 1:
            raise ValueError(f"scale must hold one value; got shape {scale.shape}")
        scale = scale.astype(theta.dtype, copy=False)
    else:
        scale = xp.full((), float(scale), dtype=theta.dtype)  # a fill kernel, no host-to-device copy
    grid, block = _cuda.grid_for(theta.size)
    kernel = _cuda.get_kernel("adam_step", theta.dtype)
    kernel(grid, block, (theta, grad, m, v, int(theta.size), float(lr), float(beta1), float(beta2),
                         float(eps), float(1 - beta1**step), float(1 - beta2**step), scale))
