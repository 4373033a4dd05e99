// eigen_vjp.cu: reverse mode of the batched Hermitian eigendecomposition (DESIGN.md §2).
//
// The NumPy references are eigh_vjp / eigvals_vjp in pmm_gpu/eigen.py; same contract:
//   eigh_vjp:     Ā = H( V (diag(λ̄) + F ∘ (Vᴴ V̄)) Vᴴ ),  F_ij = Δ/(Δ² + η²), Δ = λ_j − λ_i, F_ii = 0,
//                 H(X) = (X + Xᴴ)/2;
//   eigvals_vjp:  Ā = V_S diag(ȳ) V_Sᴴ.
// Template arguments: R real type (float, double); S element type (R or cplx<R>); TILE the
// compile-time bound on n (8, 16 or 32) that sizes the shared-memory tiles of eigh_vjp.
#include "cplx_ops.cuh"

// One block per sample (grid-stride over samples), the n×n intermediates in shared memory with
// stride n. Three phases separated by barriers, each thread looping over matrix entries e = i·n + j:
//   G = diag(λ̄) + F ∘ (Vᴴ V̄)  ->  T = V G  ->  Ā_ij = ½((T Vᴴ)_ij + conj((T Vᴴ)_ji)).
// V̄ is read once per product term from global memory (coalesced over j); V, G, T live in shared.
template <class R, class S, int TILE>
__global__ void eigh_vjp(const R* __restrict__ w,     // (B, n) eigenvalues, ascending
                         const S* __restrict__ V,     // (B, n, n) eigenvectors in the columns
                         const R* __restrict__ wbar,  // (B, n) eigenvalue cotangent λ̄
                         const S* __restrict__ Vbar,  // (B, n, n) eigenvector cotangent V̄
                         S* __restrict__ Abar,        // (B, n, n) out: Ā, Hermitian
                         long long B, long long n, double eta) {
  __shared__ S sV[TILE * TILE];  // V of the current sample
  __shared__ S sG[TILE * TILE];  // G = diag(λ̄) + F ∘ (Vᴴ V̄)
  __shared__ S sT[TILE * TILE];  // T = V G
  const long long nn = n * n;
  const R eta2 = R(eta * eta);  // rounded once, as NumPy does with eta·eta on an R array
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    const R* wb = w + b * n;
    const S* Vbb = Vbar + b * nn;
    for (long long e = threadIdx.x; e < nn; e += blockDim.x) sV[e] = V[b * nn + e];
    __syncthreads();
    for (long long e = threadIdx.x; e < nn; e += blockDim.x) {
      const long long i = e / n, j = e % n;
      S x = zero_elem<S>();  // (Vᴴ V̄)_ij
      for (long long k = 0; k < n; ++k) x = x + conj_mul(sV[k * n + i], Vbb[k * n + j]);
      const R d = wb[j] - wb[i], den = d * d + eta2;
      S g = (den > R(0) ? d / den : R(0)) * x;  // F_ii = 0: Δ = 0 on the diagonal
      if (i == j) g = g + make_elem<S>::of(wbar[b * n + i], R(0));
      sG[e] = g;
    }
    __syncthreads();
    for (long long e = threadIdx.x; e < nn; e += blockDim.x) {
      const long long i = e / n, j = e % n;
      S t = zero_elem<S>();
      for (long long k = 0; k < n; ++k) t = t + sV[i * n + k] * sG[k * n + j];
      sT[e] = t;
    }
    __syncthreads();
    for (long long e = threadIdx.x; e < nn; e += blockDim.x) {
      const long long i = e / n, j = e % n;
      S aij = zero_elem<S>(), aji = zero_elem<S>();  // (T Vᴴ)_ij and (T Vᴴ)_ji
      for (long long k = 0; k < n; ++k) {
        aij = aij + sT[i * n + k] * conj_of(sV[j * n + k]);
        aji = aji + sT[j * n + k] * conj_of(sV[i * n + k]);
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
