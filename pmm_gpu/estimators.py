"""scikit-learn-style estimators around the AO-PMM: ``PMMRegressor`` and ``PMMClassifier``.

scikit-learn is optional. When it is importable the estimators inherit from
``sklearn.base.BaseEstimator`` and its mixins (so ``clone``, ``cross_val_score``, ``Pipeline``, tags,
HTML repr and ``check_estimator`` see ordinary estimators) and validate inputs with sklearn's
``validate_data``. Without it, a small stand-in base class gives ``get_params``/``set_params`` by
introspecting ``__init__`` (the sklearn convention: every constructor argument is stored unchanged
under its own name, nothing is validated in ``__init__``), ``score``, and an equivalent input check.
``pmm_gpu`` itself loads this module lazily, so ``import pmm_gpu`` never imports scikit-learn.

Both estimators scale inputs before the model sees them (``input_scaling``: "standard" = zero mean,
unit variance per feature; "minmax" = each feature onto [−1, 1]; "robust" = median and interquartile
range, pmm_gpu/scaling.py; None = unchanged); the regressor
also scales targets (``target_scaling``, same choices) and undoes it in ``predict``. The scaling is
fitted on the training data, kept in fitted attributes and saved with the model (``save``/``load``:
the model file's extra state holds the scalers, the classes and the estimator's parameters).
Fitted attributes: ``model_`` (the AffineObservablePMM), ``n_features_in_``, ``history_``,
``x_offset_``/``x_scale_`` (and ``y_offset_``/``y_scale_``, ``n_outputs_`` for the regressor,
``classes_`` for the classifier).
"""
from __future__ import annotations

import inspect
import json
import warnings

import numpy as np

from .io import to_json  # json.dumps that takes NumPy scalars (random_state=np.int64(0))
from .models import AffineObservablePMM, load
from .scaling import SCALINGS, fit_scaler  # noqa: F401  (fit_scaler: the estimators' scaler, pmm_gpu/scaling.py)

try:  # optional dependency: only base classes and validation helpers
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import ClassifierMixin as _ClassifierMixin
    from sklearn.base import RegressorMixin as _RegressorMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import validate_data

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised by the no-sklearn test through the fallbacks below
    HAVE_SKLEARN = False



# --- stand-ins when scikit-learn is absent ---------------------------------------------------------
class _FallbackBase:
    """get_params/set_params by introspecting __init__, as sklearn.base.BaseEstimator does."""

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for estimator {type(self).__name__}; valid: {valid}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"


class _FallbackRegressorMixin:
    def score(self, X, y):
        """R² of predict(X) against y (uniform average over outputs)."""
        y = np.asarray(y, dtype=float)
        p = np.asarray(self.predict(X), dtype=float).reshape(y.shape)
        ss_res = ((y - p) ** 2).sum(axis=0)
        ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        return float(np.mean(1 - ss_res / np.where(ss_tot > 0, ss_tot, 1)))


class _FallbackClassifierMixin:
    def score(self, X, y):
        """Mean accuracy of predict(X) against y."""
        return float(np.mean(self.predict(X) == np.asarray(y).reshape(-1)))


if not HAVE_SKLEARN:
    class NotFittedError(ValueError, AttributeError):
        """Raised by predict before fit (same bases as sklearn's)."""

    _Base, _RegressorMixin, _ClassifierMixin = _FallbackBase, _FallbackRegressorMixin, _FallbackClassifierMixin


def _check_X_plain(est, X, reset: bool) -> np.ndarray:
    """Input check without sklearn: 2-D, real, finite, non-empty float64; n_features_in_ consistency."""
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        raise TypeError(f"{type(est).__name__} does not accept sparse input; pass a dense array (X.toarray())")
    X = np.asarray(X)
    if np.iscomplexobj(X):
        raise ValueError("Complex data not supported")
    X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(f"Expected 2D array, got {X.ndim}D array instead; reshape your data "
                         "with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"Found array with shape {X.shape}; a minimum of 1 sample and 1 feature is required")
    if not np.all(np.isfinite(X)):
        raise ValueError("Input X contains NaN or infinity")
    if reset:
        est.n_features_in_ = X.shape[1]
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                         f"{est.n_features_in_} features as input")
    return X


# The constructor arguments, listed once: those passed on to AffineObservablePMM (random_state as its
# seed), then the training and preprocessing ones. Each estimator's __init__ takes exactly these
# keywords (plus its own) with these defaults and stores them unchanged (the sklearn convention).
MODEL_ARGS = dict(n=6, n_eig=None, n_secondaries=1, which="LM", form="transition", centered=True, bias=True,
                  eta=1e-4, field="complex", init_scale=1.0, dtype="float64", device="auto")
COMMON_ARGS = dict(**MODEL_ARGS, epochs=200, batch_size=32, lr=0.01, schedule="cosine", validation_fraction=0.0,
                   patience=None, random_state=0, verbose=False, predict_batch_size=65536, input_scaling="standard")


def _keyword_init(defaults: dict):
    """An ``__init__(self, *, name=default, ...)`` that stores every argument under its own name; its
    signature lists the arguments, so sklearn's get_params/clone introspect it as usual."""
    def __init__(self, **params):
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {unknown}; "
                            f"valid: {sorted(defaults)}")
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    kw = inspect.Parameter.KEYWORD_ONLY
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, kw, default=value) for name, value in defaults.items()])
    return __init__


class _PMMEstimator(_Base):
    """Shared fit/save/load logic; the subclasses define the targets and the outputs."""

    _loss: str

    def _model_params(self) -> dict:
        return {**{k: getattr(self, k) for k in MODEL_ARGS}, "seed": self.random_state}

    def _validate_X(self, X, reset: bool):
        if HAVE_SKLEARN:
            return validate_data(self, X, reset=reset, dtype=np.float64)
        return _check_X_plain(self, X, reset)

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    def _fit_model(self, Xs, Ys, n_outputs: int):
        """Build and train the AO-PMM on scaled inputs Xs (N, p) and model targets Ys."""
        self.x_offset_, self.x_scale_ = self._x_scaler
        self.model_ = AffineObservablePMM(n_features=Xs.shape[1], n_outputs=n_outputs, **self._model_params())
        fit_kw = dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, loss=self._loss,
                      schedule=self.schedule, seed=self.random_state, verbose=self.verbose)
        if self.validation_fraction:
            if not 0 < self.validation_fraction < 1:
                raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
            perm = np.random.default_rng(self.random_state).permutation(len(Xs))
            n_val = max(1, int(round(self.validation_fraction * len(Xs))))
            if n_val >= len(Xs):
                raise ValueError(f"validation_fraction={self.validation_fraction} leaves no training samples")
            val, tr = perm[:n_val], perm[n_val:]
            fit_kw.update(validation_data=(Xs[val], Ys[val]), patience=self.patience)
            Xs, Ys = Xs[tr], Ys[tr]
        elif self.patience is not None:
            fit_kw["patience"] = self.patience
        self.history_ = self.model_.fit(Xs, Ys, **fit_kw)
        return self

    def _scaled_X(self, X):
        self._check_fitted()
        X = self._validate_X(X, reset=False)
        return (X - self.x_offset_) / self.x_scale_

    def _outputs(self, X):
        Xs = self._scaled_X(X)  # checks fitted-ness first
        return self.model_.predict(Xs, batch_size=self.predict_batch_size)

    # --- persistence -------------------------------------------------------------------------------
    def _state(self) -> dict:
        """Fitted attributes as arrays (saved in the model file's extra state)."""
        st = {"estimator": np.array(to_json({"class": type(self).__name__, "params": self.get_params()})),
              "n_features_in": np.array(self.n_features_in_), "x_offset": self.x_offset_, "x_scale": self.x_scale_}
        return st

    def _set_state(self, st: dict):
        self.n_features_in_ = int(st["n_features_in"])
        self.x_offset_, self.x_scale_ = np.asarray(st["x_offset"]), np.asarray(st["x_scale"])

    def save(self, path):
        """Write the fitted model with the scalers, classes and estimator parameters (one .npz file)."""
        self._check_fitted()
        self.model_.extra_state = {**self.model_.extra_state, **self._state()}  # keeps e.g. conformal scores
        self.model_.save(path)

    @classmethod
    def load(cls, path, device: str | None = None):
        """Rebuild a fitted estimator saved with ``save``."""
        model = load(path, device=device)
        if "estimator" not in getattr(model, "extra_state", {}):
            raise ValueError(f"{str(path)!r} holds a bare model, not a saved {cls.__name__}")
        info = json.loads(str(model.extra_state["estimator"]))
        if info["class"] != cls.__name__:
            raise ValueError(f"{str(path)!r} holds a {info['class']}, not a {cls.__name__}")
        est = cls(**info["params"])
        est._set_state(model.extra_state)
        est.model_ = model
        return est

    def __getstate__(self):
        """Picklable state: the model travels as config + parameter buffer + extra state."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        if "model_" in state:
            m = state.pop("model_")
            state["_model_blob"] = (m.get_config(), m.backend.to_numpy(m.theta).copy(), self._state())
        return state

    def __setstate__(self, state):
        state = dict(state)
        blob = state.pop("_model_blob", None)
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)
        if blob is not None:
            config, flat, extra = blob
            self.model_ = AffineObservablePMM(**config)
            self.model_.theta[...] = self.model_.backend.asarray(flat, self.model_.real_dtype)
            self.model_.extra_state = extra


_COMMON_DOC = """
    Model: n (matrix size), n_eig (r; None = min(4, n − 1), n >= 2), n_secondaries, which, form, centered, bias,
    eta, field, init_scale, dtype, device — as for ``AffineObservablePMM``.
    Training (Adam, ``pmm_gpu.train.fit``): epochs, batch_size, lr, schedule ("cosine" or "constant"),
    validation_fraction (a random share of the training data held out for early stopping; 0 = none),
    patience (early-stopping patience in epochs; None = off), random_state (initialization, shuffling
    and the validation split), verbose. predict_batch_size: chunk size of inference.
    input_scaling: "standard", "minmax", "robust" or None (see the module docstring).
"""


class PMMRegressor(_RegressorMixin, _PMMEstimator):
    __doc__ = """AO-PMM regressor: one output per target column, MSE (or ``loss``) on scaled targets.
    """ + _COMMON_DOC + """    loss: "mse", "mae" or "huber"; target_scaling: "standard", "minmax", "robust" or None.
    """

    __init__ = _keyword_init({**COMMON_ARGS, "target_scaling": "standard", "loss": "mse"})

    @property
    def _loss(self):
        return self.loss

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Fit on X (N, p) and y (N,) or (N, k); returns self."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if HAVE_SKLEARN:
            X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        else:
            X = _check_X_plain(self, X, reset=True)
            y = np.asarray(y, dtype=np.float64)
            if y.ndim not in (1, 2) or len(y) != len(X) or not np.all(np.isfinite(y)):
                raise ValueError(f"y must be finite of shape ({len(X)},) or ({len(X)}, k); got shape {y.shape}")
        self._y_ndim = y.ndim
        Y = y.reshape(len(y), -1)
        self.n_outputs_ = Y.shape[1]
        self._x_scaler = fit_scaler(X, self.input_scaling)
        self.y_offset_, self.y_scale_ = fit_scaler(Y, self.target_scaling)
        Xs = (X - self._x_scaler[0]) / self._x_scaler[1]
        return self._fit_model(Xs, (Y - self.y_offset_) / self.y_scale_, self.n_outputs_)

    def predict(self, X):
        """Predictions (N,) for a 1-D training target, else (N, k), in the original target units."""
        Y = self._outputs(X)
        Y = Y * self.y_scale_ + self.y_offset_
        return Y[:, 0] if getattr(self, "_y_ndim", 1) == 1 and Y.shape[1] == 1 else Y

    def _state(self):
        return {**super()._state(), "y_offset": self.y_offset_, "y_scale": self.y_scale_,
                "y_ndim": np.array(getattr(self, "_y_ndim", 1))}

    def _set_state(self, st):
        super()._set_state(st)
        self.y_offset_, self.y_scale_ = np.asarray(st["y_offset"]), np.asarray(st["y_scale"])
        self.n_outputs_, self._y_ndim = len(self.y_offset_), int(st["y_ndim"])


class PMMClassifier(_ClassifierMixin, _PMMEstimator):
    __doc__ = """AO-PMM classifier: one logit per class (z_q of the AO-PMM), softmax cross-entropy.
    """ + _COMMON_DOC

    _loss = "cross_entropy"

    __init__ = _keyword_init(COMMON_ARGS)

    def fit(self, X, y):
        """Fit on X (N, p) and class labels y (N,) of any hashable type; returns self."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if HAVE_SKLEARN:
            X, y = validate_data(self, X, y, dtype=np.float64)
            check_classification_targets(y)
        else:
            X = _check_X_plain(self, X, reset=True)
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                warnings.warn("a column-vector y was passed when a 1d array was expected", UserWarning)
                y = y[:, 0]
            if y.ndim != 1 or len(y) != len(X):
                raise ValueError(f"y must be 1-D class labels with {len(X)} entries, got shape {y.shape}")
            if y.dtype.kind == "f" and not np.all(y == np.round(y)):
                raise ValueError("Unknown label type: continuous targets; a classifier needs class labels")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; got 1 class "
                             f"({self.classes_[0]!r})")
        self._x_scaler = fit_scaler(X, self.input_scaling)
        Xs = (X - self._x_scaler[0]) / self._x_scaler[1]
        return self._fit_model(Xs, codes.astype(np.int64), len(self.classes_))

    def predict_proba(self, X):
        """Class probabilities softmax(z) (N, n_classes), columns in the order of ``classes_``."""
        z = self._outputs(X)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Most probable class per sample, as labels from ``classes_``."""
        z = self._outputs(X)
        return self.classes_[np.argmax(z, axis=1)]

    def _state(self):
        classes = self.classes_ if self.classes_.dtype != object else self.classes_.astype(str)
        return {**super()._state(), "classes": classes}

    def _set_state(self, st):
        super()._set_state(st)
        self.classes_ = np.asarray(st["classes"])
