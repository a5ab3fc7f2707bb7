"""emarray view, tested as a person uses it: the viewer loaded in headless Chromium (WebGL2 in
software), layers that loaded without a console error, a screenshot that shows the data, a
segment picked with the mouse that is the label under it, and Ctrl-C that ends the server."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import emarray

from .conftest import make_volume
from .helpers import cli, one_error_line

neuroglancer = pytest.importorskip("neuroglancer")
if not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")) or \
        shutil.which("chromedriver") is None:
    pytest.skip("needs Debian's chromium and chromium-driver (scripts/dev.sh test installs "
                "them)", allow_module_level=True)

from emarray import view as V  # noqa: E402
from emarray import view_server as S  # noqa: E402
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
    viewer = V.view([d / "raw.zarr", d / "cells.zarr", d / "cells.csv", d / "cells.meshes"],
                    layout="xy", position="12,32,48", echo=lines.append, wait=False)
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
    r = cli("view", d / "cells.zarr", d / "cells.meshes", "--screenshot", out, "--layout", "3d",
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


@pytest.mark.parametrize("at", ["after a page load", "as soon as the address is out"])
def test_serve_until_ctrl_c_and_nothing_outside_the_volumes(scene, tmp_path, at):
    d, _ = scene
    # emarray as a terminal starts it, taking Ctrl-C: a test process may ignore SIGINT (one
    # started in the background does), and its children inherit that
    takes_ctrl_c = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
                    " runpy.run_module('emarray', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", takes_ctrl_c, "view", str(d / "raw.zarr")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"neuroglancer: (http://127\.0\.0\.1:\d+/\S+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        if at == "after a page load":
            with urllib.request.urlopen(m.group(1), timeout=10) as page:
                assert page.status == 200 and b"neuroglancer" in page.read().lower()
        # (Ctrl-C between the address and the serving loop once ended in exit 1)
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
    server = S.DataServer("127.0.0.1")
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


# -- only the paths named are served -----------------------------------------------------------
def _served_bytes(viewer) -> list[bytes]:
    """Everything the data server answers for the viewer's sources and for every folder key it
    could hold (d0..d19): metadata files and a chunk of each."""
    urls = set()
    for layer in viewer.state.layers:
        for src in layer.source:
            url = src.url.split("://", 1)[1] if src.url.startswith(("zarr3://", "precomputed://")) \
                else src.url
            if url.startswith("http"):
                urls.add(url.rsplit("/", 1)[0] if "/doc" in url else url)
    base = {u.rsplit("/", 1)[0] for u in urls if "/d" in u}
    for b in base:
        urls.update(f"{b}/d{k}" for k in range(20))
    got = []
    for u in urls:
        for leaf in ("zarr.json", "info", "0/zarr.json", "0/c/0/0/0"):
            try:
                with urllib.request.urlopen(f"{u}/{leaf}", timeout=10) as r:
                    got.append(r.read())
            except urllib.error.HTTPError:
                pass
    return got


def test_nothing_outside_the_named_paths_is_served(scene, tmp_path):
    d, labels = scene
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = make_volume(elsewhere / "private.zarr", labels * 0 + 99, (12, 32, 32))
    secret.open_group().attrs["marker"] = "PRIVATE-VOLUME"
    mark = b"PRIVATE-VOLUME"
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(d / "raw.zarr", work / "raw.zarr")
    # 1. a link inside a named folder to a volume elsewhere
    os.symlink(elsewhere / "private.zarr", work / "linked.zarr")
    # 2. a mesh folder whose info names a volume elsewhere (and a table whose summary does)
    shutil.copytree(d / "cells.meshes", work / "cells.meshes")
    info = json.loads((work / "cells.meshes" / "info").read_text())
    info["emarray"]["labels"] = str(elsewhere / "private.zarr")
    (work / "cells.meshes" / "info").write_text(json.dumps(info))
    shutil.copy(d / "cells.csv", work / "cells.csv")
    (work / "cells.json").write_text(json.dumps({"labels": str(elsewhere / "private.zarr")}))
    lines: list[str] = []
    viewer = V.view([work], layout="xy", echo=lines.append, wait=False)
    try:
        names = [layer.name for layer in viewer.state.layers]
        assert names == ["raw"], names
        served = _served_bytes(viewer)
        assert served and any(b'"zarr_format"' in b for b in served)  # raw is served
        assert not any(mark in b for b in served)
        notes = "\n".join(lines)
        assert "linked.zarr is not shown" in notes and "cells.meshes is not shown" in notes
        assert "cells.csv is not shown" in notes
    finally:
        neuroglancer.stop()
    # named on their own, the mesh folder and the table are refused in one line
    for given in (work / "cells.meshes", work / "cells.csv"):
        r = cli("view", given)
        line = one_error_line(r)
        assert "private.zarr" in line and "not among the paths named" in line
    # a volume beside a named one is not served either (only named)
    lines.clear()
    viewer = V.view([d / "cells.zarr"], layout="xy", echo=lines.append, wait=False)
    try:
        [layer] = viewer.state.layers
        assert [s.url.split("/")[-1] for s in layer.source] == ["d0"], layer.source
        assert any("cells.csv, cells.meshes beside" in ln for ln in lines), lines
    finally:
        neuroglancer.stop()


def test_the_data_server_refuses_folders_outside_its_roots(tmp_path):
    (tmp_path / "named").mkdir()
    (tmp_path / "other").mkdir()
    server = S.DataServer("127.0.0.1", [tmp_path / "named"])
    try:
        server.folder(tmp_path / "named")
        with pytest.raises(emarray.errors.InvalidArgumentError, match="outside the paths named"):
            server.folder(tmp_path / "other")
    finally:
        server.close()


# -- HTTP Range ---------------------------------------------------------------------------------
def _get(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_range_requests_206_content_range_and_416(tmp_path):
    (tmp_path / "vol").mkdir()
    data = bytes(range(256)) * 4  # 1024 bytes
    (tmp_path / "vol" / "shard").write_bytes(data)
    (tmp_path / "vol" / "empty").write_bytes(b"")
    (tmp_path / "secret.txt").write_text("no")
    server = S.DataServer("127.0.0.1", [tmp_path / "vol"])
    try:
        url = server.folder(tmp_path / "vol")
        f = f"{url}/shard"
        status, h, body = _get(f)
        assert status == 200 and body == data and h["Accept-Ranges"] == "bytes"
        for rng, (a, b) in [("bytes=10-19", (10, 20)), ("bytes=1000-", (1000, 1024)),
                            ("bytes=-16", (1008, 1024)), ("bytes=0-0", (0, 1)),
                            ("bytes=1020-5000", (1020, 1024)), ("bytes=-5000", (0, 1024))]:
            status, h, body = _get(f, {"Range": rng})
            assert status == 206 and body == data[a:b], (rng, status, len(body))
            assert h["Content-Range"] == f"bytes {a}-{b - 1}/1024", (rng, h)
            assert int(h["Content-Length"]) == b - a
            assert h["Access-Control-Allow-Origin"] == "*"
            assert "Content-Range" in h["Access-Control-Expose-Headers"]
        for rng in ("bytes=1024-", "bytes=5000-6000", "bytes=-0"):
            status, h, body = _get(f, {"Range": rng})
            assert status == 416 and h["Content-Range"] == "bytes */1024", (rng, status, h)
        status, h, _ = _get(f"{url}/empty", {"Range": "bytes=0-"})
        assert status == 416 and h["Content-Range"] == "bytes */0"
        for ignored in ("bytes=0-1,5-6", "items=0-3", "bytes=9-2", "bytes=x-3"):
            status, _, body = _get(f, {"Range": ignored})
            assert status == 200 and body == data, ignored
        status, h, body = _get(f, {"Range": "bytes=4-7"}, method="HEAD")
        assert status == 206 and body == b"" and h["Content-Range"] == "bytes 4-7/1024"
        status, h, _ = _get(f, {"Origin": "http://127.0.0.1:1", "Access-Control-Request-Method":
                                "GET", "Access-Control-Request-Headers": "range"},
                            method="OPTIONS")
        assert status == 204 and "Range" in h["Access-Control-Allow-Headers"]
        for bad in (f"{url}/../secret.txt", f"{url}/%2e%2e/secret.txt", f"{url}/"):
            assert _get(bad, {"Range": "bytes=0-1"})[0] == 404, bad
    finally:
        server.close()


def test_a_sharded_volume_shows_as_its_unsharded_copy(tmp_path):
    z, y, x = np.mgrid[:16, :64, :64]
    labels = (((y // 16) * 4 + x // 16 + 1) * ((z + y + x) % 7 > 1)).astype(np.uint32)
    raw = ((x * 4 + y * 2) % 256).astype(np.uint8)
    for name, shards in (("plain", None), ("sharded", (16, 64, 64))):
        make_volume(tmp_path / name / "raw.zarr", raw, (8, 16, 16), shards=shards)
        make_volume(tmp_path / name / "cells.zarr", labels, (8, 16, 16), shards=shards)
    assert emarray.open_volume(tmp_path / "sharded" / "cells.zarr").shards == (16, 64, 64)
    shots = {}
    for name in ("plain", "sharded"):
        viewer = V.view([tmp_path / name / "raw.zarr", tmp_path / name / "cells.zarr"],
                        layout="xy", position="8,32,32", wait=False, echo=lambda line: None)
        logs: list = []
        try:
            with V.browser(viewer, (400, 400)) as wd:
                wd.add_log_listener(logs.append)
                wd.sync()
                shots[name] = V.capture(viewer, (400, 400), timeout=90)
                states = layer_states(wd.driver)
            assert all(s["ready"] for s in states), states
            assert all(src["error"] is None for s in states for src in s["sources"]), states
            assert not console_problems(logs), console_problems(logs)
        finally:
            neuroglancer.stop()
        (tmp_path / f"{name}.png").write_bytes(shots[name])
    plain = not_blank(shots["plain"])
    sharded = not_blank(shots["sharded"])
    assert len({tuple(p) for p in sharded.reshape(-1, 3)[::7]}) > 20  # labels' colours
    assert np.abs(plain.astype(int) - sharded.astype(int)).mean() < 1, "the two differ"


# -- --bind: an address a browser can reach --------------------------------------------------------
def test_bind_empty_is_refused_in_one_line(scene):
    d, _ = scene
    for bind in ("", " "):
        line = one_error_line(cli("view", d / "raw.zarr", "--bind", bind))
        assert "--bind" in line and "empty" in line
    line = one_error_line(cli("view", d / "raw.zarr", "--bind", "no-such-host.invalid"))
    assert "no-such-host.invalid" in line


def _sources_and_address(paths, bind):
    lines: list[str] = []
    viewer = V.view(paths, layout="xy", bind=bind, echo=lines.append, wait=False)
    sources = [s.url for layer in viewer.state.layers for s in layer.source]
    address = next(ln for ln in lines if ln.startswith("neuroglancer: ")).split(" ", 1)[1]
    return sources, address


@pytest.mark.parametrize("bind", ["::1", "127.0.0.1", "0.0.0.0", "::"])
def test_bind_gives_urls_a_browser_can_reach(scene, bind):
    import ipaddress
    import urllib.parse
    d, _ = scene
    try:
        sources, address = _sources_and_address([d / "raw.zarr"], bind)
        [src] = sources
        data = urllib.parse.urlsplit(src.removeprefix("zarr3://"))
        page = urllib.parse.urlsplit(address)
        for u in (data, page):
            assert u.hostname not in ("0.0.0.0", "::", ""), (src, address)
        if bind in ("::1", "127.0.0.1"):
            assert data.hostname == bind and page.hostname == bind
        else:  # every interface: this machine's name or outward address, as V names it
            want = S.reachable_host(bind)
            assert data.hostname == want.strip("[]") and page.hostname == want.strip("[]")
            outward = S._outward(socket.AF_INET) or S._outward(socket.AF_INET6)
            if outward is not None:  # a machine with a network: not the loopback
                ips = {ipaddress.ip_address(i[4][0].split("%")[0])
                       for i in socket.getaddrinfo(want, None, type=socket.SOCK_STREAM)}
                assert not any(ip.is_loopback for ip in ips), (want, ips)
        # both load over HTTP (an IPv6 literal in brackets)
        with urllib.request.urlopen(f"{src.removeprefix('zarr3://')}/zarr.json",
                                    timeout=10) as r:
            assert b'"zarr_format"' in r.read()
        with urllib.request.urlopen(address, timeout=10) as r:
            assert b"neuroglancer" in r.read().lower()
    finally:
        neuroglancer.stop()


def test_a_wildcard_bind_names_the_outward_address_when_the_name_is_loopback(monkeypatch):
    monkeypatch.setattr(S.socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(S, "_outward", lambda family: "192.0.2.7" if family == socket.AF_INET
                        else "fd00::7")
    assert S.reachable_host("0.0.0.0") == "192.0.2.7"
    assert S.reachable_host("::") == "fd00::7"
    assert S.url_host("fd00::7") == "[fd00::7]" and S.url_host("192.0.2.7") == "192.0.2.7"
    monkeypatch.setattr(S, "_outward", lambda family: None)  # no network at all
    assert S.reachable_host("0.0.0.0") == "127.0.0.1"


# -- the first view: where the objects are -----------------------------------------------------
def test_the_default_position_is_inside_an_object_away_from_the_middle(tmp_path):
    from emarray.report import choose_depths
    z, y, x = np.mgrid[:32, :64, :96]
    labels = np.zeros((32, 64, 96), np.uint32)
    for i, (cz, cy, cx, r) in enumerate([(5, 10, 80, 6), (26, 52, 14, 5), (6, 12, 60, 3)], 1):
        labels[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r * r] = i
    assert labels[16, 32, 48] == 0 and not labels[16].any()  # the middle plane is empty
    raw = np.where(labels > 0, 220, 40).astype(np.uint8)
    make_volume(tmp_path / "raw.zarr", raw, (8, 32, 32), voxel_size=(30, 4, 4))
    cells = make_volume(tmp_path / "cells.zarr", labels, (8, 32, 32), voxel_size=(30, 4, 4))
    try:
        viewer = V.view([tmp_path], layout="xy", echo=lambda line: None, wait=False)
        px, py, pz = viewer.state.position
        assert labels[int(pz), int(py), int(px)] != 0, (pz, py, px)
        # the same place the report shows: its first slice's objects
        assert int(pz) in choose_depths([_step(tmp_path / "cells.zarr")])[1]
    finally:
        neuroglancer.stop()
    assert V.where_objects([V.Layer("cells", "segmentation", ["x"], cells)]) is not None
    out = tmp_path / "first.png"
    r = cli("view", tmp_path, "--screenshot", out, "--layout", "xy", "--size", "480,320")
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    coloured = (img.max(axis=2) - img.min(axis=2)) > 60  # an object's colour, not grey
    assert coloured.mean() > 0.01, coloured.mean()


def _step(out):
    from emarray.report import StepRecord
    return StepRecord("cells", "label", "done", os.fspath(out), "", 1.0, {}, inplace=False)


def test_a_reports_view_command_names_the_table_it_shows(scene, tmp_path):
    import html
    import shlex
    d, _ = scene
    shutil.copytree(d / "cells.zarr", tmp_path / "cells.zarr")
    page = tmp_path / "page.html"
    r = cli("objects", tmp_path / "cells.zarr", "--out", tmp_path / "cells.csv", "--report",
            page, "-q")
    assert r.returncode == 0, r.stderr
    command = re.search(r"emarray view ([^<]+)", page.read_text())
    paths = shlex.split(html.unescape(command.group(1)))
    assert os.fspath(tmp_path / "cells.csv") in paths, paths
    found = V.gather(paths)
    assert list(found.tables) == [os.path.realpath(tmp_path / "cells.zarr")]


def test_skeletons_show_with_their_segmentation_and_keep_the_confinement(tmp_path):
    """A precomputed skeleton folder beside its labels (or named) is a source of their layer,
    loads in the browser without an error and draws in 3D; one whose info names labels
    elsewhere is refused (named) or left out (inside a folder named), as mesh folders are."""
    pytest.importorskip("kimimaro")
    from .skeleton_shapes import VOXEL, neurites
    lab = neurites()
    v = make_volume(tmp_path / "cells.zarr", lab, (24, 48, 48), voxel_size=VOXEL)
    emarray.skeleton(v, tmp_path / "cells.skeletons")
    emarray.skeleton(v, tmp_path / "swc", format="swc")
    logs: list = []
    lines: list[str] = []
    viewer = V.view([tmp_path], layout="3d", segments=(1, 3), echo=lines.append, wait=False)
    try:
        [layer] = viewer.state.layers
        assert [s.url.split("/")[-1] for s in layer.source][1:] == ["d1"], layer.source
        with V.browser(viewer, (640, 480)) as wd:
            wd.add_log_listener(logs.append)
            wd.sync()
            shown = np.asarray(Image.open(io.BytesIO(V.capture(viewer, (640, 480)))).convert(
                "RGB")).astype(int)
            states = layer_states(wd.driver)
            assert [s["error"] for s in states[0]["sources"]] == [None, None], states
            with viewer.txn() as st:  # no segment chosen: the skeletons' lines go
                st.layers[0].segments = set()
            bare = np.asarray(Image.open(io.BytesIO(V.capture(viewer, (640, 480)))).convert(
                "RGB")).astype(int)
            lines_drawn = (np.abs(shown - bare).max(axis=2) > 60).sum()
            assert lines_drawn > 300, lines_drawn  # two skeletons, hundreds of voxels long
        assert not console_problems(logs), console_problems(logs)
    finally:
        neuroglancer.stop()
    # its info naming labels elsewhere: refused when named, left out of a folder named
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(tmp_path / "cells.skeletons", other / "cells.skeletons")
    info = json.loads((other / "cells.skeletons" / "info").read_text())
    info["emarray"]["labels"] = str(tmp_path / "elsewhere.zarr")
    (other / "cells.skeletons" / "info").write_text(json.dumps(info))
    make_volume(other / "raw.zarr", lab.astype(np.uint8) * 0 + 1, 48)
    with pytest.raises(emarray.errors.InvalidArgumentError, match="not among the paths named"):
        V.gather([other / "cells.skeletons"])
    found = V.gather([other])
    assert found.meshes == {} and any("cells.skeletons is not shown" in n for n in found.notes)
    with pytest.raises(emarray.errors.InvalidArgumentError, match="emarray skeleton"):
        V.gather([tmp_path / "swc"])  # SWC files: not a source neuroglancer reads
