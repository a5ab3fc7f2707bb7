"""The run folder of a training job: made safely, replaced safely, resumed from.

``OUT/state.pt`` is the one resume point: weights, optimizer, schedule, step, early-stopping
state and the metrics so far, written beside itself and renamed over the old one. ``model.pt``
(the latest weights) and ``best.pt`` (the best validation) are model files ``predict`` loads.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..engine.output import (OLD_SUFFIX, OutputLock, check_writable, remove_path, sibling,
                             check_no_overlap, real_path)
from ..errors import InvalidArgumentError, OutputExistsError, ResumeMismatchError

MARKER = "emarray-train.json"
STATE = "state.pt"
OURS = {MARKER, STATE, "model.pt", "best.pt", "config.yaml", "metrics.csv", "metrics.json",
        "training.png", "validation", "tensorboard"}


def _old(path: Path) -> Path:
    return sibling(path, OLD_SUFFIX)


class RunFolder:
    """``OUT``, locked for the job. ``overwrite`` keeps an old run aside until the new one has
    its first checkpoint (then :meth:`checkpointed` removes it); a run killed before that finds
    the old one put back."""

    def __init__(self, out: str | os.PathLike, inputs: list[Any], *, resume: bool, overwrite: bool):
        if resume and overwrite:
            raise InvalidArgumentError("choose either overwrite or resume, not both")
        self.shown = os.fspath(out)
        self.path = real_path(out)
        check_no_overlap(self.path, inputs, self.shown)
        check_writable(self.path, self.shown)
        if self.path.exists() and not self.path.is_dir():
            raise InvalidArgumentError(f"out {self.shown!r} is a file, not a folder")
        self.resume, self.overwrite = resume, overwrite
        self.lock = OutputLock(self.path, self.shown)

    def open(self) -> None:
        self.lock.acquire()
        try:
            self._recover()
            p = self.path
            if self.resume:
                if not (p / STATE).is_file():
                    raise InvalidArgumentError(
                        f"nothing to resume in {self.shown!r}: it holds no {STATE} (a run "
                        "writes one at its first checkpoint)")
                return
            if p.exists():
                if not self.overwrite:
                    raise OutputExistsError(
                        f"{self.shown!r} already exists; pass --overwrite to replace that run or "
                        "--resume to continue it")
                self._check_ours()
                os.rename(p, _old(p))
            p.mkdir()
            (p / MARKER).write_text(json.dumps({"format": "emarray-train", "version": 1}))
        except BaseException:
            self.lock.release()
            raise

    def _check_ours(self) -> None:
        p = self.path
        if not (p / MARKER).is_file():
            raise InvalidArgumentError(
                f"refusing to overwrite {self.shown!r}: it is not a training run emarray made")
        foreign = sorted(e.name for e in p.iterdir() if e.name not in OURS)
        if foreign:
            raise InvalidArgumentError(
                f"refusing to overwrite {self.shown!r}: it holds files emarray did not write "
                f"({', '.join(foreign[:5])}); move them away or choose another out")

    def _recover(self) -> None:
        old = _old(self.path)
        if not old.exists():
            return
        if not (self.path / STATE).is_file():   # the replacement never reached a checkpoint
            if self.path.exists():
                remove_path(self.path)
            os.rename(old, self.path)
            logging.getLogger("emarray").warning(
                "%s: put back the run an interrupted --overwrite had set aside", self.shown)
        else:
            remove_path(old)

    def checkpointed(self) -> None:
        old = _old(self.path)
        if old.exists():
            remove_path(old)

    def close(self) -> None:
        self.lock.release()


def check_same_run(saved: dict[str, Any], now: dict[str, Any], shown: str) -> None:
    """A resume continues the same run: only ``steps`` may differ (to train longer)."""
    def flat(d: dict[str, Any], pre: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
        return out
    a, b = flat(saved), flat(now)
    for key in sorted(set(a) | set(b)):
        if key in ("steps", "out") or a.get(key) == b.get(key):
            continue
        raise ResumeMismatchError(
            f"cannot resume {shown!r}: its config had {key} = {a.get(key)!r}, this one has "
            f"{b.get(key)!r} (only steps may change); use --overwrite to start again")
