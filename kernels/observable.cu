// observable.cu: the AO-PMM observables and their reverse mode, for every sample, output and
// secondary in one launch each (docs/DESIGN.md §1–2).
//
// The NumPy references are observable_forward / observable_backward in pmm_gpu/ops/observable.py:
//   DV_k = D_k V_S (n×r),  Q_k = V_Sᴴ DV_k (r×r),  t_k = ‖Q_k‖_F² (form 0, transition)
//                                                     or Re tr Q_k (form 1, expectation);
//   transition:  V̄_S = Σ_k 4 t̄_k DV_k Q_k,   W_k = 2 t̄_k V_S Q_k   (D̄_k = Σ_b W_bk V_Sbᴴ, a GEMM);
//   expectation: V̄_S = Σ_k 2 t̄_k DV_k        (D̄_k = Σ_b t̄_bk V_Sb V_Sbᴴ, a GEMM).
// Centering and bias are x-independent and stay in Python. Template arguments: R real type, S element
// type (R or cplx<R>), TILE the compile-time bound on n (8, 16 or 32) that sizes the shared tiles.
#include "cplx_ops.cuh"

// One block per (sample b, secondary k), grid-stride over B·K. Phases, separated by barriers:
// DV = D_k V_S (thread per (i, s)) -> Q = V_Sᴴ DV (thread per (u, s)) -> thread 0 sums t from the
// per-entry terms. DV and Q are also written out: the backward reads them.
template <class R, class S, int TILE>
__global__ void observable_forward(const S* __restrict__ V_S,  // (B, n, r) selected eigenvectors
                                   const S* __restrict__ D,    // (K, n, n) secondaries, Hermitian
                                   R* __restrict__ t,          // (B, K) out: observables
                                   S* __restrict__ DV,         // (B, K, n, r) out: D_k V_S
                                   S* __restrict__ Q,          // (B, K, r, r) out: V_Sᴴ D_k V_S
                                   long long B, long long K, long long n, long long r, long long form) {
  __shared__ S sDV[TILE * TILE];  // DV of the current (b, k), (n, r)
  __shared__ R sTerm[TILE * TILE];  // |Q_us|² (transition) or Re Q_uu on the diagonal (expectation)
  const long long nr = n * r, rr = r * r;
  const int ni = (int)n, ri = (int)r;  // within a tile (n, r <= TILE): 32-bit index arithmetic
  for (long long bk = blockIdx.x; bk < B * K; bk += gridDim.x) {
    const long long b = bk / K, k = bk % K;
    const S* Vb = V_S + b * nr;
    const S* Dk = D + k * n * n;
    for (int e = threadIdx.x; e < ni * ri; e += blockDim.x) {
      const int i = e / ri, s = e % ri;
      S acc = zero_elem<S>();
      for (int j = 0; j < ni; ++j) acc = acc + Dk[i * ni + j] * Vb[j * ri + s];
      sDV[e] = acc;
      DV[bk * nr + e] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ri * ri; e += blockDim.x) {
      const int u = e / ri, s = e % ri;
      S q = zero_elem<S>();
      for (int i = 0; i < ni; ++i) q = q + conj_mul(Vb[i * ri + u], sDV[i * ri + s]);
      Q[bk * rr + e] = q;
      sTerm[e] = form == 0 ? abs2(q) : (u == s ? re_part(q) : R(0));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      R sum = R(0);
      for (int e = 0; e < ri * ri; ++e) sum += sTerm[e];
      t[bk] = sum;
    }
    __syncthreads();  // the next (b, k) overwrites sDV and sTerm
  }
}

// One thread per entry (b, i, s) of V̄_S, looping over the K secondaries; no shared memory.
// W is written in the (K, n, B, r) layout of the D̄ GEMM (K·n, B·r) @ (B·r, n), so no transpose
// is materialised; it is written for the transition form only.
template <class R, class S>
__global__ void observable_backward(const S* __restrict__ V_S,   // (B, n, r)
                                    const S* __restrict__ DV,    // (B, K, n, r)
                                    const S* __restrict__ Q,     // (B, K, r, r)
                                    const R* __restrict__ tbar,  // (B, K) cotangent of t
                                    S* __restrict__ Vbar_S,      // (B, n, r) out
                                    S* __restrict__ W,           // (K, n, B, r) out (form 0)
                                    long long B, long long K, long long n, long long r, long long form) {
  const long long nr = n * r, rr = r * r;
  grid_stride_for(B * nr, [&](auto e) {
    using I = decltype(e);  // unsigned or long long (common.cuh)
    const I b = e / I(nr), i = e % I(nr) / I(r), s = e % I(r);
    const S* Vb = V_S + b * nr;
    S acc = zero_elem<S>();
    for (long long k = 0; k < K; ++k) {
      const long long bk = b * K + k;
      const R tb = tbar[bk];
      if (form == 0) {
        const S* DVk = DV + bk * nr;
        const S* Qk = Q + bk * rr;
        S dq = zero_elem<S>(), vq = zero_elem<S>();
        for (long long u = 0; u < r; ++u) {
          dq = dq + DVk[i * r + u] * Qk[u * r + s];
          vq = vq + Vb[i * r + u] * Qk[u * r + s];
        }
        acc = acc + (R(4) * tb) * dq;
        W[((k * n + i) * B + b) * r + s] = (R(2) * tb) * vq;
      } else {
        acc = acc + (R(2) * tb) * DV[bk * nr + i * r + s];
      }
    }
    Vbar_S[e] = acc;
  });
}
