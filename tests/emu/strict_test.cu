// strict_test.cu: tiny kernels with the bugs the strict emulator (cuda_emu.h) must expose, and two
// probes of its execution model (tests/test_emulator_strict.py). Compiled by the emulator only.
#include <chrono>
#include <thread>

#include "common.cuh"

constexpr int MAX_BLOCK = 64;  // fixed-size shared memory, as the emulator requires

// Bug: blocks other than 0 read shared memory that only block 0 wrote (stale on an emulator that
// keeps it between blocks; garbage on a GPU). y[b·bd + t] should be x[t] for every block.
template <class T>
__global__ void stale_shared(const T* __restrict__ x,  // (blockDim.x,)
                             T* __restrict__ y) {      // (gridDim.x · blockDim.x,)
  __shared__ T s[MAX_BLOCK];
  if (blockIdx.x == 0) s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[grid_index()] = s[threadIdx.x];
}

// Bug: thread 0 sums all MAX_BLOCK slots, but only blockDim.x of them are written (zero on an
// emulator with zero-initialised statics). y[b] should be the sum of the block's slice of x.
template <class T>
__global__ void sum_unwritten(const T* __restrict__ x,  // (gridDim.x · blockDim.x,)
                              T* __restrict__ y) {      // (gridDim.x,)
  __shared__ T s[MAX_BLOCK];
  s[threadIdx.x] = x[grid_index()];
  __syncthreads();
  if (threadIdx.x == 0) {
    T acc = T(0);
    for (int t = 0; t < MAX_BLOCK; ++t) acc += s[t];
    y[blockIdx.x] = acc;
  }
}

// Bug: odd and even threads reach different __syncthreads() (a std::barrier counts both as one).
template <class T>
__global__ void divergent_barrier(const T* __restrict__ x, T* __restrict__ y) {
  __shared__ T s[MAX_BLOCK];
  s[threadIdx.x] = x[grid_index()];
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
  y[grid_index()] = s[(threadIdx.x + 1) % blockDim.x];
}

// Bug: the upper half of the block returns early; the rest then waits at a barrier.
template <class T>
__global__ void exit_before_barrier(const T* __restrict__ x, T* __restrict__ y) {
  __shared__ T s[MAX_BLOCK];
  if (threadIdx.x >= blockDim.x / 2) return;
  s[threadIdx.x] = x[grid_index()];
  __syncthreads();
  y[grid_index()] = s[(threadIdx.x + 1) % (blockDim.x / 2)];
}

// Too much static shared memory for sm_80/sm_90 (48 KiB + one element).
template <class T>
__global__ void too_much_shared(const T* __restrict__ x, T* __restrict__ y) {
  __shared__ T big[48 * 1024 / sizeof(T) + 1];
  big[threadIdx.x] = x[grid_index()];
  __syncthreads();
  y[grid_index()] = big[threadIdx.x];
}

// Probe of the block order (blocks have none on a GPU): thread 0 of block b writes the index of the
// block that ran before it, held in last[0] (−1 before the first), and replaces it with b.
template <class T>
__global__ void block_order(T* __restrict__ last,  // (1,)
                            T* __restrict__ y) {   // (gridDim.x,)
  if (threadIdx.x == 0) {
    y[blockIdx.x] = last[0];
    last[0] = T(blockIdx.x);
  }
}

// Probe of concurrent blocks (a grid of 2): each block keeps its index in shared memory, raises its
// flag and waits up to flags[2] seconds for the other block's; then y[b] = its shared value, or −1
// if the other block never came. y = (0, 1) needs both blocks alive at once, each with its own
// shared memory.
template <class T>
__global__ void handshake(T* __restrict__ flags,  // (3,): two flags, then the wait limit in seconds
                          T* __restrict__ y) {    // (2,)
  __shared__ T s[1];
  if (threadIdx.x == 0) {
    s[0] = T(blockIdx.x);
    volatile T* f = flags;
    f[blockIdx.x] = T(1);
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(f[2]);
    while (f[1 - blockIdx.x] == T(0) && std::chrono::steady_clock::now() < end) std::this_thread::yield();
    y[blockIdx.x] = f[1 - blockIdx.x] == T(0) ? T(-1) : s[0];
  }
}
