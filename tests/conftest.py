import pytest

from pmm_gpu.backend import cuda_status


def pytest_collection_modifyitems(config, items):
    ok, why = cuda_status()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
