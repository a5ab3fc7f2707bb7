"""emarray gui, tested as a person uses it: the pages in real headless Chromium (selenium),
jobs that are the CLI's own processes, and the server's guard (token, Host, Origin, paths).

Tiny synthetic volumes; one in-process server for most tests (its jobs are real
``python -m emarray.gui.runjob`` processes), a real ``emarray gui`` process where a restart or
Ctrl-C is the point. Screenshots of every page go to $EMARRAY_GUI_SHOTS when it is set.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray import spec

from .conftest import make_volume
from .test_slurm import slurm_up  # noqa: F401 - the fixture: the local SLURM answers

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium")
if not os.path.exists("/usr/bin/chromium") or shutil.which("chromedriver") is None:
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from emarray.cli import cli  # noqa: E402
from emarray.gui.app import Background  # noqa: E402
from emarray.gui.security import new_token  # noqa: E402

SHOTS = os.environ.get("EMARRAY_GUI_SHOTS")


# -- a server and a browser ------------------------------------------------------------------
class Server(Background):
    """``emarray gui`` for ``folder``, served by uvicorn in a thread of this process."""

    def __init__(self, folder: Path, **kw):
        super().__init__([folder], **kw)
        self.folder = folder

    def api(self, method, path, body=None, token=True, headers=None):
        return call(self.url + path, method, body, self.token if token else None, headers)

    def wait_job(self, job_id, states=("done", "failed", "interrupted"), timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.api("GET", f"/api/jobs/{job_id}?log=40")[1]
            if j["state"] in states:
                return j
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {j['state']}: {j.get('log')}")


def call(url, method="GET", body=None, token=None, headers=None):
    """(status, JSON or text) of one request."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in kind else raw.decode(errors="replace"))


def chrome(size=(1280, 900)):
    from emarray.view import SOFTWARE_GL, chromium
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for a in ("--headless=new", *SOFTWARE_GL, f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_for(predicate, timeout=60.0, what="the page"):
    """The first true value of ``predicate()`` (elements not there yet, or redrawn, retried)."""
    from selenium.common.exceptions import (NoSuchElementException,
                                            StaleElementReferenceException)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not get there within {timeout:.0f} s")


def shot(driver, name) -> np.ndarray:
    """The page as pixels (saved to $EMARRAY_GUI_SHOTS/NAME.png when set): not one flat colour."""
    png = driver.get_screenshot_as_png()
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SHOTS) / f"{name}.png").write_bytes(png)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.std() > 10, f"the screenshot of {name} is one flat colour"
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:16, :48, :48]
    blobs = np.exp(-(((z - 8) / 6.0) ** 2 + ((y - 20) / 9.0) ** 2 + ((x - 26) / 11.0) ** 2))
    prob = (0.8 * blobs + 0.2 * rng.random(blobs.shape)).astype(np.float32)
    make_volume(d / "prob.zarr", prob, (8, 16, 16), voxel_size=(40, 8, 8))
    return d


@pytest.fixture(scope="module")
def server(folder):
    s = Server(folder)
    yield s
    s.close()


@pytest.fixture(scope="module")
def driver(server):
    d = chrome()
    d.get(f"{server.url}/?token={server.token}")
    yield d
    d.quit()


def run_cli(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.output


def stored_chunks(path: Path) -> dict[str, bytes]:
    """Every chunk file of a volume (not its metadata, which names the job's paths)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json" and ".emarray-progress" not in p.parts}


# -- the tests ---------------------------------------------------------------------------------
def test_the_token_opens_the_page_with_every_operator_and_no_console_error(server, driver):
    assert driver.current_url == f"{server.url}/"  # the token left the address bar
    names = [e.get_attribute("data-operator") for e in driver.find_elements(By.CSS_SELECTOR, ".op")]
    assert names == list(spec.operators()) and "threshold" in names
    assert driver.get_cookie(f"emarray-gui-{server.port}")["httpOnly"] is True
    shot(driver, "run")
    for page in ("/data", "/jobs", "/run/threshold"):
        driver.get(server.url + page)
        time.sleep(0.5)
    assert console_errors(driver) == []


def test_without_the_token_a_page_an_api_call_and_a_data_file_are_refused(server, folder):
    data_file = f"/file?path={folder / 'prob.zarr' / 'zarr.json'}".replace(".json", ".json")
    (folder / "notes.txt").write_text("lab notes")
    for path in ("/", "/data", "/api/operators", "/api/jobs", f"/file?path={folder}/notes.txt",
                 "/static/gui.js", f"/api/thumbnail?path={folder}/prob.zarr"):
        status, text = call(server.url + path)
        assert status == 403, path
        assert "token" in text, path
        status, _ = call(server.url + path, token="not-the-token")
        assert status == 403, path
    status, text = call(f"{server.url}/file?path={folder}/notes.txt", token=server.token)
    assert status == 200 and text == "lab notes"
    assert call(server.url + data_file, token=server.token)[0] == 200
    status, jobs = call(server.url + "/api/jobs", "POST", {"operator": "threshold"})
    assert status == 403


def test_host_and_origin_are_checked(server):
    status, text = server.api("GET", "/api/operators", headers={"Host": "evil.example:80"})
    assert status == 403 and "Host" in text
    status, text = server.api("GET", "/api/operators", headers={"Host": f"localhost:{server.port}"})
    assert status == 200
    before = server.api("GET", "/api/jobs")[1]
    body = {"operator": "threshold", "params": {}}
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.port + 1}"):
        status, text = server.api("POST", "/api/jobs", body, headers={"Origin": origin})
        assert status == 403 and "refused" in text, origin
    # the gui's own pages may post (a bad form here: 400, not 403)
    status, reply = server.api("POST", "/api/jobs", body,
                               headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert status == 400 and reply["fields"]
    assert server.api("GET", "/api/jobs")[1] == before


def test_threshold_from_its_form_reaches_done_and_equals_the_cli(server, driver, folder):
    driver.get(f"{server.url}/run/threshold")
    src = driver.find_element(By.ID, "f-src")
    src.send_keys(str(folder / "prob.zarr"))
    driver.find_element(By.ID, "f-value").send_keys("0.5")
    driver.find_element(By.ID, "f-compare").click()  # the change of src fires
    out = driver.find_element(By.ID, "f-dst")
    wait_for(lambda: out.get_attribute("value"), what="the suggested output")
    assert out.get_attribute("value") == str(folder / "prob-threshold.zarr")
    Select(driver.find_element(By.ID, "f-compare")).select_by_value("ge")
    driver.find_element(By.ID, "submit").click()
    card = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#started .job[data-state=done]"),
                    what="the job")[0]
    bar = card.find_element(By.CSS_SELECTOR, ".bar")
    assert bar.get_attribute("aria-valuenow") == "100"
    assert bar.get_attribute("data-done") == bar.get_attribute("data-total") == "18"
    shot(driver, "form-done")
    run_cli("threshold", folder / "prob.zarr", folder / "cli.zarr", "--value", "0.5",
            "--compare", "ge")
    gui_out = emarray.open_volume(folder / "prob-threshold.zarr")
    cli_out = emarray.open_volume(folder / "cli.zarr")
    assert np.array_equal(gui_out.read(), cli_out.read())
    assert stored_chunks(folder / "prob-threshold.zarr") == stored_chunks(folder / "cli.zarr")
    jobs = server.api("GET", "/api/jobs")[1]
    job = next(j for j in jobs if j["outputs"] == [str(folder / "prob-threshold.zarr")])
    assert job["command"].startswith(f"emarray threshold {folder / 'prob.zarr'} ")
    assert job["report"] and Path(job["report"]).is_file()
    assert console_errors(driver) == []


def test_a_bad_value_shows_the_clis_message_at_the_field_and_starts_no_job(server, driver, folder):
    before = server.api("GET", "/api/jobs")[1]
    driver.get(f"{server.url}/run/threshold")
    driver.find_element(By.ID, "f-src").send_keys(str(folder / "prob.zarr"))
    value = driver.find_element(By.ID, "f-value")
    value.send_keys("nan", Keys.TAB)
    msg = driver.find_element(By.ID, "msg-value")
    wait_for(lambda: msg.text, what="the field's message")
    r = CliRunner().invoke(cli, ["threshold", str(folder / "prob.zarr"), str(folder / "x.zarr"),
                                 "--value", "nan"])
    assert r.exit_code == 2
    assert f"error: {msg.text}" == r.output.strip().splitlines()[-1]
    shot(driver, "form-bad-value")
    driver.find_element(By.ID, "submit").click()
    time.sleep(1)
    assert driver.find_element(By.ID, "msg-value").text == msg.text
    assert "invalid" in value.find_element(By.XPATH, "../..").get_attribute("class")
    assert driver.find_element(By.ID, "started").get_attribute("hidden") is not None
    assert server.api("GET", "/api/jobs")[1] == before
    assert not (folder / "x.zarr").exists() and not (folder / "prob-threshold-2.zarr").exists()
    # the refused submission is the browser's only complaint
    assert [e for e in console_errors(driver) if "/api/jobs" not in e or "400" not in e] == []
    # the API says the same, with the field named
    status, reply = server.api("POST", "/api/jobs", {"operator": "threshold", "params": {
        "src": str(folder / "prob.zarr"), "dst": str(folder / "y.zarr"), "value": "nan"}})
    assert status == 400 and reply["fields"] == {"value": msg.text}
    status, reply = server.api("POST", "/api/jobs", {"operator": "rm -rf", "params": {}})
    assert status == 404 and "only declared operators" in reply["error"]


@pytest.fixture(scope="module")
def big(folder):
    """A volume of 64 blocks, for jobs that must still be running when they are stopped."""
    a = np.random.default_rng(1).random((32, 64, 64)).astype(np.float32)
    make_volume(folder / "big.zarr", a, (8, 16, 16))
    return folder / "big.zarr"


def card(driver, job_id):
    return driver.find_element(By.ID, f"job-{job_id}")


def click(driver, job_id, button):
    """Click a job's button (found afresh: the page redraws a job when it changes)."""
    wait_for(lambda: card(driver, job_id).find_element(By.CSS_SELECTOR, button).click() or True,
             what=button)


def test_stop_a_running_job_then_resume_it_equals_an_uninterrupted_run(server, driver, folder,
                                                                        big, monkeypatch):
    monkeypatch.setenv("EMARRAY_SLOW_WRITES", "0.15")  # the job's process inherits it
    status, reply = server.api("POST", "/api/jobs", {
        "operator": "threshold", "scheduler": "threads", "workers": 1,
        "params": {"src": str(big), "dst": str(folder / "big-stopped.zarr"), "value": "0.3"}})
    assert status == 200, reply
    job = reply["id"]
    driver.get(f"{server.url}/jobs")
    done = lambda: int(card(driver, job).find_element(By.CSS_SELECTOR, ".bar")  # noqa: E731
                       .get_attribute("data-done") or 0)
    wait_for(lambda: done() >= 8, what="8 blocks")
    shot(driver, "jobs-running")
    click(driver, job, "button.stop")
    wait_for(lambda: card(driver, job).get_attribute("data-state") == "interrupted",
             what="the interrupted state")
    stopped_at = wait_for(done)
    assert 8 <= stopped_at < 64
    assert emarray.open_volume(folder / "big-stopped.zarr").unfinished_job == "threshold"
    shot(driver, "jobs-interrupted")
    monkeypatch.delenv("EMARRAY_SLOW_WRITES")
    click(driver, job, "button.resume")
    wait_for(lambda: card(driver, job).get_attribute("data-state") == "done", what="done")
    log = server.api("GET", f"/api/jobs/{job}?log=200")[1]["log"]
    assert any("--resume" in ln for ln in log) and any("already done" in ln for ln in log), log
    run_cli("threshold", big, folder / "big-whole.zarr", "--value", "0.3")
    assert stored_chunks(folder / "big-stopped.zarr") == stored_chunks(folder / "big-whole.zarr")
    assert emarray.open_volume(folder / "big-stopped.zarr").unfinished_job is None
    assert console_errors(driver) == []


def start_gui(folder, *args, env=None):
    """A real `emarray gui` process; returns it and the address it printed first."""
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "gui", str(folder), "--no-open",
                             "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    first = proc.stdout.readline().strip()
    assert first.startswith("http://") and "/?token=" in first, (
        first, proc.stderr.read() if proc.poll() is not None else "")
    base, token = first.split("/?token=")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if call(base + "/api/jobs", token=token)[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    return proc, base, token


def test_a_restarted_gui_lists_past_jobs_and_jobs_started_on_the_command_line(server, folder,
                                                                             big):
    status, reply = server.api("POST", "/api/jobs", {"operator": "threshold", "params": {
        "src": str(big), "dst": str(folder / "before-restart.zarr"), "value": "0.5"}})
    assert server.wait_job(reply["id"])["state"] == "done"
    before = {j["id"]: j["state"] for j in server.api("GET", "/api/jobs")[1]
              if j["source"] == "gui"}
    assert reply["id"] in before and set(before.values()) == {"done"}
    proc, base, token = start_gui(folder)
    cli_job = None
    try:
        jobs = call(base + "/api/jobs", token=token)[1]
        assert {j["id"]: j["state"] for j in jobs if j["source"] == "gui"} == before
        # a job started on the command line: running, then (killed) interrupted
        out = folder / "from-cli.zarr"
        cli_job = subprocess.Popen([sys.executable, "-m", "emarray", "threshold", str(big),
                                    str(out), "--value", "0.3", "--workers", "1"],
                                   env={**os.environ, "EMARRAY_SLOW_WRITES": "0.2"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listed(state):
            for j in call(base + "/api/jobs", token=token)[1]:
                if j["outputs"] == [str(out)] and j["state"] == state:
                    return j
            return None
        running = wait_for(lambda: listed("running"), what="the CLI job")
        assert running["source"] == "command line" and "threshold" in running["command"]
        assert running["resumable"] is False
        wait_for(lambda: (listed("running") or {}).get("done"), what="its progress")
        cli_job.send_signal(signal.SIGKILL)
        cli_job.wait()
        gone = wait_for(lambda: listed("interrupted"), what="the interrupted CLI job")
        assert "--resume" in gone["error"] and 0 < gone["done"] < gone["total"] == 64
        # the gui's own job goes on when the gui stops
        status, reply = call(base + "/api/jobs", "POST", {"operator": "threshold", "params": {
            "src": str(big), "dst": str(folder / "after-gui.zarr"), "value": "0.3",
            "workers": "1"}}, token=token)
        assert status == 200, reply
        wait_for(lambda: call(f"{base}/api/jobs/{reply['id']}", token=token)[1]["state"]
                 in ("running", "done"), what="the job's start")
    finally:
        if cli_job is not None and cli_job.poll() is None:
            cli_job.kill()
        proc.send_signal(signal.SIGINT)
        out_text, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out_text.strip().splitlines()[-1] == "stopped"
    assert server.wait_job(reply["id"])["state"] == "done"  # finished with no gui of its own
    a = emarray.open_volume(folder / "after-gui.zarr").read()
    assert np.array_equal(a, (emarray.open_volume(big).read() > 0.3).astype(np.uint8))


@pytest.fixture(scope="module")
def outside(tmp_path_factory, folder):
    """A volume outside the served folder, and links inside the folder that lead to it."""
    d = tmp_path_factory.mktemp("elsewhere")
    make_volume(d / "secret.zarr", np.ones((8, 16, 16), np.float32), (8, 16, 16))
    (d / "notes.txt").write_text("private")
    os.symlink(d / "secret.zarr", folder / "escape.zarr")
    os.symlink(d, folder / "linkdir")
    return d


def test_paths_outside_the_folders_and_links_leaving_them_are_refused(server, driver, folder,
                                                                     outside):
    def submit(src, dst):
        return server.api("POST", "/api/jobs", {"operator": "threshold", "params": {
            "src": str(src), "dst": str(dst), "value": "0.5"}})
    before = server.api("GET", "/api/jobs")[1]
    for src, dst, bad in [(outside / "secret.zarr", folder / "o1.zarr", "src"),
                          (folder / "escape.zarr", folder / "o2.zarr", "src"),
                          (folder / "prob.zarr", folder / "linkdir" / "o3.zarr", "dst"),
                          (folder / "prob.zarr", outside / "o4.zarr", "dst"),
                          (folder / "prob.zarr", f"{folder}/../o5.zarr", "dst"),
                          ("s3://bucket/prob.zarr", folder / "o6.zarr", "src")]:
        status, reply = submit(src, dst)
        assert status == 400 and "outside the folders" in reply["fields"][bad] or \
            "URL" in reply["fields"].get(bad, ""), (src, dst, reply)
    status, reply = submit(folder / "escape.zarr", folder / "o2.zarr")
    assert f"links resolved: {outside / 'secret.zarr'}" in reply["fields"]["src"]
    assert server.api("GET", "/api/jobs")[1] == before
    assert not any((p / f"o{k}.zarr").exists() for p in (folder, outside) for k in range(7))
    for path in (f"/file?path={folder}/linkdir/notes.txt", f"/file?path={outside}/notes.txt",
                 f"/api/browse?path={folder}/linkdir", f"/api/thumbnail?path={folder}/escape.zarr",
                 f"/api/table?path={outside}/notes.txt", f"/api/size?path={outside}"):
        status, reply = server.api("GET", path)
        assert status in (400, 403) and "outside the folders" in str(reply), (path, reply)
    listing = server.api("GET", f"/api/browse?path={folder}")[1]["entries"]
    marked = {e["name"]: e["outside"] for e in listing}
    assert marked["escape.zarr"] is True and marked["linkdir"] is True
    assert marked["prob.zarr"] is False
    volumes = [v["path"] for v in server.api("GET", "/api/volumes")[1]]
    assert str(folder / "prob.zarr") in volumes and not any("secret" in v for v in volumes)
    # in the page: the message at the field
    driver.get(f"{server.url}/run/threshold")
    driver.find_element(By.ID, "f-src").send_keys(str(folder / "escape.zarr"), Keys.TAB)
    msg = wait_for(lambda: driver.find_element(By.ID, "msg-src").text, what="the message")
    assert "outside the folders" in msg and "links resolved" in msg


def test_an_operator_declared_later_gets_its_form_with_no_gui_change(server, driver):
    from emarray.spec import REGISTRY, Operator, Param, Port
    op = Operator("gui-probe", "a throwaway operator declared by this test",
                  inputs=(Port("src", "volume", "any volume"),),
                  output=Port("dst", "volume", "where it goes"),
                  params=(Param("strength", "float", "how strong", unit="furlongs",
                                minimum=0.0),
                          Param("mode", "choice", "how", choices=("fast", "exact")),
                          Param("loud", "flag", "say more"),
                          # a name a <form> element has as a property of its own
                          Param("dataset", "text", "a name the page must not confuse")))

    @op.function
    def gui_probe(src, dst, strength=1.5, mode="exact", loud=False, dataset=None, **run):
        """Do nothing: a test's operator."""

    try:
        driver.get(server.url + "/")
        assert "gui-probe" in [e.get_attribute("data-operator")
                               for e in driver.find_elements(By.CSS_SELECTOR, ".op")]
        driver.find_element(By.CSS_SELECTOR, ".op[data-operator=gui-probe]").click()
        wait_for(lambda: driver.find_elements(By.ID, "f-strength"), what="the form")
        fields = [f.get_attribute("data-field")
                  for f in driver.find_elements(By.CSS_SELECTOR, ".field")]
        assert fields[:6] == ["src", "dst", "strength", "mode", "loud", "dataset"]
        strength = driver.find_element(By.CSS_SELECTOR, ".field[data-field=strength]")
        assert "how strong" in strength.text and "furlongs" in strength.text
        assert driver.find_element(By.ID, "f-strength").get_attribute("placeholder") == \
            "default: 1.5"
        assert [o.get_attribute("value") for o in
                Select(driver.find_element(By.ID, "f-mode")).options] == ["", "fast", "exact"]
        driver.find_element(By.ID, "f-strength").send_keys("-2", Keys.TAB)
        msg = wait_for(lambda: driver.find_element(By.ID, "msg-strength").text, what="message")
        try:
            op.param("strength").check("-2")
        except emarray.errors.InvalidArgumentError as exc:
            assert msg == str(exc)
        else:
            raise AssertionError("the declared check took -2")
    finally:
        REGISTRY.pop("gui-probe", None)


def layers_ready(driver):
    """Inside the viewer's frame: every layer loaded without an error (None: not yet)."""
    states = driver.execute_script("""
        if (!window.viewer) return null;
        return window.viewer.layerManager.managedLayers.map(l => ({
          name: l.name, ready: l.isReady(),
          errors: l.layer ? l.layer.dataSources.map(d => d.loadState && d.loadState.error ?
                                                 String(d.loadState.error) : null) : []}));""")
    return states if states and all(s["ready"] for s in states) else None


def test_a_volume_opens_in_the_viewer_and_renders(server, driver, folder):
    driver.get(f"{server.url}/data")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#volumes tbody tr"), what="volumes")
    row = driver.find_element(By.CSS_SELECTOR, f"#volumes tr[data-path='{folder / 'prob.zarr'}']")
    wait_for(lambda: row.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0",
             what="the thumbnail")
    shot(driver, "data")
    row.find_element(By.LINK_TEXT, "view").click()  # one click from the volume
    frame = wait_for(lambda: driver.find_element(By.ID, "viewer"), what="the viewer")
    driver.switch_to.frame(frame)
    try:
        states = wait_for(lambda: layers_ready(driver), what="the layers")
        assert [s["name"] for s in states] == ["prob"]
        assert states[0]["errors"] == [None], states
        panel = driver.find_element(By.CSS_SELECTOR, ".neuroglancer-rendered-data-panel")
        rect = panel.rect
    finally:
        driver.switch_to.default_content()
    at = frame.rect

    def drawn():
        img = shot(driver, "view")
        x0, y0 = int(at["x"] + rect["x"]), int(at["y"] + rect["y"])
        crop = img[y0:y0 + int(rect["height"]), x0:x0 + int(rect["width"])]
        return (crop.mean(axis=2) > 60).mean() > 0.05  # the blob, not a black panel
    wait_for(drawn, what="the drawn data")
    # its data came through the gui, behind the token
    served = server.app.state.gui.viewers.served
    key = next(k for k, p in served.folders.items() if p == folder / "prob.zarr")
    assert call(f"{server.url}/data/{key}/zarr.json")[0] == 403
    assert call(f"{server.url}/data/{key}/zarr.json", token=server.token)[0] == 200
    assert call(f"{server.url}/data/{key}/../../prob.zarr/zarr.json",
                token=server.token)[0] in (403, 404)
    chunk = folder / "prob.zarr" / "0" / "c" / "0" / "0" / "0"
    req = urllib.request.Request(f"{server.url}/data/{key}/0/c/0/0/0", headers={
        "Authorization": f"Bearer {server.token}", "Range": "bytes=4-13"})
    with urllib.request.urlopen(req, timeout=30) as r:  # a shard's index, a chunk in a shard
        assert r.status == 206 and r.read() == chunk.read_bytes()[4:14]
    ng = frame.get_attribute("src")
    assert ng.startswith(f"{server.url}/ng/v/") and call(ng)[0] == 403
    assert [e for e in console_errors(driver) if "favicon" not in e] == []


def test_the_viewer_refuses_links_and_files_that_lead_outside(server, driver, folder, outside):
    driver.get(f"{server.url}/view?path={folder / 'escape.zarr'}")
    msg = driver.find_element(By.ID, "view-error").text
    assert "outside the folders" in msg and not driver.find_elements(By.ID, "viewer")
    # a mesh folder whose info names a label volume elsewhere brings nothing from there
    meshes = folder / "cells.meshes"
    meshes.mkdir()
    (meshes / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh",
                                             "emarray": {"labels": str(outside / "secret.zarr")}}))
    status, text = server.api("GET", f"/view?path={meshes}")
    assert status == 200 and 'id="view-error"' in text and 'id="viewer"' not in text
    assert str(outside / "secret.zarr") in text  # named in the one line that refuses it
    served = server.app.state.gui.viewers.served
    assert all(str(outside) not in str(p) for p in served.folders.values())


def test_train_from_the_train_page_then_predict_with_its_model(server, driver, folder):
    pytest.importorskip("torch")
    emarray.datasets.synthetic(folder / "syn", (32, 64, 64), chunks=(16, 32, 32), seed=3)
    from emarray.gui.recipes import PACKAGED
    driver.get(f"{server.url}/train")
    # start from the config that comes with emarray: its values fill the form
    start = wait_for(lambda: [o for o in Select(driver.find_element(By.ID, "t-from")).options
                              if o.get_attribute("value").endswith("train-synthetic.yaml")],
                     what="the packaged configs")[0]
    assert start.get_attribute("value") == str(PACKAGED / "train-synthetic.yaml")
    start.click()
    steps = driver.find_element(By.ID, "t-steps")
    wait_for(lambda: steps.get_attribute("value") == "100", what="the config's values")
    assert driver.find_element(By.ID, "t-validation.region").get_attribute("value") == "48:64,:,:"
    assert driver.find_element(By.ID, "t-out").get_attribute("value") == ""  # not in the folders
    values = {"data.raw": folder / "syn" / "raw.zarr", "data.labels": folder / "syn" / "truth.zarr",
              "out": folder / "run", "steps": 20, "batch": 1, "validation.region": "24:32,:,:",
              "validation.every": 10, "model.filters": 4, "checkpoint_every": 10, "log_every": 5}
    for k, v in values.items():
        field = driver.find_element(By.ID, f"t-{k}")
        field.clear()
        field.send_keys(str(v))
    # a bad value first: the config check's message at its field, no job
    batch = driver.find_element(By.ID, "t-batch")
    batch.clear()
    batch.send_keys("0", Keys.TAB)  # leaving the field checks it
    msg = wait_for(lambda: driver.find_element(By.ID, "tmsg-batch").text, what="the message")
    assert msg.startswith("batch") and "0" in msg
    batch.clear()
    batch.send_keys("1")
    driver.find_element(By.ID, "train-submit").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#started .job[data-state=done]"),
             timeout=240, what="the training job")
    assert not driver.find_element(By.ID, "tmsg-batch").text
    def points(series):
        return int(driver.find_element(By.CSS_SELECTOR, f"#curve polyline[data-series={series}]")
                   .get_attribute("data-points"))
    wait_for(lambda: points("loss") == 4, what="the whole loss curve")  # steps 5, 10, 15, 20
    assert points("val_f1") == points("val_iou") == 2  # steps 10, 20
    models = wait_for(lambda: [li.get_attribute("data-model") for li in
                               driver.find_elements(By.CSS_SELECTOR, "#run-models li")])
    assert models == [str(folder / "run" / "best.pt"), str(folder / "run" / "model.pt")]
    shot(driver, "train")
    link = driver.find_element(By.CSS_SELECTOR, f"#run-models li[data-model='{models[0]}'] a")
    link.click()  # predict with the best model: the form comes with it and its raw volume
    wait_for(lambda: driver.find_elements(By.ID, "f-model"), what="the predict form")
    assert driver.find_element(By.ID, "f-model").get_attribute("value") == models[0]
    assert driver.find_element(By.ID, "f-raw").get_attribute("value") == \
        str(folder / "syn" / "raw.zarr")
    out = driver.find_element(By.ID, "f-out")
    wait_for(lambda: out.get_attribute("value"), what="the suggested output")
    driver.find_element(By.ID, "submit").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#started .job[data-state=done]"),
             timeout=240, what="the predict job")
    run_cli("predict", folder / "syn" / "raw.zarr", models[0], folder / "cli-pred.zarr")
    assert np.array_equal(emarray.open_volume(out.get_attribute("value")).read(),
                          emarray.open_volume(folder / "cli-pred.zarr").read())
    assert console_errors(driver) == []


def test_a_recipe_from_the_recipes_page_runs_and_shows_each_steps_state(server, driver, folder):
    from emarray.gui.recipes import PACKAGED
    recipe = PACKAGED / "demo.yaml"
    driver.get(f"{server.url}/recipes?path={recipe}")
    wait_for(lambda: driver.find_elements(By.ID, "r-var-shape"), what="the recipe")
    workdir = driver.find_element(By.ID, "r-workdir")
    assert workdir.get_attribute("value") == str(folder / "work" / "demo")  # ../work/demo is outside
    for var, value in (("shape", "16,64,64"), ("chunks", "16,32,32")):
        driver.find_element(By.ID, f"r-var-{var}").send_keys(value, Keys.TAB)

    def actions():  # read in one script: the page may redraw the list between two reads
        return dict(driver.execute_script(
            "return [...document.querySelectorAll('#recipe-steps li')]"
            ".map(li => [li.getAttribute('data-step'), li.getAttribute('data-action')])"))
    wait_for(lambda: set(actions().values()) == {"run"} and len(actions()) == 8, what="the plan")
    driver.find_element(By.ID, "recipe-run").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#started .job[data-state=done]"),
             timeout=180, what="the recipe's job")
    wait_for(lambda: set(actions().values()) == {"skip"}, what="every step done")
    shot(driver, "recipes")
    # a changed value: that step and those after it run again, the others stay
    driver.find_element(By.ID, "r-var-value").send_keys("0.6", Keys.TAB)
    wait_for(lambda: actions()["mask"] == "rerun", what="the new plan")
    a = actions()
    assert a["synthetic"] == a["truth_cells"] == a["sweep"] == "skip"
    assert a["cells"] == a["objects"] == a["match"] == a["pyramid"] == "rerun"
    # the same recipe on the command line makes the same volumes
    run_cli("run", recipe, "--workdir", folder / "cli-demo", "--set", "shape=16,64,64",
            "--set", "chunks=16,32,32", "-q")
    for name in ("cells.zarr", "mask.zarr", "truth_cells.zarr"):
        assert stored_chunks(folder / "work" / "demo" / name) == \
            stored_chunks(folder / "cli-demo" / name), name
    assert console_errors(driver) == []


def test_the_evaluate_page_compares_segmentations_and_names_the_best(server, driver, folder):
    import pandas as pd
    demo = folder / "work" / "demo"
    assert (demo / "match" / "match.json").is_file()  # from the recipe's test
    status, reply = server.api("POST", "/api/jobs", {"operator": "match", "params": {
        "pred": str(demo / "truth_cells.zarr"), "truth": str(demo / "truth_cells.zarr"),
        "out": str(folder / "self-match")}})
    assert status == 200, reply
    assert server.wait_job(reply["id"])["state"] == "done"
    driver.get(f"{server.url}/evaluate")
    rows = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#matches tbody tr[data-path]"),
                    what="the matches")
    paths = [r.get_attribute("data-path") for r in rows]
    voi = [json.loads((Path(p) / "match.json").read_text())["voi"] for p in paths]
    assert voi == sorted(voi) and voi[0] == 0  # lowest VOI first: the truth against itself
    best = [r.get_attribute("data-path") for r in rows if "best" in r.get_attribute("class")]
    same_truth = [p for p in paths if json.loads((Path(p) / "match.json").read_text())["truth"]
                  == str(demo / "truth_cells.zarr")]
    assert best[0] == str(folder / "self-match") and best[0] in same_truth
    assert "best" in rows[0].text
    img = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#sweeps img.plot"))
    wait_for(lambda: int(img.get_attribute("naturalWidth")) > 100, what="the sweep plot")
    shot(driver, "evaluate")
    driver.find_element(By.XPATH, "//div[@id='sweeps']//button[text()='open the table']").click()
    f1 = wait_for(lambda: driver.find_element(By.XPATH, "//table[@id='table']//th[text()='f1']"))
    f1.click()
    f1.click()  # descending
    head = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#table th")]
    first = driver.find_element(By.CSS_SELECTOR, "#table tbody tr").find_elements(By.TAG_NAME, "td")
    want = pd.read_csv(demo / "sweep" / "sweep.csv")["f1"].max()
    assert float(first[head.index("f1")].text) == pytest.approx(want, rel=1e-3)
    assert console_errors(driver) == []


def test_ingest_a_stack_chosen_in_the_file_browser(server, driver, folder):
    slices = folder / "slices"
    slices.mkdir()
    stack = np.random.default_rng(5).integers(0, 255, (4, 24, 32), dtype=np.uint8)
    for z, plane in enumerate(stack):
        Image.fromarray(plane).save(slices / f"s{z:02d}.png")
    driver.get(f"{server.url}/data")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#stacks li a"), what="the stacks")
    driver.find_element(By.ID, "ingest-browse").click()
    entry = wait_for(lambda: [li for li in driver.find_elements(By.CSS_SELECTOR, "#browser-list li")
                              if li.text.startswith(str(folder))], what="the folders")[0]
    entry.find_element(By.CSS_SELECTOR, ".name").click()  # into the served folder
    entry = wait_for(lambda: [li for li in driver.find_elements(By.CSS_SELECTOR, "#browser-list li")
                              if li.text.startswith("slices")], what="its entries")[0]
    names = [li.text.split("\n")[0] for li in driver.find_elements(By.CSS_SELECTOR,
                                                                   "#browser-list li")]
    assert "linkdir (a link leaving the folders)" in names  # shown, not followed
    shot(driver, "browse")
    entry.find_element(By.TAG_NAME, "button").click()  # choose
    wait_for(lambda: driver.find_elements(By.ID, "f-voxel_size"), what="the ingest form")
    assert driver.find_element(By.ID, "f-src").get_attribute("value") == str(slices)
    driver.find_element(By.ID, "f-voxel_size").send_keys("40,8,8")
    driver.find_element(By.ID, "f-unit").send_keys("nanometer", Keys.TAB)
    out = driver.find_element(By.ID, "f-dst")
    wait_for(lambda: out.get_attribute("value") == str(folder / "slices-ingest.zarr"),
             what="the output beside the stack")
    driver.find_element(By.ID, "submit").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#started .job[data-state=done]"),
             what="the ingest job")
    v = emarray.open_volume(folder / "slices-ingest.zarr")
    assert np.array_equal(v.read(), stack) and v.voxel_size == (40.0, 8.0, 8.0)
    assert v.unit == "nanometer"


def test_bad_command_lines_are_one_line_and_a_wider_bind_is_said(folder, tmp_path):
    r = CliRunner().invoke(cli, ["gui", str(tmp_path / "nowhere"), "--no-open"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"error: gui serves folders; {str(tmp_path / 'nowhere')!r} is not one"]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        r = CliRunner().invoke(cli, ["gui", str(folder), "--no-open", "--port", str(port)])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines
        assert "--port" in lines[0]
    finally:
        taken.close()
    proc, base, token = start_gui(folder, "--bind", "0.0.0.0")
    second = proc.stdout.readline()  # (communicate() would miss lines readline buffered)
    try:
        port = base.rsplit(":", 1)[1]
        assert base == f"http://{socket.gethostname()}:{port}"
        host = {"Host": f"{socket.gethostname()}:{port}"}
        local = f"http://127.0.0.1:{port}"
        assert call(local + "/api/jobs", token=token, headers=host)[0] == 200
        assert call(local + "/api/jobs", token=token, headers={"Host": "evil.example"})[0] == 403
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert second.startswith("warning: serving on 0.0.0.0: anyone who can reach")


def test_jobs_past_the_limit_wait_in_the_queue(tmp_path, monkeypatch):
    folder = tmp_path
    big = folder / "big.zarr"
    make_volume(big, np.random.default_rng(1).random((16, 32, 64)).astype(np.float32),
                (8, 16, 16))  # 16 blocks, each written 50 ms late: the first job outlasts
    monkeypatch.setenv("EMARRAY_SLOW_WRITES", "0.05")  # the calls made while it runs
    s = Server(folder, max_running=1)
    try:
        def submit(name):
            status, reply = s.api("POST", "/api/jobs", {"operator": "threshold", "workers": 1,
                                                        "params": {"src": str(big),
                                                                   "dst": str(folder / name),
                                                                   "value": "0.7"}})
            assert status == 200, reply
            return reply["id"]
        first, second = submit("q1.zarr"), submit("q2.zarr")
        assert s.api("GET", f"/api/jobs/{second}")[1]["state"] == "queued"
        assert s.api("POST", f"/api/jobs/{second}/stop")[1]["state"] == "interrupted"
        assert not (folder / "q2.zarr").exists()
        status, reply = s.api("POST", f"/api/jobs/{first}/resume")
        assert status == 400 and "only an interrupted or failed job resumes" in reply["error"]
        assert s.api("POST", f"/api/jobs/{second}/resume")[1]["state"] == "queued"
        assert s.wait_job(first)["state"] == "done"
        done = s.wait_job(second)
        assert done["state"] == "done" and done["started"] >= s.api(
            "GET", f"/api/jobs/{first}")[1]["ended"]
        want = (emarray.open_volume(big).read() > 0.7).astype(np.uint8)
        assert np.array_equal(emarray.open_volume(folder / "q2.zarr").read(), want)
    finally:
        s.close()


def test_store_secrets_reach_the_job_and_are_shown_nowhere(folder):
    import psutil
    secret = "SUPERSECRET-" + new_token()[:12]
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "--storage-option",
                             f"secret_access_key={secret}", "gui", str(folder), "--no-open",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        base, token = proc.stdout.readline().strip().split("/?token=")
        wait_for(lambda: call(base + "/api/jobs", token=token)[0] == 200, what="the gui")
        status, reply = call(base + "/api/jobs", "POST", {"operator": "threshold", "params": {
            "src": str(folder / "prob.zarr"), "dst": str(folder / "secret-test.zarr"),
            "value": "0.5"}}, token=token)
        assert status == 200, reply
        jobdir = next(folder.glob(f".emarray-gui/jobs/{reply['id']}"))
        pid = wait_for(lambda: json.loads((jobdir / "pid.json").read_text())["pid"]
                       if (jobdir / "pid.json").exists() else None, what="the job's start")
        try:  # it reaches the job, in its environment only
            env = psutil.Process(pid).environ()
            assert secret in env.get("EMARRAY_GUI_STORAGE_OPTIONS", "")
            assert secret not in " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            pass  # already done
        wait_for(lambda: call(f"{base}/api/jobs/{reply['id']}", token=token)[1]["state"] == "done",
                 what="the job")
        shown = [call(base + p, token=token)[1] for p in (
            "/api/jobs", f"/api/jobs/{reply['id']}?log=400", "/", "/jobs", "/data",
            "/api/catalog", "/run/threshold", "/recipes", "/train")]
        assert not any(secret in json.dumps(x) for x in shown)
        for f in jobdir.rglob("*"):
            if f.is_file():
                assert secret not in f.read_text(errors="replace"), f
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert secret not in out + err


def test_a_failed_job_says_why_in_one_line(server, folder):
    """A scheduler address that answers nothing: the job fails with the CLI's one line."""
    status, reply = server.api("POST", "/api/jobs", {"operator": "threshold", "params": {
        "src": str(folder / "prob.zarr"), "dst": str(folder / "unreached.zarr"), "value": "0.5",
        "where": "address", "address": "tcp://127.0.0.1:9", "connect_timeout": "1"}})
    assert status == 200, reply
    job = server.wait_job(reply["id"])
    assert job["state"] == "failed" and job["resumable"]
    assert job["command"].endswith("--scheduler=tcp://127.0.0.1:9 --connect-timeout=1.0 "
                                   f"--report={folder}/.emarray-gui/jobs/{reply['id']}/report.html")
    r = CliRunner().invoke(cli, ["threshold", str(folder / "prob.zarr"),
                                 str(folder / "unreached2.zarr"), "--value", "0.5", "--scheduler",
                                 "tcp://127.0.0.1:9", "--connect-timeout", "1"])
    assert r.exit_code == 2 and r.output.strip() == f"error: {job['error']}"
    # where to run is checked at its fields like any other
    for field, value, words in (("address", "127.0.0.1:9", "tcp://host:8786"),
                                ("workers", "0", "workers"),
                                ("slurm_config", str(folder / "nope.yaml"), "no SLURM config")):
        status, reply = server.api("POST", "/api/check", {
            "operator": "threshold", "field": field, "value": value,
            "values": {"where": {"slurm_config": "slurm"}.get(field, "address")}})
        assert words in reply["message"], (field, reply)


@pytest.mark.slurm
def test_a_job_on_slurm_from_its_form_equals_the_threaded_run(server, folder, big,
                                                              slurm_up):  # noqa: F811
    (folder / "slurm.yaml").write_text(
        "slurm:\n  jobs: 1\n  memory: 2GB\n  walltime: '00:10:00'\n"
        f"  log_directory: {folder / 'slurm-logs'}\n")
    (folder / "bad-slurm.yaml").write_text("slurm:\n  partiton: gpu\n")
    status, reply = server.api("POST", "/api/check", {
        "operator": "threshold", "field": "slurm_config", "value": str(folder / "bad-slurm.yaml"),
        "values": {"where": "slurm"}})
    assert "unknown slurm setting 'partiton'" in reply["message"]
    status, reply = server.api("POST", "/api/jobs", {"operator": "threshold", "params": {
        "src": str(big), "dst": str(folder / "on-slurm.zarr"), "value": "0.4", "where": "slurm",
        "slurm_config": str(folder / "slurm.yaml"), "workers": "1", "report": False}})
    assert status == 200, reply
    job = server.wait_job(reply["id"], timeout=280)
    assert job["state"] == "done", job.get("log")
    assert "--scheduler=slurm --workers=1 --slurm-config=" in job["command"]
    assert list((folder / "slurm-logs").glob("emarray-worker-*.out"))  # it ran in a SLURM job
    run_cli("threshold", big, folder / "threads.zarr", "--value", "0.4")
    assert stored_chunks(folder / "on-slurm.zarr") == stored_chunks(folder / "threads.zarr")
