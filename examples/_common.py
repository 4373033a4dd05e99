"""Shared plumbing of the examples: command line, timing, markdown tables, result files.

Every example takes ``--quick`` (reduced size, for the slow tests) and ``--out DIR`` (default
examples/results/), and writes ``<name>.md`` (markdown tables), ``<name>.png`` (plot) and
``<name>.json`` (the numbers behind the tables, read back by tests/test_examples.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import numpy as np  # noqa: E402

DEFAULT_OUT = ROOT / "examples" / "results"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="reduced size (fewer epochs/samples), for tests")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default examples/results/)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="pmm_gpu backend")
    args = p.parse_args(argv)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


@contextmanager
def timer(store: dict, key: str):
    """Add the wall time of the ``with`` block (seconds) to store[key]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - t0


def fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return f"{v:,}"
    if v is None or v != v:
        return "–"
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def median_worst(values) -> str:
    """'median (worst)' of per-seed errors; just the value for a single deterministic fit."""
    v = np.asarray(values, dtype=float)
    return f"{np.median(v):.2e}" + (f" ({v.max():.1e})" if v.size > 1 else "")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance() -> str:
    """One line: commit, machine, versions (for the header of each results file)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import numpy
    import sklearn

    return (f"commit {commit}, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {numpy.__version__}, "
            f"scikit-learn {sklearn.__version__}")


def write_results(out: Path, name: str, title: str, sections: list[str], data: dict, command: str):
    """Write <name>.md (title, command, provenance, sections) and <name>.json (data)."""
    text = [f"# {title}\n", f"Command: `{command}`  \n{provenance()}\n"] + [s.rstrip() + "\n" for s in sections]
    (out / f"{name}.md").write_text("\n".join(text))
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=float))
    print("\n".join(text))
    print(f"wrote {out / (name + '.md')}, {out / (name + '.json')}, {out / (name + '.png')}")


def fit_poly(g, E, max_degree=10):
    """Per-level polynomial in g, degree 1..max_degree by leave-one-out CV on the training points only.

    g (B,), E (B, K) -> (predict(g) -> (len(g), K), number of coefficients, degrees).
    """
    coefs, degrees = [], []
    for k in range(E.shape[1]):
        loo = []
        for d in range(1, max_degree + 1):
            errs = [np.polyval(np.polyfit(np.delete(g, i), np.delete(E[:, k], i), d), g[i]) - E[i, k]
                    for i in range(len(g))]
            loo.append(np.mean(np.square(errs)))
        d = 1 + int(np.argmin(loo))
        degrees.append(d)
        coefs.append(np.polyfit(g, E[:, k], d))
    predict = lambda gg: np.stack([np.polyval(c, gg) for c in coefs], axis=1)  # noqa: E731
    return predict, sum(d + 1 for d in degrees), degrees


def fit_mlp(g, E, seed, n_params_target):
    """sklearn MLPRegressor 1 → h → K (tanh, L-BFGS, standardized input and targets), h chosen so the
    parameter count is about ``n_params_target``. Returns (predict(g) -> (len(g), K), n_params)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    h = max(2, round((n_params_target - E.shape[1]) / (2 + E.shape[1])))  # 1 → h → K: h(2 + K) + K params
    mu, sd = E.mean(0), E.std(0)
    gm, gs = g.mean(), g.std()
    mlp = MLPRegressor(hidden_layer_sizes=(h,), activation="tanh", solver="lbfgs", alpha=1e-6, max_iter=20000, tol=1e-12,
                       random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Ys = (E - mu) / sd
        mlp.fit(((g - gm) / gs)[:, None], Ys[:, 0] if Ys.shape[1] == 1 else Ys)
    return (lambda gg: mlp.predict(((gg - gm) / gs)[:, None]).reshape(len(gg), -1) * sd + mu), mlp_params(mlp)


def mlp_params(mlp) -> int:
    """Trainable parameters of a fitted sklearn MLPRegressor (weights and biases)."""
    return int(sum(w.size for w in mlp.coefs_) + sum(b.size for b in mlp.intercepts_))


def command_line(name: str, args) -> str:
    return f"python examples/{name}.py" + (" --quick" if args.quick else "")
