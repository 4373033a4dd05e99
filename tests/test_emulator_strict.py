"""The strict emulator (issue 12). Each strictness is shown to catch the bug it is for, on the small
kernels of tests/emu/strict_test.cu: poisoned shared memory (read before write), barrier divergence
(different call sites, threads exited), launch limits of sm_80/sm_90 (threads, 48 KiB static shared
memory), shuffled and concurrent blocks. Then the real kernels run under it: the Jacobi kernels and
the reverse-mode kernels (eigen_vjp.cu, observable.cu) in the FMA-contracting build against LAPACK and
the NumPy references, with the tolerances of their own test modules; concurrent blocks give the same
bits as one block at a time; the 32-bit index path of the element-wise kernels gives the same bits
as the 64-bit one.
"""
from __future__ import annotations

import functools
import re
import threading

import numpy as np
import pytest

import emulator
import test_eigen_vjp as tev
import test_jacobi as tj
import test_jacobi_fused as tjf
import test_observable_kernels as tok
from emulator import KernelError
from pmm_gpu import _cuda
from pmm_gpu._cuda import Kernel

STRICT_SOURCE = emulator.EMU_DIR / "strict_test.cu"
_PROBE_ARGS = {"block_order": (("last", "T*"), ("y", "T*")), "handshake": (("flags", "T*"), ("y", "T*"))}
STRICT_KERNELS = [Kernel("strict_test", name, ("T",), _PROBE_ARGS.get(name, (("x", "const T*"), ("y", "T*"))),
                         (("double",),))
                  for name in ("stale_shared", "sum_unwritten", "divergent_barrier", "exit_before_barrier",
                               "too_much_shared", "block_order", "handshake")]
D = ("double",)
needs_fma = pytest.mark.skipif(not emulator.cpu_has_fma(), reason="this CPU has no FMA instructions "
                                                                   "(no 'fma' flag in /proc/cpuinfo)")


@functools.lru_cache(maxsize=None)
def strict(**options) -> emulator.Emulator:
    return emulator.Emulator(STRICT_SOURCE, STRICT_KERNELS, **options)


def launch_in_time(emu, *args, timeout: float = 120):
    """emu.launch(*args) in a daemon thread: the exception it raised (None if none); fails on a hang."""
    out = {}

    def run():
        try:
            emu.launch(*args)
        except Exception as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the launch of {args[0]} hung"
    return out.get("error")


def test_strict_signature_table_matches_source():
    table = {k.name: (k.template, k.args) for k in STRICT_KERNELS}
    assert emulator.parse_signatures(STRICT_SOURCE.read_text()) == table


# --- poisoned shared memory -------------------------------------------------------------------------

def test_poison_exposes_shared_memory_kept_from_another_block():
    x = np.arange(1.0, 9.0)
    y = np.zeros(4 * 8)
    strict(poison=None, shuffle=0).launch("stale_shared", D, 4, 8, x, y)
    np.testing.assert_array_equal(y, np.tile(x, 4))  # the forgiving emulator: the bug passes
    y[:] = 0
    strict().launch("stale_shared", D, 4, 8, x, y)
    np.testing.assert_array_equal(y[:8], x)  # block 0 wrote what it read
    assert np.isnan(y[8:]).all()  # the other blocks read poison


def test_poison_exposes_never_written_shared_memory():
    x = np.arange(24.0)
    ref = x.reshape(3, 8).sum(axis=1)
    y = np.zeros(3)
    strict(poison=0x00).launch("sum_unwritten", D, 3, 8, x, y)  # zeroed statics: the bug passes
    np.testing.assert_array_equal(y, ref)
    strict().launch("sum_unwritten", D, 3, 8, x, y)
    assert np.isnan(y).all()


# --- barriers ---------------------------------------------------------------------------------------

def test_divergent_barrier_is_an_error():
    x, y = np.arange(16.0), np.zeros(16)
    err = launch_in_time(strict(), "divergent_barrier", D, 2, 8, x, y)
    assert isinstance(err, KernelError)
    assert re.fullmatch(r"divergent_barrier<double>: block \(\d, 0, 0\): barrier divergence: __syncthreads\(\) "
                        r"reached at strict_test\.cu:\d+ by 4 thread\(s\), at strict_test\.cu:\d+ by 4 thread\(s\) "
                        r"\(8 threads in the block\)", str(err)), str(err)


def test_barrier_after_threads_exited_is_an_error():
    x, y = np.arange(16.0), np.zeros(16)
    err = launch_in_time(strict(), "exit_before_barrier", D, 2, 8, x, y)
    assert isinstance(err, KernelError)
    assert "barrier divergence: __syncthreads() reached at strict_test.cu:" in str(err)
    assert str(err).endswith("by 4 thread(s), while 4 thread(s) had exited (8 threads in the block)"), str(err)


# --- launch limits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1025, (32, 32, 2), (1, 1, 65)])
def test_thread_limits(block):
    x = y = np.zeros(1)
    with pytest.raises(KernelError, match=r"exceeds the sm_80/sm_90 limits \(<= 1024 threads per block"):
        strict().launch("stale_shared", D, 1, block, x, y)


def test_static_shared_memory_limit():
    emu = strict()
    assert emu.static_shared_bytes("stale_shared", D) == 64 * 8
    assert emu.static_shared_bytes("block_order", D) == 0
    assert emu.static_shared_bytes("too_much_shared", D) == 48 * 1024 + 8
    with pytest.raises(KernelError, match="declares 49160 bytes of static shared memory; sm_80/sm_90 allow 49152"):
        emu.launch("too_much_shared", D, 1, 1, np.zeros(1), np.zeros(1))


def test_static_shared_memory_of_the_kernels():
    """Every instantiation fits in 48 KiB; eigh_vjp<double, cplx<double>, 32> (three 32×32 tiles of
    16-byte elements) fills it exactly. tests/test_kernels_compile.py checks these sizes against ptxas."""
    for fam in sorted({k.family for k in _cuda.KERNELS.values()}):
        emu = emulator.family(fam)
        for k in emu.kernels:
            for t in k.instances:
                assert emu.static_shared_bytes(k.name, t) <= emulator.MAX_STATIC_SHARED, k.expression(t)
    assert emulator.family("eigen_vjp").static_shared_bytes("eigh_vjp", ("double", "cplx<double>", "32")) == 49152
    assert emulator.family("observable").static_shared_bytes("observable_forward", ("float", "float", "8")) == 512


# --- block order and concurrency ---------------------------------------------------------------------

def block_order(emu, nblocks: int = 16) -> list[int]:
    """The order in which the emulator ran the blocks (from the block_order probe's chain)."""
    last, y = np.array([-1.0]), np.full(nblocks, np.nan)
    emu.launch("block_order", D, nblocks, 2, last, y)
    after = {int(prev): b for b, prev in enumerate(y)}
    order = [after[-1]]
    while len(order) < nblocks:
        order.append(after[order[-1]])
    return order


def test_blocks_run_in_a_shuffled_order():
    assert block_order(strict(shuffle=0)) == list(range(16))
    order = block_order(strict())
    assert sorted(order) == list(range(16)) and order != list(range(16))
    assert block_order(strict()) == order  # seeded: reproducible
    assert block_order(strict(shuffle=99)) != order


def test_concurrent_blocks_run_at_once_with_their_own_shared_memory():
    flags, y = np.array([0.0, 0.0, 60.0]), np.full(2, np.nan)
    strict(concurrent=2).launch("handshake", D, 2, 3, flags, y)
    np.testing.assert_array_equal(y, [0, 1])
    flags, y = np.array([0.0, 0.0, 0.2]), np.full(2, np.nan)
    strict().launch("handshake", D, 2, 3, flags, y)  # one block at a time: the first waits in vain
    assert np.sum(y == -1) == 1


def test_concurrent_jacobi_equals_sequential():
    rng = np.random.default_rng(21)
    M = tj.batch("degenerate", rng, 12, "complex", np.float64, B=7)
    seq = tj.run_emulated(M, emu=emulator.family("jacobi", shuffle=0))
    conc = tj.run_emulated(M, emu=emulator.family("jacobi", concurrent=3))
    for a, b in zip(seq, conc):
        np.testing.assert_array_equal(a, b)
    tj.check(M, *conc, np.float64)


def test_concurrent_observable_forward_equals_sequential():
    rng = np.random.default_rng(22)
    V_S, Dm, _ = tok.problem(rng, 3, 7, 3, 4, np.complex128)
    seq = tok.run_forward(emulator.family("observable"), V_S, Dm, "transition", 8, 5, 16)
    conc = tok.run_forward(emulator.family("observable", concurrent=3), V_S, Dm, "transition", 8, 5, 16)
    for a, b in zip(seq, conc):
        np.testing.assert_array_equal(a, b)


# --- FMA contraction --------------------------------------------------------------------------------

@needs_fma
def test_fma_build_changes_rounding():
    """The flag takes effect: the same kernel rounds differently, and both builds are accurate."""
    rng = np.random.default_rng(23)
    M = tj.batch("random", rng, 13, "complex", np.float64, B=3)
    plain = tj.run_emulated(M)
    fma = tj.run_emulated(M, emu=emulator.family("jacobi", fma=True))
    assert not np.array_equal(plain[0], fma[0]) and not np.array_equal(plain[1], fma[1])
    tj.check(M, *plain, np.float64)
    tj.check(M, *fma, np.float64)


@needs_fma
@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("kind", tj.KINDS)
@pytest.mark.parametrize("n", [3, 8, 32])
def test_jacobi_fma(n, kind, field, real):
    """tests/test_jacobi.py's accuracy bounds (eigenvalues, residual, orthogonality, eigenspaces)."""
    rng = np.random.default_rng([n, tj.KINDS.index(kind), field == "complex", real == np.float64, 12])
    M = tj.batch(kind, rng, n, field, real)
    tj.check(M, *tj.run_emulated(M, emu=emulator.family("jacobi", fma=True)), real)


@pytest.fixture
def fma_loader(monkeypatch):
    if not emulator.cpu_has_fma():
        pytest.skip("this CPU has no FMA instructions (no 'fma' flag in /proc/cpuinfo)")
    monkeypatch.setattr(_cuda, "get_kernel", emulator.kernel_loader(fma=True))


@pytest.mark.parametrize("field,real", tjf.FIELDS_REALS)
@pytest.mark.parametrize("form", tjf.FORMS)
def test_fused_jacobi_kernels_fma(form, field, real, fma_loader):
    """test_jacobi_fused's checks of the selecting eigh kernels and of the fused observable kernel
    (against LAPACK eigenvectors and the NumPy observable_forward), on the FMA build."""
    tjf.test_observable_kernel(11, 4, 2, "EM", form, field, real)
    tjf.test_selected_columns(13, "LM" if form == "transition" else "SA", field, real)


@needs_fma
@pytest.mark.parametrize("dtype", tev.DTYPES)
def test_eigen_vjp_fma(dtype):
    rng = np.random.default_rng(24)
    emu = emulator.family("eigen_vjp", fma=True)
    for n, B in ((5, 3), (13, 2), (32, 2)):
        for r, eta, degenerate in ((1, 0.0, False), (n // 2 + 1, 1e-3, False), (n, 0.3, True)):
            w, V, idx, Vbar_S = tev.problem(rng, B, n, r, dtype, degenerate)
            ref = tev.eigh_vjp(w, V, idx, Vbar_S, eta)
            tev.assert_close(tev.run_eigh_vjp(emu, w, V, idx, Vbar_S, eta, _cuda.tile_for(n), B - 1, 32), ref, dtype)
        k = n // 2 + 1
        V_S = np.ascontiguousarray(V[:, :, n - k:])
        ybar = rng.standard_normal((B, k)).astype(w.dtype)
        out = np.full((B, n, n), np.nan, V.dtype)
        emu.launch("eigvals_vjp", _cuda.template_args((w.dtype, V.dtype)), 3, 32, V_S, ybar, out, B, n, k)
        tev.assert_close(out, tev.eigvals_vjp(V_S, ybar), dtype)


@needs_fma
@pytest.mark.parametrize("form", tok.FORMS)
@pytest.mark.parametrize("dtype", tev.DTYPES)
def test_observable_fma(dtype, form):
    rng = np.random.default_rng(25)
    emu = emulator.family("observable", fma=True)
    for n, r, K in ((5, 2, 3), (16, 5, 2), (32, 3, 2)):
        B = 3
        V_S, Dm, tbar = tok.problem(rng, B, n, r, K, dtype)
        ref = tok.observable_forward(V_S, Dm, form)
        for out, want in zip(tok.run_forward(emu, V_S, Dm, form, _cuda.tile_for(n), B * K - 1, 32), ref):
            tev.assert_close(out, want, dtype)
        Vbar_S = np.full(V_S.shape, np.nan, V_S.dtype)
        W = np.full((K, n, B, r), np.nan, V_S.dtype)
        emu.launch("observable_backward", _cuda.template_args((tbar.dtype, V_S.dtype)), 4, 32,
                   V_S, ref[1], ref[2], tbar, Vbar_S, W, B, K, n, r, tok.FORMS.index(form))
        tev.assert_close(Vbar_S, tok.observable_backward(V_S, ref[1], ref[2], tbar, form)[0], dtype)


# --- 32-bit and 64-bit index paths of the element-wise kernels -----------------------------------------

def _elementwise_runs(emu, rng):
    """Outputs of every element-wise kernel on fixed inputs; 2 blocks × 32 threads, so every thread
    strides over several elements."""
    out = {}
    for R, S in ((np.float32, np.complex64), (np.float64, np.float64), (np.float64, np.complex128)):
        B, n, k, K, r = 3, 7, 3, 2, 3
        T = _cuda.template_args((R, S))
        P = n * n if S in (np.complex64, np.complex128) else n * (n + 1) // 2
        Mp, M = rng.standard_normal((B, P)).astype(R), np.empty((B, n, n), S)
        emu["assemble"].launch("assemble_forward", T, 2, 32, Mp, M, B, n)
        grad = np.empty((B, P), R)
        emu["assemble"].launch("assemble_backward", T, 2, 32, M, grad, B, n)
        V_S, ybar, Abar = M[:, :, :k].copy(), rng.standard_normal((B, k)).astype(R), np.empty((B, n, n), S)
        emu["eigen_vjp"].launch("eigvals_vjp", T, 2, 32, V_S, ybar, Abar, B, n, k)
        DV, Q = np.repeat(M[:, None, :, :r], K, axis=1).copy(), np.repeat(M[:, None, :r, :r], K, axis=1).copy()
        Vbar_S, W = np.empty((B, n, r), S), np.empty((K, n, B, r), S)
        emu["observable"].launch("observable_backward", T, 2, 32, M[:, :, :r].copy(), DV, Q, ybar[:, :K].copy(),
                                 Vbar_S, W, B, K, n, r, 0)
        out[str(S)] = (M, grad, Abar, Vbar_S, W)
        theta, g, m, v = (rng.standard_normal(300).astype(R) for _ in range(4))
        emu["adam"].launch("adam_step", T[:1], 2, 32, theta, g, m, np.abs(v), 300, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.01,
                           np.array([0.5], R))
        out[str(S) + "adam"] = (theta, m, v)
    return out


def test_index_paths_give_the_same_bits():
    families = ("assemble", "eigen_vjp", "observable", "adam")
    fast = _elementwise_runs({f: emulator.family(f) for f in families}, np.random.default_rng(26))
    wide = _elementwise_runs({f: emulator.family(f, defines=("PMM_INDEX64",)) for f in families},
                             np.random.default_rng(26))
    for key, arrays in fast.items():
        for a, b in zip(arrays, wide[key]):
            np.testing.assert_array_equal(a, b, err_msg=key)
