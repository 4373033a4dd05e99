"""The ``pmm-gpu`` command: train (built-in default problem or user data), predict, info.

Exit status: 0 done; 1 training diverged in its first epoch (nothing trained: nothing saved, --out
untouched); 2 bad input (arguments, data or model files; one line on stderr); 130 interrupted by Ctrl-C
(SIGINT) during training: the step in progress finished, the best parameters so far were saved and
stderr says so. A divergence after the first epoch saves the last good parameters, with a warning.
--out is checked before any training, so an unwritable path never costs a trained model.
"""
from __future__ import annotations

import argparse
import io as _io
import math
import os
import platform
import sys
import time

import numpy as np

from . import __version__
from .backend import cuda_status, get_backend
from .distributed import cli_setup, is_main
from .io import atomic_write, read_data
from .models import AffineEigenvaluePMM, load
from .ops.eigh import WHICH
from .problems import anharmonic_convergence, anharmonic_levels

# The default problem: fit the two lowest levels on g ∈ [0, 0.5], extrapolate to (0.5, 1].
DEFAULT = dict(n=6, g_train=(0.0, 0.5, 20), g_extrap=(0.5, 1.0), basis_size=160, epochs=20000, lr=0.03)
EXIT_DIVERGED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cli_setup()  # under mpiexec/srun: start MPI, one GPU per rank, stdout on rank 0 only
    try:
        return args.func(args)
    except (OSError, ValueError, TypeError, RuntimeError) as e:  # OSError includes FileNotFoundError
        print(f"pmm-gpu: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _float_in(lo: float, hi: float, lo_open: bool, what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > lo if lo_open else value >= lo) and value < hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmm-gpu", description="Parametric Matrix Models on GPU and CPU.")
    p.add_argument("--version", action="version", version=f"pmm_gpu {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pos, nonneg = _int_at_least(1), _int_at_least(0)

    t = sub.add_parser("train", help="train an AE-PMM (no --data: the built-in anharmonic-oscillator problem)")
    t.add_argument("--data", help="CSV (features then target columns, optional header) or NPZ with X and Y")
    t.add_argument("--targets", type=pos, default=1, help="number of target columns at the end of a CSV (default 1)")
    t.add_argument("--n", type=pos, default=None, help="matrix size (default 6 for the default problem, else 8)")
    t.add_argument("--which", default="SA", choices=WHICH, help="eigenvalue selection (default SA)")
    t.add_argument("--field", default="complex", choices=["complex", "real"])
    t.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    t.add_argument("--epochs", type=pos, default=None, help="default 200 (20000 for the default problem)")
    t.add_argument("--batch-size", type=pos, default=256)
    t.add_argument("--lr", type=_float_in(0.0, math.inf, True, "a finite number > 0"), default=None,
                   help="Adam learning rate (default 0.01; 0.03 for the default problem)")
    t.add_argument("--val-fraction", type=_float_in(0.0, 1.0, False, "a number in [0, 1)"), default=0.2,
                   help="held-out fraction of --data for validation")
    t.add_argument("--patience", type=pos, default=None)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=nonneg, default=0)
    t.add_argument("--out", default=None, help="model file to write (default pmm_model.npz / pmm_anharmonic.npz)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="predict with a saved model")
    pr.add_argument("--model", required=True)
    pr.add_argument("--data", required=True, help="CSV or NPZ; the first n_features columns (or X) are used")
    pr.add_argument("--out", help="CSV file for the predictions (default: standard output)")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.set_defaults(func=_predict)

    i = sub.add_parser("info", help="versions, backend and GPU")
    i.set_defaults(func=_info)
    return p


def _default(value, fallback):
    """An explicit flag value, even a falsy one, else the default."""
    return fallback if value is None else value


def check_out(path: str, flag: str = "--out") -> str:
    """``path`` must be writable as a file, checked before any work: not a directory, in an existing,
    writable directory (atomic_write renames a temporary file there)."""
    if not path:
        raise ValueError(f"{flag} is empty; give a file name")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: the directory {parent!r} is not writable")
    return path


def save_trained(m, hist: dict, out: str) -> int:
    """Save the trained model to ``out`` unless training diverged in its first epoch; the exit status
    (module docstring). Divergence and interruption are reported on stderr."""
    reason, done = hist["stop_reason"], len(hist["loss"])
    if reason.startswith("diverged") and not done:
        print(f"pmm-gpu: error: training {reason}; nothing was trained, so nothing was saved ({out} is "
              "unchanged). Try a smaller --lr.", file=sys.stderr)
        return EXIT_DIVERGED
    m.save(out)
    if reason.startswith("diverged"):
        print(f"pmm-gpu: warning: training {reason}; saved the last good parameters (epoch {done}) to {out}",
              file=sys.stderr)
    if reason.startswith("interrupted"):
        best = hist["best_epoch"]
        kept = f"the best parameters so far (epoch {best})" if best else "the parameters after the last step"
        print(f"pmm-gpu: {reason}: saved {kept} to {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _train(args) -> int:
    if args.data is None:
        return _train_default(args)
    out = check_out(_default(args.out, "pmm_model.npz"))
    X, Y = read_data(args.data, args.targets)
    if Y is None:
        raise ValueError(f"{args.data!r} has no targets (an NPZ needs arrays X and Y)")
    X, Y = np.atleast_2d(X.T).T, np.atleast_2d(Y.T).T
    perm = np.random.default_rng(args.seed).permutation(len(X))
    n_val = int(round(args.val_fraction * len(X))) if len(X) > 1 else 0
    val, tr = perm[:n_val], perm[n_val:]
    if not len(tr):
        raise ValueError(f"--val-fraction {args.val_fraction} leaves none of the {len(X)} samples for training")
    m = AffineEigenvaluePMM(n=_default(args.n, 8), n_features=X.shape[1], n_eig=Y.shape[1], which=args.which,
                            field=args.field, dtype=args.dtype, device=args.device, seed=args.seed)
    t0 = time.perf_counter()
    hist = m.fit(X[tr], Y[tr], epochs=_default(args.epochs, 200), batch_size=args.batch_size,
                 lr=_default(args.lr, 1e-2), validation_data=(X[val], Y[val]) if n_val else None,
                 patience=args.patience, seed=args.seed, verbose=not args.quiet)
    dt = time.perf_counter() - t0
    report, status = _save(m, hist, out)
    if not report:
        return status
    print(f"{m!r}: {m.n_params} parameters, {len(hist['loss'])} epochs in {dt:.1f} s ({hist['stop_reason']})")
    for name, idx in (("train", tr), ("validation", val)):
        if len(idx):
            err = m.predict(X[idx]) - Y[idx]
            print(f"{name:>10}: RMSE {np.sqrt(np.mean(err**2)):.4e}  max |error| {np.abs(err).max():.4e}  ({len(idx)} samples)")
    print(f"saved model to {out}")
    return status


def _save(m, hist, out) -> tuple[bool, int]:
    """(whether to report, exit status): rank 0 saves through ``save_trained``; another MPI rank, or a
    run that diverged in its first epoch (nothing saved), reports nothing."""
    if not is_main():
        return False, 0
    status = save_trained(m, hist, out)
    return status != EXIT_DIVERGED, status


def _train_default(args) -> int:
    d = DEFAULT
    out = check_out(_default(args.out, "pmm_anharmonic.npz"))
    lo, hi, k = d["g_train"]
    g_train = np.linspace(lo, hi, k)
    g_test = np.linspace(lo, hi, 101)
    g_extrap = np.linspace(*d["g_extrap"], 101)[1:]
    E = {name: anharmonic_levels(g, 2, d["basis_size"]) for name, g in
         (("train", g_train), ("test", g_test), ("extrapolation", g_extrap))}
    conv = anharmonic_convergence(np.r_[g_test, g_extrap], 2, d["basis_size"])
    m = AffineEigenvaluePMM(n=_default(args.n, d["n"]), n_features=1, n_eig=2, which="SA", field=args.field,
                            dtype=args.dtype, device=args.device, seed=args.seed)
    print(f"pmm_gpu {__version__}: quartic anharmonic oscillator H(g) = p²/2 + x²/2 + g·x⁴, two lowest levels")
    print(f"exact truth: diagonalisation in {d['basis_size']} harmonic-oscillator states "
          f"(max change against {2 * d['basis_size']} states: {conv:.1e})")
    print(f"train: {k} values of g in [{lo}, {hi}]; test: 101 in [{lo}, {hi}]; "
          f"extrapolation: 100 in ({d['g_extrap'][0]}, {d['g_extrap'][1]}]")
    print(f"model: {m!r}, {m.n_params} parameters, backend {m.backend.name}")
    t0 = time.perf_counter()
    hist = m.fit(g_train[:, None], E["train"], epochs=_default(args.epochs, d["epochs"]), batch_size=k,
                 lr=_default(args.lr, d["lr"]), schedule="cosine", seed=args.seed, verbose=not args.quiet)
    dt = time.perf_counter() - t0
    report, status = _save(m, hist, out)
    if not report:
        return status
    print(f"trained {len(hist['loss'])} epochs in {dt:.1f} s: {len(hist['loss']) * k / dt:,.0f} training samples/s "
          f"(full batch of {k}), final MSE {hist['loss'][-1] if hist['loss'] else math.nan:.2e}")
    print(f"{'':>14} {'max |error|':>12} {'max rel. error':>15}")
    for name, g in (("train", g_train), ("test", g_test), ("extrapolation", g_extrap)):
        err = np.abs(m.predict(g[:, None]) - E[name])
        print(f"{name:>14} {err.max():12.2e} {(err / np.abs(E[name])).max():15.2e}")
    print(f"saved model to {out}")
    return status


def _predict(args) -> int:
    if args.out is not None:
        check_out(args.out)
    m = load(args.model, device=args.device)
    X, _ = read_data(args.data, n_targets=0)
    X = np.atleast_2d(X.T).T
    if X.shape[1] < m.n_features:
        raise ValueError(f"{args.data!r} has {X.shape[1]} columns but the model needs {m.n_features} features")
    pred = m.predict(X[:, :m.n_features])
    buf = _io.StringIO()
    np.savetxt(buf, pred, delimiter=",", fmt="%.17g",
               header=",".join(f"y{j}" for j in range(pred.shape[1])), comments="")
    if args.out:
        atomic_write(args.out, lambda f: f.write(buf.getvalue().encode()))
        print(f"wrote {len(pred)} predictions to {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _info(args) -> int:
    ok, why = cuda_status()
    print(f"pmm_gpu {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"numpy {np.__version__}")
    for mod in ("cupy", "nvtx", "scipy", "sklearn"):
        try:
            print(f"{mod} {__import__(mod).__version__}")
        except Exception:
            print(f"{mod} not installed")
    print(f"default backend (device='auto'): {'cuda' if ok else 'cpu'}")
    if ok:
        for k, v in get_backend("cuda").describe().items():
            print(f"  {k}: {v}")
    else:
        print(f"  GPU: none usable ({why})")
    print(f"package: {os.path.dirname(__file__)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
