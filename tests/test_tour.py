"""The README's tour runs as written, in a fresh folder, command by command."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    pytest.importorskip("torch")
    cmds = _commands((ROOT / "README.md").read_text(), "## A five-minute tour")
    assert cmds[0].startswith("emarray synthetic") and len(cmds) >= 8
    os.symlink(ROOT / "pipelines", tmp_path / "pipelines")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in cmds:
        r = subprocess.run(cmd + " -q", shell=True, cwd=tmp_path, env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    out = subprocess.run(["emarray", "info", "tour/cells.zarr", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert '"levels"' in out.stdout and (tmp_path / "tour" / "match" / "match.json").exists()
    import pandas as pd
    sweep = pd.read_csv(tmp_path / "tour" / "sweep" / "sweep.csv")
    assert sweep["f1"].max() > 0.8  # the short training run learned the synthetic objects
