"""Data-parallel training over MPI ranks (pmm_gpu/distributed.py).

The MPI tests start real jobs with ``mpiexec -n R`` (the one next to this Python, from the mpich wheel
of the ``test`` extra, else the one on PATH) and skip when mpi4py or mpiexec is absent. Run as a script,
this file is the worker every rank executes: ``python tests/test_distributed.py <case> <out.npz>``.

Must hold (float64, CPU): the loss curve and final parameters of R = 2 and 4 ranks equal those of one
process with the same global batches to <= 1e-12 relative, for both models; killing a rank ends the
job within seconds and the last checkpoint loads; ``mpiexec -n 2 pmm-gpu train`` reproduces one process.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu import distributed

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-12
N_SAMPLES, BATCH = 193, 64  # global batches of 64, 64, 64, 1: uneven shards and empty ones at R = 2, 4


def _find_mpiexec() -> str | None:
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        if (here / name).exists():
            return str(here / name)
    return shutil.which("mpiexec") or shutil.which("mpirun")


MPIEXEC = _find_mpiexec()
_MISSING = ("mpi4py is not installed (pip install '.[mpi]')" if importlib.util.find_spec("mpi4py") is None else
            "no mpiexec/mpirun next to this Python or on PATH (pip install mpich)" if MPIEXEC is None else None)
needs_mpi = pytest.mark.skipif(_MISSING is not None, reason=f"needs MPI: {_MISSING}")


# --- the worker: the same training in every rank (and in the test process as the reference) ---------------
def _data(n_outputs: int, classes: bool):
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (N_SAMPLES + 41, 2))
    if classes:
        Y = (np.sin(3 * X[:, 0]) + X[:, 1] > 0).astype(int) + (X[:, 1] > 0.5)
    else:
        Y = np.c_[np.cos(X[:, 0]) + X[:, 1] ** 2, X[:, 0] * X[:, 1]][:, :n_outputs]
    return X[:N_SAMPLES], Y[:N_SAMPLES], X[N_SAMPLES:], Y[N_SAMPLES:]


CASES = {  # name: (model, fit arguments)
    "ae": (lambda: pg.AffineEigenvaluePMM(n=5, n_features=2, n_eig=1, which="SA", seed=0),
           dict(lr=2e-2, clip_norm=1.0, patience=3)),
    "ao": (lambda: pg.AffineObservablePMM(n=5, n_features=2, n_outputs=3, n_eig=2, which="LM", seed=0),
           dict(lr=2e-2, loss="cross_entropy", micro_batch=16, schedule="cosine")),
}


def train(case: str, epochs: int = 5, distributed_=None, callback=None):
    """Train case ``case``; returns (model, history)."""
    make, kwargs = CASES[case]
    X, Y, Xv, Yv = _data(1 if case == "ae" else 3, case == "ao")
    m = make()
    hist = m.fit(X, Y, epochs=epochs, batch_size=BATCH, validation_data=(Xv, Yv), seed=7, verbose=False,
                 distributed=distributed_, callback=callback, **kwargs)
    return m, hist


def _summary(m, hist) -> dict:
    return {"theta": m.backend.to_numpy(m.theta), "loss": np.array(hist["loss"]), "val": np.array(hist["val_loss"]),
            "stop": np.array(hist["stop_reason"]), "best": np.array(hist["best_epoch"] or 0)}


def _worker(mode: str, out: str):
    """One rank. equivalence: both cases, 5 epochs; kill: a long run with a checkpoint every epoch (pid
    files for the test); raise/diverge/seed: a failure on one rank; nccl: the GPU path (one rank per GPU)."""
    rank = distributed.init().rank
    if mode == "equivalence":
        res = {f"{c}_{k}": v for c in CASES for k, v in _summary(*train(c, distributed_=True)).items()}
        m = CASES["ae"][0]()
        dp = distributed.DataParallel(m, distributed.communicator(m))
        res["agree"] = np.array([dp.agree(rank == dp.size - 1), dp.agree(False)])  # any rank's flag, on all
    elif mode == "kill":
        Path(out).with_suffix(f".pid{rank}").write_text(str(os.getpid()))
        m = CASES["ae"][0]()
        save = distributed.checkpoint(m, out)
        train_with = dict(CASES["ae"][1], patience=None)
        X, Y, _, _ = _data(1, False)
        m.fit(X, Y, epochs=100000, batch_size=BATCH, seed=7, verbose=False,
              callback=lambda e, h: (save(e, h), time.sleep(0.02)), **train_with)
        return
    elif mode in ("raise", "diverge", "seed"):
        def fail(epoch, hist):
            if epoch == 2 and rank == 1:
                if mode == "raise":
                    raise ValueError("a failure on purpose")
                m.theta[0] += 1e-3  # "diverge": this rank's parameters drift from the others'
        X, Y, _, _ = _data(1, False)
        m = CASES["ae"][0]()
        m.fit(X, Y, epochs=4, batch_size=BATCH, seed=None if mode == "seed" else 7, verbose=False,
                       callback=fail)
        return
    elif mode == "nccl":
        res = _nccl_worker()
    if rank == 0:
        np.savez(out, **res)


def _nccl_worker() -> dict:
    """The GPU path: NCCL all-reduce of a buffer (R·buffer summed over R identical ranks; the identity for
    R = 1) and a distributed CUDA fit against a one-process CUDA fit of the same batches."""
    import cupy

    comm = distributed.communicator(pg.AffineEigenvaluePMM(n=3, n_features=1, device="cuda"))
    x = cupy.asarray(np.random.default_rng(0).standard_normal(1001))
    y = x.copy()
    comm.allreduce(y)
    res = {"allreduce_err": np.array(float(abs(y - comm.size * x).max() / abs(x).max()))}
    X, Y, Xv, Yv = _data(1, False)
    for dist in (False, True):
        m = pg.AffineEigenvaluePMM(n=5, n_features=2, n_eig=1, seed=0, device="cuda")
        h = m.fit(X, Y, epochs=5, batch_size=BATCH, validation_data=(Xv, Yv), seed=7, verbose=False, distributed=dist)
        res.update({f"{dist}_{k}": v for k, v in _summary(m, h).items()})
    return res


# --- the tests -------------------------------------------------------------------------------------------
def _env() -> dict:
    launch = {name for names in distributed.LAUNCH_VARS for name in names}
    env = {k: v for k, v in os.environ.items() if k not in launch}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=os.path.dirname(MPIEXEC or sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return env


def mpirun(ranks: int, *args, cwd, timeout: float = 120, popen: bool = False):
    cmd = [MPIEXEC, "-n", str(ranks), *args]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def worker(ranks: int, mode: str, out, **kw):
    return mpirun(ranks, sys.executable, __file__, mode, str(out), **kw)


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def test_launch_detection_and_shards():
    assert distributed.launch_env({}) is None
    assert distributed.launch_env({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}) == (1, 4, 1)
    assert distributed.launch_env({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8",
                                   "OMPI_COMM_WORLD_LOCAL_RANK": "3"}) == (3, 8, 3)
    assert distributed.launch_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == (2, 4, None)
    for n, R in ((193, 4), (1, 4), (64, 3), (7, 7)):
        parts = [distributed.shard_bounds(n, r, R) for r in range(R)]
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_ranks_on_a_node_share_its_cores(monkeypatch):
    """init gives each of R ranks on a node cores // R CPU threads (at least 1), unless set_num_threads chose."""
    from pmm_gpu import backend

    monkeypatch.setattr(distributed, "USABLE_CORES", 16)
    for default, ranks, want in ((16, 4, 4), (16, 1, 16), (16, 32, 1), (5, 4, 5)):  # 5: set by the user
        monkeypatch.setattr(backend.NumpyBackend, "num_threads", default)
        distributed.share_cpu_threads(ranks)
        assert backend.NumpyBackend.num_threads == want, (default, ranks)


def test_single_process_never_imports_mpi4py(tmp_path):
    """Without an MPI launch (and under one with distributed=False) fit neither imports mpi4py nor
    changes a number: the single-process path is the plain trainer."""
    setup = ("import sys, numpy as np, pmm_gpu as pg\n"
             "m = pg.AffineEigenvaluePMM(n=3, n_features=1, seed=0)\n"
             "X = np.linspace(0, 1, 20)[:, None]\n")
    check = "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n"
    pretend_launch = {"PMI_RANK": "0", "PMI_SIZE": "2"}
    for extra, fits in (({}, ("", ", distributed=False")), (pretend_launch, (", distributed=False",))):
        env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)  # the second: a pretend launch of 2 ranks
        code = setup + "".join(f"m.fit(X, X, epochs=2, batch_size=8, verbose=False{f})\n" for f in fits) + check
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_ranks_reproduce_one_process(ranks, tmp_path):
    r = worker(ranks, "equivalence", tmp_path / "dist.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = np.load(tmp_path / "dist.npz")
    for case in CASES:
        want = _summary(*train(case, distributed_=False))
        assert len(want["loss"]) == 5
        for key in ("theta", "loss", "val"):
            assert rel(got[f"{case}_{key}"], want[key]) <= RTOL, (case, key, rel(got[f"{case}_{key}"], want[key]))
        assert str(got[f"{case}_stop"]) == str(want["stop"]) and int(got[f"{case}_best"]) == int(want["best"])
    assert got["agree"].tolist() == [True, False]


@needs_mpi
def test_killed_rank_ends_job_and_checkpoint_loads(tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    job = worker(2, "kill", ckpt, cwd=tmp_path, popen=True)
    try:
        t_end = time.monotonic() + 60
        while not (ckpt.exists() and ckpt.with_suffix(".pid1").exists()) and time.monotonic() < t_end:
            time.sleep(0.05)
        assert ckpt.exists(), "no checkpoint written"
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(int(ckpt.with_suffix(".pid1").read_text()), signal.SIGKILL)
        out, err = job.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        job.kill()
    assert job.returncode != 0 and elapsed < 10, (job.returncode, elapsed)
    assert re.search(r"BAD TERMINATION|[Kk]illed|signal 9", out + err), out + err
    m = pg.load(ckpt)  # the last complete checkpoint: parameters and Adam state after a whole epoch
    steps = int(m.opt_state["step"])
    epochs = steps // -(-N_SAMPLES // BATCH)
    assert epochs >= 1 and steps % -(-N_SAMPLES // BATCH) == 0
    ref = CASES["ae"][0]()
    X, Y, _, _ = _data(1, False)
    ref.fit(X, Y, epochs=epochs, batch_size=BATCH, seed=7, verbose=False, **dict(CASES["ae"][1], patience=None))
    assert rel(m.theta, ref.theta) <= 1e-10


@needs_mpi
@pytest.mark.parametrize("mode, message", [
    ("raise", r"rank 1 of 2: ValueError during distributed training: a failure on purpose"),
    ("diverge", r"parameters differ across the 2 ranks"),
    ("seed", r"ranks disagree on random stream \(seed\)")])
def test_failure_on_one_rank_aborts_job(mode, message, tmp_path):
    t0 = time.monotonic()
    r = worker(2, mode, tmp_path / "x.npz", cwd=tmp_path, timeout=60)
    assert r.returncode != 0 and time.monotonic() - t0 < 30
    assert re.search(message, r.stderr), r.stdout + r.stderr


@needs_mpi
def test_cli_under_mpiexec_reproduces_one_process(tmp_path):
    exe = Path(sys.executable).parent / "pmm-gpu"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "pmm_gpu.cli"]
    args = ["train", "--epochs", "40", "--quiet"]
    one = subprocess.run([*cli, *args, "--out", "one.npz"], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    two = mpirun(2, *cli, *args, "--out", "two.npz", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stdout + two.stderr
    strip = re.compile(r"in [\d.]+ s: [\d,]+ training samples/s|saved model to \S+")
    assert strip.sub("", two.stdout) == strip.sub("", one.stdout)  # printed once (rank 0), same numbers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "two.npz"]
    assert rel(pg.load(tmp_path / "two.npz").theta, pg.load(tmp_path / "one.npz").theta) <= RTOL


@needs_mpi
@pytest.mark.gpu
def test_nccl_path(tmp_path):
    """One rank (the all-reduce is the identity) and, with several GPUs, one rank per GPU."""
    import cupy

    for ranks in sorted({1, cupy.cuda.runtime.getDeviceCount()}):
        r = worker(ranks, "nccl", tmp_path / f"nccl{ranks}.npz", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        got = np.load(tmp_path / f"nccl{ranks}.npz")
        assert float(got["allreduce_err"]) <= (0.0 if ranks == 1 else 1e-15)  # R = 1: the identity
        for key in ("theta", "loss", "val"):
            assert rel(got[f"True_{key}"], got[f"False_{key}"]) <= RTOL, key


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
