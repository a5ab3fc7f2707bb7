"""emarray view, tested as a person uses it: the viewer loaded in headless Chromium (WebGL2 in
software), layers that loaded without a console error, a screenshot that shows the data, a
segment picked with the mouse that is the label under it, and Ctrl-C that ends the server."""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import emarray

from .conftest import make_volume
from .test_hardening import cli, one_error_line

neuroglancer = pytest.importorskip("neuroglancer")
if not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")) or \
        shutil.which("chromedriver") is None:
    pytest.skip("needs Debian's chromium and chromium-driver (scripts/dev.sh test installs "
                "them)", allow_module_level=True)

from emarray import view as V  # noqa: E402
from PIL import Image  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A small OME-Zarr image and its labels (anisotropic), their objects table and meshes."""
    d = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:24, :64, :96]
    labels = np.zeros((24, 64, 96), np.uint32)
    for i, (cz, cy, cx, r) in enumerate([(12, 20, 20, 9), (12, 40, 60, 12), (8, 16, 75, 6)], 1):
        labels[((z - cz) * 2) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r * r] = i * 7
    raw = (np.where(labels > 0, 200, 60) + rng.normal(0, 15, labels.shape)).clip(0, 255)
    make_volume(d / "raw.zarr", raw.astype(np.uint8), (12, 32, 32), voxel_size=(8, 4, 4))
    v = make_volume(d / "cells.zarr", labels, (12, 32, 32), voxel_size=(8, 4, 4))
    emarray.objects(v, out=d / "cells.csv")
    emarray.mesh(v, d / "cells.meshes")
    return d, labels


def console_problems(logs) -> list[str]:
    return [f"{getattr(m, 'level', '?')}: {m.text}" for m in logs
            if getattr(m, "level", "") in ("error", "severe") or getattr(m, "type", "") ==
            "javascript"]


def layer_states(driver) -> list[dict]:
    return driver.execute_script("""
        return window.viewer.layerManager.managedLayers.map(l => ({
          name: l.name, ready: l.isReady(),
          sources: l.layer.dataSources.map(d => ({url: d.spec.url,
            error: d.loadState && d.loadState.error ? String(d.loadState.error) : null}))}));""")


def not_blank(png: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.std() > 10, "the screenshot is one flat colour"
    return img


def test_viewer_loads_every_layer_and_a_picked_segment_is_the_label_under_the_mouse(scene):
    d, labels = scene
    lines: list[str] = []
    viewer = V.view([d / "raw.zarr", d / "cells.zarr"], layout="xy", echo=lines.append,
                    wait=False)
    logs: list = []
    picked: list = []
    try:
        def pick(state):
            picked.append((state.mouse_voxel_coordinates, state.selected_values))

        viewer.actions.add("emarray-test-pick", pick)
        with viewer.config_state.txn() as s:
            s.input_event_bindings.viewer["keyp"] = "emarray-test-pick"
        with V.browser(viewer, (800, 600)) as wd:
            wd.add_log_listener(logs.append)
            wd.sync()
            img = not_blank(V.capture(viewer, (800, 600)))
            states = layer_states(wd.driver)
            assert [s["name"] for s in states] == ["raw", "cells"]
            assert all(s["ready"] for s in states), states
            cells = states[1]["sources"]
            assert [s["error"] for s in cells] == [None] * 3, cells  # labels, table, meshes
            assert cells[0]["url"].startswith("zarr3://")
            # the objects' colours: more than the raw's greys
            assert len({tuple(p) for p in img.reshape(-1, 3)[::37] if len(set(p)) > 1}) > 20
            with viewer.config_state.txn() as s:  # the screenshot hid the panels: back
                s.show_ui_controls = True
                s.viewer_size = None
            time.sleep(1)
            panel = wd.driver.find_element("css selector", ".neuroglancer-rendered-data-panel")
            seen = set()

            def pick_at(dx: float, dy: float) -> tuple:
                ActionChains(wd.driver).move_to_element_with_offset(panel, int(dx),
                                                                    int(dy)).perform()
                time.sleep(0.5)
                ActionChains(wd.driver).send_keys("p").perform()
                deadline = time.monotonic() + 20
                while not picked and time.monotonic() < deadline:
                    time.sleep(0.1)
                coords, values = picked.pop()
                x, y, zz = (int(np.floor(c)) for c in coords)
                under = int(labels[zz, y, x])
                got = values["cells"].value
                got = int(getattr(got, "key", got) or 0)
                assert got == under, (coords, got, under)
                seen.add(under)
                return coords

            c0 = pick_at(0, 0)
            c1 = pick_at(100, 0)
            px = 100 / (c1[0] - c0[0])  # screen pixels per voxel
            for cy, cx in [(20, 20), (40, 60)]:  # the middles of objects 7 and 14
                pick_at((cx + 0.5 - c0[0]) * px, (cy + 0.5 - c0[1]) * px)
            assert seen == {0, 7, 14}, seen  # background and two objects picked
        assert not console_problems(logs), console_problems(logs)
        assert lines[0].startswith("neuroglancer: http://127.0.0.1:")
    finally:
        neuroglancer.stop()


def test_screenshot_command_shows_meshes_in_3d(scene, tmp_path):
    d, _ = scene
    out = tmp_path / "cells.png"
    r = cli("view", d, "--screenshot", out, "--layout", "3d", "--size", "640,480")
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (480, 640, 3)
    coloured = (img.max(axis=2) - img.min(axis=2)) > 60  # mesh faces, not black or grey
    assert coloured.mean() > 0.02, coloured.mean()
    # only chosen segments
    r = cli("view", d / "cells.meshes", "--screenshot", out, "--layout", "3d",
            "--segments", "7", "--size", "640,480")
    assert r.returncode == 0, r.stderr
    one = (np.ptp(np.asarray(Image.open(out).convert("RGB")).astype(int), axis=2) > 60).mean()
    assert 0 < one < coloured.mean()


def test_float64_is_served_as_float32_and_said(tmp_path):
    a = np.random.default_rng(1).random((8, 32, 32))
    make_volume(tmp_path / "f.zarr", a, (8, 16, 16))
    out = tmp_path / "f.png"
    r = cli("view", tmp_path / "f.zarr", "--screenshot", out, "--layout", "xy",
            "--size", "320,240")
    assert r.returncode == 0, r.stderr
    assert "float64" in r.stdout and "float32" in r.stdout
    not_blank(out.read_bytes())


def test_serve_until_ctrl_c_and_nothing_outside_the_volumes(scene, tmp_path):
    d, _ = scene
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "view", str(d / "raw.zarr")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"neuroglancer: (http://127\.0\.0\.1:\d+/\S+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(m.group(1), timeout=10) as page:
            assert page.status == 200 and b"neuroglancer" in page.read().lower()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_data_server_serves_only_its_folders(tmp_path):
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "zarr.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", tmp_path / "vol" / "link")
    server = V.DataServer("127.0.0.1")
    try:
        url = server.folder(tmp_path / "vol")
        with urllib.request.urlopen(f"{url}/zarr.json", timeout=10) as r:
            assert r.read() == b"{}" and r.headers["Access-Control-Allow-Origin"] == "*"
        for bad in (f"{url}/../secret.txt", f"{url}/%2e%2e/secret.txt", f"{url}/link",
                    f"{url}/", f"{server.url}/secret.txt"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(bad, timeout=10)
            assert e.value.code == 404, bad
    finally:
        server.close()


def test_bad_input_one_line_before_anything_starts(scene, tmp_path):
    d, _ = scene
    r = cli("view", tmp_path / "missing.zarr")
    assert r.returncode == 2 and "missing.zarr" in one_error_line(r)
    r = cli("view", d / "raw.zarr", "--screenshot", tmp_path / "x.jpg")
    assert r.returncode == 2 and ".png" in one_error_line(r)
    r = cli("view", d / "raw.zarr", "--segments", "3,x")
    assert r.returncode == 2 and "'x'" in one_error_line(r)
    (tmp_path / "t.csv").write_text("id,voxels\n1,2\n")
    r = cli("view", tmp_path / "t.csv")
    assert r.returncode == 2 and "t.json" in one_error_line(r)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("view", empty)
    assert r.returncode == 2 and "no zarr volume" in one_error_line(r)
