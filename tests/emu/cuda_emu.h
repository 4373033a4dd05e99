// cuda_emu.h: run CUDA kernels on the CPU, for tests (DESIGN.md §4).
//
// Include this, then the .cu file, and compile with g++ -std=c++20. The execution model:
//   - blocks run one at a time, in order; every thread of a block is a real std::thread;
//   - threadIdx / blockIdx / blockDim / gridDim are thread-locals set before the kernel body runs;
//   - __syncthreads() is a std::barrier over the block's threads;
//   - __shared__ is `static`: one copy per kernel instantiation, which is per-block storage because
//     blocks never overlap (contents do not survive between blocks on a GPU either).
// Warp intrinsics, atomics and dynamic (extern) shared memory are not emulated; kernels that need
// them must first extend this header. Build with -fsanitize=thread to find missing barriers.
#pragma once

#include <barrier>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
// __restrict__ is a GNU extension keyword already.

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
using uint3 = dim3;

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

inline std::barrier<>* block_barrier = nullptr;  // the running block's barrier

// Run `kernel` (a closure calling the kernel with its arguments) over grid × block.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  const unsigned nthreads = block.x * block.y * block.z;
  std::barrier<> barrier(nthreads);
  block_barrier = &barrier;
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (unsigned t = 0; t < nthreads; ++t)
          threads.emplace_back([&, bx, by, bz, t] {
            gridDim = grid;
            blockDim = block;
            blockIdx = {bx, by, bz};
            threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
            kernel();
          });
        for (auto& th : threads) th.join();
        threads.clear();
      }
  block_barrier = nullptr;
}

}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

// The CUDA math library functions the kernels use (float and double overloads, like CUDA's).
using std::abs;
using std::exp;
using std::fabs;
using std::fma;
using std::frexp;
using std::ldexp;
using std::log;
using std::sqrt;
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
