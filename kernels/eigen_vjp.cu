// eigen_vjp.cu: reverse mode of the batched Hermitian eigendecomposition (DESIGN.md §2).
//
// The NumPy references are eigh_vjp / eigvals_vjp in pmm_gpu/eigen.py; same contract:
//   eigh_vjp:     Ā = H( V (F_S ∘ (Vᴴ V̄_S)) V_Sᴴ ),  F_is = Δ/(Δ² + η²), Δ = λ_s − λ_i (s ∈ S = idx),
//                 F = 0 where Δ² + η² = 0, H(X) = (X + Xᴴ)/2;
//   eigvals_vjp:  Ā = V_S diag(ȳ) V_Sᴴ.
// Template arguments: R real type (float, double); S element type (R or cplx<R>); TILE the
// compile-time bound on n (8, 16 or 32) that sizes the shared-memory tiles of eigh_vjp.
#include "cplx_ops.cuh"

// One block per sample (grid-stride over samples), V (n×n, stride n) and the n×r intermediates
// (stride r) in shared memory. Three phases separated by barriers, each thread looping over entries:
//   G_is = F_is (Vᴴ V̄_S)_is  ->  T = V G  ->  Ā_ij = ½((T V_Sᴴ)_ij + conj((T V_Sᴴ)_ji)),
// with V_S = the columns idx of the V tile. V̄_S is read once per product term from global memory
// (coalesced over s). O(n² r) per sample: only the r selected columns of V̄ are non-zero.
template <class R, class S, int TILE>
__global__ void eigh_vjp(const R* __restrict__ w,            // (B, n) eigenvalues, ascending
                         const S* __restrict__ V,            // (B, n, n) eigenvectors in the columns
                         const long long* __restrict__ idx,  // (B, r) selected columns S, distinct
                         const S* __restrict__ Vbar_S,       // (B, n, r) cotangent of V_S
                         S* __restrict__ Abar,               // (B, n, n) out: Ā, Hermitian
                         long long B, long long n, long long r, double eta) {
  __shared__ S sV[TILE * TILE];  // V of the current sample
  __shared__ S sG[TILE * TILE];  // G = F_S ∘ (Vᴴ V̄_S), (n, r)
  __shared__ S sT[TILE * TILE];  // T = V G, (n, r)
  const long long nn = n * n, nr = n * r;
  const R eta2 = R(eta * eta);  // rounded once, as NumPy does with eta·eta on an R array
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    const R* wb = w + b * n;
    const S* Vbb = Vbar_S + b * nr;
    const long long* Ib = idx + b * r;  // read from global: 3 TILE² tiles fill 48 KiB at TILE 32, complex double
    for (long long e = threadIdx.x; e < nn; e += blockDim.x) sV[e] = V[b * nn + e];
    __syncthreads();
    for (long long e = threadIdx.x; e < nr; e += blockDim.x) {
      const long long i = e / r, s = e % r;
      S x = zero_elem<S>();  // (Vᴴ V̄_S)_is
      for (long long k = 0; k < n; ++k) x = x + conj_mul(sV[k * n + i], Vbb[k * r + s]);
      const R d = wb[Ib[s]] - wb[i], den = d * d + eta2;
      sG[e] = (den > R(0) ? d / den : R(0)) * x;  // F = 0 at i = s (Δ = 0)
    }
    __syncthreads();
    for (long long e = threadIdx.x; e < nr; e += blockDim.x) {
      const long long i = e / r, s = e % r;
      S t = zero_elem<S>();
      for (long long k = 0; k < n; ++k) t = t + sV[i * n + k] * sG[k * r + s];
      sT[e] = t;
    }
    __syncthreads();
    for (long long e = threadIdx.x; e < nn; e += blockDim.x) {
      const long long i = e / n, j = e % n;
      S aij = zero_elem<S>(), aji = zero_elem<S>();  // (T V_Sᴴ)_ij and (T V_Sᴴ)_ji
      for (long long s = 0; s < r; ++s) {
        const long long c = Ib[s];
        aij = aij + sT[i * r + s] * conj_of(sV[j * n + c]);
        aji = aji + sT[j * r + s] * conj_of(sV[i * n + c]);
      }
      Abar[b * nn + e] = R(0.5) * (aij + conj_of(aji));
    }
    __syncthreads();  // the next sample overwrites sV and sT
  }
}

// Ā_ij = Σ_s ȳ_s V_is conj(V_js): one thread per entry of Ā, no shared memory (k is small).
template <class R, class S>
__global__ void eigvals_vjp(const S* __restrict__ V_S,   // (B, n, k) selected eigenvectors
                            const R* __restrict__ ybar,  // (B, k) eigenvalue cotangent ȳ
                            S* __restrict__ Abar,        // (B, n, n) out
                            long long B, long long n, long long k) {
  const long long nn = n * n;
  for (long long e = grid_index(); e < B * nn; e += grid_stride()) {
    const long long b = e / nn, i = e % nn / n, j = e % n;
    const S* Vb = V_S + b * n * k;
    S a = zero_elem<S>();
    for (long long s = 0; s < k; ++s) a = a + ybar[b * k + s] * (Vb[i * k + s] * conj_of(Vb[j * k + s]));
    Abar[e] = a;
  }
}
