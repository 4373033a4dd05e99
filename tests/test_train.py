"""Trainer: Adam against an independent implementation, schedules, batching, early stopping,
best-parameter restore, divergence handling, resume from a saved optimizer state."""
import math

import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu.ops.adam import adam_step
from pmm_gpu.optim import lr_factor


def data(B=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(B, 2))
    return X, np.c_[np.sin(X[:, 0]) + X[:, 1] ** 2, np.cos(X[:, 1])]


def model(**kw):
    return pg.AffineEigenvaluePMM(n=4, n_features=2, n_eig=2, device="cpu", seed=1, **kw)


def reference_adam(theta, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Textbook Adam (Kingma & Ba, Algorithm 1), element by element in Python floats."""
    theta, m, v = list(theta), [0.0] * len(theta), [0.0] * len(theta)
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            theta[i] -= lr * (m[i] / (1 - b1**t)) / (math.sqrt(v[i] / (1 - b2**t)) + eps)
    return np.array(theta)


def test_adam_step_matches_textbook():
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=7)
    grads = [rng.normal(size=7) for _ in range(5)]
    theta, m, v = theta0.copy(), np.zeros(7), np.zeros(7)
    for t, g in enumerate(grads, start=1):
        adam_step(theta, g, m, v, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, step=t, scale=1.0)
    np.testing.assert_allclose(theta, reference_adam(theta0, grads, 0.1), rtol=1e-13, atol=1e-14)


def test_fit_is_minibatch_adam_on_loss_and_grad():
    """One epoch of fit == manual Adam over loss_and_grad on the same shuffled batches."""
    X, Y = data(10)
    a, b = model(), model()
    a.fit(X, Y, epochs=1, batch_size=4, lr=0.05, seed=3, verbose=False)
    perm = np.random.default_rng(3).permutation(10)
    theta, grads = b.theta.copy(), []
    for s in range(0, 10, 4):  # batches of 4, 4 and a final partial batch of 2
        idx = perm[s:s + 4]
        grads.append(b.loss_and_grad(X[idx], Y[idx])[1]["primaries"].ravel())
        b.theta[...] = reference_adam(theta, grads, 0.05)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-14)
    assert int(a.opt_state["step"]) == 3


def test_weight_decay_is_textbook_adamw():
    """fit(weight_decay=λ) == AdamW (Loshchilov & Hutter, Algorithm 2, decoupled decay scaled by lr_t)."""
    X, Y = data(8)
    a, b = model(), model()
    lam, lr, steps = 0.3, 0.05, 4
    a.fit(X, Y, epochs=steps, batch_size=8, lr=lr, weight_decay=lam, schedule="cosine", verbose=False)
    b1, b2, eps = 0.9, 0.999, 1e-8
    theta = b.theta.copy()
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for t in range(1, steps + 1):
        b.theta[...] = theta
        g = b.loss_and_grad(X, Y)[1]["primaries"].ravel()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))
        theta = theta - lr_t * ((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + lam * theta)
    np.testing.assert_allclose(a.theta, theta, rtol=1e-12, atol=1e-14)
    c = model()
    c.fit(X, Y, epochs=steps, batch_size=8, lr=lr, schedule="cosine", verbose=False)
    assert not np.allclose(c.theta, a.theta)  # the decay does act
    with pytest.raises(ValueError):
        model().fit(X, Y, epochs=1, weight_decay=-1.0, verbose=False)


def test_cosine_and_callable_schedules():
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    X, Y = data()
    h = model().fit(X, Y, epochs=4, batch_size=24, lr=0.1, schedule=lambda t, T: 1.0 / (1 + t), verbose=False)
    np.testing.assert_allclose(h["lr"], [0.1 / (1 + t) for t in range(4)])


def test_clip_norm_bounds_the_step():
    X, Y = data()
    m = model()
    g = m.loss_and_grad(X, Y)[1]["primaries"].ravel()
    theta0 = m.theta.copy()
    m.fit(X, Y, epochs=1, batch_size=24, lr=0.1, clip_norm=1e-3, verbose=False)
    # clipping rescales g to norm 1e-3; Adam's first step is lr·ĝ/(|ĝ| + eps) per element
    gs = g * 1e-3 / np.linalg.norm(g)
    np.testing.assert_allclose(m.theta, theta0 - 0.1 * gs / (np.abs(gs) + 1e-8), rtol=1e-10)


def test_early_stopping_and_best_restore():
    X, Y = data(40)
    Xv, Yv = data(20, seed=5)
    m = model()
    h = m.fit(X, Y, epochs=400, batch_size=8, lr=0.3, validation_data=(Xv, Yv), patience=3, verbose=False)
    assert h["stop_reason"].startswith("early stopping") and len(h["loss"]) < 400
    best = min(h["val_loss"])
    assert h["val_loss"][h["best_epoch"] - 1] == best
    assert m.loss_and_grad(Xv, Yv)[0] == pytest.approx(best, rel=1e-10)  # the best parameters are back


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_divergence_stops_and_keeps_last_good_parameters():
    X, Y = data()
    m = model()
    m.fit(X, Y, epochs=2, batch_size=24, lr=0.01, verbose=False)
    good = m.theta.copy()
    Y_bad = Y * 1e200  # squares overflow to inf in the loss
    with pytest.warns(RuntimeWarning, match="diverged"):
        h = m.fit(X, Y_bad, epochs=5, batch_size=24, lr=0.01, verbose=False)
    assert h["stop_reason"].startswith("diverged") and h["loss"] == []
    np.testing.assert_array_equal(m.theta, good)


def test_resume_continues_adam_state(tmp_path):
    X, Y = data()
    a = model()
    a.fit(X, Y, epochs=3, batch_size=8, lr=0.05, verbose=False)
    a.save(tmp_path / "a.npz")
    b = pg.load(tmp_path / "a.npz", device="cpu")
    assert int(b.opt_state["step"]) == 9
    a.fit(X, Y, epochs=2, batch_size=8, lr=0.05, seed=1, verbose=False)
    b.fit(X, Y, epochs=2, batch_size=8, lr=0.05, seed=1, verbose=False)
    np.testing.assert_array_equal(a.theta, b.theta)
    fresh = pg.load(tmp_path / "a.npz", device="cpu")
    fresh.opt_state = None  # restarting Adam from zero moments gives a different trajectory
    fresh.fit(X, Y, epochs=2, batch_size=8, lr=0.05, seed=1, verbose=False)
    assert not np.allclose(fresh.theta, b.theta)


def test_progress_line(capsys):
    X, Y = data()
    model().fit(X, Y, epochs=3, batch_size=24, validation_data=data(8, 2), verbose=True)
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "val" in err and "samples/s" in err
    model().fit(X, Y, epochs=3, batch_size=24, verbose=False)
    assert capsys.readouterr().err == ""


# --- issue 11: non-finite parameters mid-epoch and after the last step ------------------------------
def _nan_gradient_at(call: int):
    """MSE whose gradient is NaN at its ``call``-th call (a custom loss gone wrong)."""
    calls = []

    def loss(pred, target):
        calls.append(1)
        d = pred - target
        g = (2.0 / d.size) * d
        return (d * d).mean(), (g * np.nan if len(calls) == call else g)

    return loss


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("kw", [dict(lr=1e300), dict(loss=_nan_gradient_at(2))], ids=["huge-lr", "nan-gradient"])
def test_nonfinite_parameters_mid_epoch_restore_the_snapshot(kw):
    """NaN parameters make LAPACK raise LinAlgError in the next step, before any loss exists: fit must
    treat it as divergence (restore the epoch's start, stop_reason, warning), not propagate it."""
    X, Y = data(40)
    m = model()
    theta = m.theta.copy()
    with pytest.warns(RuntimeWarning, match="diverged"):
        h = m.fit(X, Y, epochs=3, batch_size=8, verbose=False, **kw)
    assert h["stop_reason"].startswith("diverged") and h["loss"] == [] and m.history is h
    np.testing.assert_array_equal(m.theta, theta)
    assert int(m.opt_state["step"]) == 0


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_nan_from_the_last_step_is_noticed():
    """One full-batch step per epoch, NaN gradient at the 3rd: the loss of epoch 3 is measured before the
    update and is finite, but the parameters after it are not: epoch 3 must count as diverged."""
    X, Y = data(16)
    m = model()
    with pytest.warns(RuntimeWarning, match="non-finite parameters after the last step of epoch 3"):
        h = m.fit(X, Y, epochs=5, batch_size=16, loss=_nan_gradient_at(3), verbose=False)
    assert h["stop_reason"] == "diverged: non-finite parameters after the last step of epoch 3"
    assert len(h["loss"]) == 2 and np.isfinite(m.theta).all() and int(m.opt_state["step"]) == 2
