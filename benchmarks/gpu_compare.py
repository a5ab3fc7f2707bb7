"""GPU threshold comparison: time and peak device memory against the number of elements.

    python benchmarks/gpu_compare.py --out gpu-compare            # on a machine with a GPU

Under one device-memory cap (default 11 GiB, the card the first report came from) it runs, for
int8 data from 1e7 to 1e10 elements: a Python loop (1e7 only), NumPy masked assignment,
CuPy masked assignment ``a[a > t] = 1``, CuPy ``(a > t).astype(uint8)``, emarray's kernel on
device-resident data, and emarray streaming host data through pinned buffers. It records
time, peak device memory and the size where each fails, writes ``results.json`` and a log-log
plot ``threshold.png``, then measures the bandwidth targets:

* device-resident threshold vs device-to-device copy (bytes read + written),
* the sweep's 100-threshold histogram on device-resident data vs the same copy bandwidth,
* host-streamed threshold vs pinned host-to-device copy,
* zarr -> zarr with ``--backend cuda`` vs ``--backend cpu`` on one volume.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = [10**7, 3 * 10**7, 10**8, 3 * 10**8, 10**9, 3 * 10**9, 10**10]
T = np.int8(0)


def _sync():
    import cupy
    cupy.cuda.Device().synchronize()


def _fresh_pool(cap: int):
    import cupy
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    pool.set_limit(size=cap)
    return pool


def _host(n: int) -> np.ndarray:
    a = np.empty(n, np.int8)
    step = 1 << 26
    base = np.random.default_rng(0).integers(-128, 128, step, dtype=np.int8)
    for i in range(0, n, step):  # one random block repeated: fast to make at 1e10
        a[i:i + step] = base[:min(step, n - i)]
    return a


def method_python(host, cap):
    out = list(host.tolist())
    t0 = time.perf_counter()
    for i, v in enumerate(out):
        if v > T:
            out[i] = 1
    return time.perf_counter() - t0, 0


def method_numpy(host, cap):
    a = host.copy()
    t0 = time.perf_counter()
    a[a > T] = 1
    return time.perf_counter() - t0, 0


def _device(host, pool):
    import cupy
    d = cupy.asarray(host)
    _sync()
    return d, pool.used_bytes()


def method_cupy_masked(host, cap):
    pool = _fresh_pool(cap)
    d, base = _device(host, pool)
    t0 = time.perf_counter()
    d[d > T] = 1
    _sync()
    return time.perf_counter() - t0, pool.total_bytes()


def method_cupy_astype(host, cap):
    pool = _fresh_pool(cap)
    d, base = _device(host, pool)
    t0 = time.perf_counter()
    (d > T).astype(np.uint8)
    _sync()
    return time.perf_counter() - t0, pool.total_bytes()


def method_emarray_device(host, cap):
    from emarray.cuda.elementwise import threshold_device
    pool = _fresh_pool(cap)
    d, base = _device(host, pool)
    threshold_device(d[:1024], "gt", T)  # compile outside the timing
    _sync()
    t0 = time.perf_counter()
    threshold_device(d, "gt", T)
    _sync()
    return time.perf_counter() - t0, pool.total_bytes()


def method_emarray_streamed(host, cap):
    from emarray.cuda import streaming
    from emarray.cuda.elementwise import threshold_device
    pool = _fresh_pool(cap)
    streaming._limits.clear()
    step = [lambda d, s: threshold_device(d, "gt", T, stream=s)]
    streaming.run_steps(host[:1 << 20], step, np.uint8, memory_limit=cap)
    t0 = time.perf_counter()
    streaming.run_steps(host, step, np.uint8, memory_limit=cap)
    _sync()
    return time.perf_counter() - t0, pool.total_bytes()


METHODS = {"python loop": method_python, "NumPy a[a>t]=1": method_numpy,
           "CuPy a[a>t]=1": method_cupy_masked, "CuPy (a>t).astype(u8)": method_cupy_astype,
           "emarray kernel (device)": method_emarray_device,
           "emarray streamed (host)": method_emarray_streamed}


def sweep(cap: int, max_n: int) -> list[dict]:
    import cupy
    rows, failed = [], set()
    for n in [s for s in SIZES if s <= max_n]:
        host = _host(n)
        for name, fn in METHODS.items():
            if name in failed or (name == "python loop" and n > 10**7) or (
                    name.startswith("NumPy") and n > 10**9):  # host-only: minutes, no news
                continue
            try:
                sec, peak = fn(host, cap)
                rows.append({"method": name, "n": n, "seconds": sec, "peak_device_bytes": peak})
            except (cupy.cuda.memory.OutOfMemoryError, MemoryError) as exc:
                failed.add(name)
                rows.append({"method": name, "n": n, "failed": type(exc).__name__})
            finally:
                cupy.get_default_memory_pool().free_all_blocks()
            print(rows[-1], file=sys.stderr)
        del host
    return rows


def bandwidths(cap: int) -> dict:
    import cupy
    from emarray.cuda import streaming
    from emarray.cuda.elementwise import threshold_device
    _fresh_pool(0)
    n = 1 << 29  # 2 GiB of float32
    a = cupy.random.random(n, dtype=cupy.float32)
    b = cupy.empty_like(a)
    out = cupy.empty(n, cupy.uint8)
    threshold_device(a, "gt", np.float32(0.5), out=out)

    def best(f, reps=5):
        ts = []
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            f()
            _sync()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    copy = 2 * a.nbytes / best(lambda: b.__setitem__(Ellipsis, a))
    thr = (a.nbytes + out.nbytes) / best(lambda: threshold_device(a, "gt", np.float32(0.5), out=out))
    # the sweep's histogram on device-resident data: bytes read (map + class) per second
    from emarray.cuda.histogram import histogram_device
    from emarray.ops.sweep import exact_thresholds, sweep_thresholds
    cls = (cupy.random.random(n, dtype=cupy.float32) < 0.3).astype(cupy.uint8)
    edges = exact_thresholds(np.dtype(np.float32), sweep_thresholds(100))
    histogram_device(a, cls, edges)
    hist = (a.nbytes + cls.nbytes) / best(lambda: histogram_device(a, cls, edges))
    cls = None
    b = out = None  # free 2.5 GiB before the host tests
    m = 1 << 28  # 1 GiB pinned
    pinned = np.frombuffer(cupy.cuda.alloc_pinned_memory(m * 4), np.float32, m)
    pinned[:] = np.random.default_rng(0).random(m, dtype=np.float32)
    d = cupy.empty(m, cupy.float32)
    h2d = pinned.nbytes / best(lambda: d.set(pinned))
    streaming._limits.clear()
    step = [lambda x, s: threshold_device(x, "gt", np.float32(0.5), stream=s)]
    streaming.run_steps(pinned[:1 << 20], step, np.uint8, memory_limit=cap)
    streamed = pinned.nbytes / best(lambda: streaming.run_steps(pinned, step, np.uint8,
                                                                 memory_limit=cap), reps=3)
    return {"d2d_copy_GBps": copy / 1e9, "threshold_device_GBps": thr / 1e9,
            "threshold_vs_copy": thr / copy, "sweep_histogram_device_GBps": hist / 1e9,
            "sweep_histogram_vs_copy": hist / copy, "pinned_h2d_GBps": h2d / 1e9,
            "threshold_streamed_GBps": streamed / 1e9, "streamed_vs_h2d": streamed / h2d}


def zarr_ratio(work: Path) -> dict:
    import emarray
    vols = emarray.datasets.synthetic(work, (512, 1024, 1024), chunks=(64, 256, 256),
                                      kinds=("prob",), overwrite=True)
    out = {}
    for backend in ("cpu", "cuda"):
        t0 = time.perf_counter()
        emarray.threshold(vols["prob"], work / f"m-{backend}.zarr", 0.5, backend=backend,
                          overwrite=True)
        out[f"zarr_{backend}_seconds"] = time.perf_counter() - t0
    out["zarr_cpu_over_cuda"] = out["zarr_cpu_seconds"] / out["zarr_cuda_seconds"]
    return out


def plot(rows: list[dict], path: Path, cap: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in METHODS:
        ok = [r for r in rows if r["method"] == name and "seconds" in r]
        bad = [r for r in rows if r["method"] == name and "failed" in r]
        if ok:
            line, = ax.plot([r["n"] for r in ok], [r["seconds"] for r in ok], "o-", label=name)
            for r in bad:
                ax.plot([r["n"]], [ok[-1]["seconds"]], "x", color=line.get_color(), ms=10)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("elements (int8)")
    ax.set_ylabel("seconds")
    ax.set_title(f"threshold a > 0, device memory cap {cap / 2**30:.0f} GiB (x = out of memory)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="gpu-compare", help="folder for results.json and the plot")
    ap.add_argument("--cap-gib", type=float, default=11.0, help="device memory cap for all")
    ap.add_argument("--max-n", type=float, default=1e10, help="largest size to try")
    ap.add_argument("--skip-zarr", action="store_true", help="skip the zarr -> zarr timing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cap = int(args.cap_gib * 2**30)
    import cupy
    result: dict = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                    "cap_bytes": cap}
    # the short parts first, results written after each: a run cut short keeps them
    result["bandwidth"] = bandwidths(cap)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["bandwidth"]), flush=True)
    if not args.skip_zarr:
        work = Path(tempfile.mkdtemp(prefix="emarray-gpu-"))
        try:
            result["zarr"] = zarr_ratio(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result["zarr"]), flush=True)
    result["rows"] = sweep(cap, int(args.max_n))
    plot(result["rows"], out / "threshold.png", cap)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    for r in result["rows"]:
        print(r)


if __name__ == "__main__":
    main()
