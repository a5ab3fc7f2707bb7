"""What a pipeline's earlier runs did: per step, a fingerprint and whether it finished.

Kept in ``WORKDIR/.emarray-pipeline.json``, rewritten whole after every change (an atomic
rename; in a bucket, one put), so a killed run leaves either the state before or after a step's
mark. A step's fingerprint
hashes its operator, arguments, output path and its inputs' fingerprints (a file input's size
and modification time), so a change anywhere upstream reaches every step after it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ..errors import CorruptStateError
from .recipe import Step

STATE_FILE = ".emarray-pipeline.json"
FORMAT = 1


def _stamp(path: str) -> list[Any]:
    """A path input's identity. A volume: its level 0's fingerprint (metadata, voxel grid and
    every stored chunk's key, size and mtime: a chunk rewritten in place counts, pyramid levels
    added beside it do not). A file: its size and mtime. A folder: each file's."""
    from ..errors import EmarrayError
    from ..storage import is_remote
    from ..volume import open_volume
    if is_remote(path):  # a remote volume (its ETags are in `stored`)
        return [path, open_volume(path).fingerprint()]
    if any(os.path.isfile(os.path.join(path, m)) for m in ("zarr.json", ".zarray",
                                                           "attributes.json", "info")):
        try:
            return [path, open_volume(path).fingerprint()]
        except EmarrayError:
            pass  # not readable as a volume: its files are its identity
    out: list[Any] = [path]
    if os.path.isdir(path):
        import hashlib
        h = hashlib.blake2b(digest_size=16)
        for dirpath, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(dirpath, f))
                rel = os.path.relpath(os.path.join(dirpath, f), path)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return out + [h.hexdigest()]
    try:
        st = os.stat(path)
        out += [st.st_size, st.st_mtime_ns]
    except OSError:
        pass
    return out


def stored(step: Step) -> str:
    """The stored chunks of the step's path inputs that are volumes: each chunk file's key,
    size and mtime, hashed. A finished step whose input chunks were rewritten in place runs
    again; an interrupted one resumes, computing again the blocks that read them."""
    from ..errors import EmarrayError
    from ..storage import is_remote
    from ..volume import open_volume
    parts = []
    for key, (kind, *ref) in sorted(step.inputs.items()):
        if kind == "step" or not (os.path.isdir(ref[0]) or is_remote(ref[0])):
            continue
        try:
            parts.append(f"{key}:{open_volume(ref[0]).listing()['digest']}")
        except EmarrayError:
            continue
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def fingerprint(step: Step, upstream: dict[str, str]) -> str:
    """The step's identity (``upstream``: the fingerprints of the steps already planned)."""
    inputs: dict[str, Any] = {}
    for key, (kind, *ref) in sorted(step.inputs.items()):
        inputs[key] = [upstream[ref[0]], ref[1]] if kind == "step" else _stamp(ref[0])
    ident = {"op": step.op_name, "params": step.params, "out": step.out, "inputs": inputs}
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class State:
    """The state file of one workdir."""

    def __init__(self, workdir: str):
        from ..engine.checkpoint import as_folder
        self.path = as_folder(workdir) / STATE_FILE  # a local Path, or a RemotePath
        self.steps: dict[str, dict[str, Any]] = {}
        #: the recipe of the last run (path, about, text, --set values): what a report shows
        self.recipe: dict[str, Any] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CorruptStateError(f"cannot read the pipeline state {self.path}: "
                                    f"{exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            ok = data.get("format") == FORMAT and isinstance(data.get("steps"), dict) and all(
                isinstance(e, dict) and {"status", "fingerprint", "out"} <= set(e)
                for e in data["steps"].values())
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise CorruptStateError(
                f"the pipeline state {self.path} is damaged or from another emarray version: "
                "without it the outputs in this workdir cannot be told apart from files emarray "
                "did not make. Restore it, or move the workdir's outputs away and remove it to "
                "start the pipeline again")
        self.steps = data["steps"]
        self.recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else {}

    def entry(self, name: str) -> dict[str, Any] | None:
        return self.steps.get(name)

    def mark(self, name: str, status: str, fp: str, out: str, summary: str = "",
             chunks: str = "", **more: Any) -> None:
        """Record a step's status; ``more`` keeps what a report shows (``op``, ``inputs``,
        ``seconds``, ``started``)."""
        self.steps[name] = {"status": status, "fingerprint": fp, "out": out, "summary": summary,
                            "stored": chunks, **more}
        self._save()

    def set_recipe(self, recipe: dict[str, Any]) -> None:
        self.recipe = recipe
        self._save()

    def _save(self) -> None:
        from ..engine.checkpoint import atomic_write
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"format": FORMAT, "steps": self.steps,
                                            "recipe": self.recipe}, indent=1,
                                           default=str).encode())
