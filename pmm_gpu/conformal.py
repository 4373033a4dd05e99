"""Split conformal prediction intervals for regression, around any fitted regressor (a PMM model or a
``PMMRegressor``): the conformalized model of the authors' library (pyPMM), in NumPy.

Calibration on n held-out pairs (x_i, y_i) that the model did not train on, per output q:

    s_iq = |y_iq − ŷ_q(x_i)| / u_q(x_i)                 nonconformity scores (u = 1 unless ``scale``)
    q̂_q(α) = the ⌈(n + 1)(1 − α)⌉-th smallest s_iq     (+∞ when that rank exceeds n)
    C_q(x) = [ŷ_q(x) − q̂_q u_q(x),  ŷ_q(x) + q̂_q u_q(x)]

For a new (x, y) exchangeable with the calibration data, P(y_q ∈ C_q(x)) >= 1 − α (finite-sample,
marginal over the calibration draw and the test point; Vovk, Gammerman & Shafer 2005; Lei et al.,
JASA 113, 1094 (2018)), and <= 1 − α + 1/(n + 1) when the scores have no ties. The guarantee is per
output (marginal), not joint over outputs. ``scale`` u(x) > 0 (N,) or (N, k), e.g. a second model's
predicted |residual|, gives normalized (locally adaptive) intervals; it must then be passed to
``calibrate`` and to ``predict_interval`` alike.

The sorted scores are kept in the underlying model's ``extra_state`` (``conformal_scores`` (n, k),
``conformal_normalized``), so ``save`` writes them into the model file and ``load`` restores the
wrapper; α is chosen at prediction time.
"""
from __future__ import annotations

import math

import numpy as np

from .models import load as load_model

SCORES, NORMALIZED = "conformal_scores", "conformal_normalized"


def conformal_quantile(scores, alpha: float):
    """q̂ (k,): the ⌈(n + 1)(1 − α)⌉-th smallest of each column of ``scores`` (n, k); +∞ past n."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    s = np.sort(np.asarray(scores, dtype=np.float64), axis=0)
    rank = math.ceil((len(s) + 1) * (1 - alpha) - 1e-12)  # the 1e-12 absorbs rounding of (n+1)(1−α)
    return np.full(s.shape[1], np.inf) if rank > len(s) else s[rank - 1]


class ConformalRegressor:
    """Prediction intervals with coverage >= 1 − α for a fitted ``regressor`` (module docstring).

    regressor: anything with ``predict(X)`` -> (N,) or (N, k): a pmm_gpu model or a PMMRegressor.
    ``calibrate(X_cal, Y_cal)`` on held-out data, then ``predict_interval(X, alpha)``.
    """

    def __init__(self, regressor):
        if not callable(getattr(regressor, "predict", None)):
            raise TypeError(f"regressor must have a predict(X) method, got {type(regressor).__name__}")
        self.regressor = regressor

    # the object whose extra_state the model file saves: the model itself, or an estimator's model_
    @property
    def _holder(self):
        return getattr(self.regressor, "model_", self.regressor)

    def _predict(self, X) -> np.ndarray:
        pred = np.asarray(self.regressor.predict(X), dtype=np.float64)
        return pred.reshape(len(pred), -1)  # (N, k)

    @staticmethod
    def _scale(scale, shape, name: str = "scale"):
        if scale is None:
            return np.ones(shape)
        u = np.asarray(scale, dtype=np.float64)
        u = u.reshape(len(u), -1) if u.ndim else u
        if u.ndim != 2 or len(u) != shape[0] or u.shape[1] not in (1, shape[1]) or not np.all(u > 0):
            raise ValueError(f"{name} must be positive of shape ({shape[0]},) or {shape}, got {np.shape(scale)}")
        return np.broadcast_to(u, shape)

    def calibrate(self, X_cal, Y_cal, scale=None) -> "ConformalRegressor":
        """Scores s_i = |y_i − ŷ(x_i)| / u(x_i) on held-out data X_cal (n, p), Y_cal (n,) or (n, k); optional
        scale u (n,) or (n, k) > 0. Stored sorted in the model's extra_state (saved with it)."""
        pred = self._predict(X_cal)
        Y = np.asarray(Y_cal, dtype=np.float64).reshape(len(pred), -1) if np.size(Y_cal) == pred.size else None
        if Y is None or not np.all(np.isfinite(Y)):
            raise ValueError(f"Y_cal must be finite with the predictions' shape {pred.shape}, got {np.shape(Y_cal)}")
        scores = np.abs(Y - pred) / self._scale(scale, pred.shape)
        self._holder.extra_state[SCORES] = np.sort(scores, axis=0)
        self._holder.extra_state[NORMALIZED] = np.array(scale is not None)
        return self

    @property
    def scores_(self) -> np.ndarray:
        """The sorted calibration scores (n, k); ValueError before ``calibrate``."""
        st = getattr(self._holder, "extra_state", {})
        if SCORES not in st:
            raise ValueError("not calibrated: call calibrate(X_cal, Y_cal) on held-out data first")
        return np.asarray(st[SCORES])

    def quantile(self, alpha: float = 0.1) -> np.ndarray:
        """q̂(α) (k,) of the calibration scores (``conformal_quantile``)."""
        return conformal_quantile(self.scores_, alpha)

    def predict_interval(self, X, alpha: float = 0.1, scale=None):
        """(prediction, lower, upper), each shaped like ``regressor.predict(X)``: ŷ ∓ q̂(α)·u(x)."""
        q = self.quantile(alpha)
        normalized = bool(self._holder.extra_state[NORMALIZED])
        if normalized != (scale is not None):
            raise ValueError("scale: pass it to predict_interval exactly when calibrate had one "
                             f"(calibrated {'with' if normalized else 'without'} scale)")
        raw = np.asarray(self.regressor.predict(X), dtype=np.float64)
        pred = raw.reshape(len(raw), -1)
        half = q * self._scale(scale, pred.shape)
        return raw, (pred - half).reshape(raw.shape), (pred + half).reshape(raw.shape)

    def coverage(self, X, Y, alpha: float = 0.1, scale=None) -> float:
        """Fraction of the entries of Y (N,) or (N, k) inside their intervals at miscoverage α."""
        _, lo, hi = self.predict_interval(X, alpha, scale)
        Y = np.asarray(Y, dtype=np.float64).reshape(lo.shape)
        return float(np.mean((Y >= lo) & (Y <= hi)))

    def save(self, path):
        """Write the regressor with the calibration scores (its own ``save``: one .npz file)."""
        _ = self.scores_
        self.regressor.save(path)

    @classmethod
    def load(cls, path, loader=None) -> "ConformalRegressor":
        """The wrapper of a file written by ``save``. loader: how to read the regressor back; default
        ``pmm_gpu.load`` (a model); pass ``pmm_gpu.PMMRegressor.load`` for a saved estimator."""
        reg = (loader or load_model)(path)
        holder = getattr(reg, "model_", reg)
        if "estimator" in holder.extra_state and loader is None:
            raise ValueError(f"{str(path)!r} holds an estimator: load it with "
                             "ConformalRegressor.load(path, loader=pmm_gpu.PMMRegressor.load)")
        if SCORES not in holder.extra_state:
            raise ValueError(f"{str(path)!r} holds no conformal calibration (save a calibrated ConformalRegressor)")
        return cls(reg)
