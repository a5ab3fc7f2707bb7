"""Screenshots of every page of ``emarray gui`` (headless Chromium), for the docs.

    python scripts/gui_screenshots.py OUT_FOLDER [--work FOLDER]

Makes a small lab folder (the demo recipe's outputs, a short training run, meshes), serves it,
runs a few jobs through the JSON API (one left running, one stopped) and saves one PNG per page
into OUT_FOLDER. Look at them before they go into docs/images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import shutil
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def api(server, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(server.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {server.token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: {e.code} {e.read().decode()}") from None


def wait(server, job: str, states=("done", "failed", "interrupted"), timeout=900) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        j = api(server, "GET", f"/api/jobs/{job}?log=20")
        if j["state"] in states:
            return j
        time.sleep(0.5)
    raise SystemExit(f"job {job} did not end: {j}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--work", default=None, help="the lab folder (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lab = Path(args.work or tempfile.mkdtemp(prefix="emarray-lab-"))
    lab.mkdir(parents=True, exist_ok=True)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from emarray.gui.app import Background
    from emarray.view import SOFTWARE_GL, chromium

    server = Background([lab])
    demo = lab / "work" / "demo"
    try:
        if not (demo / "report.html").exists():
            job = api(server, "POST", "/api/recipes/run", {
                "path": str(ROOT / "pipelines" / "demo.yaml"), "values": {"workdir": str(demo)}})
            wait(server, job["id"])
        if not (lab / "run" / "best.pt").exists():
            job = api(server, "POST", "/api/train", {"values": {
                "data.raw": str(demo / "synthetic" / "raw.zarr"),
                "data.labels": str(demo / "synthetic" / "truth.zarr"), "out": str(lab / "run"),
                "steps": "80", "batch": "2", "patch": "16,32,32", "threads": "2",
                "log_every": "5", "checkpoint_every": "20", "model.depth": "2",
                "model.filters": "8", "augment.elastic": "0", "validation.region": "48:64,:,:",
                "validation.every": "20"}})
            wait(server, job["id"])
        if not (demo / "cells.meshes").exists():
            job = api(server, "POST", "/api/jobs", {"operator": "mesh", "params": {
                "labels": str(demo / "cells.zarr"), "dst": str(demo / "cells.meshes")}})
            wait(server, job["id"])
        for old in ("raw-smooth.zarr", "prob-0.6.zarr"):
            shutil.rmtree(lab / old, ignore_errors=True)
        for d in (lab / ".emarray-gui" / "jobs").iterdir():  # shown once each
            rec = json.loads((d / "job.json").read_text())
            if any(Path(o).name in ("raw-smooth.zarr", "prob-0.6.zarr") for o in rec["outputs"]):
                shutil.rmtree(d)
        os.environ["EMARRAY_SLOW_WRITES"] = "2"  # a job to show running, one to show stopped
        stopped = api(server, "POST", "/api/jobs", {"operator": "smooth", "workers": 1, "params": {
            "src": str(demo / "synthetic" / "raw.zarr"), "dst": str(lab / "raw-smooth.zarr"),
            "sigma": "1"}})["id"]
        wait(server, stopped, ("running",))
        time.sleep(4)
        api(server, "POST", f"/api/jobs/{stopped}/stop")
        wait(server, stopped)
        running = api(server, "POST", "/api/jobs", {"operator": "threshold", "workers": 1,
                                                     "params": {
            "src": str(demo / "synthetic" / "prob.zarr"), "dst": str(lab / "prob-0.6.zarr"),
            "value": "0.6"}})["id"]
        wait(server, running, ("running",))
        time.sleep(9)

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium()
        for a in ("--headless=new", *SOFTWARE_GL, "--window-size=1280,860"):
            opts.add_argument(a)
        d = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
        try:
            d.get(f"{server.url}/?token={server.token}")

            def shot(name: str, path: str, settle: float = 2.0) -> None:
                d.get(server.url + path)
                time.sleep(settle)
                d.save_screenshot(str(out / f"gui-{name}.png"))
                print(f"wrote {out / f'gui-{name}.png'}")

            shot("jobs", "/jobs")
            shot("run", "/")
            shot("data", "/data", 4)
            shot("form", f"/run/threshold?src={demo / 'synthetic' / 'prob.zarr'}")
            shot("train", f"/train?run={lab / 'run'}", 4)
            shot("evaluate", "/evaluate", 3)
            shot("recipes", f"/recipes?path={ROOT / 'pipelines' / 'demo.yaml'}", 4)
            d.get(f"{server.url}/view?path={demo / 'synthetic' / 'raw.zarr'}"
                  f"&path={demo / 'cells.zarr'}")
            time.sleep(12)  # the viewer loads its chunks and meshes
            d.find_element(By.TAG_NAME, "body")
            d.save_screenshot(str(out / "gui-view.png"))
            print(f"wrote {out / 'gui-view.png'}")
        finally:
            d.quit()
        if api(server, "GET", f"/api/jobs/{running}")["state"] == "running":
            api(server, "POST", f"/api/jobs/{running}/stop")
    finally:
        server.close()
    print(f"lab folder: {lab}")


if __name__ == "__main__":
    sys.exit(main())
