"""Behaviour fingerprint: 22 fixed-seed configurations whose outputs were recorded before a redesign and
must not change across it.

For each configuration (both models, both fields, both precisions, several ``which``, smoothing,
centering/bias, both forms, and the CUDA dispatch with every kernel running in the g++ emulator)
``tests/data/fingerprint.npz`` holds: ``predict`` on a fixed X, ``loss_and_grad`` (value and every
gradient), the parameters and loss history after 5 full-batch Adam steps, and ``predict`` of the
model after a save -> load round trip. NumPy configurations must match bitwise; emulated-CUDA ones to
1e-12 relative (the kernels' summation order may differ from NumPy's by rounding).

Record anew (only for an intended change of numbers, in its own commit):
    python tests/test_fingerprint.py --record
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import emulator
import pmm_gpu as pg

DATA = Path(__file__).resolve().parent / "data" / "fingerprint.npz"
EMULATED_RTOL = 1e-12

AE, AO = "AffineEigenvaluePMM", "AffineObservablePMM"
# name: (model class, constructor arguments, fit arguments, emulated CUDA dispatch)
CONFIGS = {
    "ae-complex-f64-SA": (AE, dict(n=5, n_features=2, n_eig=1, which="SA"), {}, False),
    "ae-real-f64-LM": (AE, dict(n=6, n_features=3, n_eig=2, which="LM", field="real"), {}, False),
    "ae-complex-f32-SA": (AE, dict(n=4, n_features=2, n_eig=2, which="SA", dtype="float32"), {}, False),
    "ae-complex-smoothing-EA": (AE, dict(n=5, n_features=2, n_eig=3, which="EA", smoothing=0.3), {}, False),
    "ae-real-f32-IM": (AE, dict(n=7, n_features=2, n_eig=2, which="IM", field="real", dtype="float32"),
                       dict(clip_norm=0.5), False),
    "ae-complex-LA-mae": (AE, dict(n=8, n_features=1, n_eig=1, which="LA"),
                          dict(loss="mae", schedule="cosine", weight_decay=0.01), False),
    "ao-transition-complex": (AO, dict(n=5, n_features=3, n_outputs=2, n_eig=2, n_secondaries=2, which="LM"),
                              {}, False),
    "ao-expectation-real-nobias": (AO, dict(n=5, n_features=2, n_outputs=2, n_eig=3, form="expectation",
                                            field="real", bias=False), {}, False),
    "ao-transition-f32": (AO, dict(n=6, n_features=2, n_outputs=1, n_eig=2, dtype="float32"), {}, False),
    "ao-transition-smoothing-SA": (AO, dict(n=5, n_features=2, n_outputs=1, n_eig=2, which="SA", smoothing=0.2),
                                   {}, False),
    "ao-expectation-uncentered-SM": (AO, dict(n=6, n_features=2, n_outputs=2, n_eig=2, which="SM",
                                              form="expectation", centered=False), dict(loss="huber"), False),
    "ao-transition-real-xent": (AO, dict(n=6, n_features=3, n_outputs=3, n_eig=2, field="real"),
                                dict(loss="cross_entropy"), False),
    "ao-n17-uncentered": (AO, dict(n=17, n_features=2, n_outputs=1, n_eig=4, centered=False, which="SA"), {}, False),
    "ao-expectation-f32-EM": (AO, dict(n=7, n_features=2, n_outputs=1, n_eig=3, which="EM", form="expectation",
                                       dtype="float32"), {}, False),
    "emu-ae-complex-cusolver": (AE, dict(n=5, n_features=2, n_eig=2, which="SA", eigh_solver="cusolver"), {}, True),
    "emu-ae-real-jacobi-LM": (AE, dict(n=6, n_features=2, n_eig=2, which="LM", field="real", eigh_solver="jacobi"),
                              {}, True),
    "emu-ae-smoothing-jacobi": (AE, dict(n=4, n_features=2, n_eig=1, smoothing=0.3, eigh_solver="jacobi"), {}, True),
    "emu-ao-transition-cusolver": (AO, dict(n=5, n_features=3, n_outputs=2, n_eig=2, n_secondaries=2,
                                            eigh_solver="cusolver"), dict(clip_norm=1.0), True),
    "emu-ao-expectation-real-jacobi": (AO, dict(n=5, n_features=2, n_outputs=2, n_eig=2, form="expectation",
                                                field="real", eigh_solver="jacobi"), {}, True),
    "emu-ao-transition-jacobi-IA": (AO, dict(n=6, n_features=2, n_outputs=1, n_eig=2, which="IA",
                                             eigh_solver="jacobi"), {}, True),
    "emu-ao-n17-cusolver": (AO, dict(n=17, n_features=2, n_outputs=1, n_eig=3, centered=False,
                                     eigh_solver="cusolver"), {}, True),
    "emu-ao-xent-cusolver": (AO, dict(n=6, n_features=3, n_outputs=3, n_eig=2),
                             dict(loss="cross_entropy", weight_decay=0.01), True),
}


def data(model, loss: str, seed: int = 7, B: int = 12):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (B, model.n_features))
    if loss == "cross_entropy":
        return X, rng.integers(0, model.n_outputs, B)
    return X, rng.normal(size=(B, model.n_outputs))


def build(name):
    cls, kw, _, emulated = CONFIGS[name]
    model = getattr(pg, cls)(device="cpu", seed=11, **kw)
    if emulated:
        model.backend = emulator.cuda_backend_on_numpy()
    return model


def fingerprint(name, tmp_path) -> dict[str, np.ndarray]:
    """Every recorded quantity of one configuration, as a flat dict of arrays."""
    _, _, fit_kw, _ = CONFIGS[name]
    fit_kw = {"loss": "mse", **fit_kw}
    m = build(name)
    X, Y = data(m, fit_kw["loss"])
    out = {"predict": m.predict(X)}
    value, grads = m.loss_and_grad(X, Y, loss=fit_kw["loss"])
    out["loss"] = np.array(value)
    out.update({f"grad_{k}": g for k, g in grads.items()})
    hist = m.fit(X, Y, epochs=5, batch_size=len(X), lr=0.02, verbose=False, **fit_kw)
    out["history"] = np.array(hist["loss"])
    out.update({f"param_{k}": m.backend.to_numpy(v).copy() for k, v in m.params.items()})
    m.save(tmp_path / f"{name}.npz")
    out["predict_loaded"] = pg.load(tmp_path / f"{name}.npz", device="cpu").predict(X)
    return out


@pytest.fixture
def emulated_kernels(monkeypatch):
    emulator.route_kernels_to_emulator(monkeypatch)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fingerprint_unchanged(name, tmp_path, emulated_kernels):
    recorded = np.load(DATA)
    now = fingerprint(name, tmp_path)
    keys = sorted(k.split("/", 1)[1] for k in recorded.files if k.startswith(name + "/"))
    assert keys == sorted(now), f"{name}: recorded {keys}, now {sorted(now)}"
    for k in keys:
        ref, got = recorded[f"{name}/{k}"], now[k]
        assert got.shape == ref.shape and got.dtype == ref.dtype, f"{name}/{k}"
        if CONFIGS[name][3]:
            err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))
            assert err <= EMULATED_RTOL, f"{name}/{k}: relative error {err:.2e}"
        else:
            np.testing.assert_array_equal(got, ref, err_msg=f"{name}/{k} changed")


def record():
    import tempfile

    class _Patch:  # the monkeypatch fixture's setattr, outside pytest
        def setattr(self, obj, attr, value):
            setattr(obj, attr, value)

    emulator.route_kernels_to_emulator(_Patch())
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(CONFIGS):
            arrays.update({f"{name}/{k}": v for k, v in fingerprint(name, Path(tmp)).items()})
    DATA.parent.mkdir(exist_ok=True)
    np.savez(DATA, **arrays)
    print(f"wrote {len(arrays)} arrays for {len(CONFIGS)} configurations to {DATA}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    record()
