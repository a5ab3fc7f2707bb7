"""emarray.chunk_io: whole chunks read and written without zarr's event loop, checked against
zarr-python reading and writing the same arrays (the independent reference)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from numcodecs import Zstd

import emarray
from emarray import chunk_io
from emarray.errors import ChunkReadError

SHAPE, CHUNKS = (10, 13, 7), (4, 5, 7)  # chunks clipped at the end of two axes


def blocks(shape=SHAPE, chunks=CHUNKS):
    for idx in itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks))):
        yield tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))


def sample(dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        a = rng.normal(size=SHAPE).astype(dtype)
        a[0, 0, :3] = [np.nan, np.inf, -0.0]
        return a
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, SHAPE, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "uint64", "float32", "float64"])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_volume_blocks_round_trip_through_zarr(tmp_path, dtype, compression):
    """Written chunk by chunk by emarray, read whole by zarr; written by zarr, read by emarray."""
    a = sample(dtype)
    v = emarray.create_volume(tmp_path / "a.zarr", SHAPE, dtype, CHUNKS, compression=compression)
    assert chunk_io.whole(v.handle(), next(blocks()), SHAPE) is not None  # the path is taken
    for r in blocks():
        v.write(r, a[r])
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr" / "0"))[...], a)
    b = sample(dtype, seed=1)
    zarr.open_array(str(tmp_path / "a.zarr" / "0"), mode="r+")[...] = b
    w = emarray.open_volume(tmp_path / "a.zarr")
    for r in blocks():
        got = w.read(r)
        np.testing.assert_array_equal(got, b[r])
        assert got.flags.writeable and got.flags.c_contiguous and got.dtype == np.dtype(dtype)


def test_big_endian_bytes_and_the_fill_value_of_a_chunk_never_written(tmp_path):
    from zarr.codecs import BytesCodec, ZstdCodec
    arr = zarr.create_array(str(tmp_path / "be.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="int32",
                            serializer=BytesCodec(endian="big"), compressors=ZstdCodec(level=1),
                            fill_value=-7)
    lay = chunk_io.layout(arr)
    assert isinstance(lay, chunk_io.Layout) and lay.stored.byteorder == ">"
    a = sample("int32")
    regions = list(blocks())
    for r in regions[:-1]:  # the last chunk stays unwritten
        idx = chunk_io.chunk_of(lay, r, SHAPE)
        chunk_io.write(lay, idx, a[r])
    ref = zarr.open_array(str(tmp_path / "be.zarr"))[...]
    last = regions[-1]
    assert (ref[last] == -7).all()
    mask = np.ones(SHAPE, bool)
    mask[last] = False
    np.testing.assert_array_equal(ref[mask], a[mask])
    for r in regions:
        got = chunk_io.read(lay, chunk_io.chunk_of(lay, r, SHAPE), r)
        np.testing.assert_array_equal(got, ref[r])
        assert got.dtype.isnative


def test_regions_that_are_not_one_whole_chunk_and_other_layouts_go_through_zarr(tmp_path):
    v = emarray.create_volume(tmp_path / "a.zarr", SHAPE, "uint16", CHUNKS)
    h = v.handle()
    assert chunk_io.whole(h, (slice(0, 4), slice(0, 5), slice(0, 6)), SHAPE) is None
    assert chunk_io.whole(h, (slice(0, 8), slice(0, 5), slice(0, 7)), SHAPE) is None
    assert chunk_io.whole(h, (slice(1, 5), slice(0, 5), slice(0, 7)), SHAPE) is None
    for comp in ("blosc-lz4", "gzip"):
        w = emarray.create_volume(tmp_path / f"{comp}.zarr", SHAPE, "uint16", CHUNKS,
                                  compression=comp)
        assert chunk_io.layout(w.handle()) is False
    s = emarray.create_volume(tmp_path / "s.zarr", (8, 10, 7), "uint16", (4, 5, 7),
                              shards=(8, 10, 7))
    assert chunk_io.layout(s.handle()) is False


@pytest.mark.parametrize("checksum", [False, True])
def test_a_chunk_that_decodes_to_the_wrong_size_is_named_not_read_in_part(tmp_path, checksum):
    """numcodecs fills a larger buffer in part without a word: the size is checked first (and
    with a checksum, a chunk of the wrong size whose checksum matches is still named)."""
    import google_crc32c

    def stored(payload: bytes) -> bytes:
        return payload + (google_crc32c.value(payload).to_bytes(4, "little") if checksum
                          else b"")
    a = sample("uint32")
    v = emarray.create_volume(tmp_path / "a.zarr", SHAPE, "uint32", CHUNKS, checksum=checksum)
    v.write(tuple(slice(0, n) for n in SHAPE), a)
    key = tmp_path / "a.zarr" / v.chunk_key((0, 0, 0))
    key.write_bytes(stored(Zstd(3).encode(np.arange(10, dtype=np.uint32))))
    w = emarray.open_volume(tmp_path / "a.zarr")
    with pytest.raises(ChunkReadError, match="c/0/0/0.*decodes to 40 bytes, not 560"):
        w.read((slice(0, 4), slice(0, 5), slice(0, 7)))
    key.write_bytes(stored(b"not zstd at all"))
    with pytest.raises(ChunkReadError, match="c/0/0/0"):
        w.read((slice(0, 4), slice(0, 5), slice(0, 7)))


def test_a_killed_write_leaves_the_old_chunk_whole(tmp_path, monkeypatch):
    """The chunk is written under a temporary name and renamed: a failure midway leaves the
    chunk as it was and no temporary file."""
    a = sample("float32")
    v = emarray.create_volume(tmp_path / "a.zarr", SHAPE, "float32", CHUNKS)
    first = next(blocks())
    v.write(first, a[first])
    import os

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        v.write(first, a[first] + 1)
    monkeypatch.undo()
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "a.zarr").read(first), a[first])
    assert not list((tmp_path / "a.zarr").rglob("*.partial"))


def test_any_region_a_caller_may_pass_is_served_or_left_to_zarr(tmp_path):
    a = sample("uint16")
    v = emarray.create_volume(tmp_path / "a.zarr", SHAPE, "uint16", CHUNKS)
    v.write((slice(None),) * 3, a)  # several chunks: zarr
    h = v.handle()
    one = (slice(None, 4), slice(5, 10), slice(None))
    assert chunk_io.whole(h, one, SHAPE) == (chunk_io.layout(h), (0, 1, 0))
    for region in [(slice(0, 4, 2), slice(0, 5), slice(0, 7)), (0, slice(0, 5), slice(0, 7)),
                   (slice(0, 4), slice(0, 5)), (slice(8, 12), slice(10, 15), slice(0, 7))]:
        assert chunk_io.whole(h, region, SHAPE) is None
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "a.zarr").read(), a)
    np.testing.assert_array_equal(v.read((slice(0, 4), slice(5, 10), slice(0, 7))), a[one])


def test_the_layout_cache_does_not_keep_closed_arrays_alive(tmp_path):
    """A worker opens many volumes over its life: each array's layout goes with the array."""
    import gc
    gc.collect()  # arrays earlier tests left for the collector go first: their count is theirs
    before = len(chunk_io._LAYOUTS)
    v = emarray.create_volume(tmp_path / "a.zarr", SHAPE, "uint16", CHUNKS)
    first = next(blocks())
    v.write(first, sample("uint16")[first])
    assert len(chunk_io._LAYOUTS) == before + 1
    del v
    gc.collect()
    assert len(chunk_io._LAYOUTS) == before
