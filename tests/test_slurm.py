"""--scheduler slurm against a real SLURM: the cluster scripts/slurm-local.sh installs and starts
on this machine (slurmctld, a slurmd per node, munge; `bash scripts/dev.sh test` starts it before
pytest). Several nodes, a node lost and adapt: test_slurm_nodes.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from emarray.engine import slurm

from .conftest import make_volume
from .test_faults import traced
from .helpers import cli, one_error_line
from .test_pipeline import DEMO, assert_same_outputs, demo_sets

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm_up():
    """The local SLURM answers and its node takes jobs (not skipped: CI, as root, starts it;
    `dev.sh test` run by another user skips these tests and says why). The test has SLURM to
    itself: tests in other pytest-xdist workers wait (a test may take a node down, and counts
    the jobs in the queue)."""
    import fcntl
    import tempfile
    if os.environ.get("EMARRAY_NO_SLURM"):
        pytest.skip(os.environ["EMARRAY_NO_SLURM"])
    if shutil.which("sinfo") is None:
        pytest.fail("no SLURM here: run `bash scripts/slurm-local.sh` (as root) first")
    path = os.path.join(tempfile.gettempdir(), "emarray-tests-slurm.lock")
    try:  # (read-only: the file may be another user's)
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    with os.fdopen(fd) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                               text=True).stdout
        if not any(s.startswith(("idle", "mix", "alloc")) for s in state.split()):
            pytest.fail(f"the SLURM node is not up ({state.strip()!r}): run "
                        "`bash scripts/slurm-local.sh restart`")
        yield


def test_a_pipeline_through_slurm_equals_the_threaded_run(tmp_path, slurm_up):
    sets = demo_sets((24, 80, 72), (8, 32, 32))
    threads = tmp_path / "threads"
    assert cli("run", DEMO, "--workdir", threads, *sets, "-q").returncode == 0
    logs, trace = tmp_path / "logs", tmp_path / "trace"
    job = subprocess.Popen([sys.executable, "-m", "emarray", "run", str(DEMO), "--workdir",
                            str(tmp_path / "slurm"), *sets, "-q", "--scheduler", "slurm",
                            "--slurm-jobs", "2", "--slurm-memory", "2GB", "--slurm-walltime",
                            "00:10:00", "--slurm-log-directory", str(logs)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "EMARRAY_TRACE": str(trace)})
    out, err = job.communicate(timeout=280)
    assert job.returncode == 0, err
    assert "8 steps run" in out
    assert_same_outputs(tmp_path / "slurm", threads)
    # the blocks ran in the SLURM jobs' workers, not in the driver
    pids = {int(ln.split("\t")[3]) for ln in trace.read_text().splitlines()}
    assert pids and job.pid not in pids and len(traced(trace)) > 100
    assert len(list(logs.glob("emarray-worker-*.out"))) == 2
    left = subprocess.run(["squeue", "-h", "-n", "emarray-worker", "-o", "%i"],
                          capture_output=True, text=True).stdout.split()
    assert not left  # the worker jobs ended with the pipeline


def test_a_job_slurm_refuses_is_named_before_any_work(tmp_path, slurm_up):
    line = one_error_line(cli("run", DEMO, "--workdir", tmp_path / "w", "--scheduler", "slurm",
                              "--slurm-partition", "nosuchpartition"))
    assert "SLURM refuses the worker job (partition nosuchpartition" in line
    assert "invalid partition" in line.lower()
    assert not (tmp_path / "w").exists()


def test_adaptive_workers_that_never_start_stop_the_job_with_one_line(tmp_path, slurm_up):
    # adapt from 0 jobs submits one only once blocks are queued; SLURM holds it (begin in an hour)
    a = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 8, 8))
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text('slurm:\n  adapt: {minimum: 0, maximum: 2}\n  memory: 1GB\n'
                   '  start_timeout: 5\n  directives: ["--begin=now+3600"]\n')
    line = one_error_line(cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr",
                              "--value", "0.5", "--scheduler", "slurm", "--slurm-config", cfg))
    assert "no dask worker joined" in line and "within 5 s (8 blocks waiting)" in line
    assert "squeue" in line
    left = subprocess.run(["squeue", "-h", "-n", "emarray-worker", "-o", "%i"],
                          capture_output=True, text=True).stdout.split()
    assert not left  # the held job was cancelled with the cluster


UNIVERSITY = """\
# a typical university cluster: a GPU partition, an account, a 4-hour limit
slurm:
  partition: gpu
  account: lab-smith
  walltime: "04:00:00"
  cores: 8
  processes: 2
  memory: 64GB
  gres: gpu:1
  jobs: 4
  prologue:
    - module load cuda/12.4
    - source $HOME/venvs/emarray/bin/activate
  directives: ["--qos=normal"]
"""


def test_the_settings_reach_the_job_script(tmp_path):
    from dask_jobqueue import SLURMCluster
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(UNIVERSITY)
    settings = slurm.read_settings(str(cfg))
    with SLURMCluster(**slurm.cluster_kwargs(settings)) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab-smith", "#SBATCH -t 04:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=60G", "#SBATCH --gres=gpu:1",
                 "#SBATCH --qos=normal", "module load cuda/12.4",
                 "source $HOME/venvs/emarray/bin/activate", "--nworkers 2", "--nthreads 4"):
        assert line in script, (line, script)
    assert settings["jobs"] == 4


@pytest.mark.parametrize("given,expect", [
    ({"partiton": "gpu"}, "unknown slurm setting 'partiton'"),
    ({"cores": 2, "processes": 4}, "processes (4) cannot exceed cores (2)"),
    ({"walltime": "4h"}, "walltime must be like 01:30:00"),
    ({"adapt": "3"}, None),
    ({"adapt": "x:2"}, "adapt must be MIN:MAX"),
    ({"jobs": 0}, "jobs must be a whole number >= 1"),
    ({"start_timeout": 0}, "start_timeout must be a positive number"),
    ({"prologue": [1]}, "prologue must be lines of text"),
])
def test_bad_settings_are_named(given, expect):
    from emarray.errors import InvalidArgumentError
    if expect is None:
        assert slurm.read_settings(given)["adapt"] == (3, 3)
        return
    with pytest.raises(InvalidArgumentError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        slurm.read_settings(given)


@pytest.mark.parametrize("given,expect", [
    ({"minimum": 1, "maximum": 4}, (1, 4)),
    ({"maximum": 2}, (0, 2)),
    ({"min": 1, "maximum": 2}, "(unknown key 'min')"),
    ({"minimum": 1}, "(no maximum)"),
    ({"minimum": 3, "maximum": 2}, "with 0 <= MIN <= MAX"),
    ({"minimum": "1", "maximum": 2}, "with 0 <= MIN <= MAX"),
])
def test_adapt_as_dask_jobqueue_names_it(tmp_path, given, expect):
    from emarray.errors import InvalidArgumentError
    cfg = tmp_path / "slurm.yaml"  # as --slurm-config reads it
    cfg.write_text(f"slurm:\n  adapt: {given}\n")
    if isinstance(expect, tuple):
        assert slurm.read_settings(str(cfg))["adapt"] == expect
        return
    with pytest.raises(InvalidArgumentError) as err:
        slurm.read_settings(str(cfg))
    assert expect in str(err.value) and "slurm adapt must be" in str(err.value)


def test_settings_read_again_stay_the_same():
    # RunOptions reads them in __post_init__, and again on every RunOptions.make
    from emarray import RunOptions
    opts = RunOptions(scheduler="slurm", slurm={"adapt": "1:4", "prologue": "module load x"})
    again = RunOptions.make(opts, workers=2)
    assert again.slurm == opts.slurm and again.slurm["adapt"] == (1, 4)
    assert again.slurm["prologue"] == ["module load x"]
