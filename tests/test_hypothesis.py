"""Property-based tests (hypothesis): random shapes, dtypes, NaN/inf placement, memory layouts and file
corruptions fed to predict, loss_and_grad, fit, load and the CLI.

The property: success with finite results, or a ValueError/TypeError/FileNotFoundError/OSError whose
message names the argument or the file; never another exception, a hang or a non-finite result.

Two profiles of the same properties: "fast" (default run, derandomized so CI sees the same examples,
well under a minute) and "slow" (many more, freshly random examples), selected by the ``slow`` marker:

    python -m pytest tests/test_hypothesis.py                 # fast
    python -m pytest tests/test_hypothesis.py -m slow -s      # slow; -s prints the example counts
"""
import json
import os
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pmm_gpu as pg  # noqa: E402
from pmm_gpu.cli import main  # noqa: E402

COMMON = dict(deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
PROFILES = {"fast": settings(max_examples=60, derandomize=True, **COMMON),
            "slow": settings(max_examples=1000, **COMMON)}
PROFILE = [pytest.param("fast", id="fast"), pytest.param("slow", id="slow", marks=pytest.mark.slow)]
ALLOWED = (ValueError, TypeError, FileNotFoundError, OSError)

SPECIAL = [np.nan, np.inf, -np.inf, 1e308, -1e308, 1e39, -1e39, 1e200, 5e-324, 0.0, -0.0, 3.0e38]
VALUES = st.one_of(st.floats(-3, 3, allow_nan=False), st.sampled_from(SPECIAL))
DTYPES = ["float64", "float64", "float32", "float16", "int64", "int32", "uint8", "bool", "complex128", "object", "str"]
LAYOUTS = ["C", "F", "strided", "reversed", "readonly", "list"]
MODELS = [("AE", dict(n=3, n_features=2, n_eig=2)), ("AE", dict(n=4, n_features=1, field="real", dtype="float32")),
          ("AO", dict(n=4, n_features=2, n_outputs=2)),
          ("AO", dict(n=3, n_features=3, field="real", dtype="float32", form="expectation"))]


def make_model(i: int):
    kind, kw = MODELS[i]
    cls = pg.AffineEigenvaluePMM if kind == "AE" else pg.AffineObservablePMM
    return cls(device="cpu", seed=i, **kw)


_CACHE = {}


def cached_model(i: int):
    if i not in _CACHE:
        _CACHE[i] = make_model(i)
    return _CACHE[i]


def run_property(profile: str, strategy, prop, scale: float = 1.0, name: str = "") -> int:
    """Run ``prop`` on ``strategy``'s examples under ``profile`` (``scale`` times its max_examples); prints
    and returns the number of examples run."""
    count = [0]
    base = PROFILES[profile]

    @settings(base, max_examples=max(5, int(base.max_examples * scale)))
    @given(strategy)
    def check(case):
        count[0] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow / divergence warnings are allowed, errors are checked
            prop(case)

    check()
    print(f"[hypothesis {profile}] {name or prop.__name__}: {count[0]} examples, 0 violations")
    return count[0]


def clean(fn, names):
    """fn() or None when it raised an allowed error naming one of ``names``; anything else fails."""
    try:
        return fn()
    except ALLOWED as e:
        assert any(n in str(e) for n in names), f"{type(e).__name__} names none of {names}: {e}"
        return None


@st.composite
def arrays(draw, cols: int, rows=st.integers(0, 12)):
    """An array-like of mostly (rows, cols) shape, of any dtype, values with NaN/inf/huge entries placed
    anywhere, in any memory layout."""
    ndim = draw(st.sampled_from([2, 2, 2, 2, 1, 0, 3]))
    r = draw(rows)
    shape = {0: (), 1: (r,), 2: (r, draw(st.sampled_from([cols, cols, cols, 0, cols + 1]))), 3: (r, cols, 2)}[ndim]
    size = int(np.prod(shape))
    vals = draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=size, max_size=size))
    a = np.array(vals, dtype=np.float64).reshape(shape)
    if size and draw(st.booleans()):  # a special value at a random place
        a.flat[draw(st.integers(0, size - 1))] = draw(st.sampled_from(SPECIAL))
    dtype, layout = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(LAYOUTS))
    with np.errstate(all="ignore"):
        a = {"object": a.astype(object), "str": a.astype(str)}.get(dtype, a.astype(dtype) if dtype != "str" else a)
    return _layout(a, layout)


def _layout(a, layout):
    if a.ndim == 0 or layout == "C":
        return a
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        return np.repeat(a, 2, axis=0)[::2]
    if layout == "reversed":
        return a[::-1]
    if layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
        return a
    return a.tolist()


# --- predict and loss_and_grad ------------------------------------------------------------------------
@st.composite
def predict_cases(draw):
    i = draw(st.integers(0, len(MODELS) - 1))
    return i, draw(arrays(MODELS[i][1]["n_features"])), draw(st.sampled_from([65536, 1, 3, 0, -1, 2.5, "4"]))


def predict_property(case):
    i, X, batch_size = case
    m = cached_model(i)
    out = clean(lambda: m.predict(X, batch_size=batch_size), ["X", "batch_size", "predict"])
    if out is not None:
        assert out.shape == (len(np.asarray(X).reshape(len(np.asarray(X)), -1)), m.n_outputs)
        assert np.isfinite(out).all()


def draw_model_and_data(draw, rows: int):
    """A model index, X of ``rows`` rows, and Y of ``rows`` rows or, now and then, one too few."""
    i = draw(st.integers(0, len(MODELS) - 1))
    X = draw(arrays(MODELS[i][1]["n_features"], rows=st.just(rows)))
    return i, X, draw(arrays(cached_model(i).n_outputs, rows=st.sampled_from([rows, rows, rows - 1])))


@st.composite
def loss_cases(draw):
    return *draw_model_and_data(draw, 6), draw(st.sampled_from(["mse", "mae", "huber"]))


def loss_and_grad_property(case):
    i, X, Y, loss = case
    m = cached_model(i)
    res = clean(lambda: m.loss_and_grad(X, Y, loss), ["X", "Y", "loss_and_grad"])
    if res is not None:
        value, grads = res
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("profile", PROFILE)
def test_predict(profile):
    run_property(profile, predict_cases(), predict_property, scale=2)


@pytest.mark.parametrize("profile", PROFILE)
def test_loss_and_grad(profile):
    run_property(profile, loss_cases(), loss_and_grad_property, scale=2)


# --- fit ------------------------------------------------------------------------------------------------
FIT_ARGS = {"epochs": [1, 2, 0, -1, 1.5, np.int64(2)], "batch_size": [4, 1, 100, 0, "8"],
            "lr": [0.01, 0.3, 1e3, 1e300, 0.0, -1.0, float("nan"), "0.1"],
            "betas": [(0.9, 0.999), (0.0, 0.5), (1.0, 0.9), (0.9,), (0.9, float("inf"))],
            "eps": [1e-8, 0.0, -1e-8, float("nan")], "clip_norm": [None, 1.0, 0.0, float("inf")],
            "seed": [0, np.int64(3), -1, None, "s"], "schedule": ["constant", "cosine", "step", lambda t, T: 0.5]}


@st.composite
def fit_cases(draw):
    i, X, Y = draw_model_and_data(draw, 8)
    kw = {k: draw(st.sampled_from(v)) for k, v in FIT_ARGS.items() if draw(st.booleans())}
    return i, X, Y, kw


def fit_property(case):
    i, X, Y, kw = case
    m = make_model(i)
    names = ["X", "Y", *FIT_ARGS, "betas", "schedule", "fit"]
    hist = clean(lambda: m.fit(X, Y, verbose=False, **{"epochs": 1, **kw}), names)
    assert np.isfinite(m.theta).all()
    if hist is not None:
        assert all(np.isfinite(hist["loss"])) and m.history is hist


@pytest.mark.parametrize("profile", PROFILE)
def test_fit(profile):
    run_property(profile, fit_cases(), fit_property, scale=1)


# --- load and the CLI on corrupted files -----------------------------------------------------------
JSON_VALUES = st.one_of(st.integers(-5, 40), st.sampled_from([0, -1, 10**30, 30000, 1.5, 1e400, None, True, "x",
                                                             "complex", "real", [], {}, [1, 2]]))


@st.composite
def corruptions(draw):
    """(model index, kind, parameters) of one corruption of a saved model file."""
    i = draw(st.integers(0, len(MODELS) - 1))
    kind = draw(st.sampled_from(["truncate", "flip", "config_value", "drop", "array", "json", "ok"]))
    return i, kind, draw(st.integers(0, 10**6)), draw(JSON_VALUES), draw(st.integers(0, 255))


def corrupt(tmp, case) -> str:
    i, kind, pos, value, byte = case
    path = os.path.join(tmp, f"m{i}.npz")
    if not os.path.exists(path):
        m = make_model(i)
        m.fit(np.zeros((4, m.n_features)), np.zeros((4, m.n_outputs)), epochs=1, verbose=False)
        m.save(path)
    data = open(path, "rb").read()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    out = os.path.join(tmp, "bad.npz")
    if kind in ("truncate", "flip"):
        k = pos % len(data)
        data = data[:k] if kind == "truncate" else data[:k] + bytes([data[k] ^ (byte or 1)]) + data[k + 1:]
        open(out, "wb").write(data)
        return out
    if kind in ("config_value", "drop"):
        cfg = json.loads(str(arrays["config"]))
        key = sorted(cfg)[pos % len(cfg)]
        cfg.pop(key) if kind == "drop" else cfg.__setitem__(key, value)
        arrays["config"] = np.array(json.dumps(cfg))
    elif kind == "array":
        key = sorted(arrays)[pos % len(arrays)]
        arrays[key] = np.resize(arrays[key].astype(float) if arrays[key].dtype.kind in "biuf" else arrays[key],
                                pos % 7)
    elif kind == "json":
        arrays["config"] = np.array(str(arrays["config"])[: pos % 40] + "\x00{")
    np.savez(out, **arrays)
    return out


def load_property(case, tmp):
    path = corrupt(tmp, case)
    m = clean(lambda: pg.load(path, device="cpu"), ["bad.npz"])
    if m is not None:
        out = m.predict(np.full((3, m.n_features), 0.25))
        assert np.isfinite(out).all()


def cli_property(case, tmp):
    path = corrupt(tmp, case)
    i = case[0]
    csv = os.path.join(tmp, "x.csv")
    with open(csv, "w") as f:
        f.write(["1,2,3\n", "a,b,c\n1,2,3\n", "\ufeff1,2\n", "1,nan,3\n", "", "1,2\n3\n", "1e39,1,1\n"][case[4] % 7])
    try:
        rc = main(["predict", "--model", path, "--data", csv, "--device", "cpu"])
    except SystemExit as e:
        rc = e.code
    assert rc in (0, 2), f"exit status {rc} (model {i}, {case[1]})"


@pytest.mark.parametrize("profile", PROFILE)
def test_load_corrupted_files(profile, tmp_path):
    run_property(profile, corruptions(), lambda c: load_property(c, str(tmp_path)), scale=2, name="load")


@pytest.mark.parametrize("profile", PROFILE)
def test_cli_predict_on_corrupted_files(profile, tmp_path, capsys):
    def cli_predict(case):
        cli_property(case, str(tmp_path))
        err = capsys.readouterr().err
        assert err == "" or (err.startswith("pmm-gpu: error: ") and err.count("\n") == 1), err

    run_property(profile, corruptions(), cli_predict, scale=1, name="cli predict")


CELLS = st.sampled_from(["1", "-2.5", "0", "1e39", "1e308", "nan", "inf", "x", "", " 3 ", "\ufeff1", "1;2", "0x1"])
FLAGS = st.sampled_from([[], ["--epochs", "1"], ["--epochs", "0"], ["--n", "1"], ["--n", "0"], ["--lr", "0"],
                         ["--lr", "1e300"], ["--targets", "2"], ["--val-fraction", "0.5"], ["--val-fraction", "1"],
                         ["--batch-size", "1"], ["--which", "LM"], ["--seed", "-1"], ["--dtype", "float32"]])


@st.composite
def csv_runs(draw):
    rows = draw(st.lists(st.lists(CELLS, min_size=1, max_size=4), min_size=0, max_size=6))
    header = ["a,b,y"] if draw(st.booleans()) else []
    return "\n".join(header + [",".join(r) for r in rows]) + "\n", draw(FLAGS) + draw(FLAGS)


@pytest.mark.parametrize("profile", PROFILE)
def test_cli_train_on_random_csv(profile, tmp_path, capsys):
    def cli_train(case):
        text, flags = case
        (tmp_path / "d.csv").write_text(text, encoding="utf-8")
        args = ["train", "--data", str(tmp_path / "d.csv"), "--quiet", "--device", "cpu", "--epochs", "2",
                "--n", "3", "--out", str(tmp_path / "m.npz"), *flags]
        try:
            rc = main(args)
        except SystemExit as e:  # argparse: a bad flag
            rc = e.code
        err = capsys.readouterr().err
        assert rc in (0, 1, 2), f"exit status {rc}"
        if rc == 2 and "usage:" not in err:
            assert err.startswith("pmm-gpu: error: ") and err.count("\n") == 1, err
        if rc == 0:
            assert np.isfinite(pg.load(tmp_path / "m.npz", device="cpu").theta).all()

    run_property(profile, csv_runs(), cli_train, scale=1, name="cli train")
