// jacobi_observable.cu: the AO-PMM forward pass in one launch per batch (issue 7, fusion):
// assemble M(x_b) from the packed primaries, diagonalise it (jacobi.cuh), select the r
// eigenvectors V_S by `which` in the kernel, and reduce the observables of every secondary D_k:
//   t_bk = ‖Q_k‖_F² (form 0, transition)  or  Re tr Q_k (form 1, expectation),  Q_k = V_Sᴴ D_k V_S.
// No eigenvector leaves the block: only t (B, K) and the sweep counts are written. This is the
// inference path (no reverse mode: training needs V, DV and Q, see observable.cu); centering and
// bias are x-independent and stay in Python (pmm_gpu/ops/observable.py), as does the assembly of the
// K = n_outputs·n_secondaries full secondaries D (once per call, not per sample).
// Per (b, k), after the solve, barrier-separated: (a) DV = D_k V_S (n×r) into sh.A, which the solve
// no longer needs, one thread per (i, s); (b) each thread sums its share of |Q_us|² (transition,
// one item per (u, s)) or Re Q_ss (expectation, one per s), Q_us = v_uᴴ DV_s; a block reduction
// gives t_bk (its barriers also let the next k overwrite sh.A).
#include "jacobi.cuh"

template <class R, class S>
__global__ void assemble_eigh_observable_jacobi(const R* __restrict__ x,   // (B, p)
                                       const R* __restrict__ Pp,  // (p + 1, P) packed primaries
                                       const S* __restrict__ D,   // (K, n, n) Hermitian secondaries
                                       R* __restrict__ t,         // (B, K) observables
                                       int* __restrict__ sweeps,  // (B,)
                                       long long B, long long n, long long p, long long K, long long r,
                                       long long which, long long form, long long max_sweeps, double tol) {
  __shared__ jac::Smem<R, S> sh;
  const int nn = (int)n, rr = (int)r, tid = threadIdx.x, nt = blockDim.x;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    jac::load_assembled(sh, x + b * p, Pp, nn, p);
    jac::solve(sh, nn, (int)max_sweeps, (R)tol, sweeps + b);
    jac::select(sh, nn, (int)which, rr);
    for (long long k = 0; k < K; ++k) {
      const S* Dk = D + k * n * n;
      for (int e = tid; e < nn * rr; e += nt) {  // (a) DV = D_k V_S
        const int i = e / rr, s = e % rr, c = sh.sel[s];
        S acc = zero_elem<S>();
        for (int j = 0; j < nn; ++j) acc = acc + Dk[i * n + j] * sh.V[j][c];
        sh.A[i][s] = acc;
      }
      __syncthreads();
      R part = R(0);  // (b) this thread's share of t_bk
      for (int e = tid; e < (form == 0 ? rr * rr : rr); e += nt) {
        const int u = form == 0 ? e / rr : e, s = form == 0 ? e % rr : e, c = sh.sel[u];
        S q = zero_elem<S>();
        for (int i = 0; i < nn; ++i) q = q + conj_mul(sh.V[i][c], sh.A[i][s]);
        part += form == 0 ? abs2(q) : re_part(q);
      }
      const R tk = jac::block_reduce<false>(part, sh.red);
      if (tid == 0) t[b * K + k] = tk;
    }
  }
}
