"""Seconds-long end-to-end check: build, train a little, predict, save, load."""
import numpy as np

import pmm_gpu as pg


def test_tiny_end_to_end(tmp_path):
    X = np.linspace(0, 1, 16)[:, None]
    Y = 1.0 + X
    m = pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu", seed=0)
    before = float(np.mean((m.predict(X) - Y) ** 2))
    hist = m.fit(X, Y, epochs=300, batch_size=8, lr=0.05, verbose=False)
    assert hist["loss"][-1] < 0.01 * before
    m.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(pg.load(tmp_path / "m.npz", device="cpu").predict(X), m.predict(X))
