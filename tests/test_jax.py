"""pmm_gpu.jax (experimental): agreement with pmm_gpu's models and functional core, check_grads, jit(grad),
vmap, and pyPMM's full-matrix layout with its gradient convention."""
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install pmm_gpu[jax])")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import pmm_gpu as pg  # noqa: E402
from pmm_gpu import functional  # noqa: E402
from pmm_gpu import jax as pj  # noqa: E402

CASES = [("complex", 0.0), ("complex", 0.3), ("real", 0.0)]


@pytest.fixture(autouse=True)
def x64():
    """float64 in this module's tests only: restore JAX's setting for other test modules."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def data(B=7, p=3, Q=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, p)), rng.normal(size=(B, Q))


def models(field, smoothing):
    kw = dict(field=field, smoothing=smoothing, device="cpu", seed=4)
    return (pg.AffineEigenvaluePMM(5, 3, n_eig=2, which="LM", **kw),
            pg.AffineObservablePMM(5, 3, n_outputs=2, n_eig=2, n_secondaries=2, which="SA", **kw))


def eig_fn(m):
    return lambda X, P: pj.eigenvalue_pmm(X, P, n_eig=m.n_eig, which=m.which, field=m.field, smoothing=m.smoothing)


def obs_fn(m, **kw):
    return lambda X, P, S, b: pj.observable_pmm(X, P, S, b, n_eig=m.n_eig, which=m.which, field=m.field,
                                                smoothing=m.smoothing, **kw)


@pytest.mark.parametrize("field,smoothing", CASES)
def test_matches_pmm_gpu(field, smoothing):
    """Outputs and gradients (mse loss) equal predict / loss_and_grad / functional's X̄ to <= 1e-10 relative."""
    X, Y = data()
    for m in models(field, smoothing):
        if isinstance(m, pg.AffineEigenvaluePMM):
            f, args = eig_fn(m), (X, m.params["primaries"])
            ref = functional.eigenvalue_pmm_forward(X, args[1], n_eig=2, which="LM", field=field, smoothing=smoothing)
            g_ref = functional.eigenvalue_pmm_backward(ref[1], 2 * (ref[0] - Y) / Y.size)
        else:
            f, args = obs_fn(m), (X, m.params["primaries"], m.params["secondaries"], m.params["bias"])
            ref = functional.observable_pmm_forward(*args, n_eig=2, which="SA", field=field, smoothing=smoothing)
            g_ref = functional.observable_pmm_backward(ref[1], 2 * (ref[0] - Y) / Y.size)
        loss = lambda *a: jnp.mean((f(*a) - Y) ** 2)  # noqa: E731
        assert rel(f(*args), m.predict(X)) <= 1e-10
        value, grads = jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)
        ref_loss, ref_grads = m.loss_and_grad(X, Y, "mse")
        assert abs(float(value) - ref_loss) <= 1e-10 * ref_loss
        for name, g in zip(m.params, grads[1:]):
            assert rel(g, ref_grads[name]) <= 1e-10, name
        assert rel(grads[0], g_ref["X"]) <= 1e-10


@pytest.mark.parametrize("field,smoothing", CASES)
def test_check_grads(field, smoothing):
    X, _ = data(B=4)
    e, o = models(field, smoothing)
    check_grads(eig_fn(e), (X, e.params["primaries"]), order=1, modes=["rev"])
    check_grads(obs_fn(o, eta=0.0), (X, o.params["primaries"], o.params["secondaries"], o.params["bias"]),
                order=1, modes=["rev"])


def test_jit_grad_and_vmap_match_eager():
    X, Y = data()
    _, m = models("complex", 0.0)
    args = (X, m.params["primaries"], m.params["secondaries"], None)
    f = obs_fn(m)

    def loss(X, P, S):
        return jnp.sum((f(X, P, S, None) - Y) ** 2)
    eager = jax.grad(loss, argnums=(0, 1, 2))(*args[:3])
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args[:3])
    for a, b in zip(eager, jitted):
        assert rel(a, b) <= 1e-12
    batched = jax.vmap(lambda x: f(x, *args[1:]))(np.stack([X, 2 * X]))
    assert rel(batched[1], f(2 * X, *args[1:])) <= 1e-12


def test_full_matrix_layout_and_gradient_convention():
    """pyPMM's Ms (p+1, n, n) gives the packed layout's outputs; jax.grad w.r.t. complex Ms is conj(M̄), M̄ the
    Hermitian cotangent: dL = Re tr(M̄ᴴ dM) for Hermitian dM, checked by a directional derivative."""
    X, _ = data()
    e, o = models("complex", 0.0)
    Ms = jnp.asarray(e.matrices())
    f_full = lambda Ms: jnp.sum(pj.eigenvalue_pmm(X, Ms, n_eig=2, which="LM") ** 2)  # noqa: E731
    assert rel(pj.eigenvalue_pmm(X, Ms, n_eig=2, which="LM"), e.predict(X)) <= 1e-10
    z = pj.observable_pmm(X, o.matrices(), o.secondaries(), o.params["bias"], n_eig=2, which="SA")
    assert rel(z, o.predict(X)) <= 1e-10
    G = jax.grad(f_full)(Ms)
    Mbar = np.conj(np.asarray(G))
    assert np.allclose(Mbar, np.conj(np.swapaxes(Mbar, 1, 2)), atol=1e-12)  # Hermitian
    rng = np.random.default_rng(5)
    D = rng.normal(size=Ms.shape) + 1j * rng.normal(size=Ms.shape)
    D = D + np.conj(np.swapaxes(D, 1, 2))
    h = 1e-6
    fd = (f_full(Ms + h * D) - f_full(Ms - h * D)) / (2 * h)
    assert abs(float(fd) - np.real(np.sum(np.conj(Mbar) * D))) <= 1e-6 * abs(float(fd))


def test_errors_name_the_argument():
    X, _ = data()
    with pytest.raises(ValueError, match="primaries"):
        pj.eigenvalue_pmm(X, np.zeros((4, 5, 6, 7)), n_eig=1)
    with pytest.raises(ValueError, match="n_eig"):
        pj.eigenvalue_pmm(X, np.zeros((4, 25)), n_eig=9)
    with pytest.raises(ValueError, match="eigh_solver"):
        pj.eigenvalue_pmm(X, np.zeros((4, 25)), n_eig=1, eigh_solver="magma")
    with pytest.raises(ValueError, match="bias"):
        pj.observable_pmm(X, np.zeros((4, 25)), np.zeros((2, 1, 25)), np.zeros(3), n_eig=2)


def test_full_matrix_layout_real_field_gives_the_symmetric_cotangent():
    """Real Ms (p+1, n, n), field "real": jax.grad is M̄ = Σ_b x_b sym(Ā_b) itself (symmetric), dL = Σ M̄·dM."""
    X, _ = data()
    m = pg.AffineEigenvaluePMM(4, 3, n_eig=2, which="SA", field="real", device="cpu", seed=2)
    f = lambda Ms: jnp.sum(pj.eigenvalue_pmm(X, Ms, n_eig=2, which="SA", field="real") ** 3)  # noqa: E731
    Ms = jnp.asarray(m.matrices())
    assert rel(pj.eigenvalue_pmm(X, Ms, n_eig=2, which="SA", field="real"), m.predict(X)) <= 1e-10
    G = np.asarray(jax.grad(f)(Ms))
    assert np.allclose(G, np.swapaxes(G, 1, 2), atol=1e-12)
    D = np.random.default_rng(1).normal(size=Ms.shape)
    D = D + np.swapaxes(D, 1, 2)
    h = 1e-6
    fd = (f(Ms + h * D) - f(Ms - h * D)) / (2 * h)
    assert abs(float(fd) - np.sum(G * D)) <= 1e-6 * abs(float(fd))
