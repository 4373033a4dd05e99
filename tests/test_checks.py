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
