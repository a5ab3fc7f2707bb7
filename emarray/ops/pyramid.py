"""Multiscale pyramids: levels 1..N added to an OME-Zarr image group, out of core.

Each level is pooled from the stored level above it (so the result does not depend on the
block size), several levels per pass where a block's memory allows: a block of the coarsest
level in the pass reads its whole footprint from the level above the pass and writes every
level of the pass from it. Labels are pooled by mode, never averaged.
"""
from __future__ import annotations

import math
import os
import uuid
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import ome, storage
from .._normalize import parse_tuple, whole_number
from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write
from ..spec import BACKEND, ENGINE, REPLACE, Operator, Param, Port
from ..speaking import given
from ..engine.checkpoint import PROGRESS_DIR, Checkpoint
from ..engine.output import OutputLock, foreign_in_array, real_path
from ..engine.remote_output import RemoteLock
from ..storage import RemotePath
from ..engine.stages import run_stages
from ..errors import InvalidArgumentError, OutputExistsError, ResumeMismatchError
from ..codecs import with_checksum
from ..volume import EVERY_CHUNK, Volume, is_labels, open_volume
from .common import as_volume, backend_stage_setup
from .pool import MODES, pooled_shape

#: voxels of the level above that one block of a pass may read (several levels per pass
#: where the chunks are small enough)
BLOCK_BUDGET = 2**26
def auto_factors(voxel: tuple[float, ...]) -> tuple[int, ...]:
    """Anisotropy-aware factors for one level: y,x only while z is coarser than y,x.

    >>> auto_factors((50.0, 4.0, 4.0)), auto_factors((8.0, 8.0, 8.0))
    ((1, 2, 2), (2, 2, 2))
    """
    z, y, x = voxel
    return (1, 2, 2) if z > max(y, x) else (2, 2, 2)


def plan_levels(shape: tuple[int, ...], voxel: tuple[float, ...], *, levels: int | None,
                until_size: int | None, factors: Any) -> list[tuple[int, ...]]:
    """The factor of each new level (relative to the one above)."""
    fixed = None
    if factors not in (None, "auto"):
        fixed = parse_tuple(factors, "factors", 3)
        if any(f not in (1, 2) for f in fixed) or fixed == (1, 1, 1):
            raise InvalidArgumentError(
                f"factors must be 1 or 2 per axis (and not all 1), got {factors!r}")
    if levels is not None:
        levels = whole_number(levels, "levels", 1)
    if until_size is not None:
        until_size = whole_number(until_size, "until-size", 1)
    if levels is None and until_size is None:
        until_size = 64
    out: list[tuple[int, ...]] = []
    cur, vox = tuple(shape), tuple(voxel)
    while True:
        if levels is not None and len(out) >= levels:
            break
        if levels is None and max(cur) <= (until_size or 1):
            break
        f = fixed or auto_factors(vox)
        f = tuple(1 if c == 1 else k for c, k in zip(cur, f))  # an axis of 1 stays 1
        if f == (1, 1, 1):
            break
        out.append(f)
        cur = pooled_shape(cur, f)
        vox = tuple(v * k for v, k in zip(vox, f))
    if levels is not None and not out:
        raise InvalidArgumentError(
            f"no level can be added to a volume of {','.join(map(str, shape))} voxels: every "
            "axis that may be pooled is already 1 voxel")
    if not out:
        raise InvalidArgumentError(
            f"the volume {','.join(map(str, shape))} is already at most {until_size} voxels along "
            f"every axis; ask for {given('levels', 'N')} to add levels anyway")
    return out


def _level_path(base: str, k: int, tag: str = "") -> str:
    """Level ``k``'s array path beside level 0's (``s0`` -> ``s2``; ``v-.../0`` -> ``v-.../2``;
    with ``tag``, ``2-TAG``: beside a level 2 that it replaces)."""
    head, _, leaf = base.rpartition("/")
    return ((f"{head}/" if head else "") + (f"s{k}" if leaf.startswith("s") else str(k))
            + (f"-{tag}" if tag else ""))


def _open_group(src: Volume) -> Any:
    """The image group of ``src`` opened for writing (local disk or object storage)."""
    import zarr
    if src.remote:
        return src.open_group()
    return zarr.open_group(os.fspath(real_path(src.url)), mode="r+")


def _progress(src: Volume, group: Any) -> Any:
    """The pyramid job's progress folder: in the image (beside level 0's array on S3)."""
    if src.remote:
        head = src.array_path.rpartition("/")[0]
        return RemotePath(storage.join(src.url, head, PROGRESS_DIR), src.storage_options)
    return group / PROGRESS_DIR


def _foreign_in_level(src: Volume, group: Any, path: str) -> list[str]:
    """Files (objects) in the level array ``path`` that are not its chunks."""
    if not src.remote:
        return foreign_in_array(group / path, path) if (group / path).is_dir() else []
    from ..chunks import valid_key
    from ..engine.remote_output import array_layout
    url = storage.join(src.url, path)
    layout = array_layout(url, src.storage_options)
    keys = storage.objects(url, src.storage_options)
    return [f"{path}/{k}" for k in keys
            if k != "zarr.json" and (layout is None or not valid_key(k, *layout))]


def _pool_pass(ctx: BlockContext, block: np.ndarray, *, factors: list[tuple[int, ...]],
               mode: str) -> tuple[np.ndarray, ...]:
    out = []
    for f in factors:
        block = ctx.state(block, factors=f, mode=mode)
        out.append(block)
    return tuple(out)


def _passes(level_shapes: list[tuple[int, ...]], factors: list[tuple[int, ...]],
            chunks: tuple[int, ...]) -> list[list[int]]:
    """Group levels 1..N into passes: as many consecutive levels as a block's budget allows."""
    passes: list[list[int]] = []
    k = 1
    while k <= len(factors):
        group = [k]
        total = np.array(factors[k - 1])
        while group[-1] < len(factors):
            nxt = total * np.array(factors[group[-1]])
            if math.prod(int(c) * int(t) for c, t in zip(chunks, nxt)) > BLOCK_BUDGET:
                break
            total = nxt
            group.append(group[-1] + 1)
        passes.append(group)
        k = group[-1] + 1
    return passes


def _factors(value: Any, name: str) -> Any:
    if value in (None, "auto"):
        return "auto"
    fixed = parse_tuple(value, name, 3)
    if any(f not in (1, 2) for f in fixed) or fixed == (1, 1, 1):
        raise InvalidArgumentError(f"factors must be 1 or 2 per axis (and not all 1), got {value!r}")
    return fixed


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    from ..volume import open_volume as _open
    lines = []
    for k in range(1, len(v.levels)):
        lv = _open(v.url, level=k)
        lines.append(f"level {v.levels[k]}: {lv.shape} voxel {lv.voxel_size} {lv.unit}")
    return lines


SPEC = Operator(
    "pyramid", "downsampled levels 1..N added to an OME-Zarr image (mean for images, mode for "
               "labels), its multiscales updated",
    inputs=(Port("src", "volume", "an OME-Zarr image emarray can write (zarr v3); level 0 is "
                                  "read"),),
    output=Port("src", "inplace", "the same image, with the new levels listed"),
    params=(Param("levels", "int", "how many levels to add", minimum=1),
            Param("until_size", "int", "add levels until every axis is at most this many voxels "
                                       "(the default, 64, when levels is not given)", minimum=1),
            Param("mode", "choice", "auto: mode for labels, mean for images", choices=("auto",) + MODES),
            Param("factors", "text", "auto (y,x only while z is coarser, then all three) or z,y,x "
                                     "of 1 or 2", parse=_factors, metavar="auto|Z,Y,X"),
            Param("labels", "flag", "the image holds labels (pooled by mode, never averaged); "
                                    "default: integer volumes marked as labels, or of a 32/64-bit "
                                    "integer type")),
    run=ENGINE + REPLACE + BACKEND, says=_says, blocks="pool",
    examples=("emarray pyramid raw.zarr", "emarray pyramid cells.zarr --levels 4 --labels"))


@SPEC.function
def pyramid(src: Volume | str | os.PathLike, *, levels: int | None = None,
            until_size: int | None = None, mode: str = "auto", factors: Any = "auto",
            labels: bool | None = None, options: RunOptions | None = None,
            **run: Any) -> Volume:
    """Add levels 1..N to the OME-Zarr image at ``src`` and update its ``multiscales``.

    Each level is pooled from the stored level above it, so the result does not depend on the
    block size. ``overwrite`` replaces levels an earlier pyramid added (never levels emarray
    did not make), ``resume`` finishes a killed one.

    Returns
    -------
    Volume
        Level 0 of the image, whose ``levels`` now lists the new ones.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.zarr")
    >>> v = emarray.create_volume(p, (8, 8, 8), "uint8", 4, voxel_size=(8, 8, 8))
    >>> v.write((slice(0, 8),) * 3, np.arange(512, dtype="uint8").reshape(8, 8, 8))
    >>> emarray.pyramid(p, levels=2).levels
    ('0', '1', '2')
    >>> emarray.open_volume(p, level=1).voxel_size
    (16.0, 16.0, 16.0)
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    if src.kind != "zarr3" or (src.local_path is None and not src.remote) or not src.array_path:
        raise InvalidArgumentError(
            f"{src.url} is not an OME-Zarr image group (on local disk or object storage); "
            "pyramids are added to the groups emarray writes (ingest it first)")
    if storage.scheme(src.url) in storage.READ_ONLY:
        raise InvalidArgumentError(f"cannot add levels to {src.url}: https:// is read-only")
    if src.array_path != src.levels[0]:
        raise InvalidArgumentError(
            f"{src.url}/{src.array_path} is level {src.levels.index(src.array_path)} of a pyramid; "
            f"pyramid adds levels to the image itself: pass {src.url}")
    if len(src.spatial_axes) != 3 or src.ndim != 3:
        raise InvalidArgumentError(f"pyramids are made of z,y,x volumes; {src.url} has axes {src.axes}")
    is_lab = is_labels(src) if labels is None else bool(labels)
    if mode not in ("auto", *MODES):
        raise InvalidArgumentError(f"mode must be auto or one of {', '.join(MODES)}, got {mode!r}")
    if is_lab and mode == "mean":
        raise InvalidArgumentError(
            f"{src.url} holds labels: their ids must not be averaged; use {given('mode', 'mode')} (or "
            "nearest, max, min)")
    pool_mode = ("mode" if is_lab else "mean") if mode == "auto" else mode
    plan = plan_levels(src.shape, src.voxel_size, levels=levels, until_size=until_size,
                       factors=factors)
    shapes = [src.shape]
    for f in plan:
        shapes.append(pooled_shape(shapes[-1], f))
    job = {"operator": "pyramid", "mode": pool_mode, "factors": [list(f) for f in plan],
           "input": src.fingerprint()["shape"], "dtype": src.dtype.str}
    group: Any = src.url if src.remote else real_path(src.url)
    lock: Any = (RemoteLock(src.url, src.url, src.storage_options) if src.remote
                 else OutputLock(group, src.url))
    lock.acquire()
    try:
        with opts.runner("pyramid") as runner:
            runner.check_volumes([src])
            setup = backend_stage_setup("pool", src.dtype, opts, runner)
            vols, paths, old = _prepare_levels(src, group, shapes, job, opts)
            stages = []
            for group_levels in _passes(shapes, plan, src.chunks):
                top = group_levels[-1]
                base = src if group_levels[0] == 1 else vols[group_levels[0] - 2]
                total = np.prod([plan[k - 1] for k in group_levels], axis=0)
                grid = BlockGrid(shapes[top], vols[top - 1].block_shape)
                writes = []
                for k in group_levels:
                    rel = np.prod([plan[m - 1] for m in range(k + 1, top + 1)] or [(1, 1, 1)],
                                  axis=0)
                    writes.append(Write(vols[k - 1], tuple(Fraction(int(r)) for r in rel)))
                stages.append(Stage(
                    f"pyramid level {group_levels[0]}-{top}" if len(group_levels) > 1
                    else f"pyramid level {top}",
                    partial(_pool_pass, factors=[plan[k - 1] for k in group_levels],
                            mode=pool_mode),
                    grid, [Read(base, scale=tuple(Fraction(int(t)) for t in total))], writes,
                    **setup))
            checkpoint = Checkpoint(_progress(src, group))
            if not opts.resume:
                checkpoint.clear()
            checkpoint.start(inputs=[src])
            run_stages(stages, runner, checkpoint, retries=opts.retries)
            _publish(src, group, paths, plan, pool_mode, job, old)
            checkpoint.clear()
    finally:
        lock.release()
    return open_volume(group)


def _prepare_levels(src: Volume, group: Path, shapes: list[tuple[int, ...]],
                    job: dict[str, Any], opts: RunOptions) -> tuple[list[Volume], list[str], list[str]]:
    """Create the level arrays (or reopen them to resume); record the job in the group.

    Returns the level volumes, their array paths and the paths of the levels they replace.
    New levels are built at free paths (``1``, ``2``, ...; ``1-TAG``, ... while those hold the
    levels being replaced), so the old levels stay listed and readable until the new ones are
    complete (see :func:`_publish`)."""
    g = _open_group(src)
    em: dict[str, Any] = dict(g.attrs.get("emarray", {}))
    earlier = em.get("pyramid") if isinstance(em.get("pyramid"), dict) else None
    listed = list(src.levels[1:])
    base = src.levels[0]
    same = earlier is not None and earlier.get("job") == job
    # the last pyramid that finished: its levels are the ones listed (an unfinished one after
    # it keeps its record as "previous")
    last = earlier if earlier is not None and earlier.get("complete") else (
        earlier.get("previous") if earlier is not None else None)
    if opts.resume and same and not earlier.get("complete"):  # type: ignore[union-attr]
        paths = list(earlier["paths"])  # type: ignore[index]
        old = list(earlier.get("replacing", []))  # type: ignore[union-attr]
    elif opts.resume and not same:
        raise ResumeMismatchError(
            f"cannot resume the pyramid of {src.url}: no unfinished pyramid job with these "
            "settings was started there; use overwrite to start again")
    else:  # a new pyramid, a replacement, or a finished one resumed (computed again)
        if listed and not (opts.overwrite or opts.resume):
            raise OutputExistsError(
                f"{src.url} already has levels {listed}; pass --overwrite to replace them "
                "or --resume to finish an interrupted pyramid")
        finished = earlier is not None and earlier.get("complete")
        made = set(last.get("paths", [])) if isinstance(last, dict) else set()
        foreign = [p for p in listed if p not in made]
        if foreign:
            raise InvalidArgumentError(
                f"refusing to replace levels {foreign} of {src.url}: emarray did not make them")
        user = [f for p in listed for f in _foreign_in_level(src, group, p)]
        if user:
            raise InvalidArgumentError(
                f"refusing to replace levels of {src.url}: they hold files emarray did not write "
                f"({', '.join(user[:5])}{', ...' if len(user) > 5 else ''}); move them away first")
        if earlier is not None and not finished:  # an unfinished pyramid job's arrays: ours
            for p in earlier.get("paths", []):
                if p not in listed and p in g:
                    del g[p]
        n = len(shapes) - 1
        paths = [_level_path(base, k) for k in range(1, n + 1)]
        if any(p in g for p in paths):
            tag = uuid.uuid4().hex[:8]
            paths = [_level_path(base, k, tag) for k in range(1, n + 1)]
        old = listed
    em["pyramid"] = {"job": job, "paths": paths, "complete": False, "replacing": old,
                     **({"previous": _without_previous(last)} if isinstance(last, dict) else {})}
    g.attrs["emarray"] = em
    arr0: Any = g[base]
    vols = []
    for p, shape in zip(paths, shapes[1:]):
        if p not in g:
            chunks = tuple(min(c, s) for c, s in zip(src.chunks, shape))
            g.create_array(p, shape=shape, dtype=src.dtype, chunks=chunks,
                           compressors=with_checksum(arr0.compressors), fill_value=0,
                           dimension_names=src.axes, attributes=EVERY_CHUNK)
        level: Any = g[p]
        vols.append(Volume(url=src.url, kind="zarr3", array_path=p, shape=tuple(shape),
                           dtype=src.dtype, chunks=tuple(level.chunks), shards=None,
                           axes=src.axes, voxel_size=src.voxel_size, unit=src.unit,
                           storage_options=src.storage_options))
    return vols, paths, old


def _without_previous(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "previous"}


def level_transforms(src: Volume, plan: list[tuple[int, ...]],
                     mode: str) -> list[tuple[list[float], list[float]]]:
    """Scale and translation of each new level: a window's voxel sits at the window's centre
    (half a voxel shift per factor 2), a ``nearest`` pick at its first voxel."""
    base_t = list(src.translation or (0.0,) * 3)
    out = []
    total = np.ones(3, int)
    for f in plan:
        total = total * np.array(f)
        scale = [v * t for v, t in zip(src.voxel_size, total)]
        shift = [b + (0.0 if mode == "nearest" else (t - 1) / 2 * v)
                 for b, t, v in zip(base_t, total, src.voxel_size)]
        out.append((scale, shift))
    return out


def _publish_levels(g: Any, src: Volume, paths: list[str], transforms: list, mode: str) -> None:
    attrs = dict(g.attrs)
    ms = ome.read_multiscales(attrs)
    assert ms is not None
    level0 = ms["datasets"][0]
    ms = {**ms, "datasets": [level0] + [ome.dataset_entry(p, s, t)
                                         for p, (s, t) in zip(paths, transforms)],
          "type": mode}
    o = dict(attrs.get("ome", {}))
    o["multiscales"] = [ms]
    g.attrs["ome"] = o


def _publish(src: Volume, group: Path, paths: list[str], plan: list[tuple[int, ...]],
             mode: str, job: dict[str, Any], old: list[str]) -> None:
    """List the finished levels in ``multiscales`` and mark the pyramid complete (the switch:
    before it the old levels are listed, after it the new ones), then delete the old levels."""
    g = _open_group(src)
    _publish_levels(g, src, paths, level_transforms(src, plan, mode), mode)
    em: dict[str, Any] = dict(g.attrs.get("emarray", {}))
    em["pyramid"] = {"job": job, "paths": paths, "complete": True, "replacing": old}
    g.attrs["emarray"] = em
    for p in old:
        if p not in paths and p in g:
            del g[p]
    em["pyramid"] = {"job": job, "paths": paths, "complete": True}
    g.attrs["emarray"] = em


__all__ = ["auto_factors", "plan_levels", "pyramid"]
