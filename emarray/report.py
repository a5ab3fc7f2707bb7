"""An HTML page of a run: ``WORKDIR/report.html`` after ``emarray run``, ``emarray report
WORKDIR`` to make it again, ``--report PAGE.html`` for an operator run alone.

One self-contained file (pictures inlined as PNG data, no script, nothing fetched): the recipe,
each step's time, inputs, output and summary, a few slices of each volume (labels coloured,
masks over the raw image), the figures the steps drew (sweep curve, object volumes, matching,
training curves), the matching scores, and the command that opens it all in neuroglancer.
(The training loop's own report, ``training.png``/``metrics.json``, is :mod:`emarray.training.report`.)
"""
from __future__ import annotations

import base64
import html
import json
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.checkpoint import as_folder, atomic_write
from .storage import is_remote
from .errors import EmarrayError, InvalidArgumentError

#: marks a page this module wrote: only such a page is ever replaced
GENERATOR = "emarray report"
REPORT_FILE = "report.html"


@dataclass
class StepRecord:
    """One step (or a lone operator's run) as the page shows it."""

    name: str
    op: str
    status: str
    out: str
    summary: str = ""
    seconds: float | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    started: str = ""
    inplace: bool = False


# -- what is on disk ----------------------------------------------------------------------------
def _volume(path: str) -> Any:
    from .volume import open_volume
    try:
        return open_volume(path)
    except (EmarrayError, OSError, ValueError):
        return None


def _is_store(path: Any) -> bool:
    return (path / "zarr.json").is_file()


def _where(out: str | os.PathLike) -> Any:
    """A step's output as a path: a local Path, or a RemotePath in a bucket (whose files this
    page reads with the store options; none of them is written into it)."""
    return as_folder(out)


def volumes_of(out: str) -> list[Any]:
    """The volumes a step wrote: its output, or the zarr stores in its output folder."""
    p = _where(out)
    if _is_store(p):
        return [p]
    if p.is_dir():  # raw first: what the others are drawn over
        return sorted((q for q in p.iterdir() if q.name.endswith(".zarr") and _is_store(q)),
                      key=lambda q: (q.name != "raw.zarr", q.name))
    return []


def figures_of(out: str) -> list[Any]:
    """The figures a step drew: a file output's ``.png`` beside it, a folder's ``*.png``."""
    p = _where(out)
    if p.suffix.lower() in (".csv", ".parquet") or p.is_file():
        png = p.with_suffix(".png")
        return [png] if png.is_file() else []
    if p.is_dir() and not _is_store(p):
        return sorted((q for q in p.iterdir() if q.name.endswith(".png") and q.is_file()),
                      key=lambda q: q.name)
    return []


def find_raw(steps: Sequence[StepRecord]) -> Any:
    """The raw image to draw masks and labels over: an input or output volume named raw, else
    the first uint8 image that is not a mask."""
    from .volume import is_labels
    paths: list[str] = []
    for st in steps:
        paths += [v for v in st.inputs.values() if isinstance(v, str)]
        paths += [os.fspath(v) for v in volumes_of(st.out)]
    named = [p for p in paths if Path(p).name.split(".")[0] == "raw"]
    for p in named + paths:
        if not (is_remote(p) or os.path.isdir(p)):
            continue
        vol = _volume(p)
        if vol is not None and vol.ndim == 3 and vol.dtype.name == "uint8" and \
                not is_labels(vol) and (p in named or "mask" not in Path(p).name):
            return vol
    return None


# -- the page ---------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;
background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:34px 0 10px;border-bottom:1px solid
#d8dce3;padding-bottom:4px}h3{font-size:15px;margin:20px 0 6px}
.muted{color:#5f6b7a}.ok{color:#1a7f37}.bad{color:#b42318}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px}
td,th{border:1px solid #d8dce3;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre,code{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{background:#fff;border:1px solid #d8dce3;padding:10px 12px;overflow:auto}
.cmd{background:#1d2433;color:#f6f7f9;padding:10px 14px;border-radius:6px}
figure{display:inline-block;margin:0 10px 10px 0;vertical-align:top}
figure img{display:block;border:1px solid #d8dce3;background:#000;image-rendering:pixelated}
figure.plot img{background:#fff;image-rendering:auto;max-width:540px}
figcaption{font-size:12px;color:#5f6b7a;margin-top:3px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _img(data: bytes, alt: str, caption: str, plot: bool = False) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    cls = ' class="plot"' if plot else ""
    return (f'<figure{cls}><img src="{uri}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _rel(path: str, base: Any) -> str:
    if base is None:
        return path
    if is_remote(base) or is_remote(path):  # a bucket's keys: relative only below the base
        head = os.fspath(base).rstrip("/") + "/"
        return path[len(head):] if path.startswith(head) else path
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return path


def _steps_table(steps: Sequence[StepRecord], base: Any) -> str:
    rows = []
    for k, st in enumerate(steps, 1):
        cls = "ok" if st.status == "done" else "bad"
        ins = "<br>".join(f"{_e(key)}: <code>{_e(_rel(v, base))}</code>"
                          for key, v in st.inputs.items())
        rows.append(f"<tr><td class=num>{k}</td><td><b>{_e(st.name)}</b></td>"
                    f"<td><code>{_e(st.op)}</code></td><td class={cls}>{_e(st.status)}</td>"
                    f"<td class=num>{_e(_seconds(st.seconds))}</td><td>{ins}</td>"
                    f"<td><code>{_e(_rel(st.out, base))}</code></td><td>{_e(st.summary)}</td>"
                    "</tr>")
    head = ("<tr><th>#</th><th>step</th><th>operator</th><th>status</th><th>time</th>"
            "<th>inputs</th><th>output</th><th>result</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def choose_depths(steps: Sequence[StepRecord]) -> tuple[tuple[int, ...], list[int]] | None:
    """The z slices every preview of one shape shows: where the first label (or mask)
    output has the most foreground."""
    from .preview import busiest, shows_objects
    for st in steps:
        for path in volumes_of(st.out):
            vol = _volume(os.fspath(path))
            if vol is not None and shows_objects(vol):
                return tuple(vol.shape), busiest(vol)
    return None


def _previews(st: StepRecord, raw: Any, done: set[str],
              depths: tuple[tuple[int, ...], list[int]] | None) -> str:
    from .preview import pictures
    parts = []
    for path in volumes_of(st.out):
        real = os.path.realpath(path)
        if real in done:  # a pyramid adds levels to a volume shown already
            continue
        done.add(real)
        vol = _volume(os.fspath(path))
        if vol is None:
            continue
        zs = depths[1] if depths is not None and tuple(vol.shape[-3:]) == depths[0] else None
        try:
            zs, pngs, kind = pictures(vol, raw if raw is not None and
                                      os.path.realpath(raw.url) != real else None, zs=zs)
        except (EmarrayError, OSError, ValueError) as exc:
            parts.append(f"<p class=bad>{_e(path.name)}: no preview ({_e(exc)})</p>")
            continue
        what = {"labels": "labels, one colour per object", "mask": "mask, orange",
                "image": "image"}[kind]
        parts.append(f"<h3>{_e(path.name)} <span class=muted>{_e(vol.shape)} {_e(vol.dtype)}"
                     f" · {what}</span></h3>")
        parts += [_img(p, f"{path.name} z={z}", f"z = {z}") for z, p in zip(zs, pngs)]
    return "".join(parts)


def _match_table(out: str) -> str:
    doc = _where(out) / "match.json"
    if not doc.is_file():
        return ""
    m = json.loads(doc.read_text())
    head = (f"<table><tr><th>VOI split</th><th>VOI merge</th><th>VOI</th>"
            f"<th>adapted Rand error</th><th>truth objects</th><th>predicted objects</th></tr>"
            f"<tr><td class=num>{m['voi_split']:.4f}</td><td class=num>{m['voi_merge']:.4f}</td>"
            f"<td class=num>{m['voi']:.4f}</td><td class=num>{m['adapted_rand_error']:.4f}</td>"
            f"<td class=num>{m['n_true']}</td><td class=num>{m['n_pred']}</td></tr></table>")
    rows = "".join(f"<tr><td class=num>{r['threshold']:g}</td><td class=num>{r['tp']}</td>"
                   f"<td class=num>{r['fp']}</td><td class=num>{r['fn']}</td>"
                   f"<td class=num>{r['precision']:.3f}</td><td class=num>{r['recall']:.3f}</td>"
                   f"<td class=num>{r['f1']:.3f}</td></tr>"
                   for r in m.get("matching", []))
    return head + ("<table><tr><th>IoU ≥</th><th>TP</th><th>FP</th><th>FN</th><th>precision</th>"
                   f"<th>recall</th><th>F1</th></tr>{rows}</table>" if rows else "")


def _evaluate_table(out: str) -> str:
    """The best threshold of an evaluate step, and its scores at a few thresholds."""
    doc = Path(out) / "evaluate.json"
    if not doc.is_file():
        return ""
    e = json.loads(doc.read_text())
    best, rows = e["best"], e.get("thresholds", [])
    step = max(1, len(rows) // 10)
    shown = [r for k, r in enumerate(rows) if k % step == 0 or r["threshold"] == best["threshold"]]
    body = "".join(f"<tr><td class=num>{r['threshold']:g}</td><td class=num>{r['segments']}</td>"
                   f"<td class=num>{r['voi_split']:.3f}</td><td class=num>{r['voi_merge']:.3f}</td>"
                   f"<td class=num>{r['voi']:.3f}</td>"
                   f"<td class=num>{r['adapted_rand_error']:.3f}</td></tr>" for r in shown)
    return (f"<p>best VOI {best['voi']:.4f} at threshold {best['threshold']:g} "
            f"({best['segments']:,} segments; adapted Rand error "
            f"{best['adapted_rand_error']:.4f})</p><table><tr><th>threshold</th><th>segments"
            "</th><th>VOI split</th><th>VOI merge</th><th>VOI</th><th>adapted Rand error</th>"
            f"</tr>{body}</table>")


def _resolution_table(out: str) -> str:
    """A resolution study's rows: what each factor loses."""
    doc = Path(out) / "resolution.json"
    if not doc.is_file():
        return ""
    r = json.loads(doc.read_text())
    body = "".join(f"<tr><td>{_e(x['factor'])}</td><td class=num>{x['recovered']} of "
                   f"{x['objects']}</td><td class=num>{x['volume_recovered']:.3f}</td>"
                   f"<td class=num>{x['voi']:.3f}</td><td class=num>{x['lost']}</td>"
                   f"<td class=num>{x['smallest_lost']:,}</td>"
                   f"<td class=num>{x['largest_lost']:,}</td></tr>" for x in r["levels"])
    return (f"<table><tr><th>factor</th><th>recovered (IoU ≥ {r['iou']:g})</th><th>share of "
            "the volume</th><th>VOI</th><th>lost</th><th>smallest lost</th><th>largest lost"
            f"</th></tr>{body}</table>")


def _objects_summary(out: str) -> str:
    doc = _where(out).with_suffix(".json")
    if not (_where(out).suffix.lower() in (".csv", ".parquet") and doc.is_file()):
        return ""
    s = json.loads(doc.read_text())
    v = s.get("volume_um3", {})
    return (f"<p>{s.get('count', 0):,} objects, {s.get('total_volume_um3', 0):.4g} µm³ in all; "
            f"volume median {v.get('median', 0):.4g}, mean {v.get('mean', 0):.4g}, max "
            f"{v.get('max', 0):.4g} µm³</p>")


def render(title: str, steps: Sequence[StepRecord], *, recipe: dict[str, Any] | None = None,
           view: str = "", base: Any = None, note: str = "") -> str:
    """The page (a string of HTML)."""
    from . import __version__
    raw = find_raw(steps)
    total = sum(st.seconds or 0.0 for st in steps)
    body = [f"<h1>{_e(title)}</h1>",
            f"<p class=muted>made {_e(time.strftime('%Y-%m-%d %H:%M'))} by emarray "
            f"{_e(__version__)} · {len(steps)} step{'s' if len(steps) != 1 else ''}, "
            f"{_e(_seconds(total))} of compute recorded{(' · ' + _e(note)) if note else ''}"
            "</p>"]
    if recipe and recipe.get("about"):
        body.append(f"<p>{_e(recipe['about'])}</p>")
    if view:
        body.append("<h2>Look at it</h2><p>Every volume, with the objects' tables and meshes, "
                    "in neuroglancer (served from disk on this machine):</p>"
                    f"<pre class=cmd>{_e(view)}</pre>")
    body.append("<h2>Steps</h2>" + _steps_table(steps, base))
    done: set[str] = set()
    depths = choose_depths(steps)
    for st in steps:
        section = []
        if not st.inplace:
            section.append(_previews(st, raw, done, depths))
        section.append(_objects_summary(st.out))
        if st.op == "match":
            section.append(_match_table(st.out))
        if st.op == "evaluate":
            section.append(_evaluate_table(st.out))
        if st.op == "resolution":
            section.append(_resolution_table(st.out))
        for fig in figures_of(st.out):
            section.append(_img(fig.read_bytes(), fig.name, fig.name, plot=True))
        if any(section):
            body.append(f"<h2>{_e(st.name)} <span class=muted>({_e(st.op)})</span></h2>"
                        + "".join(section))
    if recipe and recipe.get("text"):
        sets = recipe.get("sets") or []
        body.append("<h2>Recipe</h2>"
                    f"<p class=muted>{_e(recipe.get('path') or '(given as a dict)')}"
                    f"{(' with --set ' + _e(' '.join(sets))) if sets else ''}</p>"
                    f"<pre>{_e(recipe['text'])}</pre>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f'<meta name="generator" content="{GENERATOR}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
            + "".join(body) + "</main></body></html>")


# -- writing it ---------------------------------------------------------------------------------
def ours(path: Any) -> bool:
    """Whether ``path`` (a Path, or a RemotePath) is a page this module wrote."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return f'content="{GENERATOR}"'.encode() in head


def check_new_file(path: Path, flag: str, suffixes: Sequence[str],
                   inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, a file a job writes after its work (``--report``,
    ``--screenshot``) that it could not write or that would land on what the job reads or
    writes: a name without one of ``suffixes``, a folder, a folder that is missing, is a file
    or is not writable (read-only mounts included), a path that is one of ``inputs`` or lies
    inside one (links resolved)."""
    shown = os.fspath(path)
    if path.suffix.lower() not in suffixes:
        raise InvalidArgumentError(f"{flag} {shown!r} must end in {' or '.join(suffixes)}")
    parent = path.parent
    if not parent.exists():
        raise InvalidArgumentError(f"the folder of {flag} {shown!r} does not exist")
    if not parent.is_dir():
        raise InvalidArgumentError(f"the folder of {flag} {shown!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"the folder of {flag} {shown!r} is not writable")
    if path.is_dir():
        raise InvalidArgumentError(f"{flag} {shown!r} is a folder")
    real = Path(os.path.realpath(path))
    for given in inputs:
        if is_remote(given):
            continue
        other = Path(os.path.realpath(given))
        if real == other or other in real.parents:
            raise InvalidArgumentError(
                f"{flag} {shown!r} would be written {'over' if real == other else 'inside'} "
                f"{os.fspath(given)!r}, which this job reads or writes; choose another path")


def check_page(path: Any, replace: bool, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse a page path that is not ``.html``, lies in a missing or read-only folder, is or
    lies inside one of ``inputs`` (the job's inputs and output), or holds a file emarray did
    not write (or one it did, unless ``replace``). In a bucket (a RemotePath): the last two."""
    if isinstance(path, Path):
        check_new_file(path, "--report", (".html", ".htm"), inputs)
    if path.exists() or (isinstance(path, Path) and path.is_symlink()):
        if not ours(path):
            raise InvalidArgumentError(f"{path} exists and is not a report emarray wrote; "
                                       "choose another name")
        if not replace:
            raise InvalidArgumentError(f"{path} already exists; pass --overwrite to replace it")


def workdir_steps(workdir: Any) -> tuple[list[StepRecord], dict[str, Any]]:
    """The steps a pipeline's workdir records, in the order they ran, and its recipe."""
    from .pipeline.state import STATE_FILE, State
    if not (workdir / STATE_FILE).is_file():
        raise InvalidArgumentError(f"{workdir} is not a pipeline's work folder (it has no "
                                   f"{STATE_FILE}); run a recipe with emarray run first")
    from .spec import operators
    state = State(os.fspath(workdir))
    declared = operators()
    steps = []
    for name, e in state.steps.items():
        op = str(e.get("op", ""))
        inplace = op in declared and declared[op].output_kind == "inplace"
        steps.append(StepRecord(name, op or "?", str(e.get("status", "?")), str(e["out"]),
                                str(e.get("summary", "")), e.get("seconds"),
                                dict(e.get("inputs") or {}), str(e.get("started", "")),
                                inplace))
    return steps, state.recipe


def workdir_report(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Any:
    """Write the page of the pipeline run in ``workdir`` (to ``workdir/report.html`` unless
    ``out``; a workdir in a bucket: the page too, unless ``out``); return its path."""
    wd = as_folder(os.fspath(workdir).rstrip("/") if is_remote(workdir) else workdir)
    steps, recipe = workdir_steps(wd)
    path = as_folder(out) if out is not None else wd / REPORT_FILE
    check_page(path, replace=True)
    title = f"emarray run · {wd.name}"
    if is_remote(wd):  # emarray view shows a bucket's volumes, named one by one
        shown = [os.fspath(v) for st in steps if not st.inplace for v in volumes_of(st.out)]
        view = "emarray view " + " ".join(shlex.quote(v) for v in shown) if shown else ""
    else:
        view = f"emarray view {shlex.quote(os.path.abspath(wd))}"
    page = render(title, steps, recipe=recipe, base=wd, view=view)
    atomic_write(path, page.encode())
    return path


def job_report(path: str | os.PathLike, op: str, inputs: dict[str, str], out: str | None,
               summary: Sequence[str], seconds: float) -> Path:
    """Write the page of one operator's run."""
    p = Path(path)

    def full(v: str) -> str:  # a bucket's URL as it is
        return v if is_remote(v) else os.path.abspath(v)
    # view serves only what it is given: the tables too, not only the volumes beside them (and
    # the volumes in a bucket)
    shown = [full(v) for v in list(inputs.values()) + ([out] if out else [])
             if os.path.isdir(v) or (v.lower().endswith((".csv", ".parquet")) and
                                     os.path.isfile(os.path.splitext(v)[0] + ".json"))
             or (is_remote(v) and _is_store(as_folder(v)))]
    step = StepRecord(op, op, "done", full(out) if out else "", "; ".join(summary),
                      seconds, {k: full(v) for k, v in inputs.items()}, inplace=False)
    view = ("emarray view " + " ".join(shlex.quote(v) for v in shown)) if shown else ""
    atomic_write(p, render(f"emarray {op}", [step], view=view).encode())
    return p
