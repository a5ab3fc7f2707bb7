"""Volumes on object storage: ``s3://``, ``gs://`` and ``https://`` URLs.

zarr-python's :class:`~zarr.storage.FsspecStore` over fsspec's filesystems (``s3fs``, ``gcsfs``,
``aiohttp`` for HTTP) does the I/O: it is the store zarr-python itself builds from a URL, its
requests are asynchronous (every chunk of a block is fetched at once), and the same fsspec
filesystem lists prefixes with each object's ETag, which ``--resume`` and the recipe's
"unchanged" check need. (obstore would be faster per request but lists no ETags through zarr's
store and needs a second configuration vocabulary.)

Credentials come the way each library looks for them (``AWS_*`` variables and profile files for
S3, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS), plus :func:`configure` (the command line's
``--storage-option KEY=VALUE`` and a recipe's ``storage_options:``). They travel to workers
with the volumes (pickled in the task graph) and are never printed nor written into a volume's
metadata or a job's progress (:mod:`emarray.redact` hides them in every text).
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from typing import Any

from . import redact
from .revoked import check_writable
from .errors import BackendUnavailableError, InvalidArgumentError, VolumeNotFoundError

#: schemes read and written through fsspec (http/https are read-only)
REMOTE = ("s3", "gs", "gcs", "http", "https")
READ_ONLY = ("http", "https")
#: the module fsspec reads and writes each scheme with (an extra: emarray.extras)
FILESYSTEMS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
#: the name of one version of an output on object storage (see emarray.engine.remote_output)
VERSION = re.compile(r"v-\d{8}T\d{6}-[0-9a-f]{8}")
_OPTIONS: dict[str, Any] = {}


def scheme(url: str | os.PathLike) -> str | None:
    """The object-store scheme of ``url`` (``s3``, ``gs``, ...), None for a local path."""
    s = os.fspath(url)
    if "://" not in s:
        return None
    head = s.split("://", 1)[0].lower()
    return head if head in REMOTE else None


def is_remote(url: str | os.PathLike) -> bool:
    return scheme(url) is not None


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended ('/'-separated; empty parts skipped)."""
    out = url.rstrip("/")
    for p in parts:
        if p:
            out = f"{out}/{p.strip('/')}"
    return out


def parent(url: str) -> str:
    head, rest = url.split("://", 1)
    return f"{head}://{posixpath.dirname(rest.rstrip('/'))}"


def name(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def configure(options: dict[str, Any] | None) -> None:
    """Set the storage options every remote volume opened after this uses (merged over the
    earlier ones; None or {} leaves them)."""
    if options:
        redact.remember(options)
        _OPTIONS.update(options)


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings into storage options (values as YAML scalars: ``true``, ``10``).

    >>> parse_options(["endpoint_url=http://127.0.0.1:9000", "anon=true", "retries=3"])
    {'endpoint_url': 'http://127.0.0.1:9000', 'anon': True, 'retries': 3}
    """
    import yaml
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(
                f"--storage-option takes KEY=VALUE, got {item.split('=')[0]!r}")
        parsed = yaml.safe_load(value) if value else ""
        out[key.strip()] = parsed if isinstance(parsed, (bool, int, float)) else value
    return out


def options_for(url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fsspec options for ``url``: the configured ones, with S3's endpoint from
    ``AWS_ENDPOINT_URL`` and retries with backoff unless given."""
    # the configured options are the bucket's (s3fs/gcsfs keywords): not for plain HTTP reads
    redact.remember(extra)
    opts = {**({} if scheme(url) in READ_ONLY else _OPTIONS), **(extra or {})}
    if scheme(url) not in READ_ONLY:  # other processes write the bucket: never list from memory
        opts.setdefault("use_listings_cache", False)
    if scheme(url) == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get(
                "client_kwargs", {}):
            opts["endpoint_url"] = endpoint
        # throttling (503 SlowDown) and dropped connections: botocore retries with backoff
        opts.setdefault("config_kwargs", {"retries": {"mode": "standard", "max_attempts": 8}})
    return opts


def filesystem(url: str, options: dict[str, Any] | None = None, *,
               asynchronous: bool = False) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (``asynchronous``: the one
    zarr's event loop drives; the blocking one otherwise)."""
    import fsspec

    from .extras import require
    head = scheme(url)
    if head in FILESYSTEMS:
        require(FILESYSTEMS[head], f"{head}:// storage")
    protocol = "gcs" if head == "gs" else head
    opts = options_for(url, options)
    if asynchronous:
        opts["asynchronous"] = True
    fs = fsspec.filesystem(protocol, **opts)
    return fs, fs._strip_protocol(url)


def store(url: str, options: dict[str, Any] | None = None, *, read_only: bool = True) -> Any:
    """The zarr store (an asynchronous :class:`~zarr.storage.FsspecStore`) at ``url``."""
    from ._store import GuardedStore
    fs, path = filesystem(url, options, asynchronous=True)
    return GuardedStore(fs, path=path, read_only=read_only or scheme(url) in READ_ONLY)


def etag_number(etag: str | None) -> int:
    """An ETag as a signed 64-bit number (what the chunk record keeps where a local file's
    mtime goes)."""
    h = hashlib.blake2b((etag or "").encode(), digest_size=8).digest()
    return int.from_bytes(h, "little", signed=True)


def objects(url: str, options: dict[str, Any] | None = None) -> dict[str, tuple[int, str]]:
    """Every object under ``url``: its key relative to ``url`` -> (size, ETag); {} when none
    (one paginated listing: 1000 keys per request on S3)."""
    fs, path = filesystem(url, options)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    prefix = path.rstrip("/") + "/"
    out = {}
    for key, info in found.items():
        if info.get("type", "file") != "file" or not key.startswith(prefix):
            continue
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
        out[key[len(prefix):]] = (int(info.get("size") or 0), str(etag).strip('"'))
    return out


def read_json(url: str, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The JSON object at ``url`` (None when there is none)."""
    data = read_bytes(url, options)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_bytes(url: str, options: dict[str, Any] | None = None) -> bytes | None:
    fs, path = filesystem(url, options)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write_bytes(url: str, data: bytes, options: dict[str, Any] | None = None, *,
                create: bool = False) -> None:
    """Put one whole object (S3 stores it whole or not at all); ``create``: only when no object
    is there yet (S3's conditional write, ``If-None-Match: *``), else FileExistsError."""
    check_writable(url)
    fs, path = filesystem(url, options)
    if create:
        fs.pipe_file(path, data, mode="create")
    else:
        fs.pipe_file(path, data)


def remove(url: str, options: dict[str, Any] | None = None, *, recursive: bool = False) -> None:
    check_writable(url)
    fs, path = filesystem(url, options)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def exists(url: str, options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, options)
    return bool(fs.exists(path))


def inside_version(url: str, options: dict[str, Any] | None = None) -> str | None:
    """``s3://b/s.zarr/NAME`` as the image NAME inside the version its group points at
    (``s3://b/s.zarr/v-.../NAME``), when there is one (see emarray.engine.remote_output)."""
    up, leaf = parent(url), name(url)
    attrs = (read_json(join(up, "zarr.json"), options) or {}).get("attributes")
    em = attrs.get("emarray") if isinstance(attrs, dict) else None
    version = em.get("version") if isinstance(em, dict) else None
    if not isinstance(version, str) or not VERSION.fullmatch(version) or leaf == version:
        return None
    inner = join(up, version, leaf)
    return inner if exists(join(inner, "zarr.json"), options) else None


# -- conditional writes (the output lock) -------------------------------------------------------
class Changed(Exception):
    """A conditional put or delete found the object changed since its ETag was read, or gone."""


def conditional_writes(url: str) -> bool:
    """Whether emarray writes objects at ``url`` conditionally (If-Match / If-None-Match)."""
    return scheme(url) == "s3"


def _bucket_key(url: str, options: dict[str, Any] | None) -> tuple[Any, str, str, str]:
    fs, path = filesystem(url, options)
    bucket, key, _ = fs.split_path(path)
    return fs, path, bucket, key


def _refused(exc: BaseException) -> bool:
    """Whether an S3 error is a failed precondition (412) or a conditional write that lost a
    race with another one (409 ConditionalRequestConflict)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    err = (getattr(cause, "response", None) or {}).get("Error", {})
    status = ((getattr(cause, "response", None) or {}).get("ResponseMetadata") or {}).get(
        "HTTPStatusCode")
    return err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or \
        status in (409, 412)


def read_tagged(url: str, options: dict[str, Any] | None = None) -> tuple[bytes, str] | None:
    """The object at ``url`` and its ETag, from one GET (None when there is none)."""
    from fsspec.asyn import sync
    fs, _, bucket, key = _bucket_key(url, options)

    async def get() -> tuple[bytes, str]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = resp["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return bytes(data), str(resp["ETag"])

    try:
        return sync(fs.loop, get)
    except FileNotFoundError:
        return None


def put_tagged(url: str, data: bytes, options: dict[str, Any] | None = None, *,
               match: str | None) -> str:
    """Put ``data`` at ``url`` only if no object is there (``match`` None: If-None-Match, else
    FileExistsError), or only if the object's ETag is still ``match`` (If-Match, else
    :class:`Changed`, also when it is gone). Returns the new object's ETag."""
    fs, path, bucket, key = _bucket_key(url, options)
    condition = {"IfNoneMatch": "*"} if match is None else {"IfMatch": match}
    try:
        resp = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except FileExistsError:
        if match is None:
            raise
        raise Changed(url) from None
    except FileNotFoundError:
        if match is None:
            raise
        raise Changed(url) from None
    except OSError as exc:
        if not _refused(exc):
            raise
        if match is None:
            raise FileExistsError(url) from None
        raise Changed(url) from None
    finally:
        fs.invalidate_cache(path)
    return str(resp["ETag"])


def remove_tagged(url: str, etag: str, options: dict[str, Any] | None = None) -> None:
    """Delete the object at ``url`` only if its ETag is still ``etag`` (else :class:`Changed`)."""
    fs, path, bucket, key = _bucket_key(url, options)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
    except FileNotFoundError:
        raise Changed(url) from None
    except OSError as exc:
        if _refused(exc):
            raise Changed(url) from None
        raise
    finally:
        fs.invalidate_cache(path)


# -- outputs a job may no longer write (it lost their lock) ----------------------------------------
class RemotePath:
    """The few :class:`pathlib.Path` operations a job's progress folder needs, on a prefix of
    an object store (S3 writes each object whole, so a plain put is already atomic)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.options = dict(options or {})

    def __truediv__(self, part: str) -> RemotePath:
        return RemotePath(join(self.url, part), self.options)

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return name(self.url)

    @property
    def parent(self) -> RemotePath:
        return RemotePath(parent(self.url), self.options)

    def with_name(self, new: str) -> RemotePath:
        return RemotePath(join(parent(self.url), new), self.options)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.with_name(posixpath.splitext(self.name)[0] + suffix)

    def is_dir(self) -> bool:
        """Whether objects lie under this prefix."""
        fs, path = filesystem(self.url, self.options)
        return bool(fs.isdir(path))

    def open(self, mode: str = "rb") -> Any:
        """The object as a file (fsspec's: reads are ranged requests, seek is free)."""
        if "r" not in mode:
            check_writable(self.url)
        fs, path = filesystem(self.url, self.options)
        return fs.open(path, mode)

    def iterdir(self) -> Iterator[RemotePath]:
        """The objects and prefixes directly under this prefix."""
        fs, path = filesystem(self.url, self.options)
        try:
            found = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return
        for entry in found:
            yield RemotePath(join(self.url, name(entry)), self.options)

    def read_bytes(self) -> bytes:
        data = read_bytes(self.url, self.options)
        if data is None:
            raise FileNotFoundError(2, "No such object", self.url)
        return data

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        write_bytes(self.url, data, self.options)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def is_file(self) -> bool:
        fs, path = filesystem(self.url, self.options)
        return bool(fs.isfile(path))

    def exists(self) -> bool:
        return exists(self.url, self.options)

    def unlink(self, missing_ok: bool = False) -> None:
        check_writable(self.url)
        fs, path = filesystem(self.url, self.options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: prefixes exist while objects are under them."""

    def rmtree(self) -> None:
        remove(self.url, self.options, recursive=True)


def describe(exc: BaseException, url: str) -> str:
    """One line for a storage error at ``url`` (no credentials in it)."""
    return redact.text(_describe(exc, url))


def _describe(exc: BaseException, url: str) -> str:
    text = str(exc)
    if isinstance(exc, BackendUnavailableError):  # a missing extra: its line names it
        return text
    bucket = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket" in low:
        return f"the bucket {bucket!r} of {url} does not exist"
    if isinstance(exc, PermissionError) or any(w in low for w in (
            "accessdenied", "access denied", "forbidden", "invalidaccesskeyid",
            "signaturedoesnotmatch", "403")):
        return (f"no permission to access {url} (check the credentials: AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or --storage-option)")
    if any(w in low for w in ("could not connect", "connect timeout", "cannot connect",
                              "connection refused", "endpoint url")):
        return f"cannot reach the storage server of {url}: {text.splitlines()[0][:200]}"
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    return f"cannot access {url}: {type(exc).__name__}: {first}"


def check_reachable(url: str, options: dict[str, Any] | None = None) -> None:
    """Raise one clear line when the bucket of ``url`` is missing or not ours to read."""
    if scheme(url) in READ_ONLY:
        return
    fs, path = filesystem(url, options)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False, refresh=True)
    except FileNotFoundError:
        raise VolumeNotFoundError(f"the bucket {bucket!r} of {url} does not exist") from None
    except Exception as exc:
        raise VolumeNotFoundError(describe(exc, url)) from None
