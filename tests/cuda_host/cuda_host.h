// A host-side stand-in for the CUDA runtime, so that the real kernels/*.cu sources compile with
// the system C++ compiler and run on the CPU in the test suite (tests/cuda_host/__init__.py).
//
// What it gives: threadIdx/blockIdx (one per OS thread), blockDim/gridDim, __syncthreads as a
// barrier among the threads of one block, one dynamic shared-memory buffer per block (filled
// with garbage before each block), the atomics the kernels use, the round-to-nearest float
// intrinsics, uint2/uint4. Every thread of a block is a real thread running concurrently; the
// blocks of a grid run one after another in the order the caller gives (shuffled by the tests).
// What it cannot find: memory-model bugs only a GPU shows (weak ordering across blocks, warp
// scheduling), launch failures, register or shared-memory limits, flush-to-zero.
#pragma once

#include <math.h>

#include <barrier>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __restrict__ __restrict

struct uint3 {
  unsigned int x, y, z;
};
struct uint2 {
  unsigned int x, y;
};
struct uint4 {
  unsigned int x, y, z, w;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline uint3 blockDim;
inline uint3 gridDim;

namespace emarray_host {
inline std::barrier<>* block_barrier = nullptr;
inline unsigned char* shared = nullptr;  // the kernel's extern __shared__ array
inline std::size_t shared_capacity = 0;
}  // namespace emarray_host

inline void __syncthreads() { emarray_host::block_barrier->arrive_and_wait(); }

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned int atomicMin(unsigned int* p, unsigned int v) {
  unsigned int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old &&
         !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// IEEE round-to-nearest, never fused (the library is built with -ffp-contract=off)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }

namespace emarray_host {

// "p4f": a pointer to 4-byte floats; "s8i": an 8-byte signed integer scalar
template <typename T> std::string code() {
  if constexpr (std::is_pointer_v<T>) {
    using E = std::remove_cv_t<std::remove_pointer_t<T>>;
    return "p" + std::to_string(sizeof(E)) +
           (std::is_floating_point_v<E> ? "f" : std::is_signed_v<E> ? "i" : "u");
  } else {
    return "s" + std::to_string(sizeof(T)) +
           (std::is_floating_point_v<T> ? "f" : std::is_signed_v<T> ? "i" : "u");
  }
}

template <typename F> struct Thunk;
template <typename... A> struct Thunk<void (*)(A...)> {
  template <void (*K)(A...), std::size_t... I>
  static void call_i(void** args, std::index_sequence<I...>) {
    K(*static_cast<std::decay_t<A>*>(args[I])...);
  }
  template <void (*K)(A...)> static void call(void** args) {
    call_i<K>(args, std::index_sequence_for<A...>{});
  }
  static std::string signature() {
    std::string s;
    ((s += code<std::decay_t<A>>() + ","), ...);
    return s;
  }
};

struct Entry {
  const char* name;
  void (*call)(void**);
  std::string signature;
};

// Run every block of the grid: `block` threads, each walking the blocks in `order`.
inline void launch(void (*call)(void**), void** args, unsigned grid, unsigned block,
                   std::size_t shared_bytes, const unsigned* order) {
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  std::barrier<> bar((std::ptrdiff_t)block);
  block_barrier = &bar;
  if (shared) std::memset(shared, 0xA5, shared_capacity);
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([=, &bar] {
      threadIdx = {t, 0, 0};
      for (unsigned g = 0; g < grid; ++g) {
        blockIdx = {order[g], 0, 0};
        call(args);
        bar.arrive_and_wait();  // the block is done
        if (t == 0 && shared) std::memset(shared, 0xA5, shared_capacity);  // garbage again
        bar.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  block_barrier = nullptr;
  (void)shared_bytes;
}

}  // namespace emarray_host

#define EMARRAY_HOST_ENTRY(...)                                                \
  emarray_host::Entry {                                                        \
    #__VA_ARGS__, &emarray_host::Thunk<decltype(&__VA_ARGS__)>::template call< \
                      &__VA_ARGS__>,                                           \
        emarray_host::Thunk<decltype(&__VA_ARGS__)>::signature()               \
  }
