"""AO-PMM: outputs against an independent NumPy evaluation with explicit loops, reverse mode against
finite differences (forms, centering, bias, fields, which, r, outputs/secondaries, losses), and the
behaviour of the Lorentzian broadening η at exact and near degeneracies."""
import numpy as np
import pytest

import pmm_gpu as pg
from fd import fd_gradient, flat_grad, rel_err
from pmm_gpu.ops.assemble import hermitian_pack

LOSSES = ["mse", "mae", "huber", "cross_entropy"]


def hand_assembled(m, X):
    Ms = m.matrices()
    return np.stack([Ms[0] + np.tensordot(x, Ms[1:], axes=1) for x in X])


def reference_indices(w, r, which):
    """Selected eigenvalue indices of one ascending spectrum w, by Python's sorted (independent)."""
    key = (lambda i: w[i]) if which[1] == "A" else (lambda i: abs(w[i]))
    order = sorted(range(len(w)), key=key)
    return order[:r] if which[0] == "S" else order[len(w) - r:]


def reference_outputs(m, X):
    """z_q = b_q + Σ_m (Σ_{i,j∈S} |v_iᴴ D v_j|² or Σ_{i∈S} v_iᴴ D v_i) − ½‖D‖₂², by explicit loops."""
    D = m.secondaries()
    b = np.asarray(m.params["bias"]) if m.bias else np.zeros(m.n_outputs)
    out = np.zeros((len(X), m.n_outputs))
    for s, M in enumerate(hand_assembled(m, X)):
        w, V = np.linalg.eigh(M)
        S = reference_indices(w, m.n_eig, m.which)
        for q in range(m.n_outputs):
            z = b[q]
            for k in range(m.n_secondaries):
                Dk = D[q, k]
                if m.form == "transition":
                    z += sum(abs(np.vdot(V[:, i], Dk @ V[:, j])) ** 2 for i in S for j in S)
                else:
                    z += sum(np.vdot(V[:, i], Dk @ V[:, i]).real for i in S)
                if m.centered:
                    z -= 0.5 * np.max(np.abs(np.linalg.eigvalsh(Dk))) ** 2
            out[s, q] = z
    return out


def make(field="complex", form="transition", which="LM", r=2, centered=True, bias=True, Q=3, l=2,
         n=5, p=2, eta=0.0, seed=4, **kw):
    m = pg.AffineObservablePMM(n=n, n_features=p, n_outputs=Q, n_eig=r, n_secondaries=l, which=which,
                               form=form, centered=centered, bias=bias, field=field, device="cpu",
                               seed=seed, eta=eta, **kw)
    if bias:  # a non-zero bias so its contribution is visible
        m.params["bias"][...] = np.random.default_rng(seed + 1).normal(size=Q)
    return m


def targets_for(m, X, loss, rng):
    if loss == "cross_entropy":
        return rng.integers(0, m.n_outputs, size=len(X))
    # targets away from the outputs: no |d| = 0 or δ kinks of mae/huber near the evaluation point
    return m.predict(X) + rng.choice([-1, 1], size=(len(X), m.n_outputs)) * (2 + rng.random((len(X), m.n_outputs)))


def check_fd(m, loss="mse", B=6, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, m.n_features))
    Y = targets_for(m, X, loss, rng)
    _, grads = m.loss_and_grad(X, Y, loss=loss, huber_delta=0.7)
    assert set(grads) == set(m.params)
    fd = fd_gradient(m, lambda: m.loss_and_grad(X, Y, loss=loss, huber_delta=0.7)[0])
    err = rel_err(flat_grad(m, grads), fd)
    assert err <= 1e-6, err
    return err


# --- forward -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("form", ["transition", "expectation"])
@pytest.mark.parametrize("which,r,centered,bias", [("SA", 1, True, True), ("LA", 3, False, True),
                                                    ("SM", 2, True, False), ("LM", 4, False, False)])
def test_outputs_equal_loop_reference(field, form, which, r, centered, bias):
    m = make(field, form, which, r, centered, bias, n=6, p=3)
    X = np.random.default_rng(2).normal(size=(9, 3))
    expected = reference_outputs(m, X)
    got = m.predict(X)
    assert got.shape == (9, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))


def test_api_shapes_and_defaults():
    m = pg.AffineObservablePMM(n=6, n_features=2, device="cpu")
    assert (m.n_eig, m.n_secondaries, m.which, m.form, m.centered, m.bias, m.n_outputs) == \
        (4, 1, "LM", "transition", True, True, 1)
    assert m.eta == 1e-4
    assert pg.AffineObservablePMM(n=3, n_features=1, device="cpu").n_eig == 2  # min(4, n - 1): depends on x
    with pytest.warns(UserWarning, match="do not depend on x"):
        assert pg.AffineObservablePMM(n=3, n_eig=3, n_features=1, device="cpu").n_eig == 3
    m = pg.AffineObservablePMM(n=4, n_eig=2, n_features=2, n_outputs=3, n_secondaries=2, field="real", device="cpu")
    assert m.matrices().shape == (3, 4, 4)
    D = m.secondaries()
    assert D.shape == (3, 2, 4, 4) and np.array_equal(D, D.swapaxes(-1, -2))
    assert m.params["bias"].shape == (3,) and m.params["secondaries"].shape == (3, 2, 10)
    assert m.n_params == 3 * 10 + 6 * 10 + 3
    assert "bias" not in pg.AffineObservablePMM(n=4, n_eig=2, n_features=2, bias=False, device="cpu").params
    Dc = pg.AffineObservablePMM(n=4, n_eig=2, n_features=1, n_outputs=2, device="cpu").secondaries()
    assert np.allclose(Dc, np.conj(Dc.swapaxes(-1, -2)), atol=0) and np.iscomplexobj(Dc)
    with pytest.raises(ValueError, match="form"):
        pg.AffineObservablePMM(n=4, n_eig=2, n_features=1, form="bogus", device="cpu")
    with pytest.raises(ValueError, match="n_eig"):
        pg.AffineObservablePMM(n=4, n_features=1, n_eig=5, device="cpu")
    with pytest.raises(ValueError, match="eta"):
        pg.AffineObservablePMM(n=4, n_eig=2, n_features=1, eta=-1.0, device="cpu")


def test_initial_outputs_are_order_one():
    m = pg.AffineObservablePMM(n=8, n_features=4, n_outputs=10, device="cpu", seed=0)
    z = m.predict(np.random.default_rng(0).normal(size=(200, 4)))
    assert 0.1 < np.abs(z).mean() < 10 and z.std() > 0.05


def test_chunked_predict_matches_whole_batch():
    m = make(n=4, p=2)
    X = np.random.default_rng(0).normal(size=(50, 2))
    np.testing.assert_allclose(m.predict(X, batch_size=7), m.predict(X), rtol=0, atol=1e-13)


def test_float32_close_to_float64():
    a, b = make(seed=9), make(seed=9, dtype="float32")
    X = np.random.default_rng(0).normal(size=(8, 2))
    za, zb = a.predict(X), b.predict(X)
    assert zb.dtype == np.float32
    np.testing.assert_allclose(zb, za, atol=2e-5 * max(1, np.abs(za).max()))


def test_save_load_roundtrip(tmp_path):
    m = make(field="real", form="expectation", which="SA", r=1)
    m.extra_state = {"mean": np.arange(3.0)}
    X = np.random.default_rng(0).normal(size=(5, 2))
    m.fit(X, np.zeros((5, 3)), epochs=2, verbose=False)
    m.save(tmp_path / "m.npz")
    m2 = pg.load(tmp_path / "m.npz", device="cpu")
    assert type(m2) is pg.AffineObservablePMM and m2.get_config() == {**m.get_config(), "device": "cpu"}
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    np.testing.assert_array_equal(m2.extra_state["mean"], np.arange(3.0))
    assert int(m2.opt_state["step"]) == 2


def test_fit_classifies_two_moons_like_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)  # XOR: not linearly separable
    m = pg.AffineObservablePMM(n=4, n_features=2, n_outputs=2, n_eig=2, device="cpu", seed=0)
    m.fit(X, y, loss="cross_entropy", epochs=60, batch_size=32, lr=0.05, verbose=False)
    assert (m.predict(X).argmax(1) == y).mean() > 0.9


# --- reverse mode against finite differences --------------------------------------------------------
@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("form", ["transition", "expectation"])
@pytest.mark.parametrize("which", ["SA", "LA", "SM", "LM"])
@pytest.mark.parametrize("r", [1, 3])
def test_fd_which_field_form_r(field, form, which, r):
    check_fd(make(field, form, which, r, Q=3, l=2))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("form", ["transition", "expectation"])
@pytest.mark.parametrize("centered,bias", [(True, True), (True, False), (False, True), (False, False)])
def test_fd_loss_centering_bias(loss, form, centered, bias):
    # the field and which alternate across the grid so both fields meet every loss and flag
    field = "complex" if (centered + bias + len(loss)) % 2 else "real"
    which = ["SA", "LA", "SM", "LM"][(len(loss) + 2 * centered + bias) % 4]
    check_fd(make(field, form, which, r=2, centered=centered, bias=bias, Q=4, l=3), loss=loss)


@pytest.mark.parametrize("Q,l", [(1, 1), (1, 3), (5, 1)])
def test_fd_outputs_and_secondaries(Q, l):
    check_fd(make(Q=Q, l=l, n=4, p=3, which="SM", r=2), loss="cross_entropy" if Q > 1 else "mse")


def test_fd_with_smoothing_and_default_eta_is_close():
    check_fd(make(smoothing=0.2, eta=0.0, n=4))
    # the default η = 1e-4 biases gradients by O(η²/Δ²): invisible at generic level spacings
    check_fd(make(eta=1e-4, n=4))


# --- degeneracies and η ---------------------------------------------------------------------------
def degenerate_model(levels, which, r, field="complex", eta=1e-4, seed=0):
    """An AO-PMM whose M(x=0) = M_0 = U diag(levels) Uᴴ for a random unitary U (exact spectrum)."""
    m = make(field, "transition", which, r, Q=2, l=2, n=len(levels), p=2, eta=eta, seed=seed)
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m.n, m.n)) + (1j * rng.normal(size=(m.n, m.n)) if field == "complex" else 0)
    U = np.linalg.qr(A)[0]
    M0 = (U * np.asarray(levels)) @ np.conj(U.T)
    m.params["primaries"][0] = hermitian_pack(0.5 * (M0 + np.conj(M0.T)), field)
    return m


def loss_at_zero(m):
    X = np.zeros((1, 2))
    return lambda: m.loss_and_grad(X, np.array([[1.0, -1.0]]))


@pytest.mark.parametrize("field", ["real", "complex"])
@pytest.mark.parametrize("which,r", [("SA", 3), ("LA", 2)])
def test_exact_degeneracy_inside_or_outside_selection_is_exact(field, which, r):
    # levels −1, −1 are degenerate inside S (SA, r=3) or among the unselected (LA, r=2): the outputs
    # depend on the projector V_S V_Sᴴ only, so the gradient is finite and equals finite differences
    m = degenerate_model([-2.0, -1.0, -1.0, 0.5, 1.5], which, r, field)
    assert np.sort(np.linalg.eigvalsh(hand_assembled(m, np.zeros((1, 2)))[0]))[1:3] == pytest.approx([-1, -1], abs=1e-14)
    run = loss_at_zero(m)
    _, grads = run()
    fd = fd_gradient(m, lambda: run()[0])
    assert np.all(np.isfinite(flat_grad(m, grads)))
    assert rel_err(flat_grad(m, grads), fd) <= 1e-6


@pytest.mark.parametrize("field", ["real", "complex"])
def test_exact_degeneracy_across_selection_boundary_gives_finite_gradients(field):
    # SA, r=2 picks one of the two levels at −1: the output is not differentiable there, and the exact
    # formula divides by Δ = 0. With η > 0 every gradient is finite and bounded by ~ ‖V̄‖/(2η).
    for eta in (1e-2, 1e-4, 1e-8):
        m = degenerate_model([-2.0, -1.0, -1.0, 0.5, 1.5], "SA", 2, field, eta=eta)
        value, grads = loss_at_zero(m)()
        g = flat_grad(m, grads)
        assert np.isfinite(value) and np.all(np.isfinite(g))
        assert np.abs(g).max() < 100 / eta


def test_near_degeneracy_gradients_approach_fd_as_eta_goes_to_zero():
    # levels −1 and −1 + δ straddle the SA/r=2 selection boundary: exact gradients are O(1/δ) and the
    # broadening biases them by O(η²/δ²), so the error against finite differences falls as η → 0
    delta = 1e-2
    errs = []
    for eta in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
        m = degenerate_model([-2.0, -1.0, -1.0 + delta, 0.5, 1.5], "SA", 2, eta=eta)
        run = loss_at_zero(m)
        if not errs:
            fd = fd_gradient(m, lambda: run()[0], rel_step=1e-7)
        errs.append(rel_err(flat_grad(m, run()[1]), fd))
    assert errs[0] > 1e-2  # η ≫ δ visibly biases the gradient
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] <= 1e-6, errs
