"""pmm_gpu.torch: the custom ops (opcheck, gradcheck), agreement with pmm_gpu's own models and functional
core, torch.compile, round trips between the torch layers and pmm_gpu model files, and (gpu-marked) the
CUDA path: zero copy, streams, no host synchronisation."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install pmm_gpu[torch])")

import pmm_gpu as pg  # noqa: E402
from pmm_gpu import functional  # noqa: E402
from pmm_gpu import torch as pt  # noqa: E402

T64 = torch.float64
CASES = [("complex", 0.0), ("complex", 0.3), ("real", 0.0)]  # (field, smoothing)


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def make_x(B=5, p=3, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, p, dtype=T64, generator=g).requires_grad_(requires_grad)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def eig_layer(field, smoothing, which="SA", n=4, p=3, k=2, seed=0):
    return pt.EigenvaluePMM(n, p, n_eig=k, which=which, field=field, smoothing=smoothing, seed=seed)


def obs_layer(field, smoothing, which="LM", n=5, p=3, r=2, seed=0, **kw):
    return pt.ObservablePMM(n, p, n_outputs=2, n_eig=r, n_secondaries=2, which=which, field=field,
                            smoothing=smoothing, seed=seed, **kw)


# --- opcheck: every op, forward with requires_grad inputs (so the autograd formula is exercised) ---------
@pytest.mark.parametrize("field,smoothing", CASES)
def test_opcheck_eigenvalue(field, smoothing):
    L = eig_layer(field, smoothing)
    X, P = make_x(), leaf(L.primaries)
    torch.library.opcheck(torch.ops.pmm_gpu.eigenvalue_pmm.default, (X, P, 4, 2, "SA", field, smoothing, "auto", True))
    torch.library.opcheck(torch.ops.pmm_gpu.eigenvalue_pmm.default,
                          (X.detach(), P.detach(), 4, 2, "SA", field, smoothing, "auto", False))
    _, w, V = torch.ops.pmm_gpu.eigenvalue_pmm(X.detach(), P.detach(), 4, 2, "SA", field, smoothing, "auto", True)
    for input_grad in (True, False):
        torch.library.opcheck(torch.ops.pmm_gpu.eigenvalue_pmm_backward.default,
                              (torch.randn(5, 2, dtype=T64), X.detach(), P.detach(), w, V, 4, 2, "SA", field,
                               smoothing, "auto", input_grad))


@pytest.mark.parametrize("field,smoothing,bias", [("complex", 0.3, True), ("real", 0.0, False)])
def test_opcheck_observable(field, smoothing, bias):
    L = obs_layer(field, smoothing, bias=bias)
    X, P, S = make_x(), leaf(L.primaries), leaf(L.secondaries)
    b = leaf(L.bias) if bias else None
    cfg = (5, 2, "LM", "transition", True, 1e-4, field, smoothing, "auto")
    torch.library.opcheck(torch.ops.pmm_gpu.observable_pmm.default, (X, P, S, b, *cfg, True))
    args = (X.detach(), P.detach(), S.detach(), None if b is None else b.detach())
    _, w, V = torch.ops.pmm_gpu.observable_pmm(*args, *cfg, True)
    for input_grad in (True, False):
        torch.library.opcheck(torch.ops.pmm_gpu.observable_pmm_backward.default,
                              (torch.randn(5, 2, dtype=T64), *args, w, V, *cfg, input_grad))


# --- gradcheck (float64, finite differences) in X and every parameter -----------------------------------
@pytest.mark.parametrize("field,smoothing", CASES)
@pytest.mark.parametrize("which", ["SA", "LA", "LM", "EM"])
def test_gradcheck_eigenvalue(field, smoothing, which):
    L = eig_layer(field, smoothing, which)
    f = lambda X, P: pt.eigenvalue_pmm(X, P, n_eig=2, which=which, field=field, smoothing=smoothing)  # noqa: E731
    assert torch.autograd.gradcheck(f, (make_x(), leaf(L.primaries)))


@pytest.mark.parametrize("field,smoothing", CASES)
@pytest.mark.parametrize("which,form", [("SA", "transition"), ("LM", "transition"), ("SM", "expectation"),
                                        ("EA", "expectation")])
def test_gradcheck_observable(field, smoothing, which, form):
    L = obs_layer(field, smoothing, which)
    f = lambda X, P, S, b: pt.observable_pmm(X, P, S, b, n_eig=2, which=which, form=form, eta=0.0,  # noqa: E731
                                             field=field, smoothing=smoothing)
    assert torch.autograd.gradcheck(f, (make_x(), leaf(L.primaries), leaf(L.secondaries), leaf(L.bias)))


# --- agreement with pmm_gpu's models (predict, loss_and_grad) and the functional core --------------------
def torch_mse_grads(layer, X, Y):
    X = leaf(X)
    out = layer(X)
    loss = (out - torch.from_numpy(Y)).square().mean()
    layer.zero_grad()
    loss.backward()
    return out.detach().numpy(), float(loss.detach()), {k: v.grad.numpy() for k, v in layer.named_parameters()}, X.grad


@pytest.mark.parametrize("field,smoothing", CASES)
@pytest.mark.parametrize("kind", ["eigenvalue", "observable"])
def test_matches_pmm_gpu_model(kind, field, smoothing):
    """Outputs, loss and every gradient through the torch op equal the pmm_gpu model's (<= 1e-10 relative),
    and X̄ equals functional.*_backward's input gradient."""
    if kind == "eigenvalue":
        m = pg.AffineEigenvaluePMM(5, 3, n_eig=2, which="LA", field=field, smoothing=smoothing, device="cpu", seed=3)
        Layer = pt.EigenvaluePMM
    else:
        m = pg.AffineObservablePMM(5, 3, n_outputs=2, n_eig=2, which="SA", field=field, smoothing=smoothing,
                                   device="cpu", seed=3)
        Layer = pt.ObservablePMM
    layer = Layer.from_pmm(m)
    X = np.random.default_rng(1).normal(size=(9, 3))
    Y = np.random.default_rng(2).normal(size=(9, m.n_outputs))
    out, loss, grads, Xbar = torch_mse_grads(layer, torch.from_numpy(X), Y)
    assert rel(out, m.predict(X)) <= 1e-10
    ref_loss, ref_grads = m.loss_and_grad(X, Y, "mse")
    assert abs(loss - ref_loss) <= 1e-10 * abs(ref_loss)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert rel(grads[name], ref_grads[name]) <= 1e-10, name
    if kind == "eigenvalue":
        z, cache = functional.eigenvalue_pmm_forward(X, m.params["primaries"], n_eig=2, which="LA", field=field,
                                                     smoothing=smoothing)
        g = functional.eigenvalue_pmm_backward(cache, 2 * (z - Y) / Y.size)
    else:
        z, cache = functional.observable_pmm_forward(X, m.params["primaries"], m.params["secondaries"],
                                                     m.params["bias"], n_eig=2, which="SA", field=field,
                                                     smoothing=smoothing)
        g = functional.observable_pmm_backward(cache, 2 * (z - Y) / Y.size)
    assert rel(Xbar.numpy(), g["X"]) <= 1e-10


def test_fresh_layers_initialise_as_pmm_gpu():
    a = pt.ObservablePMM(6, 4, n_outputs=3, n_eig=2, seed=7, init_scale=0.5)
    m = pg.AffineObservablePMM(6, 4, n_outputs=3, n_eig=2, seed=7, init_scale=0.5, device="cpu")
    for name, value in m.params.items():
        assert np.array_equal(getattr(a, name).detach().numpy(), value), name
    e = pt.EigenvaluePMM(4, 2, n_eig=1, field="real", seed=2)
    assert np.array_equal(e.primaries.detach().numpy(), pg.AffineEigenvaluePMM(4, 2, field="real", seed=2,
                                                                               device="cpu").params["primaries"])


def test_outputs_do_not_alias_and_no_grad_path():
    L = obs_layer("complex", 0.0)
    X = make_x(requires_grad=False)
    with torch.no_grad():
        z0 = L(X)
    z1 = L(X)
    assert torch.equal(z0, z1) and z1.requires_grad and not z0.requires_grad
    with pytest.raises(ValueError, match="primaries"):
        pt.eigenvalue_pmm(X, L.primaries[:, :7], n_eig=1)
    with pytest.raises(ValueError, match="dtype"):
        pt.observable_pmm(X.float(), L.primaries, L.secondaries, n_eig=2)
    with pytest.raises(ValueError, match="n_eig"):
        pt.observable_pmm(X, L.primaries, L.secondaries, n_eig=9)
    with pytest.raises(ValueError, match="eigh_solver"):
        pt.eigenvalue_pmm(X, L.primaries, n_eig=1, eigh_solver="magma")


# --- torch.compile ---------------------------------------------------------------------------------------
def small_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3, dtype=T64), torch.nn.Tanh(), obs_layer("complex", 0.0, "SA"))


def compiled_matches_eager(backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    net, X = small_net(), make_x(6, 4, requires_grad=False)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(net, fullgraph=True, backend=counter)
    results = []
    for f in (compiled, net):
        net.zero_grad()
        out = f(X)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in net.parameters()])
    assert counter.frame_count == 1  # one graph: the PMM ops did not break it
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    compiled_matches_eager("inductor")


# --- round trips with pmm_gpu models and model files -----------------------------------------------------
def test_pmm_gpu_trained_model_to_torch(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    y = (X[:, 0] > 0).astype(int)
    m = pg.AffineObservablePMM(4, 3, n_outputs=2, n_eig=2, device="cpu", seed=1)
    m.fit(X, y, loss="cross_entropy", epochs=5, batch_size=16, verbose=False)
    m.save(tmp_path / "m.npz")
    for layer in (pt.ObservablePMM.from_pmm(m), pt.ObservablePMM.from_file(tmp_path / "m.npz")):
        with torch.no_grad():
            assert np.array_equal(layer(torch.from_numpy(X)).numpy(), m.predict(X))


@pytest.mark.parametrize("Layer,kw", [(pt.ObservablePMM, dict(n_outputs=2, n_eig=2, bias=False)),
                                      (pt.EigenvaluePMM, dict(n_eig=2, field="real"))])
def test_torch_trained_layer_to_pmm_gpu(tmp_path, Layer, kw):
    layer = Layer(4, 3, seed=0, **kw)
    X = make_x(32, 3, requires_grad=False)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    before = layer(X).detach()
    for _ in range(5):
        opt.zero_grad()
        layer(X).square().mean().backward()
        opt.step()
    layer.save(tmp_path / "t.npz")
    m = pg.load(tmp_path / "t.npz", device="cpu")
    with torch.no_grad():
        after = layer(X).numpy()
    assert not np.allclose(after, before.numpy())  # it trained
    assert np.array_equal(m.predict(X.numpy()), after)
    assert np.array_equal(layer.to_pmm("cpu").predict(X.numpy()), after)


# --- CUDA (gpu-marked: skipped without a GPU) --------------------------------------------------------------
def cuda_layer():
    return obs_layer("complex", 0.0, "SA").cuda()


@pytest.mark.gpu
def test_cuda_zero_copy_in_and_out(monkeypatch):
    """Every tensor reaches CuPy as a view of its own memory (data pointers equal), the inputs of both
    ops and the outputs they return (tensors from torch.empty that CuPy writes through such a view);
    results equal the CPU's."""
    import cupy

    seen, real = [], cupy.from_dlpack

    def recording_from_dlpack(t):
        a = real(t)
        seen.append((t.data_ptr(), a.data.ptr))
        return a
    monkeypatch.setattr(cupy, "from_dlpack", recording_from_dlpack)
    layer, X = cuda_layer(), make_x(8, 3, requires_grad=False).cuda()
    params = (layer.primaries.detach(), layer.secondaries.detach(), layer.bias.detach())
    cfg = (5, 2, "SA", "transition", True, 1e-4, "complex", 0.0, "auto")
    z, w, V = torch.ops.pmm_gpu.observable_pmm(X, *params, *cfg, True)
    grads = torch.ops.pmm_gpu.observable_pmm_backward(torch.ones_like(z), X, *params, w, V, *cfg, True)
    assert seen and all(tp == ap for tp, ap in seen)
    ptrs = {tp for tp, _ in seen}
    for t in (X, *params, z, w, V, *grads):
        assert t.data_ptr() in ptrs
    cpu = obs_layer("complex", 0.0, "SA")
    with torch.no_grad():
        torch.testing.assert_close(z.cpu(), cpu(X.cpu()), rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_cuda_non_default_stream_matches_default():
    layer, X = cuda_layer(), make_x(64, 3, requires_grad=False).cuda()
    ref = layer(X).detach()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = layer(X)
        out.sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_training_step():
    """A forward + backward captured in a CUDA graph (any host synchronisation would abort the capture)
    replays to the eager gradients."""
    layer, X = cuda_layer(), make_x(32, 3, requires_grad=False).cuda()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up: compile the kernels, fill the caches
        for _ in range(3):
            layer.zero_grad(set_to_none=False)
            layer(X).square().sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    eager = [p.grad.clone() for p in layer.parameters()]
    graph = torch.cuda.CUDAGraph()
    layer.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        layer(X).square().sum().backward()
    for p in layer.parameters():
        p.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, (p.grad for p in layer.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
