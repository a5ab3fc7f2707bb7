"""Side-by-side, in one run: volumes on S3 against a plain read of the same bytes, same server.

    python benchmarks/remote_compare.py                      # moto's server on 127.0.0.1
    python benchmarks/remote_compare.py --endpoint http://minio:9000 --bucket bench
    python benchmarks/remote_compare.py --listing 100000     # the listing cost at 10^5 chunks

Rows (each in its own process, alternating, best of ``--repeat``):

- ``fetch``: every chunk object fetched with fsspec's concurrent ``cat`` (no decoding): the
  floor of any reader on this server;
- ``dask-read``: ``dask.array.from_zarr`` on zarr's FsspecStore, summed (the plain dask read a
  user would write);
- ``emarray-read``: emarray's engine reading every block of the same volume (``reduce_blocks``,
  a sum per block, threads);
- ``emarray-threshold``: ``emarray threshold`` S3 -> S3 (read, compute, encode, write);
- ``dask-threshold``: the same with dask (``(x > v).astype(uint8)`` to_zarr on S3).

``--listing N`` puts N tiny chunk objects under one array and times the listing ``--resume``
and the recipe's "unchanged" check make (key, size, ETag of each), one request per 1000 keys.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def make_input(url: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    import numpy as np

    import emarray
    from emarray import storage
    if storage.exists(f"{url}/zarr.json"):
        return
    v = emarray.create_volume(url, shape, "float32", chunks)
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], chunks[0]):
        block = rng.random((min(chunks[0], shape[0] - z), *shape[1:]), dtype=np.float32)
        v.write((slice(z, z + block.shape[0]), slice(0, shape[1]), slice(0, shape[2])), block)


def run_variant(name: str, url: str, out: str) -> None:
    """One row, in this (fresh) process: prints {"name", "seconds"} as JSON."""
    import numpy as np

    import emarray
    from emarray import storage
    vol = emarray.open_volume(url)
    t0 = time.perf_counter()
    if name == "fetch":
        fs, path = storage.filesystem(url)
        keys = [f"{path}/{vol.array_path}/{k}" for k in storage.objects(vol.array_url)
                if k != "zarr.json"]
        t0 = time.perf_counter()  # the listing is not part of a read
        data = fs.cat(keys)
        assert len(data) == vol.expected_chunks
    elif name == "dask-read":
        import dask.array as da
        import zarr
        arr = zarr.open_array(storage.store(vol.array_url), mode="r")
        float(da.from_zarr(arr).sum().compute(scheduler="threads"))
    elif name == "emarray-read":
        from emarray.engine import reduce_blocks
        reduce_blocks(lambda ctx, b: float(np.sum(b, dtype=np.float64)), [vol],
                      lambda a, b: a + b, scheduler="threads", progress=False)
    elif name == "emarray-threshold":
        emarray.threshold(url, out, 0.5, progress=False, overwrite=True)
    elif name == "dask-threshold":
        import dask.array as da
        import zarr
        arr = zarr.open_array(storage.store(vol.array_url), mode="r")
        x = da.from_zarr(arr)
        target = zarr.create_array(storage.store(out, read_only=False), shape=vol.shape,
                                   chunks=vol.chunks, dtype="uint8", overwrite=True)
        da.store((x > 0.5).astype("uint8"), target, lock=False, scheduler="threads")
    print(json.dumps({"name": name, "seconds": time.perf_counter() - t0}))


def listing_cost(base: str, n: int) -> dict[str, float]:
    """Put ``n`` tiny chunk objects under one array; time the listing emarray makes of them."""
    from emarray import storage
    from emarray.volume import Volume
    fs, path = storage.filesystem(base)
    side = int(round(n ** (1 / 3))) + 1
    keys = {}
    for i in range(n):
        z, rem = divmod(i, side * side)
        y, x = divmod(rem, side)
        keys[f"{path}/list.zarr/0/c/{z}/{y}/{x}"] = b"x"
    if len(storage.objects(f"{base}/list.zarr/0")) < n:
        t0 = time.perf_counter()
        fs.pipe(keys, batch_size=256)
        print(f"  (put {n} objects in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    import numpy as np
    vol = Volume(url=f"{base}/list.zarr", kind="zarr3", array_path="0",
                 shape=(side * 8,) * 3, dtype=np.dtype("uint8"), chunks=(8, 8, 8), shards=None,
                 axes=("z", "y", "x"), voxel_size=(1.0,) * 3, unit="nanometer")
    t0 = time.perf_counter()
    entries = vol.chunk_entries()
    return {"objects": len(entries[0]), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", help="S3 endpoint URL (default: start moto's server)")
    ap.add_argument("--bucket", default="emarray-bench")
    ap.add_argument("--shape", default="128,512,512")
    ap.add_argument("--chunks", default="32,128,128")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--listing", type=int, default=0, help="also time a listing of N chunks")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if args.variant:
        run_variant(args.variant, args.url, args.out)
        return
    server = None
    if args.endpoint is None:
        server, args.endpoint = start_moto()
    os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    try:
        from emarray import storage
        fs, _ = storage.filesystem(f"s3://{args.bucket}")
        if not fs.exists(args.bucket):
            fs.mkdir(args.bucket)
        shape = tuple(int(s) for s in args.shape.split(","))
        chunks = tuple(int(s) for s in args.chunks.split(","))
        base = f"s3://{args.bucket}"
        url = f"{base}/raw-{'x'.join(map(str, shape))}.zarr"
        make_input(url, shape, chunks)
        rows = ["fetch", "dask-read", "emarray-read", "dask-threshold", "emarray-threshold"]
        best: dict[str, float] = {}
        for r in range(args.repeat):
            for name in rows:
                res = subprocess.run(
                    [sys.executable, __file__, "--variant", name, "--url", url,
                     "--out", f"{base}/out-{name}.zarr"],
                    capture_output=True, text=True, env=os.environ)
                if res.returncode:
                    sys.exit(f"{name} failed:\n{res.stderr}")
                sec = json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
                best[name] = min(best.get(name, sec), sec)
                print(f"  run {r + 1} {name:18s} {sec:7.2f} s", file=sys.stderr)
        mib = 4 * int(__import__("math").prod(shape)) / 2**20
        print(f"{platform.node()}: {os.cpu_count()} cores; {args.endpoint}; "
              f"float32 {shape} in {chunks} chunks ({mib:.0f} MiB), best of {args.repeat}")
        for name in rows:
            print(f"{name:18s} {best[name]:7.2f} s  {mib / best[name]:7.1f} MiB/s")
        print(f"emarray-read / dask-read          {best['emarray-read'] / best['dask-read']:.2f}x")
        print(f"emarray-read / fetch              {best['emarray-read'] / best['fetch']:.2f}x")
        print(f"emarray-threshold / dask-threshold "
              f"{best['emarray-threshold'] / best['dask-threshold']:.2f}x")
        if args.listing:
            lc = listing_cost(base, args.listing)
            print(f"listing of {lc['objects']} chunk objects (key, size, ETag): "
                  f"{lc['seconds']:.2f} s")
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
