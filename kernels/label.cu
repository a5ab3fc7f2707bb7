// Connected components of one block: union-find on a parent array, in three kernels.
//
//   emarray_ccl_init<T>(v, parent, n): parent[i] = i where v[i] != 0, else NONE.
//   emarray_ccl_merge<T, CONN>(v, parent, nz, ny, nx): every foreground voxel joins each
//       earlier neighbour (the 3, 9 or 13 of 6-, 18- or 26-connectivity before it in C
//       order) that holds the same value. Roots only ever move to a smaller index
//       (atomicMin), so each component's root ends as its first voxel in C order.
//   emarray_ccl_flatten(parent, n): parent[i] = root of i.
// The host numbers the roots in C order (a prefix sum), which is cc3d's numbering of the
// block: cc3d is this kernel's twin (emarray.ops.components.label_block_cpu).
#include "common.cuh"

namespace emarray {
const unsigned int NONE = 0xffffffffu;

__device__ __forceinline__ unsigned int find_root(const unsigned int* parent, unsigned int x) {
  unsigned int p = parent[x];
  while (p != x) {
    x = p;
    p = parent[x];
  }
  return x;
}

__device__ __forceinline__ void unite(unsigned int* parent, unsigned int a, unsigned int b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a > b) {  // link the larger root under the smaller
      unsigned int t = a;
      a = b;
      b = t;
    }
    const unsigned int old = atomicMin(&parent[b], a);
    if (old == b) return;  // b was still a root: linked
    b = old;               // someone linked b first: retry from its new parent
  }
}
}  // namespace emarray

template <typename T>
__global__ void emarray_ccl_init(const T* __restrict__ v, unsigned int* __restrict__ parent,
                                 emarray::index_t n) {
  const emarray::index_t stride = emarray::grid_stride();
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride)
    parent[i] = v[i] != (T)0 ? (unsigned int)i : emarray::NONE;
}

template <typename T, int CONN>
__global__ void emarray_ccl_merge(const T* __restrict__ v, unsigned int* parent,
                                  emarray::index_t nz, emarray::index_t ny, emarray::index_t nx) {
  const emarray::index_t n = nz * ny * nx;
  const emarray::index_t stride = emarray::grid_stride();
  const int order = CONN == 6 ? 1 : (CONN == 18 ? 2 : 3);
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride) {
    const T value = v[i];
    if (value == (T)0) continue;
    const emarray::index_t x = i % nx;
    const emarray::index_t y = (i / nx) % ny;
    const emarray::index_t z = i / (nx * ny);
    for (int dz = -1; dz <= 0; ++dz) {
      for (int dy = -1; dy <= 1; ++dy) {
        for (int dx = -1; dx <= 1; ++dx) {
          // the 13 neighbours before i in C order: dz < 0, or dz == 0 and (dy < 0, or dy == 0
          // and dx < 0)
          if (dz == 0 && (dy > 0 || (dy == 0 && dx >= 0))) continue;
          const int manhattan = (dz != 0) + (dy != 0) + (dx != 0);
          if (manhattan > order) continue;
          const emarray::index_t zz = z + dz, yy = y + dy, xx = x + dx;
          if (zz < 0 || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
          const emarray::index_t j = (zz * ny + yy) * nx + xx;
          if (v[j] == value) emarray::unite(parent, (unsigned int)i, (unsigned int)j);
        }
      }
    }
  }
}

__global__ void emarray_ccl_flatten(unsigned int* parent, emarray::index_t n) {
  const emarray::index_t stride = emarray::grid_stride();
  for (emarray::index_t i = emarray::global_thread(); i < n; i += stride)
    if (parent[i] != emarray::NONE) parent[i] = emarray::find_root(parent, (unsigned int)i);
}
