"""Model files and data files: round trips, atomic writes, and clear errors for bad files."""
import os
import signal
import stat
import subprocess
import sys
import time

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
    with pytest.raises(ValueError, match="parameter buffer holds 17"):
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


# --- issue 11: malformed files, NumPy-typed settings, CSV first rows, atomic_write ---------------------
def _good_arrays(tmp_path, **kw):
    m = pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu", **kw)
    m.fit(np.linspace(0, 1, 8)[:, None], np.linspace(1, 2, 8), epochs=1, batch_size=8, verbose=False)
    m.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("change,match", [
    (lambda a: a.pop("config"), "is incomplete: it has no config"),
    (lambda a: a.pop("params"), "is incomplete: it has no params"),
    (lambda a: a.update({"class": np.array("Perceptron")}), "unknown model class 'Perceptron'"),
    (lambda a: a.update({"config": np.array(str(a["config"])[:-1] + ', "bogus": 1}')}), r"unknown key\(s\) \['bogus'\]"),
    (lambda a: a.update({"config": np.array("{n: 3")}), "config that is not valid JSON"),
    (lambda a: a.update({"config": np.array("[3, 1]")}), "config that is not a JSON object"),
    (lambda a: a.update({"config": np.array(str(a["config"]).replace('"n": 3', '"n": "3"'))}), "n must be an int"),
    (lambda a: a.update({"adam_m": np.zeros(5)}), r"adam_m of float64 \(5,\)"),
    (lambda a: a.pop("adam_v"), "incomplete optimizer state"),
    (lambda a: a["params"].__setitem__(0, np.nan), "1 NaN/inf value"),
    (lambda a: a.update({"params": a["params"].astype(complex)}), "malformed parameter buffer"),
    (lambda a: a.update({"format_version": np.array("one")}), "malformed format_version"),
])
def test_malformed_model_files_name_the_file(tmp_path, change, match):
    arrays = _good_arrays(tmp_path)
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match) as info:
        pg.load(tmp_path / "bad.npz", device="cpu")
    assert "bad.npz" in str(info.value)


def test_npz_members_are_checked_before_reading(tmp_path):
    """A member whose header claims more than it holds, and a zip bomb, are refused before allocation."""
    import io
    import zipfile
    arrays = _good_arrays(tmp_path)
    np.savez(tmp_path / "liar.npz", **arrays)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)})
    with zipfile.ZipFile(tmp_path / "liar.npz", "a") as zf:
        zf.writestr("extra_big.npy", header.getvalue() + b"\0" * 64)  # claims 800 GB, holds 64 bytes
    with pytest.raises(ValueError, match=r"liar.npz.*claims shape \(100000000000,\)"):
        pg.load(tmp_path / "liar.npz", device="cpu")
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            with zf.open(k + ".npy", "w") as f:
                np.lib.format.write_array(f, v)
        with zf.open("extra_zeros.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(20_000_000))
    with pytest.raises(ValueError, match=r"bomb.npz.*declares \d+ bytes of arrays in a file of"):
        pg.load(tmp_path / "bomb.npz", device="cpu")


def test_save_with_numpy_typed_settings(tmp_path):
    m = pg.AffineEigenvaluePMM(n=3, n_features=1, dtype=np.float32, seed=np.int64(4), device="cpu")
    X = np.linspace(0, 1, 8)[:, None]
    m.fit(X, 1 + X, epochs=np.arange(1, 3)[1], batch_size=np.int64(4), seed=np.int64(1), verbose=False)
    m.save(tmp_path / "m.npz")
    m2 = pg.load(tmp_path / "m.npz", device="cpu")
    assert m2.get_config()["seed"] == 4 and m2.dtype == "float32"
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))


@pytest.mark.parametrize("text,rows", [("\ufeff1,2,3\n4,5,6\n", 2), ("\ufeffa,b,y\n1,2,3\n", 1), ("x,y,z\n1,2,3\n", 1)])
def test_csv_first_row_is_kept_or_is_a_header(tmp_path, text, rows):
    (tmp_path / "d.csv").write_text(text, encoding="utf-8")
    X, Y = read_data(tmp_path / "d.csv")
    assert X.shape == (rows, 2) and Y.shape == (rows, 1)
    if rows == 2:
        np.testing.assert_array_equal(X, [[1, 2], [4, 5]])


@pytest.mark.parametrize("text,match", [("1,2x,3\n4,5,6\n", r"line 1: non-numeric value '2x'"),
                                        ("a,b\n1,2,3\n", "the header has 2 columns but the data rows have 3")])
def test_csv_bad_first_row_is_reported(tmp_path, text, match):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_data(tmp_path / "d.csv")


@pytest.mark.parametrize("Y,match", [(np.zeros(7), "X has 10 rows but Y has 7"), (np.zeros(12), "X has 10 rows but Y has 12")])
def test_npz_x_and_y_must_pair_up(tmp_path, Y, match):
    np.savez(tmp_path / "d.npz", X=np.ones((10, 2)), Y=Y)
    with pytest.raises(ValueError, match=match):
        read_data(tmp_path / "d.npz")


def test_saved_files_get_a_normal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        m = pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu")
        m.save(tmp_path / "m.npz")
        assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644  # 0666 & ~umask, like open()
        os.chmod(tmp_path / "m.npz", 0o640)
        m.save(tmp_path / "m.npz")
        assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(old)


def test_long_file_names_can_be_saved(tmp_path):
    name = "m" * 251 + ".npz"  # 255 characters, the usual NAME_MAX
    pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu").save(tmp_path / name)
    assert pg.load(tmp_path / name, device="cpu").n == 3


KILLED_WRITER = """
import os, signal, sys
import pmm_gpu as pg
from pmm_gpu import io
m = pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu")
def write(f):
    f.write(b"partial")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the write
io.atomic_write(sys.argv[1], write)
"""


def test_temp_files_of_killed_writers_are_removed_by_the_next_save(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pg.__file__)))
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "m.npz")], env=env)
        assert r.returncode == -signal.SIGKILL
    assert len(list(tmp_path.iterdir())) == 2  # the killed writers' temporary files
    pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu").save(tmp_path / "other.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["other.npz"]


def test_stale_temp_rules_spare_live_writers(tmp_path):
    from pmm_gpu import io
    live = tmp_path / f".pmm-{io._HOST}-{os.getpid()}-0123abcd.tmp"  # a concurrent writer of this process
    other_host = tmp_path / ".pmm-zzzz-1-0123abcd.tmp".replace("zzzz", "ffff" if io._HOST != "ffff" else "eeee")
    foreign = tmp_path / ".tmp-unrelated"
    for p in (live, other_host, foreign):
        p.write_bytes(b"x")
    assert io.remove_stale_temps(str(tmp_path)) == 0
    hour_ago = time.time() - io.STALE_TEMP_S - 60
    os.utime(other_host, (hour_ago, hour_ago))
    assert io.remove_stale_temps(str(tmp_path)) == 1 and not other_host.exists() and live.exists()


def test_save_fsyncs_the_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    pg.AffineEigenvaluePMM(n=3, n_features=1, device="cpu").save(tmp_path / "m.npz")
    assert synced == [False, True]  # the data, then the directory entry of the rename
