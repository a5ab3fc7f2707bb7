// Conversion family: clip-and-rescale to uint8.
//
//   emarray_rescale_u8<T>(in, out, n, offset, scale): out = clip(rint(float(x) * scale - offset), 0, 255),
//       NaN -> 0. Arithmetic is float32, mul then sub (no fused multiply-add), so the NumPy
//       twin in emarray/ops/convert.py gives identical bytes. Scaling first keeps every
//       intermediate finite for any range float32 can hold (x - lo could overflow).
#include "common.cuh"

template <typename T>
__global__ void emarray_rescale_u8(const T* __restrict__ in, unsigned char* __restrict__ out,
                                   emarray::index_t n, float offset, float scale) {
  const emarray::index_t stride = emarray::grid_stride();
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride) {
    const float d = __fmul_rn((float)in[i], scale);
    float v = __fsub_rn(d, offset);
    v = rintf(v);
    v = v != v ? 0.0f : fminf(fmaxf(v, 0.0f), 255.0f);
    out[i] = (unsigned char)v;
  }
}
