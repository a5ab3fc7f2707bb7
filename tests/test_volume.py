"""Volumes: OME-Zarr metadata, units and voxel sizes, reads and writes, and a broken store named
in one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import emarray
from emarray.errors import ChunkReadError, InvalidArgumentError, VolumeNotFoundError

from .conftest import make_volume
from .helpers import cli, one_error_line, prob_map


def test_create_and_open_roundtrip(tmp_path):
    a = np.random.default_rng(0).random((9, 21, 30)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, (4, 8, 8), voxel_size=(40, 4.5, 4.5))
    assert v.shape == a.shape and v.dtype == np.float32 and v.chunks == (4, 8, 8)
    assert v.axes == ("z", "y", "x") and v.voxel_size == (40.0, 4.5, 4.5)
    assert v.unit == "nanometer"
    np.testing.assert_array_equal(v.read(), a)
    np.testing.assert_array_equal(v.data.compute(), a)
    assert v.data.chunks[0] == (4, 4, 1)  # blocks are whole storage chunks


def test_sharded_volume_blocks_are_shards(tmp_path):
    a = np.arange(16 * 16 * 16, dtype=np.uint16).reshape(16, 16, 16)
    v = make_volume(tmp_path / "s.zarr", a, (4, 4, 4), shards=(8, 8, 16))
    assert v.shards == (8, 8, 16) and v.block_shape == (8, 8, 16)
    assert v.data.chunks == ((8, 8), (8, 8), (16,))
    np.testing.assert_array_equal(v.data.compute(), a)


def _schema_registry(shared_data):
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
    resources = []
    for p in (shared_data / "ome-ngff-spec" / "0.5" / "schemas").glob("*.schema"):
        doc = json.loads(p.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


def _validator(shared_data, name):
    from jsonschema import Draft202012Validator
    reg = _schema_registry(shared_data)
    schema = reg.contents(f"https://ngff.openmicroscopy.org/0.5/schemas/{name}")
    return Draft202012Validator(schema, registry=reg)


def test_schema_validator_rejects_the_spec_invalid_cases(shared_data):
    # the validator set-up must itself be able to fail: run the spec's own suite through it
    suite = json.loads((shared_data / "ome-ngff-spec/0.5/tests/image_suite.json").read_text())
    v = _validator(shared_data, "image.schema")
    for case in suite["tests"]:
        assert v.is_valid(case["data"]) == case["valid"], case.get("formerly")


@pytest.mark.parametrize("unit", ["nanometer", "um"])
def test_written_metadata_validates_against_ome_0_5(tmp_path, shared_data, unit):
    v = emarray.create_volume(tmp_path / "v.zarr", (5, 6, 7), "uint8", 4, voxel_size=(30, 4, 4),
                              unit=unit)
    attrs = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())["attributes"]
    for name in ("image.schema", "strict_image.schema"):
        errors = list(_validator(shared_data, name).iter_errors(attrs))
        assert not errors, errors
    arr = json.loads((tmp_path / "v.zarr" / "0" / "zarr.json").read_text())
    assert arr["zarr_format"] == 3 and arr["dimension_names"] == ["z", "y", "x"]
    assert v.unit == ("micrometer" if unit == "um" else "nanometer")


def test_ome_zarr_py_reader_opens_what_emarray_writes(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    a = np.random.default_rng(1).integers(0, 255, (6, 10, 12), dtype=np.uint8)
    make_volume(tmp_path / "v.zarr", a, (3, 5, 5), voxel_size=(50, 5, 5))
    nodes = list(Reader(parse_url(str(tmp_path / "v.zarr")))())
    image = nodes[0]
    np.testing.assert_array_equal(np.asarray(image.data[0]), a)
    ms = image.metadata
    assert [ax["name"] for ax in ms["axes"]] == ["z", "y", "x"]
    assert ms["coordinateTransformations"][0][0]["scale"] == [50.0, 5.0, 5.0]


def test_n5_written_by_hand_reads_as_z_y_x(tmp_path):
    """An N5 block laid out by the spec (x fastest, big-endian) with no library involved."""
    import struct
    a = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)  # z, y, x
    p = tmp_path / "v.n5"
    (p / "0" / "0").mkdir(parents=True)
    (p / "attributes.json").write_text(json.dumps(
        {"dimensions": [5, 4, 3], "blockSize": [5, 4, 3], "dataType": "uint16",
         "compression": {"type": "raw"}}))
    header = struct.pack(">HH", 0, 3) + struct.pack(">III", 5, 4, 3)
    (p / "0" / "0" / "0").write_bytes(header + a.astype(">u2").tobytes())  # x varies fastest
    v = emarray.open_volume(p)
    assert v.kind == "n5" and v.shape == (3, 4, 5) and v.axes == ("z", "y", "x")
    np.testing.assert_array_equal(v.read(), a)


def test_tensorstore_formats_open_read_only(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 60000, (10, 20, 30), dtype=np.uint16)
    specs = {
        "zarr2": {"driver": "zarr", "metadata": {"dtype": "<u2", "shape": [10, 20, 30],
                                                  "chunks": [4, 8, 8]}},
        # N5 lists its dimensions x first (column-major): x=30, y=20, z=10
        "n5": {"driver": "n5", "metadata": {"dataType": "uint16", "dimensions": [30, 20, 10],
                                             "blockSize": [8, 8, 4],
                                             "compression": {"type": "gzip"}}},
    }
    for kind, spec in specs.items():
        p = tmp_path / kind
        t = ts.open({**spec, "kvstore": {"driver": "file", "path": str(p)}, "create": True}).result()
        t[...] = a if kind == "zarr2" else a.T
        v = emarray.open_volume(p)
        assert v.kind == kind and v.shape == a.shape and v.chunks == (4, 8, 8)
        np.testing.assert_array_equal(v.data.compute(), a)
        np.testing.assert_array_equal(emarray.open_volume(f"{kind}://{p}").read(), a)
    p = tmp_path / "pc"
    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(p)},
                 "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 1},
                 "scale_metadata": {"size": [30, 20, 10], "resolution": [4, 4, 40],
                                    "chunk_size": [8, 8, 4], "encoding": "raw"},
                 "create": True}).result()
    t[...] = a.T[..., None]  # precomputed stores x, y, z, channel
    v = emarray.open_volume(p)
    assert v.kind == "precomputed" and v.shape == (10, 20, 30)
    assert v.voxel_size == (40.0, 4.0, 4.0) and v.unit == "nanometer"
    np.testing.assert_array_equal(v.read(), a)
    with pytest.raises(InvalidArgumentError, match="only reads"):
        v.write((slice(0, 1),) * 3, np.zeros((1, 1, 1), np.uint16))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(VolumeNotFoundError, match="nope.zarr"):
        emarray.open_volume(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeNotFoundError, match="not a volume"):
        emarray.open_volume(tmp_path / "empty")


def test_corrupt_chunk_error_names_the_chunk(tmp_path):
    a = np.ones((8, 8, 8), np.float32)
    v = make_volume(tmp_path / "c.zarr", a, (4, 4, 4))
    bad = tmp_path / "c.zarr" / "0" / "c" / "1" / "0" / "1"
    assert bad.is_file()
    bad.write_bytes(b"not a zstd frame at all")
    with pytest.raises(ChunkReadError, match=r"'0/c/1/0/1'"):
        emarray.open_volume(tmp_path / "c.zarr").read()
    np.testing.assert_array_equal(v.read((slice(0, 4),) * 3), a[:4, :4, :4])  # others still read


@pytest.mark.parametrize("bad", ["1,2", "a,b,c", "0,1,1", "-1,2,2", "nan,1,1", "1,inf,1"])
def test_malformed_voxel_size_is_refused(tmp_path, bad):
    with pytest.raises(InvalidArgumentError, match="voxel size"):
        emarray.create_volume(tmp_path / "v.zarr", (4, 4, 4), "uint8", 2, voxel_size=bad)
    assert not (tmp_path / "v.zarr").exists()


@pytest.mark.parametrize("dtype", ["bool", "complex64", "U4", "object"])
def test_non_numeric_dtype_is_refused(tmp_path, dtype):
    with pytest.raises(InvalidArgumentError, match="numeric dtype|unknown dtype"):
        emarray.create_volume(tmp_path / "v.zarr", (4, 4, 4), dtype, 2)
    assert not (tmp_path / "v.zarr").exists()


def test_info_reports_layout_and_compression(tmp_path):
    a = np.zeros((16, 32, 32), np.uint16)
    make_volume(tmp_path / "z.zarr", a, (8, 16, 16), shards=(16, 32, 32), voxel_size=(40, 4, 4))
    d = emarray.info(tmp_path / "z.zarr")
    assert d["shape"] == (16, 32, 32) and d["chunks"] == (8, 16, 16)
    assert d["shards"] == (16, 32, 32) and d["levels"] == ["0"]
    assert d["nbytes"] == a.nbytes
    on_disk = sum(f.stat().st_size for f in Path(tmp_path / "z.zarr" / "0").rglob("*")
                  if f.is_file())
    assert d["stored_bytes"] == on_disk
    assert d["compression_ratio"] == pytest.approx(a.nbytes / on_disk)
    assert "shard:zstd" in d["codecs"]


@pytest.mark.parametrize("fmt", [3, 2])
@pytest.mark.parametrize("dtype, fill, shown", [
    ("int32", 777, "777"), ("uint8", 0, "0"), ("int8", -128, "-128"),
    ("uint64", 2**64 - 1, "18446744073709551615"), ("float32", -0.5, "-0.5"),
    ("float64", float("nan"), "nan"), ("uint16", 65535, "65535")])
def test_info_names_the_fill_value_chunks_not_stored_read_as(tmp_path, fmt, dtype, fill, shown):
    """A foreign volume whose empty half was never stored: info says what it reads as, and
    that is what emarray reads (zarr's own reading is the reference)."""
    import zarr
    path = tmp_path / "f.zarr"
    arr = zarr.create_array(str(path), shape=(8, 8, 8), chunks=(4, 4, 4), dtype=dtype,
                            fill_value=fill, zarr_format=fmt)
    arr[:4] = np.ones((4, 8, 8), dtype)  # the other half is never stored
    d = emarray.info(path)
    assert "4 of 8 chunks are not stored" in d["status"]
    assert d["status"].endswith(f"(they read as the fill value, {shown})"), d["status"]
    got = emarray.open_volume(path).read()
    np.testing.assert_array_equal(got, zarr.open_array(str(path), mode="r")[...])
    np.testing.assert_array_equal(got[4:], np.full((4, 8, 8), fill, dtype))
    assert np.array_equal(np.asarray(d["fill_value"], dtype), np.asarray(fill, dtype),
                          equal_nan=True)
    assert json.loads(json.dumps(d, default=list))["fill_value"] is not None


def test_every_ome_unit_converts_as_pint_says():
    pint = pytest.importorskip("pint")
    from emarray._normalize import SPACE_UNITS, micrometres
    ureg = pint.UnitRegistry()
    for unit in SPACE_UNITS:
        want = ureg.Quantity(1, unit).to("micrometer").magnitude
        assert micrometres(unit) == pytest.approx(want, rel=1e-9), unit
    with pytest.raises(InvalidArgumentError, match="furlong"):
        micrometres("furlong")


@pytest.mark.parametrize("damage", ["malformed", "missing", "bad-shape"])
def test_a_broken_store_is_one_line(tmp_path, damage):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    arr = tmp_path / "m.zarr" / "0"
    if damage == "malformed":
        (arr / "zarr.json").write_text("{not json")
    elif damage == "missing":
        shutil.rmtree(arr)
    else:
        meta = json.loads((arr / "zarr.json").read_text())
        meta["shape"] = [-3, 2]
        (arr / "zarr.json").write_text(json.dumps(meta))
    for args in (("info", tmp_path / "m.zarr"),
                 ("threshold", tmp_path / "m.zarr", tmp_path / "x.zarr", "--value", "0.5"),
                 ("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5",
                  "--resume")):
        assert "broken" in one_error_line(cli(*args)) or damage == "bad-shape"


def test_info_counts_the_chunks_of_a_foreign_volume(tmp_path):
    import zarr
    arr = zarr.create_array(str(tmp_path / "f.zarr"), shape=(8, 8, 8), chunks=(4, 4, 4),
                            dtype="uint8", fill_value=0)
    arr[:4] = 1  # zarr leaves the empty half unwritten
    r = cli("info", tmp_path / "f.zarr")
    assert r.returncode == 0, r.stderr
    assert "4 of 8 chunks" in r.stdout and "not stored" in r.stdout
