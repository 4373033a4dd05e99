// jacobi.cu: batched eigh of small (n <= 32) Hermitian matrices, one thread block per matrix
// (the solver, its design and measurements: jacobi.cuh).
//
// Both kernels write the sorted eigenvalues w and k eigenvectors chosen in the kernel by
// ops.eigh.select_indices' rule (which: 0 SA, 1 LA, 2 SM, 3 LM, 4 EA, 5 EM, 6 IA, 7 IM):
//   k = n, which = SA: every eigenvector, V[b, :, j] the j-th (numpy.linalg.eigh layout; training);
//   k = r:             V_S (B, n, r) = V[b][:, select_indices(w, r, which)] (inference);
//   k = 0:             eigenvalues only (AE-PMM inference).
// sweeps[b]: number of Jacobi sweeps until off(A) <= tol·‖A‖_F, or −1 if max_sweeps did not suffice.
#include "jacobi.cuh"

template <class R, class S>
__global__ void eigh_jacobi(const S* __restrict__ M,  // (B, n, n), lower triangle read
                            R* __restrict__ w,        // (B, n) ascending
                            S* __restrict__ V,        // (B, n, k) the selected eigenvectors
                            int* __restrict__ sweeps,  // (B,)
                            long long B, long long n, long long k, long long which, long long max_sweeps,
                            double tol) {
  __shared__ jac::Smem<R, S> sh;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    jac::load(sh, M + b * n * n, (int)n);
    jac::solve(sh, (int)n, (int)max_sweeps, (R)tol, sweeps + b);
    jac::select(sh, (int)n, (int)which, (int)k);
    jac::write(sh, (int)n, (int)k, w + b * n, V + b * n * k);
  }
}

// Fused assemble + eigh: M(x_b) = P_0 + Σ_i x_bi P_i formed in shared memory from the packed
// primaries (pmm_gpu/ops/assemble.py contract: X1 @ Pp, then assemble_forward), then diagonalised.
template <class R, class S>
__global__ void assemble_eigh_jacobi(const R* __restrict__ x,   // (B, p)
                                     const R* __restrict__ Pp,  // (p + 1, P) packed primaries
                                     R* __restrict__ w,         // (B, n) ascending
                                     S* __restrict__ V,         // (B, n, k) the selected eigenvectors
                                     int* __restrict__ sweeps,  // (B,)
                                     long long B, long long n, long long p, long long k, long long which,
                                     long long max_sweeps, double tol) {
  __shared__ jac::Smem<R, S> sh;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    jac::load_assembled(sh, x + b * p, Pp, (int)n, p);
    jac::solve(sh, (int)n, (int)max_sweeps, (R)tol, sweeps + b);
    jac::select(sh, (int)n, (int)which, (int)k);
    jac::write(sh, (int)n, (int)k, w + b * n, V + b * n * k);
  }
}
