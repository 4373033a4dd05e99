"""Per-sample Jacobians of a PMM's outputs, from the functional backward with unit output cotangents.

    grad_input:   J_bqi = ∂y_bq/∂x_bi      (B, Q, p)   one forward, Q backwards with ȳ = e_q on every row
    grad_params:  J_bqj = ∂y_bq/∂θ_j       (B, Q, N)   per sample: one forward, Q backwards with ȳ = e_q

Every output y_b depends on its own x_b only, so a cotangent e_q on every row gives each row's input
gradient at once (X̄_bi = Re tr(Ā_bᴴ M_i), functional.py). The parameter gradient of a backward is a sum
over its rows, so ``grad_params`` runs one sample at a time: B·Q backward passes of one row each (its
cost grows like B·Q; for a few hundred samples that is seconds on the CPU). θ is the model's flat
parameter buffer (``model.theta``, views ``model.params``); N = model.n_params.
"""
from __future__ import annotations

import numpy as np

from .. import checks


def _unit_cotangents(model, out, q: int):
    cot = model.backend.xp.zeros_like(out)
    cot[:, q] = 1
    return cot


def grad_input(model, X, batch_size: int = 4096) -> np.ndarray:
    """∂y_bq/∂x_bi for X (B, n_features): NumPy (B, n_outputs, n_features), in chunks of batch_size rows."""
    X = checks.features(X, model.n_features, model.real_dtype)
    batch_size = checks.positive_int("batch_size", batch_size)
    J = np.empty((len(X), model.n_outputs, model.n_features), dtype=model.real_dtype)
    for s in range(0, len(X), batch_size):
        out, cache = model.forward(model.backend.asarray(X[s:s + batch_size]), need_grad=True)
        for q in range(model.n_outputs):
            g = model._backward_fn(cache, _unit_cotangents(model, out, q), input_grad=True)["X"]
            J[s:s + batch_size, q] = model.backend.to_numpy(g)
    return J


def grad_params(model, X, flat: bool = False):
    """∂y_bq/∂θ for X (B, n_features): a dict keyed like ``model.params`` of NumPy arrays
    (B, n_outputs, *shape), or with flat=True one array (B, n_outputs, n_params) in the order of
    ``model.theta``."""
    X = checks.features(X, model.n_features, model.real_dtype)
    J = np.zeros((len(X), model.n_outputs, model.n_params), dtype=model.real_dtype)
    for b in range(len(X)):
        out, cache = model.forward(model.backend.asarray(X[b:b + 1]), need_grad=True)
        for q in range(model.n_outputs):
            views = model._views(J[b, q])
            for name, g in model._backward_fn(cache, _unit_cotangents(model, out, q), input_grad=False).items():
                views[name][...] = model.backend.to_numpy(g)
    if flat:
        return J
    out, off = {}, 0
    for name, view in model.params.items():
        out[name] = J[:, :, off:off + view.size].reshape(J.shape[:2] + view.shape)
        off += view.size
    return out
