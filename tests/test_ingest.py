from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

import emarray
from emarray.errors import (InvalidArgumentError, OutputExistsError, ShapeMismatchError,
                            VolumeNotFoundError)
from emarray.sources import natural_key

from .conftest import make_volume, tree_digest


def _pillow_stack(files):
    return np.stack([np.asarray(Image.open(f)).astype(np.uint8) if Image.open(f).mode == "1"
                     else np.asarray(Image.open(f)) for f in files])


def test_natural_order():
    names = ["10.png", "2.png", "1.png", "slice_100.tif", "slice_20.tif"]
    assert sorted(names, key=natural_key) == ["1.png", "2.png", "10.png", "slice_20.tif",
                                              "slice_100.tif"]


@pytest.mark.parametrize("chunks", ["7,128,100", "30,512,512", "4,64,64"])
def test_isbi_png_slices_round_trip(shared_data, tmp_path, chunks):
    folder = shared_data / "isbi2012-train/data/membrane/train/image"
    files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))  # numeric, not text, order
    v = emarray.ingest(folder, tmp_path / "isbi.zarr", chunks=chunks, voxel_size="50,4,4")
    assert v.shape == (30, 512, 512) and v.dtype == np.uint8
    np.testing.assert_array_equal(v.read(), _pillow_stack(files))


def test_drosophila_tiff_slices_and_png_masks(shared_data, tmp_path):
    stack = shared_data / "drosophila-vnc-stack1/stack1"
    raw = emarray.ingest(stack / "raw", tmp_path / "raw.zarr", voxel_size="50,4.6,4.6",
                         chunks="8,256,256", compression="blosc-lz4")
    want = np.stack([tifffile.imread(stack / "raw" / f"{i:02d}.tif") for i in range(20)])
    np.testing.assert_array_equal(raw.read(), want)
    assert raw.voxel_size == (50.0, 4.6, 4.6)
    for kind in ("mitochondria", "membranes"):  # 8-bit with three 1-bit slices; all 1-bit
        m = emarray.ingest(stack / kind, tmp_path / f"{kind}.zarr", chunks="8,256,256")
        files = [stack / kind / f"{i:02d}.png" for i in range(20)]
        if kind == "mitochondria":  # 1-bit slices among greyscale: PIL's own conversion, 0/255
            want = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
        else:
            want = _pillow_stack(files)
        np.testing.assert_array_equal(m.read(), want)


@pytest.mark.parametrize("name,dtype", [("train-image.h5", np.uint8), ("train-p1.lzf.h5", np.float32),
                                        ("train-gt.lzf.h5", np.int32)])
def test_gala_hdf5_round_trip(shared_data, tmp_path, name, dtype):
    path = shared_data / "gala-flyem" / name
    v = emarray.ingest(path, tmp_path / "g.zarr", dataset="stack", chunks="7,32,64")
    with h5py.File(path, "r") as f:
        want = f["stack"][...]
    assert v.dtype == dtype
    np.testing.assert_array_equal(v.read(), want)


def test_multipage_tiff_round_trip(shared_data, tmp_path):
    path = shared_data / "gala-flyem/snemi-mini/train-fragments.tif"
    v = emarray.ingest(path, tmp_path / "f.zarr", chunks="5,64,64", shards="10,128,128")
    np.testing.assert_array_equal(v.read(), tifffile.imread(path))
    assert v.dtype == np.uint16 and v.shards == (10, 128, 128)


def test_hdf5_needs_a_dataset_name_when_it_holds_several(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 3, 4), np.uint8)
        f["b"] = np.ones((2, 3, 4), np.uint8)
    with pytest.raises(InvalidArgumentError, match=r"name one with dataset=NAME"):  # Python
        emarray.ingest(tmp_path / "two.h5", tmp_path / "o.zarr")
    with pytest.raises(InvalidArgumentError, match="'c' is not in"):
        emarray.ingest(tmp_path / "two.h5", tmp_path / "o.zarr", dataset="c")
    v = emarray.ingest(tmp_path / "two.h5", tmp_path / "o.zarr", dataset="b")
    assert v.read().all()


def test_mismatched_slice_is_named_before_work(tmp_path):
    src = tmp_path / "slices"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"{i}.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(src / "3.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(ShapeMismatchError, match="3.tif"):
        emarray.ingest(src, tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("kw,match", [
    ({"voxel_size": "1,2"}, "voxel_size"), ({"voxel_size": "0,1,1"}, "voxel_size"),
    ({"unit": "parsecs!"}, "unit"), ({"chunks": "0,4,4"}, "chunks"),
    ({"compression": "lzma"}, "compression"),
])
def test_bad_options_fail_before_anything_is_written(tmp_path, kw, match):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    before = tree_digest(tmp_path)
    with pytest.raises(InvalidArgumentError, match=match):
        emarray.ingest(tmp_path / "s.tif", tmp_path / "o.zarr", **kw)
    assert tree_digest(tmp_path) == before


def test_missing_source_and_existing_output(tmp_path):
    with pytest.raises(VolumeNotFoundError, match="nothing.tif"):
        emarray.ingest(tmp_path / "nothing.tif", tmp_path / "o.zarr")
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    emarray.ingest(tmp_path / "s.tif", tmp_path / "o.zarr")
    with pytest.raises(OutputExistsError):
        emarray.ingest(tmp_path / "s.tif", tmp_path / "o.zarr")


@pytest.mark.parametrize("compress", [False, True])
def test_ingest_reads_one_chunk_at_a_time(tmp_path, compress):
    """The source is read one chunk-sized region per task (not whole slabs of slices), and a
    compressed stack decodes only the strips a chunk overlaps."""
    from emarray.sources import MultiPageTiff
    reads = []
    orig = MultiPageTiff.read

    def spy(self, region):
        out = orig(self, region)
        reads.append(out.size)
        return out

    a = np.random.default_rng(0).integers(0, 255, (40, 32, 48), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", a, compression="zlib" if compress else None,
                     rowsperstrip=4)
    MultiPageTiff.read = spy
    try:
        v = emarray.ingest(tmp_path / "s.tif", tmp_path / "o.zarr", chunks="6,8,16",
                           scheduler="synchronous", voxel_size="1,1,1")
    finally:
        MultiPageTiff.read = orig
    assert max(reads) == 6 * 8 * 16 and sum(reads) == a.size
    np.testing.assert_array_equal(v.read(), a)


@pytest.mark.parametrize("ext", [".tif", ".h5"])
def test_export_round_trip(tmp_path, ext):
    a = np.random.default_rng(9).random((11, 13, 17)).astype(np.float32)
    v = make_volume(tmp_path / "v.zarr", a, (4, 5, 6), voxel_size=(40, 4, 4))
    p = emarray.export(v, tmp_path / f"out{ext}", region="2:9,3:,")
    if ext == ".tif":
        got = tifffile.imread(p)
    else:
        with h5py.File(p, "r") as f:
            got = f["data"][...]
            assert list(f["data"].attrs["element_size_um"]) == pytest.approx([0.04, 0.004, 0.004])
    np.testing.assert_array_equal(got, a[2:9, 3:, :])
    with pytest.raises(OutputExistsError):
        emarray.export(v, p)
    with pytest.raises(InvalidArgumentError, match="outside the volume"):
        emarray.export(v, tmp_path / f"x{ext}", region="0:99,,")
    assert not (tmp_path / f"x{ext}").exists()
