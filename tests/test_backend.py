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
