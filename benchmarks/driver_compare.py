"""What the driver pays before the first block of a job of 10^5 to 10^7 blocks, and on resume.

Each measurement runs in a fresh Python process (so that its memory is its own): the job's
function is called, and the figures are taken when the first block starts (the block function
is wrapped, nothing else changes); the job then runs two more seconds and the process ends
(SIGKILL-like, ``os._exit``) with its progress saved as a killed job leaves it. For the resume
figure, the saved progress is then made to say that the first half of the blocks is done
(as a job killed half way leaves it) and the same job runs again with ``resume``: its first
block must be the first one not done.

Jobs (all with 1-voxel chunks, so the block count is the voxel count):

- ``synthetic``: a stage with no reads (every block made from its coordinates), one output;
- ``threshold``: a stage with one read, of an input whose chunks were never written (the reads
  are the fill value, the input's chunk listing is empty), one output;
- ``stored``: the same with every input chunk stored (one file each: what the job records of
  its input when it starts, and compares when it resumes, grows with them). Not run at 10^7
  by default: ten million files would take most of a small machine's inodes.

Figures: seconds from the call to the first block, the driver's peak resident memory above
what it was just before the call (VmHWM - VmRSS), by the first block and two seconds later,
and the same for the resumed run.

    python benchmarks/driver_compare.py [--blocks 100000,1000000,10000000] [--jobs stored]
        [--trees before=/tmp/emarray-before,after=.]  # the same figures for two source trees
        [--dir /tmp/d]            # keep the stored inputs there for the next run
        [--profile stored:1000000]  # cProfile of that fresh run up to its first block
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
    import json, os, sys, threading, time
    import numpy as np
    job, n, root, src, resume, profile, after = sys.argv[1:8]
    n, resume, profile, after = int(n), resume == "1", profile == "1", float(after)

    def mem(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    t_start = time.perf_counter()
    import emarray
    from emarray.engine import stages
    t_import = time.perf_counter() - t_start
    shape = (n // 10000, 100, 100)
    if job == "threshold" and not resume:
        emarray.create_volume(src, shape, "float32", 1)
    warm = emarray.create_volume(os.path.join(root, f"warm{int(resume)}.zarr"), (2, 2, 2), "uint8", 1)
    warm.write((slice(0, 2),) * 3, warm.read())  # zarr and the codecs imported before the call
    base = mem("VmRSS")
    out = {"import_s": t_import, "base_rss": base}
    lock = threading.Lock()
    orig = stages.run_block
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()

    def report():
        out["steady_hwm"] = mem("VmHWM") - base
        out["blocks_run"] = out.get("blocks_run", 0)
        print(json.dumps(out), flush=True)
        os._exit(0)

    def wrapped(st, index):
        with lock:
            first = "first_s" not in out
            if first:
                out["first_s"] = time.perf_counter() - t_call
                out["first_hwm"] = mem("VmHWM") - base
                out["first_index"] = [int(i) for i in index]
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(os.path.join(root, "driver.prof"))
                threading.Timer(after, report).start()
            out["blocks_run"] = out.get("blocks_run", 0) + 1
        return orig(st, index)
    stages.run_block = wrapped
    run = dict(scheduler="threads", workers=1, resume=resume, progress=False)
    t_call = time.perf_counter()
    if prof is not None:
        prof.enable()
    if job == "synthetic":
        emarray.datasets.synthetic(os.path.join(root, "s"), shape, chunks=1, kinds=("raw",),
                                   **run)
    else:  # threshold, stored
        emarray.threshold(src, os.path.join(root, "t.zarr"), 0.5, **run)
    report()
""")


def output_of(job: str, root: Path) -> Path:
    return root / "s" / "raw.zarr" if job == "synthetic" else root / "t.zarr"


def stored_input(path: Path, n: int) -> None:
    """A float32 volume of ``n`` 1-voxel chunks, every one stored (a file each): one chunk
    written by emarray, its bytes copied to every other key (seconds, not hours of writes)."""
    import numpy as np

    import emarray
    if (path / "done").is_file():
        return
    shutil.rmtree(path, ignore_errors=True)
    shape = (n // 10000, 100, 100)
    v = emarray.create_volume(path / "in.zarr", shape, "float32", 1)
    v.write((slice(0, 1),) * 3, np.full((1, 1, 1), 0.75, np.float32))
    arr = path / "in.zarr" / "0" / "c"
    data = (arr / "0" / "0" / "0").read_bytes()
    for z in range(shape[0]):
        for y in range(shape[1]):
            d = arr / str(z) / str(y)
            d.mkdir(parents=True, exist_ok=True)
            for x in range(shape[2]):
                (d / str(x)).write_bytes(data)
    (path / "done").write_text("")


def half_done(job: str, root: Path, n: int) -> None:
    """Make the saved progress say the first half of the blocks is done."""
    import numpy as np

    from emarray.engine.checkpoint import PROGRESS_DIR, Bitmap, Checkpoint
    stage = "synthetic raw" if job == "synthetic" else "threshold"
    cp = Checkpoint(output_of(job, root) / PROGRESS_DIR)
    bits = np.zeros((n + 7) // 8, np.uint8)
    bits[:n // 16] = 0xFF
    cp.save(stage, Bitmap(n, bits), None, force=True)


def child(tree: str, job: str, n: int, root: Path, src: Path, resume: bool, profile: bool,
          after: float) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.run([sys.executable, "-c", CHILD, job, str(n), str(root), str(src),
                           "1" if resume else "0", "1" if profile else "0", str(after)],
                          capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def measure(tree: str, job: str, n: int, base: Path, after: float, profile: bool) -> tuple:
    """The fresh run and the resumed run of ``job`` at ``n`` blocks with the code in ``tree``."""
    root = base / f"{job}-{n}-run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = base / f"stored-{n}" / "in.zarr" if job == "stored" else root / "in.zarr"
    fresh = child(tree, job, n, root, src, False, profile, after)
    if profile:
        import pstats
        pstats.Stats(str(root / "driver.prof")).sort_stats("cumulative").print_stats(30)
    half_done(job, root, n)
    again = child(tree, job, n, root, src, True, False, after)
    want = n // 2  # the first block the progress does not count done
    idx = again["first_index"]
    if (idx[0] * 100 + idx[1]) * 100 + idx[2] != want:
        raise SystemExit(f"{job} {n}: the resumed job started at block {idx}, not {want}")
    shutil.rmtree(root, ignore_errors=True)
    return fresh, again


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", default="100000,1000000,10000000")
    ap.add_argument("--jobs", default="synthetic,threshold,stored")
    ap.add_argument("--stored-max", type=int, default=1_000_000,
                    help="most blocks of the stored job (one input file per block)")
    ap.add_argument("--trees", default=f"this={Path(__file__).resolve().parents[1]}",
                    help="NAME=PATH,...: the emarray source trees to compare (PYTHONPATH)")
    ap.add_argument("--dir", default=None,
                    help="where to work; the stored inputs are kept there for the next run")
    ap.add_argument("--after", type=float, default=2.0,
                    help="seconds the job runs after its first block")
    ap.add_argument("--profile", default="",
                    help="JOB:BLOCKS to profile (cProfile of the fresh run up to block 1)")
    a = ap.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="emarray-driver-"))
    trees = [t.split("=", 1) for t in a.trees.split(",")]
    rows = []
    for job in a.jobs.split(","):
        for n in [int(x) for x in a.blocks.split(",")]:
            if job == "stored":
                if n > a.stored_max:
                    continue
                stored_input(base / f"stored-{n}", n)
            for name, tree in trees:
                fresh, again = measure(tree, job, n, base, a.after, a.profile == f"{job}:{n}")
                rows.append((name, job, n, fresh, again))
                print(f"{name} {job} {n:>9,} blocks: first block {fresh['first_s']:6.2f} s, "
                      f"{mib(fresh['first_hwm'])} ({fresh['first_hwm'] / n:.1f} B/block), "
                      f"{mib(fresh['steady_hwm'])} after {a.after:g} s; resume: first block "
                      f"{again['first_s']:6.2f} s, {mib(again['first_hwm'])}", flush=True)
    print(f"\n| code | job | blocks | first block | driver memory by then | after {a.after:g} s "
          "| resume: first block | resume: memory by then |")
    print("|---|---|---|---|---|---|---|---|")
    for name, job, n, f, r in rows:
        print(f"| {name} | {job} | {n:,} | {f['first_s']:.2f} s | {mib(f['first_hwm'])} | "
              f"{mib(f['steady_hwm'])} | {r['first_s']:.2f} s | {mib(r['first_hwm'])} |")
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
