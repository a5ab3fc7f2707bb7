"""What a lost SLURM node costs: one job run undisturbed, then again with a node lost mid-job, on
the three-node cluster of scripts/slurm-local.sh (as root: it kills the node).

    python benchmarks/slurm_nodes_compare.py                    # 216 blocks, 0.2 s each
    python benchmarks/slurm_nodes_compare.py --delay 0.5 --at 0.5

The job is `emarray smooth` of a random volume in 216 chunks through `--scheduler slurm`, one
worker job per node (--exclusive), each block's write held back --delay seconds
(EMARRAY_SLOW_WRITES: blocks as slow as real ones, whatever this machine's cores). In the second
run node2 is lost (`slurm-local.sh lose node2`: its slurmd and every process of its job SIGKILLed)
once a fraction --at of the blocks is done. Prints both wall times, the blocks each node ran, the
blocks computed twice, and whether the outputs are equal bit for bit; node2 is revived after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import emarray

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
CONFIG = """\
slurm:
  jobs: 3
  memory: 1GB
  walltime: "00:30:00"
  directives: ["--exclusive"]
"""


def rows(trace: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in trace.read_text().splitlines()] if trace.exists() else []


def run(work: Path, name: str, delay: float, lose_at: int | None) -> dict:
    out, trace = work / f"{name}.zarr", work / f"{name}.trace"
    env = {**os.environ, "EMARRAY_TRACE": str(trace), "EMARRAY_SLOW_WRITES": str(delay)}
    t0 = time.monotonic()
    job = subprocess.Popen([sys.executable, "-m", "emarray", "-q", "smooth", str(work / "src.zarr"),
                            str(out), "--sigma", "1", "--scheduler", "slurm", "--slurm-config",
                            str(work / "slurm.yaml")], env=env, stderr=subprocess.PIPE, text=True)
    lost = None
    while job.poll() is None:
        if lose_at is not None and lost is None and len(rows(trace)) >= lose_at:
            subprocess.run(["bash", str(SCRIPT), "lose", "node2"], check=True, capture_output=True)
            lost = time.monotonic() - t0
        time.sleep(0.02)
    took = time.monotonic() - t0
    if job.returncode:
        raise SystemExit(f"{name}: exit {job.returncode}: {job.stderr.read()}")
    r = rows(trace)
    per_node: dict[str, int] = {}
    for *_, node in r:
        per_node[node] = per_node.get(node, 0) + 1
    blocks = [tuple(x[:3]) for x in r]
    return {"name": name, "seconds": took, "lost_at": lost, "per_node": per_node,
            "twice": len(blocks) - len(set(blocks)), "out": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=0.2, help="seconds each block's write waits")
    ap.add_argument("--at", type=float, default=1 / 3, help="fraction done when node2 is lost")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="emarray-nodes-") as tmp:
        work = Path(tmp)
        a = np.random.default_rng(38).random((48, 96, 96)).astype(np.float32)
        v = emarray.create_volume(work / "src.zarr", a.shape, a.dtype, (8, 16, 16))
        v.write(tuple(slice(0, s) for s in a.shape), a)
        (work / "slurm.yaml").write_text(CONFIG)
        try:
            results = [run(work, "undisturbed", args.delay, None),
                       run(work, "node2-lost", args.delay, round(216 * args.at))]
        finally:
            subprocess.run(["bash", str(SCRIPT), "revive", "node2"], capture_output=True)
        same = np.array_equal(emarray.open_volume(results[0]["out"]).read(),
                              emarray.open_volume(results[1]["out"]).read())
        print(f"216 blocks, writes held {args.delay:g} s, 3 nodes of 1 worker each")
        for r in results:
            lost = f", node2 lost at {r['lost_at']:.1f} s" if r["lost_at"] else ""
            print(f"  {r['name']:<12} {r['seconds']:6.1f} s{lost}; blocks per node "
                  f"{dict(sorted(r['per_node'].items()))}; computed twice {r['twice']}")
        extra = results[1]["seconds"] - results[0]["seconds"]
        print(f"  the lost node cost {extra:+.1f} s ({extra / results[0]['seconds']:+.0%}); "
              f"outputs equal bit for bit: {same}")


if __name__ == "__main__":
    main()
