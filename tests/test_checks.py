"""Bad input raises a clear ValueError/TypeError naming the argument."""
import numpy as np
import pytest

import pmm_gpu as pg


@pytest.mark.parametrize("kw,exc,match", [
    (dict(n=0), ValueError, "n must be >= 1"),
    (dict(n=2.5), TypeError, "n must be an int"),
    (dict(n_features=-1), ValueError, "n_features must be >= 1"),
    (dict(which="XX"), ValueError, "which must be one of"),
    (dict(field="quaternion"), ValueError, "field must be one of"),
    (dict(dtype="float16"), ValueError, "dtype must be one of"),
    (dict(dtype="nonsense"), ValueError, "dtype must be one of"),
    (dict(n_eig=5), ValueError, "n_eig must be <= n"),
    (dict(field="real", smoothing=0.1), ValueError, "smoothing needs field='complex'"),
    (dict(smoothing=float("nan")), ValueError, "smoothing must be a finite number"),
    (dict(device="gpu0"), ValueError, "device must be one of"),
])
def test_constructor_errors(kw, exc, match):
    args = dict(n=4, n_features=2, device="cpu") | kw
    with pytest.raises(exc, match=match):
        pg.AffineEigenvaluePMM(**args)


M = pg.AffineEigenvaluePMM(n=4, n_features=2, n_eig=2, device="cpu")
X, Y = np.ones((5, 2)), np.ones((5, 2))


@pytest.mark.parametrize("x,match", [
    (np.ones((5, 3)), r"X must have shape \(n_samples, 2\), got \(5, 3\)"),
    (np.ones(5), "got 1-D shape"),
    (np.ones((5, 2, 1)), "X must have 1 or 2 dimensions"),
    (np.ones((0, 2)), "X is empty"),
    (np.array([[1.0, np.nan]] + [[1.0, 2.0]] * 4), "X contains 1 NaN/inf"),
    (np.array([[1.0, np.inf]] * 5), "X contains 5 NaN/inf"),
    (np.array([["a", "b"]] * 5), "X must hold real numbers"),
    (np.ones((5, 2), complex), "X must be real"),
])
def test_bad_features(x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        M.predict(x)
    with pytest.raises((ValueError, TypeError), match=match):
        M.loss_and_grad(x, Y)


@pytest.mark.parametrize("y,match", [
    (np.ones((4, 2)), "Y has 4 samples but X has 5"),
    (np.ones((5, 3)), r"Y must have shape \(n_samples, 2\)"),
    (np.full((5, 2), np.nan), "Y contains 10 NaN/inf"),
])
def test_bad_targets(y, match):
    with pytest.raises(ValueError, match=match):
        M.loss_and_grad(X, y)
    with pytest.raises(ValueError, match=match):
        M.fit(X, y, epochs=1, verbose=False)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(batch_size=1.5), TypeError, "batch_size must be an int"),
    (dict(lr=float("inf")), ValueError, "lr must be a finite number"),
    (dict(schedule="step"), ValueError, "schedule must be one of"),
    (dict(validation_data=np.ones((2, 2))), ValueError, "validation_data must be a pair"),
    (dict(validation_data=(np.ones((2, 3)), np.ones((2, 2)))), ValueError, "validation X must have shape"),
    (dict(patience=0), ValueError, "patience must be >= 1"),
])
def test_bad_fit_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        M.fit(X, Y, verbose=False, **({"epochs": 1} | kw))


# --- issue 11: the dtype cast, overflow in predict, defaults that depend on x, argument checks --------
def test_finiteness_is_checked_after_the_cast():
    m32 = pg.AffineEigenvaluePMM(n=4, n_features=2, n_eig=2, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match=r"X has 1 value\(s\) beyond the range of float32"):
        m32.predict(np.array([[1e39, 0.0]]))
    with pytest.raises(ValueError, match=r"Y has 2 value\(s\) beyond the range of float32"):
        m32.fit(np.ones((1, 2)), np.array([[1e39, -1e39]]), epochs=1, verbose=False)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_inputs_raise_instead_of_returning_inf():
    m = pg.AffineEigenvaluePMM(n=2, n_features=1, device="cpu", field="real")
    m.set_matrices(primaries=np.array([np.zeros((2, 2)), np.diag([-2.0, 1.0])]))
    for x in (1e308, -1e308):
        with pytest.raises(ValueError, match=r"predict: .* finite X \(\|X\| up to 1e\+308"):
            m.predict(np.array([[0.5], [x]]))
    with pytest.raises(ValueError, match="loss_and_grad: non-finite loss or gradient"):
        m.loss_and_grad(np.array([[1e308]]), np.array([[0.0]]))
    assert np.isfinite(m.predict(np.array([[1e300]]))).all()  # large but representable: fine


def test_observable_default_n_eig_depends_on_the_input():
    X = np.linspace(-1, 1, 7)[:, None]
    for n in (2, 3, 4, 6):
        m = pg.AffineObservablePMM(n=n, n_features=1, device="cpu", seed=0)
        assert m.n_eig == min(4, n - 1) and np.ptp(m.predict(X)) > 1e-6
    with pytest.raises(ValueError, match="n must be >= 2 for AffineObservablePMM"):
        pg.AffineObservablePMM(n=1, n_features=1, device="cpu")


def _nan_loss(pred, target):
    d = pred - target
    return (d * d).mean(), (2.0 / d.size) * d[:, :1]  # wrong shape: one column of two


@pytest.mark.parametrize("kw,exc,match", [
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be a finite number >= 0.0 and < 1.0, got 1.0"),
    (dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\] must be"),
    (dict(betas=(0.9,)), ValueError, r"betas must be a pair \(beta1, beta2\), got 1 value"),
    (dict(betas=(0.9, 0.99, 0.5)), ValueError, "betas must be a pair"),
    (dict(betas=0.9), TypeError, "betas must be a pair"),
    (dict(eps=0.0), ValueError, "eps must be a finite number > 0, got 0.0"),
    (dict(eps=float("nan")), ValueError, "eps must be a finite number > 0"),
    (dict(loss="huber", huber_delta=0.0), ValueError, "huber_delta must be a finite number > 0"),
    (dict(min_delta=float("nan")), ValueError, "min_delta must be a finite number"),
    (dict(clip_norm=0.0), ValueError, "clip_norm must be a finite number > 0"),
    (dict(schedule=lambda t, T: "fast"), TypeError, r"schedule\(0, 1\) must be a real number, got str 'fast'"),
    (dict(schedule=lambda t, T: float("nan")), ValueError, r"schedule\(0, 1\) must be a finite number >= 0"),
    (dict(seed=-1), ValueError, "seed must be None or an int >= 0, got -1"),
    (dict(seed="abc"), TypeError, "seed must be None or an int >= 0, got str"),
    (dict(seed=1.5), TypeError, "seed must be None or an int >= 0"),
    (dict(loss=_nan_loss), ValueError, r"the custom loss '_nan_loss' returned a gradient of shape \(5, 1\); "
                                        r"expected pred's shape \(5, 2\)"),
])
def test_bad_optimizer_and_loop_arguments(kw, exc, match):
    theta = M.theta.copy()
    with pytest.raises(exc, match=match):
        M.fit(X, Y, verbose=False, **({"epochs": 1} | kw))
    np.testing.assert_array_equal(M.theta, theta)  # refused before (or undone after) any step


def test_bad_constructor_seed_and_empty_columns():
    with pytest.raises(ValueError, match="seed must be None or an int >= 0, got -3"):
        pg.AffineEigenvaluePMM(n=3, n_features=1, seed=-3, device="cpu")
    with pytest.raises(ValueError, match=r"X has no columns \(shape \(5, 0\)\)"):
        M.predict(np.ones((5, 0)))
