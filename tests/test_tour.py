"""The README's tour runs as written, in a fresh folder, command by command; the README's look
commands and the demo's next steps write every path they name, and nothing beside."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import emarray

ROOT = Path(__file__).resolve().parents[1]


def _commands(markdown: str, heading: str) -> list[str]:
    """The shell commands of the first bash block after ``heading`` (continuations joined,
    comments dropped)."""
    part = markdown.split(heading, 1)[1]
    block = part.split("```bash\n", 1)[1].split("```", 1)[0]
    text = re.sub(r"\\\n\s*", " ", block)
    return [ln.split("  #")[0].strip() for ln in text.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path):
    """Each command of the tour as typed (in this process: the same command line, without
    python's start for each); the last, ``emarray info``, as a real process found on PATH, as
    a shell finds it."""
    pytest.importorskip("torch")
    from .helpers import cli
    cmds = _commands((ROOT / "README.md").read_text(), "## A five-minute tour")
    assert cmds[0].startswith("emarray synthetic") and len(cmds) >= 8
    os.symlink(ROOT / "pipelines", tmp_path / "pipelines")
    for cmd in cmds:
        argv = shlex.split(cmd + " -q")
        assert argv[0] == "emarray", cmd
        r = cli(*argv[1:], cwd=tmp_path)
        assert r.returncode == 0, (cmd, r.stderr)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run("emarray info tour/cells.zarr --json", shell=True, cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert '"levels"' in out.stdout and (tmp_path / "tour" / "match" / "match.json").exists()
    import pandas as pd
    sweep = pd.read_csv(tmp_path / "tour" / "sweep" / "sweep.csv")
    assert sweep["f1"].max() > 0.8  # the short training run learned the synthetic objects


NAMED = re.compile(r"(?<![\w/.:-])([\w.{}-]+/[\w./{},-]*)")


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
