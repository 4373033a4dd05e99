// barrier_test.cu: a tiny shared-memory kernel that needs __syncthreads(), to prove that the
// emulation harness runs barriers and that its ThreadSanitizer build catches a missing one.
#include "common.cuh"

constexpr int MAX_BLOCK = 64;  // fixed-size shared memory, as the emulator requires

// y[b·bd + t] = x[b·bd + (t + 1) % bd]: rotate each block's slice by one through shared memory.
template <class T>
__global__ void rotate_block(const T* __restrict__ x,  // (N,), N = gridDim.x · blockDim.x
                             T* __restrict__ y) {      // (N,)
  __shared__ T s[MAX_BLOCK];
  const long long k = grid_index();
  s[threadIdx.x] = x[k];
  __syncthreads();  // every thread reads a slot written by its neighbour
  y[k] = s[(threadIdx.x + 1) % blockDim.x];
}

// The same without the barrier: a data race that the sanitizer test must report.
template <class T>
__global__ void rotate_block_racy(const T* __restrict__ x, T* __restrict__ y) {
  __shared__ T s[MAX_BLOCK];
  const long long k = grid_index();
  s[threadIdx.x] = x[k];
  y[k] = s[(threadIdx.x + 1) % blockDim.x];
}
