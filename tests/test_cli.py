"""The pmm-gpu command: default problem (accuracy, reproducibility, time), user data, errors."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import pmm_gpu
from pmm_gpu.cli import main


def run_cli(*args, cwd):
    """`python -m pmm_gpu.cli ...` in ``cwd``, importing the same pmm_gpu as this test session."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pmm_gpu.__file__)))
    return subprocess.run([sys.executable, "-m", "pmm_gpu.cli", *args], cwd=cwd, capture_output=True, text=True, env=env)


def error_table(out: str) -> dict:
    return {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^\s*(train|test|extrapolation)\s+(\S+)\s+(\S+)$", out, re.M)}


def test_default_problem_accuracy_time_and_reproducibility(tmp_path):
    t0 = time.perf_counter()
    a = run_cli("train", "--quiet", cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert a.returncode == 0, a.stderr
    assert elapsed < 60
    errs = error_table(a.stdout)
    # Stated accuracy (README): max relative error < 2e-3 on [0, 0.5], < 5e-2 on the extrapolation (0.5, 1]
    assert errs["train"][1] < 2e-3 and errs["test"][1] < 2e-3 and errs["extrapolation"][1] < 5e-2
    assert "max change against 320 states" in a.stdout and (tmp_path / "pmm_anharmonic.npz").exists()
    b = run_cli("train", "--quiet", "--out", "again.npz", cwd=tmp_path)
    assert error_table(b.stdout) == errs  # same seed, same numbers


def test_train_and_predict_on_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(60, 2))
    y = X[:, 0] ** 2 - X[:, 1]
    (tmp_path / "d.csv").write_text("x1,x2,y\n" + "\n".join(f"{a},{b},{c}" for (a, b), c in zip(X, y)))
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(tmp_path / "d.csv"), "--epochs", "30", "--n", "4", "--quiet",
                 "--out", str(model)]) == 0
    assert "validation: RMSE" in capsys.readouterr().out
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "d.csv"), "--out", str(out)]) == 0
    P = np.loadtxt(out, delimiter=",", skiprows=1)
    import pmm_gpu as pg
    np.testing.assert_allclose(P, pg.load(model, device="cpu").predict(X)[:, 0], rtol=1e-15)


def test_train_on_npz_with_two_targets(tmp_path, capsys):
    X = np.linspace(0, 1, 30)[:, None]
    np.savez(tmp_path / "d.npz", X=X, Y=np.c_[X[:, 0], 2 + X[:, 0]])
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "5", "--quiet",
                 "--out", str(tmp_path / "m.npz")]) == 0
    assert "n_eig=2" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["train", "--data", "nope.csv"], "data file 'nope.csv' does not exist"),
    (["predict", "--model", "nope.npz", "--data", "x.csv"], "model file 'nope.npz' does not exist"),
    (["predict", "--model", "bad.npz", "--data", "x.csv"], "not a readable .npz"),
    (["train", "--data", "bad.csv"], "non-numeric value"),
])
def test_bad_files_give_one_line(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.npz").write_text("not a zip")
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    (tmp_path / "x.csv").write_text("1\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "pmm_gpu" in out and "numpy" in out and "default backend" in out


# --- issue 11: --out checked up front, divergence, falsy flags, NPZ pairing ---------------------------
def _csv(tmp_path, n=20):
    X = np.linspace(-1, 1, n)
    (tmp_path / "d.csv").write_text("\n".join(f"{x},{x * x}" for x in X))
    return str(tmp_path / "d.csv")


@pytest.mark.parametrize("out,match", [(".", "is a directory"), ("missing/m.npz", "does not exist")])
def test_unwritable_out_is_refused_before_training(tmp_path, monkeypatch, capsys, out, match):
    monkeypatch.chdir(tmp_path)

    def no_training(*a, **k):
        raise AssertionError("trained although --out cannot be written")

    monkeypatch.setattr(pmm_gpu.AffineEigenvaluePMM, "fit", no_training)
    assert main(["train", "--data", _csv(tmp_path), "--quiet", "--out", out]) == 2
    err = capsys.readouterr().err
    assert match in err and "--out" in err and err.count("\n") == 1


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_divergence_in_epoch_1_saves_nothing(tmp_path, capsys):
    X = np.linspace(0, 1, 20)[:, None]
    np.savez(tmp_path / "d.npz", X=X, Y=1e200 * (1 + X))  # the squared error overflows: epoch 1 diverges
    (tmp_path / "m.npz").write_bytes(b"an older model")
    with pytest.warns(RuntimeWarning, match="diverged"):
        rc = main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "3", "--quiet", "--out", str(tmp_path / "m.npz")])
    assert rc == 1
    assert "nothing was saved" in capsys.readouterr().err
    assert (tmp_path / "m.npz").read_bytes() == b"an older model"


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--n", "0"), ("--lr", "0"), ("--batch-size", "0"),
                                        ("--patience", "0"), ("--targets", "0"), ("--seed", "-1"), ("--lr", "nan")])
def test_falsy_or_bad_flags_are_refused_not_ignored(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", _csv(tmp_path), "--quiet", "--out", str(tmp_path / "m.npz"), flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: expected" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("rows", [7, 12])
def test_npz_with_unpaired_x_and_y(tmp_path, capsys, rows):
    np.savez(tmp_path / "d.npz", X=np.linspace(0, 1, 10)[:, None], Y=np.zeros(rows))
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--quiet", "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert f"X has 10 rows but Y has {rows}" in err and "d.npz" in err and err.count("\n") == 1
