"""Feature and target scalers: A_scaled = (A − offset) / scale, per column, fitted on training data.

    "standard":  offset = mean,  scale = standard deviation
    "minmax":    onto [−1, 1]:  offset = (max + min)/2,  scale = (max − min)/2
    "robust":    offset = median,  scale = Q75 − Q25 (the interquartile range; pyPMM's RobustScaler):
                 insensitive to outliers
    None:        offset 0, scale 1

Columns whose scale is (numerically) zero keep scale 1 (|scale| <= 1e-12·max(1, |offset|)). A leaf
module (NumPy only). ``Scaler`` is the stand-alone object (fit / transform / inverse_transform, and
``state`` / ``from_state`` to keep it in a model file's extra state: ``model.extra_state.update(
sc.state("x"))`` is saved by ``model.save`` and ``Scaler.from_state(pg.load(path).extra_state, "x")``
restores it); the estimators (pmm_gpu/estimators.py) save theirs the same way.
"""
from __future__ import annotations

import numpy as np

SCALINGS = (None, "standard", "minmax", "robust")


def fit_scaler(A, kind):
    """(offset, scale) of ``kind`` (module docstring) for A (N, d): offset (d,), scale (d,)."""
    if kind not in SCALINGS:
        raise ValueError(f"scaling must be one of {list(SCALINGS)}, got {kind!r}")
    A = np.asarray(A, dtype=np.float64)
    if kind is None:
        return np.zeros(A.shape[1]), np.ones(A.shape[1])
    if kind == "standard":
        off, sc = A.mean(axis=0), A.std(axis=0)
    elif kind == "robust":
        q25, off, q75 = np.percentile(A, [25, 50, 75], axis=0)
        sc = q75 - q25
    else:
        lo, hi = A.min(axis=0), A.max(axis=0)
        off, sc = (hi + lo) / 2, (hi - lo) / 2
    return off, np.where(np.abs(sc) > 1e-12 * np.maximum(1, np.abs(off)), sc, 1.0)


class Scaler:
    """Per-column scaler of ``kind`` ("standard", "minmax", "robust" or None): ``fit(A)`` on (N, d),
    then ``transform(A)`` = (A − offset)/scale and ``inverse_transform(Z)`` = Z·scale + offset."""

    def __init__(self, kind="standard"):
        if kind not in SCALINGS:
            raise ValueError(f"kind must be one of {list(SCALINGS)}, got {kind!r}")
        self.kind, self.offset, self.scale = kind, None, None

    def fit(self, A) -> "Scaler":
        A = np.asarray(A, dtype=np.float64)
        if A.ndim != 2 or not len(A) or not np.all(np.isfinite(A)):
            raise ValueError(f"A must be a finite, non-empty (N, d) array, got shape {A.shape}")
        self.offset, self.scale = fit_scaler(A, self.kind)
        return self

    def _check(self, A):
        if self.offset is None:
            raise ValueError("this Scaler is not fitted yet: call fit(A) first")
        A = np.asarray(A, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != len(self.offset):
            raise ValueError(f"expected an (N, {len(self.offset)}) array, got shape {A.shape}")
        return A

    def transform(self, A) -> np.ndarray:
        return (self._check(A) - self.offset) / self.scale

    def inverse_transform(self, Z) -> np.ndarray:
        return self._check(Z) * self.scale + self.offset

    def fit_transform(self, A) -> np.ndarray:
        return self.fit(A).transform(A)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays for a model's extra_state: {prefix_kind, prefix_offset, prefix_scale}."""
        if self.offset is None:
            raise ValueError("this Scaler is not fitted yet: call fit(A) first")
        return {f"{prefix}_kind": np.array(str(self.kind)), f"{prefix}_offset": self.offset,
                f"{prefix}_scale": self.scale}

    @classmethod
    def from_state(cls, state: dict, prefix: str) -> "Scaler":
        """The scaler ``state(prefix)`` stored (e.g. in ``pg.load(path).extra_state``)."""
        if f"{prefix}_offset" not in state:
            raise ValueError(f"no scaler {prefix!r} in this state (keys: {sorted(state)})")
        kind = str(state[f"{prefix}_kind"])
        sc = cls(None if kind == "None" else kind)
        sc.offset, sc.scale = np.asarray(state[f"{prefix}_offset"]), np.asarray(state[f"{prefix}_scale"])
        return sc
