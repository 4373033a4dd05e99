// common.cuh: the plain complex type and the index helpers shared by the pmm_gpu kernels.
//
// Kept free of CUDA headers and of the standard library so that one source compiles three ways:
// NVRTC (cupy.RawModule), nvcc, and g++ through tests/emu/cuda_emu.h (docs/DESIGN.md §4).
#pragma once

// Layout-compatible with numpy complex64 / complex128 (two packed reals, real part first). The
// alignment lets the GPU move one element with a single 8- or 16-byte load; numpy and CuPy buffers
// are at least that aligned.
template <class T>
struct alignas(2 * sizeof(T)) cplx {
  T re, im;
};

// is_cplx<S>::value: whether the element type S belongs to the complex field.
template <class T> struct is_cplx { static constexpr bool value = false; };
template <class T> struct is_cplx<cplx<T>> { static constexpr bool value = true; };

// Real and imaginary parts, so that one kernel body serves the real and the complex field.
template <class T> __device__ __host__ __forceinline__ T re_part(T a) { return a; }
template <class T> __device__ __host__ __forceinline__ T im_part(T) { return T(0); }
template <class T> __device__ __host__ __forceinline__ T re_part(cplx<T> a) { return a.re; }
template <class T> __device__ __host__ __forceinline__ T im_part(cplx<T> a) { return a.im; }

// Build an element from (re, im); the imaginary part is dropped for a real element type.
template <class S> struct make_elem {
  template <class T> __device__ __host__ static S of(T re, T) { return S(re); }
};
template <class T> struct make_elem<cplx<T>> {
  __device__ __host__ static cplx<T> of(T re, T im) { return {re, im}; }
};

// Global index of this thread and the grid-wide stride, in 64 bits (B·n² overflows 32 bits).
__device__ __forceinline__ long long grid_index() {
  return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() { return (long long)blockDim.x * gridDim.x; }

// Grid-stride loop over [0, N): f(e) for each of this thread's e. e is an `unsigned` when N plus one
// grid stride fits in 32 bits (e + stride never wraps), else a `long long`: the element-wise kernels
// split e by integer division, which a GPU emulates in ~20 instructions in 32 bits and several times
// that in 64 (issue 12). f is a generic lambda, so its body is compiled for both index types and
// computes the same values in either; it should keep products that may pass 2^32 (offsets of
// whole batches) in long long, e.g. by multiplying with a long long size. PMM_INDEX64 forces the
// 64-bit path (the tests compare the two).
template <class F>
__device__ __forceinline__ void grid_stride_for(long long N, F f) {
#ifndef PMM_INDEX64
  if (N + grid_stride() <= 0xFFFFFFFFLL) {
    for (unsigned e = (unsigned)grid_index(); e < (unsigned)N; e += (unsigned)grid_stride()) f(e);
    return;
  }
#endif
  for (long long e = grid_index(); e < N; e += grid_stride()) f(e);
}

// Offset of row i in the row-major upper triangle (diagonal included) of an n×n matrix: rows r < i
// hold n − r entries each. I: an integer type holding n(n+1)/2 (int, unsigned, long long).
template <class I>
__device__ __forceinline__ I triu_start(I i, I n) {
  return i * n - i * (i - 1) / 2;
}
