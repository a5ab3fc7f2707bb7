"""Chunks are stored with a crc32c checksum (zarr v3's ``crc32c`` codec): a damaged chunk, from
every write path, is named on every read path (Volume.read, the whole-chunk path of chunk_io, the
halo cache, dask, the CLI), never read as values. Volumes written without one still read; other
readers (zarr-python, tensorstore) read what emarray writes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorstore as ts
import zarr
from click.testing import CliRunner

import emarray
from emarray import chunk_io
from emarray.cli import cli as cli_group
from emarray.errors import ChunkReadError

from .conftest import make_volume
from .helpers import cli, one_error_line, prob_map
from .test_remote import s3, s3_server  # noqa: F401 - fixtures (a moto S3 server)

SHAPE, CHUNKS = (8, 12, 12), (4, 6, 6)


def sample(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=SHAPE).astype(dtype)
    return rng.integers(0, 200, SHAPE).astype(dtype)


def flip(path, where: str) -> None:
    """Flip the bits of one byte of a stored file: its first, a middle one or its last."""
    data = bytearray(path.read_bytes())
    at = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def region_of(idx, chunks=CHUNKS, shape=SHAPE):
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))


def assert_named(exc_info, key: str, url) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and repr(key) in msg and str(url) in msg, msg
    assert "damaged" in msg and "crc32c" in msg, msg


def every_read_path_names(vol_path, idx, a, chunks=CHUNKS) -> None:
    """Whole volume, the chunk alone (chunk_io's path where it applies), a region that cuts
    through it (the halo cache), dask: each names the chunk; the other chunks read right."""
    v = emarray.open_volume(vol_path)
    key = v.chunk_key(idx)
    r = region_of(idx, chunks, v.shape)
    cut = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(r, v.shape))
    for region in (None, r, cut):
        with pytest.raises(ChunkReadError) as e:
            v.read(region)
        assert_named(e, key, v.url)
    with pytest.raises(ChunkReadError) as e:
        v.data.compute(scheduler="threads")
    assert_named(e, key, v.url)
    for other in itertools.product(*(range(-(-n // c)) for n, c in zip(v.shape, chunks))):
        if other != idx:
            np.testing.assert_array_equal(v.read(region_of(other, chunks, v.shape)),
                                          a[region_of(other, chunks, v.shape)])


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("compression", ["zstd", "none", "gzip", "blosc-lz4"])
def test_a_damaged_chunk_written_by_create_volume_is_named_on_every_read_path(
        tmp_path, compression, where):
    a = sample()
    v = emarray.create_volume(tmp_path / "v.zarr", SHAPE, "float32", CHUNKS,
                              compression=compression)
    v.write((slice(None),) * 3, a)  # through zarr
    for r in (region_of(i) for i in [(0, 0, 0), (1, 1, 1)]):
        v.write(r, a[r])  # whole chunks: through chunk_io where it applies
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "v.zarr").read(), a)
    idx = (1, 1, 1)
    path = tmp_path / "v.zarr" / v.chunk_key(idx)
    flip(path, where)
    every_read_path_names(tmp_path / "v.zarr", idx, a)
    fast = compression in ("zstd", "none")
    lay = chunk_io.layout(v.handle())
    assert (isinstance(lay, chunk_io.Layout) and lay.crc) if fast else lay is False
    if fast:  # chunk_io checks it itself
        with pytest.raises(chunk_io.ChecksumMismatch):
            chunk_io.read(lay, idx, region_of(idx))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_damaged_chunk_of_an_operator_output_stops_the_next_job_naming_it(tmp_path, where):
    a = sample()
    make_volume(tmp_path / "p.zarr", a, CHUNKS)
    m = emarray.threshold(tmp_path / "p.zarr", tmp_path / "m.zarr", 0.0, progress=False)
    ref = (a > 0).astype(np.uint8)
    np.testing.assert_array_equal(m.read(), ref)
    idx = (0, 1, 0)
    flip(tmp_path / "m.zarr" / m.chunk_key(idx), where)
    every_read_path_names(tmp_path / "m.zarr", idx, ref)
    r = CliRunner().invoke(cli_group, ["-q", "threshold", str(tmp_path / "m.zarr"),
                                 str(tmp_path / "n.zarr"), "--value", "0"])
    assert r.exit_code == 2, (r.output, r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and repr(m.chunk_key(idx)) in lines[0] and "damaged" in lines[0]


@pytest.mark.parametrize("where", ["inner chunk", "index", "index checksum"])
def test_a_damaged_shard_is_named_its_index_and_chunks_carry_checksums(tmp_path, where):
    a = sample("uint16")
    make_volume(tmp_path / "s.zarr", a, (2, 3, 3), shards=CHUNKS)
    v = emarray.open_volume(tmp_path / "s.zarr")
    idx = (1, 0, 1)
    path = tmp_path / "s.zarr" / v.chunk_key(idx)
    data = bytearray(path.read_bytes())
    at = {"inner chunk": 10, "index": len(data) - 12, "index checksum": len(data) - 1}[where]
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    every_read_path_names(tmp_path / "s.zarr", idx, a)
    (shard,) = v.handle().metadata.codecs
    assert type(shard.codecs[-1]).__name__ == "Crc32cCodec"
    assert type(shard.index_codecs[-1]).__name__ == "Crc32cCodec"


def test_a_pyramid_level_carries_checksums_even_over_a_volume_without(tmp_path):
    a = sample("uint8")
    v = emarray.create_volume(tmp_path / "v.zarr", SHAPE, "uint8", CHUNKS, checksum=False)
    v.write((slice(None),) * 3, a)
    emarray.pyramid(tmp_path / "v.zarr", levels=1, progress=False)
    lv = emarray.open_volume(tmp_path / "v.zarr", level=1)
    assert type(lv.handle().metadata.codecs[-1]).__name__ == "Crc32cCodec"
    ref = lv.read()
    flip(tmp_path / "v.zarr" / lv.chunk_key((0, 0, 0)), "middle")
    with pytest.raises(ChunkReadError) as e:
        emarray.open_volume(tmp_path / "v.zarr", level=1).read()
    assert_named(e, lv.chunk_key((0, 0, 0)), lv.url)
    assert ref.shape == (4, 6, 6)


def test_a_damaged_chunk_on_object_storage_is_named(tmp_path, s3):  # noqa: F811
    from emarray import storage
    a = sample()
    make_volume(tmp_path / "p.zarr", a, CHUNKS)
    url = f"{s3}/m.zarr"
    out = emarray.threshold(tmp_path / "p.zarr", url, 0.0, progress=False)
    assert type(out.handle().metadata.codecs[-1]).__name__ == "Crc32cCodec"
    key = out.chunk_key((1, 0, 1))
    data = bytearray(storage.read_bytes(f"{url}/{key}"))
    data[len(data) // 2] ^= 0x5A
    storage.write_bytes(f"{url}/{key}", bytes(data))
    v = emarray.open_volume(url)
    for read in (v.read, lambda: v.data.compute(scheduler="threads")):
        with pytest.raises(ChunkReadError) as e:
            read()
        assert_named(e, key, url)


@pytest.mark.parametrize("make", ["emarray without checksum", "zarr zstd", "zarr none",
                                  "zarr sharded without index checksum"])
def test_volumes_written_without_a_checksum_still_read_and_write(tmp_path, make):
    from zarr.codecs import BytesCodec
    a, b = sample("int32"), sample("int32", seed=1)
    path = tmp_path / "old.zarr"
    if make == "emarray without checksum":
        emarray.create_volume(path, SHAPE, "int32", CHUNKS, checksum=False)
        arr = zarr.open_array(str(path / "0"), mode="r+")
    elif make == "zarr sharded without index checksum":
        from zarr.codecs import ShardingCodec, ZstdCodec
        arr = zarr.create_array(str(path), shape=SHAPE, dtype="int32", chunks=CHUNKS,
                                serializer=ShardingCodec(chunk_shape=(2, 3, 3), codecs=[
                                    BytesCodec(), ZstdCodec()], index_codecs=[BytesCodec()]),
                                compressors=None, fill_value=0)
    else:
        arr = zarr.create_array(str(path), shape=SHAPE, dtype="int32", chunks=CHUNKS,
                                compressors="auto" if make == "zarr zstd" else None,
                                fill_value=0)
    assert "crc32c" not in json_codecs(arr)
    arr[...] = a
    v = emarray.open_volume(path)
    lay = chunk_io.layout(v.handle())
    assert make == "zarr sharded without index checksum" or (
        isinstance(lay, chunk_io.Layout) and not lay.crc)
    np.testing.assert_array_equal(v.read(), a)
    np.testing.assert_array_equal(v.data.compute(scheduler="threads"), a)
    for idx in itertools.product(range(2), range(2), range(2)):
        r = region_of(idx)
        np.testing.assert_array_equal(v.read(r), a[r])
        v.write(r, b[r])  # emarray writes keep the array's own codecs
    np.testing.assert_array_equal(zarr.open_array(str(arr.store_path.store.root / arr.path),
                                                  mode="r")[...], b)
    assert "crc32c" not in json_codecs(zarr.open_array(str(arr.store_path.store.root / arr.path)))


def json_codecs(arr) -> str:
    import json
    return json.dumps(arr.metadata.to_dict()["codecs"])


@pytest.mark.parametrize("shards", [None, (8, 12, 12)])
def test_other_readers_read_what_emarray_writes_and_see_the_damage(tmp_path, shards):
    a = sample("float32")
    make_volume(tmp_path / "v.zarr", a, (4, 6, 6) if shards is None else (2, 3, 3),
                shards=shards)
    v = emarray.open_volume(tmp_path / "v.zarr")
    for r in (region_of(i, v.block_shape) for i in itertools.product(
            *(range(-(-n // c)) for n, c in zip(SHAPE, v.block_shape)))):
        v.write(r, a[r])  # whole chunks through chunk_io (unsharded)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "v.zarr" / "0"))[...], a)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file",
                                           "path": str(tmp_path / "v.zarr" / "0")}}
    np.testing.assert_array_equal(ts.open(spec).result().read().result(), a)
    flip(tmp_path / "v.zarr" / v.chunk_key((0, 0, 0)), "middle")
    with pytest.raises(ValueError, match="[Dd]igest mismatch|failed"):  # never values
        ts.open(spec).result().read().result()


def test_a_missing_chunk_of_an_emarray_volume_is_named(tmp_path):
    a, src = prob_map(tmp_path / "p.zarr")
    a[:] = 0  # all zeros: every chunk is still written
    make_volume(tmp_path / "z.zarr", a, (4, 8, 8))
    m = emarray.threshold(tmp_path / "z.zarr", tmp_path / "m.zarr", 0.5)
    info = emarray.info(m)
    assert info["chunks_stored"] == info["chunks_expected"] == 3 * 2 * 3
    chunk = tmp_path / "m.zarr" / "0" / "c" / "1" / "1" / "2"
    chunk.unlink()
    line = one_error_line(cli("-q", "threshold", tmp_path / "m.zarr", tmp_path / "n.zarr",
                              "--value", "0"))
    assert "0/c/1/1/2" in line and "missing" in line
    assert "DAMAGED" in emarray.info(m)["status"]
    with pytest.raises(ChunkReadError):
        emarray.open_volume(tmp_path / "m.zarr").read()
