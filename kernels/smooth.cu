// Separable Gaussian smoothing: one correlation along one axis of a z,y,x block per launch.
//
//   emarray_smooth_axis<T>(in, out, nz, ny, nx, axis, weights, radius):
//       out[z,y,x] = sum_{j=-r..r} w[j+r] * float(in[.. pos+j ..]) along `axis`, positions
//       past the block's edge reflected as SciPy's mode "reflect" (d c b a | a b c d), summed
//       in float32 from j = -r upwards with no fused multiply-add, so the NumPy twin in
//       emarray/ops/smooth.py gives the same floats. The engine grows each block by the
//       halo (r voxels per axis, read from the volume, reflected at the volume's edges), so
//       the reflection inside the block only ever touches voxels that are cropped away.
#include "common.cuh"

namespace emarray {
__device__ __forceinline__ index_t reflect_index(index_t p, index_t n) {
  const index_t period = 2 * n;
  index_t m = p % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}
}  // namespace emarray

template <typename T>
__global__ void emarray_smooth_axis(const T* __restrict__ in, float* __restrict__ out,
                                    emarray::index_t nz, emarray::index_t ny, emarray::index_t nx,
                                    int axis, const float* __restrict__ w, int radius) {
  const emarray::index_t n = nz * ny * nx;
  const emarray::index_t stride = emarray::grid_stride();
  const emarray::index_t len = axis == 0 ? nz : (axis == 1 ? ny : nx);
  const emarray::index_t step = axis == 0 ? ny * nx : (axis == 1 ? nx : 1);
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride) {
    const emarray::index_t pos = (i / step) % len;
    const T* line = in + (i - pos * step);
    float acc = 0.0f;
    for (int j = -radius; j <= radius; ++j) {
      const emarray::index_t p = emarray::reflect_index(pos + j, len);
      acc = __fadd_rn(acc, __fmul_rn(w[j + radius], (float)line[p * step]));
    }
    out[i] = acc;
  }
}
