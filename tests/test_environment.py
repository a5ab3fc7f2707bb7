"""Every number emarray reads from the environment is declared once (emarray.environment) and
checked when a job's run options are made: a bad value is one line naming the variable and the
value, exit 2, before any output exists. Run through the CLI in this process (click's runner)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray import environment
from emarray.cli import cli

from .conftest import make_volume

VARIABLES = sorted(environment.NUMBERS)
#: a value each variable accepts (a job with it finishes normally)
GOOD = {"EMARRAY_CHUNK_CACHE": "1e6", "EMARRAY_LABEL_KEEP_MIB": "0.5",
        "EMARRAY_CHECKPOINT_SECONDS": "0", "EMARRAY_LOCK_LEASE_SECONDS": "30",
        "EMARRAY_WORKER_TIMEOUT": "5", "EMARRAY_FAULT_WRITES": "0.1",
        "EMARRAY_SLOW_WRITES": "0.001"}


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_line(r) -> str:
    """Exit 2 with one line ``error: ...`` and no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def src(tmp_path):
    a = np.random.default_rng(0).random((8, 12, 12)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 6, 6))
    return a, tmp_path / "p.zarr"


def test_every_variable_read_in_the_package_is_declared():
    """No reader of an EMARRAY_ number but the declarations' own."""
    root = Path(emarray.__file__).parent
    for f in root.rglob("*.py"):
        if f.name == "environment.py":
            continue
        for arg in re.findall(r"environ(?:\.get\(|\[)\s*([^,)\]]+)", f.read_text()):
            name = arg.strip().strip("\"'")
            assert name not in environment.NUMBERS, (f, name)
            # the text variables (a trace file's name, a seed, the progress file a job keeps
            # for the gui) are not numbers; SLURMD_NODENAME is SLURM's (the trace names the
            # node a block ran on)
            assert name.startswith(("AWS_", "CUDA_", "DASK_", "SLURMD_")) or name.endswith(
                ("TRACE_VAR", "SEED_VAR", "FILE_VAR", "STORAGE_VAR")), (f, name)
    assert set(VARIABLES) == {"EMARRAY_CHUNK_CACHE", "EMARRAY_LABEL_KEEP_MIB",
                              "EMARRAY_CHECKPOINT_SECONDS", "EMARRAY_LOCK_LEASE_SECONDS",
                              "EMARRAY_WORKER_TIMEOUT", "EMARRAY_FAULT_WRITES",
                              "EMARRAY_SLOW_WRITES"}


@pytest.mark.parametrize("value", ["inf", "nan", "abc", "-1", "-inf", "1e400"])
@pytest.mark.parametrize("name", VARIABLES)
def test_a_bad_number_stops_the_job_before_any_output(src, tmp_path, name, value):
    _a, p = src
    before = sorted(os.listdir(tmp_path))
    line = one_line(invoke("-q", "threshold", p, tmp_path / "m.zarr", "--value", "0.5",
                           env={name: value}))
    assert line.startswith(f"error: {name} must be a ") and f"got {value!r}" in line, line
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("value", ["", "  ", "good"])
@pytest.mark.parametrize("name", VARIABLES)
def test_an_empty_or_good_number_is_accepted(src, tmp_path, name, value):
    a, p = src
    value = GOOD[name] if value == "good" else value
    r = invoke("-q", "threshold", p, tmp_path / "m.zarr", "--value", "0.5", "--retries", "20",
               env={name: value})
    assert r.exit_code == 0, (r.output, r.exception)
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a.astype(np.float64) > 0.5).astype(np.uint8))


@pytest.mark.parametrize("name, value, args", [
    ("EMARRAY_LABEL_KEEP_MIB", "inf", ["label", "{m}", "{d}/out.zarr"]),
    ("EMARRAY_CHECKPOINT_SECONDS", "abc", ["label", "{m}", "{d}/out.zarr"]),
    ("EMARRAY_CHUNK_CACHE", "inf", ["smooth", "{p}", "{d}/out.zarr", "--sigma", "1"]),
    ("EMARRAY_CHUNK_CACHE", "-1", ["smooth", "{p}", "{d}/out.zarr", "--sigma", "1"]),
    ("EMARRAY_CHECKPOINT_SECONDS", "abc", ["pyramid", "{m}"]),
    ("EMARRAY_SLOW_WRITES", "nan", ["sweep", "{p}", "{m}", "--out", "{d}/out"]),
])
def test_the_cases_of_the_issue_through_other_commands(src, tmp_path, name, value, args):
    """A traceback (inf, abc), an unfinished output (abc), a chunk blamed (inf) or a value taken
    silently (-1) before: now one line and nothing made, whatever the command."""
    _a, p = src
    m = tmp_path / "m.zarr"
    assert invoke("-q", "threshold", p, m, "--value", "0.5").exit_code == 0
    before = {f: sorted(os.listdir(f)) for f in (tmp_path, m)}
    argv = [a.format(p=p, m=m, d=tmp_path) for a in args]
    line = one_line(invoke("-q", *argv, env={name: value}))
    assert line.startswith(f"error: {name} must be a ") and f"got {value!r}" in line, line
    assert {f: sorted(os.listdir(f)) for f in (tmp_path, m)} == before


def test_the_docs_list_every_variable_from_the_declarations():
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        from mkdocs_hooks import on_page_markdown
    finally:
        sys.path.pop(0)
    page = Path(__file__).resolve().parents[1] / "docs" / "faults.md"
    text = page.read_text()
    assert "<!-- emarray:environment -->" in text
    made = on_page_markdown(text, None, None, None)
    for n in environment.NUMBERS.values():
        assert f"| `{n.name}` | {n.meaning} |" in made
    assert "<!-- emarray:" not in made
