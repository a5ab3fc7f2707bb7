"""Outputs made of files on object storage: the file operations of :mod:`emarray.engine.files`
where there is no rename.

The layout is the local one with prefixes for folders. For ``s3://bucket/cells.meshes``:

- the lock is ``s3://bucket/.cells.meshes.emarray-lock``, the volumes' lock
  (:class:`~emarray.engine.remote_output.RemoteLock`: S3's conditional writes), so of two jobs
  on any two machines one writes;
- the job writes under the staging prefix ``s3://bucket/.cells.meshes.emarray-new/``, its
  progress inside it, so any machine that reaches the bucket can resume it, and nothing at the
  output's keys changes until the job is complete;
- the commit (:func:`~emarray.engine.files.finish_commit`, shared with local disk) marks the
  staged manifest complete, then **copies each staged object to its final key on the server**
  and deletes the staged one, removes the keys the old manifest listed and the new one does not,
  and puts the manifest (``cells.meshes/.emarray-manifest.json``) last. The files end at their
  own keys, where neuroglancer and other readers look for them. A kill at any moment is
  finished by the next job on that output (it holds the lock): a file already copied is no
  longer staged, one already removed is not there.

What differs from local disk: a new folder appears file by file during the commit (only
copies; its manifest comes last), not by one rename. Each object is always whole.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .. import storage
from ..errors import InvalidArgumentError, OutputExistsError, VolumeNotFoundError
from ..storage import RemotePath
from .checkpoint import PROGRESS_DIR
from .output import LOCK_SUFFIX, MANIFEST

#: objects copied, then deleted, per batch of a commit (each batch's requests run at once)
BATCH = 256
#: at most this many names are checked one request each; more: the folder is listed once
_FEW = 16


def _rel_files(listing: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """A staging prefix's listing as the output's files and their ETags (no manifest,
    progress, temporary or lock objects)."""
    out = {}
    for key, (_, etag) in listing.items():
        top = key.split("/", 1)[0]
        leaf = key.rsplit("/", 1)[-1]
        if key == MANIFEST or top == PROGRESS_DIR or leaf.startswith(".tmp-") or \
                leaf.endswith(LOCK_SUFFIX):
            continue
        out[key] = etag
    return dict(sorted(out.items()))


class RemoteTree:
    """The file operations of a files output on object storage (see the module's notes)."""

    def __init__(self) -> None:
        self._lock: Any = None

    # -- before the job --------------------------------------------------------------------
    def place(self, dst: str | os.PathLike, folder: bool, shown: str,
              inputs: Sequence[Any]) -> RemotePath:
        from .remote_output import check_lockable, check_no_overlap
        url = os.fspath(dst).rstrip("/")
        if storage.scheme(url) in storage.READ_ONLY:
            raise InvalidArgumentError(
                f"cannot write {shown!r}: {storage.scheme(url)}:// is read-only")
        if not storage.name(url) or "/" not in url.split("://", 1)[1]:
            raise InvalidArgumentError(f"cannot write {shown!r}: name a prefix inside the "
                                       "bucket (s3://bucket/NAME)")
        check_lockable(url, shown)
        check_no_overlap(url, [v for v in inputs if v is not None], shown)
        options = storage.options_for(url)
        try:
            storage.check_reachable(storage.parent(url), options)
        except VolumeNotFoundError as exc:
            raise InvalidArgumentError(f"cannot create the output {shown!r}: {exc}") from None
        return RemotePath(url, options)

    def lock(self, real: RemotePath, shown: str) -> Any:
        from .remote_output import RemoteLock
        from .output import NEW_SUFFIX, sibling
        self._lock = RemoteLock(real.url, shown, real.options,
                                guards=[sibling(real, NEW_SUFFIX).url])
        return self._lock

    def _check(self) -> None:
        if self._lock is not None:
            self._lock.check()

    # -- listing ---------------------------------------------------------------------------
    def files(self, folder: RemotePath) -> dict[str, Any]:
        """The output's files staged under ``folder``, with their ETags (one listing)."""
        return _rel_files(storage.objects(folder.url, folder.options))

    def exists(self, path: RemotePath) -> bool:
        return storage.exists(path.url, path.options)

    def size(self, path: RemotePath) -> int:
        return sum(size for size, _ in storage.objects(path.url, path.options).values())

    def removal(self, path: RemotePath) -> str:
        return f"--overwrite (which starts the job again), or by deleting every key under {path.url}/"

    def refuse_foreign(self, final: RemotePath, names: dict[str, Any], ours: set[str],
                       shown: str, *, later: bool) -> None:
        """Refuse names whose final key holds an object no manifest lists. A name whose
        final object has the staged one's ETag is this job's own copy (a commit cut short
        between its copy and the delete of the staged object)."""
        wanted = [n for n in names if n not in ours]
        if not wanted:
            return
        if len(wanted) <= _FEW:
            found = {n: self._etag(final / n) for n in wanted}
        else:
            listing = storage.objects(final.url, final.options)
            found = {n: listing[n][1] if n in listing else None for n in wanted}
        for n in wanted:
            if found[n] is None or (names[n] is not None and found[n] == names[n]):
                continue
            raise OutputExistsError(
                f"{shown!r} holds {n}, which emarray did not write (no manifest lists it) and "
                "which this job would replace; move it away"
                + (", then run the same command with --resume to finish" if later else
                   " or choose another output"))

    def _etag(self, path: RemotePath) -> str | None:
        fs, key = storage.filesystem(path.url, path.options)
        try:
            info = fs.info(key, refresh=True)
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return str(info.get("ETag") or info.get("etag") or "").strip('"')

    # -- the commit ------------------------------------------------------------------------
    def rename_whole(self, staging: RemotePath, dst: RemotePath) -> bool:
        return False  # no rename on object storage: the files are copied one by one

    def move_in(self, staging: RemotePath, final: RemotePath, names: Sequence[str]) -> None:
        """Copy each staged object to its final key (on the server), then delete it."""
        fs, _ = storage.filesystem(staging.url, staging.options)
        for i in range(0, len(names), BATCH):
            part = names[i:i + BATCH]
            self._check()
            src = [fs._strip_protocol((staging / n).url) for n in part]
            dst = [fs._strip_protocol((final / n).url) for n in part]
            for d in dst:
                storage.check_writable(d)
            fs.copy(src, dst)
            fs.rm(src)
        fs.invalidate_cache()

    def remove_old(self, final: RemotePath, names: Sequence[str]) -> None:
        fs, _ = storage.filesystem(final.url, final.options)
        for i in range(0, len(names), BATCH):
            self._check()
            keys = [fs._strip_protocol((final / n).url) for n in names[i:i + BATCH]]
            for k in keys:
                storage.check_writable(k)
            try:
                fs.rm(keys)
            except FileNotFoundError:
                pass
        fs.invalidate_cache()

    def put_manifest(self, src: RemotePath, dst: RemotePath) -> None:
        self._check()
        dst.write_bytes(src.read_bytes())

    def unlink(self, path: RemotePath) -> None:
        path.unlink(missing_ok=True)

    def rmtree(self, path: RemotePath) -> None:
        path.rmtree()
