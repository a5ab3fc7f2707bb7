"""The time a job takes from ``emarray gui`` against the same job on the command line.

    python benchmarks/gui_compare.py --gvox 0.5 --repeat 5

One float32 probability map (``emarray synthetic``); the same threshold job run alternately
(a) as ``emarray threshold SRC DST --value 0.5`` in a fresh process and (b) submitted to a
running ``emarray gui`` through its JSON API (``POST /api/jobs``; no report page, so it is the
same command), and the same pair (c), (d) with the ``--report`` page a gui job writes by default.

For each: the wall time from start (the process started / the request sent) until the job is
done (the process ended / the API says done, polled every 0.25 s, about what the page does), and
the CPU seconds it used: the command's process for (a) and (c), and for the gui the job's
process (``exit.json``'s ``cpu_s``) plus what the gui server itself used meanwhile (answering
the polls, watching the job). CPU seconds are what the gui adds; on a machine shared with other
work (load above its cores) wall times swing by a factor of two and only show the order.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def request(url: str, token: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 method="POST" if body else "GET",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    import psutil
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gvox", type=float, default=0.5, help="input size in gigavoxels")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    import emarray
    work = Path(args.dir or tempfile.mkdtemp(prefix="emarray-gui-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    nz = max(16, int(round(args.gvox * 1024 / 16)) * 16)
    src = work / "prob.zarr"
    if not src.exists() or emarray.open_volume(src).shape[0] != nz:
        shutil.rmtree(src, ignore_errors=True)
        print(f"making a ({nz}, 1024, 1024) float32 map ...", file=sys.stderr)
        emarray.datasets.synthetic(work, (nz, 1024, 1024), chunks=(64, 256, 256),
                                   kinds=("prob",))
    gui = subprocess.Popen([sys.executable, "-m", "emarray", "gui", str(work), "--no-open",
                            "--port", "0"], stdout=subprocess.PIPE, text=True)
    base, token = gui.stdout.readline().strip().split("/?token=")
    server = psutil.Process(gui.pid)
    names = ("cli", "gui", "cli --report", "gui, report page")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    try:
        for k in range(args.repeat):
            for name in names:
                dst = work / f"out-{k}.zarr"
                shutil.rmtree(dst, ignore_errors=True)
                (work / "page.html").unlink(missing_ok=True)
                report = "report" in name
                t0 = time.perf_counter()
                if name.startswith("gui"):
                    s0 = sum(server.cpu_times()[:2])
                    job = request(base + "/api/jobs", token, {"operator": "threshold", "params": {
                        "src": str(src), "dst": str(dst), "value": "0.5", "report": report}})
                    while (j := request(f"{base}/api/jobs/{job['id']}?log=0", token))["state"] \
                            not in ("done", "failed", "interrupted"):
                        time.sleep(0.25)
                    wall[name].append(time.perf_counter() - t0)
                    assert j["state"] == "done", j
                    cpu[name].append(j["cpu_s"] + sum(server.cpu_times()[:2]) - s0)
                else:
                    c0 = children_cpu()
                    extra = ["--report", str(work / "page.html")] if report else []
                    subprocess.run([sys.executable, "-m", "emarray", "-q", "threshold", str(src),
                                    str(dst), "--value", "0.5", *extra], check=True,
                                   stdout=subprocess.DEVNULL)
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(children_cpu() - c0)
                shutil.rmtree(dst, ignore_errors=True)
    finally:
        gui.terminate()
        gui.wait()
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    print(f"input: ({nz}, 1024, 1024) float32, chunks 64,256,256; {args.repeat} runs each\n")
    print("| run | CPU s (median) | wall s (median) | wall s (each run) |\n|---|---|---|---|")
    for k in names:
        print(f"| {k} | {cmed[k]:.2f} | {med[k]:.2f} | "
              f"{', '.join(f'{x:.1f}' for x in wall[k])} |")
    for g, c in (("gui", "cli"), ("gui, report page", "cli --report")):
        print(f"{g} vs {c}: CPU {100 * (cmed[g] / cmed[c] - 1):+.1f} %, wall (median) "
              f"{100 * (med[g] / med[c] - 1):+.1f} %")


if __name__ == "__main__":
    main()
