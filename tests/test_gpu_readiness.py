"""Issue 12's GPU-path fixes, tested without a GPU (the hardware checks are in tests/test_gpu_hardware.py).

1. cuSOLVER's batched workspace: chunks of at most ``eigh.eigh_max_batch`` matrices (2²⁰, or cuSOLVER's
   own lwork query with a 2× margin), on the CUDA backend's dispatch running on NumPy.
2. cuSOLVER's silent failures: ``eigh.eigh_probe`` finds a wrong decomposition (non-orthonormal or
   mismatched eigenvectors, wrong eigenvalues, NaN) and the CUDA backend counts it into the same
   ``eigh_failures`` counter as the Jacobi kernel, so ``fit`` reports it once per epoch; an injected bad
   library eigensolver stands in for cupy.linalg.
5. The fused Jacobi assembly is replaced by a GEMM + the plain kernel above ``FUSED_ASSEMBLY_MAX_P``.
6. ``_cuda.get_kernel`` returns one cached kernel object per (name, dtypes, device).
Also: a forced small grid (``_cuda.MAX_GRID``) gives bit-identical results on the emulated kernels.
"""
from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest

import emulator
import pmm_gpu as pg
from pmm_gpu import _cuda, backend
from pmm_gpu.ops import eigh, jacobi


def hermitian(rng, B, n, dtype=np.complex128):
    A = rng.normal(size=(B, n, n)) + 1j * rng.normal(size=(B, n, n))
    return (A + np.conj(A.swapaxes(1, 2))).astype(dtype)


class FakeXp:
    """numpy with its ``linalg`` replaced: the place of cupy (and cupy.linalg) in an emulated backend."""

    def __init__(self, linalg):
        self.linalg = linalg

    def __getattr__(self, name):
        return getattr(np, name)


class Linalg:
    """numpy.linalg.eigh/eigvalsh recording each call's batch; ``bad``: every matrix's first eigenvector
    gets a multiple of the second mixed in (no longer orthonormal) and its first eigenvalue moves by 1."""

    def __init__(self, bad: bool = False):
        self.bad, self.batches = bad, []

    def eigh(self, M):
        self.batches.append(len(M))
        w, V = np.linalg.eigh(M)
        if self.bad:
            V = V.copy()
            V[:, :, 0] += 0.5 * V[:, :, 1]
        return w, V

    def eigvalsh(self, M):
        self.batches.append(len(M))
        w = np.linalg.eigvalsh(M)
        if self.bad:
            w = w.copy()
            w[:, 0] += 1.0
        return w


def probed(B: int) -> int:
    """Matrices ``eigh_probe`` checks in a batch of B: every ⌈B/PROBE_SAMPLES⌉-th from the first."""
    return len(range(0, B, -(-B // eigh.PROBE_SAMPLES)))


def library_backend(linalg):
    """The CUDA backend's dispatch on NumPy arrays, its library eigensolver (cupy.linalg's place) ``linalg``."""
    be = emulator.cuda_backend_on_numpy(kernels=False)
    be.xp = FakeXp(linalg)
    return be


# --- finding 1: chunks that fit cuSOLVER's 32-bit workspace --------------------------------------------
def test_eigh_max_batch():
    assert eigh.eigh_max_batch(4) == eigh.eigh_max_batch(8) == 2**20  # not 2²⁸/n² (16.7 M at n = 4)
    assert eigh.eigh_max_batch(64) == 2**28 // 64**2
    # cupy/cupy#7261 at n = 4: lwork(B) = 1,028 + 1,049·B; half of 2³¹ − 1 leaves a 2× margin
    assert eigh.eigh_max_batch(4, (1028, 1049)) == (2**30 - 1 - 1028) // 1049 == 1023585
    assert 1049 * eigh.eigh_max_batch(4, (1028, 1049)) + 1028 < 2**30
    assert eigh.eigh_max_batch(8, (0, 2**40)) == 1


def test_eigh_chunked_equals_one_call():
    M = hermitian(np.random.default_rng(0), 23, 5)
    lin = Linalg()
    w, V = eigh.eigh_chunked(lin.eigh, M, np, max_batch=6)
    assert lin.batches == [6, 6, 6, 5]
    w1, V1 = np.linalg.eigh(M)
    np.testing.assert_array_equal(w, w1)
    np.testing.assert_array_equal(V, V1)


def test_cuda_backend_chunks_library_eigh(monkeypatch):
    """backend.eigh("cusolver") splits at eigh_max_batch, with the lwork query when it answers."""
    M = hermitian(np.random.default_rng(1), 30, 4)
    lin = Linalg()
    be = library_backend(lin)
    monkeypatch.setattr(eigh, "EIGH_MAX_BATCH", 7)
    w, V = be.eigh(M, "cusolver")
    assert lin.batches == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(w, np.linalg.eigh(M)[0])
    lin.batches.clear()
    monkeypatch.setattr(eigh, "EIGH_MAX_BATCH", 2**20)
    monkeypatch.setattr(eigh, "cusolver_lwork", lambda n, char, dev: (100, (2**30 - 100) // 10))
    be.eigh(M, "cusolver", vectors=False)
    assert lin.batches == [10, 10, 10]


def test_cusolver_lwork_without_cupy_is_none():
    if "cupy" in sys.modules or _cupy_importable():
        pytest.skip("CuPy is importable here: the query may answer")
    eigh.cusolver_lwork.cache_clear()
    assert eigh.cusolver_lwork(4, "F", 0) is None


def _cupy_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


# --- finding 2: never silent ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float32])
def test_probe_passes_correct_results(dtype):
    """No false alarm on LAPACK's results, n = 40 included, in single precision too."""
    rng = np.random.default_rng(2)
    for n in (1, 3, 8, 40):
        M = hermitian(rng, 17, n, np.complex128)
        M = (M.real if dtype == np.float32 else M).astype(dtype)
        w, V = np.linalg.eigh(M)
        assert int(eigh.eigh_probe(M, w, V, samples=None)) == 0
        assert int(eigh.eigh_probe(M, w, None, samples=None)) == 0
        assert int(eigh.eigh_probe(M[:0], w[:0], V[:0])) == 0


def test_probe_finds_wrong_results():
    rng = np.random.default_rng(3)
    M = hermitian(rng, 50, 6)
    w, V = np.linalg.eigh(M)
    bad = V.copy()
    bad[13, :, 2] *= 1.5  # not normalised
    bad[20] = bad[20][:, ::-1]  # orthonormal, but columns and eigenvalues do not match
    assert int(eigh.eigh_probe(M, w, bad, samples=None)) == 2
    assert int(eigh.eigh_probe(M, w, bad, samples=4)) == 1  # probes 0, 13, 26, 39: finds 13 only
    wrong = w.copy()
    wrong[26, 0] += 1e-3
    assert int(eigh.eigh_probe(M, wrong, None, samples=4)) == 1  # eigenvalues only: trace identity
    M[0, 0, 0] = np.nan
    assert int(eigh.eigh_probe(M, *np.linalg.eigh(np.nan_to_num(M)), samples=4)) == 1  # NaN input


def test_injected_bad_library_eigh_is_counted():
    M = hermitian(np.random.default_rng(4), 9, 5)
    failures = np.zeros((), np.int64)
    library_backend(Linalg()).eigh(M, "cusolver", failures)
    assert int(failures) == 0
    library_backend(Linalg(bad=True)).eigh(M, "cusolver", failures)
    assert int(failures) == probed(9) == 3  # every probed matrix is bad: 0, 3, 6
    library_backend(Linalg(bad=True)).eigh(M, "cusolver", failures, vectors=False)
    assert int(failures) == 2 * probed(9)


@pytest.mark.parametrize("cls", ["AffineEigenvaluePMM", "AffineObservablePMM"])
def test_fit_reports_bad_library_eigh_once_per_epoch(cls):
    """Training and validation passes through an eigensolver whose results are wrong: fit warns once per
    epoch with the count and records it; with a correct solver nothing is reported."""
    rng = np.random.default_rng(5)
    X, Y, Xv = rng.uniform(-1, 1, (12, 2)), rng.normal(size=(12, 1)), rng.uniform(-1, 1, (5, 2))
    kw = dict(n_eig=2, centered=False) if cls == "AffineObservablePMM" else {}
    m = getattr(pg, cls)(n=5, n_features=2, device="cpu", eigh_solver="cusolver", **kw)
    m.backend = library_backend(Linalg(bad=True))
    with pytest.warns(RuntimeWarning, match="did not converge") as rec:
        h = m.fit(X, Y, epochs=2, batch_size=4, validation_data=(Xv, Y[:5]), verbose=False)
    # 3 training calls of 4 matrices, every probed one bad, + the validation pass
    per_epoch = 3 * probed(4) + probed(5)
    assert h["eigh_not_converged"] == [per_epoch, per_epoch]
    assert len([w for w in rec if "did not converge" in str(w.message)]) == 2
    m.backend = library_backend(Linalg())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.fit(X, Y, epochs=1, batch_size=4, verbose=False)["eigh_not_converged"] == [0]


# --- finding 5: the fused assembly above FUSED_ASSEMBLY_MAX_P ---------------------------------------------
@pytest.fixture
def jacobi_calls(monkeypatch):
    """The Jacobi kernels in the emulator; the names of the launchers that ran."""
    emulator.route_kernels_to_emulator(monkeypatch)
    calls = []
    for name in ("eigh_jacobi_cuda", "assemble_eigh_jacobi_cuda", "assemble_eigh_observable_jacobi_cuda"):
        launcher = getattr(jacobi, name)
        monkeypatch.setattr(jacobi, name, lambda *a, _f=launcher, _n=name, **k: calls.append(_n) or _f(*a, **k))
    return calls


@pytest.mark.parametrize("cls", ["AffineEigenvaluePMM", "AffineObservablePMM"])
@pytest.mark.parametrize("p", [3, 40])
def test_gemm_assembly_above_threshold(cls, p, jacobi_calls, monkeypatch):
    rng = np.random.default_rng(6)
    X, Y = rng.uniform(-1, 1, (7, p)) / np.sqrt(p), rng.normal(size=(7, 2))
    kw = dict(n_outputs=2, n_eig=2, which="SA") if cls == "AffineObservablePMM" else dict(n_eig=2)
    ref = getattr(pg, cls)(n=5, n_features=p, device="cpu", seed=2, **kw)
    emu = getattr(pg, cls)(n=5, n_features=p, device="cpu", seed=2, eigh_solver="jacobi", **kw)
    emu.backend = emulator.cuda_backend_on_numpy(kernels=False)
    if p == 3:
        monkeypatch.setattr(backend, "FUSED_ASSEMBLY_MAX_P", 2)
    assert p > backend.FUSED_ASSEMBLY_MAX_P
    np.testing.assert_allclose(emu.predict(X), ref.predict(X), rtol=1e-10, atol=1e-12)
    (l1, g1), (l2, g2) = emu.loss_and_grad(X, Y), ref.loss_and_grad(X, Y)
    assert l1 == pytest.approx(l2, rel=1e-10)
    for k in g2:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-9, atol=1e-11)
    assert set(jacobi_calls) == {"eigh_jacobi_cuda"}  # never the fused launches


def test_fused_assembly_at_small_p(jacobi_calls):
    X = np.random.default_rng(7).uniform(-1, 1, (5, 2))
    m = pg.AffineObservablePMM(n=4, n_features=2, n_eig=2, device="cpu", eigh_solver="jacobi", centered=False)
    m.backend = emulator.cuda_backend_on_numpy(kernels=False)
    m.predict(X)
    m.loss_and_grad(X, np.zeros((5, 1)))
    assert jacobi_calls == ["assemble_eigh_observable_jacobi_cuda", "assemble_eigh_jacobi_cuda"]


# --- finding 6: one kernel object per (name, dtypes, device) ---------------------------------------------
def test_get_kernel_is_cached(monkeypatch):
    device = [0]
    modules: dict = {}

    class Module:
        def __init__(self):
            self.looked_up = []

        def get_function(self, name):
            self.looked_up.append(name)
            return ("kernel", name, len(self.looked_up))

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=device[0])))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(_cuda, "_module", lambda family, dev: modules.setdefault((family, dev), Module()))
    _cuda._kernel.cache_clear()
    try:
        k = _cuda.get_kernel("adam_step", np.dtype(np.float64))
        assert all(_cuda.get_kernel("adam_step", np.dtype(np.float64)) is k for _ in range(5))
        assert modules[("adam", 0)].looked_up == ["adam_step<double>"]
        assert _cuda.get_kernel("adam_step", np.dtype(np.float32)) is not k
        device[0] = 1
        assert _cuda.get_kernel("adam_step", np.dtype(np.float64)) is not k  # per device
        assert modules[("adam", 1)].looked_up == ["adam_step<double>"]
        with pytest.raises(TypeError, match="no instantiation"):
            _cuda.get_kernel("adam_step", np.dtype(np.complex64))
    finally:
        _cuda._kernel.cache_clear()


# --- a forced small grid: bit-identical (emulated kernels) ---------------------------------------------
@pytest.mark.parametrize("solver", ["cusolver", "jacobi"])
def test_small_grid_bit_identical_emulated(solver, monkeypatch):
    emulator.route_kernels_to_emulator(monkeypatch)
    rng = np.random.default_rng(8)
    X, Y = rng.uniform(-1, 1, (9, 2)), rng.normal(size=(9, 2))

    def run():
        out = []
        for cls, kw in ((pg.AffineEigenvaluePMM, dict(n_eig=2)), (pg.AffineObservablePMM, dict(n_outputs=2, n_eig=2))):
            m = cls(n=5, n_features=2, device="cpu", seed=4, eigh_solver=solver, **kw)
            m.backend = emulator.cuda_backend_on_numpy(kernels=True)
            value, grads = m.loss_and_grad(X, Y)
            m.fit(X, Y, epochs=1, batch_size=9, verbose=False)
            out += [m.predict(X), np.array(value), *grads.values(), m.backend.to_numpy(m.theta)]
        return out

    default = run()
    monkeypatch.setattr(_cuda, "MAX_GRID", 2)  # every grid- and block-stride loop runs several rounds
    for a, b in zip(run(), default):
        np.testing.assert_array_equal(a, b)
