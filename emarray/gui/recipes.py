"""The Recipes page: a recipe from the package's ``pipelines/`` or the folders, its variables
changed (as ``emarray run --set VAR=VALUE``), its plan and each step's state
(:func:`emarray.pipeline.execute.plan`, what ``--dry-run`` prints), run as the job
``emarray run RECIPE --workdir W --set ...`` (``--resume`` to finish an interrupted one).

A recipe's outputs (its work folder) must be inside the served folders, and so must the
files it reads; a recipe is read from the folders or from the ``pipelines/`` folder beside
the package, nowhere else.
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
from ..spec import ENGINE
from .forms import FormError, where_args, where_fields
from .places import Folders

#: the recipes that come with emarray (a source checkout's pipelines/)
PACKAGED = Path(__file__).resolve().parents[2] / "pipelines"


def packaged() -> list[Path]:
    return sorted(PACKAGED.glob("*.yaml")) if PACKAGED.is_dir() else []


def recipe_path(text: str, folders: Folders, what: str = "recipe") -> Path:
    """A recipe (or config) the gui may read: inside the folders, or one that comes with
    emarray."""
    real = Path(os.path.realpath(text)) if text else None
    if real is not None and real in [p.resolve() for p in packaged()]:
        return real
    path = folders.resolve(text, what)
    if not path.is_file():
        raise InvalidArgumentError(f"no {what} at {text!r}")
    return path


def listing(cat: Any, folders: Folders) -> list[dict[str, Any]]:
    """Every recipe: those that come with emarray, then those in the folders."""
    import yaml

    from .catalog import yaml_kind
    out = []
    for p in packaged() + [Path(r["path"]) for r in cat.recipes]:
        if yaml_kind(p) != "recipe":
            continue  # (pipelines/ holds training configs too)
        doc = yaml.safe_load(p.read_text())
        out.append({"path": str(p), "name": p.stem, "about": str(doc.get("about") or ""),
                    "packaged": p.parent == PACKAGED,
                    "shown": f"pipelines/{p.name}" if p.parent == PACKAGED else folders.shown(p)})
    return out


def default_workdir(path: Path, folders: Folders) -> str:
    """Where a recipe writes unless told: its own work folder when that is inside the
    folders, else FOLDER/work/NAME."""
    import yaml
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        wd = doc.get("workdir")
        if isinstance(wd, str):
            real = Path(os.path.realpath(path.parent / wd))
            folders.resolve(real)
            return str(real)
    except (OSError, yaml.YAMLError, EmarrayError):
        pass
    return str(folders.roots[0] / "work" / path.stem)


def describe(path: Path, folders: Folders) -> dict[str, Any]:
    """A recipe as the page shows it: about, variables with their values, text, the default
    work folder and the "where to run" fields."""
    import yaml
    from dataclasses import asdict
    text = path.read_text()
    doc = yaml.safe_load(text) or {}
    given = doc.get("vars")
    variables: dict[str, Any] = given if isinstance(given, dict) else {}
    return {"path": str(path), "name": path.stem, "about": str(doc.get("about") or ""),
            "text": text, "vars": {k: "" if v is None else str(v) for k, v in variables.items()},
            "steps": list((doc.get("steps") or {}).keys()),
            "workdir": default_workdir(path, folders),
            "where": [asdict(f) for f in where_fields(ENGINE)]}


def _sets(values: dict[str, Any], variables: dict[str, Any]) -> list[str]:
    out = []
    for k, v in (values.get("vars") or {}).items():
        if k not in variables:
            raise FormError({f"var-{k}": f"the recipe has no variable {k!r}"})
        if v is not None and str(v).strip() != "" and str(v).strip() != variables[k]:
            out.append(f"{k}={str(v).strip()}")
    return out


def plan_of(path: Path, values: dict[str, Any], folders: Folders) -> dict[str, Any]:
    """The recipe with the page's values: every step, what a run would do with it and why,
    and the job's command line (``FormError``: what is wrong, at its field)."""
    from ..pipeline.execute import plan
    from ..pipeline.recipe import load_recipe
    from ..pipeline.state import State
    info = describe(path, folders)
    sets = _sets(values, info["vars"])
    wd_text = str(values.get("workdir") or info["workdir"]).strip()
    try:
        workdir = folders.resolve(wd_text, "workdir")
    except EmarrayError as exc:
        raise FormError({"workdir": str(exc)}) from None
    try:
        recipe = load_recipe(path, tuple(sets), workdir=workdir)
        planned = plan(recipe, State(recipe.workdir), resume=True)
    except EmarrayError as exc:
        field = next((f"var-{k}" for k in info["vars"] if f"{k}" in str(exc).split(":")[0]),
                     "form")
        raise FormError({field: str(exc)}) from None
    for st in recipe.steps:
        for key, (kind, *ref) in st.inputs.items():
            if kind == "path":
                try:
                    folders.resolve(ref[0], f"step {st.name!r} {key}")
                except EmarrayError as exc:
                    raise FormError({"form": f"{exc}: serve its folder too (emarray gui "
                                             "FOLDER OTHER-FOLDER)"}) from None
    errors: dict[str, str] = {}
    run = where_args(values.get("where") or {}, ENGINE, folders, errors)
    if errors:
        raise FormError(errors)
    resume = any(p.action == "resume" for p in planned)
    steps = [{"name": p.step.name, "op": p.step.op_name, "action": p.action, "why": p.why,
              "out": p.step.out, "summary": p.summary} for p in planned]
    argv = ["run", str(path), f"--workdir={workdir}", *[f"--set={s}" for s in sets], *run]
    return {"steps": steps, "workdir": str(workdir), "argv": argv, "resume": resume,
            "outputs": [str(workdir)]}


# -- routes ---------------------------------------------------------------------------------
def recipes_page(request: Request) -> Response:
    from .pages import page
    return page(request, "recipes.html")


async def api_recipes(request: Request) -> JSONResponse:
    g = request.app.state.gui
    cat = await run_in_threadpool(g.jobs.scan.get)
    return JSONResponse(listing(cat, g.folders))


async def api_recipe(request: Request) -> JSONResponse:
    from .api import refused
    g = request.app.state.gui
    try:
        path = recipe_path(request.query_params.get("path", ""), g.folders)
        return JSONResponse(await run_in_threadpool(describe, path, g.folders))
    except EmarrayError as exc:
        return refused(str(exc), status=403 if "outside" in str(exc) else 400)


async def _planned(request: Request) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    from .api import body
    g = request.app.state.gui
    data = await body(request)
    given = data.get("values")
    values: dict[str, Any] = given if isinstance(given, dict) else {}
    try:
        path = recipe_path(str(data.get("path", "")), g.folders)
    except EmarrayError as exc:
        raise FormError({"form": str(exc)}) from None
    return path, values, await run_in_threadpool(plan_of, path, values, g.folders)


async def api_plan(request: Request) -> JSONResponse:
    try:
        _, _, planned = await _planned(request)
    except FormError as exc:
        return JSONResponse({"ok": False, "fields": exc.fields, "error": str(exc)})
    return JSONResponse({"ok": True, **planned})


async def api_run(request: Request) -> JSONResponse:
    from .api import refused
    g = request.app.state.gui
    try:
        path, _, planned = await _planned(request)
    except FormError as exc:
        return refused(str(exc), exc.fields)
    argv = planned["argv"] + (["--resume"] if planned["resume"] else [])
    job_id = await run_in_threadpool(
        g.jobs.create, "recipe", f"recipe {path.stem}", argv, inputs=[str(path)],
        outputs=planned["outputs"], resumable=True, extra={"workdir": planned["workdir"]})
    return JSONResponse({"id": job_id})


ROUTES = [
    Route("/recipes", recipes_page),
    Route("/api/recipes", api_recipes),
    Route("/api/recipe", api_recipe),
    Route("/api/recipes/plan", api_plan, methods=["POST"]),
    Route("/api/recipes/run", api_run, methods=["POST"]),
]
