"""The command line: help, one-line errors (exit 2, nothing changed), -q/-v after the
subcommand, progress as a few short lines in a log."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.cli import cli as cli_group

from .conftest import make_volume
from .helpers import PY, cli, one_error_line, prob_map, train_config


def run(*args):
    return CliRunner().invoke(cli_group, [str(a) for a in args], catch_exceptions=False)


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
    r = cli(*argv)  # in this process: an uncaught exception would show as its traceback
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
    r = CliRunner().invoke(cli_group, ["-q", "demo", "--out", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "not made by the demo" in r.output


# -- every required value is checked before any work ------------------------------------------
SAMPLE = {"number": "1", "float": "1", "int": "1", "numbers": "0,1", "zyx": "1,1,1",
          "zyx-float": "1,1,1", "text": "x"}


def _argv(op, inputs: dict, leave_out: str) -> list[str]:
    """A command line of ``op`` with every required value but ``leave_out``."""
    from emarray.spec import operators
    op = operators()[op]
    ports = list(op.inputs) + ([op.output] if op.output and op.output.kind != "inplace" else [])
    pos, opts = [], []
    for p in ports:
        if p.optional or p.name == leave_out:
            continue
        value = str(inputs.get(p.kind, inputs["volume"])) if p is not op.output else \
            str(inputs["out"] / f"{op.name}-out")
        (opts.extend([f"--{p.name}", value]) if p.option else pos.append(value))
    for p in op.params:
        if p.required and p.name != leave_out:
            opts += [p.flag, SAMPLE[p.kind] if p.kind != "choice" else str(p.choices[0])]
    return [op.name, *pos, *opts]


def _required_cases():
    from emarray.spec import operators
    cases = []
    for name, op in operators().items():
        ports = list(op.inputs) + ([op.output] if op.output and op.output.kind != "inplace"
                                   else [])
        args = [p for p in ports if not p.optional and not p.option]
        shown = {p.name: f"--{p.name}" for p in ports if p.option and not p.optional}
        if args:  # the last argument left out (an earlier one shifts the rest)
            shown[args[-1].name] = args[-1].metavar
        shown.update({p.name: p.flag for p in op.params if p.required})
        cases += [(name, left, flag) for left, flag in shown.items()]
    return cases


REQUIRED = _required_cases()


def test_the_registry_has_required_values_to_leave_out():
    names = {(op, left) for op, left, _ in REQUIRED}
    assert {("threshold", "value"), ("clip", "lo"), ("clip", "hi"), ("rescale", "in_range"),
            ("smooth", "sigma"), ("upsample", "like"), ("sweep", "out"), ("match", "out"),
            ("objects", "out"), ("threshold", "dst")} <= names
    assert len({op for op, _, _ in REQUIRED}) == len(__import__("emarray.spec").spec.operators())


@pytest.mark.parametrize("op,left,flag", REQUIRED, ids=lambda v: str(v))
def test_a_required_value_left_out_is_one_line_naming_it(tmp_path, op, left, flag):
    import tifffile
    src = tmp_path / "in"
    src.mkdir()
    make_volume(src / "v.zarr", np.zeros((4, 4, 4), np.float32), 2)
    tifffile.imwrite(src / "s.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    out = tmp_path / "out"
    out.mkdir()
    argv = _argv(op, {"volume": src / "v.zarr", "file": src / "s.tif", "model": src / "s.tif",
                      "out": out}, left)
    r = CliRunner().invoke(cli_group, argv)
    assert r.exit_code == 2, (argv, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "Traceback" not in r.output
    assert f"needs {flag}" in line, line
    assert os.listdir(out) == [] and sorted(os.listdir(src)) == ["s.tif", "v.zarr"]


def test_the_check_holds_even_where_click_lets_a_value_through(tmp_path):
    """The generated command checks its required values itself too (click 8.3 took an explicit
    ``default=None`` for a value given: the option was shown required and never checked)."""
    make_volume(tmp_path / "p.zarr", np.zeros((4, 4, 4), np.float32), 2)
    for name, given, left in [("threshold", ["--value", "1"], "value"),
                              ("clip", ["--lo", "0", "--hi", "1"], "hi"),
                              ("smooth", ["--sigma", "1"], "sigma")]:
        cmd = cli_group.commands[name]
        ctx = cmd.make_context(name, [str(tmp_path / "p.zarr"), str(tmp_path / "o.zarr"), *given])
        ctx.params[left] = None
        with pytest.raises(SystemExit) as e:
            ctx.invoke(cmd.callback, **ctx.params)
        assert e.value.code == 2 and not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("op,extra", [("sweep", ["{p}", "{t}"]), ("match", ["{t}", "{t}"]),
                                      ("objects", ["{t}"])])
def test_a_job_whose_result_is_files_needs_out_on_the_command_line(tmp_path, op, extra):
    rng = np.random.default_rng(1)
    p = rng.random((6, 8, 8)).astype(np.float32)
    t = (rng.random((6, 8, 8)) > 0.5).astype(np.uint32)
    make_volume(tmp_path / "p.zarr", p, 3)
    make_volume(tmp_path / "t.zarr", t, 3)
    before = sorted(os.listdir(tmp_path))
    r = CliRunner().invoke(cli_group, [op] + [a.format(p=tmp_path / "p.zarr", t=tmp_path / "t.zarr")
                                        for a in extra], prog_name="emarray")
    assert r.exit_code == 2 and r.stderr.strip() == (
        f"error: emarray {op} needs --out OUT (see emarray {op} --help)"), r.output
    assert sorted(os.listdir(tmp_path)) == before and "progress" not in r.output
    # the Python function still returns its table without out
    fn = getattr(emarray, op)
    args = [emarray.open_volume(a.format(p=tmp_path / "p.zarr", t=tmp_path / "t.zarr"))
            for a in extra]
    result = fn(*args, progress=False)
    assert result is not None and len(result) > 0


def _command_summaries(text: str) -> dict[str, str]:
    """The Commands section of a --help page: name -> its summary (wrapped lines joined)."""
    rows: dict[str, str] = {}
    name = None
    for line in text.split("Commands:\n", 1)[1].splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name, _, rest = line.strip().partition(" ")
            rows[name] = rest.strip()
        elif name is not None and line.strip():
            rows[name] += " " + line.strip()
    return rows


@pytest.mark.parametrize("group", [[], ["model"]])
def test_help_shows_whole_summaries(group):
    r = CliRunner().invoke(cli_group, [*group, "--help"], terminal_width=80)
    rows = _command_summaries(r.output)
    assert len(rows) >= (20 if not group else 2)
    for name, summary in rows.items():
        assert not summary.endswith("...") and "..." not in summary.replace("1..N", ""), name
    if not group:
        assert rows["info"] == ("Describe the volume at PATH: shape, dtype, chunks, voxel size, "
                                "levels, storage")
        assert rows["view"].startswith("Show volumes in neuroglancer, served from disk")
        assert rows["demo"].endswith("score against ground truth")
        assert rows["threshold"] == "A uint8 0/1 mask where a map passes a threshold, compared exactly"
    else:
        assert rows["info"].endswith("receptive field, input sizes")


@pytest.mark.parametrize("argv", [[], ["model"]])
def test_a_group_given_no_command_shows_its_help(argv):
    r = CliRunner().invoke(cli_group, argv)
    assert r.output.startswith("Usage:") and "error:" not in r.output and "Commands:" in r.output


@pytest.mark.parametrize("args, says", [
    (("threshold", "{p}", "{d}/m.zarr", "--value", "0.5", "--scheduler", "foo://x"),
     "unknown protocol 'foo'"),
    (("synthetic", "{d}/s", "--size", str(2**40)), "limited to"),
    (("synthetic", "{d}/s", "--size", "8", "--chunks", "0"), "chunks must be positive"),
    (("threshold", "{p}", "{d}/m.zarr", "--value", "0.5", "--chunks", "0,4,4"),
     "chunks must be positive"),
    (("synthetic", "{d}/s", "--size", "8", "--chunks", "4,0,4"), "chunks must be positive"),
])
def test_raw_tracebacks_are_one_line_and_leave_nothing(tmp_path, args, says):
    prob_map(tmp_path / "p.zarr")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_error_line(cli(*(a.format(p=tmp_path / "p.zarr", d=tmp_path) for a in args)))
    assert says in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_out_with_a_trailing_slash_and_info_into_a_closed_pipe(tmp_path):
    a, _ = prob_map(tmp_path / "p.zarr")
    make_volume(tmp_path / "t.zarr", (a > 0.5).astype(np.uint8), 4)
    r = cli("sweep", tmp_path / "p.zarr", tmp_path / "t.zarr", "--out", f"{tmp_path / 'sw'}/",
            "--values", "0.5")
    assert r.returncode == 0 and "//" not in r.stdout, r.stdout
    p = subprocess.Popen([PY, "-m", "emarray", "info", str(tmp_path / "p.zarr")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written (as `| head` leaves)
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and "error" not in err.lower(), err


def test_logs_get_lines_not_carriage_returns(tmp_path):
    pytest.importorskip("torch")
    from emarray.models import new_model
    a, _ = prob_map(tmp_path / "p.zarr", shape=(24, 16, 20), chunks=(2, 8, 8))
    r = cli("export", tmp_path / "p.zarr", tmp_path / "p.tif")
    assert r.returncode == 0 and "\r" not in r.stderr, r.stderr
    assert "export: 12 slabs to do" in r.stderr and "(100%)" in r.stderr
    raw = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    r = cli("train", train_config(tmp_path / "t", raw))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "train: 4 steps to do" in r.stderr
    model = new_model(tmp_path / "m.pt", depth=2, filters=4, dropout=0.2)
    job = subprocess.Popen([PY, "-m", "emarray", "predict", str(tmp_path / "t" / "raw.zarr"),
                            str(model), str(tmp_path / "o.zarr"), "--mc-samples", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = job.stderr.readline()
    assert "predict:" in first and "to do" in first
    job.communicate(timeout=300)
    assert job.returncode == 0


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


def test_each_run_option_has_one_text_shown_by_the_api_the_command_line_and_the_docs():
    """RunOptions' docstring is the one place a run option is described: ``--help`` of every
    command that takes it and docs/commands.md show that text."""
    import dataclasses
    import inspect

    from emarray.engine.options import RunOptions
    from emarray.operator_commands import RUN_OPTIONS, run_option_table
    fields = [f.name for f in dataclasses.fields(RunOptions)]
    assert sorted(RUN_OPTIONS) == sorted(set(fields) - {"progress", "window"})
    table = run_option_table()
    for name in fields:
        text = RunOptions.help(name)
        assert len(text) > 20 and text.endswith("."), name
        if name not in RUN_OPTIONS:
            continue
        decls, attrs = RUN_OPTIONS[name]
        assert attrs["help"] == text.replace("``", "")
        assert f"| {text}" in table and decls[0] in table
        shown = " ".join(run("threshold", "--help").output.split())
        assert " ".join(attrs["help"].split()) in shown, name
    # read as Python 3.13 gives it (the indentation stripped) and as -OO (no docstring)
    from emarray.engine import options
    assert options._attributes(inspect.cleandoc(RunOptions.__doc__)) == options._HELP
    assert options._attributes(None) == {}
