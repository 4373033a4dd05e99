"""The benchmark's engines do the same work: from pmm_gpu's initial parameters, the PyTorch peer
(profiling/torch_pmm.py) takes the same Adam steps on the same batches and reaches the same loss."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiling"))
import bench  # noqa: E402
import torch_pmm  # noqa: E402


def small(case: bench.Case) -> bench.Case:
    """The case's model on a small batch (full-batch steps) with p capped, so the test runs in a second."""
    p = min(case.p, 5)
    return bench.Case(case.name, case.kind, case.n, p, case.k, case.outputs, batch=64, loss=case.loss,
                      model_kw=case.model_kw)


@pytest.mark.parametrize("name", ["A", "B", "C", "D"])
def test_same_parameters_same_losses(name):
    case = small(bench.CASES[name])
    X, Y = bench.make_data(case, case.batch, "float64")
    pmm = bench.PmmEngine(case, "cpu", "float64", X, Y, lr=1e-2)
    peer = bench.TorchEngine(case, "cpu", "float64", X, Y, 1e-2, pmm.initial_params())
    assert peer.loss() == pytest.approx(pmm.loss(), rel=1e-12)
    h = pmm.model.fit(X, Y, epochs=4, batch_size=case.batch, lr=1e-2, loss=case.loss, restore_best=False,
                      seed=0, verbose=False)
    losses, _ = torch_pmm.fit(peer.model, peer.opt, peer.X, peer.Y, epochs=4, batch_size=case.batch,
                              loss=case.loss, seed=0)
    np.testing.assert_allclose(losses, h["loss"], rtol=1e-10)
    assert peer.loss() == pytest.approx(pmm.loss(), rel=1e-10)
    assert h["loss"][-1] < h["loss"][0]  # the steps did something


def test_quick_bench_runs_and_writes_records(tmp_path):
    out = tmp_path / "out.json"
    rc = bench.main(["--quick", "--cases", "A", "--engines", "pmm_gpu,torch", "--device", "cpu",
                     "--samples", "256", "--repeats", "1", "--epochs", "1", "--json", str(out)])
    assert rc == 0
    import json

    recs = json.loads(out.read_text())
    keys = {"case", "engine", "device", "dtype", "metric", "median", "min", "max", "n_runs", "commit", "host"}
    assert all(keys <= set(r) for r in recs)
    assert {r["metric"] for r in recs} == {"train_samples_per_s", "infer_samples_per_s", "peak_rss_mb", "final_loss"}
    assert {r["engine"] for r in recs} == {"pmm_gpu", "torch"}
