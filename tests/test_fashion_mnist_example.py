"""The Fashion-MNIST example end to end at reduced size (slow; needs dataset-fashion-mnist)."""
import importlib.util
import os
from pathlib import Path

import pytest

from pmm_gpu import datasets

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist.py"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(os.path.join(datasets.fashion_mnist_dir(), "train-images-idx3-ubyte.gz")),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_example_reduced():
    spec = importlib.util.spec_from_file_location("fashion_mnist_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.main(["--seed", "0", "--epochs", "3", "--train-limit", "6000", "--val", "1000",
                  "--test-limit", "2000", "--quiet"])
    assert r["n_params"] <= mod.PARAM_BUDGET
    assert r["n_train"] == 5000 and r["n_val"] == 1000 and r["n_test"] == 2000
    assert r["test_accuracy"] > 0.75  # 3 epochs on 5,000 images
