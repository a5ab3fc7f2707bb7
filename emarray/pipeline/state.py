"""What a pipeline's earlier runs did: per step, a fingerprint and whether it finished.

Kept in ``WORKDIR/.emarray-pipeline.json``, rewritten by an atomic rename after every change,
so a killed run leaves either the state before or after a step's mark. A step's fingerprint
hashes its operator, arguments, output path and its inputs' fingerprints (a file input's size
and modification time), so a change anywhere upstream reaches every step after it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .recipe import Step

STATE_FILE = ".emarray-pipeline.json"
FORMAT = 1


def _stamp(path: str) -> list[Any]:
    """A file input's identity: size and mtime (for a folder, also its zarr metadata's)."""
    out: list[Any] = [path]
    for p in (path, os.path.join(path, "zarr.json"), os.path.join(path, ".zarray")):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out += [st.st_size, st.st_mtime_ns]
    return out


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
        self.path = Path(workdir) / STATE_FILE
        self.steps: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("format") == FORMAT:
            self.steps = data.get("steps", {})

    def entry(self, name: str) -> dict[str, Any] | None:
        return self.steps.get(name)

    def mark(self, name: str, status: str, fp: str, out: str, summary: str = "") -> None:
        self.steps[name] = {"status": status, "fingerprint": fp, "out": out, "summary": summary}
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "steps": self.steps}, indent=1))
        os.replace(tmp, self.path)
