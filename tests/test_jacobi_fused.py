"""The Jacobi kernels' selected-eigenvector output and the fused AO-PMM observable kernel (issue 7,
fusion), emulated on the CPU against numpy.linalg.eigh and the NumPy ``observable_forward``.

Selected columns: V (B, n, k) must be the columns ``select_indices(w, k, which)`` of the full sorted
output — bit for bit, since the arithmetic is the same — and, gauge-invariantly, their projectors
v vᴴ must match LAPACK's for the same indices (random spectra: well separated levels).
"""
from __future__ import annotations


import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu.ops.assemble import assemble_forward, packed_size
from pmm_gpu.ops.eigh import WHICH, select_indices
from pmm_gpu.ops.jacobi import assemble_eigh_jacobi_cuda, eigh_jacobi_cuda, assemble_eigh_observable_jacobi_cuda
from pmm_gpu.ops.observable import FORMS, observable_forward

TOL = {np.float32: 1e-4, np.float64: 1e-10}  # relative, norm-wise (projectors, observables)
ELEM = {("real", np.float32): np.float32, ("real", np.float64): np.float64,
        ("complex", np.float32): np.complex64, ("complex", np.float64): np.complex128}
FIELDS_REALS = [(f, r) for f in ("real", "complex") for r in (np.float32, np.float64)]


@pytest.fixture(autouse=True)
def emulated_loader(monkeypatch):
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)


def problem(rng, B, n, p, field, real):
    """x (B, p), Pp (p + 1, P) and the assembled M(x) in float64 (the oracle's input)."""
    x = rng.uniform(-1, 1, (B, p)).astype(real)
    Pp = rng.standard_normal((p + 1, packed_size(n, field))).astype(real)
    X1 = np.concatenate([np.ones((B, 1)), x.astype(np.float64)], axis=1)
    return x, Pp, assemble_forward(X1 @ Pp.astype(np.float64), n, field)


def projectors(V):
    """v_s v_sᴴ of every column: (B, n, k) -> (B, k, n, n); gauge invariant."""
    V = V.astype(np.complex128)
    return np.einsum("bis,bjs->bsij", V, V.conj())


@pytest.mark.parametrize("field,real", FIELDS_REALS)
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_selected_columns(n, which, field, real):
    rng = np.random.default_rng([n, WHICH.index(which), field == "complex", real == np.float64])
    x, Pp, M = problem(rng, 4, n, 2, field, real)
    w_all, V_all, _ = assemble_eigh_jacobi_cuda(x, Pp, n, field, threads=5)
    wr, Vr = np.linalg.eigh(M)
    for k in sorted({0, 1, (n + 1) // 2, n}):
        w, V, sweeps = assemble_eigh_jacobi_cuda(x, Pp, n, field, k=k, which=which, threads=5)
        assert V.shape == (4, n, k) and V.dtype == ELEM[field, real] and np.all(sweeps >= 0)
        np.testing.assert_array_equal(w, w_all)
        idx = select_indices(w, k, which)
        np.testing.assert_array_equal(V, np.take_along_axis(V_all, idx[:, None, :], axis=2))
        if k:
            idx_r = select_indices(wr, k, which)
            np.testing.assert_array_equal(idx, idx_r)  # same selection as on LAPACK's eigenvalues
            P, Pr = projectors(V), projectors(np.take_along_axis(Vr, idx_r[:, None, :], axis=2))
            assert np.abs(P - Pr).max() <= TOL[real] * 10
        # the unfused kernel selects the same way
        w2, V2, _ = eigh_jacobi_cuda(M.astype(ELEM[field, real]), k=k, which=which, threads=3)
        w2_all, V2_all, _ = eigh_jacobi_cuda(M.astype(ELEM[field, real]), threads=3)
        np.testing.assert_array_equal(V2, np.take_along_axis(V2_all, select_indices(w2, k, which)[:, None, :], axis=2))


@pytest.mark.parametrize("which", WHICH)
def test_selection_ties_follow_numpy(which):
    """|λ| ties (λ = ±1, ±2) resolve as numpy's stable argsort does; exact diagonal input."""
    d = np.array([1.0, -1.0, 2.0, -2.0, 0.0, 3.0, -3.0])
    M = np.diag(d)[None]
    w_all, V_all, _ = eigh_jacobi_cuda(M, threads=4)
    for k in range(8):
        w, V, _ = eigh_jacobi_cuda(M, k=k, which=which, threads=4)
        idx = select_indices(w, k, which)
        np.testing.assert_array_equal(V, np.take_along_axis(V_all, idx[:, None, :], axis=2))


def test_selection_arguments():
    M = np.eye(3)[None]
    with pytest.raises(ValueError, match="k must be in 0..n"):
        eigh_jacobi_cuda(M, k=4)
    with pytest.raises(ValueError, match="which must be one of"):
        eigh_jacobi_cuda(M, k=1, which="XX")


@pytest.mark.parametrize("field,real", FIELDS_REALS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n,r,K,which", [(1, 1, 2, "SA"), (3, 1, 1, "LM"), (5, 2, 3, "SM"), (7, 3, 4, "LA"),
                                         (11, 4, 2, "EM"), (16, 5, 3, "IA"), (17, 2, 5, "LM")])
def test_observable_kernel(n, r, K, which, form, field, real):
    rng = np.random.default_rng([n, r, K, form == "transition", field == "complex", real == np.float64])
    B = 5
    x, Pp, M = problem(rng, B, n, 3, field, real)
    D = assemble_forward(rng.standard_normal((K, packed_size(n, field))), n, field)  # float64 / complex128
    t, sweeps = assemble_eigh_observable_jacobi_cuda(x, Pp, D.astype(ELEM[field, real]), n, field, r, which, form,
                                            threads=6)
    assert t.shape == (B, K) and t.dtype == real and np.all(sweeps >= 0)
    wr, Vr = np.linalg.eigh(M)
    V_S = np.take_along_axis(Vr, select_indices(wr, r, which)[:, None, :], axis=2)
    t_ref = observable_forward(V_S, D, form)[0]
    assert np.linalg.norm(t - t_ref) <= TOL[real] * max(np.linalg.norm(t_ref), np.linalg.norm(D) ** 2 / K)
    if real == np.float64:  # the same as the unfused chain on the kernel's own eigenvectors
        w, V_k, _ = assemble_eigh_jacobi_cuda(x, Pp, n, field, k=r, which=which)
        np.testing.assert_allclose(t, observable_forward(V_k, D, form)[0], rtol=1e-12, atol=1e-12 * np.abs(t).max())


def test_observable_kernel_block_sizes_and_edges():
    rng = np.random.default_rng(9)
    x, Pp, _ = problem(rng, 3, 6, 2, "complex", np.float64)
    D = assemble_forward(rng.standard_normal((2, packed_size(6, "complex"))), 6, "complex")
    t1, _ = assemble_eigh_observable_jacobi_cuda(x, Pp, D, 6, "complex", 3, "LM", "transition", threads=1)
    for threads in (2, 7, 32, 64):
        t, _ = assemble_eigh_observable_jacobi_cuda(x, Pp, D, 6, "complex", 3, "LM", "transition", threads=threads)
        np.testing.assert_allclose(t, t1, rtol=1e-13)
    t, s = assemble_eigh_observable_jacobi_cuda(x[:0], Pp, D, 6, "complex", 3, "LM", "expectation")
    assert t.shape == (0, 2) and s.shape == (0,)
    t, _ = assemble_eigh_observable_jacobi_cuda(x, Pp, D[:0], 6, "complex", 3, "LM", "expectation")
    assert t.shape == (3, 0)
    with pytest.raises(ValueError, match="form"):
        assemble_eigh_observable_jacobi_cuda(x, Pp, D, 6, "complex", 3, "LM", "trace")
    with pytest.raises(ValueError, match="D must be"):
        assemble_eigh_observable_jacobi_cuda(x, Pp, D[:, :5], 6, "complex", 3, "LM", "transition")


def tsan_check() -> bool:
    """The observable kernel, and the selecting eigh kernels, under ThreadSanitizer (subprocess)."""
    rng = np.random.default_rng(2)
    ok = True
    emu = emulator.Emulator(_cuda.kernel_dir() / "jacobi_observable.cu", _cuda.family_kernels("jacobi_observable"),
                            sanitize="thread")
    x, Pp, M = problem(rng, 2, 5, 1, "complex", np.float64)
    D = assemble_forward(rng.standard_normal((3, packed_size(5, "complex"))), 5, "complex")
    for form in (0, 1):
        t, sweeps = np.empty((2, 3)), np.empty(2, np.int32)
        emu.launch("assemble_eigh_observable_jacobi", ("double", "cplx<double>"), 2, 4, x, Pp, D, t, sweeps,
                   2, 5, 1, 3, 2, 3, form, 30, 1e-16)
        ok &= bool(np.all(sweeps >= 0) and np.all(np.isfinite(t)))
    emu = emulator.Emulator(_cuda.kernel_dir() / "jacobi.cu", _cuda.family_kernels("jacobi"), sanitize="thread")
    w, V, sweeps = np.empty((2, 5)), np.empty((2, 5, 2), np.complex128), np.empty(2, np.int32)
    emu.launch("assemble_eigh_jacobi", ("double", "cplx<double>"), 2, 3, x, Pp, w, V, sweeps, 2, 5, 1, 2, 5, 30, 1e-16)
    return ok and bool(np.all(sweeps >= 0))


def test_tsan():
    r = emulator.run_under_tsan("test_jacobi_fused")
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("field,real", FIELDS_REALS)
def test_observable_kernel_gpu(field, real, monkeypatch):
    """The real kernels on a GPU: selected columns and the fused observables, n = 8, 17, 32."""
    import cupy

    monkeypatch.undo()  # the real loader
    rng = np.random.default_rng(11)
    for n in (8, 17, 32):
        x, Pp, M = problem(rng, 129, n, 3, field, real)
        D = assemble_forward(rng.standard_normal((4, packed_size(n, field))), n, field)
        wr, Vr = np.linalg.eigh(M)
        for form in FORMS:
            t, sweeps = assemble_eigh_observable_jacobi_cuda(cupy.asarray(x), cupy.asarray(Pp), cupy.asarray(D), n, field, 3,
                                                    "LM", form)
            V_S = np.take_along_axis(Vr, select_indices(wr, 3, "LM")[:, None, :], axis=2)
            t_ref = observable_forward(V_S, D, form)[0]
            assert np.linalg.norm(cupy.asnumpy(t) - t_ref) <= 10 * TOL[real] * np.linalg.norm(t_ref)
            assert int((sweeps < 0).sum()) == 0
