"""An output layout the job's blocks cannot write is refused in one line that names the option
the user gave (--chunks or --shards), its value, and a value that works; the value it suggests
is then run and gives the right output (NumPy is the reference)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.cli import cli

from .conftest import make_volume


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("sharded, args, needles", [
    (False, ["--chunks", "1000,1000,1000"],
     ["--chunks 1000,1000,1000 does not fit", "input's chunks, 8,8,8 voxels",
      "along z the chunk (1000, clipped to the volume's 16)", "e.g. --chunks 8,8,8"]),
    (False, ["--chunks", "8,6,8"], ["--chunks 8,6,8", "along y the chunk (6)", "--chunks 8,4,8"]),
    (False, ["--shards", "16,16,16"], ["--shards 16,16,16", "along z the shard (16)",
                                       "e.g. --shards 8,8,8"]),
    (False, ["--chunks", "4,4,4", "--shards", "12,12,12"],
     ["--shards 12,12,12", "the shard (12)", "e.g. --shards 8,8,8"]),
    (False, ["--chunks", "6,6,6", "--shards", "12,12,12"],
     ["--shards 12,12,12", "e.g. --chunks 4,4,4 --shards 8,8,8"]),
    (False, ["--shards", "12,12,12"],
     ["--shards 12,12,12 must be whole multiples of the chunks 8,8,8",
      "the input's: set --chunks"]),
    (True, ["--chunks", "16,16,16"],
     ["--chunks 16,16,16", "input's shards, 8,8,8 voxels", "e.g. --chunks 8,8,8"]),
])
def test_a_layout_that_does_not_fit_names_the_option_and_one_that_does(tmp_path, sharded, args,
                                                                       needles):
    a = np.random.default_rng(1).random((16, 32, 32)).astype(np.float32)
    src = tmp_path / "p.zarr"
    make_volume(src, a, (4, 4, 4) if sharded else (8, 8, 8), shards=(8, 8, 8) if sharded else None)
    before = sorted(os.listdir(tmp_path))
    r = invoke("-q", "threshold", src, tmp_path / "m.zarr", "--value", "0.5", *args)
    assert r.exit_code == 2, (r.output, r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "straddle" not in lines[0]
    assert sorted(os.listdir(tmp_path)) == before
    m = re.search(r"e\.g\. ((?:--\w+ \d+(?:,\d+)* ?)+)", lines[0])
    if m is None:
        return
    r = invoke("-q", "threshold", src, tmp_path / "m.zarr", "--value", "0.5", *m.group(1).split())
    assert r.exit_code == 0, (r.output, r.exception)
    out = emarray.open_volume(tmp_path / "m.zarr")
    np.testing.assert_array_equal(out.read(), (a.astype(np.float64) > 0.5).astype(np.uint8))
    given = dict(zip(m.group(1).split()[::2], m.group(1).split()[1::2]))
    if "--chunks" in given:
        assert out.chunks == tuple(int(v) for v in given["--chunks"].split(","))
    if "--shards" in given:
        assert out.shards == tuple(int(v) for v in given["--shards"].split(","))
