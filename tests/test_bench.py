"""The benchmark (profiling/, a package run as ``python -m profiling.<module>``): its engines do the same
work (from pmm_gpu's initial parameters the PyTorch peer takes the same Adam steps on the same batches
and reaches the same loss); its records are written as it goes, so an interrupted run keeps them; case E
is one ``run_eigh`` for bench and bench_eigh; the GPU check's plumbing (compile step, summary, budgets)."""
import json
import pathlib
import re
import subprocess

import numpy as np
import pytest

from profiling import bench, compile_kernels, eigh_case, gpu_check_summary

ROOT = pathlib.Path(__file__).resolve().parent.parent


def small(case: bench.Case) -> bench.Case:
    """The case's model on a small batch (full-batch steps) with p capped, so the test runs in a second."""
    p = min(case.p, 5)
    return bench.Case(case.name, case.kind, case.n, p, case.k, case.outputs, batch=64, loss=case.loss,
                      model_kw=case.model_kw)


@pytest.mark.parametrize("name", ["A", "B", "C", "D"])
def test_same_parameters_same_losses(name):
    pytest.importorskip("torch")
    from profiling import torch_pmm

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
    pytest.importorskip("torch")
    out = tmp_path / "out.json"
    rc = bench.main(["--quick", "--cases", "A,E", "--engines", "pmm_gpu,torch", "--device", "cpu",
                     "--samples", "256", "--repeats", "1", "--epochs", "1", "--json", str(out)])
    assert rc == 0
    recs = json.loads(out.read_text())
    keys = {"case", "engine", "device", "dtype", "metric", "median", "min", "max", "n_runs", "commit", "host"}
    assert all(keys <= set(r) for r in recs)
    assert {r["metric"] for r in recs} == {"train_samples_per_s", "infer_samples_per_s", "peak_rss_mb", "final_loss",
                                           "eigh_matrices_per_s"}
    assert {r["engine"] for r in recs} == {"pmm_gpu", "torch"}
    e = [r for r in recs if r["case"] == "E"]
    assert {r["n"] for r in e} == {8, 16} and all(r["max_rel_diff"] <= 1e-12 for r in e)


def test_interrupted_run_keeps_its_records(tmp_path, monkeypatch, capsys):
    """A timeout (SIGINT -> KeyboardInterrupt) after case A: the JSON file already holds A's records,
    the table is printed, the exit status says interrupted."""
    real = bench.run_case

    def run_case(case, *a, **k):
        if case.name == "B":
            raise KeyboardInterrupt
        return real(case, *a, **k)

    monkeypatch.setattr(bench, "run_case", run_case)
    out = tmp_path / "out.json"
    rc = bench.main(["--cases", "A,B,C", "--engines", "pmm_gpu", "--device", "cpu", "--samples", "128",
                     "--repeats", "1", "--epochs", "1", "--json", str(out)])
    assert rc == 130
    assert {r["case"] for r in json.loads(out.read_text())} == {"A"}
    assert "| A | cpu | pmm_gpu |" in capsys.readouterr().out


def test_run_eigh_one_function_for_both_benches(tmp_path):
    """bench_eigh's configuration through the same run_eigh: one record per (n, solver), written as it goes."""
    from profiling import bench_eigh

    args = bench_eigh.parse(["--device", "cpu", "--quick", "--sizes", "3,5", "--batch", "40", "--repeats", "1"])
    cfg = bench_eigh.EighConfig(args, "float64")
    seen = []
    records, checks, ok = eigh_case.run_eigh("cpu", cfg, [], ["pmm_gpu"], ("cusolver", "jacobi"), on_record=seen.append)
    assert ok and [(r["engine"], r["n"], r["batch"]) for r in records] == [("pmm_gpu/numpy", 3, 40),
                                                                            ("pmm_gpu/numpy", 5, 40)]
    assert len(seen) == 2 and checks == []
    assert bench_eigh.main(["--device", "cpu", "--quick", "--cases", "E", "--sizes", "4", "--dtypes", "float32",
                            "--repeats", "1", "--json", str(tmp_path / "e.json")]) == 0
    assert len(json.loads((tmp_path / "e.json").read_text())) == 1


def test_compile_step_names_failures(monkeypatch):
    """compile_kernels compiles a family whole, and on failure each instantiation alone, naming the bad one."""
    def compile_fn(family, exprs):
        if exprs != ["k<float>"]:
            raise RuntimeError("error: no instance")
        return {e: {} for e in exprs}

    monkeypatch.setattr(compile_kernels._cuda, "name_expressions", lambda family: ["k<float>", "k<double>"])
    recs = compile_kernels.compile_family("fake", compile_fn)
    assert [(r["kernel"], r["ok"]) for r in recs] == [("k<float>", True), ("k<double>", False)]
    assert "no instance" in recs[1]["error"]


def test_summary_of_a_cut_short_check(tmp_path, monkeypatch, capsys):
    """The summary reads what a timed-out check left: test counts from the -v log when there is no
    junit file; it writes the result files into profiling/results and prints the table last."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.tsv").write_text("step\tbudget_s\texit\tseconds\ncompile\t60\t0\t20\ntests\t95\t124\t95\n"
                                    "bench\t45\t0\t30\nbench_eigh\t55\t0\t40\nsanitizer\t0\tskipped: none\t0\n")
    (work / "tests.log").write_text("tests/test_a.py::test_x PASSED\ntests/test_a.py::test_y FAILED\n")
    (work / "bench.json").write_text(json.dumps([{"case": "A", "engine": "pmm_gpu", "device": "cuda", "dtype": "float64",
                                                  "metric": "train_samples_per_s", "median": 1e6}]))
    results = tmp_path / "root"
    (results / "profiling").mkdir(parents=True)
    monkeypatch.setattr(gpu_check_summary.env, "ROOT", str(results))
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check_summary.main([str(work)]) == 1  # the tests step timed out
    out = capsys.readouterr().out
    assert "TIMEOUT (exit 124)" in out and "1 passed, 1 failed" in out and "train_samples_per_s 1,000,000" in out
    assert out.rstrip().splitlines()[-1].startswith("A pmm_gpu cuda")  # the table is last
    assert len(list((results / "profiling" / "results").glob("gpu-*.md"))) == 1


def test_gpu_check_script_budgets():
    """gpu_check.sh parses, and its step budgets sum to less than six minutes."""
    script = ROOT / "profiling" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    budgets = [int(b) for b in re.findall(r"^\s*(?:\S+=\S+ )?step \w+ (\d+) ", text, re.MULTILINE)]
    budgets += [int(b) for b in re.findall(r"timeout -s INT -k 5 (\d+) ", text)]
    assert len(budgets) >= 8 and sum(budgets) + 5 * len(budgets) < 360, budgets  # + 5 s kill grace each
    assert "python3" in text and "XLA_PYTHON_CLIENT_PREALLOCATE=false" in text
