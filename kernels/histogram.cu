// Sweep histograms: per-block shared-memory (bucket x class) counts, merged into global memory.
//
//   emarray_bucket_hist<T>: bucket = number of sorted thresholds ts[0..K) strictly below x
//       (binary search over ts); NaN voxels go to nan[cls]. For float maps.
//   emarray_level_hist<T>:  bucket = x itself (one bucket per level), for uint8/uint16 maps.
//
// cls[i] is 0 (negative), 1 (positive) or 2 (not counted). hist holds nbins * 3 counters.
// With use_shared set, the launch passes nbins * 3 * 4 bytes of dynamic shared memory and each
// block counts there first (fast atomics), then adds its counts to hist once.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ bool emarray_is_nan(T v) { return v != v; }

template <typename T>
__global__ void emarray_bucket_hist(const T* __restrict__ x, const unsigned char* __restrict__ cls,
                                    emarray::index_t n, const T* __restrict__ ts, int K,
                                    unsigned long long* __restrict__ hist,
                                    unsigned long long* __restrict__ nan, int use_shared) {
  extern __shared__ unsigned int emarray_sh[];
  const int nb = (K + 1) * 3;
  if (use_shared) {
    for (int i = threadIdx.x; i < nb; i += blockDim.x) emarray_sh[i] = 0u;
    __syncthreads();
  }
  const emarray::index_t stride = emarray::grid_stride();
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride) {
    const T v = x[i];
    const int c = cls[i];
    if (emarray_is_nan(v)) {
      atomicAdd(&nan[c], 1ULL);
      continue;
    }
    int lo = 0, hi = K;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (ts[mid] < v) lo = mid + 1; else hi = mid;
    }
    if (use_shared) atomicAdd(&emarray_sh[lo * 3 + c], 1u);
    else atomicAdd(&hist[lo * 3 + c], 1ULL);
  }
  if (use_shared) {
    __syncthreads();
    for (int i = threadIdx.x; i < nb; i += blockDim.x) {
      if (emarray_sh[i]) atomicAdd(&hist[i], (unsigned long long)emarray_sh[i]);
    }
  }
}

template <typename T>
__global__ void emarray_level_hist(const T* __restrict__ x, const unsigned char* __restrict__ cls,
                                   emarray::index_t n, int levels,
                                   unsigned long long* __restrict__ hist, int use_shared) {
  extern __shared__ unsigned int emarray_sh[];
  const int nb = levels * 3;
  if (use_shared) {
    for (int i = threadIdx.x; i < nb; i += blockDim.x) emarray_sh[i] = 0u;
    __syncthreads();
  }
  const emarray::index_t stride = emarray::grid_stride();
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride) {
    const int b = (int)x[i] * 3 + cls[i];
    if (use_shared) atomicAdd(&emarray_sh[b], 1u);
    else atomicAdd(&hist[b], 1ULL);
  }
  if (use_shared) {
    __syncthreads();
    for (int i = threadIdx.x; i < nb; i += blockDim.x) {
      if (emarray_sh[i]) atomicAdd(&hist[i], (unsigned long long)emarray_sh[i]);
    }
  }
}
