"""``--scheduler slurm``: dask workers in SLURM jobs (dask-jobqueue's ``SLURMCluster``).

The settings come from a YAML file (``--slurm-config``, or the ``run: slurm:`` section of a
pipeline recipe) and ``--slurm-*`` options, which win; every key is checked before a job is
submitted. One SLURM job runs ``processes`` dask workers with ``cores`` threads between them;
the cluster is scaled to ``jobs`` jobs, or adapts between ``adapt: {minimum: MIN, maximum: MAX}``
(or ``MIN:MAX``) jobs to the work queued (dask-jobqueue's adaptive scaling). Jobs inherit the
submitting shell's environment (``sbatch --export=ALL``), so they run the same Python;
``prologue`` lines run first in each job (``module load ...``, ``source venv/bin/activate``).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from ..errors import BackendUnavailableError, InvalidArgumentError, SchedulerUnreachableError

log = logging.getLogger("emarray")

#: every setting, with its default (None: SLURM's or dask-jobqueue's default)
DEFAULTS: dict[str, Any] = {
    "partition": None,        # sbatch -p
    "account": None,          # sbatch -A
    "walltime": "01:00:00",   # sbatch -t, per job; a job that ends loses its workers (they are
                              # replaced, and their blocks run again)
    "cores": 1,               # CPUs per job (--cpus-per-task), shared by its worker processes
    "processes": 1,           # dask workers per job
    "memory": "4GB",          # per job (--mem)
    "gres": None,             # e.g. gpu:1 (--gres)
    "jobs": None,             # scale to this many jobs (default: --workers, else 1)
    "adapt": None,            # {minimum, maximum} (or MIN:MAX) jobs, scaled to the work instead
                              # of `jobs`
    "prologue": [],           # shell lines run before the worker starts
    "directives": [],         # extra #SBATCH lines, e.g. "--qos=short"
    "interface": None,        # network interface the workers reach the scheduler on (ib0)
    "local_directory": None,  # worker scratch folder on the node ($TMPDIR)
    "log_directory": None,    # where the jobs' stdout/stderr go
    "python": None,           # the workers' Python (default: this one)
    "start_timeout": 300,     # seconds to wait for the first worker (a queued job) to start
}
_INT_KEYS = ("cores", "processes", "jobs")


def read_settings(source: Any) -> dict[str, Any]:
    """Settings from a dict or a YAML file path, checked; missing keys take :data:`DEFAULTS`.

    >>> s = read_settings({"partition": "gpu", "gres": "gpu:1", "jobs": 2})
    >>> s["partition"], s["jobs"], s["walltime"]
    ('gpu', 2, '01:00:00')
    >>> read_settings({"partiton": "gpu"})
    Traceback (most recent call last):
    ...
    emarray.errors.InvalidArgumentError: unknown slurm setting 'partiton'; the settings are ...
    """
    given = read_given(source)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise InvalidArgumentError(f"unknown slurm setting {unknown[0]!r}; the settings are "
                                   f"{', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    for key in _INT_KEYS:
        v = out[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidArgumentError(f"slurm {key} must be a whole number >= 1, got {v!r}")
    if out["processes"] > out["cores"]:
        raise InvalidArgumentError(f"slurm processes ({out['processes']}) cannot exceed cores "
                                   f"({out['cores']}): each worker needs a core")
    for key in ("prologue", "directives"):
        v = out[key]
        out[key] = [v] if isinstance(v, str) else list(v or [])
        if not all(isinstance(x, str) for x in out[key]):
            raise InvalidArgumentError(f"slurm {key} must be lines of text, got {v!r}")
    if out["adapt"] is not None:
        out["adapt"] = _adapt_range(out["adapt"])
    try:
        out["start_timeout"] = float(out["start_timeout"])
    except (TypeError, ValueError):
        out["start_timeout"] = -1.0
    if not out["start_timeout"] > 0:
        raise InvalidArgumentError(f"slurm start_timeout must be a positive number of seconds, "
                                   f"got {given.get('start_timeout')!r}")
    walltime = str(out["walltime"])
    parts = walltime.replace("-", ":").split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 4:
        raise InvalidArgumentError(f"slurm walltime must be like 01:30:00 or 1-00:00:00, got "
                                   f"{walltime!r}")
    out["walltime"] = walltime
    return out


def read_given(source: Any) -> dict[str, Any]:
    """The settings a dict or YAML file gives (no defaults; a file may nest them under
    ``slurm:``)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    if isinstance(source, (str, os.PathLike)):
        from .._yaml import read_mapping
        given = read_mapping(source, "SLURM config")
        return dict(given.get("slurm", given))
    raise InvalidArgumentError(f"slurm settings must be a mapping or a YAML file, got {source!r}")


def _adapt_range(value: Any) -> tuple[int, int]:
    """``(MIN, MAX)`` jobs from ``"MIN:MAX"``, ``"N"``, ``{minimum: MIN, maximum: MAX}`` (the
    YAML mapping, named as dask-jobqueue's ``adapt``) or an already read pair.

    >>> _adapt_range({"minimum": 1, "maximum": 4}), _adapt_range("0:3"), _adapt_range((2, 5))
    ((1, 4), (0, 3), (2, 5))
    """
    if isinstance(value, dict):
        unknown = sorted(set(map(str, value)) - {"minimum", "maximum"})
        if unknown or "maximum" not in value:
            why = f"unknown key {unknown[0]!r}" if unknown else "no maximum"
            raise InvalidArgumentError(f"slurm adapt must be {{minimum: MIN, maximum: MAX}} jobs "
                                       f"({why}), got {value!r}")
        parts = [value.get("minimum", 0), value["maximum"]]
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
            parts = [-1, -1]
        value_text = f"{parts[0]}:{parts[1]}"
    else:
        read = isinstance(value, (tuple, list)) and len(value) == 2  # already read: (MIN, MAX)
        value_text = f"{value[0]}:{value[1]}" if read else str(value)
    lo, sep, hi = value_text.partition(":")
    try:
        mn, mx = int(lo), int(hi if sep else lo)
    except ValueError:
        mn, mx = -1, -1
    if mn < 0 or mx < max(mn, 1):
        raise InvalidArgumentError(f"slurm adapt must be MIN:MAX jobs (or {{minimum: MIN, "
                                   f"maximum: MAX}}) with 0 <= MIN <= MAX, MAX >= 1, got "
                                   f"{value!r}")
    return mn, mx


def cluster_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """dask-jobqueue ``SLURMCluster`` arguments for checked ``settings``."""
    s = settings
    kwargs: dict[str, Any] = {
        "cores": s["cores"], "processes": s["processes"], "memory": s["memory"],
        "walltime": s["walltime"], "queue": s["partition"], "account": s["account"],
        "job_script_prologue": s["prologue"],
        "job_extra_directives": s["directives"] + ([f"--gres={s['gres']}"] if s["gres"] else []),
        "python": s["python"] or sys.executable, "interface": s["interface"],
        "local_directory": s["local_directory"], "log_directory": s["log_directory"],
        "job_name": "emarray-worker", "silence_logs": "error",
        "scheduler_options": {"dashboard_address": ":0"},
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def start_cluster(settings: dict[str, Any], workers: int | None) -> Any:
    """Submit the worker jobs; return the ``SLURMCluster`` (its client connects to it)."""
    from ..extras import require
    SLURMCluster = require("dask_jobqueue", "--scheduler slurm").SLURMCluster
    if shutil.which("sbatch") is None:
        raise BackendUnavailableError(
            "--scheduler slurm needs SLURM's sbatch on PATH (run emarray on the cluster's "
            "login node; scripts/slurm-local.sh starts a small SLURM on one machine for trying it "
            "out)")
    s = settings
    cluster = SLURMCluster(**cluster_kwargs(settings))
    script = cluster.job_script()
    log.info("slurm job script:\n%s", script)
    problem = _refused(script)
    if problem:
        cluster.close()
        asked = ", ".join(f"{k} {s[k]}" for k in ("partition", "account", "cores", "memory",
                                                   "walltime", "gres") if s[k])
        raise InvalidArgumentError(f"SLURM refuses the worker job ({asked}): {problem}")
    if s["adapt"] is not None:
        cluster.adapt(minimum_jobs=s["adapt"][0], maximum_jobs=s["adapt"][1])
    else:
        cluster.scale(jobs=s["jobs"] or workers or 1)
    return cluster


def _refused(script: str) -> str:
    """What ``sbatch --test-only`` says against the job script ('' when SLURM would take it)."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    try:
        r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sbatch --test-only did not answer ({exc})"
    finally:
        os.unlink(f.name)
    if r.returncode == 0:
        return ""
    lines = [ln.removeprefix("sbatch: error: ").strip() for ln in r.stderr.splitlines()]
    return "; ".join(ln for ln in lines if ln) or f"sbatch exit {r.returncode}"


def wait_for_first_worker(client: Any, cluster: Any, timeout: float) -> None:
    """Wait until a worker has joined; a job still queued at ``timeout`` is named with its
    reason (``squeue``), and the jobs are cancelled."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if client.scheduler_info()["workers"]:
            return
        time.sleep(0.25)
    jobs = ",".join(str(j.job_id) for j in getattr(cluster, "workers", {}).values()
                    if getattr(j, "job_id", None))
    reason = _queue_state(jobs) if jobs else ""
    raise SchedulerUnreachableError(
        f"no SLURM worker started within {timeout:g} s{(': ' + reason) if reason else ''} "
        "(slurm start_timeout sets the wait; check partition, account and walltime)")


def _queue_state(jobs: str) -> str:
    try:
        out = subprocess.run(["squeue", "-h", "-j", jobs, "-o", "job %i %T (%r)"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "; ".join(out.splitlines()[:3])
