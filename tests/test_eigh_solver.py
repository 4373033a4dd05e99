"""The models' ``eigh_solver`` option (issue 7): swapping numpy.linalg.eigh for the Jacobi kernel leaves
outputs and gradients unchanged, and non-convergence is reported once per epoch, never silently.

The kernel runs on the CPU: ``emulator.cuda_backend_on_numpy(kernels=False)`` is the CUDA backend's
eigensolver dispatch (``eigh`` / ``assemble_eigh`` / ``assemble_eigh_observable``) on NumPy arrays with
the NumPy references for the other ops, and the kernel lookup routed to the g++
emulation (tests/emulator.py), so the CUDA code path — fused assemble + Jacobi without smoothing,
Jacobi on assembled matrices with smoothing and for the centering term's ‖D‖₂ — runs on NumPy arrays.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import emulator
import pmm_gpu as pg
from pmm_gpu import _cuda, backend
from pmm_gpu.ops import jacobi

TOL = {"float64": 1e-10, "float32": 1e-4}  # relative, norm-wise


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(_cuda, "get_kernel", emulator.get_kernel)
    calls = []
    for name in ("eigh_jacobi_cuda", "assemble_eigh_jacobi_cuda", "assemble_eigh_observable_jacobi_cuda"):  # which ran
        launcher = getattr(jacobi, name)
        monkeypatch.setattr(jacobi, name, lambda *a, _f=launcher, _n=name, **k: calls.append(_n) or _f(*a, **k))
    return calls


def pair(cls, solver="jacobi", **kw):
    """The same model twice: on the NumPy oracle, and with the emulated CUDA eigensolver."""
    ref = cls(device="cpu", seed=3, eigh_solver=solver, **kw)
    emu = cls(device="cpu", seed=3, eigh_solver=solver, **kw)
    emu.backend = emulator.cuda_backend_on_numpy(kernels=False)
    return ref, emu


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def assert_same(ref, emu, X, Y, dtype, loss="mse"):
    assert rel(emu.predict(X), ref.predict(X)) <= TOL[dtype]
    l_ref, g_ref = ref.loss_and_grad(X, Y, loss=loss)
    l_emu, g_emu = emu.loss_and_grad(X, Y, loss=loss)
    assert abs(l_emu - l_ref) <= TOL[dtype] * abs(l_ref)
    for k in g_ref:
        assert rel(g_emu[k], g_ref[k]) <= TOL[dtype], k


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("field,smoothing", [("real", 0.0), ("complex", 0.0), ("complex", 0.2)])
@pytest.mark.parametrize("which", ["SA", "LM"])
def test_eigenvalue_pmm_unchanged(which, field, smoothing, dtype, emulated):
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(-1, 1, (9, 2)), rng.normal(size=(9, 2))
    ref, emu = pair(pg.AffineEigenvaluePMM, n=6, n_features=2, n_eig=2, which=which, field=field,
                    smoothing=smoothing, dtype=dtype)
    assert_same(ref, emu, X, Y, dtype)
    # fused launch without smoothing; assemble, then the Jacobi kernel with it
    assert set(emulated) == {"eigh_jacobi_cuda" if smoothing else "assemble_eigh_jacobi_cuda"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("form", ["transition", "expectation"])
def test_observable_pmm_unchanged(form, field, dtype, emulated):
    rng = np.random.default_rng(1)
    X, Y = rng.uniform(-1, 1, (9, 3)), rng.normal(size=(9, 2))
    ref, emu = pair(pg.AffineObservablePMM, n=5, n_features=3, n_outputs=2, n_eig=2, n_secondaries=2,
                    form=form, field=field, dtype=dtype)
    assert_same(ref, emu, X, Y, dtype)
    # predict: the fused observable launch; training: M(x) fused; then ‖D‖₂ (centered) by the plain kernel
    assert set(emulated) == {"assemble_eigh_observable_jacobi_cuda", "assemble_eigh_jacobi_cuda", "eigh_jacobi_cuda"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("which", ["SA", "LA", "SM", "LM", "EA", "EM", "IA", "IM"])
def test_predict_writes_only_what_inference_needs(which, field, dtype, emulated, monkeypatch):
    """predict() with eigh_solver="jacobi" equals the NumPy backend's (float64: 1e-10), and takes the
    inference launches: AE-PMM the fused eigh with k = 0 (eigenvalues only), AO-PMM the fused
    assemble + eigh + observables kernel (no eigenvector leaves it), every ``which``."""
    ks = []
    launcher = jacobi.assemble_eigh_jacobi_cuda
    monkeypatch.setattr(jacobi, "assemble_eigh_jacobi_cuda", lambda *a, **k: ks.append(k.get("k")) or launcher(*a, **k))
    X = np.random.default_rng(8).uniform(-1, 1, (11, 3))
    ref, emu = pair(pg.AffineEigenvaluePMM, n=7, n_features=3, n_eig=3, which=which, field=field, dtype=dtype)
    assert rel(emu.predict(X, batch_size=4), ref.predict(X)) <= TOL[dtype]
    assert ks == [0, 0, 0] and emulated == ["assemble_eigh_jacobi_cuda"] * 3
    emulated.clear()
    for form in ("transition", "expectation"):
        ref, emu = pair(pg.AffineObservablePMM, n=7, n_features=3, n_outputs=3, n_eig=3, n_secondaries=2,
                        which=which, form=form, field=field, dtype=dtype)
        assert rel(emu.predict(X), ref.predict(X)) <= TOL[dtype]
    assert emulated == ["assemble_eigh_observable_jacobi_cuda", "eigh_jacobi_cuda"] * 2  # t; then ‖D‖₂ (centered)
    assert ks == [0, 0, 0]


def test_predict_with_smoothing_selects_in_python(emulated):
    """With a smoothing term there is no fused launch: assembled M, the plain kernel, then the columns."""
    X = np.random.default_rng(9).uniform(-1, 1, (6, 2))
    for cls, kw in ((pg.AffineEigenvaluePMM, {}), (pg.AffineObservablePMM, dict(n_eig=2, centered=False))):
        ref, emu = pair(cls, n=5, n_features=2, smoothing=0.3, **kw)
        assert rel(emu.predict(X), ref.predict(X)) <= TOL["float64"]
    assert emulated == ["eigh_jacobi_cuda"] * 2


def test_auto_and_cusolver_never_run_the_kernel(emulated, monkeypatch):
    X = np.random.default_rng(2).uniform(-1, 1, (4, 2))
    for solver in ("auto", "cusolver"):
        ref, emu = pair(pg.AffineEigenvaluePMM, solver, n=4, n_features=2)
        np.testing.assert_array_equal(emu.predict(X), ref.predict(X))  # cupy.linalg.eigh's place: LAPACK here
    assert emulated == []
    monkeypatch.setattr(backend, "AUTO_JACOBI_MAX_N", 32)  # the switch a GPU measurement would flip
    _, emu = pair(pg.AffineEigenvaluePMM, "auto", n=4, n_features=2)
    emu.predict(X)
    assert emulated == ["assemble_eigh_jacobi_cuda"]


def test_resolve_and_validate():
    assert backend.resolve_eigh_solver("auto", 8) == "cusolver"  # until a GPU measurement says otherwise
    assert backend.resolve_eigh_solver("jacobi", 32) == "jacobi"
    assert backend.resolve_eigh_solver("auto", 64) == "cusolver"
    with pytest.raises(ValueError, match="n <= 32"):
        pg.AffineEigenvaluePMM(n=33, n_features=1, device="cpu", eigh_solver="jacobi")
    with pytest.raises(ValueError, match="eigh_solver must be one of"):
        pg.AffineObservablePMM(n=4, n_features=1, n_eig=2, device="cpu", eigh_solver="lapack")
    pg.AffineEigenvaluePMM(n=33, n_features=1, device="cpu", eigh_solver="auto")  # cuSOLVER beyond 32


def test_saved_with_the_model(tmp_path):
    m = pg.AffineObservablePMM(n=4, n_features=2, n_eig=2, device="cpu", eigh_solver="jacobi")
    assert m.get_config()["eigh_solver"] == "jacobi"
    m.save(tmp_path / "m.npz")
    assert pg.load(tmp_path / "m.npz", device="cpu").eigh_solver == "jacobi"


def test_non_convergence_reported_once_per_epoch(emulated, monkeypatch):
    """One sweep is never enough at n = 7: every matrix is flagged on the device; fit warns once per
    epoch with the count (training + validation samples) and records it in the history."""
    rng = np.random.default_rng(4)
    X, Y, Xv = rng.uniform(-1, 1, (10, 2)), rng.normal(size=(10, 1)), rng.uniform(-1, 1, (3, 2))
    _, m = pair(pg.AffineEigenvaluePMM, n=7, n_features=2)
    monkeypatch.setattr(jacobi, "MAX_SWEEPS", 1)
    with pytest.warns(RuntimeWarning, match="13 eigendecompositions did not converge") as rec:
        h = m.fit(X, Y, epochs=2, batch_size=4, validation_data=(Xv, Y[:3]), verbose=False)
    assert len([w for w in rec if "did not converge" in str(w.message)]) == 2
    assert h["eigh_not_converged"] == [13, 13]
    monkeypatch.setattr(jacobi, "MAX_SWEEPS", 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.fit(X, Y, epochs=1, batch_size=4, verbose=False)["eigh_not_converged"] == [0]


def test_numpy_backend_counts_nothing():
    rng = np.random.default_rng(5)
    X, Y = rng.uniform(-1, 1, (8, 2)), rng.normal(size=(8, 1))
    m = pg.AffineEigenvaluePMM(n=5, n_features=2, device="cpu", eigh_solver="jacobi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.fit(X, Y, epochs=2, verbose=False)["eigh_not_converged"] == [0, 0]


def test_nan_input_is_reported(emulated):
    """A NaN in M(x) is flagged by the kernel. Its eigenvalues are not all NaN (the rotations touching
    the NaN row are skipped; NaN sorts last), so with which="SA" the loss may stay finite; the NaN
    parameter then stops training as diverged (fit checks the parameters after each epoch), and the
    warning carries the kernel's count either way."""
    X, Y = np.random.default_rng(6).uniform(-1, 1, (6, 2)), np.ones((6, 1))
    _, m = pair(pg.AffineEigenvaluePMM, n=4, n_features=2)
    m.params["primaries"][0, 0] = np.nan  # every M(x) holds NaN on its diagonal
    with pytest.warns(RuntimeWarning, match="6 eigendecompositions did not converge"):
        h = m.fit(X, Y, epochs=1, batch_size=3, verbose=False)
    assert h["eigh_not_converged"] == [6] or h["stop_reason"].startswith("diverged")


def test_bench_eigh_cuda_path_emulated(emulated):
    """profiling/bench_eigh.py's case E (profiling/eigh_case.py ``run_eigh``) on the "cuda" path (both
    solvers, the correctness check), with the emulated backend standing in for CuPy; tiny sizes."""
    from profiling import bench_eigh, eigh_case

    args = bench_eigh.parse(["--device", "cpu", "--sizes", "3,6", "--batch", "8", "--cusolver-batch", "4",
                             "--repeats", "1"])
    cfg = bench_eigh.EighConfig(args, "float64")
    records, checks, ok = eigh_case.run_eigh("cuda", cfg, [], ["pmm_gpu"], ("cusolver", "jacobi"),
                                             backend=emulator.cuda_backend_on_numpy(kernels=False))
    assert ok, checks
    assert [(r["solver"], r["n"], r["batch"]) for r in records] == [
        ("cusolver", 3, 4), ("jacobi", 3, 8), ("cusolver", 6, 4), ("jacobi", 6, 8)]
    assert all(r["not_converged"] == 0 for r in records) and len(checks) == 2
    assert "pmm_gpu/cusolver / engine" in bench_eigh.table(records)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["eigenvalue", "transition", "expectation"])
def test_jacobi_solver_gpu(kind, dtype):
    """On a GPU: eigh_solver="jacobi" (the real kernels, fused and not) against the NumPy oracle, and
    the device-side non-convergence count through fit."""
    rng = np.random.default_rng(7)
    X, Y = rng.uniform(-1, 1, (37, 3)), rng.normal(size=(37, 2))
    for smoothing in (0.0, 0.2):
        if kind == "eigenvalue":
            kw = dict(n=11, n_features=3, n_eig=2, which="SA")
            cls = pg.AffineEigenvaluePMM
        else:
            kw = dict(n=11, n_features=3, n_outputs=2, n_eig=3, form=kind)
            cls = pg.AffineObservablePMM
        ref = cls(device="cpu", seed=3, dtype=dtype, smoothing=smoothing, **kw)
        gpu = cls(device="cuda", seed=3, dtype=dtype, smoothing=smoothing, eigh_solver="jacobi", **kw)
        assert_same(ref, gpu, X, Y, dtype)
    assert gpu.fit(X, Y, epochs=2, batch_size=8, verbose=False)["eigh_not_converged"] == [0, 0]
