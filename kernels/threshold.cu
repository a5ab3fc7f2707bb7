// Threshold family: out[i] = in[i] > t (OP 0), >= t (OP 1), < t (OP 2) or <= t (OP 3), as
// uint8 0/1 (NaN gives 0 for every OP).
//
// Instantiated by name expression, e.g. "emarray_threshold<float, 0>". Grid-stride loops with
// 64-bit indices. When `aligned` is set (input 16-byte aligned, output aligned to one vector
// of bytes), each thread loads EMARRAY_VEC_BYTES of input at once and stores its bytes as one
// word; the remainder (n not a multiple of the vector) is done element by element.
#include "common.cuh"

template <typename T, int OP>
__device__ __forceinline__ unsigned char emarray_cmp(T x, T t) {
  return OP == 0 ? (unsigned char)(x > t)
       : OP == 1 ? (unsigned char)(x >= t)
       : OP == 2 ? (unsigned char)(x < t)
                 : (unsigned char)(x <= t);
}

template <typename T, int OP>
__global__ void emarray_threshold(const T* __restrict__ in, unsigned char* __restrict__ out,
                                  emarray::index_t n, T t, int aligned) {
  using emarray::index_t;
  const int V = emarray::Vec<T>::n;
  const index_t stride = emarray::grid_stride();
  index_t done = 0;
  if (aligned) {
    const index_t nv = n / V;
    const uint4* in_v = reinterpret_cast<const uint4*>(in);
    typedef typename emarray::Word<V>::type word_t;
    word_t* out_v = reinterpret_cast<word_t*>(out);
    for (index_t i = emarray::global_thread(); i < nv; i += stride) {
      union { uint4 v; T e[V]; } a;
      a.v = in_v[i];
      union { word_t w; unsigned char b[V]; } r;
#pragma unroll
      for (int k = 0; k < V; ++k) r.b[k] = emarray_cmp<T, OP>(a.e[k], t);
      out_v[i] = r.w;
    }
    done = nv * V;
  }
  for (index_t i = done + emarray::global_thread(); i < n; i += stride) {
    out[i] = emarray_cmp<T, OP>(in[i], t);
  }
}
