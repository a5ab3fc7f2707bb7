"""``--estimate`` against the run it estimates: wall time and peak memory, several operators
and volume sizes, on this machine.

For each (operator, size) two fresh Python processes, ``--repeat`` times, alternated: one makes
the estimate (``emarray.OP(..., estimate=True)``), the other runs the job, timed from the call
to its return, with its peak resident memory (VmHWM, reset before the call); the medians are
shown, and the load average before and after. Inputs: the synthetic
volumes (``emarray synthetic``), made once per size and kept with ``--dir``.

    python benchmarks/estimate_compare.py [--sizes 128,512,512:256,512,512]
        [--ops threshold,smooth,label,watershed,sweep] [--workers 2] [--repeat 3] [--dir /tmp/e]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, os, sys, time
    op, root, out, workers, estimate = sys.argv[1:6]
    import emarray
    from emarray.engine.estimate import _peak_rss, _reset_peak, _rss
    vol = {k: os.path.join(root, f"{k}.zarr") for k in ("raw", "truth", "prob")}
    emarray.open_volume(vol["prob"]).read((slice(0, 1),) * 3)  # zarr and codecs imported
    calls = {
        "threshold": lambda **kw: emarray.threshold(vol["prob"], out, 0.5, **kw),
        "smooth": lambda **kw: emarray.smooth(vol["prob"], out, 2.0, **kw),
        "label": lambda **kw: emarray.label(vol["truth"], out, **kw),
        "watershed": lambda **kw: emarray.watershed(vol["prob"], out, **kw),
        "sweep": lambda **kw: emarray.sweep(vol["prob"], vol["truth"], thresholds=20, out=out,
                                            **kw),
    }
    run = dict(scheduler="threads", workers=int(workers))
    _reset_peak()
    base = _rss()
    t0 = time.perf_counter()
    if estimate == "1":
        e = calls[op](estimate=True, **run)
        print(json.dumps({"seconds": e.seconds, "memory": e.memory_per_worker,
                          "base": e.base_memory, "fixed": e.fixed_seconds,
                          "wall": time.perf_counter() - t0,
                          "sampled": sum(s.sampled for s in e.stages),
                          "blocks": sum(s.blocks for s in e.stages),
                          "output": e.output_bytes}))
    else:
        calls[op](**run)
        wall = time.perf_counter() - t0
        stored = 0
        for d, _, files in os.walk(out):
            stored += sum(os.path.getsize(os.path.join(d, f)) for f in files)
        print(json.dumps({"seconds": wall, "memory": _peak_rss(), "base": base,
                          "stored": stored}))
""")


def child(op: str, root: Path, out: Path, workers: int, estimate: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", CHILD, op, str(root), str(out), str(workers),
                           "1" if estimate else "0"], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(runs: list[dict]) -> dict:
    """The run whose seconds are the median (its other figures with it)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="128,512,512:256,512,512")
    ap.add_argument("--chunks", default="32,128,128")
    ap.add_argument("--ops", default="threshold,smooth,label,watershed,sweep")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3,
                    help="estimates and runs of each, alternated; the medians are shown")
    ap.add_argument("--dir", default=None, help="where the inputs are kept (default: temp)")
    a = ap.parse_args()
    import emarray
    base = Path(a.dir or tempfile.mkdtemp(prefix="emarray-estimate-"))
    rows = []
    load = os.getloadavg()
    for size in a.sizes.split(":"):
        root = base / f"in-{size.replace(',', 'x')}"
        if not (root / "prob.zarr").exists():
            emarray.datasets.synthetic(root, size, chunks=a.chunks, overwrite=True)
        for op in a.ops.split(","):
            out = base / f"{op}-{size.replace(',', 'x')}.out"
            shutil.rmtree(out, ignore_errors=True)
            ests, reals = [], []
            for _ in range(a.repeat):  # alternated: a load that changes meets both
                ests.append(child(op, root, out, a.workers, True))
                if out.exists():
                    raise SystemExit(f"the estimate of {op} wrote {out}")
                reals.append(child(op, root, out, a.workers, False))
                shutil.rmtree(out, ignore_errors=True)
            est, real = median(ests), median(reals)
            rows.append((op, size, est, real))
            print(f"{op} {size}: estimate {est['seconds']:.1f} s (made in {est['wall']:.1f} s, "
                  f"{est['sampled']}/{est['blocks']} blocks), run {real['seconds']:.1f} s; "
                  f"memory {mib(est['memory'])} vs {mib(real['memory'])}", flush=True)
    print("\n| operator | volume | blocks | estimate made in | wall: estimate | wall: run | "
          "error | peak memory: estimate | peak memory: run | error | output: estimate | "
          "output: run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for op, size, e, r in rows:
        dt = (e["seconds"] - r["seconds"]) / r["seconds"]
        dm = (e["memory"] - r["memory"]) / r["memory"]
        out_e = mib(e["output"]) if e.get("output") is not None else "-"
        out_r = mib(r["stored"]) if e.get("output") is not None else "-"
        print(f"| {op} | {size.replace(',', '×')} | {e['blocks']} | {e['wall']:.1f} s | "
              f"{e['seconds']:.1f} s | {r['seconds']:.1f} s | {dt:+.0%} | {mib(e['memory'])} | "
              f"{mib(r['memory'])} | {dm:+.0%} | {out_e} | {out_r} |")
    print(f"\nload average (1, 5, 15 min) before: {load}, after: {os.getloadavg()}, on "
          f"{os.cpu_count()} cores; {a.workers} worker threads; median of {a.repeat}")
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
