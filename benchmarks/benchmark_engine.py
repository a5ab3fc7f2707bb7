"""asv: the engine's operators (pyramid, smoothing, upsampling) and its chunk I/O on small seeded volumes.

The side-by-side comparison with a plain copy, tinybrain and dask-image lives in
``benchmarks/engine_compare.py``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray


def _volume(tmp: Path, name: str, dtype: str, shape=(64, 256, 256), chunks=(32, 128, 128)):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) * (255 if dtype == "uint8" else 20)).astype(dtype)
    v = emarray.create_volume(tmp / name, shape, dtype, chunks, voxel_size=(8, 8, 8))
    v.write(tuple(slice(0, s) for s in shape), a)
    return v


class Pyramid:
    params = (["uint8", "uint32"], [1, 3])
    param_names = ["dtype", "levels"]
    timeout = 300

    def setup(self, dtype, levels):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.src = _volume(self.tmp, "v.zarr", dtype)

    def teardown(self, dtype, levels):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_pyramid(self, dtype, levels):
        emarray.pyramid(self.src.url, levels=levels, overwrite=True)

    def peakmem_pyramid(self, dtype, levels):
        emarray.pyramid(self.src.url, levels=levels, overwrite=True)


class PoolBlock:
    """One block pooled on the CPU: tinybrain where it applies, the NumPy twin otherwise."""
    params = (["uint8", "uint32"], ["mean", "mode"], ["2,2,2", "1,2,2"])
    param_names = ["dtype", "mode", "factors"]

    def setup(self, dtype, mode, factors):
        self.a = (np.random.default_rng(0).random((64, 256, 256)) * 8).astype(dtype)
        self.f = tuple(int(x) for x in factors.split(","))

    def time_pool(self, dtype, mode, factors):
        from emarray.ops.pool import pool_block_cpu
        pool_block_cpu(self.a, factors=self.f, mode=mode)


class Smooth:
    params = ([1.0, 2.0],)
    param_names = ["sigma"]
    timeout = 300

    def setup(self, sigma):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.src = _volume(self.tmp, "v.zarr", "float32")

    def teardown(self, sigma):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_smooth(self, sigma):
        emarray.smooth(self.src, self.tmp / "s.zarr", sigma, overwrite=True)

    def peakmem_smooth(self, sigma):
        emarray.smooth(self.src, self.tmp / "s.zarr", sigma, overwrite=True)


class Upsample:
    timeout = 300

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.fine = _volume(self.tmp, "v.zarr", "uint8")
        emarray.pyramid(self.fine.url, levels=2)
        self.coarse = emarray.open_volume(self.fine.url, level=2)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_upsample_linear(self):
        emarray.upsample(self.coarse, self.tmp / "u.zarr", like=self.fine, overwrite=True)


class ChunkIO:
    """Whole chunks read and written by two threads: emarray's Volume (chunk_io, in the
    worker's thread) against zarr-python's array (through its event-loop thread)."""
    params = (["emarray", "zarr"],)
    param_names = ["path"]
    timeout = 300

    def setup(self, path):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.src = _volume(self.tmp, "v.zarr", "uint32", shape=(128, 512, 512),
                           chunks=(32, 128, 128))
        self.dst = emarray.create_volume(self.tmp / "w.zarr", self.src.shape, "uint32",
                                         self.src.block_shape)
        b = self.src.block_shape
        self.regions = [tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, b))
                        for idx in np.ndindex(*(s // c for s, c in zip(self.src.shape, b)))]

    def teardown(self, path):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_copy_chunks(self, path):
        from concurrent.futures import ThreadPoolExecutor
        if path == "emarray":
            src, dst = self.src, self.dst

            def copy(r):
                dst.write(r, src.read(r))
        else:
            src, dst = self.src.handle(), self.dst.handle()

            def copy(r):
                dst[r] = src[r]
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(copy, self.regions))


class Checksum:
    """Whole chunks written, then read, by two threads through emarray's Volume, with and
    without the crc32c checksum (unsharded: chunk_io's path; sharded: zarr's). The side-by-side
    figure of docs/speed.md comes from ``benchmarks/checksum_compare.py``."""
    params = ([True, False], [False, True])
    param_names = ["checksum", "sharded"]
    timeout = 300

    def setup(self, checksum, sharded):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        shape, chunks = (128, 512, 512), (32, 128, 128)
        rng = np.random.default_rng(0)
        self.a = (rng.random(shape) * 20).astype("uint32")
        shards = (64, 256, 256) if sharded else None
        self.v = emarray.create_volume(self.tmp / "v.zarr", shape, "uint32",
                                       (16, 64, 64) if sharded else chunks, shards=shards,
                                       checksum=checksum)
        b = self.v.block_shape
        self.regions = [tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, b))
                        for idx in np.ndindex(*(s // c for s, c in zip(shape, b)))]
        self._each(lambda r: self.v.write(r, self.a[r]))

    def teardown(self, checksum, sharded):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _each(self, fn):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(fn, self.regions))

    def time_write_chunks(self, checksum, sharded):
        self._each(lambda r: self.v.write(r, self.a[r]))

    def time_read_chunks(self, checksum, sharded):
        self._each(self.v.read)


class _FirstBlock(Exception):
    pass


def _until_first_block(fn):
    """Run ``fn`` (a job) until its first block starts, then stop it."""
    from emarray.engine import stages
    from emarray.errors import BlockFailedError
    real = stages.run_block

    def first(st, index):
        raise _FirstBlock()
    stages.run_block = first
    try:
        fn()
    except BlockFailedError:
        pass
    finally:
        stages.run_block = real


class DriverFirstBlock:
    """The driver of a job of 10^5 to 10^7 one-voxel blocks, up to its first block: a stage
    with no reads (synthetic) and a stage reading an input with no stored chunk (threshold).
    The figures before and after, and resume, are ``benchmarks/driver_compare.py``'s."""
    params = ([10**5, 10**6, 10**7], ["synthetic", "threshold"])
    param_names = ["blocks", "job"]
    timeout = 600

    def setup(self, blocks, job):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.shape = (blocks // 10**4, 100, 100)
        self.src = emarray.create_volume(self.tmp / "in.zarr", self.shape, "float32", 1)
        self.n = 0

    def teardown(self, blocks, job):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _job(self, job):
        self.n += 1
        out = self.tmp / f"out{self.n}"
        if job == "synthetic":
            return lambda: emarray.datasets.synthetic(out, self.shape, chunks=1, kinds=("raw",),
                                                      retries=0)
        return lambda: emarray.threshold(self.src, out, 0.5, retries=0)

    def time_first_block(self, blocks, job):
        _until_first_block(self._job(job))

    def peakmem_first_block(self, blocks, job):
        _until_first_block(self._job(job))


class DriverStoredInput:
    """The same with every input chunk stored (a file each): what a job records of its input
    grows with them (10^6 and the figures before and after: ``driver_compare.py``)."""
    params = ([10**4, 10**5],)
    param_names = ["chunks"]
    timeout = 600

    def setup(self, chunks):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        shape = (chunks // 10**4, 100, 100)
        self.src = emarray.create_volume(self.tmp / "in.zarr", shape, "float32", 1)
        self.src.write((slice(0, 1),) * 3, np.ones((1, 1, 1), np.float32))
        arr = self.tmp / "in.zarr" / "0" / "c"
        data = (arr / "0" / "0" / "0").read_bytes()
        for z in range(shape[0]):
            for y in range(shape[1]):
                (arr / str(z) / str(y)).mkdir(parents=True, exist_ok=True)
                for x in range(shape[2]):
                    (arr / str(z) / str(y) / str(x)).write_bytes(data)
        self.n = 0

    def teardown(self, chunks):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self):
        self.n += 1
        _until_first_block(lambda: emarray.threshold(self.src, self.tmp / f"out{self.n}", 0.5,
                                                     retries=0))

    def time_first_block(self, chunks):
        self._run()

    def peakmem_first_block(self, chunks):
        self._run()
