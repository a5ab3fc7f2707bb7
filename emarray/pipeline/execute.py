"""Run a recipe: plan every step (skip, run, resume, run again), then run them in order.

Every decision is made before any work: a step's output that exists but was not made by this
pipeline is refused, and so is an interrupted step without ``resume``. The steps share one
scheduler connection (one SLURM cluster for the whole pipeline, say); each step runs through
its operator's own engine path, with the operator's resumable progress and safe outputs.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import redact
from ..engine import RunOptions
from ..engine.output import OutputLock
from ..errors import EmarrayError, InvalidArgumentError, OutputExistsError
from ..speaking import speaking
from ..storage import is_remote
from .ops import STEP_RUN_KEYS
from .recipe import Recipe, Step, load_recipe
from .state import State, fingerprint, stored

@dataclass
class Planned:
    """What this run does with a step: ``action`` is skip, run, resume or rerun (replacing the
    output an earlier run made), ``why`` says why."""

    step: Step
    action: str
    why: str
    fingerprint: str
    summary: str = ""
    stored: str = ""


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did: the plan (with each step's summary) and the results."""

    recipe: Recipe
    plan: list[Planned]
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: what ``estimate`` found (:class:`~emarray.engine.estimate.Estimate`), else None
    estimate: Any = None

    @property
    def ran(self) -> list[str]:
        return [p.step.name for p in self.plan if p.action != "skip"]


def _exists(path: str) -> bool:
    from ..engine.checkpoint import as_folder
    from ..engine.files import MANIFEST
    if path and is_remote(path):  # a remote output exists once its group (a volume), its
        # manifest (a folder), the file itself (a table) or its volumes (synthetic) are there
        where = as_folder(path)
        return (where / "zarr.json").is_file() or (where / MANIFEST).is_file() or \
            where.is_file() or any((q / "zarr.json").is_file() for q in where.iterdir()
                                   if q.name.endswith(".zarr"))
    return bool(path) and os.path.lexists(path)


def plan(recipe: Recipe, state: State, *, resume: bool = False,
         overwrite: bool = False) -> list[Planned]:
    """Decide, for every step, what this run does with it (errors before any work)."""
    fps: dict[str, str] = {}
    out: list[Planned] = []
    rerun: set[str] = set()
    for st in recipe.steps:
        fp = fingerprint(st, fps)
        fps[st.name] = fp
        chunks = stored(st)
        e = state.entry(st.name)
        ours = e is not None and e.get("out") == st.out
        exists = _exists(st.out)
        inplace = st.op.output_kind == "inplace"
        upstream_rerun = any(u in rerun for u in st.after)
        if exists and not ours and not inplace:
            raise OutputExistsError(
                f"step {st.name!r}: its output {st.out} exists and was not made by this "
                f"pipeline; move it away, or give the step another out")
        if e is None or not ours:
            action, why = "run", "not run before"
        elif overwrite:
            action, why = ("rerun", "--overwrite") if exists else ("run", "--overwrite")
        elif e["fingerprint"] != fp:
            action, why = "rerun", "its recipe or inputs changed"
        elif e["status"] == "done" and e.get("stored", chunks) != chunks:
            action, why = "rerun", "chunks of its input were rewritten since it ran"
        elif e["status"] == "done" and (exists or inplace) and not upstream_rerun:
            action, why = "skip", "finished in an earlier run"
        elif e["status"] == "done":
            action, why = "run", ("its output is gone" if not exists else "its input is run again")
        elif resume:  # its progress may be kept beside a table not yet written: always resume
            action, why = "resume", "interrupted: finishing it"
        else:
            raise InvalidArgumentError(
                f"step {st.name!r} was interrupted in an earlier run: --resume finishes it "
                f"(or --overwrite runs every step again)")
        if action == "run" and exists and ours:
            action = "rerun"
        if inplace and action == "run" and e is not None:
            action = "rerun"  # pyramid levels made before are replaced
        if action in ("run", "rerun"):
            rerun.add(st.name)
        out.append(Planned(st, action, why, fp, e.get("summary", "") if e else "", chunks))
    return out


def describe_plan(recipe: Recipe, planned: list[Planned]) -> list[str]:
    """The plan as lines (``emarray run --dry-run``)."""
    lines = [f"pipeline {recipe.path or '(dict)'}: {len(planned)} steps into {recipe.workdir}"]
    if recipe.about:
        lines.append(f"  {recipe.about.strip()}")
    for k, p in enumerate(planned, 1):
        st = p.step
        ins = ", ".join(f"{key}={_input_text(st, key)}" for key in st.inputs)
        params = ", ".join(f"{key}={v}" for key, v in st.params.items())
        target = f"-> adds to {st.out}" if st.op.output_kind == "inplace" else f"-> {st.out}"
        lines.append(f"{k:>3}. {st.name} ({st.op_name}) {ins} {target}")
        if params:
            lines.append(f"       {params}")
        lines.append(f"       {p.action}: {p.why}")
    return lines


def _input_text(st: Step, key: str) -> str:
    kind, *ref = st.inputs[key]
    if kind == "step":
        return f"{ref[0]}.{ref[1]}" if ref[1] else ref[0]
    return ref[0]


def _merged_options(recipe: Recipe, options: RunOptions | None, run: dict[str, Any]) -> RunOptions:
    """The recipe's ``run`` section, then ``options``/``run`` (the command line) over it."""
    from ..engine.slurm import read_given
    base = dict(recipe.run)
    given = {k: v for k, v in run.items() if v is not None}
    slurm = dict(base.pop("slurm", None) or {})
    slurm.update({k: v for k, v in read_given(given.pop("slurm", None)).items() if v is not None})
    return RunOptions.make(options, **{**base, **given}, slurm=slurm or None)


def run_pipeline(recipe: str | os.PathLike | dict[str, Any], sets: tuple[str, ...] = (), *,
                 workdir: str | os.PathLike | None = None, dry_run: bool = False,
                 resume: bool = False, overwrite: bool = False,
                 options: RunOptions | None = None, echo: Callable[[str], None] | None = None,
                 **run: Any) -> PipelineResult:
    """Run the pipeline ``recipe`` (a YAML file or a dict); return what each step did.

    Steps run in an order that puts each after its inputs. A step that finished in an
    earlier run with the same recipe and inputs is skipped; one whose recipe or inputs changed
    runs again (and so does every step after it). ``resume`` finishes a step that was
    interrupted (its finished blocks are kept); ``overwrite`` runs every step again. ``run``
    takes :class:`~emarray.engine.RunOptions` fields (``scheduler``, ``workers``, ``retries``,
    ``slurm``, ...), which win over the recipe's ``run`` section.

    Examples
    --------
    >>> import emarray, tempfile
    >>> r = emarray.run_pipeline({"steps": {
    ...     "data": {"op": "synthetic", "shape": [16, 32, 32], "chunks": 16},
    ...     "mask": {"op": "threshold", "src": "data.prob", "value": 0.5},
    ...     "cells": {"op": "label", "src": "mask"}}}, workdir=tempfile.mkdtemp())
    >>> r.ran
    ['data', 'mask', 'cells']
    """
    say = echo or (lambda line: print(line, file=sys.stderr))
    if resume and overwrite:
        raise InvalidArgumentError("choose either --resume or --overwrite, not both")
    rec = load_recipe(recipe, sets, workdir=workdir)
    from ..extras import require_all
    for st in rec.steps:  # a step whose extra is missing: said before any step runs
        require_all(st.op.needs, f"the recipe's step {st.name!r} (emarray {st.op_name})")
    opts = _merged_options(rec, options, run)
    if opts.estimate and not dry_run:
        return _estimate_pipeline(recipe, sets, rec, opts, say)
    lock = _workdir_lock(rec.workdir)
    if not dry_run:  # a dry run creates nothing, not even the workdir's parent
        if not is_remote(rec.workdir):
            os.makedirs(os.path.dirname(rec.workdir) or ".", exist_ok=True)
        lock.acquire()
    try:
        state = State(rec.workdir)
        planned = plan(rec, state, resume=resume, overwrite=overwrite)
        result = PipelineResult(rec, planned)
        if dry_run:
            for line in describe_plan(rec, planned):
                say(line)
            return result
        with opts.runner("pipeline") as runner:
            if not is_remote(rec.workdir):
                os.makedirs(rec.workdir, exist_ok=True)
            state.set_recipe(_recipe_record(rec, recipe, sets))
            shared = runner.client if runner.client is not None else opts.scheduler
            try:
                for k, p in enumerate(planned, 1):
                    _run_step(p, k, len(planned), state, opts, shared, result, say)
            finally:
                _write_report(rec.workdir, say)
        return result
    finally:
        if not dry_run:
            lock.release()


def _estimate_pipeline(recipe: Any, sets: tuple[str, ...], rec: Recipe, opts: RunOptions,
                       say: Callable[[str], None]) -> PipelineResult:
    """``estimate``: every step runs a sample of its blocks, in a scratch workdir beside the
    recipe's (each step reads what the step before it wrote for its sample); the cost of the
    whole recipe is said, and kept as the result's ``estimate``."""
    from ..engine.estimate import estimating
    with estimating(f"recipe {rec.path or 'given'}") as session:
        scratch = load_recipe(recipe, sets, workdir=session.scratch_for(rec.workdir))
        state = State(scratch.workdir)
        planned = plan(scratch, state)
        result = PipelineResult(scratch, planned)
        with opts.runner("pipeline") as runner:
            os.makedirs(scratch.workdir, exist_ok=True)
            shared = runner.client if runner.client is not None else opts.scheduler
            for k, p in enumerate(planned, 1):
                _run_step(p, k, len(planned), state, opts, shared, result, lambda line: None)
        result.estimate = session.result()
    for line in result.estimate.lines():
        say(line)
    return result


def _workdir_lock(workdir: str) -> Any:
    """The lock of a work folder: an ``flock`` beside it, or in a bucket the outputs' lock
    (conditional writes: one run at a time from any machine)."""
    if is_remote(workdir):
        from ..engine.remote_output import RemoteLock
        from ..storage import options_for
        return RemoteLock(workdir, workdir, options_for(workdir))
    return OutputLock(Path(workdir), workdir)


def _recipe_record(rec: Recipe, given: Any, sets: tuple[str, ...]) -> dict[str, Any]:
    """What a report shows of the recipe: its file's text (or the dict given), --set values."""
    import yaml
    if rec.path is not None:
        text = Path(rec.path).read_text()
        given = yaml.safe_load(text)
    else:
        text = yaml.safe_dump(given, sort_keys=False)
    if isinstance(given, dict) and given.get("storage_options"):  # credentials: never kept
        given = {**given, "storage_options": {k: "***" for k in given["storage_options"]}}
        text = yaml.safe_dump(given, sort_keys=False)
    sets = tuple(redact.command_line(["--set", s]).removeprefix("--set ") for s in sets)
    return {"path": rec.path, "about": rec.about, "sets": list(sets), "text": redact.text(text)}


def _write_report(workdir: str, say: Callable[[str], None]) -> None:
    """WORKDIR/report.html, after the steps (finished or not); a page that cannot be made is
    said in one line and never hides the run's own outcome."""
    from ..report import workdir_report
    try:
        path = workdir_report(workdir)
    except Exception as exc:  # noqa: BLE001 - the run's result matters more than its page
        say(f"no report: {type(exc).__name__}: {exc}")
        return
    say(f"report: {path}")


def _run_step(p: Planned, k: int, n: int, state: State, opts: RunOptions, scheduler: Any,
              result: PipelineResult, say: Callable[[str], None]) -> None:
    st = p.step
    head = f"[{k}/{n}] {st.name} ({st.op_name})"
    if p.action == "skip":
        say(f"{head}: finished in an earlier run{': ' + p.summary if p.summary else ''}")
        return
    say(f"{head}: {'resuming' if p.action == 'resume' else 'running'}"
        + (f" ({p.why})" if p.action == "rerun" else ""))
    step_run = {k2: st.params[k2] for k2 in STEP_RUN_KEYS if k2 in st.params}
    step_opts = RunOptions.make(opts, scheduler=scheduler, resume=p.action == "resume",
                                overwrite=p.action == "rerun", **step_run)
    args: dict[str, Any] = {}
    for key, (kind, *ref) in st.inputs.items():
        if kind == "step":
            up = result.recipe.step(ref[0])
            args[key] = up.output_of(ref[1] or None)
        else:
            args[key] = ref[0]
    shown: dict[str, Any] = {"op": st.op_name,
                             "inputs": {k2: os.fspath(v) for k2, v in args.items()},
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = st.op.path_output
    if out is not None:
        args[out.name] = st.out
    params = {k2: v for k2, v in st.params.items() if k2 not in step_run}
    call = st.op.call
    assert call is not None  # every declared operator's function is registered with it
    state.mark(st.name, "running", p.fingerprint, st.out, **shown)
    t0 = time.monotonic()
    try:
        with speaking("recipe", st.name):  # its messages name the step's keys, not options
            value = call(**args, **params, options=step_opts)
    except EmarrayError as exc:  # the same error, naming the step
        state.mark(st.name, "failed", p.fingerprint, st.out, redact.text(str(exc)), **shown,
                   seconds=time.monotonic() - t0)
        raise _naming(exc, f"step {st.name!r} ({st.op_name}): {exc}") from exc
    dt = time.monotonic() - t0
    summary = summarize(st, value)
    state.mark(st.name, "done", p.fingerprint, st.out, summary, stored(st), **shown, seconds=dt)
    result.results[st.name] = value
    result.seconds[st.name] = dt
    p.summary = summary
    say(f"{head}: done in {dt:.1f} s: {summary}")


def _naming(exc: EmarrayError, message: str) -> EmarrayError:
    try:
        return type(exc)(message)
    except TypeError:  # an error class that takes other arguments
        return EmarrayError(message)


def summarize(st: Step, value: Any) -> str:
    """One line on what a step produced."""
    from ..volume import Volume
    if isinstance(value, Volume):
        em = value.attrs.get("emarray", {})
        extra = f", {em['components']} components" if "components" in em else ""
        levels = f", {len(value.levels)} levels" if st.op.output_kind == "inplace" else ""
        return f"{value.url}: {value.shape} {value.dtype}{extra}{levels}"
    if isinstance(value, dict) and value and all(isinstance(v, Volume) for v in value.values()):
        v0 = next(iter(value.values()))
        return f"{', '.join(value)} in {st.out}: {v0.shape}"
    if st.op_name == "objects":
        return f"{len(value)} objects in {st.out}"
    if st.op_name == "match":
        thr = float(st.params.get("match_threshold", 0.5))
        f1 = float(value["matching"].set_index("threshold").loc[thr, "f1"])
        return (f"{value['n_true']} truth, {value['n_pred']} predicted objects; F1 at IoU "
                f"{thr:g} {f1:.4f}; adapted Rand error {value['adapted_rand_error']:.4f} "
                f"(in {st.out})")
    if st.op_name == "sweep":
        from ..ops.sweep import best_rows
        rows = best_rows(value)
        b = rows[min(rows)]
        return (f"best F1 {b['f1']['f1']:.4f} at t={b['f1']['threshold']:g}, best IoU "
                f"{b['iou']['iou']:.4f} (in {st.out})")
    return str(st.out)
