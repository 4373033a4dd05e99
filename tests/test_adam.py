"""adam_step kernel (kernels/adam.cu) against the NumPy reference (pmm_gpu/adam.py): emulated on
the CPU, through the launcher with an emulated loader, and on a GPU when one exists."""
from __future__ import annotations

import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu.ops.adam import adam_step, adam_step_cuda

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # relative to the largest reference entry
HYPER = dict(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8)
STEPS = 3  # several steps, so the moments and the bias corrections both matter


def assert_close(out, ref, dtype):
    assert out.dtype == ref.dtype
    assert float(np.abs(out - ref).max()) <= TOL[dtype] * max(1.0, float(np.abs(ref).max()))


def state(rng, N, dtype):
    """theta, m, v (v >= 0) and one gradient per step."""
    theta, m = rng.standard_normal((2, N))
    v = rng.random(N) * 1e-2
    grads = rng.standard_normal((STEPS, N))
    return [a.astype(dtype) for a in (theta, m, v)], grads.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 2, 7, 13, 97])
def test_adam_emulated(N, dtype):
    rng = np.random.default_rng(N)
    emu = emulator.family("adam")
    (theta, m, v), grads = state(rng, N, dtype)
    for grid, block in [(1, 3), (N // 2 + 3, 2)]:  # grid-stride, and more threads than entries
        ref = [a.copy() for a in (theta, m, v)]
        out = [a.copy() for a in (theta, m, v)]
        scale = np.array([0.7], dtype=dtype)
        for t, g in enumerate(grads, start=1):
            adam_step(*ref[:1], g, *ref[1:], **HYPER, step=t, scale=scale[0])
            bc1, bc2 = 1 - HYPER["beta1"] ** t, 1 - HYPER["beta2"] ** t
            emu.launch("adam_step", (_cuda.CTYPES[np.dtype(dtype)],), grid, block, out[0], g, out[1], out[2], N,
                       HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"], bc1, bc2, scale)
        for o, r in zip(out, ref):
            assert_close(o, r, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.25, "array", "array64"])
def test_launcher_emulated(dtype, scale, monkeypatch):
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)  # the launcher runs on NumPy arrays
    s = {"array": np.array(0.25, dtype), "array64": np.array(0.25)}.get(scale, scale)
    (theta, m, v), grads = state(np.random.default_rng(3), 13, dtype)
    ref = [a.copy() for a in (theta, m, v)]
    for t, g in enumerate(grads, start=1):
        adam_step(ref[0], g, ref[1], ref[2], **HYPER, step=t, scale=s)
        adam_step_cuda(theta, g, m, v, **HYPER, step=t, scale=s)
    for o, r in zip((theta, m, v), ref):
        assert_close(o, r, dtype)


def test_launcher_rejects_mismatched_buffers(monkeypatch):
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)
    x = np.zeros(4)
    with pytest.raises(ValueError, match="m must match theta"):
        adam_step_cuda(x, x.copy(), x[:3].copy(), x.copy(), **HYPER, step=1, scale=1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        adam_step_cuda(np.zeros(8)[::2], x.copy(), x.copy(), x.copy(), **HYPER, step=1, scale=1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_gpu(dtype):
    import cupy

    N = 100_003
    (theta, m, v), grads = state(np.random.default_rng(0), N, dtype)
    dev = [cupy.asarray(a) for a in (theta, m, v)]
    scale = cupy.asarray(0.5, dtype=dtype)
    for t, g in enumerate(grads, start=1):
        adam_step(theta, g, m, v, **HYPER, step=t, scale=dtype(0.5))
        adam_step_cuda(dev[0], cupy.asarray(g), dev[1], dev[2], **HYPER, step=t, scale=scale)
    for o, r in zip(dev, (theta, m, v)):
        assert_close(cupy.asnumpy(o), r, dtype)
