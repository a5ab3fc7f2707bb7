"""Pipelines under faults, in one run: the demo recipe clean, killed and resumed, under injected
write faults, operator by operator from Python, and through SLURM.

    python benchmarks/pipeline_compare.py --shape 96,384,384 --kills 5
    python benchmarks/pipeline_compare.py --shape 64,256,256 --slurm   # needs scripts/slurm-local.sh

Variants (each `emarray run pipelines/demo.yaml` in its own process, same shape and chunks):
  clean      one uninterrupted run (the baseline)
  killed     SIGKILLed --kills times at random moments (seeded; once blocks are being computed),
             each time resumed with --resume, until it finishes: total wall time of every
             attempt, kills survived, blocks computed more than once (from EMARRAY_TRACE)
  faults     EMARRAY_FAULT_WRITES=0.1 (torn block writes, retried)
  operators  the same chain called operator by operator from Python (what the recipe saves)
  slurm      --scheduler slurm with 2 worker jobs of 1 core (with --slurm)
Every variant's outputs are compared with the clean run's (arrays and tables equal).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pipelines" / "demo.yaml"
sys.path.insert(0, str(ROOT))


def run(work: Path, sets: list[str], *extra: str, env: dict | None = None,
        kill_after: float | None = None, trace: Path | None = None) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "emarray", "-q", "run", str(DEMO), "--workdir", str(work),
           *sets, *extra]
    e = {**os.environ, **(env or {})}
    if trace is not None:
        e["EMARRAY_TRACE"] = str(trace)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=e)
    if kill_after is not None:
        while p.poll() is None and trace is not None and not trace.exists():
            time.sleep(0.005)
        try:
            p.wait(kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    if p.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return p.returncode, time.monotonic() - t0


def lines(trace: Path) -> list[tuple[str, str, str]]:
    if not trace.exists():
        return []
    return [tuple(ln.split("\t")[:3]) for ln in trace.read_text().splitlines()]  # type: ignore


def operators(work: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    from tests.test_pipeline import demo_by_operators
    demo_by_operators(work, shape, chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="96,384,384")
    ap.add_argument("--chunks", default="32,128,128")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slurm", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from tests.test_pipeline import assert_same_outputs
    shape = tuple(int(x) for x in a.shape.split(","))
    chunks = tuple(int(x) for x in a.chunks.split(","))
    sets = ["--set", f"shape={a.shape}", "--set", f"chunks={a.chunks}"]
    tmp = Path(tempfile.mkdtemp(prefix="emarray-pipe-"))
    res: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores", "shape": shape,
                 "chunks": chunks}
    try:
        ctrace = tmp / "clean.trace"
        _, res["clean_s"] = run(tmp / "clean", sets, trace=ctrace)
        res["blocks"] = len(set(lines(ctrace)))
        print(f"clean: {res['clean_s']:.1f} s, {res['blocks']} blocks")

        rng = random.Random(a.seed)
        total, kills, attempts, computed = 0.0, 0, 0, []
        while True:
            trace = tmp / f"kill{attempts}.trace"
            extra = ("--resume",) if attempts else ()
            delay = rng.uniform(0.05, 0.5) * res["clean_s"] if kills < a.kills else None
            rc, dt = run(tmp / "killed", sets, *extra, kill_after=delay, trace=trace,
                         env={"EMARRAY_CHECKPOINT_SECONDS": "1"})
            total += dt
            attempts += 1
            computed += lines(trace)
            if rc == 0:
                break
            kills += 1
        assert_same_outputs(tmp / "killed", tmp / "clean")
        res.update(kills=kills, killed_s=total, computed=len(computed),
                   recomputed=len(computed) - len(set(computed)))
        print(f"killed {kills}x and resumed: {total:.1f} s in all ({total / res['clean_s']:.2f}x "
              f"clean), {len(computed)} blocks computed for {len(set(computed))} "
              f"({res['recomputed']} twice); output identical")

        _, res["faults_s"] = run(tmp / "faults", sets, "--retries", "10",
                                 env={"EMARRAY_FAULT_WRITES": "0.1"})
        assert_same_outputs(tmp / "faults", tmp / "clean")
        print(f"10% torn writes: {res['faults_s']:.1f} s ({res['faults_s'] / res['clean_s']:.2f}x); "
              "output identical")

        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                f"from benchmarks.pipeline_compare import operators; from pathlib import Path; "
                f"operators(Path({str(tmp / 'ops')!r}), {shape}, {chunks})")
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        res["operators_s"] = time.monotonic() - t0
        assert_same_outputs(tmp / "ops", tmp / "clean")
        print(f"operator by operator: {res['operators_s']:.1f} s (the recipe: "
              f"{res['clean_s'] / res['operators_s']:.2f}x); output identical")

        if a.slurm:
            _, res["slurm_s"] = run(tmp / "slurm", sets, "--scheduler", "slurm", "--slurm-jobs",
                                    "2", "--slurm-memory", "4GB", "--slurm-log-directory",
                                    str(tmp / "slurm-logs"))
            assert_same_outputs(tmp / "slurm", tmp / "clean")
            print(f"slurm, 2 jobs x 1 core: {res['slurm_s']:.1f} s "
                  f"({res['slurm_s'] / res['clean_s']:.2f}x threads); output identical")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=list))


if __name__ == "__main__":
    main()
