// Pooling family: one output voxel per thread, windows of 2x2x2 (FZ = 2) or 1x2x2 (FZ = 1).
//
//   emarray_pool<T, MODE, FZ>(in, out, nz, ny, nx, oz, oy, ox):
//       MODE 0 (mean): the mean of the window's voxels that exist (an odd edge's last window
//       is pooled alone); integers floor(sum / count) summed in 64 bits, floats summed in
//       double in z,y,x order and rounded once. MODE 1 (mode): the most frequent value of
//       the window, ties to the value met first in z,y,x order. The NumPy twin is
//       emarray.ops.pool.pool_twin.
#include "common.cuh"

namespace emarray {
template <typename T> struct Accum { typedef long long type; };
template <> struct Accum<float> { typedef double type; };
template <> struct Accum<double> { typedef double type; };

template <typename A> __device__ __forceinline__ A mean_of(A sum, int count) {
  // floor division for integers (also for negative sums)
  A q = sum / count;
  if ((sum % count != 0) && ((sum < 0) != (count < 0))) q -= 1;
  return q;
}
template <> __device__ __forceinline__ double mean_of<double>(double sum, int count) {
  return sum / count;
}
}  // namespace emarray

template <typename T, int MODE, int FZ>
__global__ void emarray_pool(const T* __restrict__ in, T* __restrict__ out, emarray::index_t nz,
                             emarray::index_t ny, emarray::index_t nx, emarray::index_t oz,
                             emarray::index_t oy, emarray::index_t ox) {
  const emarray::index_t n = oz * oy * ox;
  const emarray::index_t stride = emarray::grid_stride();
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride) {
    const emarray::index_t x = i % ox;
    const emarray::index_t y = (i / ox) % oy;
    const emarray::index_t z = i / (ox * oy);
    T v[FZ * 4];
    int count = 0;
    for (int dz = 0; dz < FZ; ++dz) {
      const emarray::index_t zz = z * FZ + dz;
      if (zz >= nz) continue;
      for (int dy = 0; dy < 2; ++dy) {
        const emarray::index_t yy = y * 2 + dy;
        if (yy >= ny) continue;
        for (int dx = 0; dx < 2; ++dx) {
          const emarray::index_t xx = x * 2 + dx;
          if (xx >= nx) continue;
          v[count++] = in[(zz * ny + yy) * nx + xx];
        }
      }
    }
    if (MODE == 0) {
      typename emarray::Accum<T>::type sum = 0;
      for (int k = 0; k < count; ++k) sum += (typename emarray::Accum<T>::type)v[k];
      out[i] = (T)emarray::mean_of(sum, count);
    } else {
      int best = 0, best_count = 0;
      for (int k = 0; k < count; ++k) {
        int c = 0;
        for (int m = 0; m < count; ++m) c += v[m] == v[k];
        if (c > best_count) {
          best_count = c;
          best = k;
        }
      }
      out[i] = v[best];
    }
  }
}
