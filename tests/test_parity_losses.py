"""Issue 14, training: the new losses (relative errors mre/mrd as pyPMM defines them, σ-weighted variants,
pseudo-Huber) against finite differences and pyPMM's formulas, a validation loss other than the
training loss, stopping at a target loss or from a callback, and the robust scaler."""
from __future__ import annotations

import numpy as np
import pytest

import pmm_gpu as pg
from fd import fd_gradient, flat_grad, rel_err
from pmm_gpu import losses
from pmm_gpu.scaling import Scaler, fit_scaler

NEW = ["mre", "mrd", "pseudo_huber"]
SIGMA_OK = ["mse", "mae", "huber", "pseudo_huber", "mre", "mrd"]


def sample(seed=0, shape=(7, 3)):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.5, 2.0, shape)  # positive targets, as the relative errors assume
    return t + rng.normal(0, 0.3, shape), t, rng.uniform(0.5, 2.0, shape)


def fd_pred(fn, p, t, h=1e-6):
    g = np.empty_like(p)
    for i in np.ndindex(p.shape):
        up, down = p.copy(), p.copy()
        up[i] += h
        down[i] -= h
        g[i] = (fn(up, t)[0] - fn(down, t)[0]) / (2 * h)
    return g


@pytest.mark.parametrize("name", SIGMA_OK)
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradient_matches_finite_differences(name, weighted):
    p, t, s = sample()
    fn = losses.get_loss(name, huber_delta=0.4)
    if weighted:
        fn = (lambda f: lambda a, b: f(a, b, sigma=s))(fn)
    assert rel_err(fn(p, t)[1], fd_pred(fn, p, t)) <= 1e-6


def test_values_follow_pypmm_definitions():
    p, t, s = sample(1)
    e = p - t
    np.testing.assert_allclose(losses.mre(p, t)[0], np.mean(np.abs(e / (t + 1e-4))))
    np.testing.assert_allclose(losses.mrd(p, t)[0], np.mean(np.abs(e / (2.0 * (t + p) + 1e-4))))
    np.testing.assert_allclose(losses.pseudo_huber(p, t, 0.7)[0], np.mean(0.49 * (np.sqrt(1 + (e / 0.7) ** 2) - 1)))
    np.testing.assert_allclose(losses.mse(p, t, s)[0], np.mean(np.abs(e / s) ** 2))  # mse_unc
    np.testing.assert_allclose(losses.mae(p, t, s)[0], np.mean(np.abs(e / s)))  # mae_unc
    np.testing.assert_allclose(losses.mre(p, t, s)[0], np.mean(np.abs(e / ((t + 1e-4) * s))))  # mre_unc
    np.testing.assert_allclose(losses.mrd(p, t, s)[0], np.mean(np.abs(e / ((2.0 * (t + p) + 1e-4) * s))))  # mrd_unc
    for name in ("mse", "mae", "huber"):  # sigma=None and σ = 1 agree
        a, b = losses.get_loss(name)(p, t), losses.get_loss(name)(p, t, sigma=np.ones_like(t))
        np.testing.assert_allclose(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1])


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("weighted", [False, True])
def test_model_gradients_of_new_losses(name, weighted):
    m = pg.AffineObservablePMM(5, 2, n_outputs=2, n_eig=2, eta=0.0, device="cpu", seed=1)
    X, _ = np.random.default_rng(0).uniform(-1, 1, (8, 2)), None
    Y = m.predict(X) + np.random.default_rng(1).normal(0, 0.5, (8, 2)) + 3.0
    sigma = np.random.default_rng(2).uniform(0.5, 2.0, (8, 1)) if weighted else None
    _, grads = m.loss_and_grad(X, Y, loss=name, sigma=sigma)
    fd = fd_gradient(m, lambda: m.loss_and_grad(X, Y, loss=name, sigma=sigma)[0])
    assert rel_err(flat_grad(m, grads), fd) <= 1e-6


def regression(N=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (N, 2))
    return X, np.cos(X[:, :1]) + X[:, 1:] ** 2


def test_fit_with_sigma_is_the_weighted_loss():
    X, Y = regression()
    sigma = np.random.default_rng(3).uniform(0.5, 2.0, len(X))
    m = pg.AffineEigenvaluePMM(4, 2, device="cpu", seed=0)
    ref = pg.AffineEigenvaluePMM(4, 2, device="cpu", seed=0)
    h = m.fit(X, Y, epochs=3, batch_size=len(X), sigma=sigma, verbose=False)
    # full batch: the σ-weighted mse equals mse on (Y/σ, pred/σ); its first loss is that of the start
    first = np.mean(((ref.predict(X) - Y) / sigma[:, None]) ** 2)
    np.testing.assert_allclose(h["loss"][0], first, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(X_val, Y_val, sigma_val\)"):
        m.fit(X, Y, epochs=1, sigma=sigma, validation_data=(X, Y), verbose=False)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        m.fit(X, Y, epochs=1, sigma=-sigma, verbose=False)
    h = m.fit(X, Y, epochs=2, sigma=sigma, validation_data=(X, Y, sigma), val_loss="mae", verbose=False)
    assert len(h["val_loss"]) == 2


def test_validation_loss_differs_from_training_loss():
    X, Y = regression()
    m = pg.AffineEigenvaluePMM(4, 2, device="cpu", seed=0)
    h = m.fit(X, Y, epochs=2, batch_size=len(X), validation_data=(X, Y), val_loss="mae", verbose=False)
    np.testing.assert_allclose(h["val_loss"][-1], np.mean(np.abs(m.predict(X) - Y)), rtol=1e-12)
    with pytest.raises(ValueError, match="val_loss must be one of"):
        m.fit(X, Y, epochs=1, validation_data=(X, Y), val_loss="nope", verbose=False)


def test_target_loss_and_callback_stop_training():
    X, Y = regression()
    m = pg.AffineEigenvaluePMM(4, 2, device="cpu", seed=0)
    h = m.fit(X, Y, epochs=200, batch_size=16, lr=2e-2, target_loss=0.2, verbose=False)
    assert h["loss"][-1] <= 0.2 < min(h["loss"][:-1]) and h["stop_reason"] == "target_loss 0.2 reached"
    h = m.fit(X, Y, epochs=50, callback=lambda epoch, hist: epoch == 3, verbose=False)
    assert len(h["loss"]) == 3 and h["stop_reason"] == "callback returned True"

    def stop_at_2(epoch, hist):
        if epoch == 2:
            raise pg.StopTraining("enough")

    h = m.fit(X, Y, epochs=50, callback=stop_at_2, verbose=False)
    assert len(h["loss"]) == 2 and h["stop_reason"] == "callback raised StopTraining: enough"


def test_robust_scaler_alone_and_with_the_model(tmp_path):
    A = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [100.0, 5.0]])
    off, sc = fit_scaler(A, "robust")
    np.testing.assert_allclose(off, [3.0, 5.0])
    np.testing.assert_allclose(sc, [2.0, 1.0])  # Q75 − Q25 = 4 − 2; a constant column keeps 1
    s = Scaler("robust").fit(A)
    np.testing.assert_allclose(s.inverse_transform(s.transform(A)), A)
    m = pg.AffineEigenvaluePMM(3, 2, device="cpu")
    m.extra_state.update(s.state("x"))
    m.save(tmp_path / "m.npz")
    s2 = Scaler.from_state(pg.load(tmp_path / "m.npz").extra_state, "x")
    assert s2.kind == "robust"
    np.testing.assert_array_equal(s2.transform(A), s.transform(A))
    with pytest.raises(ValueError, match="not fitted"):
        Scaler("robust").transform(A)
    with pytest.raises(ValueError, match="kind must be one of"):
        Scaler("iqr")


def test_estimator_robust_scaling_saved(tmp_path):
    pytest.importorskip("sklearn")
    X, Y = regression(80)
    X[0] = 50.0  # an outlier the robust scaler ignores
    est = pg.PMMRegressor(n=4, n_eig=2, epochs=3, input_scaling="robust", target_scaling="robust",
                          device="cpu").fit(X, Y[:, 0])
    np.testing.assert_allclose(est.x_offset_, np.median(X, axis=0))
    est.save(tmp_path / "e.npz")
    again = pg.PMMRegressor.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(again.x_scale_, est.x_scale_)
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
