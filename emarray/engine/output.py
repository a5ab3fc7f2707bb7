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

from .. import redact
from ..errors import (EmarrayError, InvalidArgumentError, JobFailedError, OutputExistsError,
                      OutputLockedError, ResumeMismatchError, VolumeNotFoundError)
from ..ome import listed_levels
from ..volume import Volume, open_volume
from ..chunks import key_layout, valid_key
from .checkpoint import PROGRESS_DIR as MARKER_DIR
from .checkpoint import job_difference

log = logging.getLogger("emarray")
LOCK_SUFFIX = ".emarray-lock"
NEW_SUFFIX = ".emarray-new"
#: the list of the files an output made of files holds (see emarray.engine.files)
MANIFEST = ".emarray-manifest.json"
OLD_SUFFIX = ".emarray-old"


def real_path(path: str | os.PathLike) -> Path:
    """The absolute path with every symlink resolved (the path need not exist)."""
    return Path(os.path.realpath(os.fspath(path)))


def sibling(path: Any, suffix: str) -> Any:
    """``.NAME{suffix}`` beside ``path`` (a Path, or a RemotePath on object storage)."""
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
        self.path = sibling(path, LOCK_SUFFIX)
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
                readers = _only_readers(fd)
                holder = _read_holder(fd)
                os.close(fd)
                if readers:
                    raise OutputLockedError(
                        f"{self.shown!r} is being read by another emarray job; replacing it now "
                        "would give that job a mix of old and new data: wait for it to end or "
                        "stop it") from None
                raise OutputLockedError(
                    f"output {self.shown!r} is being written by another emarray job "
                    f"({holder}); wait for it to end or stop it") from None
            if _same_file(fd, self.path):  # the holder before us may have removed it: retry
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": redact.command_line()}
        os.write(fd, json.dumps(info).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still holding it: see the inode check above
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _only_readers(fd: int) -> bool:
    """Whether the lock on ``fd``'s file is held by readers (shared) rather than a writer."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


class ReadLock:
    """A shared ``flock`` on an input's lock file (the one writers hold exclusively), held while
    a job reads it: a job that would replace the input (``--overwrite``) is refused meanwhile,
    and a reader is refused while a writer holds it, so a job never reads a mix of two versions.

    Inputs in a folder emarray cannot write (read-only data), or inside a zarr store, are read
    without a lock: no emarray job can replace them from here either.
    """

    def __init__(self, path: Path, shown: str):
        self.path = sibling(path, LOCK_SUFFIX)
        self.shown = shown
        self._fd: int | None = None

    def acquire(self) -> None:
        if (self.path.parent / "zarr.json").exists():
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"the input {self.shown!r} is being written by another emarray job "
                    f"({holder}); wait for it to end before reading it") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # the last reader out removes the file (a writer's inode check covers the race)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        except BlockingIOError:
            pass
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def reading(inputs: Sequence[Any]) -> Iterator[None]:
    """Hold a :class:`ReadLock` on every local input (Volumes or paths) for the block."""
    locks: list[ReadLock] = []
    seen: set[Path] = set()
    try:
        for v in inputs:
            src = v.local_path if isinstance(v, Volume) else (
                Path(os.fspath(v)) if isinstance(v, (str, os.PathLike)) else None)
            if src is None or not src.exists():
                continue
            real = real_path(src)
            if real in seen:
                continue
            seen.add(real)
            lock = ReadLock(real, os.fspath(src))
            lock.acquire()
            locks.append(lock)
        yield
    finally:
        for lock in locks:
            lock.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return redact.text(f"pid {info['pid']} on {info['host']}, started {info['started']}: "
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


#: files emarray keeps in a job's progress folder (and the temporary names it writes them as)
PROGRESS_FILES = ("*.progress", "*.result", "job.json", "*.npy", "*.npz", ".tmp-*")


def _array_keys(array: Path) -> tuple[Any, str, str] | None:
    """How the chunk keys of the zarr v3 array at ``array`` look: (grid counts, prefix,
    separator); None when it is not a zarr v3 array."""
    try:
        meta = json.loads((array / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return key_layout(meta)


def foreign_in_array(array: Path, shown: str) -> list[str]:
    keys = _array_keys(array)
    if keys is None:
        return [f"{shown}/ (not a zarr array)"]
    counts, prefix, sep = keys
    found = []
    for dirpath, dirs, files in os.walk(array):
        here = Path(dirpath)
        for d in list(dirs):
            if (here / d).is_symlink():
                found.append(f"{shown}/{(here / d).relative_to(array)} (a link)")
                dirs.remove(d)
        for f in files:
            rel = (here / f).relative_to(array).as_posix()
            if rel == "zarr.json" and not (here / f).is_symlink():
                continue
            if (here / f).is_symlink() or not valid_key(rel, counts, prefix, sep):
                found.append(f"{shown}/{rel}")
    return found


def _foreign_in_progress(folder: Path, shown: str) -> list[str]:
    import fnmatch
    found = []
    for entry in sorted(folder.iterdir()):
        where = f"{shown}/{entry.name}"
        if entry.is_symlink():
            found.append(where + " (a link)")
        elif entry.is_dir():
            if (entry / "zarr.json").is_file():
                found += _foreign_in_store(entry, where, attrs=_attributes(entry))
            else:
                found += _foreign_in_progress(entry, where)
        elif not any(fnmatch.fnmatch(entry.name, pat) for pat in PROGRESS_FILES):
            found.append(where)
    return found


def _foreign_in_store(path: Path, shown: str, attrs: dict[str, Any]) -> list[str]:
    """Every file under the store ``path`` that its metadata does not account for: not its
    metadata, not a chunk key of its arrays, not its own progress, not an image emarray made
    inside it (a variance map)."""
    levels = listed_levels(attrs)
    em = attrs.get("emarray") if isinstance(attrs, dict) else None
    files = set(em.get("files", [])) if isinstance(em, dict) else set()  # tables it keeps
    found = []
    for entry in sorted(path.iterdir()):
        name, where = entry.name, f"{shown}/{entry.name}" if shown else entry.name
        if entry.is_symlink():
            found.append(where + " (a link)")
        elif (name == "zarr.json" or name in files) and entry.is_file():
            continue
        elif name == MARKER_DIR and entry.is_dir():
            found += _foreign_in_progress(entry, where)
        elif name in levels and entry.is_dir():
            found += foreign_in_array(entry, where)
        elif entry.is_dir() and (entry / "zarr.json").is_file() and emarray_job_of(entry):
            found += _foreign_in_store(entry, where, _attributes(entry))
        else:
            found.append(where + ("/" if entry.is_dir() else ""))
    return found


def check_replaceable(path: Path, shown: str) -> None:
    """Refuse to replace anything but a store emarray made whose every file its metadata
    accounts for (metadata, the chunk keys of its arrays, its progress files)."""
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it is not a zarr store emarray made")
    attrs = _attributes(path)
    if emarray_job_of(path, attrs) is None:
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it was not made by emarray; move it away or "
            "choose another output")
    foreign = _foreign_in_store(path, "", attrs)
    if foreign:
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it holds files emarray did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them away "
            "or choose another output")


def remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def recover(path: Path) -> str | None:
    """Finish or roll back a replacement that was interrupted; return what was done.

    Called with the lock held. A finished new output waiting beside a missing one is moved in;
    an old output set aside with no finished new one is put back; a leftover old one is removed.
    """
    new, old = sibling(path, NEW_SUFFIX), sibling(path, OLD_SUFFIX)
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
        remove_path(old)
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

    def discard(self) -> None:
        """Remove what this run created (a new output, or a replacement being built) before
        any block was written; an output that existed, or one being resumed, stays."""
        if self.resumed:
            return
        remove_path(real_path(self.volume.url) if self.staged else self.path)

    def kept_note(self, exc: BaseException) -> EmarrayError:
        """The error of a failed replacement, saying where its unfinished new output is kept."""
        new = real_path(self.volume.url)
        size = sum(f.stat().st_size for f in new.rglob("*") if f.is_file()) if new.exists() else 0
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return JobFailedError(
            f"{reason}; {self.shown!r} is unchanged, and its unfinished replacement is kept at "
            f"{new} ({size / 2**20:.1f} MiB): run the same command with --resume to finish it, "
            f"or remove it with: rm -r '{new}'")

    def commit(self) -> Volume:
        """Put a staged output in place (old one aside, new one in, old one deleted)."""
        if self.staged:
            old = sibling(self.path, OLD_SUFFIX)
            if self.path.exists():
                os.rename(self.path, old)
            os.rename(self.volume.url, self.path)
            if old.exists():
                remove_path(old)
        return open_volume(self.path)


def check_writable(dst: Path, shown: str) -> None:
    parent = dst.parent
    if not parent.is_dir():
        raise InvalidArgumentError(
            f"cannot create the output {shown!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(
            f"cannot create the output {shown!r}: the folder {str(parent)!r} is not writable")


def _reopen_for_resume(where: Path, job: dict[str, Any], shown: str) -> Volume:
    em = emarray_job_of(where)
    old = em.get("job") if em else None
    if old != job:
        raise ResumeMismatchError(
            f"cannot resume into {shown!r}: it was made by another job ({job_difference(old, job)}); "
            "use overwrite to start again")
    return open_volume(where)


def remove_partial_writes(store: Path) -> None:
    """Delete the temporary ``*.partial`` files a killed zarr write leaves behind (a walk of
    the whole store: a resumed job does it once its blocks are written, not before the first
    one)."""
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
    from .. import storage
    if storage.is_remote(path):
        from .remote_output import open_remote_output
        with open_remote_output(os.fspath(path), create, inputs=inputs, job=job,
                                overwrite=overwrite, resume=resume) as remote:
            yield remote  # type: ignore[misc]
        return
    if overwrite and resume:
        raise InvalidArgumentError("choose either overwrite or resume, not both")
    shown = os.fspath(path)
    dst = real_path(path)
    check_no_overlap(dst, inputs, shown)
    check_writable(dst, shown)
    lock = OutputLock(dst, shown)
    lock.acquire()
    try:
        note = recover(dst)
        if note:
            print(f"{shown}: {note}", file=sys.stderr)
        new = sibling(dst, NEW_SUFFIX)
        if resume and new.exists() and (emarray_job_of(new) or {}).get("job") == job:
            try:
                staged = _reopen_for_resume(new, job, shown)
            except VolumeNotFoundError:  # killed while creating it: no block was written
                log.info("%s: the new output was cut short while being created; creating it "
                         "again", shown)
                remove_path(new)
            else:
                yield Output(dst, staged, True, shown)
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
            remove_path(new)  # a stale, unfinished new output of ours: start it again
        try:
            vol = create(os.fspath(new))
        except OSError as exc:
            remove_path(new)
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
