"""The CuPy backend against the NumPy oracle on identical seeds, for both model types (docs/DESIGN.md §4.1):
forward outputs, every gradient, one Adam step, a short training run's loss curve, chunked eigh,
save/load across devices and ``predict(as_numpy=False)``. Marked ``gpu``: skipped without a GPU.
``compare_models`` also runs CPU-vs-CPU here, so the comparison machinery itself is tested everywhere."""
from __future__ import annotations

import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu.ops.eigh import eigh_chunked

TOL = {"float64": 1e-9, "float32": 1e-4}  # relative to max(1, largest reference entry)

MODELS = {
    "ae-complex": lambda **kw: pg.AffineEigenvaluePMM(n=5, n_features=3, n_eig=2, which="SA", field="complex", **kw),
    "ae-real-LM": lambda **kw: pg.AffineEigenvaluePMM(n=7, n_features=2, n_eig=3, which="LM", field="real", **kw),
    "ae-smoothing": lambda **kw: pg.AffineEigenvaluePMM(n=4, n_features=2, n_eig=1, smoothing=0.3, **kw),
    "ao-transition": lambda **kw: pg.AffineObservablePMM(n=6, n_features=3, n_outputs=3, n_eig=2, n_secondaries=2,
                                                         form="transition", field="complex", **kw),
    "ao-expectation-real": lambda **kw: pg.AffineObservablePMM(n=5, n_features=2, n_outputs=2, n_eig=3,
                                                               form="expectation", field="real", bias=False, **kw),
    "ao-n17-uncentered": lambda **kw: pg.AffineObservablePMM(n=17, n_features=2, n_outputs=1, n_eig=4,
                                                             centered=False, which="SA", **kw),
}


def assert_close(out, ref, dtype, what=""):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, what
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    err = float(np.abs(out - ref).max(initial=0))
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3e} (scale {scale:.3e})"


def data(model, B=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, model.n_features))
    loss = "cross_entropy" if isinstance(model, pg.AffineObservablePMM) and model.n_outputs > 2 else "mse"
    Y = rng.integers(0, model.n_outputs, B) if loss == "cross_entropy" else rng.normal(size=(B, model.n_outputs))
    return X, Y, loss


def params(m) -> dict[str, np.ndarray]:
    return {k: m.backend.to_numpy(v).copy() for k, v in m.params.items()}


def compare_models(name, dtype, dev, ref_dev="cpu"):
    """Everything the two devices must agree on, for one model configuration."""
    make = lambda device: MODELS[name](dtype=dtype, device=device, seed=3)  # noqa: E731
    m, r = make(dev), make(ref_dev)
    X, Y, loss = data(r)
    assert_close(m.predict(X), r.predict(X), dtype, "outputs")
    (lm, gm), (lr, gr) = m.loss_and_grad(X, Y, loss), r.loss_and_grad(X, Y, loss)
    assert_close(lm, lr, dtype, "loss")
    assert set(gm) == set(gr) == set(r.params)
    for k in gr:
        assert_close(gm[k], gr[k], dtype, f"gradient of {k}")
    # one full-batch Adam step, then a short mini-batch run: parameters and the loss curve
    for mm in (m, r):
        mm.fit(X, Y, loss=loss, epochs=1, batch_size=len(X), lr=1e-2, verbose=False)
    for k, v in params(r).items():
        assert_close(params(m)[k], v, dtype, f"{k} after one Adam step")
    hm = m.fit(X, Y, loss=loss, epochs=4, batch_size=16, lr=1e-2, clip_norm=5.0, verbose=False, seed=1)
    hr = r.fit(X, Y, loss=loss, epochs=4, batch_size=16, lr=1e-2, clip_norm=5.0, verbose=False, seed=1)
    assert_close(hm["loss"], hr["loss"], dtype, "loss curve")
    for k, v in params(r).items():
        assert_close(params(m)[k], v, dtype, f"{k} after training")


@pytest.mark.parametrize("name", ["ae-complex", "ao-transition"])
def test_comparison_machinery_on_cpu(name):
    compare_models(name, "float64", "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cuda_matches_numpy(name, dtype):
    compare_models(name, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.complex128, np.float32])
def test_chunked_eigh_equals_unchunked(dtype):
    import cupy

    be = pg.get_backend("cuda")
    rng = np.random.default_rng(0)
    A = rng.normal(size=(101, 6, 6)) + (1j * rng.normal(size=(101, 6, 6)) if np.iscomplexobj(dtype(0)) else 0)
    M = cupy.asarray((A + np.conj(A.swapaxes(1, 2))).astype(dtype))
    w1, V1 = be.eigh(M)
    w2, V2 = eigh_chunked(be.eigh, M, cupy, max_batch=7)
    tol = 1e-12 if np.finfo(dtype).bits == 64 else 1e-5
    scale = float(abs(M).max())
    assert float(abs(w1 - w2).max()) <= tol * scale
    for w, V in ((w1, V1), (w2, V2)):  # gauge-invariant: both reconstruct M
        R = (V * w[:, None, :]) @ cupy.conj(V.swapaxes(1, 2))
        assert float(abs(R - M).max()) <= 100 * tol * scale


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ae-complex", "ao-transition"])
def test_save_load_across_devices(name, tmp_path):
    X, _, _ = data(MODELS[name](device="cpu"))
    for src, dst in (("cuda", "cpu"), ("cpu", "cuda")):
        m = MODELS[name](device=src, seed=5)
        path = tmp_path / f"{src}.npz"
        m.save(path)
        back = pg.load(path, device=dst)
        assert back.backend.name == dst
        assert_close(back.predict(X), m.predict(X), "float64", f"{src} -> {dst}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ae-complex", "ao-transition"])
def test_predict_as_numpy_false_returns_cupy(name):
    import cupy

    m = MODELS[name](device="cuda")
    X, _, _ = data(m)
    out = m.predict(X, as_numpy=False)
    assert isinstance(out, cupy.ndarray) and out.shape == (len(X), m.n_outputs)
    assert isinstance(m.predict(X), np.ndarray)
