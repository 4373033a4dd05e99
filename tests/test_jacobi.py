"""Jacobi eigensolver kernels (kernels/jacobi.cu) against LAPACK (numpy.linalg.eigh), emulated on the CPU.

Accuracy (issue 7), relative to ‖M‖₂ unless said otherwise, in float64 arithmetic on the input as given:
  eigenvalues  max_j |λ_j − λ_j^LAPACK|           <= TOL · ‖M‖₂
  residual     ‖M V − V Λ‖₂                        <= TOL · ‖M‖₂
  orthonormal  ‖Vᴴ V − I‖₂                         <= TOL            (absolute)
  eigenspaces  ‖P_G − P_G^LAPACK‖₂ <= 10 · TOL · ‖M‖₂ / gap_G, for every group G of eigenvalues
               separated from the rest by gap_G (projectors: gauge invariant, and meaningful for
               degenerate or clustered groups; raw eigenvectors are never compared).
Matrices: random, clustered, exactly degenerate (in exact arithmetic), badly scaled (graded and
extreme overall scale); both fields, both precisions. The full N = 2…32 sweep is marked slow.
"""
from __future__ import annotations


import numpy as np
import pytest

import emulator
from pmm_gpu import _cuda
from pmm_gpu.ops.assemble import assemble_forward, packed_size
from pmm_gpu.ops.jacobi import MAX_SWEEPS, default_threads, assemble_eigh_jacobi_cuda, eigh_jacobi_cuda

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = {("real", np.float32): np.float32, ("real", np.float64): np.float64,
          ("complex", np.float32): np.complex64, ("complex", np.float64): np.complex128}
KINDS = ("random", "clustered", "degenerate", "scaled")
NS_FAST = (1, 2, 3, 4, 5, 8, 13, 32)
BATCH = 3
THREADS = 8  # emulated threads per block: few, so the strided work loops and idle threads are exercised


def _unitary(rng, n, field):
    Z = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if field == "complex" else 0)
    Q, R = np.linalg.qr(Z)
    return Q * (np.diag(R) / np.abs(np.diag(R)))


def _hermitian(rng, n, field):
    Z = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if field == "complex" else 0)
    return (Z + Z.conj().T) / 2


def make_matrix(kind, rng, n, field, real):
    """One n×n test matrix of the given kind (float64/complex128, before the cast to the test dtype)."""
    if kind == "random":
        return _hermitian(rng, n, field)
    if kind == "clustered":  # two tight clusters plus spread values: gaps ~1e-9 inside a cluster
        lam = rng.standard_normal(n)
        lam[: n // 3] = 1 + 1e-9 * rng.standard_normal(n // 3)
        lam[n // 3: 2 * n // 3] = -0.5 + 1e-9 * rng.standard_normal(2 * n // 3 - n // 3)
    elif kind == "degenerate":  # eigenvalues from {-2, 0, 1, 3}: exact multiplicities
        lam = rng.choice([-2.0, 0.0, 1.0, 3.0], size=n)
    else:
        lam = None
    if lam is not None:
        Q = _unitary(rng, n, field)
        return (Q * lam) @ Q.conj().T
    # "scaled": a graded matrix D A D, D spanning 10^±g, times an extreme overall scale.
    g, big = (3.0, 1e15) if real == np.float32 else (6.0, 1e150)
    d = np.logspace(-g, g, n)
    rng.shuffle(d)
    return _hermitian(rng, n, field) * d[:, None] * d[None, :] * rng.choice([1 / big, big])


def batch(kind, rng, n, field, real, B=BATCH):
    M = np.stack([make_matrix(kind, rng, n, field, real) for _ in range(B)])
    M = M.astype(DTYPES[field, real])
    return (M + M.conj().swapaxes(1, 2)) / 2  # exactly Hermitian after the cast


def errors(M, w, V):
    """Normwise errors of (w, V) for the batch M, each the max over the batch (see module doc)."""
    M = M.astype(np.complex128)
    V = V.astype(np.complex128)
    w = w.astype(np.float64)
    n = M.shape[-1]
    out = {"eig": 0.0, "res": 0.0, "orth": 0.0, "proj": 0.0}
    for Mb, wb, Vb in zip(M, w, V):
        wr, Vr = np.linalg.eigh(Mb)
        norm = max(np.linalg.norm(Mb, 2), np.finfo(float).tiny)
        out["eig"] = max(out["eig"], np.abs(wb - wr).max() / norm)
        out["res"] = max(out["res"], np.linalg.norm(Mb @ Vb - Vb * wb, 2) / norm)
        out["orth"] = max(out["orth"], np.linalg.norm(Vb.conj().T @ Vb - np.eye(n), 2))
        # Groups of eigenvalues separated by more than 1e-4 ‖M‖; projector error scaled by gap / ‖M‖.
        cut = np.flatnonzero(np.diff(wr) > 1e-4 * norm) + 1
        for idx in np.split(np.arange(n), cut):
            if len(idx) == n:
                continue
            rest = np.setdiff1d(np.arange(n), idx)
            gap = np.abs(wr[rest][:, None] - wr[idx][None, :]).min()
            P = Vb[:, idx] @ Vb[:, idx].conj().T
            Pr = Vr[:, idx] @ Vr[:, idx].conj().T
            out["proj"] = max(out["proj"], np.linalg.norm(P - Pr, 2) * gap / norm / 10)
    return out


def run_emulated(M, threads=THREADS, max_sweeps=MAX_SWEEPS, emu=None):
    """The eigh_jacobi kernel on the emulator, one block per matrix (the grid of the launcher)."""
    emu = emu or emulator.family("jacobi")
    B, n = M.shape[:2]
    real = np.finfo(M.dtype).dtype
    w = np.full((B, n), np.nan, real)
    V = np.full(M.shape, np.nan, M.dtype)
    sweeps = np.full(B, -7, np.int32)
    emu.launch("eigh_jacobi", (_cuda.CTYPES[real], _cuda.CTYPES[M.dtype]), B, threads,
               M, w, V, sweeps, B, n, n, 0, max_sweeps, float(np.finfo(real).eps))
    return w, V, sweeps


def check(M, w, V, sweeps, real):
    assert np.all(sweeps >= 0) and np.all(sweeps <= MAX_SWEEPS), sweeps
    assert np.all(np.diff(w, axis=1) >= 0)
    err = errors(M, w, V)
    assert max(err.values()) <= TOL[real], err
    return err


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", NS_FAST)
def test_jacobi_emulated(n, kind, field, real):
    rng = np.random.default_rng([n, KINDS.index(kind), field == "complex", real == np.float64])
    M = batch(kind, rng, n, field, real)
    check(M, *run_emulated(M), real)


@pytest.mark.slow
@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("kind", KINDS)
def test_jacobi_all_sizes(kind, field, real, record_property):
    """N = 2…32 (every size), 4 matrices each; the max errors per size group are recorded."""
    worst = {}
    for n in range(2, 33):
        rng = np.random.default_rng([100 + n, KINDS.index(kind), field == "complex", real == np.float64])
        M = batch(kind, rng, n, field, real, B=4)
        err = check(M, *run_emulated(M), real)
        group = "2-8" if n <= 8 else "9-16" if n <= 16 else "17-32"
        worst[group] = {k: max(v, worst.get(group, {}).get(k, 0.0)) for k, v in err.items()}
    record_property("max_errors", repr(worst))
    print(kind, field, np.dtype(real).name, worst)


@pytest.mark.parametrize("threads", [1, 3, 16, 32])
def test_block_size_does_not_matter(threads):
    """Any block size gives the same decomposition (the work loops are strided)."""
    rng = np.random.default_rng(5)
    M = batch("random", rng, 11, "complex", np.float64, B=2)
    w, V, sweeps = run_emulated(M, threads=threads)
    w1, V1, sweeps1 = run_emulated(M, threads=1)
    check(M, w, V, sweeps, np.float64)
    np.testing.assert_array_equal(sweeps, sweeps1)
    np.testing.assert_allclose(w, w1, rtol=0, atol=1e-13 * np.abs(w1).max())


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_special_matrices(dtype):
    """Zero and diagonal matrices need no sweep and come back exact; the lower triangle is read."""
    n = 6
    d = np.array([3.0, -1.0, 2.0, -1.0, 0.0, 5.0])
    M = np.stack([np.zeros((n, n)), np.diag(d)]).astype(dtype)
    w, V, sweeps = run_emulated(M)
    np.testing.assert_array_equal(sweeps, [0, 0])
    np.testing.assert_array_equal(w, [np.zeros(n), np.sort(d)])
    np.testing.assert_array_equal(np.abs(V[0]), np.eye(n))
    rng = np.random.default_rng(0)
    H = batch("random", rng, n, "complex" if np.iscomplexobj(dtype(0)) else "real", np.finfo(dtype).dtype.type, B=1)
    upper = np.triu(rng.standard_normal((n, n)), 1).astype(dtype)  # garbage above the diagonal is ignored
    w_lower, _, _ = run_emulated(np.tril(H) + upper)
    np.testing.assert_allclose(w_lower[0], np.linalg.eigvalsh(H[0]), atol=TOL[np.finfo(dtype).dtype.type] * 10)


def test_non_convergence_is_flagged():
    rng = np.random.default_rng(1)
    M = batch("random", rng, 7, "real", np.float64, B=3)
    M[2, 3, 1] = np.nan
    _, _, sweeps = run_emulated(M, max_sweeps=1)
    np.testing.assert_array_equal(sweeps, [-1, -1, -1])  # one sweep is not enough at n = 7
    _, _, sweeps = run_emulated(M)
    assert sweeps[0] > 0 and sweeps[1] > 0 and sweeps[2] == -1  # NaN never converges


@pytest.mark.parametrize("field", ["real", "complex"])
def test_repeated_eigenvalues_converge_fast(field):
    """Exactly repeated eigenvalues at n = 32: with rotations of negligible |a_pq| (<= tol·‖A‖_F/n)
    skipped, at most 20 sweeps (up to 37 without; profiling/results/jacobi-sweeps.md), same accuracy."""
    rng = np.random.default_rng([32, KINDS.index("degenerate"), field == "complex", 1, 7])
    M = batch("degenerate", rng, 32, field, np.float64, B=6)
    w, V, sweeps = run_emulated(M)
    check(M, w, V, sweeps, np.float64)
    assert sweeps.max() <= 20, sweeps


@pytest.fixture
def emulated_loader(monkeypatch):
    """Route the launchers' kernel lookup to the emulator, so they run on NumPy arrays."""
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
def test_launcher_emulated(field, real, emulated_loader):
    rng = np.random.default_rng(3)
    M = batch("random", rng, 9, field, real, B=5)
    check(M, *eigh_jacobi_cuda(M, threads=5), real)
    check(M, *eigh_jacobi_cuda(M.swapaxes(1, 2).copy().swapaxes(1, 2)), real)  # default block, strided input
    w, V, sweeps = eigh_jacobi_cuda(M[:0])
    assert w.shape == (0, 9) and V.shape == (0, 9, 9) and sweeps.shape == (0,)
    with pytest.raises(ValueError, match="1 <= n <= 32"):
        eigh_jacobi_cuda(np.zeros((2, 33, 33), M.dtype))
    with pytest.raises(TypeError, match="float32"):
        eigh_jacobi_cuda(np.zeros((2, 3, 3), np.int64))
    with pytest.raises(ValueError, match="threads"):
        eigh_jacobi_cuda(M, threads=512)


def test_default_threads():
    assert [default_threads(n) for n in (1, 2, 8, 9, 16, 32)] == [32, 32, 32, 64, 128, 256]


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("n,p", [(1, 2), (4, 0), (7, 3), (16, 2)])
def test_fused_assemble_emulated(n, p, field, real, emulated_loader):
    """assemble_eigh_jacobi == eigh of assemble_forward(X1 @ Pp): same spectrum, V Λ Vᴴ = M(x)."""
    rng = np.random.default_rng([n, p, field == "complex"])
    B = 4
    x = rng.standard_normal((B, p)).astype(real)
    Pp = rng.standard_normal((p + 1, packed_size(n, field))).astype(real)
    X1 = np.concatenate([np.ones((B, 1), real), x], axis=1)
    M = assemble_forward(X1.astype(np.float64) @ Pp.astype(np.float64), n, field)
    w, V, sweeps = assemble_eigh_jacobi_cuda(x, Pp, n, field, threads=6)
    assert w.dtype == real and V.dtype == DTYPES[field, real]
    err = errors(M, w, V)
    # The kernel assembles in the working precision: one more rounding per entry than M (float64).
    assert max(err.values()) <= 2 * TOL[real], err
    assert np.all(sweeps >= 0)
    with pytest.raises(ValueError, match="Pp"):
        assemble_eigh_jacobi_cuda(x, Pp[:, 1:], n, field)
    with pytest.raises(TypeError, match="float32 or both float64"):
        assemble_eigh_jacobi_cuda(x.astype(np.float16), Pp, n, field)


def tsan_check() -> bool:
    """Both kernels under ThreadSanitizer (run in a subprocess with ``emulator.tsan_env()``)."""
    emu = emulator.Emulator(_cuda.kernel_dir() / "jacobi.cu", _cuda.family_kernels("jacobi"), sanitize="thread")
    rng = np.random.default_rng(2)
    M = batch("random", rng, 5, "complex", np.float64, B=2)
    for threads in (3, 4):
        w, V, sweeps = run_emulated(M, threads=threads, emu=emu)
        check(M, w, V, sweeps, np.float64)
    x, Pp = rng.standard_normal((2, 1)), rng.standard_normal((2, packed_size(5, "complex")))
    w, V, sweeps = (np.empty((2, 5)), np.empty((2, 5, 5), np.complex128), np.empty(2, np.int32))
    emu.launch("assemble_eigh_jacobi", ("double", "cplx<double>"), 2, 4, x, Pp, w, V, sweeps, 2, 5, 1, 5, 0, 20, 1e-16)
    return bool(np.all(sweeps >= 0))


def test_tsan():
    r = emulator.run_under_tsan("test_jacobi")
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("n", [2, 8, 17, 32])
def test_jacobi_gpu(n, field, real):
    """The real kernel on a GPU: random and degenerate batches, and the fused variant."""
    import cupy

    rng = np.random.default_rng(n)
    for kind in ("random", "degenerate"):
        M = batch(kind, rng, n, field, real, B=257)
        w, V, sweeps = (cupy.asnumpy(a) for a in eigh_jacobi_cuda(cupy.asarray(M)))
        check(M, w, V, sweeps, real)
    x = rng.standard_normal((257, 3)).astype(real)
    Pp = rng.standard_normal((4, packed_size(n, field))).astype(real)
    w, V, sweeps = (cupy.asnumpy(a) for a in assemble_eigh_jacobi_cuda(cupy.asarray(x), cupy.asarray(Pp), n, field))
    X1 = np.concatenate([np.ones((257, 1)), x], axis=1)
    assert max(errors(assemble_forward(X1 @ Pp.astype(np.float64), n, field), w, V).values()) <= 2 * TOL[real]
