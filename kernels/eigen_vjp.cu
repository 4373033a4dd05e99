// eigen_vjp.cu: reverse mode of the batched Hermitian eigendecomposition (docs/DESIGN.md §2).
//
// The NumPy references are eigh_vjp / eigvals_vjp in pmm_gpu/ops/eigh.py; same contract:
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
  const int ni = (int)n, ri = (int)r;  // within a tile (n, r <= TILE): 32-bit index arithmetic
  const R eta2 = R(eta * eta);  // rounded once, as NumPy does with eta·eta on an R array
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    const R* wb = w + b * n;
    const S* Vbb = Vbar_S + b * nr;
    const long long* Ib = idx + b * r;  // read from global: 3 TILE² tiles fill 48 KiB at TILE 32, complex double
    for (int e = threadIdx.x; e < ni * ni; e += blockDim.x) sV[e] = V[b * nn + e];
    __syncthreads();
    for (int e = threadIdx.x; e < ni * ri; e += blockDim.x) {
      const int i = e / ri, s = e % ri;
      S x = zero_elem<S>();  // (Vᴴ V̄_S)_is
      for (int k = 0; k < ni; ++k) x = x + conj_mul(sV[k * ni + i], Vbb[k * ri + s]);
      const R d = wb[Ib[s]] - wb[i], den = d * d + eta2;
      sG[e] = (den > R(0) ? d / den : R(0)) * x;  // F = 0 at i = s (Δ = 0)
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ni * ri; e += blockDim.x) {
      const int i = e / ri, s = e % ri;
      S t = zero_elem<S>();
      for (int k = 0; k < ni; ++k) t = t + sV[i * ni + k] * sG[k * ri + s];
      sT[e] = t;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ni * ni; e += blockDim.x) {
      const int i = e / ni, j = e % ni;
      S aij = zero_elem<S>(), aji = zero_elem<S>();  // (T V_Sᴴ)_ij and (T V_Sᴴ)_ji
      for (int s = 0; s < ri; ++s) {
        const long long c = Ib[s];
        aij = aij + sT[i * ri + s] * conj_of(sV[j * ni + c]);
        aji = aji + sT[j * ri + s] * conj_of(sV[i * ni + c]);
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
  grid_stride_for(B * nn, [&](auto e) {
    using I = decltype(e);  // unsigned or long long (common.cuh)
    const I b = e / I(nn), i = e % I(nn) / I(n), j = e % I(n);
    const S* Vb = V_S + b * n * k;
    S a = zero_elem<S>();
    for (long long s = 0; s < k; ++s) a = a + ybar[b * k + s] * (Vb[i * k + s] * conj_of(Vb[j * k + s]));
    Abar[e] = a;
  });
}
