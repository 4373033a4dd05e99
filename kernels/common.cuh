// common.cuh: the plain complex type and index helpers shared by the pmm_gpu kernels.
//
// Kept free of CUDA headers and of the standard library so that one source compiles three ways:
// NVRTC (cupy.RawModule), nvcc, and g++ through tests/emu/cuda_emu.h (DESIGN.md §4).
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
