"""Convolutional PMM on Fashion-MNIST: a small PyTorch CNN front-end feeding an AO-PMM head (pmm_gpu.torch).

    image (1, 28, 28) -> conv3x3(16)-BN-ReLU, max-pool -> conv3x3(32)-BN-ReLU, max-pool -> conv3x3(64)-BN-ReLU
      -> average pool to 3×3 -> features f (p = 576,) -> BatchNorm
      -> AO-PMM (complex 8×8, r = 3 eigenvectors "SA", one secondary per class, transition form, bias):
         z_q = b_q + ‖V_Sᴴ D_q V_S‖_F² − ½‖D_q‖₂²,  V_S from M(f) = M_0 + Σ_i f_i M_i,  init_scale 1/√p
      -> softmax cross-entropy over the 10 logits z.                       62,138 trainable parameters

The baseline is the same-size CNN with a linear head (f -> W f + b), its last conv block widened to 144
channels for the same parameter count (62,170), trained under the same recipe. One fixed recipe
(``RECIPE``: AdamW lr 3e-3, weight decay 5e-4 on conv weights, 1 warm-up epoch then cosine decay,
batches of 128, 10 epochs, random flips and ±2 pixel shifts); every choice was made on a validation
split of 6,000 images carved from the 60,000 training images (fixed split seed; ``DEV_LOG``); the
official 10,000 test images are read only by the final runs, which train on the remaining 54,000 images
and report validation and test accuracy.

    python examples/conv_fashion_mnist.py --runs pmm:0 --threads 1   # one seed (also pmm:1, pmm:2, linear:0)
    python examples/conv_fashion_mnist.py --quick --out /tmp/cfm      # reduced size, ~1 min of CPU
    python examples/conv_fashion_mnist.py --dev --set epochs=6 pool=1 # development: validation only

Each finished run is added to <out>/conv_fashion_mnist.json (runs keyed "head:seed"; concurrent processes
may share <out>), and the table <out>/conv_fashion_mnist.md is rewritten from it.
"""
from __future__ import annotations

import os

# The PMM head's many small LAPACK/BLAS calls: OpenBLAS threads only add contention on a small shared CPU.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pmm_gpu.datasets import load_fashion_mnist  # noqa: E402
from pmm_gpu.torch import ObservablePMM  # noqa: E402

DEV_LOG = """
## Development log (validation split only; the test set was not read)

| variant | epochs | trainable params | val acc |
|---|---|---|---|
| global average pooling (p = 64), AO-PMM n = 8, r = 3, init_scale 1/√p | 6 | 28,346 | 90.53 % |
| average pooling to 3×3 (p = 576), otherwise the same (chosen) | 6 | 62,138 | 91.43 % |

Channels (16, 32, 64) and batches of 128 were fixed first by CPU time (1 thread: ~0.2 s per step while
the machine's 2 cores were shared with other jobs); the final recipe is the chosen variant at 10 epochs.

Wall times: the committed runs used 1 torch thread each, two runs at a time, on a 2-core VM shared with
other jobs (load average 15 to 260 during the runs); a 10-epoch conv-PMM run used about 5 CPU-minutes
(process time), i.e. about 5 minutes per seed on an otherwise idle core.
"""
NAME = "conv_fashion_mnist"
PARAM_LIMIT = 278_280  # the paper's conv-PMM
# linear_channels: the baseline's front-end, widened in its last block to the conv-PMM's parameter count
# pmm_init_scale None: 1/√p, so that Σ_i f_i M_i over p unit-variance features has an O(1) spectrum
RECIPE = dict(channels=(16, 32, 64), linear_channels=(16, 32, 144), pool=3, pmm_n=8, pmm_r=3, pmm_l=1,
              pmm_init_scale=None, feature_scale=1.0, epochs=10,
              batch=128, lr=3e-3, weight_decay=5e-4, warmup_epochs=1, shift=2, flip=True, n_val=6000, split_seed=0)
QUICK = dict(epochs=3, n_train=4000, n_val=1000, n_test=1000, channels=(8, 16, 32), linear_channels=(8, 16, 64),
             pmm_n=6)


class FrontEnd(nn.Module):
    """Three conv blocks (conv3x3-BN-ReLU, max-pool after the first two), then average pooling to
    pool × pool and flattening: (B, 1, 28, 28) -> (B, c3·pool²) (pool = 1: global average pooling)."""

    def __init__(self, channels, pool: int):
        super().__init__()
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())

    def forward(self, x):
        return self.body(x)


class ConvNet(nn.Module):
    """FrontEnd -> BatchNorm1d -> head ("pmm": the AO-PMM layer of pmm_gpu.torch; "linear": nn.Linear)."""

    def __init__(self, head: str, recipe: dict, seed: int):
        super().__init__()
        channels = recipe["channels"] if head == "pmm" else recipe["linear_channels"]
        p = channels[-1] * recipe["pool"] ** 2
        self.front, self.norm = FrontEnd(channels, recipe["pool"]), nn.BatchNorm1d(p)
        self.scale = 1.0
        if head == "pmm":
            self.scale = recipe["feature_scale"]
            init_scale = recipe["pmm_init_scale"] or 1.0 / math.sqrt(p)
            self.head = ObservablePMM(recipe["pmm_n"], p, n_outputs=10, n_eig=recipe["pmm_r"],
                                      n_secondaries=recipe["pmm_l"], which="SA", seed=seed, init_scale=init_scale)
        else:
            self.head = nn.Linear(p, 10)

    def forward(self, x):
        return self.head(self.norm(self.front(x)) * self.scale).float()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_data(recipe: dict, quick: bool, dev: bool = False):
    """(train, val, test) as (images (N, 1, 28, 28) float32 standardised, labels int64); the test set
    is read here only, for the final evaluation, and not at all with dev=True (test is then None)."""
    X, y = load_fashion_mnist("train")
    perm = np.random.default_rng(recipe["split_seed"]).permutation(len(X))
    val, tr = perm[:recipe["n_val"]], perm[recipe["n_val"]:]
    if quick:
        tr, val = tr[:QUICK["n_train"]], val[:QUICK["n_val"]]
    if dev:
        Xt = yt = None
    else:
        Xt, yt = load_fashion_mnist("test")
    if quick and not dev:
        Xt, yt = Xt[:QUICK["n_test"]], yt[:QUICK["n_test"]]
    mean, std = X[tr].mean() / 255, X[tr].std() / 255

    def prep(a, b):
        return (torch.from_numpy(((a / 255 - mean) / std).astype(np.float32))[:, None],
                torch.from_numpy(b.astype(np.int64)))
    return prep(X[tr], y[tr]), prep(X[val], y[val]), (None if dev else prep(Xt, yt))


def augment(x, shift: int, flip: bool, gen):
    """Random horizontal flips and translations by up to ``shift`` pixels (zero padding), per image."""
    B = x.shape[0]
    if flip:
        f = torch.rand(B, generator=gen) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    if shift:
        pad = F.pad(x, (shift,) * 4, value=float(x.min()))
        d = torch.randint(0, 2 * shift + 1, (2, B), generator=gen)
        rows = (d[0][:, None] + torch.arange(28))[:, :, None]  # (B, 28, 1)
        cols = (d[1][:, None] + torch.arange(28))[:, None, :]  # (B, 1, 28)
        x = pad[torch.arange(B)[:, None, None], 0, rows, cols][:, None]
    return x


@torch.no_grad()
def accuracy(model, data, batch: int = 1000) -> float:
    model.eval()
    X, y = data
    hits = sum(int((model(X[s:s + batch]).argmax(1) == y[s:s + batch]).sum()) for s in range(0, len(X), batch))
    return hits / len(X)


def train(head: str, seed: int, recipe: dict, data, log) -> dict:
    """One run of the recipe: AdamW, linear warm-up then cosine decay per step; returns the record."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    (Xtr, ytr), val, test = data
    model = ConvNet(head, recipe, seed)
    n_params = count_params(model)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.startswith("head."))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=recipe["lr"])
    steps_per_epoch = math.ceil(len(Xtr) / recipe["batch"])
    total, warm = recipe["epochs"] * steps_per_epoch, recipe["warmup_epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(
        math.pi * min(max(s - warm, 0) / max(total - warm, 1), 1.0)))))
    t0, curve = time.perf_counter(), []
    for epoch in range(recipe["epochs"]):
        model.train()
        perm, loss_sum = torch.randperm(len(Xtr), generator=gen), 0.0
        for s in range(0, len(Xtr), recipe["batch"]):
            idx = perm[s:s + recipe["batch"]]
            loss = F.cross_entropy(model(augment(Xtr[idx], recipe["shift"], recipe["flip"], gen)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        curve.append({"epoch": epoch + 1, "train_loss": loss_sum / len(Xtr), "val_acc": accuracy(model, val),
                      "wall_s": time.perf_counter() - t0})
        log(f"{head}:{seed} epoch {epoch + 1}: loss {curve[-1]['train_loss']:.4f} val {curve[-1]['val_acc']:.4f} "
            f"({curve[-1]['wall_s']:.0f} s)")
    wall = time.perf_counter() - t0
    return {"head": head, "seed": seed, "params": n_params, "epochs": recipe["epochs"], "train_wall_s": wall,
            "val_acc": curve[-1]["val_acc"], "test_acc": None if test is None else accuracy(model, test),
            "curve": curve}


def provenance() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    return {"commit": commit, "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads()}


def write_markdown(out: Path, results: dict):
    """Rewrite <out>/conv_fashion_mnist.md from the JSON record (every run made so far)."""
    runs = results["runs"]
    lines = [f"# Conv-PMM on Fashion-MNIST ({results['provenance']['date']}, commit {results['provenance']['commit']})",
             "", f"Recipe: `{json.dumps(results['recipe'])}`", "",
             "| head | seed | trainable params | epochs | val acc | test acc | train wall time | command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs.values():
        test = "–" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f} %"
        lines.append(f"| {r['head']} | {r['seed']} | {r['params']:,} | {r['epochs']} | {100 * r['val_acc']:.2f} % | "
                     f"{test} | {r['train_wall_s'] / 60:.1f} min | `{r['command']}` |")
    for head in ("pmm", "linear"):
        acc = [r["test_acc"] for r in runs.values() if r["head"] == head and r["test_acc"] is not None]
        if acc:
            lines.append(f"\n**{head}**: mean test accuracy {100 * np.mean(acc):.2f} % over {len(acc)} seed(s), "
                         f"min {100 * min(acc):.2f} %.")
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n" + DEV_LOG)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="pmm:0", help="comma-separated head:seed (head pmm or linear)")
    ap.add_argument("--quick", action="store_true", help="reduced size (3,000 images, 1 epoch), for tests")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--dev", action="store_true", help="development: validation only, the test set is not read")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="development: override RECIPE entries")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = {**RECIPE, **({k: v for k, v in QUICK.items() if k in RECIPE} if args.quick else {})}
    for kv in args.set:
        key, value = kv.split("=", 1)
        if key not in RECIPE:
            raise ValueError(f"--set: unknown recipe entry {key!r} (one of {sorted(RECIPE)})")
        recipe[key] = json.loads(value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{NAME}.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results.update(recipe=recipe, provenance=provenance(), quick=args.quick, param_limit=PARAM_LIMIT,
                   full_recipe_params={h: count_params(ConvNet(h, RECIPE, 0)) for h in ("pmm", "linear")})
    data = load_data(recipe, args.quick, args.dev)
    for run in args.runs.split(","):
        head, seed = run.split(":")
        if head not in ("pmm", "linear"):
            raise ValueError(f"--runs: head must be 'pmm' or 'linear', got {head!r}")
        rec = train(head, int(seed), recipe, data, lambda s: print(s, flush=True))
        if rec["params"] > PARAM_LIMIT:
            raise RuntimeError(f"{rec['params']} trainable parameters exceed the limit {PARAM_LIMIT}")
        rec["command"] = "python examples/conv_fashion_mnist.py " + " ".join(
            (["--quick"] if args.quick else []) + (["--dev"] if args.dev else []) + [f"--runs {run}"]
            + [f"--threads {args.threads}"] + ([f"--set {' '.join(args.set)}"] if args.set else []))
        results["runs"][run] = rec
        print(f"{run}: val {rec['val_acc']:.4f} test {rec['test_acc']} ({rec['params']:,} parameters, "
              f"{rec['train_wall_s']:.0f} s)", flush=True)
        if path.exists():  # runs made meanwhile by another process writing here
            results["runs"] = {**json.loads(path.read_text())["runs"], **results["runs"]}
        path.write_text(json.dumps(results, indent=1))
        write_markdown(out, results)
    return results


if __name__ == "__main__":
    main()
