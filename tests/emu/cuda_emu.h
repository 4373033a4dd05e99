// cuda_emu.h: run CUDA kernels on the CPU, for tests (docs/DESIGN.md §4).
//
// Include this, then the .cu file, and compile with g++ -std=c++20 (tests/emulator.py does). The
// execution model, stricter than a GPU wherever a GPU leaves behaviour undefined:
//   - every thread of a block is a real std::thread; threadIdx / blockIdx / blockDim / gridDim are
//     thread-locals set before the kernel body runs;
//   - blocks run one at a time per loaded copy of the library, in an order shuffled by a seed
//     (Config::seed); tests/emulator.py may load several copies of one library (distinct files:
//     distinct static storage) and run disjoint sets of blocks concurrently (Config::part/parts);
//   - __shared__ is `static`: one copy per kernel instantiation (per library copy), which is
//     per-block storage because the blocks of one copy never overlap. Before every block the
//     shared variables (found by tests/emulator.py in the library's symbol table and registered
//     with emu_set_shared) are filled with a poison byte (0xFF: NaN in float and double, −1 in
//     int), so a read of shared memory before any write in the same block shows;
//   - __syncthreads() is a barrier that records its call site (__FILE__, __LINE__): all threads of
//     the block must reach it from the same site, and none may have exited. Otherwise the block
//     fails with a message (barrier divergence), every thread unwinds, and the launch returns 1
//     (tests/emulator.py raises KernelError): a divergent barrier neither hangs nor passes silently
//     (a thread that never returns, e.g. an endless loop, still hangs the launch);
//   - launch limits of sm_80/sm_90: at most 1024 threads per block (z <= 64), grid y, z <= 65535.
//     The 48 KiB static shared memory limit is checked per kernel by tests/emulator.py (sizes of
//     the shared variables in the symbol table).
// Warp intrinsics, atomics and dynamic (extern) shared memory are not emulated; kernels that need
// them must first extend this header. Build with -fsanitize=thread to find missing barriers.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// `used`: kept and never constant-folded even if the code seems never to write it (it is poisoned).
#define __shared__ static __attribute__((used))
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define EMU_EXPORT extern "C" __attribute__((visibility("default")))
// __restrict__ is a GNU extension keyword already.

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
using uint3 = dim3;

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

// Per-launch settings from tests/emulator.py (a ctypes.Structure of the same layout).
struct Config {
  std::uint64_t seed;  // block order: 0 in order, else a permutation drawn with this seed
  int poison;          // byte written over all shared memory before every block; < 0: off
  unsigned part;       // this copy runs the blocks order[part], order[part + parts], ...
  unsigned parts;
};

// The shared variables of this library (address, size), registered by emu_set_shared.
inline std::vector<std::pair<char*, std::size_t>> shared_vars;
inline std::string last_error;  // why the last launch failed

struct Unwind {};  // thrown in every thread of a failed block, caught at the thread's top

inline const char* basename(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

// The block's barrier, checking that every thread arrives from the same call site.
class Block {
 public:
  explicit Block(unsigned nthreads) : n_(nthreads) {}

  void sync(const char* file, int line) {
    unsigned long gen;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (failed_) throw Unwind{};
      bool found = false;
      for (auto& s : sites_)
        if (s.line == line && std::strcmp(s.file, file) == 0) {
          ++s.count;
          found = true;
        }
      if (!found) sites_.push_back({file, line, 1});
      ++arrived_;
      gen = gen_.load(std::memory_order_relaxed);
      if (arrived_ + exited_ == n_) {
        complete();
        if (failed_) throw Unwind{};
        return;
      }
    }
    // Wait for the phase to end without the mutex (a futex wait): waking every thread through a
    // condition variable would make them queue for the mutex again.
    gen_.wait(gen, std::memory_order_acquire);
    if (failed_) throw Unwind{};
  }

  // A thread returned from the kernel (or unwound).
  void exit() {
    std::lock_guard<std::mutex> lk(mu_);
    ++exited_;
    if (arrived_ > 0 && arrived_ + exited_ == n_) complete();
  }

  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!failed_) message_ = why;
    failed_ = true;
    release();
  }

  bool failed() const { return failed_; }
  const std::string& message() const { return message_; }

 private:
  struct Site {
    const char* file;
    int line;
    unsigned count;
  };

  // Every live thread is at a barrier: release them, failing the block on divergence. Holds mu_.
  void complete() {
    if (sites_.size() > 1 || exited_ > 0) {
      std::string why = "barrier divergence: __syncthreads() reached";
      for (const auto& s : sites_)
        why += (&s == &sites_[0] ? " " : ", ") + std::string("at ") + basename(s.file) + ":" +
               std::to_string(s.line) + " by " + std::to_string(s.count) + " thread(s)";
      if (exited_ > 0) why += ", while " + std::to_string(exited_) + " thread(s) had exited";
      why += " (" + std::to_string(n_) + " threads in the block)";
      if (!failed_) message_ = why;
      failed_ = true;
    }
    arrived_ = 0;
    sites_.clear();
    release();
  }

  void release() {  // holds mu_
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
  }

  const unsigned n_;
  std::mutex mu_;
  unsigned arrived_ = 0, exited_ = 0;  // guarded by mu_
  std::atomic<unsigned long> gen_{0};  // phase; changes when a phase ends or the block fails
  std::atomic<bool> failed_{false};
  std::vector<Site> sites_;
  std::string message_;
};

inline thread_local Block* this_block = nullptr;

inline void syncthreads(const char* file, int line) { this_block->sync(file, line); }

// Run `kernel` (a closure calling the kernel with its arguments) over grid × block: 0 on success,
// 1 with last_error set when a limit is exceeded or a block fails.
inline int launch(const Config& cfg, dim3 grid, dim3 block, const std::function<void()>& kernel) {
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  last_error.clear();
  if (nthreads == 0 || nthreads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x > 0x7FFFFFFFu ||
      grid.y > 65535 || grid.z > 65535) {
    last_error = "launch configuration exceeds the sm_80/sm_90 limits (<= 1024 threads per block, block.z <= 64, "
                 "grid.y, grid.z <= 65535): grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                 ", " + std::to_string(grid.z) + "), block (" + std::to_string(block.x) + ", " +
                 std::to_string(block.y) + ", " + std::to_string(block.z) + ")";
    return 1;
  }
  std::vector<unsigned long long> order(nblocks);
  for (unsigned long long i = 0; i < nblocks; ++i) order[i] = i;
  if (cfg.seed) {  // Fisher–Yates with a fixed generator: the same order in every library copy
    std::mt19937_64 rng(cfg.seed);
    for (unsigned long long i = nblocks; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  }
  const unsigned parts = cfg.parts ? cfg.parts : 1;
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned long long idx = cfg.part; idx < nblocks; idx += parts) {
    const unsigned long long lin = order[idx];
    const dim3 bid = {unsigned(lin % grid.x), unsigned(lin / grid.x % grid.y), unsigned(lin / grid.x / grid.y)};
    if (cfg.poison >= 0)
      for (const auto& [ptr, size] : shared_vars) std::memset(ptr, cfg.poison, size);
    Block blk{unsigned(nthreads)};
    for (unsigned t = 0; t < nthreads; ++t)
      threads.emplace_back([&, t] {
        gridDim = grid;
        blockDim = block;
        blockIdx = bid;
        threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        this_block = &blk;
        try {
          kernel();
        } catch (const Unwind&) {
        } catch (const std::exception& e) {
          blk.fail(std::string("exception in a kernel thread: ") + e.what());
        }
        blk.exit();
        this_block = nullptr;
      });
    for (auto& th : threads) th.join();
    threads.clear();
    if (blk.failed()) {
      last_error = "block (" + std::to_string(bid.x) + ", " + std::to_string(bid.y) + ", " + std::to_string(bid.z) +
                   "): " + blk.message();
      return 1;
    }
  }
  return 0;
}

}  // namespace emu

EMU_EXPORT const char* emu_last_error() { return emu::last_error.c_str(); }

// Register the shared variables (absolute addresses and sizes), replacing any earlier list.
EMU_EXPORT void emu_set_shared(const std::uint64_t* addr, const std::uint64_t* size, int count) {
  emu::shared_vars.clear();
  for (int i = 0; i < count; ++i) emu::shared_vars.emplace_back(reinterpret_cast<char*>(addr[i]), size[i]);
}

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
