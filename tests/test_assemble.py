"""assemble kernels (kernels/assemble.cu) against the NumPy reference (pmm_gpu/assemble.py):
emulated on the CPU, through the launchers with an emulated loader, and on a GPU when one exists."""
from __future__ import annotations

import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu.ops.assemble import (FIELDS, assemble_backward, assemble_backward_cuda, assemble_forward,
                              assemble_forward_cuda, packed_size)

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # relative to the largest reference entry
NS, BS = (1, 2, 3, 5, 7), (1, 3, 13)


def grids(work: int):
    """(grid, block) pairs: fewer threads than work (grid-stride loop), and more blocks than work."""
    return [(1, 3), (2, 5), (work // 2 + 3, 2)]


def assert_close(out, ref, real):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    assert float(np.abs(out - ref).max(initial=0)) <= TOL[real] * scale


def random_packed(rng, B, n, field, real):
    return rng.standard_normal((B, packed_size(n, field))).astype(real)


def random_cotangent(rng, B, n, field, real):
    """A general (non-Hermitian) Ā, so both triangles of it matter."""
    A = rng.standard_normal((B, n, n))
    if field == "complex":
        A = A + 1j * rng.standard_normal((B, n, n))
    return A.astype(np.result_type(real, np.complex64) if field == "complex" else real)


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("B", BS)
@pytest.mark.parametrize("n", NS)
def test_assemble_emulated(n, B, field, real):
    rng = np.random.default_rng(n * 100 + B)
    emu = emulator.family("assemble")
    Mp = random_packed(rng, B, n, field, real)
    M_ref = assemble_forward(Mp, n, field)
    Abar = random_cotangent(rng, B, n, field, real)
    g_ref = assemble_backward(Abar, n, field)
    fwd_args = (_cuda.CTYPES[Mp.dtype], _cuda.CTYPES[M_ref.dtype])
    bwd_args = (_cuda.CTYPES[g_ref.dtype], _cuda.CTYPES[Abar.dtype])
    for grid, block in grids(B * n * n):
        M = np.full(M_ref.shape, np.nan, M_ref.dtype)
        emu.launch("assemble_forward", fwd_args, grid, block, Mp, M, B, n)
        np.testing.assert_array_equal(M, M_ref)  # pure data movement: exact
        g = np.full(g_ref.shape, np.nan, g_ref.dtype)
        emu.launch("assemble_backward", bwd_args, grid, block, Abar, g, B, n)
        assert_close(g, g_ref, real)


@pytest.fixture
def emulated_loader(monkeypatch):
    """Route the launchers' kernel lookup to the emulator, so they run on NumPy arrays."""
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", FIELDS)
def test_launchers_emulated(field, real, emulated_loader):
    rng = np.random.default_rng(7)
    n, B = 5, 13
    Mp = random_packed(rng, B, n, field, real)
    assert_close(assemble_forward_cuda(Mp, n, field), assemble_forward(Mp, n, field), real)
    assert_close(assemble_forward_cuda(Mp.T.copy().T, n, field), assemble_forward(Mp, n, field), real)
    Abar = random_cotangent(rng, B, n, field, real)
    assert_close(assemble_backward_cuda(Abar, n, field), assemble_backward(Abar, n, field), real)
    other = Abar.real if field == "complex" else Abar + 1j  # Ā of the other field: only its part counts
    assert_close(assemble_backward_cuda(other, n, field), assemble_backward(other, n, field).astype(real), real)
    with pytest.raises(ValueError, match="Mp must be"):
        assemble_forward_cuda(Mp[:, 1:], n, field)


@pytest.mark.gpu
@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("n", [1, 7, 16])
def test_assemble_gpu(n, field, real):
    import cupy

    rng = np.random.default_rng(n)
    B = 1031
    Mp = random_packed(rng, B, n, field, real)
    assert_close(cupy.asnumpy(assemble_forward_cuda(cupy.asarray(Mp), n, field)), assemble_forward(Mp, n, field), real)
    Abar = random_cotangent(rng, B, n, field, real)
    g = assemble_backward_cuda(cupy.asarray(Abar), n, field)
    assert_close(cupy.asnumpy(g), assemble_backward(Abar, n, field), real)
