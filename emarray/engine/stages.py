"""The one path every operator takes: stages of blocks -> block function -> stored or folded.

:func:`run_job` runs a job that writes volumes (threshold, smoothing, pyramids, ingest, ...):
connect to the scheduler, check the inputs on every worker, open the output safely, run its
stages with resumable progress, mark it complete, commit it. :func:`run_stages` runs stages
into any :class:`~emarray.engine.checkpoint.Checkpoint` (reductions such as the sweep).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from ..errors import EmarrayError, InputChangedError, InvalidArgumentError
from ..volume import Volume
from . import estimate, faults
from .fold import TreeFold
from .checkpoint import Checkpoint, progress_of, stored_since
from .contract import BlockContext, LaterStage, Read, Stage
from .grid import Region
from .invalidate import affected_blocks, mark_written, volume_key
from .options import RunOptions
from .output import open_output, reading, remove_partial_writes
from .schedulers import Runner

log = logging.getLogger("emarray")

# -- per-worker state ----------------------------------------------------------------------------
_STATE: dict[tuple[str, str], Any] = {}
_STATE_LOCK = threading.Lock()


def _device() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def worker_state(key: str, setup: Callable[[], Any]) -> Any:
    """``setup()`` run once per worker process and device (and cached there), never per block."""
    k = (key, _device())
    try:
        return _STATE[k]
    except KeyError:
        pass
    with _STATE_LOCK:  # threads of one process share one state, made once
        if k not in _STATE:
            log.debug("setting up %s in process %d", key, os.getpid())
            _STATE[k] = setup()
        return _STATE[k]


def forget_worker_state(prefix: str) -> int:
    """Drop this process's per-worker states whose key starts with ``prefix`` (a model that
    will not be used again); return how many."""
    with _STATE_LOCK:
        gone = [k for k in _STATE if k[0].startswith(prefix)]
        for k in gone:
            del _STATE[k]
    return len(gone)


# -- one block -----------------------------------------------------------------------------------
def _shape(region: Region) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in region)


def _fit(result: Any, stage: Stage, j: int, ctx: BlockContext) -> np.ndarray:
    """The result for write ``j``, cropped from the first read's region when it covers that."""
    out = np.asarray(result)
    want = _shape(ctx.writes[j])
    if out.shape != want and stage.reads and out.shape == _shape(ctx.reads[0]):
        r0 = stage.reads[0]
        if r0.channels == "same" and all(f == 1 for f in r0.scale):  # type: ignore[union-attr]
            out = out[tuple(slice(w.start - r.start, w.stop - r.start)
                            for w, r in zip(ctx.writes[j], ctx.reads[0]))]
    if out.shape != want:
        raise InvalidArgumentError(
            f"stage {stage.name!r} returned shape {out.shape} for a write region of {want}")
    dtype = stage.writes[j].volume.dtype
    if out.dtype != dtype:
        raise InvalidArgumentError(
            f"stage {stage.name!r} returned {out.dtype} for an output of {dtype} "
            "(emarray does not cast silently)")
    return out


def run_block(stage: Stage, index: tuple[int, ...]) -> Any:
    """Read, compute and write (or summarise) one block of ``stage``."""
    region = stage.grid.region(index)
    state = worker_state(stage.setup_key or stage.name, stage.setup) if stage.setup else None
    arrays: list[Any] = []
    reads = []
    for r in stage.reads:
        if r.lazy:  # read by the block only if it needs it
            arrays.append(partial(_read_array, r, region))
            reads.append(r.region(region))
            continue
        a, got = r.read(region)
        arrays.append(a)
        reads.append(got)
    ctx = BlockContext(index, region, reads, [w.region(region) for w in stage.writes], state,
                       stage.given)
    result = stage.fn(ctx, *arrays)
    if not stage.writes:
        _trace(stage, index)
        return result
    results = result if isinstance(result, tuple) else (result,)
    summary = None
    if stage.combine is not None:  # a stage that writes and summarises: the summary comes last
        results, summary = results[:-1], results[-1]
    if len(results) != len(stage.writes):
        raise InvalidArgumentError(
            f"stage {stage.name!r} returned {len(results)} arrays for {len(stage.writes)} outputs")
    fitted = [_fit(res, stage, j, ctx) for j, res in enumerate(results)]
    faults.write_block([(w.volume, region_j, data) for w, region_j, data in
                        zip(stage.writes, ctx.writes, fitted)], _block_name(stage, index),
                       stage.faults or faults.NONE)
    _trace(stage, index)
    return summary


def _read_array(r: Any, region: Any) -> np.ndarray:
    return r.read(region)[0]


def _trace(stage: Stage, index: tuple[int, ...]) -> None:
    if stage.faults is not None and stage.faults.trace:
        faults.trace(stage.job, stage.name, int(np.ravel_multi_index(index, stage.grid.counts)),
                     stage.faults)


# -- stages --------------------------------------------------------------------------------------
def _block_name(stage: Stage, index: tuple[int, ...]) -> str:
    where = ",".join(f"{s.start}:{s.stop}" for s in stage.grid.region(index))
    return f"block {index} (voxels {where}) of {stage.name}"


StageSpec = Stage | LaterStage
#: most blocks whose ``work`` is added up before the first one runs (the progress display's
#: total); a stage of more counts its progress in blocks, as one call per block would delay it
MAX_WEIGHED = 1 << 16


def run_stages(stages: Sequence[StageSpec], runner: Runner, checkpoint: Checkpoint, *,
               retries: int = 2) -> Any:
    """Run ``stages`` in order; return the last stage's finalized result.

    A stage that finished in an earlier run is skipped (its saved result is what the next stage
    gets); in an unfinished one, the blocks saved as done are skipped and its saved summary
    is folded on from there. A :class:`LaterStage` is built (and checked) from the result of
    the stage before it, once that has finished.
    """
    for spec in stages:
        if isinstance(spec, Stage):
            spec.check()
    session = estimate.current()
    if session is not None:  # an estimate: a sample of each stage's blocks
        return _sample_stages(stages, runner, checkpoint, session, retries)
    given: Any = None
    changed = {k: list(v) for k, v in checkpoint.changed.items()}  # inputs changed since start
    restart = False  # an earlier stage starts again: so does every one after it
    for spec in stages:
        if restart:  # an earlier stage starts again: what this one saved (finished or part
            # done) was computed from that stage's old results, so it starts again too
            checkpoint.forget(spec.name)
        finished, result = checkpoint.finished(spec.name)
        if finished and not changed:
            log.info("stage %s finished in an earlier run", spec.name)
            given = result
            continue
        if isinstance(spec, LaterStage):
            st = spec.build(given)
            st.check()
        else:
            st = spec
        redo = affected_blocks(st, changed) if changed else np.zeros(0, np.int64)
        if finished:
            if not len(redo):
                given = result
                continue
            log.warning("%s: %d finished blocks read input chunks changed since the job started; "
                        "computing them again", st.name, len(redo))
            if st.combine is not None:
                checkpoint.forget(st.name)
                restart = True
            else:
                checkpoint.reopen(st.name, len(st.grid), redo)
        st.given = given
        st.job = str(checkpoint.root or "")
        st.faults = faults.modes()
        acc, restarted = _run_stage(st, runner, checkpoint, retries, redo)
        restart = restart or restarted
        mark_written(st, redo, changed)
        given = st.finalize(acc) if st.finalize is not None else acc
        checkpoint.finish(st.name, given)
    return given


def _sample_stages(stages: Sequence[StageSpec], runner: Runner, checkpoint: Checkpoint,
                   session: estimate.Session, retries: int) -> Any:
    """What :func:`run_stages` does for an estimate: each stage runs a sample of its blocks
    (:func:`~emarray.engine.estimate.sample_stage`); its result, made from the sample, builds
    the next."""
    given: Any = None
    for spec in stages:
        st = spec.build(given) if isinstance(spec, LaterStage) else spec
        st.check()
        st.given = given
        st.job = str(checkpoint.root or "")
        st.faults = faults.modes()
        acc = estimate.sample_stage(session, st, runner, retries, run_block)
        given = st.finalize(acc) if st.finalize is not None else acc
    return given


class _InFlight:
    """The blocks of one stage run: which are done (a bitmap), which are in flight (call
    number -> flat block index), and the summaries folded so far."""

    def __init__(self, st: Stage, checkpoint: Checkpoint, redo: np.ndarray):
        self.st, self.checkpoint = st, checkpoint
        self.done, saved = checkpoint.load(st.name, len(st.grid))
        self.restarted = False
        stale = redo[self.done.get_many(redo)]
        if len(stale) and st.combine is not None:  # a block's share cannot be taken out of the fold
            log.warning("%s: blocks already folded read input chunks changed since the job "
                        "started; the stage starts again", st.name)
            checkpoint.forget(st.name)
            self.done, saved = checkpoint.load(st.name, len(st.grid))
            self.restarted = True
        elif len(stale):
            log.warning("%s: %d finished blocks read input chunks changed since the job "
                        "started; computing them again", st.name, len(stale))
            self.done.unset_many(stale)
        self.fold = TreeFold(st.combine, saved) if st.combine is not None else None
        self.flat_of: dict[int, int] = {}

    def index(self, i: int) -> tuple[int, ...]:
        return tuple(int(k) for k in np.unravel_index(self.flat_of[i], self.st.grid.counts))

    def calls(self) -> Any:
        for i, flat in enumerate(self.done.missing()):
            self.flat_of[i] = flat
            yield run_block, (self.st, self.index(i))

    def on_result(self, i: int, value: Any) -> None:
        self.done.set(self.flat_of.pop(i))
        if self.fold is not None:
            self.fold.add(value)
        self.save()

    def save(self, force: bool = False) -> None:
        self.checkpoint.save(self.st.name, self.done, self.fold.stack if self.fold else None,
                             force=force)

    def name(self, i: int) -> str:
        return _block_name(self.st, self.index(i))

    def weight(self, i: int) -> int:
        return self.st.work(self.index(i))  # type: ignore[misc]


def _run_stage(st: Stage, runner: Runner, checkpoint: Checkpoint, retries: int,
               redo: np.ndarray) -> tuple[Any, bool]:
    """Run the blocks of ``st`` not yet done (``redo``: done ones to compute again); return the
    folded summary, and whether the stage had to start again."""
    job = _InFlight(st, checkpoint, redo)
    n = len(st.grid)
    already = job.done.count()
    if already and runner.progress:
        print(f"resuming: {already} of {n} blocks already done", file=sys.stderr)
    log.info("%s: %d blocks of %s (%d already done)", st.name, n, st.grid.block, already)
    total = n - already
    weigh = st.work is not None and total <= MAX_WEIGHED
    if weigh:
        counts = st.grid.counts
        total = sum(st.work(tuple(int(k) for k in np.unravel_index(f, counts)))  # type: ignore[misc]
                    for f in job.done.missing())
    runner.desc = st.name
    try:
        runner.run(job.calls(), total=total, retries=retries, on_result=job.on_result,
                   name=job.name, weight=job.weight if weigh else None,
                   unit=st.unit if weigh else "block")
    except BaseException:  # a failed block or an interrupt: keep every finished block
        job.save(force=True)
        raise
    return (job.fold.result() if job.fold is not None else None), job.restarted


def _nested_images(out: Volume) -> list[Any]:
    """The zarr groups directly inside a local output (not its arrays, not its progress)."""
    import json

    import zarr
    root = out.local_path
    found = []
    for child in sorted(root.iterdir()) if root is not None and root.is_dir() else []:
        meta = child / "zarr.json"
        if child.name.startswith(".") or not meta.is_file():
            continue
        if json.loads(meta.read_text()).get("node_type") == "group":
            found.append(zarr.open_group(str(child), mode="r+"))
    return found


def mark_complete(out: Volume, inputs_stored: dict[str, str] | None = None) -> None:
    """Record in the output's metadata (and its nested images') that every block is written,
    and (``inputs_stored``) the digest of each input's stored chunks it was computed from."""
    group = out.open_group()
    old: Any = group.attrs.get("emarray") or {}
    meta = {**old, "complete": True}  # what stages recorded stays
    if inputs_stored is not None:
        meta["inputs_stored"] = inputs_stored
    for child in _nested_images(out):  # images the job wrote inside its output (a variance map)
        em: Any = child.attrs.get("emarray")
        if isinstance(em, dict) and "job" in em:
            child.attrs["emarray"] = {**em, "complete": True}
    group.attrs["emarray"] = meta
    out.attrs["emarray"] = meta


def check_unchanged_since(record: dict[str, Any], inputs: Sequence[Any], shown: str) -> None:
    """Refuse to resume a finished output whose inputs changed since it was computed (the
    digests ``record["inputs_stored"]`` of their stored chunks differ from today's): its every
    block would be stale. Outputs without the record (older emarray) are taken as they are."""
    recorded = record.get("inputs_stored")
    if not isinstance(recorded, dict):
        return
    for v in inputs:
        key = volume_key(v) if isinstance(v, Volume) else None
        known = key in recorded and (v.local_path is not None or v.remote)
        if known and not stored_since(v, str(recorded[key])):
            raise InputChangedError(
                f"cannot resume {shown!r}: it is finished, but its input {v.url} changed since "
                "it was computed (its stored chunks differ); run the same command with "
                "--overwrite to compute it again from the current input")


def run_job(dst: str | os.PathLike, create: Callable[[str], Volume], *, job: dict[str, Any],
            stages: Callable[[Volume], Sequence[StageSpec]], options: RunOptions,
            inputs: Sequence[Any] = (), desc: str = "blocks",
            runner: Runner | None = None) -> Volume:
    """Write ``dst`` through ``stages`` (built for the output volume), safely and resumably.

    The scheduler is connected to and every worker opens every input before ``dst`` is created
    (or reopened to ``resume``, or staged beside the old one to ``overwrite``); then the stages
    run, with their progress kept in the output, and the output is marked complete and
    committed. ``job`` identifies the run for ``resume``. Pass an entered ``runner`` to reuse
    its connection (several outputs, or a setup that needs to know the workers).
    """
    if options.estimate and estimate.current() is None:
        raise InvalidArgumentError("estimate=True is an operator's option (emarray.threshold("
                                   "..., estimate=True), emarray OP ... --estimate)")
    with contextlib.nullcontext(runner) if runner is not None else options.runner(desc) as runner:
        runner.check_volumes(inputs)
        with reading(inputs), open_output(
                dst, create, inputs=[v for v in inputs if isinstance(v, (Volume, str))],
                job=job, overwrite=options.overwrite, resume=options.resume) as target:
            out = target.volume
            if target.resumed and out.attrs.get("emarray", {}).get("complete"):
                check_unchanged_since(out.attrs["emarray"], inputs, target.shown)
            else:
                checkpoint = Checkpoint(progress_of(out))
                if not target.resumed:
                    checkpoint.clear()
                checkpoint.start(inputs=[v for v in inputs if isinstance(v, Volume)])
                session = estimate.current()
                if session is not None:
                    estimate.note_inputs(session, [v for v in inputs if isinstance(v, Volume)],
                                         checkpoint.stored)
                try:
                    built = stages(out)
                    for st in built:
                        if isinstance(st, Stage):
                            st.check()
                except BaseException:
                    target.discard()  # nothing was written: leave nothing behind
                    raise
                try:
                    run_stages(built, runner, checkpoint, retries=options.retries)
                except (OSError, EmarrayError) as exc:
                    if target.staged:
                        raise target.kept_note(exc) from exc
                    raise
                if target.resumed and out.local_path is not None:
                    remove_partial_writes(out.local_path)  # what the killed run left
                mark_complete(out, checkpoint.digests)
                checkpoint.clear()
            return target.commit()


def reduce_blocks(fn: Callable[..., Any], volumes: Sequence[Any], combine: Callable[[Any, Any], Any],
                  *, grid: Any = None, runner: Runner | None = None, desc: str = "reduce",
                  options: RunOptions | None = None, **run: Any) -> Any:
    """``fn(ctx, *blocks)`` over the blocks of ``volumes`` (same regions), folded by ``combine``.

    The one-stage reduction most operators need; nothing is saved, so it does not resume.
    """
    from .grid import BlockGrid
    opts = RunOptions.make(options, **run)
    grid = grid or BlockGrid(volumes[0].shape, volumes[0].block_shape)
    stage = Stage(desc, fn, grid, [Read(v) for v in volumes], combine=combine)
    with contextlib.nullcontext(runner) if runner is not None else opts.runner(desc) as r:
        r.check_volumes(volumes)
        with reading(volumes):
            return run_stages([stage], r, Checkpoint(None), retries=opts.retries)
