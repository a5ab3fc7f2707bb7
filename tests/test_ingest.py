"""emarray ingest from TIFF stacks, slice folders and HDF5, against the arrays written: voxel
sizes read (or said to be missing), palette and 1-bit PNG slices, region-by-region reads."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

import emarray
from emarray.errors import (
    EmarrayWarning,
    InvalidArgumentError,
    OutputExistsError,
    ShapeMismatchError,
    VolumeNotFoundError,
)
from emarray.sources import natural_key

from .conftest import make_volume, tree_digest
from .helpers import cli


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


def test_hdf5_element_size_um_is_read(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("stack", data=a).attrs["element_size_um"] = [0.05, 0.004, 0.004]
    v = emarray.ingest(tmp_path / "a.h5", tmp_path / "a.zarr")
    assert v.unit == "micrometer" and v.voxel_size == pytest.approx((0.05, 0.004, 0.004))
    v = emarray.ingest(tmp_path / "a.h5", tmp_path / "b.zarr", unit="nm")
    assert v.unit == "nanometer" and v.voxel_size == pytest.approx((50, 4, 4))


def test_tiff_export_carries_the_voxel_size_back_to_ingest(tmp_path):
    for dtype in ("uint8", "int32"):  # ImageJ's format, and tifffile's own metadata
        a = np.arange(4 * 6 * 8).reshape(4, 6, 8).astype(dtype)
        v = emarray.create_volume(tmp_path / f"{dtype}.zarr", a.shape, dtype, 2,
                                  voxel_size=(40, 4, 5), unit="nanometer")
        v.write((slice(0, 4), slice(0, 6), slice(0, 8)), a)
        out = emarray.export(v, tmp_path / f"{dtype}.tif")
        with tifffile.TiffFile(out) as tf:  # what another program reads
            x = tf.pages[0].tags["XResolution"].value
            assert x[1] / x[0] == pytest.approx(0.005)
        back = emarray.ingest(out, tmp_path / f"{dtype}-back.zarr", unit="nanometer")
        np.testing.assert_array_equal(back.read(), a)
        assert back.voxel_size == pytest.approx((40, 4, 5))
    h5 = emarray.export(v, tmp_path / "v.h5")
    with h5py.File(h5) as f:
        assert f["data"].attrs["element_size_um"].tolist() == pytest.approx([0.04, 0.004, 0.005])


def test_a_source_without_a_voxel_size_says_so(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 3, 4), np.uint8), photometric="minisblack")
    with pytest.warns(EmarrayWarning, match="records no voxel size"):
        v = emarray.ingest(tmp_path / "s.tif", tmp_path / "s.zarr")
    assert v.voxel_size == (1.0, 1.0, 1.0)
    r = cli("ingest", tmp_path / "s.tif", tmp_path / "t.zarr", "-q")
    assert r.returncode == 0 and r.stderr.startswith("warning: ") and "--voxel-size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_palette_png_labels_ingest_as_their_indices_and_rgb_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (3, 10, 12)).astype(np.uint8)
    (tmp_path / "p").mkdir()
    for i, sl in enumerate(labels):
        im = Image.fromarray(sl, mode="P")
        im.putpalette([c for k in range(6) for c in (40 * k, 255 - 40 * k, 7 * k)])
        im.save(tmp_path / "p" / f"{i}.png")
    v = emarray.ingest(tmp_path / "p", tmp_path / "p.zarr", voxel_size=1)
    np.testing.assert_array_equal(v.read(), labels)
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), mode="RGB").save(tmp_path / "rgb" / "0.png")
    with pytest.raises(InvalidArgumentError, match="RGB .*colour.*greyscale"):
        emarray.ingest(tmp_path / "rgb", tmp_path / "rgb.zarr")
    assert not (tmp_path / "rgb.zarr").exists()


def test_one_bit_png_slices_among_greyscale_ones_are_white_255(tmp_path, shared_data):
    """The VNC mitochondria folder saves slices 1, 7 and 18 as 1-bit PNGs and the rest as 8-bit
    greyscale: read as 0/1, those slices vanished under the documented threshold > 127."""
    masks = np.random.default_rng(1).random((4, 6, 8)) > 0.5
    for name, modes in (("mixed", ("L", "1", "L", "1")), ("bilevel", ("1",) * 4)):
        (tmp_path / name).mkdir()
        for i, (m, sl) in enumerate(zip(modes, masks)):
            a = sl.astype(np.uint8) * 255
            (Image.fromarray(a, "L") if m == "L" else Image.fromarray(a, "L").convert("1")).save(
                tmp_path / name / f"{i}.png")
        v = emarray.ingest(tmp_path / name, tmp_path / f"{name}.zarr", voxel_size=1)
        np.testing.assert_array_equal(v.read(), masks.astype(np.uint8) * (255 if name == "mixed" else 1))
    (tmp_path / "pal").mkdir()
    Image.fromarray(masks[0].astype(np.uint8), "P").save(tmp_path / "pal" / "0.png")
    Image.fromarray(masks[1]).save(tmp_path / "pal" / "1.png")
    with pytest.raises(InvalidArgumentError, match="mixes 1-bit and palette"):
        emarray.ingest(tmp_path / "pal", tmp_path / "pal.zarr", voxel_size=1)
    v = emarray.ingest(shared_data / "drosophila-vnc-stack1" / "stack1" / "mitochondria",
                       tmp_path / "mito.zarr", voxel_size=1)
    fraction = (v.read() > 127).mean(axis=(1, 2))
    assert fraction.min() > 0.03, fraction   # every slice has its mitochondria


def test_a_contiguous_single_page_stack_is_read_region_by_region(tmp_path):
    a = np.random.default_rng(1).integers(0, 60000, (9, 16, 20)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", a, volumetric=True)  # one SGI volume page
    from emarray.sources import MultiPageTiff
    src = MultiPageTiff(tmp_path / "v.tif")
    assert not src.paged and src.offset is not None  # memory-mapped, not re-read whole
    region = (slice(3, 7), slice(5, 11), slice(2, 19))
    np.testing.assert_array_equal(src.read(region), a[region])
    v = emarray.ingest(tmp_path / "v.tif", tmp_path / "v.zarr", chunks="2,8,7", voxel_size=1)
    np.testing.assert_array_equal(v.read(), a)
