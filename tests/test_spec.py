"""Operators declared once: the command line, recipe steps, up-front checks and docs follow from
each declaration, and cannot drift from the Python function."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.cli import cli
from emarray.errors import InvalidArgumentError
from emarray.spec import Operator, Param, Port, operators

from .conftest import make_volume
from .helpers import one_error_line

ROOT = Path(__file__).resolve().parents[1]
OPS = operators()


def test_every_operator_module_declares_its_operator():
    assert {"ingest", "threshold", "rescale", "smooth", "pyramid", "upsample", "label",
            "objects", "match", "sweep", "predict", "synthetic", "export"} <= set(OPS)
    for name, op in OPS.items():
        assert op.call is not None and op.func is not None, name
        assert getattr(emarray, name, None) is op.call or name == "synthetic", name


@pytest.mark.parametrize("name", sorted(OPS))
def test_the_declaration_is_the_signature(name):
    """Every declared input, output and parameter is an argument of the function, with the
    declared default; and nothing else is."""
    op = OPS[name]
    sig = inspect.signature(op.func)
    args = [p for p in sig.parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "options"]
    declared = {p.name for p in op.inputs} | {p.name for p in op.params} | (
        {op.output.name} if op.output is not None else set())
    assert {a.name for a in args} == declared
    for p in op.params:
        assert p.default == sig.parameters[p.name].default, (name, p.name)
    assert "Parameters\n----------" in op.call.__doc__
    for p in op.params:
        assert f"\n{p.name} : " in op.call.__doc__, (name, p.name)


@pytest.mark.parametrize("name", sorted(OPS))
def test_the_command_line_is_the_declaration(name):
    op = OPS[name]
    cmd = cli.commands[name]
    flags = {f for prm in cmd.params for f in getattr(prm, "opts", [])}
    for p in op.params:
        assert p.flag in flags, (name, p.flag)
        assert set(p.aliases) <= flags
    for r in op.run:
        assert any(r.replace("_", "-") in f or (r == "slurm" and f == "--slurm-config")
                   for f in flags), (name, r)
    text = CliRunner().invoke(cli, [name, "--help"]).output
    for p in op.params:
        assert p.flag in text
    assert op.summary[1:40] in " ".join(text.split())


@pytest.mark.parametrize("name", sorted(n for n, op in OPS.items()
                                         if any(p.kind == "choice" for p in op.params)))
def test_a_bad_choice_is_refused_the_same_way_everywhere(name, tmp_path):
    """The declared check is what Python runs (the command line and a recipe call the same)."""
    op = OPS[name]
    p = next(p for p in op.params if p.kind == "choice")
    with pytest.raises(InvalidArgumentError, match=f"{p.name} must be one of"):
        p.check("no-such-choice")
    with pytest.raises(InvalidArgumentError, match=f"{p.name} must be one of"):
        op.call(**{**{q.name: "x" for q in op.inputs if not q.optional},
                   **({op.output.name: str(tmp_path / "o")} if op.output and
                      op.output.kind != "inplace" else {}),
                   **{q.name: 1 for q in op.params if q.required and q.kind == "number"},
                   **{q.name: "0,1" for q in op.params if q.required and q.kind == "numbers"},
                   **{q.name: 1 for q in op.params if q.required and q.kind == "zyx-float"},
                   p.name: "no-such-choice"})
    assert not (tmp_path / "o").exists()


def test_every_kind_checks_and_normalises():
    cases = [(Param("n", "number", ""), "18446744073709551615", 2**64 - 1),
             (Param("i", "int", "", minimum=1), "3", 3),
             (Param("f", "float", ""), "0.25", 0.25),
             (Param("z", "zyx", ""), "4,8,8", (4, 8, 8)),
             (Param("zf", "zyx-float", "", positive=False), "0,1.5,1.5", (0.0, 1.5, 1.5)),
             (Param("c", "choice", "", choices=(6, 18, 26)), "18", 18),
             (Param("b", "flag", ""), "true", True),
             (Param("v", "numbers", ""), "0.1,0.5", (0.1, 0.5)),
             (Param("t", "text", ""), "abc", "abc")]
    for p, text, want in cases:
        assert p.check(text) == want, p
    bad = [(Param("i", "int", "", minimum=1), "0", "i must be a whole number >= 1"),
           (Param("z", "zyx", ""), "4,8", "z must have 3 values"),
           (Param("zf", "zyx-float", "", positive=False), "-1", "zf must be >= 0"),
           (Param("n", "number", ""), "nan", "n must be finite"),
           (Param("b", "flag", ""), 3, "b must be true or false")]
    for p, value, msg in bad:
        with pytest.raises(InvalidArgumentError, match=msg):
            p.check(value)


def test_a_declaration_that_disagrees_with_its_function_fails_at_import():
    spec = Operator("bogus", "nothing", inputs=(Port("src", "volume"),), output=None,
                    params=(Param("level", "int", "a level"),))
    with pytest.raises(TypeError, match="not the declared"):
        @spec.function
        def bogus(src, levels=1, *, options=None, **run):  # 'levels', not 'level'
            return src


def test_a_recipe_checks_every_declared_value_and_run_option_before_any_step(tmp_path):
    """The issue's example: gpu_memory_limit=lots was refused after 7 of 8 steps ran."""
    from .test_pipeline import DEMO, demo_sets
    work = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "emarray", "run", str(DEMO), "--workdir", str(work),
                        *demo_sets((16, 32, 32), (8, 16, 16)), "--set",
                        "pyramid.gpu_memory_limit=lots"], capture_output=True, text=True)
    line = one_error_line(r)
    assert "step 'pyramid'" in line and "lots" in line
    assert not work.exists()
    for key, value, says in (("mask.compare", "gte", "compare must be one of"),
                             ("cells.min_size", "-1", "min_size must be a whole number"),
                             ("synthetic.chunks", "0,4,4", "chunks must be positive")):
        r = subprocess.run([sys.executable, "-m", "emarray", "run", str(DEMO), "--workdir",
                            str(work), "--set", f"{key}={value}"], capture_output=True, text=True)
        assert says in one_error_line(r), key
        assert not work.exists()


def test_the_readme_command_table_is_the_declarations():
    from emarray.spec import readme_table
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- commands:start -->\n")[1].split("<!-- commands:end -->")[0]
    assert block.strip() == readme_table().strip(), (
        "the README's command table is stale: run python scripts/update_readme.py")


def test_an_operator_added_in_one_module_is_everywhere(tmp_path):
    """clip was added as one module and its test: the command, the recipe step, the Python
    function and the docs have it."""
    assert "clip" in OPS and "clip" in cli.commands
    a = np.arange(-5, 11, dtype=np.int16).reshape(1, 4, 4)
    make_volume(tmp_path / "a.zarr", a, 2)
    r = emarray.run_pipeline({"steps": {"c": {"op": "clip", "src": str(tmp_path / "a.zarr"),
                                              "lo": 0, "hi": 5}}}, workdir=tmp_path / "w")
    assert r.ran == ["c"]
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "w" / "c.zarr").read(),
                                  np.clip(a, 0, 5))
    from emarray.spec import reference
    assert "## `clip`" in reference(OPS["clip"])


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
