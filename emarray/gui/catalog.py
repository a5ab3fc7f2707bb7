"""What the served folders hold: volumes, tables, mesh folders, models, training runs,
evaluation results, recipes, stacks to ingest, and what interrupted or running jobs left.

One walk over the folders reads only small metadata files (a volume's ``zarr.json`` and its
first level's), never chunks: a thousand volumes list in well under two seconds. It does not
go into volumes, hidden folders (a job's progress, the gui's own records) or links that leave
the folders; it notes the lock files (``.NAME.emarray-lock``) and staging folders
(``.NAME.emarray-new``) beside outputs, which tell of jobs started anywhere.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.output import LOCK_SUFFIX, NEW_SUFFIX
from ..volume import LABEL_DTYPES
from .places import Folders

MAX_DEPTH = 8
STACK_SUFFIXES = (".tif", ".tiff", ".h5", ".hdf5", ".png")
TABLE_SUFFIXES = (".csv", ".parquet")
RESULT_FILES = {"sweep.json": "sweep", "match.json": "match"}


def _json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@dataclass
class Catalog:
    """The result of one walk (see the module's docs)."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    meshes: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    recipes: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    stacks: list[dict[str, Any]] = field(default_factory=list)
    locks: list[Path] = field(default_factory=list)
    staging: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        """What ``GET /api/catalog`` gives (no lock or staging internals)."""
        return {k: getattr(self, k) for k in ("volumes", "tables", "meshes", "models", "runs",
                                              "results", "recipes", "configs", "stacks",
                                              "seconds")}


def _scale(ds: dict[str, Any]) -> list[float] | None:
    for t in ds.get("coordinateTransformations", []) or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            return [float(v) for v in t.get("scale", [])]
    return None


def _chunks(meta: dict[str, Any]) -> tuple[list[int] | None, list[int] | None]:
    """(chunks, shards) of a zarr v3 array's metadata."""
    outer = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
    for c in meta.get("codecs", []) or []:
        if isinstance(c, dict) and c.get("name") == "sharding_indexed":
            return c.get("configuration", {}).get("chunk_shape"), outer
    return outer, None


def describe_store(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """A volume's row from its ``zarr.json`` (an OME-Zarr image or a bare array), or None when
    the store is a plain group (a folder of volumes)."""
    attrs = meta.get("attributes") or {}
    ome = attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    levels: list[str] = []
    voxel, unit, axes = None, "", None
    if meta.get("node_type") == "array":
        arr = meta
    elif isinstance(ms, list) and ms and isinstance(ms[0], dict) and ms[0].get("datasets"):
        datasets = ms[0]["datasets"]
        levels = [str(d.get("path")) for d in datasets]
        axes_meta = ms[0].get("axes") or []
        axes = [a.get("name") if isinstance(a, dict) else str(a) for a in axes_meta]
        units = [a.get("unit") for a in axes_meta if isinstance(a, dict) and a.get("type") == "space"]
        unit = units[0] if units and units[0] else ""
        scale = _scale(datasets[0])
        if scale and axes:
            voxel = [s for s, a in zip(scale, axes) if a in ("z", "y", "x")]
        arr = _json(path / levels[0] / "zarr.json") or {}
    else:
        return None
    em = attrs.get("emarray") if isinstance(attrs, dict) else None
    em = em if isinstance(em, dict) else {}
    job = em.get("job") if isinstance(em.get("job"), dict) else None
    dtype = str(arr.get("data_type", "?"))
    chunks, shards = _chunks(arr)
    marked = (isinstance(ome, dict) and "image-label" in ome) or bool(em.get("labels"))
    return {"path": str(path), "name": path.name, "shape": arr.get("shape"), "dtype": dtype,
            "chunks": chunks, "shards": shards, "voxel_size": voxel, "unit": unit,
            "axes": axes or arr.get("dimension_names"), "levels": levels,
            "labels": dtype.startswith(("uint", "int")) and (marked or dtype in LABEL_DTYPES),
            "made_by": job.get("operator") if job else None,
            "unfinished": bool(job) and not em.get("complete")}


def _other_format(path: Path) -> dict[str, Any] | None:
    """A zarr v2 or N5 volume's row (read through emarray's own opening, which knows them)."""
    try:
        from ..volume import open_volume
        v = open_volume(path)
    except Exception:
        return None
    return {"path": str(path), "name": path.name, "shape": list(v.shape), "dtype": str(v.dtype),
            "chunks": list(v.chunks), "shards": None, "voxel_size": list(v.voxel_size),
            "unit": v.unit, "axes": list(v.axes), "levels": list(v.levels),
            "labels": False, "made_by": None, "unfinished": False, "format": v.kind}


class _Walk:
    def __init__(self, folders: Folders):
        self.folders = folders
        self.cat = Catalog()
        self.seen: set[Path] = set()

    def inside(self, path: Path) -> Path | None:
        real = Path(os.path.realpath(path))
        return real if any(real == r or r in real.parents for r in self.folders.roots) else None

    def folder(self, d: Path, depth: int) -> None:
        real = self.inside(d)
        if real is None or real in self.seen or depth > MAX_DEPTH:
            return
        self.seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            p = Path(e.path)
            if e.name.startswith("."):
                if e.name.endswith(LOCK_SUFFIX) and e.is_file(follow_symlinks=False):
                    self.cat.locks.append(p)
                elif e.name.endswith(NEW_SUFFIX) and e.is_dir(follow_symlinks=False):
                    self.cat.staging.append(p)
                continue
            if e.is_symlink() and self.inside(p) is None:
                continue  # a link that leaves the folders is not followed
            if e.is_dir():
                self.directory(p, depth)
            elif e.is_file():
                self.file(p)

    def directory(self, p: Path, depth: int) -> None:
        meta = _json(p / "zarr.json") if (p / "zarr.json").is_file() else None
        if meta is not None:
            row = describe_store(p, meta)
            if row is not None:
                self.cat.volumes.append(row)
                self.nested(p, set(row["levels"]))
                return
        elif (p / ".zarray").is_file() or (p / "attributes.json").is_file() or \
                p.suffix == ".n5":
            row = _other_format(p)
            if row is not None:
                self.cat.volumes.append(row)
                return
        info = _json(p / "info") if (p / "info").is_file() else None
        if isinstance(info, dict) and info.get("@type") == "neuroglancer_legacy_mesh":
            labels = (info.get("emarray") or {}).get("labels")
            self.cat.meshes.append({"path": str(p), "name": p.name, "labels": labels,
                                    "objects": sum(1 for q in os.scandir(p)
                                                   if q.name.isdigit())})
            return
        if (p / "emarray-train.json").is_file():
            self.run(p)
            return
        for name, kind in RESULT_FILES.items():
            if (p / name).is_file():
                self.cat.results.append({"path": str(p), "name": p.name, "kind": kind})
                return
        self.folder(p, depth + 1)

    def nested(self, store: Path, levels: set[str]) -> None:
        """Images kept inside a volume (agglomerate's other thresholds, DST/t0.3)."""
        for e in os.scandir(store):
            if e.is_dir() and not e.name.startswith(".") and e.name not in levels and \
                    (Path(e.path) / "zarr.json").is_file():
                row = describe_store(Path(e.path), _json(Path(e.path) / "zarr.json") or {})
                if row is not None:
                    row["inside"] = str(store)
                    self.cat.volumes.append(row)

    def run(self, p: Path) -> None:
        metrics = _json(p / "metrics.json") or {}
        self.cat.runs.append({"path": str(p), "name": p.name,
                              "steps": metrics.get("steps"), "of": metrics.get("of"),
                              "best": metrics.get("best"),
                              "models": [str(p / m) for m in ("best.pt", "model.pt")
                                         if (p / m).is_file()]})
        for m in ("best.pt", "model.pt"):
            if (p / m).is_file():
                self.cat.models.append({"path": str(p / m), "name": f"{p.name}/{m}",
                                        "run": str(p)})

    def file(self, p: Path) -> None:
        suffix = p.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            summary = _json(p.with_suffix(".json"))
            labels = summary.get("labels") if isinstance(summary, dict) else None
            self.cat.tables.append({"path": str(p), "name": p.name, "labels": labels,
                                    "kind": "objects" if labels else "table"})
        elif suffix == ".pt":
            self.cat.models.append({"path": str(p), "name": p.name, "run": None})
        elif suffix in (".yaml", ".yml"):
            self.yaml(p)
        elif suffix in STACK_SUFFIXES:
            self.cat.stacks.append({"path": str(p), "name": p.name})

    def yaml(self, p: Path) -> None:
        kind = yaml_kind(p)
        if kind == "recipe":
            self.cat.recipes.append({"path": str(p), "name": p.name})
        elif kind is not None:
            self.cat.configs.append({"path": str(p), "name": p.name, "kind": kind})


def yaml_kind(p: Path) -> str | None:
    """What a YAML file is: a recipe (``steps:`` of steps), a training config (a ``data:``
    section), a SLURM config, or None (anything else, or too large to be one)."""
    import yaml
    try:
        if p.stat().st_size > 1 << 20:
            return None
        doc = yaml.safe_load(p.read_text(errors="replace"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("steps"), dict):
        return "recipe"
    if isinstance(doc.get("data"), dict):
        return "training"
    if isinstance(doc.get("slurm"), dict) or "partition" in doc:
        return "slurm"
    return None


def scan(folders: Folders) -> Catalog:
    """Walk the folders once (see the module's docs)."""
    t0 = time.monotonic()
    w = _Walk(folders)
    for r in folders.roots:
        w.folder(r, 0)
    # a folder of 2D slices (two or more images) is one stack: ingest reads the folder; a
    # TIFF or HDF5 file elsewhere is a stack of its own (a multi-page TIFF, a dataset)
    per_dir: dict[str, int] = {}
    for st in w.cat.stacks:
        if Path(st["path"]).suffix.lower() in (".tif", ".tiff", ".png"):
            d = str(Path(st["path"]).parent)
            per_dir[d] = per_dir.get(d, 0) + 1
    dirs = sorted(d for d, n in per_dir.items() if n >= 2)
    files = [st for st in w.cat.stacks if str(Path(st["path"]).parent) not in dirs
             and Path(st["path"]).suffix.lower() != ".png"]
    w.cat.stacks = [{"path": d, "name": Path(d).name + "/", "folder": True} for d in dirs] + files
    w.cat.seconds = round(time.monotonic() - t0, 3)
    return w.cat


class CachedScan:
    """:func:`scan`, kept for ``ttl`` seconds (the Jobs page asks every second)."""

    def __init__(self, folders: Folders, ttl: float = 3.0):
        self.folders, self.ttl = folders, ttl
        self._at, self._cat = 0.0, Catalog()
        self._lock = threading.Lock()

    def get(self, fresh: bool = False) -> Catalog:
        with self._lock:
            if fresh or time.monotonic() - self._at > self.ttl:
                self._cat = scan(self.folders)
                self._at = time.monotonic()
            return self._cat


def size_on_disk(path: str | Path, budget: float = 2.0) -> int | None:
    """Bytes under ``path`` (None when counting takes longer than ``budget`` seconds)."""
    t0 = time.monotonic()
    total = 0
    for dirpath, _dirs, files in os.walk(os.fspath(path)):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
        if time.monotonic() - t0 > budget:
            return None
    return total
