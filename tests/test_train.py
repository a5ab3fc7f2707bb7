"""emarray train end to end: it learns, resumes exactly, writes what predict reads, and refuses
bad configs before any work."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

import emarray  # noqa: E402
from tests.conftest import make_volume  # noqa: E402
from tests.helpers import cli, one_error_line, train_config  # noqa: E402

SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-data")
    emarray.datasets.synthetic(d, SHAPE, chunks=(16, 32, 32), seed=3)
    return d


def _config(src: Path, out: Path, **over) -> dict:
    cfg = {"out": str(out), "steps": 40, "batch": 2, "patch": "16,32,32", "threads": 2,
           "log_every": 10, "checkpoint_every": 10,
           "data": {"raw": str(src / "raw.zarr"), "labels": str(src / "truth.zarr")},
           "model": {"depth": 2, "filters": 8},
           "augment": {"elastic": 0.0},
           "validation": {"region": "24:32,:,:", "every": 20}}
    for k, v in over.items():
        sec, _, key = k.partition("__")
        if key:
            cfg.setdefault(sec, {})[key] = v
        else:
            cfg[sec] = v
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _f1(model: Path, run: Path, tmp: Path) -> float:
    p = emarray.predict(run / "validation" / "raw.zarr", model, tmp / f"p-{model.stem}.zarr",
                        overwrite=True)
    with warnings.catch_warnings():  # an untrained net's best F1 may lie at t=0
        warnings.simplefilter("ignore", emarray.errors.EmarrayWarning)
        df = emarray.sweep(p, run / "validation" / "truth.zarr", thresholds=100, truth_value=1,
                           ignore_value=255)
    return float(df["f1"].max())


@pytest.fixture(scope="module")
def short_run(data, tmp_path_factory):
    """One short run (100 steps, evaluated at 50 and 100), for the tests that read what a
    finished run wrote and change nothing in it."""
    run = tmp_path_factory.mktemp("short") / "run"
    return emarray.train(_config(data, run, steps=100, validation__every=50)), run


def test_a_short_run_learns_and_predict_reads_its_checkpoints(short_run, tmp_path):
    """After 100 CPU steps the held-out F1 clears 0.85; the same net untrained stays below 0.6
    (predicting foreground everywhere gives 2p/(1+p), about 0.4 here)."""
    r, run = short_run
    assert r.steps == 100 and r.best is not None
    assert r.best["f1"] > 0.85, r.best
    assert [e["step"] for e in r.evaluations] == [50, 100]
    untrained = emarray.models.new_model(tmp_path / "untrained.pt", depth=2, filters=8,
                                         patch=(16, 32, 32))
    assert _f1(Path(untrained), run, tmp_path) < 0.6
    truth = emarray.open_volume(run / "validation" / "truth.zarr").read()
    p = (truth == 1).mean()
    assert 2 * p / (1 + p) < 0.6
    # best.pt is a model file predict reads, and gives the best F1 the run reported
    assert _f1(run / "best.pt", run, tmp_path) == pytest.approx(r.best["f1"], abs=1e-9)
    info = emarray.models.describe(run / "model.pt")
    assert info["meta"]["trained"]["steps"] == 100 and info["patch"] == [16, 32, 32]
    # the logs
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,elapsed_s,val_f1") and len(rows) == 11
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["best"]["f1"] == r.best["f1"] and summary["steps"] == 100
    assert (run / "training.png").stat().st_size > 10_000


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_a_killed_run_resumes_into_the_same_run(data, tmp_path):
    """SIGKILL after a checkpoint, then --resume: the same weights, metrics and evaluations as a
    run that was never interrupted (20 steps: checkpoints every 5, evaluations at 10 and 20)."""
    short = {"steps": 20, "checkpoint_every": 5, "validation__every": 10}
    clean = emarray.train(_config(data, tmp_path / "clean", **short))
    cfg = _write(tmp_path / "c.yaml", _config(data, tmp_path / "run", **short))
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "train", str(cfg), "-q"],
                            stderr=subprocess.PIPE, text=True)
    state = tmp_path / "run" / "state.pt"
    t0 = time.time()
    while not state.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(state, map_location="cpu", weights_only=True)["step"]
    assert 5 <= step < 20, step
    r = cli("train", cfg, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resuming at step {step} of 20" in r.stderr
    a, b = _weights(tmp_path / "clean" / "state.pt"), _weights(state)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    done = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["f1"] for e in done["evaluations"]] == [e["f1"] for e in clean.evaluations]
    assert [h["loss"] for h in done["history"]] == [h["loss"] for h in clean.history]
    assert [e["step"] for e in clean.evaluations] == [10, 20] and len(clean.history) == 2
    # a resume may train longer, and nothing else
    r = emarray.train(_config(data, tmp_path / "run", **short), resume=True, steps=25)
    assert r.steps == 25
    r = cli("train", cfg, "--resume", "--set", "optimizer.lr=0.5")
    assert "optimizer.lr = 0.001" in one_error_line(r)


def test_early_stopping_says_why(data, tmp_path):
    from emarray.engine.stages import _STATE
    before = set(_STATE)
    r = emarray.train(_config(data, tmp_path / "run", steps=200, validation__every=5,
                              validation__patience=2, validation__min_delta=0.99))
    assert r.steps == 15
    assert r.stopped.startswith("early stopping at step 15: validation f1 has not improved by "
                                "more than 0.99 for 2 evaluations (best ")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == r.stopped
    assert set(_STATE) == before  # no network kept per evaluation


def test_valid_nets_softmax_classes_and_a_mask(data, tmp_path):
    """A valid-padding net trains on labels cropped to its output; a 3-class softmax net with an
    ignore label, balanced sampling, OHEM and an annotated mask trains and validates per class."""
    r = emarray.train(_config(data, tmp_path / "valid", steps=10, validation__every=10,
                              patch="20,44,44",
                              model={"depth": 2, "filters": 4, "padding": "valid"}))
    assert r.steps == 10 and r.best is not None
    # the synthetic voxels are anisotropic: (1,2,2) pooling
    assert emarray.models.describe(tmp_path / "valid" / "model.pt")["output"] == [8, 28, 28]
    truth = emarray.open_volume(data / "truth.zarr").read()
    right = (np.arange(SHAPE[2]) // 8) % 2 == 1  # stripes: both classes in every region
    lab = np.where(truth > 0, np.where(right, 2, 1), 0).astype(np.uint8)
    lab[:, :4] = 7
    mask = np.ones(SHAPE, np.uint8)
    mask[:, :, 60:] = 0
    make_volume(tmp_path / "lab.zarr", lab, (16, 32, 32))
    make_volume(tmp_path / "mask.zarr", mask, (16, 32, 32))
    cfg = _config(data, tmp_path / "soft", steps=10, validation__every=10,
                  data__labels=str(tmp_path / "lab.zarr"), data__mask=str(tmp_path / "mask.zarr"),
                  data__ignore_label=7,
                  model={"depth": 2, "filters": 4, "activation": "softmax", "channels_out": 3},
                  sampling={"mode": "balanced"}, loss={"kind": "bce+dice", "ohem": 3})
    r = emarray.train(cfg)
    assert r.best is not None and 0 <= r.best["f1"] <= 1
    vt = emarray.open_volume(tmp_path / "soft" / "validation" / "truth.zarr")
    assert vt.shape == (3, 8, 64, 64)
    t = vt.read()
    assert (t[:, :, :4] == 255).all() and (t[:, :, :, 60:] == 255).all()
    np.testing.assert_array_equal(t[1, :, 4:, :60], (lab[24:32, 4:, :60] == 1))


@pytest.mark.parametrize("change, message", [
    ({"sampling": {"mdoe": "uniform"}}, "unknown config key 'sampling.mdoe'"),
    ({"learning_rate": 1}, "unknown config key 'learning_rate'"),
    ({"patch": "8,8,8", "model": {"padding": "valid"}},
     "patch 8,8,8 is smaller than the smallest input this net takes (13,18,18)"),
    ({"patch": "16,31,32"}, "patch 16,31,32 is not an input size this same-padded net takes"),
    ({"sampling": {"mode": "foregound"}}, "sampling.mode: must be one of uniform, foreground, "
                                          "balanced, got 'foregound'"),
    ({"validation": {"region": "30:40,:,:"}}, "validation.region: '30:40' is empty or outside 0:32"),
    ({"loss": {"class_weights": [1, 2, 3]}}, "loss.class_weights: 2 weights"),
    ({"augment": {"elastic": 2}}, "augment.elastic: a probability in [0, 1], got 2"),
    ({"optimizer": {"lr": 0}}, "optimizer.lr: must be > 0"),
    ({"model": {"activation": "sigmoid", "channels_out": 2}}, "model.channels_out"),
])
def test_bad_configs_fail_before_any_work(data, tmp_path, change, message):
    cfg = _config(data, tmp_path / "run")
    for k, v in change.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    r = cli("train", _write(tmp_path / "c.yaml", cfg))
    assert message in one_error_line(r)
    assert not (tmp_path / "run").exists()


def test_bad_volumes_and_outputs_are_refused(data, tmp_path):
    make_volume(tmp_path / "short.zarr", np.zeros((16, 64, 64), np.uint32), (16, 32, 32))
    cfg = _config(data, tmp_path / "run")
    cfg["data"]["labels"] = str(tmp_path / "short.zarr")
    line = one_error_line(cli("train", _write(tmp_path / "c.yaml", cfg)))
    assert "have shape (16, 64, 64) but raw" in line and "(32, 64, 64)" in line
    cfg["data"]["labels"] = str(tmp_path / "missing.zarr")
    assert "missing.zarr" in one_error_line(cli("train", _write(tmp_path / "c.yaml", cfg)))
    assert not (tmp_path / "run").exists()
    # the run folder: never an input, never a folder train did not make, never silently replaced
    cfg = _config(data, data / "raw.zarr" / "run")
    assert "overlaps the input" in one_error_line(cli("train", _write(tmp_path / "c.yaml", cfg)))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    cfg = _config(data, other)
    c = _write(tmp_path / "c.yaml", cfg)
    assert "already exists" in one_error_line(cli("train", c))
    assert "not a training run emarray made" in one_error_line(cli("train", c, "--overwrite"))
    assert "nothing to resume" in one_error_line(cli("train", c, "--resume"))
    assert (other / "notes.txt").read_text() == "keep me"
    r = cli("train", c, "--steps", "0")
    assert "steps must be" in one_error_line(r)


def test_an_interrupted_overwrite_puts_the_old_run_back(data, tmp_path):
    first = emarray.train(_config(data, tmp_path / "run", steps=10, validation={}))
    before = (tmp_path / "run" / "state.pt").read_bytes()
    cfg = _write(tmp_path / "c.yaml", _config(data, tmp_path / "run", steps=1000,
                                              checkpoint_every=1000, validation={}))
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "train", str(cfg), "--overwrite",
                             "-q"], stderr=subprocess.PIPE, text=True)
    aside = tmp_path / ".run.emarray-old"
    t0 = time.time()
    while not aside.exists() and time.time() - t0 < 60 and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert aside.exists() and not (tmp_path / "run" / "state.pt").exists()
    r = cli("train", cfg, "--resume", "--steps", "10")
    assert "put back the run an interrupted --overwrite had set aside" in r.stderr
    assert (tmp_path / "run" / "state.pt").read_bytes() == before and first.steps == 10
    assert not aside.exists()


def test_a_corrupt_chunk_stops_the_run_naming_it_and_the_last_checkpoint_stays(data, tmp_path):
    import shutil
    shutil.copytree(data, tmp_path / "d")
    c = _write(tmp_path / "c.yaml", _config(tmp_path / "d", tmp_path / "run", steps=10,
                                            validation={}))
    assert cli("train", c, "-q").returncode == 0
    before = (tmp_path / "run" / "state.pt").read_bytes()
    (tmp_path / "d" / "raw.zarr" / "0" / "c" / "1" / "1" / "0").write_bytes(b"not zstd")
    line = one_error_line(cli("train", c, "--resume", "--steps", "400", "-q"))
    assert "raw.zarr" in line and "'0/c/1/1/0'" in line, line
    # the last checkpoint is whole (written beside itself, then renamed) and resumes
    state = torch.load(tmp_path / "run" / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] >= 10 and (state["step"] > 10 or
                                    (tmp_path / "run" / "state.pt").read_bytes() == before)


def test_an_out_reached_through_a_symlink_into_the_data_is_refused(data, tmp_path):
    (tmp_path / "link").symlink_to(data)
    c = _write(tmp_path / "c.yaml", _config(data, tmp_path / "link" / "raw.zarr" / "run"))
    assert "overlaps the input" in one_error_line(cli("train", c))
    assert not (data / "raw.zarr" / "run").exists()


def test_print_config_shows_every_default(data, tmp_path):
    c = _write(tmp_path / "c.yaml", _config(data, tmp_path / "run"))
    r = cli("train", c, "--print-config", "--set", "sampling.mode=balanced")
    assert r.returncode == 0, r.stderr
    full = yaml.safe_load(r.stdout)
    assert full["out"] == str(tmp_path / "run")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    r = cli("train", c, "--print-config", "--out", "mine", cwd=elsewhere)
    assert yaml.safe_load(r.stdout)["out"] == str(elsewhere / "mine")   # --out: from the cwd
    assert full["sampling"]["mode"] == "balanced" and full["augment"]["elastic"] == 0.0
    assert full["loss"]["kind"] == "bce+dice" and full["validation"]["every"] == 20


def test_tensorboard_events_when_installed(short_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _, run = short_run
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == list(range(10, 101, 10))
    assert [e.step for e in acc.Scalars("validation/f1")] == [50, 100]
    f1 = [e.value for e in acc.Scalars("validation/f1")]
    ev = json.loads((run / "metrics.json").read_text())["evaluations"]
    assert f1 == pytest.approx([e["f1"] for e in ev])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "float32"])
def test_cuda_training_learns_like_the_cpu(data, tmp_path, precision):
    """On a CUDA device (bfloat16 autocast by default) the short run clears the same bar."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = emarray.train(_config(data, tmp_path / "run", steps=100, validation__every=50,
                              device="cuda", precision=precision))
    assert r.best is not None and r.best["f1"] > 0.85, r.best
    assert emarray.models.load_model(tmp_path / "run" / "best.pt").module is not None


def test_a_signed_target_is_stored_as_uint8_with_ignore_as_255():
    """Found on the GPU machine (NumPy 2.5): 255 does not fit an int8 target."""
    from emarray.training.validate import _stored
    t = np.array([[-1, 0, 1], [2, -1, 0]], np.int8)
    got = _stored(t)
    assert got.dtype == np.uint8 and got.tolist() == [[255, 0, 1], [2, 255, 0]]


def test_train_refuses_nan_raw_and_a_diverging_rate_in_one_line(tmp_path):
    pytest.importorskip("torch")
    raw = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    raw[:, 5, :] = np.nan
    line = one_error_line(cli("-q", "train", train_config(tmp_path / "a", raw)))
    assert "NaN or infinite" in line and "raw.zarr" in line
    ok = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    line = one_error_line(cli("-q", "train", train_config(tmp_path / "b", ok,
                                                           optimizer={"lr": 1e308})))
    assert "optimizer.lr" in line and "1e+308" in line


def test_set_keeps_a_region_as_text(tmp_path):
    pytest.importorskip("torch")
    raw = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    cfg = train_config(tmp_path, raw)
    r = cli("train", cfg, "--set", "validation.region=8:16,:,:", "--print-config")
    assert r.returncode == 0, r.stderr
    assert "region: '8:16,:,:'" in r.stdout
    line = one_error_line(cli("train", cfg, "--set", "validation.region=40:50,:,:"))
    assert "'40:50' is empty or outside 0:16" in line and "{" not in line
