"""PyTorch bindings: both PMM types as ``torch.library`` custom ops with autograd, and ``nn.Module`` layers.

    eigenvalue_pmm(X, primaries)                      -> y (B, k)   the AE-PMM, pmm_gpu.functional
    observable_pmm(X, primaries, secondaries, bias)   -> z (B, Q)   the AO-PMM

X (B, p) and the packed real parameters primaries (p+1, P), secondaries (Q, l, P), bias (Q,) are
tensors of one dtype (float32/float64) on one device; every one of them gets a gradient. The math is
pmm_gpu.functional's: the forward op returns the outputs and, when a gradient will be needed, the
eigendecomposition (w (B, n), V (B, n, n)) of M(x) as non-differentiable extra outputs; the backward
is a second op that rebuilds the cache from (w, V) (``functional.*_forward(eig=...)``, no second solve)
and returns the cotangents, dL = Σ ȳ·dy (real parameters, real gradients). Both ops are opaque to
``torch.compile`` (``register_fake`` gives their shapes), so a compiled model has no graph break.

Devices. CPU tensors are handed to the NumPy backend as views (``Tensor.numpy()``); results come back
through ``torch.from_numpy``, copied where they would alias an input. CUDA tensors are handed to the
CuPy backend zero-copy through DLPack (``cupy.from_dlpack``); CuPy runs on torch's current stream
(an external stream) and allocates its temporaries from torch's caching allocator, and the outputs
are tensors from ``torch.empty`` written through a CuPy view: no host synchronisation, so a training
step can be captured in a CUDA graph (after a warm-up step has compiled the kernels).

Layers: ``EigenvaluePMM`` and ``ObservablePMM`` hold the packed parameters as ``nn.Parameter``s,
initialised exactly as pmm_gpu's models (same arguments, same seed, same numbers), or taken from a
pmm_gpu model or model file (``from_pmm``, ``from_file``), and exported back (``to_pmm``, ``save``).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import checks, functional
from .backend import EIGH_SOLVERS
from .models import AffineEigenvaluePMM, AffineObservablePMM, load
from .ops.assemble import FIELDS, n_from_packed
from .ops.eigh import WHICH
from .ops.observable import FORMS

__all__ = ["eigenvalue_pmm", "observable_pmm", "EigenvaluePMM", "ObservablePMM"]
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_FROM_NUMPY = {np.dtype(d): t for d, t in [("float32", torch.float32), ("float64", torch.float64),
                                            ("complex64", torch.complex64), ("complex128", torch.complex128)]}


# --- plumbing: tensors <-> arrays on the tensors' device ----------------------------------------------
def _torch_malloc(size: int):
    """CuPy allocator backed by torch's caching allocator (stream-ordered on torch's current stream,
    CUDA-graph-capture safe): the uint8 tensor owns the memory and is freed with the CuPy array."""
    import cupy

    buf = torch.empty(size, dtype=torch.uint8, device=torch.device("cuda", cupy.cuda.Device().id))
    return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(buf.data_ptr(), size, buf), 0)


def _external_stream(cupy, stream: torch.cuda.Stream):
    """torch's stream as a CuPy stream (``Stream.from_external`` on CuPy >= 14, ``ExternalStream`` before)."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(stream, "__cuda_stream__"):
        return from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device.index)


@contextlib.contextmanager
def _device_scope(like: Tensor):
    """Run pmm_gpu on ``like``'s device: nothing to do on the CPU; on CUDA, CuPy on that device, on
    torch's current stream, allocating from torch's caching allocator."""
    if like.device.type == "cpu":
        yield
        return
    import cupy

    with cupy.cuda.Device(like.device.index), _external_stream(cupy, torch.cuda.current_stream(like.device)), \
            cupy.cuda.using_allocator(_torch_malloc):
        yield


def _as_array(t: Optional[Tensor]):
    """Tensor -> NumPy view (CPU) or CuPy view through DLPack (CUDA); contiguous; None stays None."""
    if t is None:
        return None
    t = t.detach().resolve_conj().contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    import cupy

    return cupy.from_dlpack(t)


def _to_tensor(a, like: Tensor, inputs: tuple) -> Tensor:
    """Array result -> a fresh tensor on ``like``'s device that aliases none of ``inputs`` (arrays)."""
    if like.device.type == "cpu":
        a = np.asarray(a)
        if any(b is not None and np.may_share_memory(a, b) for b in inputs):
            a = a.copy()
        return torch.from_numpy(np.ascontiguousarray(a))
    import cupy

    out = torch.empty(a.shape, dtype=_FROM_NUMPY[np.dtype(a.dtype)], device=like.device)
    if out.numel():
        cupy.from_dlpack(out)[...] = a  # device-to-device on the current stream
    return out


def _empty(like: Tensor) -> Tensor:
    """The placeholder for an output that is not computed (0 elements)."""
    return like.new_empty(0)


# --- the eigenvalue PMM ---------------------------------------------------------------------------
@torch.library.custom_op("pmm_gpu::eigenvalue_pmm", mutates_args=())
def _eigenvalue_op(X: Tensor, primaries: Tensor, n: int, n_eig: int, which: str, field: str, smoothing: float,
                   eigh_solver: str, need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(y (B, k), w (B, n), V (B, n, n)); w, V are empty unless need_grad."""
    with _device_scope(X):
        a = (_as_array(X), _as_array(primaries))
        y, cache = functional.eigenvalue_pmm_forward(*a, n_eig=n_eig, which=which, field=field, smoothing=smoothing,
                                                     eigh_solver=eigh_solver, need_grad=need_grad)
        if not need_grad:
            return _to_tensor(y, X, a), _empty(X), _empty(X)
        return tuple(_to_tensor(r, X, a) for r in (y, cache["w"], cache["V"]))


@_eigenvalue_op.register_fake
def _(X, primaries, n, n_eig, which, field, smoothing, eigh_solver, need_grad):
    y = X.new_empty(X.shape[0], n_eig)
    if not need_grad:
        return y, _empty(X), _empty(X)
    return y, X.new_empty(X.shape[0], n), _eigvec_like(X, n, field)


def _eigvec_like(X, n: int, field: str) -> Tensor:
    return X.new_empty(X.shape[0], n, n, dtype=_COMPLEX[X.dtype] if field == "complex" else X.dtype)


@torch.library.custom_op("pmm_gpu::eigenvalue_pmm_backward", mutates_args=())
def _eigenvalue_backward_op(ybar: Tensor, X: Tensor, primaries: Tensor, w: Tensor, V: Tensor, n: int, n_eig: int,
                            which: str, field: str, smoothing: float, eigh_solver: str,
                            input_grad: bool) -> tuple[Tensor, Tensor]:
    """(X̄ (B, p) or empty unless input_grad, primaries̄ (p+1, P)) from ȳ (B, k) and the forward's (w, V)."""
    with _device_scope(X):
        a = tuple(_as_array(t) for t in (ybar, X, primaries, w, V))
        _, cache = functional.eigenvalue_pmm_forward(a[1], a[2], n_eig=n_eig, which=which, field=field,
                                                     smoothing=smoothing, eigh_solver=eigh_solver, eig=a[3:])
        g = functional.eigenvalue_pmm_backward(cache, a[0], input_grad=input_grad)
        return (_to_tensor(g["X"], X, a) if input_grad else _empty(X)), _to_tensor(g["primaries"], X, a)


@_eigenvalue_backward_op.register_fake
def _(ybar, X, primaries, w, V, n, n_eig, which, field, smoothing, eigh_solver, input_grad):
    return (torch.empty_like(X) if input_grad else _empty(X)), torch.empty_like(primaries)


def _eigenvalue_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(inputs[0], inputs[1], output[1], output[2])
    ctx.config = inputs[2:8]  # n .. eigh_solver
    _check_need_grad(inputs[-1])


def _eigenvalue_backward(ctx, ybar, wbar, Vbar):
    X, primaries, w, V = ctx.saved_tensors
    Xbar, Pbar = _eigenvalue_backward_op(ybar, X, primaries, w, V, *ctx.config, ctx.needs_input_grad[0])
    return (Xbar if ctx.needs_input_grad[0] else None), Pbar, *([None] * 7)


def _check_need_grad(need_grad: bool):
    if not need_grad:
        raise RuntimeError("a pmm_gpu op ran with need_grad=False on inputs that require grad; call "
                           "pmm_gpu.torch.eigenvalue_pmm / observable_pmm, which set need_grad themselves")


torch.library.register_autograd(_eigenvalue_op, _eigenvalue_backward, setup_context=_eigenvalue_setup)


# --- the observable PMM ---------------------------------------------------------------------------
@torch.library.custom_op("pmm_gpu::observable_pmm", mutates_args=())
def _observable_op(X: Tensor, primaries: Tensor, secondaries: Tensor, bias: Optional[Tensor], n: int, n_eig: int,
                   which: str, form: str, centered: bool, eta: float, field: str, smoothing: float, eigh_solver: str,
                   need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(z (B, Q), w (B, n), V (B, n, n)); w, V are empty unless need_grad."""
    with _device_scope(X):
        a = tuple(_as_array(t) for t in (X, primaries, secondaries, bias))
        z, cache = functional.observable_pmm_forward(
            *a, n_eig=n_eig, which=which, form=form, centered=centered, eta=eta, field=field, smoothing=smoothing,
            eigh_solver=eigh_solver, need_grad=need_grad)
        if not need_grad:
            return _to_tensor(z, X, a), _empty(X), _empty(X)
        return tuple(_to_tensor(r, X, a) for r in (z, cache["w"], cache["V"]))


@_observable_op.register_fake
def _(X, primaries, secondaries, bias, n, n_eig, which, form, centered, eta, field, smoothing, eigh_solver,
      need_grad):
    z = X.new_empty(X.shape[0], secondaries.shape[0])
    if not need_grad:
        return z, _empty(X), _empty(X)
    return z, X.new_empty(X.shape[0], n), _eigvec_like(X, n, field)


@torch.library.custom_op("pmm_gpu::observable_pmm_backward", mutates_args=())
def _observable_backward_op(zbar: Tensor, X: Tensor, primaries: Tensor, secondaries: Tensor, bias: Optional[Tensor],
                            w: Tensor, V: Tensor, n: int, n_eig: int, which: str, form: str, centered: bool,
                            eta: float, field: str, smoothing: float, eigh_solver: str,
                            input_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cotangents (X̄ or empty, primaries̄, secondaries̄, bias̄ or empty without bias) from z̄ (B, Q)."""
    with _device_scope(X):
        a = tuple(_as_array(t) for t in (zbar, X, primaries, secondaries, bias, w, V))
        _, cache = functional.observable_pmm_forward(
            *a[1:5], n_eig=n_eig, which=which, form=form, centered=centered, eta=eta, field=field,
            smoothing=smoothing, eigh_solver=eigh_solver, eig=a[5:])
        g = functional.observable_pmm_backward(cache, a[0], input_grad=input_grad)
        out = [g["X"] if input_grad else None, g["primaries"], g["secondaries"], g.get("bias")]
        return tuple(_empty(X) if r is None else _to_tensor(r, X, a) for r in out)


@_observable_backward_op.register_fake
def _(zbar, X, primaries, secondaries, bias, w, V, n, n_eig, which, form, centered, eta, field, smoothing,
      eigh_solver, input_grad):
    return (torch.empty_like(X) if input_grad else _empty(X), torch.empty_like(primaries),
            torch.empty_like(secondaries), _empty(X) if bias is None else torch.empty_like(bias))


def _observable_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(*inputs[:4], output[1], output[2])
    ctx.config = inputs[4:13]  # n .. eigh_solver
    _check_need_grad(inputs[-1])


def _observable_backward(ctx, zbar, wbar, Vbar):
    X, primaries, secondaries, bias, w, V = ctx.saved_tensors
    Xbar, Pbar, Sbar, bbar = _observable_backward_op(zbar, X, primaries, secondaries, bias, w, V, *ctx.config,
                                                     ctx.needs_input_grad[0])
    return (Xbar if ctx.needs_input_grad[0] else None), Pbar, Sbar, (None if bias is None else bbar), *([None] * 10)


torch.library.register_autograd(_observable_op, _observable_backward, setup_context=_observable_setup)


# --- public functions -----------------------------------------------------------------------------
def _check_inputs(X: Tensor, params: dict, field: str, smoothing: float, eigh_solver: str) -> int:
    """Validate X (B, p), the packed parameters and the config; returns n. Errors name the argument."""
    checks.choice("field", field, FIELDS)
    checks.choice("eigh_solver", eigh_solver, EIGH_SOLVERS)
    if smoothing and field == "real":
        raise ValueError("smoothing needs field='complex': C = i·Σ[M_i, M_j] is imaginary for real M_i")
    for name, t in {"X": X, **params}.items():
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dtype not in _COMPLEX:
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {getattr(t, 'dtype', type(t))}")
        if t.dtype != X.dtype or t.device != X.device:
            raise ValueError(f"{name} must have X's dtype and device ({X.dtype}, {X.device}); "
                             f"got ({t.dtype}, {t.device})")
    P = params["primaries"]
    if X.ndim != 2 or P.ndim != 2 or P.shape[0] != X.shape[1] + 1:
        raise ValueError(f"X must be (B, p) and primaries (p + 1, P); got {tuple(X.shape)} and {tuple(P.shape)}")
    try:
        return n_from_packed(int(P.shape[1]), field)
    except ValueError as e:
        raise ValueError(f"primaries (p + 1, P): {e}") from None


def _need_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def eigenvalue_pmm(X: Tensor, primaries: Tensor, *, n_eig: int, which: str = "SA", field: str = "complex",
                   smoothing: float = 0.0, eigh_solver: str = "auto") -> Tensor:
    """AE-PMM y (B, k): the k = n_eig eigenvalues ``which`` picks of M(x_b) = M_0 + Σ_i x_bi M_i (+ s·C).

    X (B, p), primaries (p+1, P) packed (pmm_gpu.ops.assemble), same dtype and device. Differentiable
    in X and primaries: Ā_b = V_S diag(ȳ_b) V_Sᴴ, primaries̄ = [1, X]ᵀ Ḡ, X̄_bi = Re tr(Ā_bᴴ M_i).
    """
    n = _check_inputs(X, {"primaries": primaries}, field, smoothing, eigh_solver)
    if not 1 <= n_eig <= n:
        raise ValueError(f"n_eig must be in 1..n = {n}, got {n_eig}")
    checks.choice("which", which, WHICH)
    return _eigenvalue_op(X, primaries, n, int(n_eig), which, field, float(smoothing), eigh_solver,
                          _need_grad(X, primaries))[0]


def observable_pmm(X: Tensor, primaries: Tensor, secondaries: Tensor, bias: Optional[Tensor] = None, *, n_eig: int,
                   which: str = "LM", form: str = "transition", centered: bool = True, eta: float = 1e-4,
                   field: str = "complex", smoothing: float = 0.0, eigh_solver: str = "auto") -> Tensor:
    """AO-PMM z (B, Q): z_q = b_q + Σ_m (‖V_Sᴴ D_qm V_S‖_F² − ½‖D_qm‖₂²)  (form "transition"; "expectation":
    Re tr V_Sᴴ D_qm V_S), V_S the r = n_eig eigenvectors of M(x_b) that ``which`` picks.

    X (B, p), primaries (p+1, P), secondaries (Q, l, P) packed, bias (Q,) or None; one dtype and device.
    centered: subtract ½‖D_qm‖₂²; eta: the Lorentzian broadening of the eigenvector reverse mode.
    Differentiable in X and every parameter (pmm_gpu.functional.observable_pmm_backward).
    """
    n = _check_inputs(X, {"primaries": primaries, "secondaries": secondaries, "bias": bias}, field, smoothing,
                      eigh_solver)
    if secondaries.ndim != 3 or secondaries.shape[2] != primaries.shape[1]:
        raise ValueError(f"secondaries must be (Q, l, {primaries.shape[1]}); got {tuple(secondaries.shape)}")
    if bias is not None and tuple(bias.shape) != (secondaries.shape[0],):
        raise ValueError(f"bias must be ({secondaries.shape[0]},) or None; got {tuple(bias.shape)}")
    if not 1 <= n_eig <= n:
        raise ValueError(f"n_eig must be in 1..n = {n}, got {n_eig}")
    checks.choice("which", which, WHICH)
    checks.choice("form", form, FORMS)
    return _observable_op(X, primaries, secondaries, bias, n, int(n_eig), which, form, bool(centered), float(eta),
                          field, float(smoothing), eigh_solver, _need_grad(X, primaries, secondaries, bias))[0]


# --- layers ---------------------------------------------------------------------------------------
class _PMMLayer(nn.Module):
    """nn.Module over a pmm_gpu model class: the packed parameters as nn.Parameters, the rest as config."""

    model_class: type = None

    def __init__(self, *args, **kwargs):
        super().__init__()
        if kwargs.get("device") not in (None, "cpu"):
            raise ValueError("device: create the layer, then move it with .to(device)")
        self._adopt(self.model_class(*args, **{**kwargs, "device": "cpu"}))

    def _adopt(self, model):
        """Take config and parameter values from a pmm_gpu model (copied to new CPU tensors)."""
        self.config = {k: v for k, v in model.get_config().items() if k != "device"}
        if self.config.get("rank") is not None or not self.config.get("constant", True):
            raise ValueError("pmm_gpu.torch layers hold full primaries with M_0: rank=None and constant=True "
                             f"(got rank={self.config.get('rank')}, constant={self.config.get('constant')})")
        for name in ("primaries", "secondaries", "bias"):
            if name in model.params:
                value = np.array(model.backend.to_numpy(model.params[name]))
                self.register_parameter(name, nn.Parameter(torch.from_numpy(value)))
            elif name != "primaries" and self.model_class is AffineObservablePMM:
                self.register_parameter(name, None)

    @classmethod
    def from_pmm(cls, model) -> "_PMMLayer":
        """The layer holding a copy of pmm_gpu model ``model``'s parameters (any device)."""
        if not isinstance(model, cls.model_class):
            raise TypeError(f"model must be a pmm_gpu {cls.model_class.__name__}, got {type(model).__name__}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._adopt(model)
        return layer

    @classmethod
    def from_file(cls, path) -> "_PMMLayer":
        """The layer of a pmm_gpu model file (``PMM.save``)."""
        return cls.from_pmm(load(path, device="cpu"))

    def to_pmm(self, device: str = "auto"):
        """A pmm_gpu model with this layer's config and a copy of its current parameters and dtype."""
        dtype = str(self.primaries.dtype).replace("torch.", "")
        model = self.model_class(**{**self.config, "dtype": dtype, "device": device})
        for name, view in model.params.items():
            view[...] = model.backend.asarray(getattr(self, name).detach().cpu().numpy(), model.real_dtype)
        return model

    def save(self, path):
        """Write a pmm_gpu model file that ``pmm_gpu.load`` reads (no optimizer state)."""
        self.to_pmm(device="cpu").save(path)

    def _batched(self, X: Tensor, fn) -> Tensor:
        """Apply fn to X (..., p) cast to the parameters' dtype, flattened to (B, p): (..., outputs)."""
        lead = X.shape[:-1]
        out = fn(X.to(self.primaries.dtype).reshape(-1, X.shape[-1]))
        return out.reshape(*lead, out.shape[-1])

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


class EigenvaluePMM(_PMMLayer):
    """AE-PMM layer: (..., p) -> (..., k) selected eigenvalues (``eigenvalue_pmm``). Arguments as
    pmm_gpu.AffineEigenvaluePMM (n, n_features, n_eig, which, field, dtype, seed, smoothing, init_scale,
    eigh_solver): the parameters start as that model's, to the last bit."""

    model_class = AffineEigenvaluePMM

    def forward(self, X: Tensor) -> Tensor:
        c = self.config
        return self._batched(X, lambda x: eigenvalue_pmm(
            x, self.primaries, n_eig=c["n_eig"], which=c["which"], field=c["field"], smoothing=c["smoothing"],
            eigh_solver=c["eigh_solver"]))


class ObservablePMM(_PMMLayer):
    """AO-PMM layer: (..., p) -> (..., Q) (``observable_pmm``). Arguments as pmm_gpu.AffineObservablePMM
    (n, n_features, n_outputs, n_eig, n_secondaries, which, form, centered, bias, eta, field, dtype,
    seed, smoothing, init_scale, eigh_solver): the parameters start as that model's, to the last bit."""

    model_class = AffineObservablePMM

    def forward(self, X: Tensor) -> Tensor:
        c = self.config
        return self._batched(X, lambda x: observable_pmm(
            x, self.primaries, self.secondaries, self.bias, n_eig=c["n_eig"], which=c["which"], form=c["form"],
            centered=c["centered"], eta=c["eta"], field=c["field"], smoothing=c["smoothing"],
            eigh_solver=c["eigh_solver"]))
