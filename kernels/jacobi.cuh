// jacobi.cuh: the batched Jacobi eigensolver for small (n <= 32) real-symmetric / complex-Hermitian matrices.
//
// Method: two-sided cyclic Jacobi, A <- Jᴴ A J, V <- V J, with a parallel round-robin (tournament,
// "circle method") order. A sweep is 2⌈n/2⌉ − 1 rounds; a round rotates ⌈n/2⌉ disjoint pairs (p, q)
// at once (odd n: one dummy index, its pair idles), so every pair is visited once per sweep.
// Design, and why:
//   - one thread block per matrix (block-stride over the batch), A and V in fixed-size shared memory:
//     the whole solve touches global memory once to read M and once to write (w, V). Fixed-size
//     shared memory and plain __syncthreads() keep the kernel runnable by the g++ emulation harness
//     (tests/emu/cuda_emu.h: no warp intrinsics, no atomics) and checkable under ThreadSanitizer.
//   - any blockDim.x <= JACOBI_MAX_THREADS works (work loops are strided), so the same source runs
//     with a few emulated threads on the CPU and a few warps on a GPU.
//   - a round is three barrier-separated phases: (1) one thread per pair computes the rotation from
//     a_pp, a_qq, a_pq; (2) row update A <- Jᴴ A, one work item per (pair, column); (3) column update
//     A <- A J and V <- V J, one item per (row, pair). The pairs are disjoint, so items never share
//     an entry within a phase. The 2×2 block of each pair is written exactly (a_pq = 0, the new
//     diagonal from the stable formulas) rather than from the rotated entries.
//   - rotation (Rutishauser / Numerical Recipes form, extended to complex Hermitian): with
//     a_pq = |a_pq| e, |e| = 1,  θ = (a_qq − a_pp) / (2|a_pq|),  t = sign(θ)/(|θ| + sqrt(θ² + 1)),
//     c = 1/sqrt(1 + t²), s = t c:  J_pp = J_qq = c, J_pq = s e, J_qp = −s ē. Then (Jᴴ A J)_pq = 0,
//     a_pp' = a_pp − t|a_pq|,  a_qq' = a_qq + t|a_pq|  (|t| <= 1: the small angle). Updates are
//     applied as x + s·(u − τx), τ = s/(1 + c) (Rutishauser): the correction to x is small for small
//     angles and rounds much less than c·x − s·y (measured: ‖VᴴV − I‖₂ 6× smaller at n = 32, float32).
//   - the matrix is first scaled by a power of two (exact) so that max|a_ij| ∈ [1/2, 1): squared
//     norms cannot overflow or underflow; eigenvalues are scaled back exactly.
//   - convergence: before each sweep, off(A)² = Σ_{i≠j} |a_ij|² is compared with tol²·‖A‖_F² (‖A‖_F
//     is invariant under the rotations, computed once). A pair with |a_pq| <= tol·‖A‖_F/n is not
//     rotated, a_pq is just set to 0: zeroing every such entry changes A by at most
//     tol·‖A‖_F·sqrt(n(n−1))/n < tol·‖A‖_F (Frobenius), which the stopping test accepts anyway, so
//     accuracy is unchanged. Without the skip, rounding-level entries between equal diagonal entries
//     (a degenerate cluster: θ ≈ 0, a 45° rotation) were rotated every sweep, mixing rows and
//     columns p, q wholesale, and such spectra converged only linearly. The test is normwise, like
//     the stopping test and the accuracy the tests require; the relative |a_pq| <= eps·sqrt(|a_pp
//     a_qq|) of high-relative-accuracy Jacobi would never skip within a cluster at eigenvalue 0.
//     A sweep cap bounds the work; a matrix that misses it (or holds NaN/Inf) gets sweeps[b] = −1,
//     so non-convergence is seen on the device. Measured on the strict emulator with FMA
//     contraction (profiling/results/jacobi-sweeps.md, 64 matrices per cell): at n = 32 random
//     matrices need <= 8 sweeps, exactly degenerate or tightly clustered spectra <= 16 (<= 37 before
//     the skip), far below the launcher's cap (MAX_SWEEPS, pmm_gpu/ops/jacobi.py).
//   - eigenvalues sorted ascending by a rank sort (n <= 32 comparisons per thread, NaN last);
//     eigenvectors are the columns of V in the numpy.linalg.eigh layout: V[b, :, j] is the j-th.
//   - the kernels write eigenvectors only as far as the caller needs them: k columns chosen in the
//     kernel by ops.eigh.select_indices' rule (select() below; k = n with "SA" is the full sorted V,
//     training; k = r selected for inference; k = 0 eigenvalues only), or none at all where the
//     outputs are computed in the same launch (jacobi_observable.cu).
// M is read from its lower triangle (numpy.linalg.eigh's default UPLO='L'); the diagonal's imaginary
// part is ignored.
//
// Template arguments: R the real type (float, double); S the element type, R or cplx<R>.
// Used by kernels/jacobi.cu and kernels/jacobi_observable.cu.
#pragma once
#include "cplx_ops.cuh"

#define JACOBI_NMAX 32           // largest n; the shared arrays are sized for it
#define JACOBI_MAX_THREADS 256   // largest blockDim.x (size of the reduction scratch)

namespace jac {

// Complex arithmetic (+, −, ·, conj_of, abs2): cplx_ops.cuh. Here only what the rotations need.
template <class R> __device__ __forceinline__ R absmax(R a) { return fabs(a); }
template <class R> __device__ __forceinline__ R absmax(cplx<R> a) {
  return fabs(a.re) > fabs(a.im) ? fabs(a.re) : fabs(a.im);
}
// a = g·ph with g = |a| >= 0 and |ph| = 1 (ph = 1 for a = 0), without squaring underflow. Near
// convergence a_pq is routinely tiny (denormal in float): the phase is taken from the components
// scaled to [−1, 1], never from a/|a| with a rounded denormal |a|, or the rotation is not unitary.
template <class R> __device__ __forceinline__ void polar(R a, R& g, R& ph) {
  g = fabs(a);
  ph = a < R(0) ? R(-1) : R(1);
}
template <class R> __device__ __forceinline__ void polar(cplx<R> a, R& g, cplx<R>& ph) {
  const R m = absmax(a);
  if (m == R(0)) {
    g = m;
    ph = {R(1), R(0)};
    return;
  }
  const R x = a.re / m, y = a.im / m, h = sqrt(x * x + y * y);
  g = m * h;
  ph = {x / h, y / h};
}
// x + s·(u − τ·x): every rotation update, in the form that rounds least (c = 1 − sτ, τ = s/(1+c)).
template <class R> __device__ __forceinline__ R step(R x, R u, R s, R tau) { return x + s * (u - tau * x); }
template <class R> __device__ __forceinline__ cplx<R> step(cplx<R> x, cplx<R> u, R s, R tau) {
  return {x.re + s * (u.re - tau * x.re), x.im + s * (u.im - tau * x.im)};
}
// One pair of entries under the rotation: x_p <- c x_p − s e x_q, x_q <- c x_q + s ē x_p (in the ``step``
// form). Rows p, q of Jᴴ A take the pair's phase e; columns p, q of A J and V J take its conjugate.
template <class R, class S>
__device__ __forceinline__ void rotate(S& xp, S& xq, S e, R s, R tau) {
  const S p = xp, q = xq;
  xp = step(p, -(e * q), s, tau);
  xq = step(q, conj_of(e) * p, s, tau);
}
template <class R> __device__ __forceinline__ R scale2(R a, int e) { return ldexp(a, e); }
template <class R> __device__ __forceinline__ cplx<R> scale2(cplx<R> a, int e) {
  return {ldexp(a.re, e), ldexp(a.im, e)};
}

// Strict weak order for the eigenvalue sort: NaN after everything, NaNs equivalent.
template <class R> __device__ __forceinline__ bool before(R a, R b) { return a < b || (a == a && b != b); }

// Pair k of round r of the circle method on m + 1 = 2·half indices: (r, m), ((r+k) mod m, (r−k) mod m).
__device__ __forceinline__ void pair(int r, int k, int m, int& p, int& q) {
  const int a = k == 0 ? r : (r + k) % m, b = k == 0 ? m : (r - k + m) % m;
  p = a < b ? a : b;
  q = a < b ? b : a;
}

template <class R, class S>
struct Smem {
  S A[JACOBI_NMAX][JACOBI_NMAX + 1];  // the matrix being diagonalised (padded rows)
  S V[JACOBI_NMAX][JACOBI_NMAX + 1];  // accumulated rotations
  S ph[JACOBI_NMAX / 2];              // per pair of the current round: the phase e = a_pq/|a_pq|,
  R s[JACOBI_NMAX / 2], tau[JACOBI_NMAX / 2];    // s and τ = s/(1 + c),
  R dpp[JACOBI_NMAX / 2], dqq[JACOBI_NMAX / 2];  // the new diagonal
  R red[JACOBI_MAX_THREADS];          // reduction scratch
  int perm[JACOBI_NMAX];              // perm[j]: the index of the j-th smallest eigenvalue
  R w[JACOBI_NMAX];                   // the eigenvalues, ascending (scaled back)
  int ord[JACOBI_NMAX];               // ord[j]: the position in w of the j-th by the selection key
  int sel[JACOBI_NMAX];               // sel[s]: the column of V of the s-th selected eigenvector
};

// Sum (or max) over the block of one value per thread; every thread gets the result.
template <bool MAX, class R>
__device__ R block_reduce(R v, R* red) {
  const int tid = threadIdx.x, nt = blockDim.x;
  red[tid] = v;
  __syncthreads();
  if (tid == 0) {
    R acc = red[0];
    for (int t = 1; t < nt; ++t) acc = MAX ? (red[t] > acc ? red[t] : acc) : acc + red[t];
    red[0] = acc;
  }
  __syncthreads();
  const R out = red[0];
  __syncthreads();  // red is reused by the next reduction
  return out;
}

// Diagonalise sh.A (n×n, Hermitian, loaded by every thread before the call without a barrier):
// sh.V the eigenvectors (unsorted columns), sh.perm the ascending order, sh.w the sorted
// eigenvalues, *sweeps the sweep count (−1: not converged). sh.A is free for reuse afterwards.
template <class R, class S>
__device__ void solve(Smem<R, S>& sh, int n, int max_sweeps, R tol, int* __restrict__ sweeps) {
  const int tid = threadIdx.x, nt = blockDim.x, half = (n + 1) / 2, m = 2 * half - 1;
  for (int e = tid; e < n * n; e += nt)
    sh.V[e / n][e % n] = make_elem<S>::of(R(e / n == e % n), R(0));
  __syncthreads();  // A loaded

  // Scale by a power of two: max|a_ij| -> [1/2, 1).
  R amax = R(0);
  for (int e = tid; e < n * n; e += nt) {
    const R a = absmax(sh.A[e / n][e % n]);
    amax = a > amax ? a : amax;
  }
  amax = block_reduce<true>(amax, sh.red);
  int ex = 0;
  if (amax > R(0) && amax == amax && amax - amax == R(0)) frexp(amax, &ex);
  R fro2 = R(0);
  for (int e = tid; e < n * n; e += nt) {
    const S a = scale2(sh.A[e / n][e % n], -ex);
    sh.A[e / n][e % n] = a;
    fro2 += abs2(a);
  }
  fro2 = block_reduce<false>(fro2, sh.red);  // its barriers also publish the scaled A
  const R bound = tol * tol * fro2;
  const R skip = tol * sqrt(fro2) / R(n);  // |a_pq| <= skip: no rotation, only a_pq := 0 (file head)

  int sweep = 0;
  bool converged = false;
  for (bool finite = fro2 - fro2 == R(0); finite;) {  // NaN/Inf: not converged, no sweeps
    R off2 = R(0);
    for (int e = tid; e < n * n; e += nt)
      if (e / n != e % n) off2 += abs2(sh.A[e / n][e % n]);
    off2 = block_reduce<false>(off2, sh.red);  // identical in every thread: uniform branches
    if (off2 <= bound) {
      converged = true;
      break;
    }
    if (sweep == max_sweeps) break;
    for (int r = 0; r < m; ++r) {
      // (1) rotations of this round's pairs.
      for (int k = tid; k < half; k += nt) {
        int p, q;
        pair(r, k, m, p, q);
        if (q >= n) continue;
        const S apq = sh.A[p][q];
        const R app = re_part(sh.A[p][p]), aqq = re_part(sh.A[q][q]);
        R g, s = R(0), tau = R(0), t = R(0);
        S ph;
        polar(apq, g, ph);
        if (g > skip) {
          const R theta = (aqq - app) / (R(2) * g);
          t = R(1) / (fabs(theta) + sqrt(theta * theta + R(1)));  // 0 if θ² overflows
          if (theta < R(0)) t = -t;
          const R c = R(1) / sqrt(t * t + R(1));
          s = t * c;
          tau = s / (R(1) + c);
        }
        sh.s[k] = s;
        sh.tau[k] = tau;
        sh.ph[k] = ph;
        sh.dpp[k] = app - t * g;
        sh.dqq[k] = aqq + t * g;
      }
      __syncthreads();
      // (2) rows p, q of A <- Jᴴ A:  a_pj' = c a_pj − s e a_qj,  a_qj' = c a_qj + s ē a_pj.
      for (int e = tid; e < half * n; e += nt) {
        const int k = e / n, j = e % n;
        int p, q;
        pair(r, k, m, p, q);
        if (q < n) rotate(sh.A[p][j], sh.A[q][j], sh.ph[k], sh.s[k], sh.tau[k]);
      }
      __syncthreads();
      // (3) columns p, q of A <- A J and V <- V J:  x_ip' = c x_ip − s ē x_iq,  x_iq' = c x_iq + s e x_ip.
      for (int e = tid; e < n * half; e += nt) {
        const int i = e / half, k = e % half;
        int p, q;
        pair(r, k, m, p, q);
        if (q >= n) continue;
        const R s = sh.s[k], tau = sh.tau[k];
        const S phb = conj_of(sh.ph[k]);
        if (i == p) {
          sh.A[p][p] = make_elem<S>::of(sh.dpp[k], R(0));
          sh.A[p][q] = zero_elem<S>();
        } else if (i == q) {
          sh.A[q][p] = zero_elem<S>();
          sh.A[q][q] = make_elem<S>::of(sh.dqq[k], R(0));
        } else {
          rotate(sh.A[i][p], sh.A[i][q], phb, s, tau);
        }
        rotate(sh.V[i][p], sh.V[i][q], phb, s, tau);
      }
      __syncthreads();
    }
    ++sweep;
  }

  // Rank sort of the diagonal (ties by index): sh.perm, sh.w.
  for (int i = tid; i < n; i += nt) {
    const R di = re_part(sh.A[i][i]);
    int rank = 0;
    for (int j = 0; j < n; ++j) {
      const R dj = re_part(sh.A[j][j]);
      rank += before(dj, di) || (!before(di, dj) && j < i);
    }
    sh.perm[rank] = i;
  }
  __syncthreads();
  for (int i = tid; i < n; i += nt) sh.w[i] = scale2(re_part(sh.A[sh.perm[i]][sh.perm[i]]), ex);
  if (tid == 0) *sweeps = converged ? sweep : -1;
  __syncthreads();
}

// The k eigenvectors that ops.eigh.select_indices(w, k, WHICH[which]) picks, in its order:
// sh.sel[s] = the column of sh.V of the s-th. which: 0 SA, 1 LA, 2 SM, 3 LM, 4 EA, 5 EM, 6 IA, 7 IM.
// The key is λ (*A: the ascending order itself) or |λ| (*M: a rank sort by (|λ|, position), which
// is numpy's stable argsort of |w|, NaN last); then S: the first k by the key, L: the last k,
// E: the first ⌈k/2⌉ and the last ⌊k/2⌋, I: k from position ⌊(n − k)/2⌋. Needs solve() first.
template <class R, class S>
__device__ void select(Smem<R, S>& sh, int n, int which, int k) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int letter = which < 4 ? (which & 1) : (which < 6 ? 2 : 3);  // S, L, E, I
  const bool mag = which < 4 ? which >= 2 : (which & 1);
  for (int i = tid; i < n; i += nt) {
    int rank = i;
    if (mag) {
      const R ai = fabs(sh.w[i]);
      rank = 0;
      for (int j = 0; j < n; ++j) {
        const R aj = fabs(sh.w[j]);
        rank += before(aj, ai) || (!before(ai, aj) && j < i);
      }
    }
    sh.ord[rank] = i;
  }
  __syncthreads();
  for (int s = tid; s < k; s += nt) {
    const int pos = letter == 0 ? s : letter == 1 ? n - k + s : letter == 2 ? (s < (k + 1) / 2 ? s : n - k + s)
                                                                            : (n - k) / 2 + s;
    sh.sel[s] = sh.perm[sh.ord[pos]];
  }
  __syncthreads();
}

// Coalesced writes of the eigenvalues w (n) and of the k selected eigenvectors Vk (n, k).
template <class R, class S>
__device__ void write(const Smem<R, S>& sh, int n, int k, R* __restrict__ w, S* __restrict__ Vk) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) w[i] = sh.w[i];
  for (int e = threadIdx.x; e < n * k; e += blockDim.x) Vk[e] = sh.V[e / k][sh.sel[e % k]];
  __syncthreads();  // shared memory is reused by the block's next matrix
}

// sh.A <- M (n×n, from its lower triangle; the diagonal's imaginary part dropped). No barrier.
template <class R, class S>
__device__ void load(Smem<R, S>& sh, const S* __restrict__ Mb, int n) {
  for (int e = threadIdx.x; e < n * n; e += blockDim.x) {
    const int i = e / n, j = e % n;
    if (i < j) continue;
    const S a = Mb[e];
    sh.A[i][j] = i == j ? make_elem<S>::of(re_part(a), R(0)) : a;
    sh.A[j][i] = conj_of(sh.A[i][j]);
  }
}

// sh.A <- M(x_b) = P_0 + Σ_i x_bi P_i from the packed primaries Pp (p + 1, P) (pmm_gpu/ops/assemble.py
// contract: X1 @ Pp, then assemble_forward), summed in order one entry at a time. No barrier.
template <class R, class S>
__device__ void load_assembled(Smem<R, S>& sh, const R* __restrict__ xb, const R* __restrict__ Pp, int n,
                               long long p) {
  const long long nn = (long long)n * n, T = (long long)n * (n + 1) / 2, P = is_cplx<S>::value ? nn : T;
  for (int e = threadIdx.x; e < nn; e += blockDim.x) {
    const int i = e / n, j = e % n;  // the lower entry (i, j) = the packed upper entry (j, i)
    if (i < j) continue;
    const long long ta = triu_start(j, n) + (i - j);  // int: at most n(n+1)/2
    R a = Pp[ta], im = R(0);
    for (long long k = 0; k < p; ++k) a += xb[k] * Pp[(k + 1) * P + ta];
    if (is_cplx<S>::value && i != j) {
      const long long tb = T + triu_start(j, n - 1) + (i - j - 1);
      im = Pp[tb];
      for (long long k = 0; k < p; ++k) im += xb[k] * Pp[(k + 1) * P + tb];
    }
    sh.A[j][i] = make_elem<S>::of(a, im);  // M_ji = a + i·b (j < i)
    sh.A[i][j] = make_elem<S>::of(a, -im);
  }
}

}  // namespace jac
