"""The HTML report of a run: one self-contained page (pictures inlined, nothing fetched) with
the steps, slices of every volume (labels coloured, masks over the raw), the steps' figures and
the matching scores; opened in headless Chromium as a person would open it."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import emarray
from emarray.preview import read_slices
from emarray.report import GENERATOR

from .conftest import make_volume
from .helpers import cli, one_error_line
from .test_pipeline import DEMO, demo_sets

SETS = demo_sets((48, 128, 128), (24, 64, 64))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    wd = tmp_path_factory.mktemp("report") / "work"
    r = cli("run", DEMO, "--workdir", wd, *SETS, "-q")
    assert r.returncode == 0, r.stderr
    assert f"report: {wd / 'report.html'}" in r.stdout
    return wd


def images(page: str) -> list[np.ndarray]:
    srcs = re.findall(r'<img src="([^"]+)"', page)
    out = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
                              .convert("RGB")))
    return out


def test_page_is_self_contained_and_shows_every_step(demo):
    page = (demo / "report.html").read_text()
    assert f'content="{GENERATOR}"' in page
    # nothing fetched: no script, no link, no remote source
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    state = json.loads((demo / ".emarray-pipeline.json").read_text())
    for name, e in state["steps"].items():
        assert f"<b>{name}</b>" in page
        assert e["status"] == "done" and e["seconds"] > 0
    assert f"emarray view {demo}" in page
    assert "value: ${value}" in page  # the recipe's text
    imgs = images(page)
    # 3 slices of raw, prob, truth, mask, cells, truth_cells; objects, match and sweep figures
    assert len(imgs) == 6 * 3 + 3
    for img in imgs:
        assert img.std() > 5, "a blank picture"
    m = json.loads((demo / "match" / "match.json").read_text())
    assert f"{m['voi']:.4f}" in page and f"{m['adapted_rand_error']:.4f}" in page
    f1 = {r["threshold"]: r["f1"] for r in m["matching"]}
    assert "<td class=num>0.5</td>" in page and f"{f1[0.5]:.3f}" in page


def test_labels_are_coloured_over_the_raw_and_slices_show_objects(demo):
    page = (demo / "report.html").read_text()
    section = page[page.index("<h2>cells"):page.index("<h2>objects")]
    imgs = images(section)
    assert len(imgs) == 3
    zs = [int(z) for z in re.findall(r"z = (\d+)", section)]
    labels = emarray.open_volume(demo / "cells.zarr").read()
    raw = emarray.open_volume(demo / "synthetic" / "raw.zarr").read()
    for z, img in zip(zs, imgs):
        sl = labels[z]
        assert (sl > 0).any(), "a slice without objects was chosen"
        # pictures are 320 wide: back to voxels (nearest) to compare
        small = np.asarray(Image.fromarray(img).resize(sl.shape[::-1], Image.NEAREST))
        bg = sl == 0
        grey = small[bg]
        assert np.abs(grey[:, 0].astype(int) - grey[:, 2]).max() <= 2  # raw in grey
        # and that grey is the raw slice (the picture's contrast is a monotone stretch)
        assert np.corrcoef(grey[:, 0], raw[z][bg])[0, 1] > 0.9
        fg = small[~bg].astype(int)
        assert (fg.max(axis=1) - fg.min(axis=1)).mean() > 30  # objects in colour
        # two objects of different ids, different colours
        ids = np.unique(sl[sl > 0])
        if len(ids) > 1:
            c = [small[sl == i].reshape(-1, 3).mean(axis=0) for i in ids[:2]]
            assert np.abs(c[0] - c[1]).max() > 10


def test_report_command_makes_it_again_and_refuses_what_is_not_ours(demo, tmp_path):
    page = demo / "report.html"
    before = page.read_text()
    page.unlink()
    r = cli("report", demo)
    assert r.returncode == 0, r.stderr
    again = page.read_text()
    strip = lambda s: re.sub(r"made [0-9: -]+ by", "", s)  # noqa: E731
    assert strip(again) == strip(before)
    other = tmp_path / "mine.html"
    other.write_text("<html>my notes</html>")
    r = cli("report", demo, "--out", other)
    assert r.returncode == 2 and "not a report emarray wrote" in one_error_line(r)
    assert other.read_text() == "<html>my notes</html>"
    r = cli("report", tmp_path)
    assert r.returncode == 2 and "work folder" in one_error_line(r)


def test_a_failed_step_is_on_the_page(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.random.default_rng(0).random((16, 32, 32))
                      .astype(np.float32), (8, 16, 16))
    del src
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"workdir: {tmp_path / 'work'}\nsteps:\n"
                      f"  mask:\n    op: threshold\n    src: {tmp_path / 'p.zarr'}\n"
                      "    value: 0.5\n")
    chunk = next(p for p in (tmp_path / "p.zarr").rglob("c/*/*/*") if p.is_file())
    chunk.write_bytes(b"not a compressed chunk")  # a corrupt chunk
    r = cli("run", recipe, "-q")
    assert r.returncode != 0
    page = (tmp_path / "work" / "report.html").read_text()
    assert "<td class=bad>failed</td>" in page
    assert "chunk" in page


def test_an_operator_alone_writes_its_page_and_refuses_before_any_work(tmp_path):
    mask = (np.random.default_rng(2).random((16, 40, 40)) > 0.6).astype(np.uint8)
    make_volume(tmp_path / "m.zarr", mask, (8, 20, 20))
    page = tmp_path / "label.html"
    r = cli("label", tmp_path / "m.zarr", tmp_path / "l.zarr", "--report", page, "-q")
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "<b>label</b>" in text and "l.zarr" in text
    assert len(images(text)) == 3
    # an existing page: refused before the job (its output is not made)
    r = cli("label", tmp_path / "m.zarr", tmp_path / "l2.zarr", "--report", page)
    assert r.returncode == 2 and "--overwrite" in one_error_line(r)
    assert not (tmp_path / "l2.zarr").exists()
    r = cli("label", tmp_path / "m.zarr", tmp_path / "l2.zarr", "--report", tmp_path / "x.png")
    assert r.returncode == 2 and ".html" in one_error_line(r)


def test_previews_read_a_bounded_window_or_a_coarser_level(tmp_path):
    a = np.arange(4 * 600 * 700, dtype=np.uint32).reshape(4, 600, 700) % 251
    v = make_volume(tmp_path / "big.zarr", a.astype(np.uint8), (4, 128, 128))
    zs, planes = read_slices(v, side=256)
    assert [p.shape for p in planes] == [(256, 256)] * 3
    np.testing.assert_array_equal(planes[0], a[zs[0], 172:428, 222:478])
    emarray.pyramid(v, levels=2)
    v = emarray.open_volume(tmp_path / "big.zarr")
    zs, planes = read_slices(v, side=256)
    assert planes[0].shape == (150, 175)  # level 2 fits whole


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs chromium-driver "
                    "(scripts/dev.sh test installs it)")
def test_page_in_headless_chromium_no_broken_image_no_console_error(demo, tmp_path):
    from selenium import webdriver
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1200,900"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts)
    try:
        driver.get((demo / "report.html").as_uri())
        state = driver.execute_script("""
            const imgs = Array.from(document.images);
            return {n: imgs.length,
                    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length,
                    height: document.body.scrollHeight};""")
        assert state["n"] == 21 and state["broken"] == 0, state
        assert state["height"] > 3000
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        img = np.asarray(Image.open(shot).convert("RGB"))
        assert img.std() > 20
    finally:
        driver.quit()


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A folder no file can be written into: mode 0555 for a user, a read-only bind mount for
    root (root ignores modes). Only where neither can be made (root without mount rights) is
    the folder's access check told it is read-only; the fixture says which it gave."""
    import os
    import subprocess
    d = tmp_path / "ro"
    d.mkdir()
    mounted = False
    if os.geteuid() != 0:
        d.chmod(0o555)
        kind = "mode"
    else:
        def sh(*cmd):
            return subprocess.run(cmd, capture_output=True).returncode == 0
        mounted = sh("mount", "--bind", str(d), str(d))
        if mounted and not sh("mount", "-o", "remount,ro,bind", str(d)):
            mounted = not sh("umount", str(d))
        kind = "mount" if mounted else "access"
        if not mounted:
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(d)
                                else real(p, m, **k))
    if kind != "access":  # the folder really refuses a file
        with pytest.raises(OSError):
            (d / "probe").write_text("x")
    try:
        yield d, kind
    finally:
        if mounted:
            subprocess.run(["umount", str(d)], capture_output=True)
        d.chmod(0o755)


def test_a_report_that_cannot_be_written_is_refused_before_the_job(tmp_path, read_only_dir):
    ro, kind = read_only_dir
    mask = (np.random.default_rng(3).random((8, 20, 20)) > 0.6).astype(np.uint8)
    make_volume(tmp_path / "m.zarr", mask, (4, 10, 10))
    r = cli("label", tmp_path / "m.zarr", tmp_path / "l.zarr", "--report", ro / "p.html") \
        if kind != "access" else None
    if r is not None:  # a real read-only folder, through a real process
        assert r.returncode == 2 and "is not writable" in one_error_line(r), (kind, r.stderr)
        assert not (tmp_path / "l.zarr").exists()
    # in process (the access check patched where no read-only folder could be made)
    from click.testing import CliRunner

    from emarray.cli import cli as cli_
    r2 = CliRunner().invoke(cli_, ["label", str(tmp_path / "m.zarr"), str(tmp_path / "l.zarr"),
                                   "--report", str(ro / "p.html")])
    assert r2.exit_code == 2 and "is not writable" in r2.stderr, (kind, r2.output)
    assert not (tmp_path / "l.zarr").exists() and list(ro.iterdir()) == []


@pytest.mark.parametrize("where,needle", [
    ("{d}/notes.txt/p.html", "is a file, not a folder"),
    ("{d}/missing/p.html", "does not exist"),
    ("{d}/m.zarr/p.html", "inside"),            # inside the input volume
    ("{d}/l.zarr/p.html", "inside"),            # inside the output it replaces
    ("{d}/link.html", "is a folder"),           # a link to the input volume
])
def test_report_paths_that_would_fail_or_land_on_the_job_are_refused_first(tmp_path, where,
                                                                          needle):
    import os
    mask = (np.random.default_rng(4).random((8, 20, 20)) > 0.6).astype(np.uint8)
    make_volume(tmp_path / "m.zarr", mask, (4, 10, 10))
    make_volume(tmp_path / "l.zarr", np.zeros((8, 20, 20), np.uint32), (4, 10, 10))
    (tmp_path / "notes.txt").write_text("mine")
    os.symlink(tmp_path / "m.zarr", tmp_path / "link.html")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    r = cli("label", tmp_path / "m.zarr", tmp_path / "l.zarr", "--overwrite", "--report",
            where.format(d=tmp_path))
    assert r.returncode == 2 and needle in one_error_line(r), r.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing touched


def test_other_files_written_after_the_work_are_checked_first(demo, tmp_path, read_only_dir):
    """emarray report --out and emarray view --screenshot: the same checks, before the page is
    made or Chromium starts."""
    ro, kind = read_only_dir
    from click.testing import CliRunner

    from emarray.cli import cli as cli_
    r = CliRunner().invoke(cli_, ["report", str(demo), "--out", str(ro / "again.html")])
    assert r.exit_code == 2 and "is not writable" in r.stderr, (kind, r.output)
    for shot, needle in [(ro / "v.png", "is not writable"),
                         (tmp_path / "nope" / "v.png", "does not exist"),
                         (demo / "cells.zarr" / "v.png", "inside")]:
        r = CliRunner().invoke(cli_, ["view", str(demo / "cells.zarr"), "--screenshot",
                                      str(shot)])
        assert r.exit_code == 2 and needle in r.stderr, (shot, r.output)
    assert list(ro.iterdir()) == [] and not (demo / "cells.zarr" / "v.png").exists()



def test_the_training_plot_draws_a_single_logged_point(tmp_path):
    from PIL import Image

    from emarray.training.report import plot
    state = {"history": [{"step": 20, "loss": 0.6, "lr": 1e-3, "elapsed_s": 1.0}],
             "evaluations": [], "best": None, "stopped": "", "step": 20}
    plot(state, tmp_path / "t.png", "f1")
    img = np.asarray(Image.open(tmp_path / "t.png").convert("RGB")).astype(int)
    left = img[:, : img.shape[1] // 2]
    blue = (np.abs(left - np.array([31, 119, 180])).sum(axis=2) < 60).sum()
    assert blue > 5  # the point is drawn, not an empty panel
