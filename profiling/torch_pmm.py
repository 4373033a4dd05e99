"""The PyTorch peer: a straightforward implementation of the AE-PMM and AO-PMM for the benchmark.

What a user would write without pmm_gpu: real packed parameters (the layout of pmm_gpu.assemble, so
both engines can start from the same numbers), full complex Hermitian matrices built from them by
indexing, M(x) = Σ_i x1_i M_i as one matmul, ``torch.linalg.eigh``, autograd for the reverse mode and
``torch.optim.Adam``. Nothing here is tuned; it is the peer pmm_gpu has to beat.

    AE-PMM:  y = (λ_s(M(x)))_{s∈S}
    AO-PMM:  z_q = b_q + Σ_m ( ‖V_Sᴴ D_qm V_S‖_F² − ½‖D_qm‖₂² )   (transition; expectation: Re tr)

The training loop mirrors ``pmm_gpu.train.fit`` (constant lr, no clipping, restore_best=False): the
same host RNG draws the same permutation every epoch, so from the same parameters both engines take
the same Adam steps on the same batches and their losses agree to rounding.
"""
from __future__ import annotations

import numpy as np
import torch


def _unpack_indices(n: int, field: str):
    """Index maps from the packed vector (see pmm_gpu/assemble.py) to the full n×n matrix.

    Returns (re_idx (n²,), im_idx (n²,), im_sign (n²,)): Re M_ij = p[re_idx], Im M_ij = sign · p'[im_idx]
    where p' is p with a trailing 0 appended (the imaginary part of the diagonal, and of real fields).
    """
    iu, ju = np.triu_indices(n)
    is_, js = np.triu_indices(n, 1)
    T = len(iu)
    re_idx = np.zeros((n, n), np.int64)
    re_idx[iu, ju] = np.arange(T)
    re_idx[ju, iu] = np.arange(T)
    P = T if field == "real" else n * n
    im_idx = np.full((n, n), P, np.int64)  # -> the appended 0
    sign = np.zeros((n, n))
    if field == "complex":
        im_idx[is_, js] = T + np.arange(len(is_))
        im_idx[js, is_] = T + np.arange(len(is_))
        sign[is_, js], sign[js, is_] = 1.0, -1.0
    return re_idx.ravel(), im_idx.ravel(), sign.ravel()


def _select(w, V, k: int, which: str):
    """The k eigenpairs picked by ``which`` (SA, LA, SM, LM): w_S (B, k), V_S (B, n, k)."""
    n = w.shape[1]
    key = w if which.endswith("A") else w.abs()
    order = torch.argsort(key, dim=1, stable=True)
    idx = order[:, :k] if which[0] == "S" else order[:, n - k:]
    return torch.gather(w, 1, idx), torch.gather(V, 2, idx[:, None, :].expand(-1, n, -1))


class TorchPMM(torch.nn.Module):
    """AE-PMM (kind="eigenvalue") or AO-PMM (kind="observable") on torch; parameters from pmm_gpu.

    params: the pmm_gpu model's ``params`` dict as NumPy arrays ("primaries" (p+1, P), and for the
    AO-PMM "secondaries" (Q, l, P) and optionally "bias" (Q,)).
    """

    def __init__(self, kind: str, n: int, params: dict, *, field="complex", n_eig=1, which="SA",
                 form="transition", centered=True, dtype=torch.float64, device="cpu"):
        super().__init__()
        self.kind, self.n, self.n_eig, self.which, self.form, self.centered = kind, n, n_eig, which, form, centered
        as_param = lambda a: torch.nn.Parameter(torch.tensor(np.asarray(a), dtype=dtype, device=device))
        self.primaries = as_param(params["primaries"])
        self.secondaries = as_param(params["secondaries"]) if kind == "observable" else None
        self.bias = as_param(params["bias"]) if "bias" in params and kind == "observable" else None
        re_idx, im_idx, sign = _unpack_indices(n, field)
        self.register_buffer("re_idx", torch.tensor(re_idx, device=device))
        self.register_buffer("im_idx", torch.tensor(im_idx, device=device))
        self.register_buffer("im_sign", torch.tensor(sign, dtype=dtype, device=device))

    def full(self, packed):
        """Packed (..., P) real -> full (..., n, n) complex Hermitian."""
        padded = torch.cat([packed, packed.new_zeros(packed.shape[:-1] + (1,))], dim=-1)
        M = torch.complex(packed[..., self.re_idx], padded[..., self.im_idx] * self.im_sign)
        return M.reshape(packed.shape[:-1] + (self.n, self.n))

    def forward(self, X):
        """X (B, p) -> outputs (B, k) eigenvalues or (B, Q) observables."""
        n = self.n
        X1 = torch.cat([X.new_ones(X.shape[0], 1), X], dim=1)  # (B, p+1)
        Ms = self.full(self.primaries).reshape(-1, n * n)  # (p+1, n²)
        M = (X1.to(Ms.dtype) @ Ms).reshape(-1, n, n)  # (B, n, n)
        w, V = torch.linalg.eigh(M)
        w_S, V_S = _select(w, V, self.n_eig, self.which)
        if self.kind == "eigenvalue":
            return w_S
        Qn, l = self.secondaries.shape[:2]
        D = self.full(self.secondaries).reshape(Qn * l, n, n)  # (K, n, n)
        Q = V_S.conj().transpose(1, 2)[:, None] @ (D @ V_S[:, None])  # (B, K, r, r)
        if self.form == "transition":
            t = (Q.real ** 2 + Q.imag ** 2).sum(dim=(2, 3))
        else:
            t = torch.diagonal(Q, dim1=2, dim2=3).real.sum(dim=2)
        z = t.reshape(-1, Qn, l).sum(dim=2)
        if self.centered:
            norm = torch.linalg.eigvalsh(D).abs().amax(dim=1)  # ‖D‖₂
            z = z - 0.5 * (norm ** 2).reshape(Qn, l).sum(dim=1)
        return z if self.bias is None else z + self.bias


def loss_fn(loss: str):
    if loss == "cross_entropy":
        return lambda z, y: torch.nn.functional.cross_entropy(z, y)
    return lambda z, y: torch.nn.functional.mse_loss(z, y)


def make_optimizer(model: TorchPMM, lr: float, betas=(0.9, 0.999), eps=1e-8):
    # foreach=False: the plain per-parameter loop (the default picks foreach on CPU too in recent torch;
    # both give the same numbers; pick whichever the installed torch defaults to)
    return torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)


def fit(model: TorchPMM, opt, X, Y, *, epochs: int, batch_size: int, loss: str = "mse", seed: int = 0, rng=None):
    """Mini-batch Adam like pmm_gpu.train.fit; returns the per-epoch (loss, seconds) lists. rng: a NumPy
    Generator to continue (epoch by epoch, as profiling/time_to_accuracy.py runs it) instead of ``seed``."""
    f = loss_fn(loss)
    rng = np.random.default_rng(seed) if rng is None else rng
    N = X.shape[0]
    losses, times = [], []
    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    for _ in range(epochs):
        sync()
        t0 = _now()
        perm = torch.as_tensor(rng.permutation(N), device=X.device)
        total = torch.zeros((), dtype=X.dtype, device=X.device)
        for s in range(0, N, batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad(set_to_none=True)
            value = f(model(X[idx]), Y[idx])
            value.backward()
            opt.step()
            total += value.detach() * len(idx)
        losses.append(float(total) / N)  # one synchronisation per epoch, as in pmm_gpu
        times.append(_now() - t0)
    return losses, times


def _now():
    import time

    return time.perf_counter()
