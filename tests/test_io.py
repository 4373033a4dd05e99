"""Model files and data files: round trips, atomic writes, and clear errors for bad files."""
import numpy as np
import pytest

import pmm_gpu as pg
from pmm_gpu.io import read_data


@pytest.mark.parametrize("kw", [dict(field="complex"), dict(field="real", dtype="float32"),
                                dict(field="complex", smoothing=0.2, which="LM", n_eig=2)])
def test_save_load_predict_identical(tmp_path, kw):
    m = pg.AffineEigenvaluePMM(n=5, n_features=3, device="cpu", seed=2, **kw)
    X = np.random.default_rng(0).normal(size=(9, 3))
    m.save(tmp_path / "m.npz")
    m2 = pg.load(tmp_path / "m.npz", device="cpu")
    assert m2.get_config() == {**m.get_config(), "device": "cpu"}
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))


def test_save_is_atomic(tmp_path, monkeypatch):
    m = pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu")
    path = tmp_path / "m.npz"
    m.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_bad_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pg.load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npz"):
        pg.load(tmp_path / "text.npz")
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a pmm_gpu model file"):
        pg.load(tmp_path / "foreign.npz")
    pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu").save(tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        pg.load(tmp_path / "trunc.npz")
    # a complete archive whose parameters do not fit its config
    with np.load(tmp_path / "good.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["params"] = arrays["params"][:-1]
    np.savez(tmp_path / "bad_shape.npz", **arrays)
    with pytest.raises(ValueError, match="parameter buffer has shape"):
        pg.load(tmp_path / "bad_shape.npz")


def test_read_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,y\n1,2,3\n4,5,6\n")
    X, Y = read_data(tmp_path / "h.csv")
    np.testing.assert_array_equal(X, [[1, 2], [4, 5]])
    np.testing.assert_array_equal(Y, [[3], [6]])
    (tmp_path / "n.csv").write_text("1,2,3\n4,5,6\n")
    X, Y = read_data(tmp_path / "n.csv", n_targets=2)
    np.testing.assert_array_equal(X, [[1], [4]])
    np.testing.assert_array_equal(Y, [[2, 3], [5, 6]])


@pytest.mark.parametrize("text,match", [("", "is empty"), ("a,b\n", "no data rows"), ("1,2\n3\n", "line 2: 1 columns"),
                                        ("1,2\n3,x\n", "line 2: non-numeric"), ("1\n2\n", "need at least one feature")])
def test_read_csv_errors(tmp_path, text, match):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_data(tmp_path / "d.csv")


def test_read_npz(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2)), Y=np.zeros(3))
    X, Y = read_data(tmp_path / "d.npz")
    assert X.shape == (3, 2) and Y.shape == (3,)
    np.savez(tmp_path / "e.npz", Z=np.ones(3))
    with pytest.raises(ValueError, match="must contain an array 'X'"):
        read_data(tmp_path / "e.npz")
