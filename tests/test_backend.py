"""Device selection: 'auto' falls back to the CPU cleanly, 'cuda' without a GPU is a clear error."""
import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu.backend import cuda_status, get_backend


def test_auto_matches_cuda_status():
    assert get_backend("auto").name == ("cuda" if cuda_status()[0] else "cpu")


@pytest.mark.skipif(cuda_status()[0], reason="a GPU is usable here; the no-GPU error path cannot be exercised")
def test_cuda_without_gpu_is_clear_error():
    with pytest.raises(RuntimeError, match="no GPU is usable"):
        pg.AffineEigenvaluePMM(n=3, n_features=1, device="cuda")


def test_unknown_device():
    with pytest.raises(ValueError, match="device must be one of"):
        get_backend("tpu")


def test_cuda_status_never_raises():
    ok, why = cuda_status()
    assert isinstance(ok, bool) and why


def test_every_kernel_op_has_reference_and_launcher_with_one_signature():
    import dataclasses
    import inspect

    from pmm_gpu.backend import CUDA_OPS, NUMPY_OPS

    for f in dataclasses.fields(NUMPY_OPS):
        ref, cuda = getattr(NUMPY_OPS, f.name), getattr(CUDA_OPS, f.name)
        assert (ref.__name__, cuda.__name__, ref.__module__) == (f.name, f.name + "_cuda", cuda.__module__)
        assert list(inspect.signature(ref).parameters) == list(inspect.signature(cuda).parameters), f.name


def test_cpu_eigh_split_over_threads_equals_one_call(monkeypatch):
    """The thread-pool split runs the same LAPACK routine per matrix: results are bitwise identical."""
    from pmm_gpu.backend import NumpyBackend, set_num_threads

    rng = np.random.default_rng(0)
    A = rng.normal(size=(301, 6, 6)) + 1j * rng.normal(size=(301, 6, 6))
    M = A + np.conj(A.swapaxes(1, 2))
    monkeypatch.setattr(NumpyBackend, "num_threads", NumpyBackend.num_threads)  # restored after the test
    set_num_threads(3)
    be = NumpyBackend()
    w, V = be.eigh(M)
    w_ref, V_ref = np.linalg.eigh(M)
    np.testing.assert_array_equal(w, w_ref)
    np.testing.assert_array_equal(V, V_ref)
    w_only, none = be.eigh(M, vectors=False)
    assert none is None
    np.testing.assert_array_equal(w_only, np.linalg.eigvalsh(M))
    with pytest.raises(ValueError, match="num_threads must be an int >= 1"):
        set_num_threads(0)


def test_split_parts_cover_the_batch_and_never_nest(monkeypatch):
    """split: contiguous parts covering 0..B, one per thread (at least MIN_PART items each); one part
    inside a part that already runs on the pool (a nested split would wait on the pool it occupies)."""
    from pmm_gpu import backend as bk

    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 3)
    be = bk.NumpyBackend()
    assert be.split(127) == [(0, 127)] and be.split(128) == [(0, 64), (64, 128)]  # two parts need 2 × 64
    assert be.split(200) == [(0, 66), (66, 133), (133, 200)]
    assert be.split(100) == [(0, 100)] and be.split(0) == [(0, 0)]
    inner = be.map(lambda B: be.split(B), [1000, 1000])
    assert inner == [[(0, 1000)], [(0, 1000)]]
    assert be.split(1000)[-1] == (666, 1000)  # back outside the pool: split again


def test_map_waits_for_every_part_and_raises_the_first_error(monkeypatch):
    import threading
    import time

    from pmm_gpu import backend as bk

    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 2)
    be, finished = bk.NumpyBackend(), []

    def part(i):
        if i == 0:
            raise ValueError("part 0 failed")
        time.sleep(0.2)
        finished.append(threading.current_thread().name)
        return i

    with pytest.raises(ValueError, match="part 0 failed"):
        be.map(part, [0, 1])
    assert len(finished) == 1 and finished[0].startswith("pmm_gpu-cpu")  # ran on the pool, and finished
    assert be.map(lambda i: i * i, [3, 4, 5]) == [9, 16, 25]  # in item order


@pytest.mark.parametrize("model", ["eigenvalue", "observable"])
def test_threaded_step_equals_one_thread(model, monkeypatch):
    """The step split over threads (forward and backward per part, the loss once on the joined outputs)
    against one thread: the loss bitwise, the gradient to 1e-13 relative (the parts' sum is rounded
    differently), for a loss that is not a mean over the batch (a split into separate means would be
    wrong by the parts' weights)."""
    from pmm_gpu import backend as bk

    rng = np.random.default_rng(3)
    X, Y = rng.uniform(-1, 1, (300, 3)), rng.normal(size=(300, 2))
    kw = dict(n_eig=2) if model == "eigenvalue" else dict(n_outputs=2, n_eig=2)
    cls = pg.AffineEigenvaluePMM if model == "eigenvalue" else pg.AffineObservablePMM
    m = cls(n=5, n_features=3, device="cpu", seed=0, **kw)

    def sum_of_max_sq(pred, target):  # max over the batch: any split changes its value, not just its scale
        d = (pred - target) ** 2
        g = np.zeros_like(d)
        g[np.argmax(d, axis=0), np.arange(d.shape[1])] = 2 * (pred - target)[np.argmax(d, axis=0), np.arange(d.shape[1])]
        return d.max(axis=0).sum(), g

    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 1)
    v1, g1 = m.loss_and_grad(X, Y, loss=sum_of_max_sq)
    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 4)
    assert len(m.backend.split(300)) == 4
    v4, g4 = m.loss_and_grad(X, Y, loss=sum_of_max_sq)
    assert v4 == v1
    for k in g1:
        err = np.abs(g4[k] - g1[k]).max() / np.abs(g1[k]).max()
        assert err <= 1e-13, (k, err)


@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("cotangent", ["hermitian", "general", "real"])
def test_folded_and_packed_assembly_agree(field, cotangent, monkeypatch):
    """assemble and assemble_vjp: the folded GEMM over the full matrices (p <= FOLDED_ASSEMBLY_MAX_P) and the
    packed GEMM with the unpacking (above it) give bitwise the same M(x), and cotangents equal to 1e-14
    relative, for Hermitian, non-Hermitian and real Ā; and the folded vjp against its definition."""
    from pmm_gpu import backend as bk
    from pmm_gpu.ops.assemble import assemble_backward, assemble_forward, packed_size

    rng = np.random.default_rng(5)
    n, p, B = 5, 3, 40
    X, Pp = rng.uniform(-1, 1, (B, p)), rng.normal(size=(p + 1, packed_size(n, field)))
    A = rng.normal(size=(B, n, n)) + (0 if cotangent == "real" or field == "real" else 1j * rng.normal(size=(B, n, n)))
    if cotangent == "hermitian":
        A = A + np.conj(A.swapaxes(1, 2))
    be = bk.NumpyBackend()
    folded = be.assemble(X, Pp, n, field), be.assemble_vjp(X, Pp, A, n, field)
    monkeypatch.setattr(bk, "FOLDED_ASSEMBLY_MAX_P", 0)
    packed = be.assemble(X, Pp, n, field), be.assemble_vjp(X, Pp, A, n, field)
    np.testing.assert_array_equal(folded[0], packed[0])
    for got, ref in zip(folded[1], packed[1]):
        assert np.abs(got - ref).max() <= 1e-14 * np.abs(ref).max()
    Ms = assemble_forward(Pp, n, field)  # the definition: P̄ = Σ_b x1_b G_b, X̄_bi = Re tr(Ā_bᴴ M_i)
    X1 = np.c_[np.ones(B), X]
    np.testing.assert_allclose(folded[1][0], X1.T @ assemble_backward(A, n, field), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(folded[1][1], np.einsum("bjk,ijk->bi", np.conj(A), Ms[1:]).real, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("model", ["eigenvalue", "observable"])
def test_threaded_predict_equals_one_thread(model, monkeypatch):
    """predict (and validation) run the forward over the split batch: the same outputs as one thread (each
    sample's math is its own; 1e-14 allows a GEMM that blocks the joined batch differently)."""
    from pmm_gpu import backend as bk

    X = np.random.default_rng(4).uniform(-1, 1, (500, 2))
    cls = pg.AffineEigenvaluePMM if model == "eigenvalue" else pg.AffineObservablePMM
    m = cls(n=6, n_features=2, device="cpu", seed=1, **({"n_eig": 2} if model == "eigenvalue" else {"n_outputs": 3}))
    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 1)
    ref = m.predict(X)
    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 3)
    got = m.predict(X)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-14)
    assert got.shape == (500, m.n_outputs)


def test_blas_holds_one_thread_inside_parts_and_is_restored(monkeypatch):
    """While split parts run, BLAS has one thread (no oversubscription); afterwards the original count is
    back, also when two callers on separate threads overlap (a counted limit)."""
    import threading
    import time

    threadpoolctl = pytest.importorskip("threadpoolctl")
    from pmm_gpu import backend as bk

    blas = lambda: [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not blas():
        pytest.skip("threadpoolctl sees no BLAS library")
    monkeypatch.setattr(bk.NumpyBackend, "num_threads", 2)
    be = bk.NumpyBackend()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas()
        inside = be.map(lambda i: blas(), [0, 1])
        assert inside == [[1] * len(before)] * 2 and blas() == before
        # Overlapping callers: A enters first and leaves first, B enters while A's limit holds and leaves
        # last (pmm_gpu counts them, so B restores nothing it found on entry).
        barrier, a_inside = threading.Barrier(2), threading.Event()

        def part_a(i):
            if i == 0:
                a_inside.set()
                barrier.wait(timeout=10)

        def part_b(i):
            if i == 0:
                barrier.wait(timeout=10)
                time.sleep(0.2)

        a = threading.Thread(target=be.map, args=(part_a, [0, 1]))
        b = threading.Thread(target=be.map, args=(part_b, [0, 1]))
        a.start()
        assert a_inside.wait(timeout=10)
        b.start()
        a.join(timeout=30)
        b.join(timeout=30)
        assert blas() == before
