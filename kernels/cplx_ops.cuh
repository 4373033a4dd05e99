// cplx_ops.cuh: arithmetic on the element types of common.cuh (real T or cplx<T>), so that one
// kernel body serves the real and the complex field. Free of CUDA and standard headers, like
// common.cuh, so the emulation harness compiles it with g++.
#pragma once
#include "common.cuh"

template <class T> __device__ __host__ __forceinline__ cplx<T> operator+(cplx<T> a, cplx<T> b) {
  return {a.re + b.re, a.im + b.im};
}
template <class T> __device__ __host__ __forceinline__ cplx<T> operator-(cplx<T> a, cplx<T> b) {
  return {a.re - b.re, a.im - b.im};
}
template <class T> __device__ __host__ __forceinline__ cplx<T> operator*(cplx<T> a, cplx<T> b) {
  return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
template <class T> __device__ __host__ __forceinline__ cplx<T> operator*(T s, cplx<T> a) {
  return {s * a.re, s * a.im};
}
template <class T> __device__ __host__ __forceinline__ cplx<T> operator-(cplx<T> a) { return {-a.re, -a.im}; }

// Complex conjugate (identity on reals), and conj(a)·b, the term of a Hermitian inner product.
template <class T> __device__ __host__ __forceinline__ T conj_of(T a) { return a; }
template <class T> __device__ __host__ __forceinline__ cplx<T> conj_of(cplx<T> a) { return {a.re, -a.im}; }
template <class S> __device__ __host__ __forceinline__ S conj_mul(S a, S b) { return conj_of(a) * b; }

// |a|² as a real.
template <class T> __device__ __host__ __forceinline__ T abs2(T a) { return a * a; }
template <class T> __device__ __host__ __forceinline__ T abs2(cplx<T> a) { return a.re * a.re + a.im * a.im; }

// The zero element.
template <class S> __device__ __host__ __forceinline__ S zero_elem() { return make_elem<S>::of(0, 0); }
