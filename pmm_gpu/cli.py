"""The ``pmm-gpu`` command: train (built-in default problem or user data), predict, info."""
from __future__ import annotations

import argparse
import io as _io
import os
import platform
import sys
import time

import numpy as np

from . import __version__
from .backend import cuda_status, get_backend
from .io import atomic_write, read_data
from .models import AffineEigenvaluePMM, load
from .problems import anharmonic_convergence, anharmonic_levels

# The default problem: fit the two lowest levels on g ∈ [0, 0.5], extrapolate to (0.5, 1].
DEFAULT = dict(n=6, g_train=(0.0, 0.5, 20), g_extrap=(0.5, 1.0), basis_size=160, epochs=20000, lr=0.03)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
        print(f"pmm-gpu: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmm-gpu", description="Parametric Matrix Models on GPU and CPU.")
    p.add_argument("--version", action="version", version=f"pmm_gpu {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an AE-PMM (no --data: the built-in anharmonic-oscillator problem)")
    t.add_argument("--data", help="CSV (features then target columns, optional header) or NPZ with X and Y")
    t.add_argument("--targets", type=int, default=1, help="number of target columns at the end of a CSV (default 1)")
    t.add_argument("--n", type=int, default=None, help="matrix size (default 6 for the default problem, else 8)")
    t.add_argument("--which", default="SA", help="eigenvalue selection SA|LA|SM|LM|EA|EM|IA|IM (default SA)")
    t.add_argument("--field", default="complex", choices=["complex", "real"])
    t.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction of --data for validation")
    t.add_argument("--patience", type=int, default=None)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=0)
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


def _train(args) -> int:
    if args.data is None:
        return _train_default(args)
    X, Y = read_data(args.data, args.targets)
    if Y is None:
        raise ValueError(f"{args.data!r} has no targets (an NPZ needs arrays X and Y)")
    X, Y = np.atleast_2d(X.T).T, np.atleast_2d(Y.T).T
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    perm = np.random.default_rng(args.seed).permutation(len(X))
    n_val = int(round(args.val_fraction * len(X))) if len(X) > 1 else 0
    val, tr = perm[:n_val], perm[n_val:]
    m = AffineEigenvaluePMM(n=args.n or 8, n_features=X.shape[1], n_eig=Y.shape[1], which=args.which,
                            field=args.field, dtype=args.dtype, device=args.device, seed=args.seed)
    t0 = time.perf_counter()
    hist = m.fit(X[tr], Y[tr], epochs=args.epochs or 200, batch_size=args.batch_size, lr=args.lr or 1e-2,
                 validation_data=(X[val], Y[val]) if n_val else None, patience=args.patience,
                 seed=args.seed, verbose=not args.quiet)
    dt = time.perf_counter() - t0
    out = args.out or "pmm_model.npz"
    m.save(out)
    print(f"{m!r}: {m.n_params} parameters, {len(hist['loss'])} epochs in {dt:.1f} s ({hist['stop_reason']})")
    for name, idx in (("train", tr), ("validation", val)):
        if len(idx):
            err = m.predict(X[idx]) - Y[idx]
            print(f"{name:>10}: RMSE {np.sqrt(np.mean(err**2)):.4e}  max |error| {np.abs(err).max():.4e}  ({len(idx)} samples)")
    print(f"saved model to {out}")
    return 0


def _train_default(args) -> int:
    d = DEFAULT
    lo, hi, k = d["g_train"]
    g_train = np.linspace(lo, hi, k)
    g_test = np.linspace(lo, hi, 101)
    g_extrap = np.linspace(*d["g_extrap"], 101)[1:]
    E = {name: anharmonic_levels(g, 2, d["basis_size"]) for name, g in
         (("train", g_train), ("test", g_test), ("extrapolation", g_extrap))}
    conv = anharmonic_convergence(np.r_[g_test, g_extrap], 2, d["basis_size"])
    m = AffineEigenvaluePMM(n=args.n or d["n"], n_features=1, n_eig=2, which="SA", field=args.field,
                            dtype=args.dtype, device=args.device, seed=args.seed)
    print(f"pmm_gpu {__version__}: quartic anharmonic oscillator H(g) = p²/2 + x²/2 + g·x⁴, two lowest levels")
    print(f"exact truth: diagonalisation in {d['basis_size']} harmonic-oscillator states "
          f"(max change against {2 * d['basis_size']} states: {conv:.1e})")
    print(f"train: {k} values of g in [{lo}, {hi}]; test: 101 in [{lo}, {hi}]; "
          f"extrapolation: 100 in ({d['g_extrap'][0]}, {d['g_extrap'][1]}]")
    print(f"model: {m!r}, {m.n_params} parameters, backend {m.backend.name}")
    epochs = args.epochs or d["epochs"]
    t0 = time.perf_counter()
    hist = m.fit(g_train[:, None], E["train"], epochs=epochs, batch_size=k, lr=args.lr or d["lr"],
                 schedule="cosine", seed=args.seed, verbose=not args.quiet)
    dt = time.perf_counter() - t0
    print(f"trained {len(hist['loss'])} epochs in {dt:.1f} s: {len(hist['loss']) * k / dt:,.0f} training samples/s "
          f"(full batch of {k}), final MSE {hist['loss'][-1]:.2e}")
    print(f"{'':>14} {'max |error|':>12} {'max rel. error':>15}")
    for name, g in (("train", g_train), ("test", g_test), ("extrapolation", g_extrap)):
        err = np.abs(m.predict(g[:, None]) - E[name])
        print(f"{name:>14} {err.max():12.2e} {(err / np.abs(E[name])).max():15.2e}")
    out = args.out or "pmm_anharmonic.npz"
    m.save(out)
    print(f"saved model to {out}")
    return 0


def _predict(args) -> int:
    m = load(args.model, device=args.device)
    X, _ = read_data(args.data, n_targets=0)
    X = np.atleast_2d(X.T).T
    if X.shape[1] < m.n_features:
        raise ValueError(f"{args.data!r} has {X.shape[1]} columns but the model needs {m.n_features} features")
    P = m.predict(X[:, :m.n_features])
    buf = _io.StringIO()
    np.savetxt(buf, P, delimiter=",", fmt="%.17g",
               header=",".join(f"y{j}" for j in range(P.shape[1])), comments="")
    if args.out:
        atomic_write(args.out, lambda f: f.write(buf.getvalue().encode()))
        print(f"wrote {len(P)} predictions to {args.out}")
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
