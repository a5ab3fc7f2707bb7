"""export --format precomputed: every pyramid level, read back equal through tensorstore."""
from __future__ import annotations

import json

import numpy as np
import pytest

import emarray
from emarray.errors import EmarrayWarning, OutputExistsError
from .conftest import make_volume, tree_digest
from .helpers import cli, one_error_line


def read_scales(path):
    import tensorstore as ts
    info = json.loads((path / "info").read_text())
    out = []
    for i, sc in enumerate(info["scales"]):
        arr = ts.open({"driver": "neuroglancer_precomputed",
                       "kvstore": {"driver": "file", "path": str(path)}, "scale_index": i}).result()
        out.append((sc, arr[..., 0].read().result().T))
    return info, out


@pytest.mark.parametrize("shape,chunks", [((37, 70, 301), (16, 32, 64)), ((5, 9, 3), (2, 4, 3))])
def test_an_image_pyramid_round_trips(tmp_path, shape, chunks):
    data = np.random.default_rng(1).integers(0, 255, shape).astype(np.uint8)
    make_volume(tmp_path / "raw.zarr", data, chunks, voxel_size=(40.0, 8.0, 8.0))
    emarray.pyramid(tmp_path / "raw.zarr", levels=2, progress=False)
    out = emarray.export(tmp_path / "raw.zarr", tmp_path / "ng", format="precomputed",
                         progress=False)
    info, scales = read_scales(out)
    assert info["type"] == "image" and info["data_type"] == "uint8"
    assert len(scales) == 3
    for level, (sc, got) in enumerate(scales):
        want = emarray.open_volume(tmp_path / "raw.zarr", level=level)
        np.testing.assert_array_equal(got, want.read())
        assert sc["resolution"] == pytest.approx(list(want.voxel_size[::-1]))
        assert "sharding" in sc
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_labels_become_a_segmentation_with_exact_large_ids(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.array([0, 1, 2**53 + 1, 2**64 - 2], np.uint64)
    data = ids[rng.integers(0, 4, (20, 33, 40))]
    v = emarray.create_volume(tmp_path / "cells.zarr", data.shape, data.dtype, (8, 16, 16),
                              voxel_size=(0.03, 0.004, 0.004), unit="micrometer")  # to nm
    v.write((slice(None),) * 3, data)
    r = cli("export", tmp_path / "cells.zarr", tmp_path / "ng", "--format", "precomputed", "-q")
    assert r.returncode == 0, r.stderr
    info, [(sc, got)] = read_scales(tmp_path / "ng")
    assert info["type"] == "segmentation" and info["data_type"] == "uint64"
    assert sc["encoding"] == "compressed_segmentation"
    np.testing.assert_array_equal(got, data)
    # and emarray reads it back as a volume
    back = emarray.open_volume(tmp_path / "ng")
    np.testing.assert_array_equal(back.read(), data)
    assert back.voxel_size == pytest.approx((30.0, 4.0, 4.0)) and back.unit == "nanometer"


def test_float64_is_written_as_float32_with_a_note(tmp_path):
    data = np.random.default_rng(3).random((6, 10, 12))
    make_volume(tmp_path / "p.zarr", data, (3, 5, 6))
    with pytest.warns(EmarrayWarning, match="float32"):
        emarray.export(tmp_path / "p.zarr", tmp_path / "ng", format="precomputed",
                       progress=False)
    info, [(_, got)] = read_scales(tmp_path / "ng")
    assert info["data_type"] == "float32"
    np.testing.assert_array_equal(got, data.astype(np.float32))


def test_refusals_before_any_work_and_a_users_folder_is_never_replaced(tmp_path):
    data = np.arange(4 * 6 * 8, dtype=np.int64).reshape(4, 6, 8) - 3
    make_volume(tmp_path / "neg.zarr", data, (2, 3, 4))
    make_volume(tmp_path / "u.zarr", np.ones((4, 6, 8), np.uint8), (2, 3, 4))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    before = tree_digest(tmp_path)
    for args, words in [
        (("u.zarr", "ng", "--format", "precomputed", "--region", "0:2,,"), "--region"),
        (("u.zarr", "ng", "--format", "jpeg"), "jpeg"),
        (("neg.zarr", "ng", "--format", "precomputed"), "negative"),
    ]:
        r = cli("export", *[tmp_path / a if a.endswith((".zarr", "mine", "ng")) else a
                            for a in args], "-q")
        assert r.returncode == 2, (args, r.stderr)
        assert words in one_error_line(r)
        assert tree_digest(tmp_path) == before, args
    # an export of ours is replaced with --overwrite (and only then)
    emarray.export(tmp_path / "u.zarr", tmp_path / "ng", format="precomputed", progress=False)
    make_volume(tmp_path / "u7.zarr", np.full((4, 6, 8), 7, np.uint8), (2, 3, 4))
    with pytest.raises(OutputExistsError):
        emarray.export(tmp_path / "u7.zarr", tmp_path / "ng", format="precomputed")
    emarray.export(tmp_path / "u7.zarr", tmp_path / "ng", format="precomputed", overwrite=True,
                   progress=False)
    assert (read_scales(tmp_path / "ng")[1][0][1] == 7).all()
    # a folder of the user's: the export goes beside their files, which stay (overwrite too)
    emarray.export(tmp_path / "u.zarr", mine, format="precomputed", progress=False)
    assert (mine / "notes.txt").read_text() == "keep"
    scale = next(p for p in mine.iterdir() if p.is_dir())
    (scale / "my-notes.txt").write_text("also mine")  # inside a scale folder, with a hyphen
    (mine / "a-b.txt").write_text("mine too")
    with pytest.raises(OutputExistsError):
        emarray.export(tmp_path / "u7.zarr", mine, format="precomputed")
    emarray.export(tmp_path / "u7.zarr", mine, format="precomputed", overwrite=True,
                   progress=False)
    assert (read_scales(mine)[1][0][1] == 7).all()
    assert (mine / "notes.txt").read_text() == "keep" and (mine / "a-b.txt").exists()
    assert (scale / "my-notes.txt").read_text() == "also mine"
    # a user's folder named like the old temporary one is not the export's
    (tmp_path / ".ng2.partial").mkdir()
    emarray.export(tmp_path / "u.zarr", tmp_path / "ng2", format="precomputed", progress=False)
    assert (tmp_path / ".ng2.partial").is_dir()
