"""Outputs made of files — a folder (meshes, a precomputed volume, a sweep's table and plot) or
a named file with others beside it (a table, its summary and figure; an exported stack) — with
the promises volumes have (:mod:`emarray.engine.output`), from one place:

- a **lock** beside the output (``.NAME.emarray-lock``, the volumes' ``flock``) lets one job at
  a time write it;
- the job writes into a **staging folder** beside it (``.NAME.emarray-new``), its progress
  inside that, so nothing the user sees changes until the job is complete;
- a **manifest** lists every file the job wrote (``NAME/.emarray-manifest.json`` for a folder,
  ``.NAME.emarray-manifest.json`` beside a named file), with the job and the digest of each
  input's stored chunks;
- the **commit** first marks the staged manifest complete, then moves the new files in (a new
  folder: one rename), removes the files of the old manifest that the new one does not list,
  and puts the new manifest in place. A kill at any moment is finished by the next run of any
  job on that output (it holds the lock), so the output is never left half old, half new;
- ``overwrite`` replaces **only what the old manifest lists** (and the named file itself, which
  the user asked to replace); a file that no manifest lists is the user's: it is never deleted,
  and a job that would write over it is refused before anything is moved, naming it;
- ``resume`` continues the staged job with the same identity; a finished output is left as it
  is unless one of its inputs changed since (then the job refuses in one line).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (BlockFailedError, EmarrayError, InvalidArgumentError, JobFailedError, OutputExistsError,
                      ResumeMismatchError)
from .checkpoint import PROGRESS_DIR, atomic_write, inputs_digest, job_difference
from .output import (LOCK_SUFFIX, MANIFEST, NEW_SUFFIX, OutputLock, check_no_overlap,
                     check_writable, real_path, sibling)

FORMAT = 1
#: names in a staging folder that are never part of an output
_SCRATCH = (MANIFEST, PROGRESS_DIR)


def manifest_of(dst: Path, folder: bool) -> Path:
    """Where the manifest of the output ``dst`` (a folder, or a named file) lives."""
    return dst / MANIFEST if folder else dst.with_name(f".{dst.name}{MANIFEST}")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path`` (None when there is none, or it is not emarray's)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("files"), list)
    return doc if ok else None


def _write_manifest(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(path, json.dumps({"format": FORMAT, **doc}).encode())


def staged_files(staging: Path) -> list[str]:
    """Every file under ``staging`` but its manifest, progress and temporary files, as sorted
    relative paths."""
    out = []
    for dirpath, dirs, files in os.walk(staging):
        rel = Path(dirpath).relative_to(staging)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in _SCRATCH]
        for f in files:
            if (rel == Path(".") and f in _SCRATCH) or f.startswith(".tmp-") or \
                    f.endswith(LOCK_SUFFIX):
                continue
            out.append((rel / f).as_posix())
    return sorted(out)


@dataclass
class FilesOutput:
    """The output of a running job that writes files (see the module's docs).

    Write each file at :meth:`path` (its place relative to the output), keep progress in
    :attr:`progress`, and :meth:`commit` when complete. ``finished``: a resumed output that was
    already complete (nothing to do; :attr:`result` is what its job recorded). On object
    storage the paths are :class:`~emarray.storage.RemotePath` prefixes
    (:mod:`emarray.engine.remote_files`).
    """

    dst: Any            # what the user named (real path, or a RemotePath): the folder, or file
    folder: bool
    shown: str
    job: dict[str, Any]
    inputs: Sequence[Any] = ()
    resumed: bool = False
    finished: bool = False
    result: Any = None
    replaces: list[str] = field(default_factory=list)  # existing names the job may replace
    tree: Any = None    # the file operations where the output lives (LocalTree, RemoteTree)

    def __post_init__(self) -> None:
        if self.tree is None:
            self.tree = LocalTree()

    @property
    def final(self) -> Any:
        """The folder the files end up in."""
        return self.dst if self.folder else self.dst.parent

    @property
    def staging(self) -> Any:
        return sibling(self.dst, NEW_SUFFIX)

    @property
    def progress(self) -> Any:
        return self.staging / PROGRESS_DIR

    def path(self, rel: str | os.PathLike) -> Any:
        """Where the job writes the file ``rel`` of its output (in the staging folder)."""
        return self.staging / os.fspath(rel)

    def check_free(self, names: Sequence[str]) -> None:
        """Refuse (before work) names that are a user's files in the output's folder."""
        self.tree.refuse_foreign(self.final, dict.fromkeys(names), set(self.replaces),
                                 self.shown, later=False)

    def commit(self, files: Sequence[str] | None = None, result: Any = None) -> None:
        """Put the job's files in place (``files``: their relative paths; default: every file
        staged); what the old manifest listed and the new one does not is removed."""
        staged = self.tree.files(self.staging)
        listed = sorted(set(files)) if files is not None else sorted(staged)
        missing = [f for f in listed if f not in staged]
        if missing:
            raise RuntimeError(f"{self.shown}: the job did not write {missing[0]}")
        self.tree.rmtree(self.progress)
        _write_manifest(self.staging / MANIFEST, {
            "job": self.job, "complete": True, "files": listed, "result": result,
            "replaces": self.replaces, "folder": self.folder,
            "inputs_stored": inputs_digest(self.inputs)})
        self.result = result
        finish_commit(self.dst, self.folder, self.shown, self.tree)


class LocalTree:
    """The file operations of a files output on local disk (the remote twin:
    :class:`emarray.engine.remote_files.RemoteTree`)."""

    def files(self, folder: Path) -> dict[str, Any]:
        """The output's files staged in ``folder`` (see :func:`staged_files`)."""
        return dict.fromkeys(staged_files(folder)) if folder.is_dir() else {}

    def unlink(self, path: Path) -> None:
        path.unlink()

    def exists(self, path: Path) -> bool:
        return path.exists() or path.is_symlink()

    def rename_whole(self, staging: Path, dst: Path) -> bool:
        """Move a staged new folder into place at once, when nothing is at ``dst`` yet."""
        if dst.exists() or dst.is_symlink():
            return False
        os.rename(staging, dst)  # a new folder appears whole
        return True

    def refuse_foreign(self, final: Path, names: dict[str, Any], ours: set[str], shown: str, *,
                       later: bool) -> None:
        _refuse_foreign(final, list(names), ours, shown, later=later)

    def move_in(self, staging: Path, final: Path, names: Sequence[str]) -> None:
        final.mkdir(exist_ok=True)
        for f in names:
            (final / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f, final / f)

    def remove_old(self, final: Path, names: Sequence[str]) -> None:
        for f in names:
            gone = final / f
            if gone.is_file() or gone.is_symlink():
                gone.unlink()
                _prune_empty(gone.parent, final)

    def put_manifest(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def rmtree(self, path: Path) -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path, ignore_errors=True)

    def size(self, path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    def removal(self, path: Path) -> str:
        return f"rm -r '{path}'"

    def place(self, dst: str | os.PathLike, folder: bool, shown: str,
              inputs: Sequence[Any]) -> Path:
        """The output's real path, checked before any work. A folder is where its links
        lead; a named file is a name in its (resolved) folder: a link there is replaced,
        never the file it points to."""
        real = real_path(dst) if folder else real_path(Path(dst).parent) / Path(dst).name
        _check_place(real, folder, shown, inputs)
        return real

    def lock(self, real: Path, shown: str) -> OutputLock:
        return OutputLock(real, shown)


def tree_for(dst: Any) -> Any:
    """The file operations where ``dst`` lives: local disk, or object storage."""
    from ..storage import RemotePath, is_remote
    if isinstance(dst, RemotePath) or is_remote(dst):
        from .remote_files import RemoteTree
        return RemoteTree()
    return LocalTree()


def _refuse_foreign(final: Path, names: Sequence[str], ours: set[str], shown: str, *,
                    later: bool) -> None:
    for n in names:
        where = final / n
        rel = Path(n)
        for k in range(1, len(rel.parts)):  # a folder on the way that is a link leads elsewhere
            part = final.joinpath(*rel.parts[:k])
            if part.is_symlink() or (part.exists() and not part.is_dir()):
                raise OutputExistsError(
                    f"{shown!r}: {part} is a link or a file where the output needs a folder; "
                    "move it away" + (", then run the same command with --resume" if later else ""))
        if (where.exists() or where.is_symlink()) and n not in ours:
            raise OutputExistsError(
                f"{shown!r} holds {where.relative_to(final).as_posix()}, which emarray did not "
                "write (no manifest lists it) and which this job would replace; move it away"
                + (", then run the same command with --resume to finish" if later else
                   " or choose another output"))


def finish_commit(dst: Any, folder: bool, shown: str, tree: Any = None) -> bool:
    """Move a complete staged output into place (again, when a commit was cut short); return
    whether there was one. Called with the output's lock held. Every step can be done again:
    a file already moved is no longer staged, one already removed is not there."""
    tree = tree if tree is not None else LocalTree()
    staging = sibling(dst, NEW_SUFFIX)
    new = read_manifest(staging / MANIFEST)
    if new is None or not new.get("complete"):
        return False
    files = list(new["files"])
    keep = set(files)
    staged = tree.files(staging)
    for f in list(staged):  # left over from a stage that started again: not output
        if f not in keep:
            tree.unlink(staging / f)
            del staged[f]
    target = manifest_of(dst, folder)
    if folder and tree.rename_whole(staging, dst):
        return True
    final = dst if folder else dst.parent
    old = read_manifest(target)
    old_files = set(old["files"]) if old else set()
    pending = {f: staged[f] for f in files if f in staged}
    tree.refuse_foreign(final, pending, old_files | set(new.get("replaces", [])), shown,
                        later=True)
    tree.move_in(staging, final, list(pending))
    tree.remove_old(final, sorted(old_files - keep))
    tree.put_manifest(staging / MANIFEST, target)
    tree.rmtree(staging)
    return True


def _prune_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``top`` while they are empty."""
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _kept_note(exc: BaseException, shown: str, staging: Any, tree: Any) -> JobFailedError:
    """The error of a failed job, saying what it left and how to go on."""
    size = tree.size(staging)
    reason = (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror
              else str(exc))
    return JobFailedError(
        f"{reason}; {shown!r} is as it was, and the unfinished job is kept at {staging} "
        f"({size / 2**20:.1f} MiB): run the same command with --resume to finish it, or "
        f"remove it with: {tree.removal(staging)}")


def _check_place(dst: Path, folder: bool, shown: str, inputs: Sequence[Any]) -> None:
    check_no_overlap(dst, [v for v in inputs if v is not None], shown)
    check_writable(dst, shown)
    if folder and (dst.is_file() or (dst.is_symlink() and not dst.exists())):
        raise InvalidArgumentError(f"{shown!r} is a file or a broken link, not a folder: "
                                   "choose another output")
    if not folder and (dst.is_dir() or (dst.is_symlink() and not dst.exists())):
        raise InvalidArgumentError(f"{shown!r} is a folder or a broken link, not a file: "
                                   "choose another output")


@contextlib.contextmanager
def open_files(dst: str | os.PathLike, *, job: dict[str, Any], inputs: Sequence[Any] = (),
               overwrite: bool = False, resume: bool = False, folder: bool = True,
               names: Sequence[str] = (), again: bool = False,
               resumable: bool = True) -> Iterator[FilesOutput]:
    """Lock the output ``dst`` (a folder, or with ``folder=False`` a named file and the files
    beside it), finish a commit cut short, and start, resume or stage a replacement of it.

    ``names`` are the files the job will write, where known up front: one that is a user's
    file is refused before any work. ``again``: a resumed output that finished earlier is
    computed again (into a new staging folder) rather than taken as it is. Yields a
    :class:`FilesOutput`; the lock is released on exit. An unfinished staged job stays for
    ``resume`` (with ``resumable=False``, for a job that cannot resume, it is removed).
    """
    if overwrite and resume:
        raise InvalidArgumentError("choose either overwrite or resume, not both")
    shown = os.fspath(dst)
    tree = tree_for(dst)
    real = tree.place(dst, folder, shown, inputs)
    job = json.loads(json.dumps(job))  # as it reads back from the manifest (tuples as lists)
    lock = tree.lock(real, shown)
    lock.acquire()
    try:
        if finish_commit(real, folder, shown, tree):
            print(f"{shown}: finished an interrupted replacement", file=sys.stderr)
        target = FilesOutput(real, folder, shown, job, inputs, tree=tree)
        old = read_manifest(manifest_of(real, folder))
        staging = target.staging
        staged = read_manifest(staging / MANIFEST)
        if resume and staged is not None and staged.get("job") == job:
            target.resumed = True
            target.replaces = list(staged.get("replaces", []))
            yield target
            return
        if resume and old is not None and not (again and old.get("job") == job):
            if old.get("job") != job:
                raise ResumeMismatchError(
                    f"cannot resume into {shown!r}: it was made by another job "
                    f"({job_difference(old.get('job'), job)}); use overwrite to start again")
            from .stages import check_unchanged_since
            check_unchanged_since(old, inputs, shown)
            target.resumed = target.finished = True
            target.result = old.get("result")
            yield target
            return
        exists = old is not None or (not folder and tree.exists(real))
        if exists and not overwrite and not resume:
            raise OutputExistsError(
                f"output {shown!r} already exists; pass overwrite (--overwrite) to replace it, "
                "or resume (--resume) to finish an interrupted run")
        target.replaces = sorted(set(old["files"]) if old else set())
        if not folder and overwrite:
            target.replaces = sorted(set(target.replaces) | {real.name})
        target.check_free(names)
        tree.rmtree(staging)  # ours by its name: an unfinished job this run replaces
        staging.mkdir()
        try:
            _write_manifest(staging / MANIFEST, {"job": job, "complete": False, "files": [],
                                                 "replaces": target.replaces})
        except BaseException:  # a full disk, say: nothing of this job is left
            tree.rmtree(staging)
            raise
        try:
            yield target
        except BaseException as exc:
            staged = read_manifest(staging / MANIFEST)
            if staged is not None and not staged.get("complete"):
                if not resumable:
                    tree.rmtree(staging)
                elif isinstance(exc, BlockFailedError) or (
                        isinstance(exc, OSError) and not isinstance(exc, EmarrayError)):
                    raise _kept_note(exc, shown, staging, tree) from exc
            raise
    finally:
        lock.release()
