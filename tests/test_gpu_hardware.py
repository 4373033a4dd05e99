"""Issue 12's hardware checks: what the CPU emulator cannot show. All ``gpu``-marked (skipped without a
GPU); profiling/gpu_check.sh runs them (the sanitizer run, also ``slow``, in a step of its own).

- a forced small grid (``_cuda.MAX_GRID = 2``) gives bit-identical results to the default grid;
- cuSOLVER at n = 4 and 8 with 2²² complex64 matrices in one call of ``backend.eigh`` (chunked by
  ``eigh.eigh_max_batch``): no exception, correct results;
- cuSOLVER at n = 40, called 4 times on one input: orthonormal eigenvectors and small residuals every time;
- the Jacobi kernel's failures (max_sweeps = 1, NaN input) reported through ``fit``;
- every selection mode, k ∈ {0, 1, n}, odd thread counts, plain and fused Jacobi kernels;
- scaled, clustered and degenerate n = 32 matrices: accurate, a third of the sweep cap left unused;
- assembly and ``eigvals_vjp`` past 2³¹ elements (64-bit indexing);
- compute-sanitizer memcheck and racecheck over one launch of every kernel (``launch_every_kernel``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu import _cuda
from pmm_gpu.ops import assemble, eigh, jacobi

pytestmark = pytest.mark.gpu
TOL = {np.float32: 1e-5, np.float64: 1e-12}
SWEEP_RESERVE = 3  # the hardest n = 32 batch may use at most (1 − 1/3) of jacobi.MAX_SWEEPS (30: 20 sweeps)


def random_hermitian(rng, B, n, field="complex"):
    A = rng.standard_normal((B, n, n)) + (1j * rng.standard_normal((B, n, n)) if field == "complex" else 0)
    return (A + np.conj(A.swapaxes(1, 2))) / 2


def models(device, solver, dtype="float64", **kw):
    return [pg.AffineEigenvaluePMM(n=5, n_features=2, n_eig=2, device=device, seed=4, eigh_solver=solver,
                                   dtype=dtype, **kw),
            pg.AffineObservablePMM(n=5, n_features=2, n_outputs=2, n_eig=2, device=device, seed=4,
                                   eigh_solver=solver, dtype=dtype, **kw)]


@pytest.mark.parametrize("solver", ["cusolver", "jacobi"])
def test_small_grid_bit_identical(solver, monkeypatch):
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(-1, 1, (300, 2)), rng.normal(size=(300, 2))

    def run():
        out = []
        for m in models("cuda", solver):
            value, grads = m.loss_and_grad(X, Y)
            m.fit(X, Y, epochs=1, batch_size=100, verbose=False)
            out += [m.predict(X), np.array(value), *grads.values(), m.backend.to_numpy(m.theta)]
        return out

    default = run()
    monkeypatch.setattr(_cuda, "MAX_GRID", 2)
    for a, b in zip(run(), default):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [4, 8])
def test_cusolver_batch_of_4m_complex64(n, record_property):
    import cupy

    be, B = pg.get_backend("cuda"), 2**22
    rs = cupy.random.RandomState(n)
    A = rs.standard_normal((B, n, n), dtype=np.float32) + 1j * rs.standard_normal((B, n, n), dtype=np.float32)
    M = (A + cupy.conj(A.swapaxes(1, 2))).astype(np.complex64)
    del A
    lwork = eigh.cusolver_lwork(n, "F", cupy.cuda.Device().id)
    record_property("lwork", str(lwork))
    assert eigh.eigh_max_batch(n, lwork) < B  # the call is split
    failures = cupy.zeros((), np.int64)
    w, V = be.eigh(M, "cusolver", failures)
    assert w.shape == (B, n) and V.shape == (B, n, n)
    assert int(failures) == 0 and int(eigh.eigh_probe(M, w, V, samples=4096)) == 0
    w2, _ = be.eigh(M, "cusolver", failures, vectors=False)
    assert float(abs(w2 - w).max()) <= 1e-4 * float(abs(w).max()) and int(failures) == 0


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_cusolver_n40_repeated(dtype):
    """pytorch/pytorch#192483: batched complex eigh at n = 40 returned non-orthonormal eigenvectors. Four
    calls on one input must each give a correct decomposition (the probe checks every matrix here)."""
    import cupy

    be = pg.get_backend("cuda")
    M = cupy.asarray(random_hermitian(np.random.default_rng(1), 2048, 40).astype(dtype))
    ws = []
    for call in range(4):
        failures = cupy.zeros((), np.int64)
        w, V = be.eigh(M, "cusolver", failures)
        bad = int(eigh.eigh_probe(M, w, V, samples=None))
        assert bad == 0, f"call {call}: {bad} of 2048 decompositions wrong (sampled probe counted {int(failures)})"
        ws.append(cupy.asnumpy(w))
    scale = np.abs(ws[0]).max()
    assert all(np.abs(w - ws[0]).max() <= 100 * TOL[np.finfo(dtype).dtype.type] * scale for w in ws)


def test_jacobi_failures_reported_by_fit(monkeypatch):
    rng = np.random.default_rng(2)
    X, Y, Xv = rng.uniform(-1, 1, (10, 2)), rng.normal(size=(10, 1)), rng.uniform(-1, 1, (3, 2))
    for m in (pg.AffineEigenvaluePMM(n=7, n_features=2, device="cuda", eigh_solver="jacobi"),
              pg.AffineObservablePMM(n=7, n_features=2, n_eig=2, centered=False, device="cuda", eigh_solver="jacobi")):
        monkeypatch.setattr(jacobi, "MAX_SWEEPS", 1)  # never enough at n = 7
        with pytest.warns(RuntimeWarning, match="13 eigendecompositions did not converge"):
            h = m.fit(X, Y, epochs=2, batch_size=4, validation_data=(Xv, Y[:3]), verbose=False)
        assert h["eigh_not_converged"] == [13, 13]
        monkeypatch.setattr(jacobi, "MAX_SWEEPS", 60)
        m.params["primaries"][0, 0] = np.nan  # every M(x) holds NaN
        with pytest.warns(RuntimeWarning, match="did not converge"):
            h = m.fit(X, Y, epochs=1, batch_size=4, verbose=False)
        assert h["eigh_not_converged"] in ([10], [])  # [] if the NaN loss stopped the epoch first


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("which", eigh.WHICH)
def test_every_selection_and_odd_threads(which, field, real):
    import cupy

    rng = np.random.default_rng([3, eigh.WHICH.index(which)])
    tol, vtol = 100 * TOL[real], (1e-3 if real == np.float32 else 1e-8)
    elem = real if field == "real" else np.result_type(real, np.complex64)
    for n in (7, 16):
        x = rng.uniform(-1, 1, (33, 2)).astype(real)
        Pp = rng.standard_normal((3, assemble.packed_size(n, field))).astype(real)
        M = assemble.assemble_forward(np.concatenate([np.ones((33, 1)), x], 1) @ Pp.astype(np.float64), n, field)
        wr, Vr = np.linalg.eigh(M)
        for k in (0, 1, n):
            Vs = np.take_along_axis(Vr, eigh.select_indices(wr, k, which)[:, None, :], axis=2)  # (33, n, k)
            for threads in (33, 97, 255):
                plain = jacobi.eigh_jacobi_cuda(cupy.asarray(M.astype(elem)), k=k, which=which, threads=threads)
                fused = jacobi.assemble_eigh_jacobi_cuda(cupy.asarray(x), cupy.asarray(Pp), n, field, k=k,
                                                         which=which, threads=threads)
                for w, V, sweeps in (plain, fused):
                    w, V = cupy.asnumpy(w), cupy.asnumpy(V)
                    assert np.all(cupy.asnumpy(sweeps) >= 0)
                    assert np.abs(w - wr).max() <= tol * np.abs(wr).max()
                    assert V.shape == (33, n, k)
                    overlap = np.abs(np.einsum("bij,bij->bj", np.conj(V), Vs))  # |<v, v_ref>| = 1 per column
                    assert k == 0 or np.abs(overlap - 1).max() <= vtol, (n, k, threads)


def structured(rng, kind, B, n, field, real):
    """Batches the Jacobi kernel finds hard: 'scaled' (a random matrix times 10^±e, e = 100 in float64,
    15 in float32), 'clustered' (eigenvalues 1 + j·δ, δ = 1e-9 / 1e-4) and 'degenerate' (from {−2, 0, 1, 3})."""
    out = []
    for _ in range(B):
        Z = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if field == "complex" else 0)
        if kind == "scaled":
            e = 100 if real == np.float64 else 15
            out.append((Z + np.conj(Z.T)) * 10.0 ** rng.choice([-e, e]))
            continue
        Q, _ = np.linalg.qr(Z)
        lam = (1 + np.arange(n) * (1e-9 if real == np.float64 else 1e-4) if kind == "clustered"
               else rng.choice([-2.0, 0.0, 1.0, 3.0], n))
        out.append((Q * lam) @ np.conj(Q.T))
    M = np.stack(out).astype(real if field == "real" else np.result_type(real, np.complex64))
    return (M + np.conj(M.swapaxes(1, 2))) / 2


@pytest.mark.parametrize("real", [np.float32, np.float64])
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("kind", ["scaled", "clustered", "degenerate"])
def test_hard_n32_batches(kind, field, real, record_property):
    import cupy

    M = structured(np.random.default_rng(4), kind, 128, 32, field, real)
    w, V, sweeps = (cupy.asnumpy(a) for a in jacobi.eigh_jacobi_cuda(cupy.asarray(M)))
    record_property("sweeps", f"median {np.median(sweeps)}, max {sweeps.max()}")
    limit = jacobi.MAX_SWEEPS - jacobi.MAX_SWEEPS // SWEEP_RESERVE
    assert sweeps.min() >= 0 and sweeps.max() <= limit, (sweeps.max(), limit)
    M64, V64 = M.astype(np.complex128), V.astype(np.complex128)
    norm = np.abs(np.linalg.eigvalsh(M64)).max(axis=1)
    assert (np.abs(w - np.linalg.eigvalsh(M64)).max(axis=1) <= 10 * TOL[real] * norm).all()
    resid = np.linalg.norm(M64 @ V64 - V64 * w[:, None, :], axis=(1, 2)) / norm
    orth = np.abs(np.conj(V64.swapaxes(1, 2)) @ V64 - np.eye(32)).max(axis=(1, 2))
    assert resid.max() <= 100 * TOL[real] and orth.max() <= 100 * TOL[real], (resid.max(), orth.max())


def test_past_2_31_elements():
    """Element-wise kernels index 64-bit: the rows at the end of a batch of B·n² > 2³¹ elements are right."""
    import cupy

    n, B = 8, 2**31 // 64 + 3  # real float32: 8.6 GB of M, 4.8 GB of packed Mp and of its cotangent
    P = assemble.packed_size(n, "real")
    tail = np.random.default_rng(5).standard_normal((4, P)).astype(np.float32)
    Mp = cupy.empty((B, P), np.float32)
    Mp[...] = cupy.arange(P, dtype=np.float32)
    Mp[:2], Mp[-2:] = cupy.asarray(tail[:2]), cupy.asarray(tail[2:])
    M = assemble.assemble_forward_cuda(Mp, n, "real")
    del Mp
    ends = cupy.asnumpy(cupy.concatenate([M[:2], M[-2:]]))
    np.testing.assert_array_equal(ends, assemble.assemble_forward(tail, n, "real"))
    G = assemble.assemble_backward_cuda(M, n, "real")
    np.testing.assert_allclose(cupy.asnumpy(G[-2:]), assemble.assemble_backward(ends[2:], n, "real"), rtol=1e-6)
    del G
    V = M[:, :, :1]
    A = eigh.eigvals_vjp_cuda(V, cupy.ones((B, 1), np.float32))
    np.testing.assert_allclose(cupy.asnumpy(A[-2:]), eigh.eigvals_vjp(ends[2:, :, :1], np.ones((2, 1), np.float32)),
                               rtol=1e-6)


def launch_every_kernel(dtypes=("float32", "float64")):
    """One tiny launch of every kernel family, in ``dtypes``, both fields (for compute-sanitizer)."""
    rng = np.random.default_rng(6)
    X, Y = rng.uniform(-1, 1, (9, 2)), rng.normal(size=(9, 2))
    for dtype in dtypes:
        for field in ("real", "complex"):
            for solver in ("jacobi", "cusolver"):
                for m in models("cuda", solver, dtype, field=field):
                    m.fit(X, Y, epochs=1, batch_size=9, verbose=False)  # forward, backward, Adam
                    m.predict(X)  # the inference launches
        for m in models("cuda", "jacobi", dtype, smoothing=0.2):  # the plain Jacobi kernel on assembled M
            m.fit(X, Y, epochs=1, batch_size=9, verbose=False)
    pg.get_backend("cuda").synchronize()


def _sanitizer() -> str | None:
    return shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool):
    tool_path = _sanitizer()
    if tool_path is None:
        pytest.skip("compute-sanitizer not found")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    dtypes = ("float32", "float64") if tool == "memcheck" else ("float64",)  # racecheck is the slow one
    cmd = [tool_path, "--tool", tool, "--error-exitcode", "99", sys.executable, "-c",
           f"import test_gpu_hardware as t; t.launch_every_kernel({dtypes!r})"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=150)
    if "Device not supported" in r.stdout + r.stderr:
        pytest.skip(f"compute-sanitizer refuses this device: {(r.stdout + r.stderr)[-300:]}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
