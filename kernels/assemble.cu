// assemble.cu: packed real parameters <-> batches of real-symmetric / complex-Hermitian matrices.
//
// Contract (pmm_gpu/ops/assemble.py holds the NumPy reference): per sample b, Mp[b] has P real entries,
//   a_t   t < T = n(n+1)/2: upper triangle i <= j, row-major         M_ij = M_ji = a_t
//   b_u   u < n(n-1)/2 (complex field only, P = n²): strict upper i < j, row-major
//                                                                    M_ij = a + i·b,  M_ji = a − i·b
// and M is the C-contiguous (B, n, n) batch the eigensolver reads.
//
// Template arguments: R is the real type (float, double); S the matrix element type, R for the real
// field and cplx<R> for the complex field.
#include "common.cuh"

// Inverse of t = triu_start(i, n) + (j − i) (common.cuh): the row solves i² − (2n+1)i + 2t = 0; the
// square root is rounded, so the integer fix-ups make the result exact. I: the index type.
template <class I>
__device__ __forceinline__ void triu_decode(I t, I n, I& i, I& j) {
  const double c = 2.0 * n + 1.0;
  i = (I)((c - sqrt(c * c - 8.0 * t)) / 2);
  while (i > 0 && triu_start(i, n) > t) --i;
  while (triu_start(I(i + 1), n) <= t) ++i;
  j = i + (t - triu_start(i, n));
}

// M (B, n, n) from Mp (B, P); one thread per element of M, so each packed entry is read twice and
// every write is coalesced.
template <class R, class S>
__global__ void assemble_forward(const R* __restrict__ Mp,  // (B, P)
                                 S* __restrict__ M,         // (B, n, n)
                                 long long B, long long n) {
  const long long nn = n * n, T = n * (n + 1) / 2;
  const long long P = is_cplx<S>::value ? nn : T;
  grid_stride_for(B * nn, [&](auto e) {
    using I = decltype(e);  // unsigned or long long (common.cuh)
    const I b = e / I(nn), i = e % I(nn) / I(n), j = e % I(n);
    const I lo = i < j ? i : j, hi = i < j ? j : i;  // the stored (upper) entry
    const R* p = Mp + b * P;
    const R a = p[triu_start(lo, I(n)) + (hi - lo)];
    R im = R(0);
    if (is_cplx<S>::value && lo != hi) {
      // Strict upper triangle of n = upper triangle of n − 1 with j shifted by one.
      const R bij = p[T + triu_start(lo, I(n - 1)) + (hi - lo - 1)];
      im = i < j ? bij : -bij;
    }
    M[e] = make_elem<S>::of(a, im);
  });
}

// Adjoint under dL = Re tr(Āᴴ dM): grad (B, P) from Ā (B, n, n), one thread per packed entry,
//   ∂L/∂a_ii = Re Ā_ii,   ∂L/∂a_ij = Re(Ā_ij + Ā_ji),   ∂L/∂b_ij = Im(Ā_ij − Ā_ji)   (i < j).
template <class R, class S>
__global__ void assemble_backward(const S* __restrict__ Abar,  // (B, n, n)
                                  R* __restrict__ grad,        // (B, P)
                                  long long B, long long n) {
  const long long nn = n * n, T = n * (n + 1) / 2;
  const long long P = is_cplx<S>::value ? nn : T;
  grid_stride_for(B * P, [&](auto e) {
    using I = decltype(e);
    const I b = e / I(P), q = e % I(P);
    const S* A = Abar + b * nn;
    I i, j;
    R g;
    if (q < I(T)) {
      triu_decode(q, I(n), i, j);
      g = re_part(A[i * n + j]);
      if (i != j) g += re_part(A[j * n + i]);  // the diagonal appears once in M
    } else {
      triu_decode(I(q - I(T)), I(n - 1), i, j);
      ++j;
      g = im_part(A[i * n + j]) - im_part(A[j * n + i]);
    }
    grad[e] = g;
  });
}
