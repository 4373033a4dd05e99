"""Device selection: 'auto' falls back to the CPU cleanly, 'cuda' without a GPU is a clear error."""
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
    import importlib
    import inspect

    from pmm_gpu.backend import KERNEL_OPS

    for module, op in KERNEL_OPS:
        mod = importlib.import_module(f"pmm_gpu.{module}")
        ref, cuda = getattr(mod, op), getattr(mod, op + "_cuda")
        assert list(inspect.signature(ref).parameters) == list(inspect.signature(cuda).parameters), op
