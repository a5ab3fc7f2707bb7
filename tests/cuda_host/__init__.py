"""Run the real ``kernels/*.cu`` sources on the CPU, through the real CuPy wrappers.

``host_cupy()`` puts a stand-in ``cupy`` module in ``sys.modules`` whose ``RawModule`` compiles
a kernel family with the system C++ compiler and ``cuda_host.h`` into a shared library (every
instantiation of :data:`emarray.kernel_table.FAMILIES`, by the same name expressions), and whose
kernels are launched with the grid, block, shared memory and arguments the wrappers in
``emarray/cuda/`` pass. The wrappers' own code runs unchanged: their launch sizes
(:func:`emarray.kernel_table.launch_blocks`), alignment checks, argument dtypes and the host
arithmetic around the kernels are what is tested.

"Device" arrays are NumPy arrays in their own pages with an inaccessible page right before
their first byte (``GUARD = "start"``) or right after their last (``GUARD = "end"``), so a
kernel that reads or writes past either end of an array crashes the test instead of passing.
Each argument is checked against the kernel's parameter (a device array for a pointer, of the
pointee's size and kind; a NumPy scalar of the parameter's size and kind), as a GPU would
silently misread a wrong one.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
SHARED_BYTES = 48 * 1024
SMS = 2  # streaming multiprocessors of the pretend device: grids of up to 64 blocks
GUARD = "end"  # which end of each device array touches an inaccessible page
#: every kernel instantiation launched in this process: (family, name expression)
LAUNCHED: set[tuple[str, str]] = set()
#: the options each family was compiled with (what NVRTC would be given)
OPTIONS_SEEN: dict[str, tuple[str, ...]] = {}
_libs: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()
RNG = np.random.default_rng()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE


# -- device arrays ---------------------------------------------------------------------------
class _Pointer:
    def __init__(self, ptr: int):
        self.ptr = ptr


class HostArray(np.ndarray):
    """A NumPy array standing for a CuPy device array (``.data.ptr``, ``.get()``, ``.set()``)."""

    @property
    def data(self) -> _Pointer:  # type: ignore[override]
        return _Pointer(self.ctypes.data)

    def get(self, stream: Any = None, out: Any = None, blocking: bool = True) -> np.ndarray:
        if out is not None:
            out[...] = np.asarray(self)
            return out
        return np.array(self)

    def set(self, arr: Any, stream: Any = None) -> None:
        self[...] = arr


def device_empty(shape: Any, dtype: Any = np.float64) -> HostArray:
    """An array in fresh pages, its first (``GUARD="start"``) or last byte beside a PROT_NONE page.

    An allocation larger than the memory pool's limit raises ``OutOfMemoryError``, as CuPy's
    pool does once the cap is reached (here per allocation: enough to drive the retries)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if POOL.limit and nbytes > POOL.limit:
        ALLOCATIONS_REFUSED.append(nbytes)
        raise OutOfMemoryError(nbytes, 0, POOL.limit)
    data_pages = -(-max(nbytes, 1) // PAGE)
    buf = mmap.mmap(-1, (data_pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    if _libc.mprotect(base, PAGE, 0) or _libc.mprotect(base + (data_pages + 1) * PAGE, PAGE, 0):
        raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = PAGE if GUARD == "start" else (data_pages + 1) * PAGE - nbytes
    arr = np.frombuffer(buf, dtype, count, offset).reshape(shape).view(HostArray)
    arr._keep = buf  # type: ignore[attr-defined]
    return arr


def device_asarray(a: Any, dtype: Any = None) -> HostArray:
    if isinstance(a, HostArray) and (dtype is None or a.dtype == dtype):
        return a
    src = np.asarray(a, dtype=dtype)
    out = device_empty(src.shape, src.dtype)
    out[...] = src
    return out


def _dev(fn):
    def wrapped(*args, **kwargs):
        r = fn(*args, **kwargs)
        return r.view(HostArray) if isinstance(r, np.ndarray) else r
    return wrapped


# -- kernels -----------------------------------------------------------------------------------
def _build(family: str, names: list[str], options: tuple[str, ...]) -> Any:
    if CXX is None:
        raise RuntimeError("no C++ compiler (g++) to build the host kernels")
    from emarray.cuda.modules import kernel_dir
    src = (kernel_dir() / family).read_text()
    shared = re.findall(r"extern\s+__shared__\s+([\w\s]+?)\s+(\w+)\s*\[\s*\]", src)
    lines = ['#include "cuda_host.h"', f'#include "{family}"']
    for ctype, name in dict((n, (t, n)) for t, n in shared).values():
        lines.append(f"alignas(16) {ctype} {name}[{SHARED_BYTES} / sizeof({ctype})];")
    lines.append("static std::vector<emarray_host::Entry>& entries() {")
    lines.append("  static std::vector<emarray_host::Entry> e = {")
    lines += [f"    EMARRAY_HOST_ENTRY({n})," for n in names]
    lines.append("  };\n  return e;\n}")
    lines.append('extern "C" int emarray_host_count() { return (int)entries().size(); }')
    lines.append('extern "C" const char* emarray_host_name(int i) { return entries()[i].name; }')
    lines.append('extern "C" const char* emarray_host_signature(int i) '
                 "{ return entries()[i].signature.c_str(); }")
    setup = ""
    if shared:
        name = shared[0][1]
        setup = (f"emarray_host::shared = (unsigned char*){name}; "
                 f"emarray_host::shared_capacity = sizeof({name});")
    lines.append('extern "C" void emarray_host_launch(int i, unsigned grid, unsigned block, '
                 "unsigned long shared, const unsigned* order, void** args) {"
                 f" {setup} emarray_host::launch(entries()[i].call, args, grid, block, shared, "
                 "order); }")
    harness = "\n".join(lines) + "\n"
    flags = [o for o in options if o.startswith(("-D", "-I"))]
    key = hashlib.sha256((harness + src + " ".join(flags)
                          + (HERE / "cuda_host.h").read_text()).encode()).hexdigest()[:16]
    out_dir = Path(os.environ.get("EMARRAY_HOST_KERNELS", "/tmp/emarray-host-kernels"))
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"{family}-{key}.so"
    if not lib.exists():
        # this process's own names: another pytest worker may build the same family now
        cpp = out_dir / f"{family}-{key}.{os.getpid()}.cpp"
        cpp.write_text(harness)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off",
               "-fno-fast-math", "-Wall", "-Wno-unknown-pragmas", "-Werror",
               f"-I{HERE}", f"-I{kernel_dir()}", *flags, str(cpp), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"building the host kernels of {family} failed:\n{r.stderr}")
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.emarray_host_name.restype = ctypes.c_char_p
    dll.emarray_host_signature.restype = ctypes.c_char_p
    dll.emarray_host_launch.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong,
                                        ctypes.c_void_p, ctypes.c_void_p]
    return dll


class HostKernel:
    def __init__(self, family: str, name: str, dll: Any, index: int):
        self.family, self.name, self.dll, self.index = family, name, dll, index
        self.params = dll.emarray_host_signature(index).decode().rstrip(",").split(",")

    def _arg(self, i: int, value: Any, keep: list) -> int:
        code = self.params[i]
        size, kind = int(code[1:-1]), code[-1]
        where = f"{self.name}: argument {i}"
        if code[0] == "p":
            if not isinstance(value, HostArray):
                raise TypeError(f"{where} must be a device array, got {type(value).__name__}")
            if not value.flags.c_contiguous:
                raise TypeError(f"{where} is not C-contiguous")
            dk = "u" if value.dtype.kind == "b" else value.dtype.kind
            if value.dtype.itemsize != size or dk != kind:
                raise TypeError(f"{where} is {value.dtype}, the kernel reads {code}")
            p = ctypes.c_void_p(value.ctypes.data)
        else:
            if not isinstance(value, np.generic):
                raise TypeError(f"{where} must be a NumPy scalar, got {value!r}")
            if value.dtype.itemsize != size or value.dtype.kind != kind:
                raise TypeError(f"{where} is {value.dtype}, the kernel takes {code}")
            p = ctypes.create_string_buffer(value.tobytes(), size)
        keep.append(p)
        return ctypes.addressof(p)

    def __call__(self, grid: Any, block: Any, args: tuple, shared_mem: int = 0,
                 stream: Any = None) -> None:
        grid, block = tuple(grid), tuple(block)
        if len(grid) != 1 or len(block) != 1 or grid[0] < 1 or not 1 <= block[0] <= 1024:
            raise ValueError(f"{self.name}: bad launch grid={grid} block={block}")
        if shared_mem > SHARED_BYTES:
            raise ValueError(f"{self.name}: {shared_mem} bytes of shared memory asked")
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        keep: list = []
        ptrs = (ctypes.c_void_p * len(args))(*[self._arg(i, a, keep) for i, a in enumerate(args)])
        order = (ctypes.c_uint * grid[0])(*RNG.permutation(grid[0]).tolist())
        LAUNCHED.add((self.family, self.name))
        self.dll.emarray_host_launch(self.index, grid[0], block[0], shared_mem, order, ptrs)


class RawModule:
    """``cupy.RawModule`` on the host: the family is found from its source text."""

    def __init__(self, code: str, options: tuple = (), name_expressions: Any = ()):
        from emarray.cuda.modules import kernel_dir
        from emarray.kernel_table import FAMILIES
        self.family = next(f for f in FAMILIES if (kernel_dir() / f).read_text() == code)
        self.options, self.names = tuple(options), list(name_expressions)
        self.dll = None

    def compile(self) -> None:
        OPTIONS_SEEN[self.family] = self.options
        with _lock:
            key = (self.family, "|".join(self.options))
            if key not in _libs:
                _libs[key] = _build(self.family, self.names, self.options)
        self.dll = _libs[key]

    def get_function(self, name: str) -> HostKernel:
        if self.dll is None:
            self.compile()
        names = [self.dll.emarray_host_name(i).decode()
                 for i in range(self.dll.emarray_host_count())]
        return HostKernel(self.family, name, self.dll, names.index(name))


# -- the stand-in cupy module ------------------------------------------------------------------
class _Device:
    def __init__(self, dev: int = 0):
        self.id = dev
        self.attributes = {"MultiProcessorCount": SMS}
        self.mem_info = (DEVICE_BYTES, DEVICE_BYTES)


class _Stream:
    def __init__(self, non_blocking: bool = False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        pass


class OutOfMemoryError(MemoryError):
    def __init__(self, size: int = 0, total: int = 0, limit: int = 0):
        super().__init__(f"out of memory allocating {size} bytes")


class _Pool:
    limit = 0

    def set_limit(self, size: int = 0) -> None:
        self.limit = size

    def free_all_blocks(self) -> None:
        pass


POOL = _Pool()
ALLOCATIONS_REFUSED: list[int] = []
#: bytes of every pinned host buffer allocated
PINNED: list[int] = []
DEVICE_BYTES = 8 << 30  # what the pretend device has (mem_info)


def _make_module() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__dict__.update({n: getattr(np, n) for n in (
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
        "float64", "bool_", "dtype")})
    cp.empty = device_empty
    cp.zeros = lambda shape, dtype=np.float64: _fill(device_empty(shape, dtype), 0)
    cp.full = lambda shape, value, dtype=None: _fill(
        device_empty(shape, dtype or np.asarray(value).dtype), value)
    cp.asarray = device_asarray
    cp.ascontiguousarray = lambda a, dtype=None: (
        a if isinstance(a, HostArray) and a.flags.c_contiguous and dtype in (None, a.dtype)
        else device_asarray(np.ascontiguousarray(a), dtype))
    cp.asnumpy = lambda a, stream=None: np.array(a)
    cp.ndarray = HostArray
    for n in ("arange", "cumsum", "where", "minimum", "maximum", "searchsorted", "unique",
              "concatenate", "stack", "zeros_like", "empty_like"):
        setattr(cp, n, _dev(getattr(np, n)))
    cp.get_default_memory_pool = lambda: POOL
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = _Device
    cuda.Stream = _Stream
    cuda.Stream.null = _Stream()  # type: ignore[attr-defined]
    cuda.memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    cuda.alloc_pinned_memory = lambda n: (PINNED.append(n), bytearray(n))[1]
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    cp.cuda = cuda
    cp.RawModule = RawModule
    cp.__host_stand_in__ = True
    return cp


def _fill(a: HostArray, value: Any) -> HostArray:
    a[...] = value
    return a


@contextlib.contextmanager
def host_cupy():
    """``import cupy`` gives the stand-in inside the block; compiled modules are forgotten after."""
    from emarray.cuda import elementwise, modules, streaming
    saved = {k: sys.modules.get(k) for k in ("cupy", "cupy.cuda")}
    cp = _make_module()
    sys.modules["cupy"], sys.modules["cupy.cuda"] = cp, cp.cuda

    def forget() -> None:  # nothing of the stand-in outlives the block
        modules._modules.clear()
        elementwise._sm_count.cache_clear()
        streaming._limits.clear()
        streaming._local = threading.local()
        streaming._free_sets = queue.LifoQueue()
        streaming._sets_made = 0
        POOL.limit = 0
        ALLOCATIONS_REFUSED.clear()
        PINNED.clear()
    forget()
    try:
        yield cp
    finally:
        forget()
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
