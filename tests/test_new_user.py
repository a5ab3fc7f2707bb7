"""What a new user found on the real crops: sweep ranges, voxel sizes, slices, logs, progress."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

import emarray
from emarray.errors import EmarrayWarning, InvalidArgumentError

from .conftest import make_volume
from .helpers import cli

PY = sys.executable




# -- sweep over the map's own range ---------------------------------------------------------
def test_sweep_of_a_uint8_map_covers_every_level(shared_data, tmp_path):
    gala = shared_data / "gala-flyem"
    p = emarray.ingest(gala / "train-p1.lzf.h5", tmp_path / "p.zarr", voxel_size="10,10,10")
    t = emarray.ingest(gala / "train-gt.lzf.h5", tmp_path / "t.zarr", voxel_size="10,10,10")
    u8 = emarray.rescale(p, tmp_path / "p8.zarr", (0, 1))
    with _no_emarray_warning():
        df = emarray.sweep(u8, t, truth_value=0)
    assert len(df) == 255 and df["threshold"].tolist() == list(range(255))
    # independent count at every level
    prob, truth = u8.read(), t.read() == 0
    for k in (0, 100, 200, 254):
        pred = prob > k
        assert df.loc[k, "tp"] == np.count_nonzero(pred & truth)
        assert df.loc[k, "fp"] == np.count_nonzero(pred & ~truth)
    best = df.loc[df["f1"].idxmax()]
    assert best["threshold"] > 200 and best["f1"] > 0.45  # not the meaningless "t=0"
    assert df["f1"].nunique() > 100


class _no_emarray_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings(record=True)
        self.got = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.got if issubclass(w.category, EmarrayWarning)]


def test_sweep_warns_at_the_edge_and_for_an_empty_truth(tmp_path):
    p = np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 4, 4)
    pv = make_volume(tmp_path / "p.zarr", p, 2)
    tv = make_volume(tmp_path / "t.zarr", (p > 0.98).astype(np.uint8), 2)
    with pytest.warns(EmarrayWarning, match="edge of the thresholds swept"):
        df = emarray.sweep(pv, tv, values=[0.1, 0.2, 0.3])
    assert "edge" in df.attrs["warnings"][0]
    empty = make_volume(tmp_path / "e.zarr", np.zeros((4, 4, 4), np.uint8), 2)
    with pytest.warns(EmarrayWarning, match="no positive voxel"):
        emarray.sweep(pv, empty)
    r = cli("sweep", tmp_path / "p.zarr", tmp_path / "e.zarr", "--out", tmp_path / "s", "-q")
    assert r.returncode == 0 and "warning: the truth has no positive voxel" in r.stderr
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["warnings"]


# -- voxel sizes travel ---------------------------------------------------------------------
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


# -- slices ---------------------------------------------------------------------------------
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


def test_resume_removes_the_partial_files_a_killed_write_leaves(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    meta_path = tmp_path / "m.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["emarray"]["complete"] = False  # as a killed job leaves it
    meta_path.write_text(json.dumps(meta))
    junk = tmp_path / "m.zarr" / "0" / "c" / "0" / "0" / "1.0123abcd.partial"
    junk.write_bytes(b"half a chunk")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5, resume=True)
    assert not junk.exists()
    np.testing.assert_array_equal(m.read(), 1)


# -- logs and progress ----------------------------------------------------------------------
def test_quiet_and_verbose_work_after_the_subcommand(tmp_path):
    make_volume(tmp_path / "p.zarr", np.ones((8, 8, 8), np.float32), 4)
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "a.zarr", "--value", "0.5", "-q")
    assert r.returncode == 0 and r.stderr == ""
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "b.zarr", "--value", "0.5", "-v")
    assert "INFO emarray: threshold: 8 blocks" in r.stderr
    r = cli("-vv", "threshold", tmp_path / "p.zarr", tmp_path / "c.zarr", "--value", "0.5")
    assert r.returncode == 0 and "numcodecs" not in r.stderr and "asyncio" not in r.stderr


def test_progress_in_a_log_is_a_few_short_lines(tmp_path):
    make_volume(tmp_path / "p.zarr", np.ones((32, 32, 32), np.float32), 4)  # 512 blocks
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5")
    lines = r.stderr.splitlines()
    assert r.returncode == 0 and 2 <= len(lines) <= 12, r.stderr
    assert all(len(ln) < 120 and "\r" not in ln for ln in lines)
    assert lines[-1].startswith("threshold: 512/512 blocks (100%)")


@pytest.mark.cluster
def test_local_cluster_prints_no_distributed_logs(tmp_path):
    make_volume(tmp_path / "p.zarr", np.ones((8, 8, 8), np.float32), 4)
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5",
            "--scheduler", "local-cluster", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "distributed" not in r.stderr and "INFO" not in r.stderr
    assert "dask dashboard: http" in r.stderr


def test_every_command_that_writes_resumes():
    """Every operator that writes a volume, a table or a folder takes --resume and --overwrite
    (as its declaration says, so the docs say it too)."""
    from click.testing import CliRunner

    from emarray.cli import cli as group
    from emarray.spec import operators
    writers = [op for op in operators().values()
               if op.output is not None and op.output.kind != "file"]
    assert len(writers) >= 12
    for op in writers:
        assert "resume" in op.run and "overwrite" in op.run, op.name
        text = CliRunner().invoke(group, [op.name, "--help"]).output
        assert "--resume" in text and "--overwrite" in text, op.name


# -- the paths the README and the demo name are where the commands write ----------------------
NAMED = re.compile(r"(?<![\w/.:-])([\w.{}-]+/[\w./{},-]*)")
#: the repository's own folders: paths under them are what the commands read, not write
REPO = ("docs", "pipelines", "scripts", "emarray", "tests", "benchmarks", "kernels", ".venv")


def _named_paths(text: str) -> set[str]:
    """The relative paths ``text`` names ({a,b} expanded), but the repository's own."""
    out = set()
    for p in NAMED.findall(text):
        p = p.rstrip(".,:")
        m = re.search(r"\{([^}]*)\}", p)
        out |= ({p[:m.start()] + part + p[m.end():] for part in m.group(1).split(",")} if m
                else {p})
    return {p for p in out if p.split("/")[0] not in REPO}


def _small_recipe_run(argv: list[str]) -> list[str]:
    return argv + ["--set", "shape=16,64,64", "--set", "chunks=8,32,32", "--set", "min_size=5"]


def test_the_readmes_look_commands_write_where_it_says(tmp_path, monkeypatch):
    """Run in a fresh folder as the README says (a small tour/ in place of the trained one),
    every path the block names exists afterwards, and nothing lands beside tour/ and work/."""
    from click.testing import CliRunner

    from emarray.cli import cli as cli_

    from .conftest import ROOT
    text = (ROOT / "README.md").read_text().split("## Look at the results", 1)[1]
    block, after = text.split("```bash\n", 1)[1].split("```", 1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    shutil.copy(ROOT / "pipelines" / "demo.yaml", tmp_path / "pipelines")
    vols = emarray.datasets.synthetic("tour", (16, 64, 64), chunks=(8, 32, 32), progress=False)
    mask = emarray.threshold(vols["prob"], "tour/mask.zarr", 0.5, progress=False)
    emarray.label(mask, "tour/cells.zarr", min_size=5, progress=False)
    named = _named_paths(block) | _named_paths(after.split("\n\n", 2)[1])
    for line in block.splitlines():
        argv = shlex.split(line.partition("  #")[0])[1:]
        if not argv or (argv[0] == "view" and "--screenshot" not in argv):
            continue  # serves until Ctrl-C
        if argv[0] == "run":
            argv = _small_recipe_run(argv)
        r = CliRunner().invoke(cli_, ["-q", *argv])
        assert r.exit_code == 0, (line, r.output)
    assert sorted(os.listdir(tmp_path)) == ["pipelines", "tour", "work"]  # nothing beside them
    missing = sorted(p for p in named if not (tmp_path / p).exists())
    assert not missing, missing


def test_the_demo_ends_with_next_steps_whose_paths_exist(tmp_path, monkeypatch):
    """emarray demo (what scripts/dev.sh demo runs) writes its report and prints what to run
    next; every path it and docs/install.md name exists once those commands ran."""
    from click.testing import CliRunner

    from emarray.cli import cli as cli_

    from .conftest import ROOT
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    shutil.copy(ROOT / "pipelines" / "demo.yaml", tmp_path / "pipelines")
    r = CliRunner().invoke(cli_, ["-q", "demo", "--size", "16,64,64"])
    assert r.exit_code == 0, r.output
    tail = r.output.split("\nnext:\n", 1)[1]
    assert "open emarray-demo/report.html" in tail and "emarray view emarray-demo" in tail
    run = next(ln for ln in tail.splitlines() if ln.strip().startswith("emarray run "))
    r2 = CliRunner().invoke(cli_, ["-q", *_small_recipe_run(
        shlex.split(run.partition("#")[0])[1:])])
    assert r2.exit_code == 0, r2.output
    install = (ROOT / "docs" / "install.md").read_text().split("The demo makes", 1)[1]
    named = _named_paths(r.output) | _named_paths(install.split("```", 2)[1])
    assert {"emarray-demo/report.html", "work/demo/report.html", "emarray-demo/raw.zarr",
            "emarray-demo/sweep/sweep.csv"} <= named
    missing = sorted(p for p in named if not (tmp_path / p).exists())
    assert not missing, missing
    page = (tmp_path / "emarray-demo" / "report.html").read_text()
    assert "mask.zarr" in page and "sweep.png" in page and "emarray view" in page


# -- tables show the values computed, not float noise -----------------------------------------
@pytest.mark.parametrize("voxel,unit,translation", [
    ((10, 10, 10), "nanometer", None),           # 87945 * (1000 * 0.001**3) was 0.08794500000000001
    ((50, 4.6, 4.6), "nanometer", (100, 0.3, 0.7)),
    ((0.01, 0.004, 0.004), "micrometer", None),
    ((40, 8, 8), "angstrom", (0.1, 0.2, 0.3)),
])
def test_csv_tables_hold_the_exact_values_not_float_noise(tmp_path, voxel, unit, translation):
    """Every physical value in the objects and sweep CSVs is the decimal its inputs make (voxel
    sizes as written, Python fractions as the reference); ratios are the double nearest the
    true ratio; each CSV reads back to the very doubles returned."""
    from fractions import Fraction as F

    import pandas as pd
    rng = np.random.default_rng(7)
    lab = rng.integers(0, 40, (12, 30, 30)).astype(np.uint32)
    lab[lab > 30] = 0
    v = emarray.create_volume(tmp_path / "l.zarr", lab.shape, lab.dtype, (6, 15, 15),
                              voxel_size=voxel, unit=unit, translation=translation)
    v.write(tuple(slice(0, s) for s in lab.shape), lab)
    df = emarray.objects(v, out=tmp_path / "o.csv", progress=False)
    text = pd.read_csv(tmp_path / "o.csv", dtype=str)
    um = {"nanometer": F(1, 1000), "micrometer": F(1), "angstrom": F(1, 10000)}[unit]
    size = [F(str(s)) for s in voxel]
    origin = [F(str(o)) for o in (translation or (0, 0, 0))]
    idx = np.indices(lab.shape)
    for row in text.itertuples():
        i = int(row.id)
        n = int(np.count_nonzero(lab == i))
        assert F(row.volume_um3) == n * size[0] * size[1] * size[2] * um ** 3, row.volume_um3
        for j, a in enumerate("zyx"):
            s = int(idx[j][lab == i].sum())
            exact = (F(s, n) * size[j] + origin[j]) * um
            assert float(getattr(row, f"centroid_{a}_um")) == float(exact)
    back = pd.read_csv(tmp_path / "o.csv", float_precision="round_trip")
    pd.testing.assert_frame_equal(back, df.reset_index(drop=True), check_dtype=False,
                                  check_exact=True)
    mask = emarray.create_volume(tmp_path / "p.zarr", lab.shape, "float32", (6, 15, 15),
                                 voxel_size=voxel, unit=unit)
    prob = rng.random(lab.shape).astype(np.float32)
    mask.write(tuple(slice(0, s) for s in lab.shape), prob)
    emarray.sweep(mask, v, out=tmp_path / "s", thresholds=20, progress=False)
    sw = pd.read_csv(tmp_path / "s" / "sweep.csv", dtype=str)
    for row in sw.itertuples():
        for count, col in ((row.predicted_voxels, row.predicted_um3),
                           (row.true_voxels, row.true_um3)):
            assert F(col) == int(count) * size[0] * size[1] * size[2] * um ** 3, col
        tp, fp = int(row.tp), int(row.fp)
        assert float(row.precision) == (float(F(tp, tp + fp)) if tp + fp else 0.0)
        assert F(row.threshold) == F(int(round(float(row.threshold) * 20)), 20)
    # match's tables: ratios of counts, each the double nearest the true ratio
    other = emarray.create_volume(tmp_path / "o.zarr", lab.shape, lab.dtype, (6, 15, 15),
                                  voxel_size=voxel, unit=unit)
    other.write(tuple(slice(0, s) for s in lab.shape), np.roll(lab, 2, axis=2))
    emarray.match(other, v, out=tmp_path / "m", progress=False)
    mt = pd.read_csv(tmp_path / "m" / "matching.csv", dtype=str)
    for row in mt.itertuples():
        tp, fp, fn = int(row.tp), int(row.fp), int(row.fn)
        assert float(row.precision) == float(F(tp, tp + fp)) and float(row.f1) == float(
            F(2 * tp, 2 * tp + fp + fn))
    obj = pd.read_csv(tmp_path / "m" / "objects.csv", dtype=str).dropna(
        subset=["relative_volume_difference"])
    for row in obj[obj["kind"] == "truth"].itertuples():
        if int(row.pred_voxels):
            want = F(int(row.pred_voxels) - int(row.truth_voxels), int(row.truth_voxels))
            assert float(row.relative_volume_difference) == float(want)


@pytest.mark.parametrize("lo,hi", [(2.3e-4, 8.1e-4), (9e-4, 3.1e-3), (1e-3, 0.12), (1e-6, 0.1),
                                   (1e-4, 30.0), (1000.0, 1100.0)])
def test_the_objects_histogram_has_readable_ticks(tmp_path, monkeypatch, lo, hi):
    """Three or more labelled ticks inside the data's range, increasing, whatever the spread
    (a log axis over less than a decade showed one tick, or none); whole counts up the side."""
    import pandas as pd

    from emarray import figures
    from emarray.ops.objects import plot_volumes
    made = []
    real = figures.subplots
    monkeypatch.setattr(figures, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    v = np.concatenate([[lo, hi], np.geomspace(lo, hi, 50)])
    plot_volumes(pd.DataFrame({"volume_um3": v}), tmp_path / "h.png", title="t")
    fig, ax = made[0]
    fig.canvas.draw()
    ticks = [(t, lab.get_text()) for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())
             if lo <= t <= hi and lab.get_text()]
    assert len(ticks) >= 3, ticks
    assert [float(text.replace("−", "-")) for _, text in ticks] == sorted(
        float(text.replace("−", "-")) for _, text in ticks)
    assert all(float(y).is_integer() for y in ax.get_yticks())
    assert (tmp_path / "h.png").stat().st_size > 1000
