"""Time to accuracy (issue 14): the epochs and the wall time each engine needs, from identical initial
parameters, to bring the training loss of cases A–D (docs/DESIGN.md §5) down to a stated target.

    python -m profiling.time_to_accuracy --seeds 3 --out profiling/results/time-to-accuracy-cpu.md
    python -m profiling.time_to_accuracy --cases A,B --engines pmm_gpu,pmm_gpu:complex --curves
    python -m profiling.time_to_accuracy --device cuda --engines pmm_gpu,torch --rounds 3   (gpu_check.sh)

Engines: "pmm_gpu" (pmm_gpu.optim.Adam, geometry "real": Adam per real packed parameter),
"pmm_gpu:complex" (geometry "complex": pyPMM's complex Adam, one second moment per complex matrix entry),
"torch" (profiling/torch_pmm.py: torch.optim.Adam on the same packed parameters, so the steps of
"pmm_gpu"), "pypmm" (profiling/pypmm_peer.py: the authors' library, its Model.train and complex Adam;
skipped when not importable). All start from pmm_gpu's initial parameters (seed 0) on the bench's data
(profiling/bench.py make_data; 4096 samples in batches of 1024), lr 1e-2, float64.

1. Epochs to target: each engine trains; after every epoch the loss on the whole training set is
   evaluated at the engine's parameters of that epoch (its actual trajectory: no best-epoch restore);
   the target is reached at the first epoch whose loss <= target. pmm_gpu and torch draw the same batch
   orders (NumPy default_rng(seed) permutations); pypmm draws its own (jax.random, batch_rng=seed).
   With --seeds S every engine runs the batch orders of seeds 0..S-1; the table gives medians.
2. Seconds per epoch, measured as the bench measures throughput (profiling/bench.py engines): after a
   warm-up, --rounds rounds in which every engine in turn trains 2 timed epochs (interleaved, so that
   the load of a shared machine falls on all engines alike; pypmm's compilation excluded as in the
   bench); the median over the rounds.
3. Time to target = epochs to target × seconds per epoch.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from pmm_gpu.losses import get_loss

from . import bench, env, pypmm_peer

ENGINES = ("pmm_gpu", "pmm_gpu:complex", "torch", "pypmm")
# Training-set loss targets, chosen from 60-epoch runs of every engine (--curves): reached by every
# engine within the epoch budget, one to two orders of magnitude below each case's first-epoch loss.
TARGETS = {"A": 0.1, "B": 3e-3, "C": 3e-3, "D": 1.0}
TIMED_EPOCHS = 2


class Run:
    """One engine's trajectory under one batch order: the training-set loss after every epoch."""

    def __init__(self, engine: str, seed: int):
        self.engine, self.seed, self.losses = engine, seed, []

    def reached(self, target: float) -> int | None:
        """Epochs to the first epoch with loss <= target, or None."""
        return next((e + 1 for e, loss in enumerate(self.losses) if loss <= target), None)


def run_pmm(case, X, Y, cfg, geometry: str, seed: int, target: float | None) -> Run:
    """pmm_gpu's fit; its callback evaluates the training-set loss and stops at the target."""
    loss, run = get_loss(case.loss), Run("pmm_gpu" if geometry == "real" else f"pmm_gpu:{geometry}", seed)
    m = bench.make_pmm(case, cfg.device, cfg.dtype)

    def after_epoch(epoch, hist):
        run.losses.append(float(loss(m.predict(X, as_numpy=False), m.backend.asarray(Y))[0]))
        return target is not None and run.losses[-1] <= target

    m.fit(X, Y, epochs=cfg.max_epochs, batch_size=case.batch, lr=cfg.lr, loss=case.loss, restore_best=False,
          seed=seed, verbose=False, callback=after_epoch, geometry=geometry)
    return run


def run_torch(case, X, Y, cfg, params: dict, seed: int, target: float | None) -> Run:
    """torch_pmm's loop epoch by epoch on one host RNG stream (the batch orders of pmm_gpu's fit)."""
    import torch

    from . import torch_pmm

    eng = bench.TorchEngine(case, cfg.device, cfg.dtype, X, Y, cfg.lr, params)
    run, rng, f = Run("torch", seed), np.random.default_rng(seed), torch_pmm.loss_fn(case.loss)
    for _ in range(cfg.max_epochs):
        torch_pmm.fit(eng.model, eng.opt, eng.X, eng.Y, epochs=1, batch_size=case.batch, loss=case.loss, rng=rng)
        with torch.no_grad():
            run.losses.append(float(f(eng.model(eng.X), eng.Y)))
        if target is not None and run.losses[-1] <= target:
            break
    return run


def run_pypmm(case, X, Y, cfg, params: dict, seed: int) -> Run:
    """pyPMM's Model.train over all epochs in one call (it has no per-epoch exit); the per-epoch callback
    copies the parameters to the host, and the losses are evaluated afterwards."""
    peer = pypmm_peer.PyPMMEngine(case, cfg.device, cfg.dtype, X, Y, cfg.lr, params)
    jax, snaps = peer.jax, []

    def callback(batch_rng, epoch, p):
        jax.debug.callback(snaps.append, p)
        return batch_rng, p

    peer.model.train(peer.X, peer.Y, X_val=peer.X[:peer.batch], Y_val=peer.Y[:peer.batch], loss_fn=peer.loss_arg,
                     lr=cfg.lr, batch_size=peer.batch, epochs=cfg.max_epochs, early_stopping_patience=10**9,
                     verbose=False, batch_rng=seed, callback=callback)
    run, structure = Run("pypmm", seed), jax.tree.structure(peer.model.get_params())
    for p in snaps:
        peer.model.set_params(jax.tree.unflatten(structure, jax.tree.leaves(p)))
        run.losses.append(peer.loss())
    return run


class _ComplexPmmEngine(bench.PmmEngine):
    """The bench's pmm_gpu engine with Adam's "complex" geometry."""

    name = "pmm_gpu:complex"

    def train(self, epochs: int) -> float:
        h = self.model.fit(self.X, self.Y, epochs=epochs, batch_size=self.case.batch, lr=self.lr,
                           loss=self.case.loss, restore_best=False, seed=0, verbose=False, geometry="complex")
        return sum(h["epoch_time"])


def seconds_per_epoch(case, X, Y, cfg, engines, params) -> dict[str, float]:
    """Median seconds per training epoch of every engine: warm-up, then --rounds interleaved rounds of
    TIMED_EPOCHS epochs each (the bench's engines and timing)."""
    timed = []
    for e in engines:
        if e == "pmm_gpu":
            timed.append(bench.PmmEngine(case, cfg.device, cfg.dtype, X, Y, cfg.lr))
        elif e == "pmm_gpu:complex":
            timed.append(_ComplexPmmEngine(case, cfg.device, cfg.dtype, X, Y, cfg.lr))
        elif e == "torch":
            timed.append(bench.TorchEngine(case, cfg.device, cfg.dtype, X, Y, cfg.lr, params))
        else:
            timed.append(pypmm_peer.PyPMMEngine(case, cfg.device, cfg.dtype, X, Y, cfg.lr, params))
    for eng in timed:
        eng.train(1)
    times = {e: [] for e in engines}
    for _ in range(cfg.rounds):
        for name, eng in zip(engines, timed):
            env.settle(cfg.device)
            times[name].append(eng.train(TIMED_EPOCHS) / TIMED_EPOCHS)
    return {name: float(np.median(t)) for name, t in times.items()}


def run_case(case, cfg, engines, notes) -> tuple[list[Run], dict[str, float]]:
    """Every engine's trajectories (each seed) and seconds per epoch on one case, from one start."""
    X, Y = bench.make_data(case, cfg.samples, cfg.dtype)
    params = {k: v.copy() for k, v in bench.make_pmm(case, "cpu", cfg.dtype).params.items()}  # host init: any device
    target = None if cfg.curves else cfg.targets[case.name]
    ok = []
    for engine in engines:
        why = {"torch": env.torch_note(cfg.device), "pypmm": env.pypmm_note()}.get(engine)
        notes.extend([why] if why else [])
        ok += [] if why else [engine]
    runs = []
    for seed in range(cfg.seeds):
        for engine in ok:
            if engine.startswith("pmm_gpu"):
                runs.append(run_pmm(case, X, Y, cfg, engine.partition(":")[2] or "real", seed, target))
            elif engine == "torch":
                runs.append(run_torch(case, X, Y, cfg, params, seed, target))
            else:
                runs.append(run_pypmm(case, X, Y, cfg, params, seed))
            print(f"# case {case.name} {engine} seed {seed}: {len(runs[-1].losses)} epochs, last loss "
                  f"{runs[-1].losses[-1]:.4g}", file=sys.stderr, flush=True)
    return runs, seconds_per_epoch(case, X, Y, cfg, ok, params)


def table(results: dict, cfg) -> str:
    """Markdown: per case and engine, epochs to the target (median over batch orders), seconds per epoch
    and their product, and the losses after 1, 2 and 5 epochs (medians)."""
    lines = ["| case | target loss | engine | epochs to target (per batch order) | s per epoch | "
             "time to target, s | loss after 1 / 2 / 5 epochs |", "|" + "---|" * 7]
    for name, (runs, per_epoch) in results.items():
        for engine in dict.fromkeys(r.engine for r in runs):
            mine = [r for r in runs if r.engine == engine]
            hits = [r.reached(cfg.targets[name]) for r in mine]
            got = [h for h in hits if h is not None]
            ep = float(np.median(got)) if len(got) == len(hits) else None
            each = ", ".join("–" if h is None else str(h) for h in hits)
            early = " / ".join(f"{np.median([r.losses[e] for r in mine]):.4g}"
                               if all(len(r.losses) > e for r in mine) else "–" for e in (0, 1, 4))
            t = "–" if ep is None else f"{ep * per_epoch[engine]:.2f}"
            lines.append(f"| {name} | {cfg.targets[name]:g} | {engine} | {'–' if ep is None else f'{ep:g}'} "
                         f"({each}) | {per_epoch[engine]:.3f} | {t} | {early} |")
    return "\n".join(lines)


def curves(results: dict) -> str:
    """Per-epoch training-set losses of every run (for choosing targets and comparing optimizers)."""
    return "\n".join(f"{name} {r.engine:<16} seed {r.seed}: " + " ".join(f"{x:.4g}" for x in r.losses)
                     for name, (runs, _) in results.items() for r in runs)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="A,B,C,D")
    ap.add_argument("--engines", default=",".join(ENGINES), help="subset of " + ",".join(ENGINES))
    ap.add_argument("--targets", default=None, help="e.g. A=0.1,B=3e-3 (default: TARGETS)")
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=1, help="batch orders per engine (seeds 0..S-1); medians")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of 2 epochs per engine")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="every engine on this device")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (env.set_threads)")
    ap.add_argument("--curves", action="store_true", help="train every engine for all --max-epochs")
    ap.add_argument("--out", default=None, help="also write the report (markdown) to this file")
    args = ap.parse_args(argv)
    args.cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [c for c in args.cases if c not in bench.CASES] + [e for e in args.engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown case(s)/engine(s) {bad}")
    args.targets = {**TARGETS, **{k.strip().upper(): float(v) for k, v in
                                  (t.split("=") for t in (args.targets or "").split(",") if t.strip())}}
    return args


def main(argv=None) -> int:
    cfg = parse(argv)
    threads = env.set_threads(cfg.threads)
    head = (f"# time to accuracy | {time.strftime('%Y-%m-%d %H:%M')} | commit {env.commit()} | {env.host()}\n"
            f"# {cfg.device}, {cfg.dtype}, {cfg.samples} samples, lr {cfg.lr}, <= {cfg.max_epochs} epochs, {cfg.seeds} batch "
            f"order(s) per engine, {cfg.rounds} timing rounds, threads {threads}")
    print(head, flush=True)
    results, notes = {}, []
    try:
        for c in cfg.cases:
            results[c] = run_case(bench.CASES[c], cfg, cfg.engines, notes)
            report(head, results, notes, cfg, final=False)  # a run cut short keeps its finished cases
    except KeyboardInterrupt:  # gpu_check.sh's step budget (SIGINT): report the finished cases
        notes.append(f"interrupted: cases {', '.join(results) or 'none'} finished")
    print(report(head, results, notes, cfg)[len(head):])
    return 0


def report(head: str, results: dict, notes: list, cfg, final: bool = True) -> str:
    """The markdown report of the finished cases, also written to --out (after every case)."""
    text = "\n".join([head, "", table(results, cfg), *[f"note: {n}" for n in dict.fromkeys(notes)], "",
                      "per-epoch training-set losses:", "```", curves(results), "```"])
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(text + ("\n" if final else "\n(in progress)\n"))
    return text


if __name__ == "__main__":
    sys.exit(main())
