"""eigen_vjp kernels (kernels/eigen_vjp.cu) against the NumPy references eigh_vjp / eigvals_vjp
(pmm_gpu/eigen.py): emulated on the CPU (also under ThreadSanitizer), through the launchers with an
emulated loader, and on a GPU when one exists."""
from __future__ import annotations


import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu.ops.eigh import eigh_vjp, eigh_vjp_cuda, eigvals_vjp, eigvals_vjp_cuda

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # relative to the largest reference entry
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
NS, BS = (1, 2, 3, 5, 7), (1, 3)


def real_of(dtype):
    return np.finfo(dtype).dtype.type


def assert_close(out, ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    err = float(np.abs(out - ref).max(initial=0))
    assert err <= TOL[real_of(dtype)] * scale, f"max error {err:.3e} (scale {scale:.3e})"


def random_matrices(rng, shape, dtype):
    a = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def eigenpairs(rng, B, n, dtype, degenerate=False):
    """w, V of random Hermitian matrices; with ``degenerate``, eigenvalues (1, 1, 2, 3, ...)."""
    A = random_matrices(rng, (B, n, n), dtype)
    A = A + np.conj(A.swapaxes(1, 2))
    if degenerate:  # same eigenvectors, an exactly degenerate pair
        _, U = np.linalg.eigh(A)
        lam = np.r_[1.0, np.arange(1, n)].astype(real_of(dtype))
        A = ((U * lam[None, None]) @ np.conj(U.swapaxes(1, 2))).astype(dtype)
    return np.linalg.eigh(A)


def problem(rng, B, n, r, dtype, degenerate=False):
    """w, V as ``eigenpairs``, r distinct selected columns idx (B, r) in random order, random V̄_S (B, n, r)."""
    w, V = eigenpairs(rng, B, n, dtype, degenerate)
    idx = np.stack([rng.permutation(n)[:r] for _ in range(B)]).astype(np.int64)
    return w, V, idx, random_matrices(rng, (B, n, r), dtype)


def launches(B, n):
    """(grid, block): fewer threads than entries and fewer blocks than samples (both loops stride),
    one warp-sized block per sample, and more blocks than samples."""
    return [(1, 3), (max(1, B - 1), 32), (B + 2, 5)]


def run_eigh_vjp(emu, w, V, idx, Vbar_S, eta, tile, grid, block):
    B, n, r = *V.shape[:2], idx.shape[1]
    out = np.full(V.shape, np.nan, V.dtype)
    emu.launch("eigh_vjp", _cuda.template_args((w.dtype, V.dtype, tile)), grid, block,
               w, V, idx, Vbar_S, out, B, n, r, eta)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BS)
@pytest.mark.parametrize("n", NS)
def test_eigh_vjp_emulated(n, B, dtype):
    rng = np.random.default_rng(10 * n + B)
    emu = emulator.family("eigen_vjp")
    for r in range(1, n + 1):
        for eta, degenerate in ((0.0, False), (1e-3, False), (0.3, True)):
            w, V, idx, Vbar_S = problem(rng, B, n, r, dtype, degenerate)
            ref = eigh_vjp(w, V, idx, Vbar_S, eta)
            for tile in (t for t in _cuda.TILES if n <= t):
                for grid, block in launches(B, n):
                    assert_close(run_eigh_vjp(emu, w, V, idx, Vbar_S, eta, tile, grid, block), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BS)
@pytest.mark.parametrize("n", NS)
def test_eigvals_vjp_emulated(n, B, dtype):
    rng = np.random.default_rng(10 * n + B)
    emu = emulator.family("eigen_vjp")
    w, V = eigenpairs(rng, B, n, dtype)
    for k in sorted({1, (n + 1) // 2, n}):
        V_S = np.ascontiguousarray(V[:, :, n - k:])
        ybar = rng.standard_normal((B, k)).astype(w.dtype)
        ref = eigvals_vjp(V_S, ybar)
        for grid, block in ((1, 3), (B * n * n // 2 + 3, 2)):
            out = np.full(ref.shape, np.nan, ref.dtype)
            emu.launch("eigvals_vjp", _cuda.template_args((w.dtype, V.dtype)), grid, block, V_S, ybar, out, B, n, k)
            assert_close(out, ref, dtype)


@pytest.fixture
def emulated_loader(monkeypatch):
    """Route the launchers' kernel lookup to the emulator, so they run on NumPy arrays."""
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)


@pytest.mark.parametrize("dtype", DTYPES)
def test_launchers_emulated(dtype, emulated_loader):
    rng = np.random.default_rng(5)
    for n in (5, 9, 17):  # one n per tile
        w, V = eigenpairs(rng, 3, n, dtype)
        idx = np.argsort(rng.standard_normal((3, n)), axis=1)[:, 1:4].astype(np.int32)  # non-contiguous, int32
        Vbar_S = random_matrices(rng, (3, n, 6), dtype)[:, :, ::2]  # non-contiguous
        for eta in (1e-4, 0.0):
            assert_close(eigh_vjp_cuda(w, V, idx, Vbar_S, eta), eigh_vjp(w, V, idx, Vbar_S, eta), dtype)
        V_S, ybar = V[:, :, 1:3], rng.standard_normal((3, 2)).astype(w.dtype)  # non-contiguous V_S
        assert_close(eigvals_vjp_cuda(V_S, ybar), eigvals_vjp(V_S, ybar), dtype)


def test_eigh_vjp_launcher_falls_back_above_largest_tile(emulated_loader, monkeypatch):
    def no_kernel(*a):
        raise AssertionError("no kernel for n > 32")

    monkeypatch.setattr(_cuda, "get_kernel", no_kernel)
    w, V, idx, Vbar_S = problem(np.random.default_rng(0), 2, 33, 4, np.complex128)
    np.testing.assert_array_equal(eigh_vjp_cuda(w, V, idx, Vbar_S, 1e-3), eigh_vjp(w, V, idx, Vbar_S, 1e-3))


# --- ThreadSanitizer: the barrier kernel has no data race between its phases -----------------------
def tsan_check() -> bool:
    """eigh_vjp under a ThreadSanitizer build, with several samples per block (the loop-carried
    reuse of the shared tiles) and fewer threads than entries; True when it matches the reference."""
    emu = emulator.Emulator(_cuda.kernel_dir() / "eigen_vjp.cu", _cuda.family_kernels("eigen_vjp"), sanitize="thread")
    ok = True
    for dtype in (np.float64, np.complex128):
        w, V, idx, Vbar_S = problem(np.random.default_rng(1), 3, 5, 3, dtype)
        ref = eigh_vjp(w, V, idx, Vbar_S, 1e-3)
        for grid, block in ((1, 7), (2, 32)):
            out = run_eigh_vjp(emu, w, V, idx, Vbar_S, 1e-3, 8, grid, block)
            ok &= bool(np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max())
    return ok


def test_eigh_vjp_under_tsan():
    r = emulator.run_under_tsan("test_eigen_vjp")
    assert r.returncode == 0, r.stderr[-4000:]


# --- on a GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 8, 16, 23, 32, 40])
def test_eigen_vjp_gpu(n, dtype):
    import cupy

    rng = np.random.default_rng(n)
    w, V = eigenpairs(rng, 1031, n, dtype)
    for r in sorted({1, max(1, n // 4), n}):
        idx = np.stack([rng.permutation(n)[:r] for _ in range(1031)])
        Vbar_S = random_matrices(rng, (1031, n, r), dtype)
        d = [cupy.asarray(a) for a in (w, V, idx, Vbar_S)]
        for eta in (1e-4, 0.0):
            assert_close(cupy.asnumpy(eigh_vjp_cuda(*d, eta)), eigh_vjp(w, V, idx, Vbar_S, eta), dtype)
    k = max(1, n // 2)
    ybar = rng.standard_normal((1031, k)).astype(w.dtype)
    out = eigvals_vjp_cuda(cupy.asarray(V)[:, :, :k], cupy.asarray(ybar))
    assert_close(cupy.asnumpy(out), eigvals_vjp(V[:, :, :k], ybar), dtype)
