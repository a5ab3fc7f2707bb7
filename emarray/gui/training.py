"""The Train page: the training config's fields as a form (the same schema, defaults and
checks as ``emarray train``: :mod:`emarray.training.config`), the run's live loss and
validation curves from its ``metrics.csv``, and its model files one click from ``predict``.

A form becomes ``--set``-style assignments (each value read as YAML, as ``emarray train --set``
reads it), checked whole by :func:`~emarray.training.config.load_config`; the message goes to
the field it names. The job is ``emarray train JOB/config.yaml`` (``--resume`` to go on).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import EmarrayError, InvalidArgumentError
from ..training.config import CHOICES, DEFAULTS, PATHS, load_config
from .places import Folders

#: the fields shown first (the rest, by section, under "all settings")
ESSENTIAL = ("data.raw", "data.labels", "out", "steps", "patch", "batch", "validation.region",
             "validation.every", "model.file", "model.depth", "model.filters", "device")
HELP = {
    "out": "the run's folder: checkpoints (model.pt, best.pt), metrics.csv, training.png",
    "data.raw": "the raw volume to learn from (several: [a.zarr, b.zarr])",
    "data.labels": "its labels, of the same shape (0 = background)",
    "data.mask": "optional: where the labels are annotated (nonzero)",
    "steps": "training steps", "batch": "patches per step",
    "patch": "z,y,x network input (default: the model's)",
    "validation.region": "z0:z1,y0:y1,x0:x1 of the first raw volume held out for validation",
    "validation.every": "steps between evaluations (the validation curve's points)",
    "model.file": "start from a model file's weights instead of a new net",
    "device": "auto: CUDA where there is one", "threads": "PyTorch threads (default: every core)",
}


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(_text(x) for x in v)
    return str(v)


def fields() -> list[dict[str, Any]]:
    """Every key of the config as a field, essentials first."""
    out = []

    def walk(d: dict[str, Any], pre: str) -> None:
        for k, v in d.items():
            key = f"{pre}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
                continue
            widget = "choice" if key in CHOICES else "flag" if isinstance(v, bool) else \
                "path" if key in PATHS else "text"
            out.append({"name": key, "section": key.split(".")[0] if "." in key else "run",
                        "widget": widget, "choices": list(CHOICES.get(key, ())),
                        "default": _text(v), "help": HELP.get(key, ""),
                        "kind": "model" if key == "model.file" else "folder" if key == "out"
                        else "volume", "essential": key in ESSENTIAL,
                        "required": key in ("out", "data.raw", "data.labels")})
    walk(DEFAULTS, "")
    return sorted(out, key=lambda f: (not f["essential"], ESSENTIAL.index(f["name"])
                                      if f["essential"] else 0))


def field_of(message: str) -> str | None:
    """The config key an error message names (the longest that fits)."""
    names = sorted((f["name"] for f in fields()), key=len, reverse=True)
    for n in names:
        if message.startswith((f"{n}:", f"{n} ", f"config '{n}'")) or f"'{n}'" in message:
            return n
    if message.startswith("data.raw and data.labels"):
        return "data.raw"
    return None


def _value(text: Any, key: str, folders: Folders) -> str:
    """A field's text as a --set value (paths confined to the folders; several in [a, b])."""
    t = text.strip() if isinstance(text, str) else _text(text)
    if key in PATHS and t:
        if t.startswith("["):
            parts = [p.strip() for p in t.strip("[]").split(",") if p.strip()]
            return "[" + ", ".join(_quote(str(folders.resolve(p, key))) for p in parts) + "]"
        return _quote(str(folders.resolve(t, key)))
    return t


def _quote(path: str) -> str:
    import json
    return json.dumps(path)


def config_of(values: dict[str, Any], folders: Folders) -> tuple[dict[str, Any],
                                                                 dict[str, Any]]:
    """The form's values as (the config given, the whole checked config); a bad value is
    :class:`~emarray.gui.forms.FormError` at the field it names."""
    from .._yaml import set_value
    from .forms import FormError
    known = {f["name"]: f for f in fields()}
    given: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, text in values.items():
        if key == "overwrite":
            continue
        if key not in known:
            errors[key] = f"unknown config key {key!r}"
            continue
        if text is None or (isinstance(text, str) and not text.strip()):
            continue
        try:
            set_value(given, f"{key}={_value(text, key, folders)}")
        except EmarrayError as exc:
            errors[key] = str(exc)
    if errors:
        raise FormError(errors)
    try:
        full = load_config(given)
    except EmarrayError as exc:
        raise FormError({field_of(str(exc)) or "form": str(exc)}) from None
    out = Path(full["out"])
    try:
        folders.resolve(out, "out")
    except EmarrayError as exc:
        raise FormError({"out": str(exc)}) from None
    if out.exists() and not values.get("overwrite"):
        raise FormError({"out": f"{given.get('out')!r} already exists; tick overwrite to replace "
                                "that run (an interrupted run resumes from the Jobs page)"})
    return given, full


def metrics(run: Path) -> dict[str, Any]:
    """A run's ``metrics.csv`` (what it logged so far), best evaluation and model files."""
    import json

    from .results import read_table
    out: dict[str, Any] = {"run": str(run), "columns": [], "rows": [], "best": None,
                           "models": [str(run / m) for m in ("best.pt", "model.pt")
                                      if (run / m).is_file()], "raw": None}
    if (run / "metrics.csv").is_file():
        out.update({k: v for k, v in read_table(run / "metrics.csv", 100000).items()
                    if k in ("columns", "rows")})
    try:
        doc = json.loads((run / "metrics.json").read_text())
        out["best"], out["stopped"] = doc.get("best"), doc.get("stopped")
    except (OSError, ValueError):
        pass
    try:
        import yaml
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        raw = (cfg.get("data") or {}).get("raw")
        out["raw"] = raw[0] if isinstance(raw, list) else raw
    except (OSError, ValueError, AttributeError):
        pass
    return out


def given_of(path: Path) -> dict[str, str]:
    """A config file's values as the form's fields (to start from it)."""
    from .._yaml import read_mapping
    cfg = read_mapping(path, "training config")
    flat: dict[str, str] = {}

    def walk(d: dict[str, Any], pre: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{pre}{k}.")
            else:
                key = f"{pre}{k}"
                if key in PATHS and v is not None:
                    vals = v if isinstance(v, list) else [v]
                    vals = [x if os.path.isabs(str(x)) else os.path.normpath(path.parent / str(x))
                            for x in vals]
                    flat[key] = str(vals[0]) if len(vals) == 1 else "[" + ", ".join(vals) + "]"
                else:
                    flat[key] = _text(v)
    walk(cfg, "")
    return flat


# -- routes ---------------------------------------------------------------------------------
def train_page(request: Request) -> Response:
    from .pages import page
    return page(request, "train.html", fields=fields(),
                sections=["run", "data", "model", "sampling", "augment", "loss", "optimizer",
                          "schedule", "validation"])


async def _form(request: Request) -> dict[str, Any]:
    from .api import body
    data = await body(request)
    values = data.get("values")
    return values if isinstance(values, dict) else {}


async def api_check(request: Request) -> JSONResponse:
    from .forms import FormError
    g = request.app.state.gui
    values = await _form(request)
    try:
        await run_in_threadpool(config_of, values, g.folders)
    except FormError as exc:
        return JSONResponse({"ok": False, "fields": exc.fields})
    return JSONResponse({"ok": True, "fields": {}})


async def api_train(request: Request) -> JSONResponse:
    import yaml

    from .api import refused
    from .forms import FormError
    g = request.app.state.gui
    values = await _form(request)
    try:
        given, full = await run_in_threadpool(config_of, values, g.folders)
    except FormError as exc:
        return refused(str(exc), exc.fields)
    argv = ["train", "{JOB}/config.yaml"] + (["--overwrite"] if values.get("overwrite") else [])
    raw = full["data"]["raw"]
    job_id = await run_in_threadpool(
        g.jobs.create, "train", f"train {Path(full['out']).name}", argv,
        inputs=list(raw) + list(full["data"]["labels"]), outputs=[full["out"]], resumable=True,
        extra={"run": full["out"]}, files={"config.yaml": yaml.safe_dump(given, sort_keys=False)})
    return JSONResponse({"id": job_id})


async def api_metrics(request: Request) -> JSONResponse:
    from .api import refused
    g = request.app.state.gui
    try:
        run = g.folders.resolve(request.query_params.get("run", ""), "run")
    except EmarrayError as exc:
        return refused(str(exc), status=403)
    return JSONResponse(await run_in_threadpool(metrics, run))


async def api_config(request: Request) -> JSONResponse:
    from .api import refused
    from .recipes import recipe_path
    g = request.app.state.gui
    try:
        path = recipe_path(request.query_params.get("path", ""), g.folders, "training config")
        given = await run_in_threadpool(given_of, path)
    except (EmarrayError, InvalidArgumentError) as exc:
        return refused(str(exc))
    try:  # a packaged config's out (../emarray-train-...) is not for these folders
        g.folders.resolve(given.get("out", ""), "out")
    except EmarrayError:
        given.pop("out", None)
    return JSONResponse(given)


async def api_configs(request: Request) -> JSONResponse:
    """The training configs that come with emarray and those in the folders."""
    from .catalog import yaml_kind
    from .recipes import packaged
    g = request.app.state.gui
    cat = await run_in_threadpool(g.jobs.scan.get)
    rows = [{"path": str(p), "shown": f"pipelines/{p.name}"} for p in packaged()
            if yaml_kind(p) == "training"]
    rows += [{"path": c["path"], "shown": g.folders.shown(c["path"])} for c in cat.configs
             if c["kind"] == "training"]
    return JSONResponse(rows)


ROUTES = [
    Route("/train", train_page),
    Route("/api/train/check", api_check, methods=["POST"]),
    Route("/api/train", api_train, methods=["POST"]),
    Route("/api/train/metrics", api_metrics),
    Route("/api/train/config", api_config),
    Route("/api/train/configs", api_configs),
]
