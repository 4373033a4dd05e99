"""Fashion-MNIST with an affine observable PMM, one fixed recipe (issue 3, DESIGN.md §6).

Data: the Debian package dataset-fashion-mnist (pmm_gpu.datasets); 60,000 training images, the
official 10,000 test images. A validation split of --val images is carved from the 60,000 training
images (stratified, drawn with --seed); every choice — early stopping and the model kept — uses it,
the test set is only read for the final number.

Fixed, non-trainable preprocessing (fitted on the remaining training images only):
  pixels / 255  ->  centre by the training mean image  ->  project on the top --components principal
  axes of the training images (PCA)  ->  one global scale so that E‖x‖² = 1 (relative variances kept).
  With --flip the training set is augmented with left-right mirrored copies of its images (fixed,
  label-preserving; validation and test images are not touched).
Model: AffineObservablePMM, complex Hermitian n×n primaries (one per PCA component + M_0), 10 outputs
(logits) with --secondaries secondaries each, transition form, r = --n-eig eigenvectors selected
by largest |λ|, centering and bias; softmax cross-entropy, Adam with a cosine learning-rate
schedule, mini-batches of --batch-size, --epochs epochs; the parameters of the epoch with the
highest validation accuracy are restored at the end (the validation loss is also reported per epoch;
--patience stops early on it).

Trainable parameters: (components + 1)·n² + 10·secondaries·n² + 10 (complex field: n² per matrix).

    python examples/fashion_mnist.py --seed 0
"""
from __future__ import annotations

import os

# Many small GEMMs per step: OpenBLAS threads only add contention on a small shared CPU.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import pmm_gpu as pg  # noqa: E402
from pmm_gpu.datasets import load_fashion_mnist  # noqa: E402

PARAM_BUDGET = 16744  # the paper's AO-PMM on Fashion-MNIST (88.58 % test accuracy)


def stratified_split(y, n_val, rng):
    """Indices (train, val) with n_val validation images spread evenly over the classes."""
    val = []
    classes = np.unique(y)
    for c in classes:
        idx = np.flatnonzero(y == c)
        val.append(rng.choice(idx, n_val // len(classes), replace=False))
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val), val


def fit_pca(X, k):
    """Mean (784,) and projection (784, k) onto the top-k principal axes, from X (N, 784) float."""
    mean = X.mean(axis=0)
    C = (X - mean).T @ (X - mean) / len(X)
    w, U = np.linalg.eigh(C)
    P = U[:, ::-1][:, :k]
    scale = 1.0 / np.sqrt(w[::-1][:k].sum())  # E‖x‖² = 1 after projection
    return mean, P * scale


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=12, help="matrix size")
    ap.add_argument("--components", type=int, default=105, help="PCA components = PMM input features")
    ap.add_argument("--n-eig", type=int, default=4, help="r, selected eigenvectors")
    ap.add_argument("--secondaries", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.004)
    ap.add_argument("--patience", type=int, default=None)
    ap.add_argument("--val", type=int, default=6000, help="validation images carved from the training set")
    ap.add_argument("--train-limit", type=int, default=None, help="use only this many training images (tests)")
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images (tests)")
    ap.add_argument("--flip", action="store_true",
                    help="add left-right mirrored copies of the training images (fixed augmentation)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    t_start = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    X, y = load_fashion_mnist("train", path=a.data_dir, flatten=True)
    Xte, yte = load_fashion_mnist("test", path=a.data_dir, flatten=True)
    if a.train_limit:
        keep = rng.permutation(len(X))[:a.train_limit]
        X, y = X[keep], y[keep]
    if a.test_limit:
        Xte, yte = Xte[:a.test_limit], yte[:a.test_limit]
    tr, va = stratified_split(y, a.val, rng)
    X = X.astype(np.float32) / 255
    Xte = Xte.astype(np.float32) / 255
    mean, P = fit_pca(X[tr].astype(np.float64), a.components)  # training images only
    proj = lambda A: ((A - mean) @ P).astype(a.dtype)  # noqa: E731
    Xtr, Xva, Xtest = proj(X[tr]), proj(X[va]), proj(Xte)
    ytr, yva = y[tr].astype(np.int64), y[va].astype(np.int64)
    if a.flip:  # mirrored training images (validation and test images are left as they are)
        Xtr = np.concatenate([Xtr, proj(X[tr].reshape(-1, 28, 28)[:, :, ::-1].reshape(len(tr), -1))])
        ytr = np.concatenate([ytr, ytr])

    model = pg.AffineObservablePMM(n=a.n, n_features=a.components, n_outputs=10, n_eig=a.n_eig,
                                   n_secondaries=a.secondaries, which="LM", form="transition",
                                   field="complex", dtype=a.dtype, device=a.device, seed=a.seed)
    if model.n_params > PARAM_BUDGET:
        print(f"warning: {model.n_params} trainable parameters exceed the budget of {PARAM_BUDGET}")
    acc = lambda A, b: float((model.predict(A).argmax(axis=1) == b).mean())  # noqa: E731
    best = {"acc": -1.0, "epoch": 0, "flat": None}

    def keep_best(epoch, hist):  # model selection by validation accuracy (never the test set)
        v = acc(Xva, yva)
        hist.setdefault("val_accuracy", []).append(v)
        if v > best["acc"]:
            best.update(acc=v, epoch=epoch, flat=model._flat.copy())

    t_fit = time.perf_counter()
    hist = model.fit(Xtr, ytr, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, loss="cross_entropy",
                     schedule="cosine", validation_data=(Xva, yva), patience=a.patience, seed=a.seed,
                     restore_best=False, verbose=not a.quiet, callback=keep_best)
    model._flat[...] = best["flat"]
    hist["best_epoch"] = best["epoch"]
    fit_s = time.perf_counter() - t_fit
    result = {"seed": a.seed, "test_accuracy": acc(Xtest, yte), "val_accuracy": acc(Xva, yva),
              "val_accuracy_per_epoch": [round(v, 4) for v in hist.get("val_accuracy", [])],
              "train_accuracy": acc(Xtr[:10000], ytr[:10000]), "n_params": model.n_params,
              "epochs_run": len(hist["loss"]), "best_epoch": hist["best_epoch"], "stop": hist["stop_reason"],
              "fit_seconds": round(fit_s, 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
              "recipe": {k: v for k, v in vars(a).items() if k not in ("quiet", "data_dir")},
              "n_train": len(tr), "n_val": len(va), "n_test": len(yte)}
    print(f"test accuracy {result['test_accuracy']:.4f} | val {result['val_accuracy']:.4f} | "
          f"{model.n_params} parameters | {result['epochs_run']} epochs (best {result['best_epoch']}) | "
          f"wall {result['wall_seconds']} s")
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
