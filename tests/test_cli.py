from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.cli import cli

from .conftest import make_volume


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and r.output.startswith("emarray ")
    r = run("--help")
    for cmd in ("demo", "ingest", "export", "threshold", "info", "synthetic"):
        assert cmd in r.output
    r = run("threshold", "--help")
    assert "--resume" in r.output and "--scheduler" in r.output and "Z,Y,X" in r.output


def test_threshold_info_export_through_the_cli(tmp_path):
    a = np.random.default_rng(0).random((6, 10, 12)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (3, 5, 5), voxel_size=(40, 4, 4))
    r = run("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.4",
            "--compare", "ge")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a.astype(np.float64) >= 0.4).astype(np.uint8))
    r = run("info", tmp_path / "m.zarr", "--json")
    d = json.loads(r.output)
    assert d["shape"] == [6, 10, 12] and d["voxel_size"] == [40.0, 4.0, 4.0]
    r = run("info", tmp_path / "m.zarr")
    assert "compression ratio" in r.output and "uint8" in r.output
    r = run("-q", "export", tmp_path / "m.zarr", tmp_path / "m.tif", "--region", "1:3,,")
    assert r.exit_code == 0
    import tifffile
    assert tifffile.imread(tmp_path / "m.tif").shape == (2, 10, 12)


@pytest.mark.parametrize("args,needle", [
    (["threshold", "{p}", "{d}", "--value", "nan"], "value must be finite, got nan"),
    (["threshold", "{d}/missing.zarr", "{d}/o.zarr", "--value", "1"], "missing.zarr"),
    (["threshold", "{p}", "{p}", "--value", "1", "--overwrite"], "overlaps the input"),
    (["ingest", "{d}/none", "{d}/o.zarr"], "none"),
    (["ingest", "{d}/s.tif", "{d}/o.zarr", "--voxel-size", "4,4"], "voxel_size"),
    (["info", "{d}/missing"], "missing"),
    (["export", "{p}", "{d}/x.png"], ".tif/.tiff or .h5"),
])
def test_errors_are_one_line_exit_2_and_change_nothing(tmp_path, args, needle):
    import tifffile
    make_volume(tmp_path / "p.zarr", np.zeros((4, 4, 4), np.float32), 2)
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    before = sorted(os.listdir(tmp_path))
    argv = [a.format(p=tmp_path / "p.zarr", d=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "emarray", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and needle in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_demo_runs_and_scores(tmp_path):
    r = run("-q", "demo", "--size", "32,64,64", "--out", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    assert "F1" in r.output and "IoU" in r.output
    mask = emarray.open_volume(tmp_path / "demo" / "mask.zarr").read()
    prob = emarray.open_volume(tmp_path / "demo" / "prob.zarr").read()
    np.testing.assert_array_equal(mask, (prob > 0.5).astype(np.uint8))
    # re-running replaces the demo's own folder, but never a folder it did not make
    assert run("-q", "demo", "--size", "16", "--out", tmp_path / "demo").exit_code == 0
    (tmp_path / "mine").mkdir()
    r = CliRunner().invoke(cli, ["-q", "demo", "--out", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "not made by the demo" in r.output
