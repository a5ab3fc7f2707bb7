// Shared helpers of emarray's elementwise kernels. NVRTC-friendly: no standard headers.
#pragma once

#ifndef EMARRAY_VEC_BYTES
#define EMARRAY_VEC_BYTES 16  // width of one vector load, in bytes
#endif

namespace emarray {

typedef long long index_t;  // 64-bit indexing: volumes above 2^31 elements

// An unsigned word of N bytes, for vector stores of the byte outputs.
template <int N> struct Word;
template <> struct Word<16> { typedef uint4 type; };
template <> struct Word<8> { typedef uint2 type; };
template <> struct Word<4> { typedef unsigned int type; };
template <> struct Word<2> { typedef unsigned short type; };
template <> struct Word<1> { typedef unsigned char type; };

// Number of T elements one vector load of EMARRAY_VEC_BYTES carries.
template <typename T> struct Vec {
  static const int n = EMARRAY_VEC_BYTES / sizeof(T);
};

__device__ __forceinline__ index_t global_thread() {
  return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ index_t grid_stride() { return (index_t)blockDim.x * gridDim.x; }

}  // namespace emarray
