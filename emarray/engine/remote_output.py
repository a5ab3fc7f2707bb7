"""Outputs on object storage: the same promises as :mod:`emarray.engine.output`, without rename.

An output at ``s3://bucket/cells.zarr`` is an OME-Zarr group whose ``zarr.json`` points at one
**version** of the data, a prefix inside it (``cells.zarr/v-20261126T233500-3fa2/``) that holds
the arrays, as its multiscales' dataset paths (``v-.../0``) say. A job writes a new version
beside the current one and, once every block is stored and the version is marked complete,
**puts the group's ``zarr.json``** pointing at it: one whole-object write, so a reader sees the
old output or the new one, never a mix, and a kill at any moment leaves the old one in place.
The previous version is deleted after the switch. ``--resume`` finds the unfinished version of
the same job and continues it; progress is kept in the version (``.emarray-progress/``), so any
machine that reaches the bucket can resume it.

The **lock** is an object beside the output (``.cells.zarr.emarray-lock``) created with S3's
conditional write (``If-None-Match: *``), so of two jobs on any two machines one gets it. The
holder refreshes it every few seconds; a lock whose holder stopped refreshing for
``EMARRAY_LOCK_LEASE_SECONDS`` (default 90), or whose holder process on this host is gone, is
taken over.

Only a group emarray made, holding nothing but its versions, is replaced (``--overwrite``).
"""
from __future__ import annotations

import calendar
import contextlib
import copy
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import redact, revoked, storage
from ..errors import (EmarrayError, InvalidArgumentError, JobFailedError, OutputExistsError,
                      OutputLockedError, ResumeMismatchError, VolumeNotFoundError)
from ..volume import Volume, open_volume
from ..chunks import key_layout, valid_key
from ..ome import listed_levels
from .checkpoint import PROGRESS_DIR, job_difference

log = logging.getLogger("emarray")
LOCK_SUFFIX = ".emarray-lock"
VERSION = storage.VERSION


def lease_seconds() -> float:
    """Seconds an unrefreshed lock lasts (``EMARRAY_LOCK_LEASE_SECONDS``, see
    :mod:`emarray.environment`)."""
    from .. import environment
    return float(environment.number("EMARRAY_LOCK_LEASE_SECONDS") or 0.0)


def new_version(after: str | None = None) -> str:
    """A new version's name: its creation time (UTC, to the second) and a random tag, named
    after ``after`` (the newest version there) even within its second or on a machine whose
    clock is behind: which of two complete versions is the newer is read from their names."""
    now = time.time()
    if after is not None and VERSION.fullmatch(after):
        last = calendar.timegm(time.strptime(after[2:17], "%Y%m%dT%H%M%S"))
        now = max(now, last + 1)
    return f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:8]}"


# -- the lock --------------------------------------------------------------------------------
def check_lockable(url: str, shown: str) -> None:
    """Refuse an output where emarray cannot lock it (gs://: conditional writes untested)."""
    if not storage.conditional_writes(url):
        raise InvalidArgumentError(
            f"cannot write the output {shown!r}: its lock needs conditional writes, which "
            "emarray makes on s3:// only (write to s3:// or local disk)")


class RemoteLock:
    """An object beside the output, written only with conditions on its ETag: created only
    where none is (``If-None-Match: *``), refreshed and taken over only if it is still the
    object read (``If-Match``). A holder that finds it changed has lost it: every write of
    this process under the output then fails (:func:`~emarray.revoked.revoke`), naming the lock."""

    def __init__(self, url: str, shown: str, options: dict[str, Any] | None = None, *,
                 guards: Sequence[str] = ()):
        self.target = url.rstrip("/")
        #: more prefixes this job writes only while it holds the lock (a files output's
        #: staging prefix beside it)
        self.guards = [g.rstrip("/") for g in guards]
        self.url = storage.join(storage.parent(url), f".{storage.name(url)}{LOCK_SUFFIX}")
        self.shown = shown
        self.options = options
        self.token = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost: str | None = None
        self._started = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _info(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": self._started, "command": redact.command_line(),
                           "token": self.token, "heartbeat": time.time()}).encode()

    def acquire(self) -> None:
        check_lockable(self.url, self.shown)
        self._started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            self._take()
        except EmarrayError:
            raise
        except Exception as exc:
            raise InvalidArgumentError(
                f"cannot write the output {self.shown!r}: {storage.describe(exc, self.url)}"
            ) from None
        self._thread = threading.Thread(target=self._refresh, daemon=True,
                                        name="emarray-lock-refresh")
        self._thread.start()

    def _take(self) -> None:
        for _ in range(10):
            try:
                self.etag = storage.put_tagged(self.url, self._info(), self.options, match=None)
                return
            except FileExistsError:
                pass
            found = self._read()
            if found is None:
                continue  # released meanwhile: try again
            holder, etag = found
            if holder.get("token") == self.token:  # our own put, answered late (a retry)
                self.etag = etag
                return
            why = _stale(holder)
            if why is None:
                raise OutputLockedError(
                    f"output {self.shown!r} is being written by another emarray job "
                    f"({_holder(holder)}); wait for it to end or stop it")
            try:  # only if it is still the lock just read: of two takers, one wins
                self.etag = storage.put_tagged(self.url, self._info(), self.options, match=etag)
            except storage.Changed:
                continue  # refreshed by its holder, or taken by another job: look again
            print(f"{self.shown}: taking over the lock of a job that {why}", file=sys.stderr)
            return
        raise OutputLockedError(f"could not lock {self.shown!r}: other jobs keep taking it")

    def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lock's record and ETag (None: no lock there)."""
        found = storage.read_tagged(self.url, self.options)
        if found is None:
            return None
        try:
            holder = json.loads(found[0])
        except ValueError:
            holder = None
        if not isinstance(holder, dict) or "token" not in holder:
            raise InvalidArgumentError(
                f"cannot lock the output {self.shown!r}: {self.url} is there and is not "
                "an emarray lock; move it away")
        return holder, found[1]

    def _refresh(self) -> None:
        every = max(lease_seconds() / 4, 0.2)
        ok = time.monotonic()
        while not self._stop.wait(every):
            try:
                self.etag = storage.put_tagged(self.url, self._info(), self.options,
                                               match=self.etag)
                ok = time.monotonic()
                continue
            except storage.Changed:
                found = None
            except Exception as exc:  # noqa: BLE001 - the server may answer again
                if time.monotonic() - ok <= lease_seconds():
                    continue
                self._lose(f"it could not be refreshed for {lease_seconds():g} s "
                           f"({storage.describe(exc, self.url)})")
                return
            with contextlib.suppress(Exception):  # a put of ours answered late?
                found = self._read()
                if found is not None and found[0].get("token") == self.token:
                    self.etag = found[1]
                    continue
            self._lose(f"another job took it over ({_holder(found[0])})"
                       if found is not None else "it was deleted or replaced")
            return

    def _lose(self, why: str) -> None:
        self.lost = (f"lost the lock of the output {self.shown!r} ({self.url}): {why}; this "
                     "job stopped writing it")
        for url in (self.target, *self.guards):
            revoked.revoke(url, self.lost)
        log.debug("%s", self.lost)

    def check(self) -> None:
        """Raise when the lock was lost (see :func:`~emarray.revoked.revoke`)."""
        if self.lost is not None:
            raise OutputLockedError(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.lost is not None:
            for url in (self.target, *self.guards):  # the lock is another job's: leave it
                revoked.unrevoke(url)
            return
        if self.etag is not None:
            with contextlib.suppress(Exception):  # changed: not ours any more
                storage.remove_tagged(self.url, self.etag, self.options)
            self.etag = None


def _stale(holder: dict[str, Any]) -> str | None:
    """Why a lock's holder is gone (None: it may still be running)."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return f"ended on this host (pid {holder.get('pid')})"
        except (PermissionError, ValueError, OverflowError):
            pass
    try:
        age = time.time() - float(holder.get("heartbeat") or 0)
    except (TypeError, ValueError):
        age = float("inf")
    if age > lease_seconds():
        return f"stopped refreshing it {age:.0f} s ago"
    return None


def _holder(info: dict[str, Any]) -> str:
    return redact.text(f"pid {info.get('pid')} on {info.get('host')}, started "
                       f"{info.get('started')}: {info.get('command')}")


# -- versions --------------------------------------------------------------------------------
def _attributes(url: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
    meta = storage.read_json(storage.join(url, "zarr.json"), options)
    if meta is None:
        return None
    attrs = meta.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def _version_of(pointer: dict[str, Any] | None) -> str | None:
    """The version an output's group points at (None: no group, or not a versioned one)."""
    return ((pointer or {}).get("emarray") or {}).get("version")


def _point(url: str, attrs: dict[str, Any], version: str, options: dict[str, Any] | None
           ) -> dict[str, Any]:
    """Point the output's group at ``version`` (its group attributes ``attrs``): one
    whole-object put. Returns the group's new attributes."""
    pointer = pointer_attributes(attrs, version)
    meta = {"zarr_format": 3, "node_type": "group", "attributes": pointer}
    storage.write_bytes(storage.join(url, "zarr.json"), json.dumps(meta, indent=2).encode(),
                        options)
    return pointer


def current_version(url: str) -> str:
    """Where the data of the output at ``url`` lies: the version its group points at for a
    versioned output on object storage (``s3://b/s.zarr/v-.../``); any other path as it is."""
    if storage.scheme(url) is None or storage.scheme(url) in storage.READ_ONLY:
        return url
    url = url.rstrip("/")
    version = _version_of(_attributes(url, storage.options_for(url)))
    return storage.join(url, version) if version else url


def _job_of(attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    em = (attrs or {}).get("emarray")
    return em if isinstance(em, dict) and "job" in em else None


def pointer_attributes(attrs: dict[str, Any], version: str) -> dict[str, Any]:
    """A version's group attributes as the pointer group's: dataset paths inside the version."""
    out = copy.deepcopy(attrs)
    for m in (out.get("ome") or {}).get("multiscales", []):
        for d in m.get("datasets", []):
            d["path"] = f"{version}/{d['path']}"
    em = dict(out.get("emarray") or {})
    em["version"] = version
    out["emarray"] = em
    return out


def foreign_objects(url: str, objects: dict[str, tuple[int, str]],
                    versions: dict[str, dict[str, Any] | None],
                    options: dict[str, Any] | None = None,
                    pointer: dict[str, Any] | None = None) -> list[str]:
    """Keys under the output that are not its pointer nor inside a version emarray made."""
    found = []
    layouts: dict[str, Any] = {}
    nested: dict[tuple[str, str], dict[str, Any] | None] = {}
    added = listed_levels(pointer or {})  # with the levels a pyramid added: "v-.../1"
    for key in sorted(objects):
        top, _, rest = key.partition("/")
        if key == "zarr.json" or top == PROGRESS_DIR:
            continue
        attrs = versions.get(top) if VERSION.fullmatch(top) else None
        if attrs is None or _job_of(attrs) is None:
            found.append(key)
            continue
        level, _, inner = rest.partition("/")
        files = set((attrs.get("emarray") or {}).get("files", []))
        if rest in ("zarr.json", *files) or level == PROGRESS_DIR:
            continue
        if level not in listed_levels(attrs) and f"{top}/{level}" not in added and inner:
            # an image emarray made inside the version (an agglomerate's other thresholds)
            if (top, level) not in nested:
                nested[(top, level)] = _attributes(storage.join(url, top, level), options)
            inside = nested[(top, level)]
            if _job_of(inside) is not None and (inner == "zarr.json" or _valid_chunk(
                    url, f"{top}/{level}", inner, listed_levels(inside or {}), layouts, options)):
                continue
            found.append(key)
            continue
        if (level not in listed_levels(attrs) and f"{top}/{level}" not in added) or not inner:
            found.append(key)
            continue
        if inner != "zarr.json" and not _valid_chunk(url, top, rest, None, layouts, options):
            found.append(key)
    return found


def _valid_chunk(url: str, image: str, rest: str, levels: Collection[str] | None,
                 layouts: dict[str, Any], options: dict[str, Any] | None) -> bool:
    """Whether ``rest`` (``LEVEL/KEY`` inside ``image``) is its level's metadata or one of
    its chunk keys (``levels``: the levels listed; None: not checked here)."""
    level, _, inner = rest.partition("/")
    if not inner or (levels is not None and level not in levels):
        return False
    if inner == "zarr.json":
        return True
    where = f"{image}/{level}"
    if where not in layouts:
        layouts[where] = array_layout(storage.join(url, image, level), options)
    lay = layouts[where]
    return lay is not None and valid_key(inner, *lay)


def array_layout(url: str, options: dict[str, Any] | None
                  ) -> tuple[list[int], str, str] | None:
    """The chunk-key layout of the zarr v3 array at ``url`` (see :func:`key_layout`)."""
    return key_layout(storage.read_json(storage.join(url, "zarr.json"), options) or {})


# -- the output of one job -------------------------------------------------------------------
@dataclass
class RemoteOutput:
    """A job's output on object storage: its blocks go into a new version of it."""

    path: str             # the output group's URL
    volume: Volume        # the version being written
    resumed: bool
    shown: str
    version: str

    staged = True  # the pointer's put is the commit, always

    def discard(self) -> None:
        if not self.resumed:
            storage.remove(self.volume.url, self.volume.storage_options, recursive=True)

    def kept_note(self, exc: BaseException) -> EmarrayError:
        if isinstance(exc, OutputLockedError):  # lost the lock: the output is another job's now
            return OutputLockedError(str(exc))
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return JobFailedError(
            f"{reason}; {self.shown!r} is unchanged, and its unfinished new version is kept at "
            f"{self.volume.url}: run the same command with --resume to finish it")

    def commit(self) -> Volume:
        """Point the output's group at the finished version, then delete older versions."""
        opts = self.volume.storage_options
        if _version_of(_attributes(self.path, opts)) == self.version:
            return open_volume(self.path)  # resumed a finished output: it stays as it is
        _point(self.path, _attributes(self.volume.url, opts) or {}, self.version, opts)
        versions = _versions(self.path, opts)
        _remove_versions(self.path, versions, [n for n in versions if n != self.version], opts)
        return open_volume(self.path)


def _versions(url: str, options: dict[str, Any] | None) -> dict[str, dict[str, Any] | None]:
    """The version prefixes directly under the output and their group attributes."""
    fs, path = storage.filesystem(url, options)
    try:
        names = [storage.name(p) for p in fs.ls(path, detail=False, refresh=True)]
    except FileNotFoundError:
        return {}
    return {n: _attributes(storage.join(url, n), options) for n in names if VERSION.fullmatch(n)}


def _remove_versions(url: str, versions: dict[str, dict[str, Any] | None],
                     names: Sequence[str], options: dict[str, Any] | None) -> None:
    """Delete the versions ``names`` (of ``versions``, listed before) that emarray made, and
    drop them from ``versions``."""
    for name in list(names):
        if _job_of(versions.get(name)) is not None:
            storage.remove(storage.join(url, name), options, recursive=True)
            versions.pop(name)


def _recover(url: str, options: dict[str, Any] | None
             ) -> tuple[str | None, dict[str, Any] | None, dict[str, dict[str, Any] | None]]:
    """Finish a switch a kill interrupted (a complete version newer than the one pointed at)
    and remove versions left by switches that finished. Returns what was done (None:
    nothing), then the group's attributes and the versions, as they are now."""
    pointer = _attributes(url, options)
    current = _version_of(pointer)
    versions = _versions(url, options)
    done = None
    newer = sorted(n for n, a in versions.items()
                   if (_job_of(a) or {}).get("complete") and (current is None or n > current))
    if newer and (pointer is None or _job_of(pointer) is not None):
        current = newer[-1]
        pointer = _point(url, versions[current] or {}, current, options)
        done = "finished an interrupted replacement"
    old = [n for n, a in versions.items()
           if n != current and (_job_of(a) or {}).get("complete")]
    if old:
        _remove_versions(url, versions, old, options)
        done = done or "removed the rest of a replaced output"
    return done, pointer, versions


def check_no_overlap(url: str, inputs: Sequence[Any], shown: str) -> None:
    for v in inputs:
        src = v.url if isinstance(v, Volume) else os.fspath(v)
        if not storage.is_remote(src):
            continue
        a, b = url.rstrip("/") + "/", src.rstrip("/") + "/"
        if a.startswith(b) or b.startswith(a):
            raise InvalidArgumentError(
                f"output {shown!r} overlaps the input {src!r}; choose another output path")


@contextlib.contextmanager
def open_remote_output(url: str, create: Callable[[str], Volume], *,
                       inputs: Sequence[Any] = (), job: dict[str, Any],
                       overwrite: bool = False, resume: bool = False) -> Iterator[RemoteOutput]:
    """The remote twin of :func:`emarray.engine.output.open_output` (see the module's notes)."""
    shown = url
    url = url.rstrip("/")
    if storage.scheme(url) in storage.READ_ONLY:
        raise InvalidArgumentError(f"cannot write {shown!r}: {storage.scheme(url)}:// is read-only")
    if overwrite and resume:
        raise InvalidArgumentError("choose either overwrite or resume, not both")
    check_no_overlap(url, inputs, shown)
    options = storage.options_for(url)
    try:
        storage.check_reachable(storage.parent(url), options)
    except VolumeNotFoundError as exc:
        raise InvalidArgumentError(f"cannot create the output {shown!r}: {exc}") from None
    lock = RemoteLock(url, shown, options)
    lock.acquire()
    try:
        note, pointer, versions = _recover(url, options)
        if note:
            print(f"{shown}: {note}", file=sys.stderr)
        current = _version_of(pointer)
        if resume:
            for name in sorted(versions, reverse=True):
                em = _job_of(versions[name])
                if name != current and em is not None and em.get("job") == job:
                    try:
                        vol = open_volume(storage.join(url, name))
                    except VolumeNotFoundError:  # cut short while being created: made again
                        continue
                    yield RemoteOutput(url, vol, True, shown, name)
                    return
            if pointer is not None:
                em = _job_of(pointer)
                if em is None or em.get("job") != job:
                    raise ResumeMismatchError(
                        f"cannot resume into {shown!r}: it was made by another job "
                        f"({job_difference(em.get('job') if em else None, job)}); use "
                        "overwrite to start again")
                assert current is not None
                vol = open_volume(storage.join(url, current))
                yield RemoteOutput(url, vol, True, shown, current)
                return
        if pointer is not None and not overwrite and not resume:
            raise OutputExistsError(
                f"output {shown!r} already exists; pass overwrite (--overwrite) to replace it, "
                "or resume (--resume) to finish an interrupted run")
        _check_replaceable(url, shown, pointer, versions, options)
        # unfinished versions of earlier runs (this run does not resume them): start again
        _remove_versions(url, versions, [n for n in versions if n != current], options)
        version = new_version(after=max(versions, default=None))
        try:
            vol = create(storage.join(url, version))
        except Exception as exc:
            storage.remove(storage.join(url, version), options, recursive=True)
            if isinstance(exc, EmarrayError):
                raise
            raise InvalidArgumentError(
                f"cannot create the output {shown!r}: {storage.describe(exc, url)}") from None
        if pointer is not None:
            log.info("building the new %s beside the old one (%s) until it is complete",
                     shown, version)
        yield RemoteOutput(url, vol, False, shown, version)
    finally:
        lock.release()


def _check_replaceable(url: str, shown: str, pointer: dict[str, Any] | None,
                       versions: dict[str, dict[str, Any] | None],
                       options: dict[str, Any] | None) -> None:
    """Refuse to write into a prefix that holds anything emarray did not make there."""
    objects = storage.objects(url, options)
    if not objects:
        return
    if pointer is not None and _job_of(pointer) is None:
        raise InvalidArgumentError(
            f"refusing to overwrite {shown!r}: it was not made by emarray; move it away or "
            "choose another output")
    foreign = foreign_objects(url, objects, versions, options, pointer)
    if foreign:
        raise InvalidArgumentError(
            f"refusing to write {shown!r}: it holds objects emarray did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them away "
            "or choose another output")
