"""observable kernels (kernels/observable.cu) against the NumPy references observable_forward /
observable_backward (pmm_gpu/observable.py): emulated on the CPU (the barrier kernel also under
ThreadSanitizer), through the launchers with an emulated loader, and on a GPU when one exists."""
from __future__ import annotations

import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu.ops.observable import (FORMS, observable_backward, observable_backward_cuda, observable_forward,
                                observable_forward_cuda)
from test_eigen_vjp import DTYPES, assert_close, random_matrices

# (n, r, K): tiny odd/prime shapes, r = 1 and r = n included
SHAPES = [(1, 1, 1), (2, 1, 3), (3, 2, 2), (5, 3, 1), (5, 5, 3), (7, 2, 5), (7, 7, 2)]


def problem(rng, B, n, r, K, dtype):
    """V_S: r orthonormal eigenvector columns of random Hermitian matrices; D Hermitian; t̄ random."""
    A = random_matrices(rng, (B, n, n), dtype)
    _, V = np.linalg.eigh(A + np.conj(A.swapaxes(1, 2)))
    D = random_matrices(rng, (K, n, n), dtype)
    D = D + np.conj(D.swapaxes(1, 2))
    tbar = rng.standard_normal((B, K)).astype(np.finfo(dtype).dtype)
    return np.ascontiguousarray(V[:, :, n - r:]), D, tbar


def run_forward(emu, V_S, D, form, tile, grid, block):
    B, n, r = V_S.shape
    K = D.shape[0]
    t = np.full((B, K), np.nan, np.finfo(V_S.dtype).dtype)
    DV = np.full((B, K, n, r), np.nan, V_S.dtype)
    Q = np.full((B, K, r, r), np.nan, V_S.dtype)
    emu.launch("observable_forward", _cuda.template_args((t.dtype, V_S.dtype, tile)), grid, block,
               V_S, D, t, DV, Q, B, K, n, r, FORMS.index(form))
    return t, DV, Q


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("n,r,K", SHAPES)
@pytest.mark.parametrize("form", FORMS)
def test_observable_emulated(form, n, r, K, B, dtype):
    rng = np.random.default_rng(100 * n + 10 * r + K)
    emu = emulator.family("observable")
    V_S, D, tbar = problem(rng, B, n, r, K, dtype)
    ref = observable_forward(V_S, D, form)
    ref_bwd = observable_backward(V_S, ref[1], ref[2], tbar, form)
    # forward: fewer blocks than (b, k) pairs and fewer threads than entries, a warp, more blocks than work
    for tile in _cuda.TILES:
        for grid, block in ((1, 3), (max(1, B * K - 1), 32), (B * K + 2, 2)):
            for out, want in zip(run_forward(emu, V_S, D, form, tile, grid, block), ref):
                assert_close(out, want, dtype)
    # backward kernel: V̄_S and, for the transition form, W = 2 t̄ V_S Q in the (K, n, B, r) layout
    real = tbar.dtype
    W_ref = np.moveaxis(V_S[:, None] @ ((2 * tbar)[:, :, None, None] * ref[2]), 0, 2)  # (K, n, B, r)
    for grid, block in ((1, 3), (B * n * r // 2 + 3, 2)):
        Vbar_S = np.full(V_S.shape, np.nan, V_S.dtype)
        W = np.full((K, n, B, r) if form == "transition" else (1,), np.nan, V_S.dtype)
        emu.launch("observable_backward", _cuda.template_args((real, V_S.dtype)), grid, block,
                   V_S, ref[1], ref[2], tbar, Vbar_S, W, B, K, n, r, FORMS.index(form))
        assert_close(Vbar_S, ref_bwd[0], dtype)
        if form == "transition":
            assert_close(W, np.ascontiguousarray(W_ref), dtype)


@pytest.fixture
def emulated_loader(monkeypatch):
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_launchers_emulated(form, dtype, emulated_loader):
    rng = np.random.default_rng(11)
    for n, r, K in ((5, 2, 3), (11, 3, 2), (17, 4, 1)):  # one n per tile
        V_S, D, tbar = problem(rng, 3, n, r, K, dtype)
        out, ref = observable_forward_cuda(V_S, D, form), observable_forward(V_S, D, form)
        for o, want in zip(out, ref):
            assert_close(o, want, dtype)
        tb = np.repeat(tbar[:, :1], K, axis=1)  # a non-contiguous-origin t̄, as the model builds it
        for o, want in zip(observable_backward_cuda(V_S, *ref[1:], tb, form), observable_backward(V_S, *ref[1:], tb, form)):
            assert_close(o, want, dtype)


def test_forward_launcher_falls_back_above_largest_tile(monkeypatch):
    monkeypatch.setattr(_cuda, "get_kernel", lambda *a: pytest.fail("no forward kernel for n > 32"))
    V_S, D, _ = problem(np.random.default_rng(0), 2, 33, 2, 2, np.complex128)
    for o, want in zip(observable_forward_cuda(V_S, D, "transition"), observable_forward(V_S, D, "transition")):
        np.testing.assert_array_equal(o, want)


def tsan_check() -> bool:
    """observable_forward under a ThreadSanitizer build, several (b, k) per block; True when correct."""
    emu = emulator.Emulator(_cuda.kernel_dir() / "observable.cu", _cuda.family_kernels("observable"),
                            sanitize="thread")
    ok = True
    for dtype in (np.float64, np.complex128):
        V_S, D, _ = problem(np.random.default_rng(2), 3, 5, 3, 2, dtype)
        for form in FORMS:
            ref = observable_forward(V_S, D, form)
            for grid, block in ((1, 4), (2, 32)):
                out = run_forward(emu, V_S, D, form, 8, grid, block)
                ok &= all(bool(np.abs(o - w).max() <= 1e-12 * max(1.0, np.abs(w).max())) for o, w in zip(out, ref))
    return ok


def test_observable_forward_under_tsan():
    r = emulator.run_under_tsan("test_observable_kernels")
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n,r,K", [(1, 1, 1), (6, 3, 10), (8, 4, 1), (16, 4, 3), (31, 5, 2), (40, 3, 2)])
def test_observable_gpu(n, r, K, form, dtype):
    import cupy

    V_S, D, tbar = problem(np.random.default_rng(n), 1031, n, r, K, dtype)
    dev = [cupy.asarray(a) for a in (V_S, D, tbar)]
    out, ref = observable_forward_cuda(dev[0], dev[1], form), observable_forward(V_S, D, form)
    for o, want in zip(out, ref):
        assert_close(cupy.asnumpy(o), want, dtype)
    bwd = observable_backward_cuda(dev[0], out[1], out[2], dev[2], form)
    for o, want in zip(bwd, observable_backward(V_S, ref[1], ref[2], tbar, form)):
        assert_close(cupy.asnumpy(o), want, dtype)
