"""asv: the demo recipe end to end, the cost of a re-run that skips every finished step, and
the same chain called operator by operator (what the recipe layer costs).

The side-by-side run under kills, injected faults and SLURM is ``benchmarks/pipeline_compare.py``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import emarray

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "pipelines" / "demo.yaml")
SETS = ("shape=64,256,256", "chunks=32,128,128")


class Pipeline:
    timeout = 600

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.done = self.tmp / "done"
        emarray.run_pipeline(DEMO, SETS, workdir=self.done, echo=lambda line: None)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_demo_recipe(self):
        work = Path(tempfile.mkdtemp(dir=self.tmp)) / "w"
        emarray.run_pipeline(DEMO, SETS, workdir=work, echo=lambda line: None)

    def time_rerun_all_finished(self):
        emarray.run_pipeline(DEMO, SETS, workdir=self.done, echo=lambda line: None)

    def time_operators_one_by_one(self):
        from benchmarks.pipeline_compare import operators
        operators(Path(tempfile.mkdtemp(dir=self.tmp)) / "w", (64, 256, 256), (32, 128, 128))


class SmallRecipe:
    """The 10-step recipe of ``benchmarks/recipe_small.py`` on 0.5 Mvox, in a fresh process
    (start-up and every library's first import included, as a user's ``emarray run`` pays)."""

    timeout = 300

    def setup(self):
        from benchmarks.recipe_small import RECIPE
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.recipe = self.tmp / "ten.yaml"
        self.recipe.write_text(RECIPE.format(work=self.tmp / "w", shape="32,128,128",
                                             chunks="32,64,64"))

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_ten_small_steps(self):
        import subprocess
        import sys
        shutil.rmtree(self.tmp / "w", ignore_errors=True)
        subprocess.run([sys.executable, "-m", "emarray", "-q", "run", str(self.recipe)],
                       check=True, capture_output=True)
