"""The JSON API under the page (documented in docs/gui.md), which scripts may use too.

``GET /api/operators``, ``POST /api/check`` (one field), ``POST /api/jobs``
(``{"operator": NAME, "params": {...}, "scheduler": ...}`` -> ``{"id": ...}``; a bad value:
400 with the one-line message and each field's, and no job), ``GET /api/jobs``,
``GET /api/jobs/ID``, ``POST /api/jobs/ID/stop``, ``POST /api/jobs/ID/resume``,
``GET /api/volumes``, ``GET /api/catalog``, ``GET /api/browse``, ``GET /api/thumbnail``,
``GET /api/size``, ``GET /api/table``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import EmarrayError
from ..spec import Operator, operators
from . import forms
from .state import Gui


def gui(request: Request) -> Gui:
    return request.app.state.gui


def refused(message: str, fields: dict[str, str] | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message, "fields": fields or {}}, status_code=status)


def operator(name: str) -> Operator | None:
    return operators().get(name)


async def body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


# -- operators and their forms ---------------------------------------------------------------
def api_operators(request: Request) -> JSONResponse:
    return JSONResponse([forms.describe(op) for op in operators().values()])


def api_operator(request: Request) -> JSONResponse:
    op = operator(request.path_params["name"])
    if op is None:
        return refused(f"no operator {request.path_params['name']!r}", status=404)
    return JSONResponse(forms.describe(op))


async def api_check(request: Request) -> JSONResponse:
    data = await body(request)
    op = operator(str(data.get("operator")))
    if op is None:
        return refused(f"no operator {data.get('operator')!r}", status=404)
    values = data.get("values") if isinstance(data.get("values"), dict) else {}
    message = await run_in_threadpool(forms.check_field, op, str(data.get("field")),
                                      data.get("value"), gui(request).folders, values)
    return JSONResponse({"ok": not message, "message": message})


def api_suggest(request: Request) -> JSONResponse:
    op = operator(request.query_params.get("operator", ""))
    if op is None:
        return refused("no such operator", status=404)
    try:
        path = forms.suggest_output(op, request.query_params.get("input", ""), gui(request).folders)
    except EmarrayError:  # no suggestion for a bad input (its field says why)
        path = ""
    return JSONResponse({"path": path})


def _values(data: dict[str, Any]) -> dict[str, Any]:
    """The form's values; a top-level ``scheduler`` (a name or an address) and ``workers``
    as scripts may give them."""
    values = dict(data.get("params") or {})
    sched = data.get("scheduler")
    if isinstance(sched, str) and sched:
        if "://" in sched:
            values.setdefault("where", "address")
            values.setdefault("address", sched)
        else:
            values.setdefault("where", sched)
    for key in ("workers", "slurm_config"):
        if data.get(key) is not None:
            values.setdefault(key, data[key])
    return values


async def api_submit(request: Request) -> JSONResponse:
    data = await body(request)
    op = operator(str(data.get("operator")))
    if op is None:
        return refused(f"no operator {data.get('operator')!r}: only declared operators run",
                       status=404)
    if not isinstance(data.get("params", {}), dict):
        return refused("params must be an object of field: value")
    g = gui(request)
    try:
        cmd = await run_in_threadpool(forms.command, op, _values(data), g.folders)
    except forms.FormError as exc:
        return refused(str(exc), exc.fields)
    except EmarrayError as exc:
        return refused(str(exc))
    argv = cmd.argv + (["--report={JOB}/report.html"] if cmd.report else [])
    job_id = await run_in_threadpool(
        g.jobs.create, "operator", cmd.title, argv, inputs=cmd.inputs, outputs=cmd.outputs,
        resumable=cmd.resumable, extra={"operator": op.name})
    return JSONResponse({"id": job_id})


# -- jobs --------------------------------------------------------------------------------------
async def api_jobs(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(gui(request).jobs.listing))


async def api_job(request: Request) -> JSONResponse:
    g = gui(request)
    try:
        d = g.jobs.find(request.path_params["id"])
    except EmarrayError as exc:
        return refused(str(exc), status=404)
    lines = int(request.query_params.get("log", "40") or 0)
    return JSONResponse(await run_in_threadpool(g.jobs.summary, d, lines))


async def api_act(request: Request) -> JSONResponse:
    """``POST /api/jobs/ID/stop`` and ``POST /api/jobs/ID/resume``."""
    jobs = gui(request).jobs
    act = {"stop": jobs.stop, "resume": jobs.resume}.get(request.path_params["act"])
    if act is None:
        return refused(f"a job can stop or resume, not {request.path_params['act']!r}",
                       status=404)
    try:
        state = await run_in_threadpool(act, request.path_params["id"])
    except EmarrayError as exc:
        return refused(str(exc))
    return JSONResponse({"id": request.path_params["id"], "state": state})


# -- the folders' contents ---------------------------------------------------------------------
async def api_catalog(request: Request) -> JSONResponse:
    g = gui(request)
    cat = await run_in_threadpool(g.jobs.scan.get, True)
    doc = cat.public()
    for key in ("volumes", "tables", "meshes", "models", "runs", "results", "recipes",
                "configs", "stacks"):
        for row in doc[key]:
            row["shown"] = g.folders.shown(row["path"])
    doc["folders"] = [str(r) for r in g.folders.roots]
    return JSONResponse(doc)


async def api_volumes(request: Request) -> JSONResponse:
    g = gui(request)
    cat = await run_in_threadpool(g.jobs.scan.get, True)
    return JSONResponse([{**v, "shown": g.folders.shown(v["path"])} for v in cat.volumes])


def _confined(request: Request, name: str = "path") -> Path:
    return gui(request).folders.resolve(request.query_params.get(name, ""), name)


async def api_browse(request: Request) -> JSONResponse:
    g = gui(request)
    try:
        return JSONResponse(await run_in_threadpool(g.folders.browse,
                                                    request.query_params.get("path")))
    except EmarrayError as exc:
        return refused(str(exc), status=403)


async def api_size(request: Request) -> JSONResponse:
    from .catalog import size_on_disk
    try:
        path = _confined(request)
    except EmarrayError as exc:
        return refused(str(exc), status=403)
    return JSONResponse({"path": str(path), "bytes": await run_in_threadpool(size_on_disk, path,
                                                                             10.0)})


def _thumbnail(path: Path) -> bytes:
    """One slice, at most 256 x 256 voxels read (of the finest level that fits): the middle
    one of an image, the fullest of 8 of a label volume or a mask (objects show)."""
    import numpy as np

    from ..preview import busiest, pictures
    from ..volume import is_labels, open_volume
    vol = open_volume(path)
    z = vol.shape[-3] // 2
    if vol.ndim == 3 and (is_labels(vol) or vol.dtype in (np.uint8, np.bool_)):
        z = busiest(vol, n=1, candidates=8, side=256)[0]
    return pictures(vol, zs=[z], side=256, width=144)[1][0]


async def api_thumbnail(request: Request) -> Response:
    g = gui(request)
    try:
        path = _confined(request)
        key = (str(path), os.stat(path / "zarr.json").st_mtime_ns if (path / "zarr.json").exists()
               else 0)
        png = g.thumbnails.get(key)
        if png is None:
            png = await run_in_threadpool(_thumbnail, path)
            g.thumbnails[key] = png
            while len(g.thumbnails) > 512:
                g.thumbnails.pop(next(iter(g.thumbnails)))
    except (EmarrayError, OSError, ValueError) as exc:
        return refused(str(exc), status=403 if "outside" in str(exc) else 400)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


async def api_table(request: Request) -> JSONResponse:
    from .results import read_table
    try:
        path = _confined(request)
        limit = int(request.query_params.get("limit", "2000"))
        return JSONResponse(await run_in_threadpool(read_table, path, limit))
    except (EmarrayError, OSError, ValueError) as exc:
        return refused(str(exc))


async def api_results(request: Request) -> JSONResponse:
    from .results import results
    g = gui(request)
    cat = await run_in_threadpool(g.jobs.scan.get, True)
    doc = await run_in_threadpool(results, cat)
    for rows in doc.values():
        for row in rows:
            row["shown"] = g.folders.shown(row["path"])
            for key in ("prediction", "truth", "prob", "labels"):
                if isinstance(row.get(key), str):
                    row[f"{key}_shown"] = g.folders.shown(row[key])
    return JSONResponse(doc)


ROUTES = [
    Route("/api/results", api_results),
    Route("/api/operators", api_operators),
    Route("/api/operators/{name}", api_operator),
    Route("/api/check", api_check, methods=["POST"]),
    Route("/api/suggest", api_suggest),
    Route("/api/jobs", api_jobs),
    Route("/api/jobs", api_submit, methods=["POST"]),
    Route("/api/jobs/{id}", api_job),
    Route("/api/jobs/{id}/{act}", api_act, methods=["POST"]),
    Route("/api/catalog", api_catalog),
    Route("/api/volumes", api_volumes),
    Route("/api/browse", api_browse),
    Route("/api/size", api_size),
    Route("/api/thumbnail", api_thumbnail),
    Route("/api/table", api_table),
]
