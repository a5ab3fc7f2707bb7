"""Per-object triangle meshes of a label volume, out of core, stitched across block faces.

1. ``mesh``: each block, read with the first voxel plane of the next block on its high sides
   (and zeros past the volume's edges, so that every surface closes), is meshed with zmesh
   (marching cubes); every object's open piece is kept in the block's piece files, and the
   driver learns which blocks each object touches.
2. ``stitch``: objects in groups: an object's pieces are joined and their shared vertices (two
   neighbouring blocks both mesh the voxel plane between them, so the edges of their pieces
   coincide) merged into one closed mesh, simplified (``reduction``) and written, either as a
   neuroglancer precomputed mesh source (``emarray view`` shows it with the segmentation) or
   one ``.ply``/``.obj`` file per object. A task holds one object's pieces at a time: memory
   follows the largest object's mesh, not the volume.

Vertices are x, y, z (the order mesh tools and neuroglancer use) at the voxel-corner
convention (voxel ``i`` spans ``[i, i + 1)`` times the voxel size, plus the volume's
translation): in nanometres in a precomputed source (neuroglancer's unit for meshes), in the
volume's own unit in ``.ply``/``.obj`` files.

Object ids are the labels' own, exact for every integer dtype (uint64 up to 2**64 - 1, int64
below 0): ``ID.ply`` is named by the id as the volume stores it (``-1.ply``). A precomputed
source names segments by unsigned ids, so labels holding negative ids are refused there, before
any mesh is written (``ply`` and ``obj`` take them).
"""
from __future__ import annotations

import io
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._normalize import id_dtype, micrometres
from ..engine import (BlockContext, BlockGrid, Checkpoint, LaterStage, Read, RunOptions, Stage,
                      run_stages)
from ..engine.checkpoint import atomic_write, load_npz, npy_rows
from ..engine.files import open_files
from ..engine.output import reading
from ..errors import InvalidArgumentError
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..volume import Volume
from ._pieces import add, concat_pairs, planned, save_plan, task_objects
from .common import as_volume

FORMATS = ("precomputed", "ply", "obj")
UNSIGNED_ONLY = ("a precomputed mesh source names segments by unsigned ids: use --format ply "
                 "or obj")


def mesh_block(labels: np.ndarray, corner: np.ndarray, voxel: np.ndarray,
               ids: frozenset[int] | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The surface pieces of every object in ``labels`` (z, y, x), whose first voxel's corner
    lies at ``corner`` (x, y, z, physical units): ``{id: (float32 x,y,z vertices, faces)}``.
    ``voxel`` is the voxel size x, y, z. Surfaces stay open where the array ends. Ids are the
    labels' own, exact for every integer dtype (zmesh names a signed id by its unsigned bits:
    it meshes the unsigned view here, and each id is read back as the labels' dtype)."""
    import zmesh
    unsigned = labels.dtype if labels.dtype.kind == "u" else np.dtype(f"u{labels.dtype.itemsize}")
    mesher = zmesh.Mesher(tuple(float(v) for v in voxel))
    mesher.mesh(labels.view(unsigned).T, close=False)  # the x, y, z view: no copy
    out = {}
    for i in mesher.ids():
        obj = int(np.array(i, unsigned).view(labels.dtype))
        if obj == 0 or (ids is not None and obj not in ids):
            continue
        m = mesher.get(int(i), normals=False, reduction_factor=0, voxel_centered=True)
        if len(m.faces):
            out[obj] = ((m.vertices + corner).astype(np.float32), m.faces.astype(np.uint32))
    mesher.clear()
    return out


# -- piece files: per block, the ids, their vertex and face counts, and the arrays -----------
def _save_pieces(base: Path, pieces: dict[int, tuple[np.ndarray, np.ndarray]],
                 dtype: np.dtype) -> None:
    ids = np.array(sorted(pieces), dtype)
    vs = [pieces[int(i)][0] for i in ids]
    fs = [pieces[int(i)][1] for i in ids]
    for suffix, parts, empty in ((".v.npy", vs, np.empty((0, 3), np.float32)),
                                 (".f.npy", fs, np.empty((0, 3), np.uint32))):
        buf = io.BytesIO()
        np.save(buf, np.concatenate(parts) if parts else empty)
        atomic_write(base.with_name(base.name + suffix), buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, ids=ids, nv=np.array([len(v) for v in vs], np.int64),
             nf=np.array([len(f) for f in fs], np.int64))
    atomic_write(base.with_name(base.name + ".npz"), buf.getvalue())  # last: the block is done


def _load_piece(base: Path, obj: int) -> tuple[np.ndarray, np.ndarray]:
    """One object's piece of a block, read from the piece files (only its rows are read)."""
    z = load_npz(base.with_name(base.name + ".npz"))
    ids, nv, nf = z["ids"], z["nv"], z["nf"]
    k = int(np.searchsorted(ids, ids.dtype.type(obj)))
    v0, f0 = int(nv[:k].sum()), int(nf[:k].sum())
    return (npy_rows(base.with_name(base.name + ".v.npy"), v0, v0 + int(nv[k])),
            npy_rows(base.with_name(base.name + ".f.npy"), f0, f0 + int(nf[k])))


def _mesh(ctx: BlockContext, labels: np.ndarray, *, voxel: np.ndarray, shift: np.ndarray,
          scratch: Path, counts: tuple[int, ...], ids: frozenset[int] | None
          ) -> tuple[np.ndarray, np.ndarray]:
    # a zero plane below a block at the volume's low edge closes the surfaces there (the high
    # edges get theirs from the read's constant boundary)
    low = [1 if r.start == 0 else 0 for r in ctx.region]
    if any(low):
        labels = np.pad(labels, [(a, 0) for a in low])
    start = np.array([r.start - a for r, a in zip(ctx.reads[0], low)], np.float64)
    corner = start[::-1] * voxel + shift
    pieces = mesh_block(labels, corner, voxel, ids)
    flat = int(np.ravel_multi_index(ctx.index, counts))
    dtype = id_dtype(labels.dtype)
    _save_pieces(scratch / str(flat), pieces, dtype)
    objs = np.array(sorted(pieces), dtype)
    return objs, np.full(objs.size, flat, np.int64)


def stitch(pieces: list[tuple[np.ndarray, np.ndarray]], voxel: np.ndarray,
           reduction: float = 0.0) -> Any:
    """One object's pieces as one ``zmesh.Mesh``: the vertices the pieces share merged, then
    simplified to about 1/``reduction`` of its triangles (0 or 1: every triangle kept)."""
    import zmesh
    verts, faces, n = [], [], 0
    for v, f in pieces:
        verts.append(v)
        faces.append(f.astype(np.int64) + n)
        n += len(v)
    m = zmesh.Mesh(np.concatenate(verts), np.concatenate(faces).astype(np.uint32), None)
    m = m.merge_close_vertices(radius=float(np.min(voxel)) * 1e-3)
    if reduction > 1 and len(m.faces) > 8:
        m = zmesh.simplify_fqmr(m, max(4, int(len(m.faces) / reduction)))
    return m


def _write(mesh: Any, obj: int, out: Path, fmt: str, to_nm: float) -> None:
    if fmt == "precomputed":
        import zmesh
        nm = zmesh.Mesh(mesh.vertices * np.float32(to_nm), mesh.faces, None)
        atomic_write(out / str(obj), nm.to_precomputed())
        atomic_write(out / f"{obj}:0", json.dumps({"fragments": [str(obj)]}).encode())
    elif fmt == "ply":
        atomic_write(out / f"{obj}.ply", mesh.to_ply())
    else:
        atomic_write(out / f"{obj}.obj", mesh.to_obj())


def _stitch(ctx: BlockContext, *, scratch: Path, out: Path, fmt: str, voxel: np.ndarray,
            reduction: float, to_nm: float) -> int:
    done = 0
    for obj, blocks in task_objects(ctx, scratch):
        pieces = [_load_piece(scratch / str(int(b)), obj) for b in blocks]
        _write(stitch(pieces, voxel, reduction), obj, out, fmt, to_nm)
        done += 1
    return done


def parse_ids(value: Any, name: str) -> Any:
    """Object ids, exact at any size (``3,17``; up to 2**64 - 1, and negative ones for signed
    labels); 0 is the background. Checked against the labels' dtype before the job starts."""
    from .._normalize import whole_number
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else (
        [value] if isinstance(value, (int, np.integer)) else value)
    out = tuple(whole_number(v, name, -(2**63), 2**64 - 1) for v in items if str(v).strip())
    if not out:
        raise InvalidArgumentError(f"{name} needs at least one id, got {value!r}")
    if 0 in out:
        raise InvalidArgumentError(f"{name}: 0 is the background, not an object")
    return out


def check_ids(ids: Any, dtype: np.dtype, url: str) -> frozenset[int] | None:
    """Refuse an id no voxel of ``dtype`` labels can hold (one line naming it)."""
    if not ids:
        return None
    info = np.iinfo(dtype)
    for i in ids:
        if not info.min <= i <= info.max:
            raise InvalidArgumentError(f"ids: {i} cannot occur in {url}, whose labels are {dtype} "
                                       f"({info.min}..{info.max})")
    return frozenset(int(i) for i in ids)


def _says(n: int, args: dict[str, Any]) -> list[str]:
    return [f"wrote {n:,} meshes in {args['dst']}"]


def info_document(lv: Volume, fmt: str) -> dict[str, Any]:
    """The mesh folder's ``info``: neuroglancer's legacy mesh type, and what emarray made it
    from (``emarray view`` finds the labels of a mesh folder there)."""
    return {"@type": "neuroglancer_legacy_mesh",
            "emarray": {"labels": os.path.realpath(lv.url) if lv.local_path else lv.url,
                        "format": fmt}}


def read_info(folder: Path) -> dict[str, Any] | None:
    """A mesh folder's ``info`` (None when ``folder`` is not one)."""
    try:
        doc = json.loads((folder / "info").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("@type") == "neuroglancer_legacy_mesh" \
        else None


SPEC = Operator(
    "mesh", "per-object triangle meshes of a label volume, stitched across blocks, as a "
            "neuroglancer precomputed source or .ply/.obj files",
    needs=("zmesh",),
    inputs=(Port("labels", "volume", "a z,y,x volume of object ids (0 = background)",
                 labels=True),),
    output=Port("dst", "folder", "the meshes: a precomputed mesh source (info, ID, ID:0) or "
                                 "one ID.ply / ID.obj per object"),
    params=(Param("format", "choice", "precomputed (for emarray view and neuroglancer), ply or "
                                      "obj", choices=FORMATS),
            Param("reduction", "float", "simplify each mesh to about 1/reduction of its "
                                        "triangles (0: keep every triangle)", minimum=0),
            Param("ids", "text", "mesh only these ids, e.g. 3,17,42 (exact at any size, up to "
                                 "2**64 - 1; negative ones for signed labels)", parse=parse_ids),
            Param("per_task", "int", "objects stitched per task", minimum=1)),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray mesh cells.zarr cells.meshes",
              "emarray mesh cells.zarr meshes/ --format ply --ids 3,17 --reduction 10"))


@SPEC.function
def mesh(labels: Volume | str | os.PathLike, dst: str | os.PathLike, *,
         format: str = "precomputed", reduction: float = 0.0, ids: Any = None,
         per_task: int = 64, options: RunOptions | None = None, **run: Any) -> int:
    """Mesh every object of ``labels`` (or only ``ids``) into the folder ``dst``; return how
    many meshes were written.

    Every mesh is closed (watertight), at the volume's edges too; an object cut by block faces
    becomes one mesh, its pieces' shared vertices merged, the same for any chunking.

    Returns
    -------
    int
        The number of meshes written.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os, trimesh
    >>> d = tempfile.mkdtemp()
    >>> a = np.zeros((8, 8, 8), np.uint32); a[2:6, 2:6, 1:7] = 7
    >>> v = emarray.create_volume(os.path.join(d, "l.zarr"), a.shape, "uint32", 4)
    >>> v.write((slice(0, 8),) * 3, a)
    >>> emarray.mesh(v, os.path.join(d, "m"), format="ply")
    1
    >>> m = trimesh.load(os.path.join(d, "m", "7.ply"))
    >>> m.is_watertight, m.bounds.tolist()  # x, y, z; voxel corners
    (True, [[1.0, 2.0, 2.0], [7.0, 6.0, 6.0]])
    """
    opts = RunOptions.make(options, **run)
    lv = as_volume(labels, opts.allow_incomplete)
    if lv.ndim != 3 or lv.dtype.kind not in "ui":
        raise InvalidArgumentError(f"mesh needs a z,y,x volume of integer ids; {lv.url} is "
                                   f"{lv.shape} {lv.dtype}")
    if 0 < reduction < 1:
        raise InvalidArgumentError(f"reduction is a factor: 0 keeps every triangle, 10 about a "
                                   f"tenth of them; got {reduction}")
    voxel = np.array(lv.voxel_size[::-1], np.float64)
    shift = np.array((lv.translation or (0.0, 0.0, 0.0))[::-1], np.float64)
    to_nm = micrometres(lv.unit) * 1000.0
    wanted = check_ids(ids, lv.dtype, lv.url)
    grid = BlockGrid(lv.shape, lv.block_shape)
    job = {"operator": "mesh", "input": lv.fingerprint(), "format": format,
           "reduction": float(reduction), "ids": [int(i) for i in ids or ()]}
    names = ("info",) if format == "precomputed" else ()
    with open_files(dst, job=job, inputs=[lv], overwrite=opts.overwrite, resume=opts.resume,
                    names=names) as target:
        if target.finished:
            return int(target.result or 0)
        scratch = target.progress / "pieces"
        checkpoint = Checkpoint(target.progress)
        with opts.runner("mesh") as runner, reading([lv]):
            runner.check_volumes([lv])
            checkpoint.start(job, inputs=[lv])
            scratch.mkdir(parents=True, exist_ok=True)
            first = Stage("mesh", partial(_mesh, voxel=voxel, shift=shift, scratch=scratch,
                                          counts=grid.counts, ids=wanted), grid,
                          [Read(lv, halo=1, sides="high", boundary="constant")],
                          combine=concat_pairs,
                          finalize=partial(save_plan, scratch=scratch, dtype=id_dtype(lv.dtype),
                                           url=lv.url, unsigned_only=UNSIGNED_ONLY
                                           if format == "precomputed" else ""))

            def build(given: dict[str, Any]) -> Stage:
                # the objects are known: a user's file of one of their names stops the job
                # here, before any mesh is stitched
                target.check_free(mesh_files(planned(scratch), format))
                n = max(1, given["objects"])
                return Stage("stitch", partial(_stitch, scratch=scratch, out=target.staging,
                                               fmt=format, voxel=voxel,
                                               reduction=float(reduction), to_nm=to_nm),
                             BlockGrid((n,), (min(per_task, n),)), combine=add)
            total = run_stages([first, LaterStage("stitch", build)], runner, checkpoint,
                               retries=opts.retries)
        files = mesh_files(planned(scratch), format)
        if format == "precomputed":
            atomic_write(target.path("info"), json.dumps(info_document(lv, format)).encode())
        target.commit(files + list(names), result=int(total or 0))
    return int(total or 0)


def mesh_files(objects: np.ndarray, fmt: str) -> list[str]:
    """The files a mesh folder holds for ``objects`` (besides a precomputed source's ``info``)."""
    if fmt == "precomputed":
        return [n for o in objects.tolist() for n in (str(o), f"{o}:0")]
    return [f"{o}.{fmt}" for o in objects.tolist()]

