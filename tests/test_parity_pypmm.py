"""Issue 14: low-rank models and models without M_0 give the outputs of the authors' library
``parametricmatrixmodels`` (pyPMM) for the same matrices. Skips when it is not importable (it is not on
PyPI and needs jax < 0.10; profiling/README.md says how to install it for a measurement):

    PYTHONPATH=/path/with/pypmm/and/jax-0.9 python -m pytest tests/test_parity_pypmm.py
"""
from __future__ import annotations

import numpy as np
import pytest

import pmm_gpu as pg

try:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import parametricmatrixmodels as pypmm
    from parametricmatrixmodels import modules as pm
except Exception as e:  # ImportError, or a jax it does not support
    pytestmark = pytest.mark.skip(reason=f"parametricmatrixmodels not importable ({type(e).__name__})")

N, P, R = 5, 3, 2


def _us(m):
    """pmm_gpu's low-rank parameters as pyPMM's (ls (m, r) real, us (m, n, r) complex)."""
    u = m.backend.to_numpy(m.params["primaries_u"])
    return jnp.asarray(m.backend.to_numpy(m.params["primaries_l"])), jnp.asarray(u[..., 0] + 1j * u[..., 1])


def _run(modules, params, X):
    seq = pypmm.SequentialModel(modules)
    seq.compile(jax.random.key(0), (X.shape[1],))
    seq.set_params(params)
    return np.asarray(seq(jnp.asarray(X))).real


def _observable_modules(m, first):
    return [first, pm.Eigenvectors(num_eig=m.n_eig, which=m.which),
            pm.TransitionAmplitudeSum(num_observables=m.n_secondaries, output_size=m.n_outputs, centered=True),
            pm.Bias(real=True, scalar=False)]


def _observable_params(m, first_params):
    return [first_params, (), jnp.asarray(m.secondaries()),
            jnp.asarray(m.backend.to_numpy(m.params["bias"]).reshape(1, -1))]


@pytest.mark.parametrize("constant", [True, False])
def test_lowrank_eigenvalue_pmm_matches_pypmm(constant):
    m = pg.AffineEigenvaluePMM(N, P, n_eig=2, which="SA", rank=R, constant=constant, device="cpu", seed=1)
    X = np.random.default_rng(0).uniform(-1, 1, (11, P))
    lowrank = pm.LowRankAffineHermitianMatrix(matrix_size=N, matrix_rank=R, bias_term=constant)
    ref = _run([lowrank, pm.Eigenvalues(num_eig=2, which="SA")], [_us(m), ()], X)
    np.testing.assert_allclose(m.predict(X), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("constant", [True, False])
def test_lowrank_observable_pmm_matches_pypmm(constant):
    m = pg.AffineObservablePMM(N, P, n_outputs=2, n_eig=2, n_secondaries=2, which="LM", rank=R, constant=constant,
                               device="cpu", seed=2)
    m.params["bias"][...] = [0.3, -0.2]
    X = np.random.default_rng(1).uniform(-1, 1, (11, P))
    lowrank = pm.LowRankAffineHermitianMatrix(matrix_size=N, matrix_rank=R, bias_term=constant)
    ref = _run(_observable_modules(m, lowrank), _observable_params(m, _us(m)), X)
    np.testing.assert_allclose(m.predict(X), ref, rtol=1e-10, atol=1e-12)


def test_eigenvalue_pmm_without_m0_matches_pypmm():
    m = pg.AffineEigenvaluePMM(N, P, n_eig=2, which="LM", constant=False, device="cpu", seed=3)
    X = np.random.default_rng(2).uniform(-1, 1, (11, P))
    ref = pm.AffineEigenvaluePMM(matrix_size=N, num_eig=2, which="LM", bias_term=False, Ms=jnp.asarray(m.matrices()))
    ref.compile(jax.random.key(0), (P,))
    np.testing.assert_allclose(m.predict(X), np.asarray(ref(jnp.asarray(X))).real, rtol=1e-12, atol=1e-12)


def test_observable_pmm_without_m0_matches_pypmm():
    m = pg.AffineObservablePMM(N, P, n_outputs=2, n_eig=2, n_secondaries=1, which="LM", constant=False,
                               device="cpu", seed=4, b=[0.1, 0.4])
    X = np.random.default_rng(3).uniform(-1, 1, (11, P))
    ref = pm.AffineObservablePMM(matrix_size=N, num_eig=2, which="LM", affine_bias_matrix=False, output_size=2,
                                 num_secondaries=1, Ms=jnp.asarray(m.matrices()), Ds=jnp.asarray(m.secondaries()))
    ref.compile(jax.random.key(0), (P,))
    params = ref.get_params()  # its compile does not take the bias from b=: set it as a parameter
    ref.set_params(tuple(params[:-1]) + (jnp.asarray([[0.1, 0.4]]),))
    np.testing.assert_allclose(m.predict(X), np.asarray(ref(jnp.asarray(X))).real, rtol=1e-10, atol=1e-12)


def _pypmm_epoch_losses(model, X, Y, epochs: int, lr: float) -> list[float]:
    """Model.train full batch; the training-set mse at the parameters of every epoch (its trajectory)."""
    snaps = []

    def callback(batch_rng, epoch, p):
        jax.debug.callback(lambda q: snaps.append(q), p)
        return batch_rng, p

    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
    model.train(Xj, Yj, X_val=Xj, Y_val=Yj, lr=lr, batch_size=len(X), epochs=epochs, verbose=False,
                batch_rng=0, callback=callback, early_stopping_patience=10**9)
    structure = jax.tree.structure(model.get_params())
    out = []
    for p in snaps:
        model.set_params(jax.tree.unflatten(structure, jax.tree.leaves(p)))
        out.append(float(jnp.mean(jnp.abs(model(Xj) - Yj) ** 2)))
    return out


@pytest.mark.parametrize("kind", ["eigenvalue", "observable"])
def test_complex_geometry_takes_pypmms_complex_adam_steps(kind):
    """Full batch (so the batch order does not matter): pmm_gpu's Adam with geometry="complex" follows the
    trajectory of pyPMM's complex Adam from the same matrices; geometry="real" does not. pyPMM's trainer
    also advances its Adam step count t (the bias corrections 1 − β^t) by one extra per epoch
    (``increment_epoch`` at every epoch's end); the callback below does the same to pmm_gpu's count."""
    rng = np.random.default_rng(4)
    X = rng.uniform(-1, 1, (64, 2))
    Y = np.sin(2 * X[:, :1]) + 0.5 * X[:, 1:] ** 2
    if kind == "eigenvalue":
        make = lambda: pg.AffineEigenvaluePMM(6, 2, n_eig=1, which="SA", device="cpu", seed=0)
        m = make()
        ref = pm.AffineEigenvaluePMM(matrix_size=6, num_eig=1, which="SA", Ms=jnp.asarray(m.matrices()))
    else:
        make = lambda: pg.AffineObservablePMM(6, 2, n_outputs=1, n_eig=2, bias=False, eta=0.0, device="cpu", seed=0)
        m = make()
        ref = pm.AffineObservablePMM(matrix_size=6, num_eig=2, which="LM", output_size=1, bias_term=False,
                                     Ms=jnp.asarray(m.matrices()), Ds=jnp.asarray(m.secondaries()))
    ref.compile(jax.random.key(0), (2,))
    theirs = _pypmm_epoch_losses(ref, X, Y, 8, 2e-2)
    ours = {}
    for geometry in ("complex", "real"):
        m, losses = make(), []
        def after_epoch(epoch, hist, m=m, losses=losses):
            losses.append(float(np.mean((m.predict(X) - Y) ** 2)))
            m.opt_state["step"] += 1  # pyPMM's extra step count per epoch

        m.fit(X, Y, epochs=8, batch_size=len(X), lr=2e-2, geometry=geometry, restore_best=False, verbose=False,
              callback=after_epoch)
        ours[geometry] = np.array(losses)
    print(kind, "pypmm", np.round(theirs, 6), "complex", np.round(ours["complex"], 6), "real", np.round(ours["real"], 6))
    # agreement to ~1e-7: pyPMM rounds its bias-correction factors to float32 (np.float32(1 − β^t))
    np.testing.assert_allclose(ours["complex"], theirs, rtol=1e-6)
    assert np.abs(ours["real"] - theirs).max() > 1e-4 * np.abs(theirs).max()
