"""Where a job writes, and how an output is created or replaced without losing anything.

Every job that writes a volume goes through :func:`open_output`:

- the output's **real** path is used (symlinks resolved), so an input reached through a link is
  still recognised as the input;
- a **lock** (``.NAME.emarray-lock`` beside the output, an ``flock`` that dies with its process)
  lets one job at a time write there; a second job gets an error naming the first;
- a new output is **created** beside its final place (``.NAME.emarray-new``) and renamed into
  place, so a kill never leaves a half-made store at the output path;
- ``overwrite`` **builds the new output beside the old one** and swaps them only when the new
  one is complete; the old one is moved to ``.NAME.emarray-old`` and then deleted. A kill at
  any moment leaves either the old or the new output at the path, and the next run of the same
  command (or ``resume``) finishes or rolls back the swap;
- only a store that emarray made, holding nothing but its own files, is ever replaced.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (InvalidArgumentError, OutputExistsError, OutputLockedError,
                      ResumeMismatchError)
from ..volume import Volume, open_volume
from .checkpoint import PROGRESS_DIR as MARKER_DIR

log = logging.getLogger("emarray")
LOCK_SUFFIX = ".emarray-lock"
NEW_SUFFIX = ".emarray-new"
OLD_SUFFIX = ".emarray-old"


def real_path(path: str | os.PathLike) -> Path:
    """The absolute path with every symlink resolved (the path need not exist)."""
    return Path(os.path.realpath(os.fspath(path)))


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def _is_within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_no_overlap(dst: Path, inputs: Sequence[Volume | str | os.PathLike], shown: str) -> None:
    """Refuse an output that is, holds, or lies inside one of the inputs (links resolved)."""
    for v in inputs:
        src = v.local_path if isinstance(v, Volume) else Path(os.fspath(v))
        if src is None:
            continue
        s = real_path(src)
        if _is_within(dst, s) or _is_within(s, dst):
            raise InvalidArgumentError(
                f"output {shown!r} overlaps the input {str(src)!r} (links resolved: {dst} and "
                f"{s}); choose another output path")


# -- the lock --------------------------------------------------------------------------------
class OutputLock:
    """An exclusive ``flock`` on ``.NAME.emarray-lock`` beside the output, held for the job.

    The kernel drops the lock when its process dies (even by SIGKILL), so a killed job never
    leaves a stale lock. The file records who holds it, for the error a second job gets.
    """

    def __init__(self, path: Path, shown: str):
        self.path = _sibling(path, LOCK_SUFFIX)
        self.shown = shown
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _os_error(exc, f"cannot write the output {self.shown!r}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"output {self.shown!r} is being written by another emarray job "
                    f"({holder}); wait for it to end or stop it") from None
            # the holder before us may have removed the file after we opened it: retry then
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        os.write(fd, json.dumps(info).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still holding it: see the inode check above
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError):
        return "another process"


def _os_error(exc: OSError, what: str) -> InvalidArgumentError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return InvalidArgumentError(f"{what}: {reason}")


# -- what may be replaced ----------------------------------------------------------------------
def _attributes(path: Path) -> dict[str, Any]:
    """The attributes in the store's top-level ``zarr.json`` ({} when unreadable)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def emarray_job_of(path: Path, attrs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``emarray`` attributes of the store at ``path`` when emarray made it, else None."""
    em = (_attributes(path) if attrs is None else attrs).get("emarray")
    return em if isinstance(em, dict) and "job" in em else None


def _own_entries(attrs: dict[str, Any]) -> set[str]:
    """The top-level names an emarray-made store may hold: metadata, its levels, its progress."""
    try:
        levels = {d["path"].split("/")[0] for m in attrs["ome"]["multiscales"]
                  for d in m["datasets"]}
    except (KeyError, TypeError):
        levels = set()
    pyramid = (attrs.get("emarray") or {}).get("pyramid") if isinstance(attrs, dict) else None
    if isinstance(pyramid, dict):  # levels a killed pyramid job made but did not yet list
        levels |= {str(p) for p in pyramid.get("paths", [])}
    return {"zarr.json", MARKER_DIR, *levels}


def check_replaceable(path: Path, shown: str) -> None:
    """Refuse to replace anything but a store emarray made that holds only its own files."""
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it is not a zarr store emarray made")
    attrs = _attributes(path)
    if emarray_job_of(path, attrs) is None:
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it was not made by emarray; move it away or "
            "choose another output")
    own = _own_entries(attrs)
    foreign = sorted(p.name for p in path.iterdir() if p.name not in own)
    for level in own - {"zarr.json", MARKER_DIR}:
        d = path / level
        if d.is_dir():
            foreign += [f"{level}/{p.name}" for p in d.iterdir() if p.name not in ("zarr.json", "c")]
    if foreign:
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it holds files emarray did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them away "
            "or choose another output")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def recover(path: Path) -> str | None:
    """Finish or roll back a replacement that was interrupted; return what was done.

    Called with the lock held. A finished new output waiting beside a missing one is moved in;
    an old output set aside with no finished new one is put back; a leftover old one is removed.
    """
    new, old = _sibling(path, NEW_SUFFIX), _sibling(path, OLD_SUFFIX)
    done = None
    if old.exists() and not path.exists():
        em = emarray_job_of(new) if new.exists() else None
        if em is not None and em.get("complete"):
            os.rename(new, path)
            done = "finished an interrupted replacement"
        else:
            os.rename(old, path)
            done = "rolled back an interrupted replacement"
    if old.exists():
        _remove(old)
        done = done or "removed the rest of a replaced output"
    return done


# -- the output of one job -------------------------------------------------------------------
@dataclass
class Output:
    """The output of a running job: where its blocks go, and whether it resumes."""

    path: Path            # the final place (real path)
    volume: Volume        # where blocks are written: ``path`` or the new output beside it
    resumed: bool
    shown: str            # the path as the user wrote it, for messages

    @property
    def staged(self) -> bool:
        return real_path(self.volume.url) != self.path

    def commit(self) -> Volume:
        """Put a staged output in place (old one aside, new one in, old one deleted)."""
        if self.staged:
            old = _sibling(self.path, OLD_SUFFIX)
            if self.path.exists():
                os.rename(self.path, old)
            os.rename(self.volume.url, self.path)
            if old.exists():
                _remove(old)
        return open_volume(self.path)


def _check_writable(dst: Path, shown: str) -> None:
    parent = dst.parent
    if not parent.is_dir():
        raise InvalidArgumentError(
            f"cannot create the output {shown!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(
            f"cannot create the output {shown!r}: the folder {str(parent)!r} is not writable")


def _job_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "it was not made by an emarray job"
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "inputs":
            for o, n in zip(old.get(key) or [], new.get(key) or []):
                if o != n:
                    what = [k for k in sorted(set(o) | set(n)) if o.get(k) != n.get(k)]
                    return (f"its input {n.get('url')} changed since that run "
                            f"({', '.join(what)} differ)")
        if key == "layout":
            return f"its storage layout was {old.get(key)}, this run asks for {new.get(key)}"
        return f"{key} was {old.get(key)!r}, this run has {new.get(key)!r}"
    return "the jobs differ"


def _reopen_for_resume(where: Path, job: dict[str, Any], shown: str) -> Volume:
    em = emarray_job_of(where)
    old = em.get("job") if em else None
    if old != job:
        raise ResumeMismatchError(
            f"cannot resume into {shown!r}: it was made by another job ({_job_difference(old, job)}); "
            "use overwrite to start again")
    _remove_partial_writes(where)
    return open_volume(where)


def _remove_partial_writes(store: Path) -> None:
    """Delete the temporary ``*.partial`` files a killed zarr write leaves behind."""
    for dirpath, _dirs, files in os.walk(store):
        for f in files:
            if f.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, f))


@contextlib.contextmanager
def open_output(path: str | os.PathLike, create: Callable[[str], Volume], *,
                inputs: Sequence[Volume | str | os.PathLike] = (), job: dict[str, Any],
                overwrite: bool = False, resume: bool = False) -> Iterator[Output]:
    """Lock ``path``, then create, reopen (``resume``) or stage a replacement (``overwrite``).

    Yields an :class:`Output`; call its ``commit()`` once every block is written. The lock is
    released on exit; a staged replacement that was not committed stays beside the output,
    where ``resume`` continues it and ``overwrite`` starts it again.
    """
    if overwrite and resume:
        raise InvalidArgumentError("choose either overwrite or resume, not both")
    shown = os.fspath(path)
    dst = real_path(path)
    check_no_overlap(dst, inputs, shown)
    _check_writable(dst, shown)
    lock = OutputLock(dst, shown)
    lock.acquire()
    try:
        note = recover(dst)
        if note:
            print(f"{shown}: {note}", file=sys.stderr)
        new = _sibling(dst, NEW_SUFFIX)
        if resume and new.exists() and (emarray_job_of(new) or {}).get("job") == job:
            yield Output(dst, _reopen_for_resume(new, job, shown), True, shown)
            return
        if dst.exists():
            if resume:
                yield Output(dst, _reopen_for_resume(dst, job, shown), True, shown)
                return
            if not overwrite:
                raise OutputExistsError(
                    f"output {shown!r} already exists; pass overwrite (--overwrite) to "
                    "replace it, or resume (--resume) to finish an interrupted run")
            check_replaceable(dst, shown)
        if new.exists():
            _remove(new)  # a stale, unfinished new output of ours: start it again
        try:
            vol = create(os.fspath(new))
        except OSError as exc:
            _remove(new)
            raise _os_error(exc, f"cannot create the output {shown!r}") from None
        if dst.exists():  # overwrite: the job writes beside the old output until commit
            log.info("building the new %s beside the old one (%s) until it is complete",
                     shown, new.name)
            yield Output(dst, vol, False, shown)
            return
        os.rename(new, dst)  # a new output appears whole, or not at all
        yield Output(dst, open_volume(dst), False, shown)
    finally:
        lock.release()
