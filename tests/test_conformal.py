"""Issue 14: split conformal intervals (pmm_gpu/conformal.py). One PMM is trained once; the held-out
pool is split 200 times at random into calibration and test sets (must show 3: mean coverage at
α = 0.1 in [0.88, 0.92], and at least the finite-sample bound 1 − α − 1/(n_cal + 1) on average)."""
from __future__ import annotations

import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu.conformal import ConformalRegressor, conformal_quantile

ALPHA, N_CAL, N_TEST, SPLITS = 0.1, 199, 801, 200


def problem(N, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (N, 2))
    return X, np.sin(3 * X[:, :1]) + 0.5 * X[:, 1:] ** 2 + 0.1 * rng.standard_normal((N, 1))


@pytest.fixture(scope="module")
def trained():
    m = pg.AffineEigenvaluePMM(6, 2, n_eig=1, which="SA", device="cpu", seed=0)
    m.fit(*problem(400, 1), epochs=40, batch_size=50, lr=2e-2, verbose=False)
    return m


def test_coverage_over_200_random_splits(trained):
    Xp, Yp = problem(N_CAL + N_TEST, 2)  # the held-out pool
    conf = ConformalRegressor(trained)
    rng = np.random.default_rng(3)
    cover, widths = [], []
    for _ in range(SPLITS):
        perm = rng.permutation(len(Xp))
        cal, test = perm[:N_CAL], perm[N_CAL:]
        conf.calibrate(Xp[cal], Yp[cal])
        cover.append(conf.coverage(Xp[test], Yp[test], ALPHA))
        widths.append(2 * conf.quantile(ALPHA)[0])
    mean = float(np.mean(cover))
    print(f"coverage at alpha={ALPHA}: mean {mean:.4f}, std {np.std(cover):.4f}, min {min(cover):.4f}, "
          f"max {max(cover):.4f} over {SPLITS} splits (n_cal={N_CAL}); mean width {np.mean(widths):.4f}")
    assert 0.88 <= mean <= 0.92
    assert mean >= 1 - ALPHA - 1 / (N_CAL + 1)
    assert mean <= 1 - ALPHA + 1 / (N_CAL + 1) + 0.01  # continuous scores: not over-conservative either


def test_quantile_rank_and_infinite_interval():
    s = np.arange(1.0, 20.0)[:, None]  # n = 19 scores 1..19
    assert conformal_quantile(s, 0.1)[0] == 18.0  # ⌈20·0.9⌉ = 18th smallest
    assert conformal_quantile(s, 0.5)[0] == 10.0
    assert np.isinf(conformal_quantile(s[:5], 0.1)[0])  # ⌈6·0.9⌉ = 6 > 5: no finite interval
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(s, 1.5)


def test_save_load_and_normalized_intervals(trained, tmp_path):
    X, Y = problem(300, 4)
    conf = ConformalRegressor(trained).calibrate(X[:150], Y[:150])
    pred, lo, hi = conf.predict_interval(X[150:], 0.2)
    assert pred.shape == lo.shape == hi.shape == (150, 1) and np.all(hi - lo > 0)
    conf.save(tmp_path / "conf.npz")
    again = ConformalRegressor.load(tmp_path / "conf.npz")
    for a, b in zip(again.predict_interval(X[150:], 0.2), (pred, lo, hi)):
        np.testing.assert_array_equal(a, b)
    u = 1 + np.abs(X[:, :1])
    conf.calibrate(X[:150], Y[:150], scale=u[:150])
    _, lo, hi = conf.predict_interval(X[150:], 0.2, scale=u[150:])
    np.testing.assert_allclose((hi - lo) / u[150:], ((hi - lo) / u[150:])[0, 0])
    with pytest.raises(ValueError, match="scale"):
        conf.predict_interval(X[150:], 0.2)
    with pytest.raises(ValueError, match="not calibrated"):
        ConformalRegressor(pg.AffineEigenvaluePMM(4, 2, device="cpu")).predict_interval(X, 0.1)


def test_wraps_an_estimator(tmp_path):
    pytest.importorskip("sklearn")
    X, Y = problem(300, 5)
    est = pg.PMMRegressor(n=4, n_eig=2, epochs=5, device="cpu").fit(X[:200], Y[:200, 0])
    conf = ConformalRegressor(est).calibrate(X[200:250], Y[200:250, 0])
    pred, lo, hi = conf.predict_interval(X[250:], 0.1)
    assert pred.shape == lo.shape == (50,)
    conf.save(tmp_path / "est.npz")
    with pytest.raises(ValueError, match="loader=pmm_gpu.PMMRegressor.load"):
        ConformalRegressor.load(tmp_path / "est.npz")
    again = ConformalRegressor.load(tmp_path / "est.npz", loader=pg.PMMRegressor.load)
    np.testing.assert_array_equal(again.predict_interval(X[250:], 0.1)[1], lo)
