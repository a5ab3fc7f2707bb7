"""Pipelines: recipes checked whole before any work, run equal to their operators one by one
and to NumPy/cc3d references, finished steps skipped, changed ones run again."""
from __future__ import annotations

import json
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import pytest
import yaml

import emarray
from emarray.pipeline import load_recipe

from .conftest import ROOT, make_volume, tree_digest
from .helpers import cli, one_error_line, prob_map

DEMO = ROOT / "pipelines" / "demo.yaml"
RECIPES = sorted(p for p in (ROOT / "pipelines").glob("*.yaml") if not p.name.startswith("train-"))


def demo_sets(shape, chunks):
    return ["--set", f"shape={','.join(map(str, shape))}", "--set",
            f"chunks={','.join(map(str, chunks))}", "--set", "min_size=20"]


def volumes_in(workdir: Path) -> dict[str, list[np.ndarray]]:
    """Every volume a run wrote (all levels), by path relative to the workdir."""
    out = {}
    for z in sorted(workdir.rglob("*.zarr")):
        if any(p.suffix == ".zarr" for p in z.relative_to(workdir).parents if p.name):
            continue  # a level or image inside another volume: read through its parent
        v = emarray.open_volume(z)
        out[str(z.relative_to(workdir))] = [emarray.open_volume(z, level=k).read()
                                            for k in range(len(v.levels))]
    return out


def tables_in(workdir: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(workdir)): pd.read_csv(p) for p in sorted(workdir.rglob("*.csv"))}


def assert_same_outputs(a: Path, b: Path) -> None:
    va, vb = volumes_in(a), volumes_in(b)
    assert sorted(va) == sorted(vb) and va
    for k in va:
        assert len(va[k]) == len(vb[k]), k
        for x, y in zip(va[k], vb[k]):
            np.testing.assert_array_equal(x, y, err_msg=k)
    ta, tb = tables_in(a), tables_in(b)
    assert sorted(ta) == sorted(tb) and ta
    for k in ta:
        pd.testing.assert_frame_equal(ta[k], tb[k], obj=k)


def demo_by_operators(ref: Path, shape, chunks, min_size: int = 200) -> None:
    """The demo recipe's chain, operator by operator, through the Python API."""
    ref.mkdir(parents=True)
    vols = emarray.datasets.synthetic(ref / "synthetic", shape, chunks=chunks, seed=0)
    mask = emarray.threshold(vols["prob"], ref / "mask.zarr", 0.5)
    cells = emarray.label(mask, ref / "cells.zarr", connectivity=26, min_size=min_size)
    emarray.objects(cells, raw=vols["raw"], out=ref / "objects.csv")
    truth = emarray.label(vols["truth"], ref / "truth_cells.zarr", connectivity=26)
    emarray.match(cells, truth, out=ref / "match")
    emarray.sweep(vols["prob"], vols["truth"], thresholds=100, out=ref / "sweep")
    emarray.pyramid(cells, levels=2)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The same objects, whatever their ids."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


@pytest.mark.parametrize("shape,chunks", [((24, 80, 72), (8, 32, 32)),
                                          ((19, 45, 61), (7, 16, 32))])
def test_demo_recipe_equals_its_operators_and_numpy(tmp_path, shape, chunks):
    work = tmp_path / "run"
    r = cli("run", DEMO, "--workdir", work, *demo_sets(shape, chunks), "-q")
    assert r.returncode == 0, r.stderr
    assert "pipeline done: 8 steps run" in r.stdout
    ref = tmp_path / "ref"
    demo_by_operators(ref, shape, chunks, min_size=20)
    assert_same_outputs(work, ref)
    # and against NumPy and cc3d on the whole arrays
    prob = emarray.open_volume(work / "synthetic" / "prob.zarr").read()
    got_mask = emarray.open_volume(work / "mask.zarr").read()
    np.testing.assert_array_equal(got_mask, (prob > 0.5).astype(np.uint8))
    want = cc3d.dust(cc3d.connected_components(prob > 0.5, connectivity=26), 20,
                     connectivity=26)
    got = emarray.open_volume(work / "cells.zarr").read()
    assert got.max() > 1 and same_partition(got, want)
    table = pd.read_csv(work / "objects.csv")
    counts = np.bincount(got.ravel())[1:]
    np.testing.assert_array_equal(table.sort_values("id")["voxels"], counts[counts > 0])


def test_rerun_skips_finished_steps_and_a_change_reruns_what_follows(tmp_path):
    work = tmp_path / "run"
    sets = demo_sets((16, 48, 48), (8, 16, 16))
    assert cli("run", DEMO, "--workdir", work, *sets, "-q").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in work.rglob("zarr.json")}
    trace = tmp_path / "trace"
    r = cli("run", DEMO, "--workdir", work, *sets, "-q", env={"EMARRAY_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    assert "0 steps run, 8 finished before" in r.stdout
    assert not trace.exists()  # not one block computed again
    assert before == {p: p.stat().st_mtime_ns for p in work.rglob("zarr.json")}
    # a new threshold: the mask and everything after it, not the data, truth or sweep
    r = cli("run", DEMO, "--workdir", work, *sets, "--set", "value=0.6", "-q",
            env={"EMARRAY_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    ran = [ln.split()[1] for ln in r.stdout.splitlines() if ln.endswith("changed)")]
    assert ran == ["mask", "cells", "objects", "match", "pyramid"]
    jobs = {ln.split("\t")[0] for ln in trace.read_text().splitlines()}
    assert not any("synthetic" in j or "truth_cells" in j or "sweep" in j for j in jobs), jobs
    prob = emarray.open_volume(work / "synthetic" / "prob.zarr").read()
    np.testing.assert_array_equal(emarray.open_volume(work / "mask.zarr").read(), prob > 0.6)


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    work = tmp_path / "run"
    r = cli("run", DEMO, "--workdir", work, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert not work.exists()
    lines = r.stdout.splitlines()
    assert "8 steps" in lines[0]
    for name in ("synthetic", "mask", "cells", "objects", "truth_cells", "match", "sweep",
                 "pyramid"):
        assert any(f". {name} (" in ln for ln in lines), name
    assert "src=synthetic.prob" in r.stdout and "run: not run before" in r.stdout


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe, shared_data):
    rec = load_recipe(recipe, ("model=" + str(recipe),) if "mitochondria" in recipe.name else ())
    assert rec.steps and rec.about
    order = [s.name for s in rec.steps]
    for st in rec.steps:
        for up in st.after:
            assert order.index(up) < order.index(st.name)


def bad(tmp_path: Path, recipe: dict, *args: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = cli("run", path, "--workdir", tmp_path / "work", *args)
    line = one_error_line(r)
    assert not (tmp_path / "work").exists()  # refused before any work
    return line


GOOD = {"steps": {"data": {"op": "synthetic", "shape": [8, 16, 16], "chunks": 8},
                  "mask": {"op": "threshold", "src": "data.prob", "value": 0.5}}}


@pytest.mark.parametrize("change,expect", [
    ({"stpes": {}}, "unknown recipe key 'stpes'"),
    ({"steps": {"m": {"op": "treshold", "src": "x"}}}, "unknown op 'treshold'"),
    ({"steps": {"m": {"src": "x"}}}, "step 'm' needs an op"),
    ({"steps": {"d": GOOD["steps"]["data"],
                "m": {"op": "threshold", "src": "d.prob", "vlaue": 1}}}, "unknown key 'vlaue'"),
    ({"steps": {"d": GOOD["steps"]["data"], "m": {"op": "threshold", "src": "d.prob"}}},
     "step 'm' (threshold) needs 'value'"),
    ({"steps": {"d": GOOD["steps"]["data"],
                "m": {"op": "threshold", "src": "dd.prob", "value": 1}}},
     "missing input src 'dd.prob'"),
    ({"steps": {"d": GOOD["steps"]["data"], "m": {"op": "threshold", "src": "d", "value": 1}}},
     "step 'd' has several outputs; name one: d.raw, d.truth, d.prob"),
    ({"steps": {"d": GOOD["steps"]["data"],
                "m": {"op": "threshold", "src": "d.mask", "value": 1}}}, "no output 'mask'"),
    ({"steps": {"a": {"op": "threshold", "src": "b", "value": 1},
                "b": {"op": "smooth", "src": "c", "sigma": 1},
                "c": {"op": "label", "src": "a"}}}, "cycle: a -> b -> c -> a"),
    ({"steps": {"d": GOOD["steps"]["data"], "o": {"op": "objects", "labels": "d.truth"},
                "m": {"op": "threshold", "src": "o", "value": 1}}}, "writes a table, not a volume"),
    ({"steps": {"d": GOOD["steps"]["data"],
                "m": {"op": "threshold", "src": "d.prob", "value": "${t}"}}}, "unknown var ${t}"),
    ({"steps": {"i": {"op": "ingest", "src": "nowhere.tif"}}}, "missing input src 'nowhere.tif'"),
    ({"steps": {"d": GOOD["steps"]["data"], "p": {"op": "pyramid", "src": "d.raw", "out": "x"}}},
     "adds to its src and has no out"),
    ({"run": {"schedular": "threads"}, **GOOD}, "unknown run key 'schedular'"),
    ({"run": {"scheduler": "fast"}, **GOOD}, "'fast'"),
])
def test_bad_recipes_are_refused_naming_the_problem(tmp_path, change, expect):
    recipe = {**GOOD, **change}
    assert expect in bad(tmp_path, recipe)


@pytest.mark.parametrize("args,expect", [
    (("--set", "nokey=1"), "'nokey' is not a recipe key, a step or a var"),
    (("--set", "mask"), "--set takes KEY=VALUE"),
    (("--set", "mask.op=lt"), "unknown op 'lt'"),
    (("--set", "mask.compare=lt", "--resume", "--overwrite"), "either --resume or --overwrite"),
    (("--slurm-adapt", "5:2", "--scheduler", "slurm"), "slurm adapt must be MIN:MAX"),
    (("--slurm-cores", "0", "--scheduler", "slurm"), "slurm cores must be a whole number"),
])
def test_bad_options_are_refused(tmp_path, args, expect):
    assert expect in bad(tmp_path, GOOD, *args)


def test_an_output_the_pipeline_did_not_make_is_never_touched(tmp_path):
    work = tmp_path / "work"
    theirs = make_volume(work / "mask.zarr", np.full((4, 4, 4), 7, np.uint8), 2)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    for extra in ((), ("--overwrite",), ("--resume",)):
        r = cli("run", path, "--workdir", work, *extra)
        assert "was not made by this pipeline" in one_error_line(r)
    assert not (work / "data").exists()  # refused before the first step ran
    np.testing.assert_array_equal(emarray.open_volume(theirs.url).read(), 7)


def test_an_interrupted_step_needs_resume(tmp_path):
    from emarray.pipeline.state import State
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    work = tmp_path / "work"
    assert cli("run", path, "--workdir", work, "-q").returncode == 0
    state = State(str(work))  # as a kill during the mask step leaves it
    e = state.entry("mask")
    state.mark("mask", "running", e["fingerprint"], e["out"])
    assert "step 'mask' was interrupted in an earlier run: --resume finishes it" in one_error_line(
        cli("run", path, "--workdir", work))
    r = cli("run", path, "--workdir", work, "--resume", "-q")
    assert r.returncode == 0 and "1 step run, 1 finished before" in r.stdout, r.stderr


@pytest.mark.parametrize("key,value,expect", [
    ("value", "high", "value must be a number, got 'high'"),
    ("compare", "gte", "compare must be one of gt, ge, lt, le, got 'gte'"),
    ("chunks", "8,8", "chunks must have 3 values"),
])
def test_a_bad_value_in_a_late_step_is_refused_before_the_first_runs(tmp_path, key, value, expect):
    recipe = {"steps": {"d": GOOD["steps"]["data"],
                        "m": {"op": "threshold", "src": "d.prob", "value": 0.5, key: value}}}
    line = bad(tmp_path, recipe)
    assert line.startswith("error: step 'm' (threshold): ") and expect in line, line


def test_a_failing_step_is_named(tmp_path):
    path = tmp_path / "r.yaml"
    recipe = {"steps": {"d": GOOD["steps"]["data"],
                        "p": {"op": "pyramid", "src": "d.raw", "levels": 2},
                        "m": {"op": "threshold", "src": "d.prob", "value": 0.5}}}
    path.write_text(yaml.safe_dump(recipe))
    assert cli("run", path, "--workdir", tmp_path / "work").returncode == 0
    path.write_text(yaml.safe_dump({"steps": {**recipe["steps"], "p2": recipe["steps"]["p"]}}))
    r = cli("run", path, "--workdir", tmp_path / "work")  # levels exist: pyramid refuses
    assert r.returncode == 2 and "error: step 'p2' (pyramid): " in r.stderr, r.stderr


def test_cell_boundary_recipe_on_the_flyem_crop(tmp_path, shared_data):
    import h5py
    import scipy.ndimage as ndi
    work = tmp_path / "cb"
    r = cli("run", ROOT / "pipelines" / "cell-boundary.yaml", "--workdir", work, "-q")
    assert r.returncode == 0, r.stderr
    with h5py.File(shared_data / "gala-flyem" / "train-p1.lzf.h5") as f:
        p1 = f["stack"][:]
    smoothed = ndi.gaussian_filter(p1, 1.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(emarray.open_volume(work / "smoothed.zarr").read(), smoothed,
                               rtol=1e-5, atol=1e-6)
    interiors = emarray.open_volume(work / "interiors.zarr").read()
    np.testing.assert_array_equal(interiors, emarray.open_volume(work / "smoothed.zarr").read()
                                  < np.float32(0.4))
    want = cc3d.dust(cc3d.connected_components(interiors, connectivity=6), 50, connectivity=6)
    got = emarray.open_volume(work / "cells.zarr").read()
    assert same_partition(got, want) and len(np.unique(got)) > 20
    assert "87 truth" in r.stdout and len(emarray.open_volume(work / "cells.zarr").levels) == 2


def test_mitochondria_recipe_on_a_small_stack(tmp_path):
    import tifffile
    from PIL import Image
    rng = np.random.default_rng(3)
    data = tmp_path / "stack"
    (data / "raw").mkdir(parents=True)
    (data / "mitochondria").mkdir()
    truth = np.zeros((4, 48, 40), np.uint8)
    truth[1:3, 10:20, 8:16] = 255
    truth[:, 30:40, 25:35] = 255
    for z in range(4):
        tifffile.imwrite(data / "raw" / f"{z:02d}.tif", rng.integers(0, 256, (48, 40), np.uint8))
        Image.fromarray(truth[z]).save(data / "mitochondria" / f"{z:02d}.png")
    model = emarray.models.new_model(tmp_path / "m.pt", depth=2, filters=4, patch="4,32,32")
    work = tmp_path / "mito"
    r = cli("run", ROOT / "pipelines" / "mitochondria.yaml", "--workdir", work, "-q",
            "--set", f"data={data}", "--set", f"model={model}", "--set", "min_size=1",
            "--set", "raw.chunks=2,16,16", "--set", "truth_mask.chunks=2,16,16")
    assert r.returncode == 0, r.stderr
    assert "10 steps run" in r.stdout and "2 truth" in r.stdout
    ref = tmp_path / "ref"
    ref.mkdir()
    raw = emarray.ingest(data / "raw", ref / "raw.zarr", voxel_size=(50, 4.6, 4.6), chunks=(2, 16, 16))
    prob = emarray.predict(raw, model, ref / "prob.zarr")
    np.testing.assert_array_equal(emarray.open_volume(work / "prob.zarr").read(), prob.read())
    np.testing.assert_array_equal(emarray.open_volume(work / "mask.zarr").read(),
                                  prob.read() > 0.5)
    t = emarray.open_volume(work / "truth.zarr").read()
    assert same_partition(t, cc3d.connected_components(truth > 127, connectivity=26))


def test_a_workdir_inside_an_input_through_a_symlink_is_refused(tmp_path):
    data = tmp_path / "data"
    src = make_volume(data / "p.zarr", np.random.default_rng(0).random((8, 8, 8), np.float32), 4)
    before = sorted(p.name for p in Path(src.url).rglob("*"))
    (tmp_path / "link").symlink_to(data / "p.zarr")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"steps": {"m": {"op": "threshold", "src": src.url,
                                                    "value": 0.5}}}))
    line = one_error_line(cli("run", path, "--workdir", tmp_path / "link"))
    assert "holds (or is inside) the input src" in line
    assert sorted(p.name for p in Path(src.url).rglob("*")) == before


def test_advice_inside_a_recipe_names_the_steps_keys_not_options(tmp_path):
    """A message that advises a value speaks as the user gave the job: a recipe's keys, the
    command line's options, Python's keyword arguments."""
    import warnings

    import tifffile
    from click.testing import CliRunner

    from emarray.cli import cli as cli_
    from emarray.errors import EmarrayWarning
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    labels = make_volume(tmp_path / "l.zarr", np.ones((4, 8, 8), np.uint32), 4)
    labels.attrs.update({"emarray": {**labels.attrs.get("emarray", {}), "labels": True}})
    recipe = {"steps": {"raw": {"op": "ingest", "src": str(tmp_path / "s.tif")},
                        "up": {"op": "upsample", "src": str(tmp_path / "l.zarr"), "like": "raw",
                               "mode": "linear"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = CliRunner().invoke(cli_, ["-q", "run", str(path), "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 2
    assert "(give voxel_size: z,y,x in step 'raw')" in r.stderr, r.stderr
    assert "use mode: nearest in step 'up'" in r.stderr, r.stderr
    assert "--voxel-size" not in r.stderr and "--mode" not in r.stderr
    # the same operators on the command line name their options
    r = CliRunner().invoke(cli_, ["-q", "ingest", str(tmp_path / "s.tif"), str(tmp_path / "c.zarr")])
    assert r.exit_code == 0 and "(give --voxel-size z,y,x)" in r.stderr, r.stderr
    r = CliRunner().invoke(cli_, ["-q", "upsample", str(tmp_path / "l.zarr"), str(tmp_path / "u.zarr"),
                                  "--like", str(tmp_path / "c.zarr"), "--mode", "linear"])
    assert r.exit_code == 2 and "use --mode nearest" in r.stderr, r.stderr
    # and from Python, its keyword arguments
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmarrayWarning)
        emarray.ingest(tmp_path / "s.tif", tmp_path / "py.zarr", progress=False)
    assert any("(give voxel_size=z,y,x)" in str(w.message) for w in caught)


def test_neurons_recipe_on_the_flyem_crop(tmp_path, shared_data):
    """The recipe scores every threshold (each equal to scikit-image's VOI on the cut it
    wrote), cuts at the crop's best and matches it; its report draws the labels over the raw
    EM and names the best threshold; it speaks of its own keys, and refuses a missing crop in
    one line naming the file."""
    import h5py
    from skimage.metrics import adapted_rand_error, variation_of_information

    from emarray.report import find_raw, workdir_steps
    recipe = ROOT / "pipelines" / "neurons.yaml"
    text = recipe.read_text()
    assert "../shared/data/gala-flyem" in text.split("about:")[0]  # says what it needs, on top
    work = tmp_path / "n"
    r = cli("run", recipe, "--workdir", work)
    assert r.returncode == 0, r.stderr
    assert "--" not in r.stderr.replace("--set", "")  # no command-line advice from a recipe
    with h5py.File(shared_data / "gala-flyem" / "train-gt.lzf.h5") as f:
        truth = f["stack"][:]
    with h5py.File(shared_data / "gala-flyem" / "train-image.h5") as f:
        np.testing.assert_array_equal(emarray.open_volume(work / "raw.zarr").read(), f["stack"][:])
    evaluated = json.loads((work / "evaluate" / "evaluate.json").read_text())
    rows = {round(r["threshold"], 2): r for r in evaluated["thresholds"]}
    s = emarray.open_volume(work / "segments.zarr")
    main = s.attrs["emarray"]["agglomeration"]["threshold"]
    assert main == evaluated["best"]["threshold"]  # the recipe cuts at the crop's best
    voi = {}
    for t, seg in [(main, s.read()), (0.7, emarray.open_volume(work / "segments.zarr/t0.7").read()),
                   (0.5, emarray.open_volume(work / "segments.zarr/t0.5").read())]:
        split, merge = variation_of_information(truth, seg)
        assert abs(rows[t]["voi_split"] - split) < 1e-9 and abs(rows[t]["voi_merge"] - merge) < 1e-9
        assert abs(rows[t]["adapted_rand_error"] - adapted_rand_error(truth, seg)[0]) < 1e-9
        voi[t] = split + merge
    m = json.loads((work / "match" / "match.json").read_text())
    assert abs(m["voi"] - voi[main]) < 1e-9
    assert voi[main] < voi[0.7] < voi[0.5] and voi[main] < 0.87  # 0.855 (docs/segment.md)
    steps, _ = workdir_steps(work)
    raw = find_raw(steps)
    assert raw is not None and Path(raw.url).name == "raw.zarr"
    page = (work / "report.html").read_text()
    assert f"best VOI {evaluated['best']['voi']:.4f} at threshold {main:g}" in page
    line = one_error_line(cli("run", recipe, "--workdir", tmp_path / "m", "--set",
                              f"data={tmp_path / 'nowhere'}"))
    assert f"{tmp_path / 'nowhere' / 'train-image.h5'}" in line and not (tmp_path / "m").exists()


def test_names_that_collide_are_refused_before_any_work(tmp_path):
    """Two steps of one name (YAML keeps the last, silently), or two outputs that are one
    place under two spellings: refused in one line naming both."""
    src = make_volume(tmp_path / "p.zarr", np.random.default_rng(0).random((8, 8, 8),
                                                                            np.float32), 4)
    path = tmp_path / "r.yaml"
    path.write_text(f"steps:\n  m:\n    op: threshold\n    src: {src.url}\n    value: 0.5\n"
                    f"  m:\n    op: threshold\n    src: {src.url}\n    value: 0.7\n")
    line = one_error_line(cli("run", path, "--workdir", tmp_path / "w"))
    assert "the key 'm' is given twice (lines 2 and 6)" in line
    (tmp_path / "w").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "w")
    path.write_text(yaml.safe_dump({"steps": {
        "a": {"op": "threshold", "src": src.url, "value": 0.5, "out": str(tmp_path / "w/m.zarr")},
        "b": {"op": "threshold", "src": src.url, "value": 0.7,
              "out": str(tmp_path / "link/m.zarr")}}}))
    line = one_error_line(cli("run", path, "--workdir", tmp_path / "w"))
    assert "steps 'a' and 'b' both write" in line
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == []


def test_a_recipe_runs_a_step_again_when_its_input_chunks_change_in_place(tmp_path):
    a, _ = prob_map(tmp_path / "p.zarr")
    recipe = {"steps": {"mask": {"op": "threshold", "src": str(tmp_path / "p.zarr"),
                                 "value": 0.5}}}
    work = tmp_path / "work"
    assert emarray.run_pipeline(recipe, workdir=work).ran == ["mask"]
    assert emarray.run_pipeline(recipe, workdir=work).ran == []
    emarray.open_volume(tmp_path / "p.zarr").write((slice(0, 4), slice(0, 8), slice(0, 8)),
                                                   np.ones((4, 8, 8), np.float32))
    assert emarray.run_pipeline(recipe, workdir=work).ran == ["mask"]
    b = a.copy()
    b[:4, :8, :8] = 1
    np.testing.assert_array_equal(emarray.open_volume(work / "mask.zarr").read(), b > 0.5)


def test_a_damaged_pipeline_state_is_named_and_nothing_is_orphaned(tmp_path):
    prob_map(tmp_path / "p.zarr")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  mask: {{op: threshold, src: {tmp_path / 'p.zarr'}, value: 0.5}}\n")
    work = tmp_path / "work"
    assert cli("-q", "run", recipe, "--workdir", work).returncode == 0
    (work / ".emarray-pipeline.json").write_text("{not json")
    before = tree_digest(work / "mask.zarr")
    for extra in ((), ("--overwrite",)):
        line = one_error_line(cli("run", recipe, "--workdir", work, *extra))
        assert ".emarray-pipeline.json" in line and "damaged" in line
    assert tree_digest(work / "mask.zarr") == before


def test_every_step_output_is_checked_before_the_first_step_runs(tmp_path):
    prob_map(tmp_path / "p.zarr")
    work = tmp_path / "work"
    recipe = {"steps": {"mask": {"op": "threshold", "src": str(tmp_path / "p.zarr"), "value": 0.5},
                        "cells": {"op": "label", "src": "mask", "out": str(work)}}}
    with pytest.raises(emarray.errors.InvalidArgumentError, match="is .or holds. the workdir"):
        emarray.run_pipeline(recipe, workdir=work)
    assert not work.exists()
    recipe["steps"]["cells"]["out"] = str(work / "mask.zarr" / "inner.zarr")
    with pytest.raises(emarray.errors.InvalidArgumentError, match="inside the output of step"):
        emarray.run_pipeline(recipe, workdir=work)


def test_a_pyramid_step_on_a_path_input_does_not_rerun_its_readers(tmp_path):
    a = (np.random.default_rng(0).random((8, 32, 32)) * 255).astype(np.uint8)
    make_volume(tmp_path / "raw.zarr", a, (4, 16, 16))
    recipe = {"steps": {"levels": {"op": "pyramid", "src": str(tmp_path / "raw.zarr"), "levels": 1},
                        "mask": {"op": "threshold", "src": str(tmp_path / "raw.zarr"),
                                 "value": 100}}}
    work = tmp_path / "work"
    assert sorted(emarray.run_pipeline(recipe, workdir=work).ran) == ["levels", "mask"]
    assert emarray.run_pipeline(recipe, workdir=work).ran == []
