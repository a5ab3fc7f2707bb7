"""The HTTP data server behind ``emarray view`` (and the viewer of ``emarray gui``): the files
of the folders it is given, confined to them (``..`` and links that leave them answer 404),
single byte ranges (sharded volumes), CORS for the viewer's page, and the address a browser
uses to reach it (see :func:`reachable_host`)."""
from __future__ import annotations

import http.server
import ipaddress
import json
import os
import socket
import stat
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError


# -- the data server ---------------------------------------------------------------------------
@dataclass
class Served:
    """What the data server answers: folders by key, and JSON documents made in memory."""

    folders: dict[str, Path] = field(default_factory=dict)
    documents: dict[str, bytes] = field(default_factory=dict)
    #: prefixes on object storage by key (RemotePaths: read with their store options here, so
    #: the browser gets the bytes and never a credential)
    prefixes: dict[str, Any] = field(default_factory=dict)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the files under the folders served (single byte ranges too: sharded
    volumes are read a shard's index and chunks at a time), and CORS for the viewer's page."""

    served: Served
    protocol_version = "HTTP/1.1"

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the viewer asks often
        pass

    def do_OPTIONS(self) -> None:  # noqa: N802 - the preflight of a cross-origin Range request
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        doc = self.served.documents.get(urllib.parse.unquote(self.path.split("?", 1)[0]))
        if doc is not None:
            self._send(200, "application/json", len(doc))
            if body:
                self.wfile.write(doc)
            return
        obj = self._object(self.path)
        if obj is not None:
            self._answer_object(obj, body)
            return
        try:
            f = open(self.translate_path(self.path), "rb")  # noqa: SIM115 - closed below
        except OSError:
            self._send(404, None, 0)
            return
        with f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                self._send(404, None, 0)
                return

            def read(start: int, stop: int) -> Any:
                f.seek(start)
                left = stop - start
                while left > 0:
                    piece = f.read(min(left, 1 << 20))
                    if not piece:
                        break
                    yield piece
                    left -= len(piece)
            self._answer_bytes(info.st_size, read, body)

    def _answer_bytes(self, size: int, read: Any, body: bool) -> None:
        """Answer with ``size`` bytes (or the range asked), ``read(start, stop)`` giving them."""
        wanted = byte_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            self._send(416, None, 0, {"Content-Range": f"bytes */{size}"})
            return
        start, stop = wanted if isinstance(wanted, tuple) else (0, size)
        extra = {"Content-Range": f"bytes {start}-{stop - 1}/{size}"} \
            if isinstance(wanted, tuple) else {}
        self._send(206 if extra else 200, "application/octet-stream", stop - start, extra)
        if body:
            for piece in read(start, stop):
                self.wfile.write(piece)

    def _object(self, path: str) -> Any:
        """The object a request path names under a prefix served (None: not such a path; a
        path with empty, ``.`` or ``..`` parts names nothing: nothing outside the prefix)."""
        rel = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
        key, _, rest = rel.lstrip("/").partition("/")
        root = self.served.prefixes.get(key)
        if root is None:
            return None
        if not rest or any(p in ("", ".", "..") for p in rest.split("/")):
            return False
        return root / rest

    def _answer_object(self, obj: Any, body: bool) -> None:
        """An object under a prefix served, read with its store options (a failed read:
        404 when it is not there, else 502, with nothing of the error in the answer)."""
        from . import storage
        if obj is False:
            self._send(404, None, 0)
            return
        fs, key = storage.filesystem(obj.url, obj.options)
        try:
            info = fs.info(key)
            if info.get("type", "file") != "file":
                raise FileNotFoundError(key)
            size = int(info.get("size") or 0)
        except FileNotFoundError:
            self._send(404, None, 0)
            return
        except Exception:  # noqa: BLE001 - the server's answer is not the browser's business
            self._send(502, None, 0)
            return

        def read(start: int, stop: int) -> Any:
            for at in range(start, stop, 8 << 20):
                yield bytes(fs.cat_file(key, start=at, end=min(stop, at + (8 << 20))))
        self._answer_bytes(size, read, body)

    def _send(self, status: int, kind: str | None, length: int,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def translate_path(self, path: str) -> str:
        """The file a request path names, links resolved; a path that is no file when it lies
        outside the folder it names (``..``, links that leave it included)."""
        rel = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
        parts = rel.lstrip("/").split("/", 1)
        root = self.served.folders.get(parts[0])
        if root is None:
            return "/nonexistent"
        target = Path(os.path.realpath(root / (parts[1] if len(parts) > 1 else "")))
        if target != root and root not in target.parents:
            return "/nonexistent"  # nothing outside the folders served, links included
        return os.fspath(target)


def served_path(served: Served, url_path: str) -> str:
    """The file the data server answers ``url_path`` with, confined as it confines it
    ("/nonexistent" when nothing is served there): for ``emarray gui``, which serves the same
    folders through its own guarded app."""
    from types import SimpleNamespace
    return _Handler.translate_path(SimpleNamespace(served=served), url_path)  # type: ignore[arg-type]


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The bytes ``[start, stop)`` a ``Range`` header asks of a file of ``size`` bytes: None
    for the whole file (no header, or one this server does not honour: several ranges, not
    bytes, malformed), ``"unsatisfiable"`` when it starts at or past the end.

    >>> byte_range("bytes=0-9", 100), byte_range("bytes=90-", 100), byte_range("bytes=-5", 100)
    ((0, 10), (90, 100), (95, 100))
    >>> byte_range("bytes=100-", 100), byte_range("bytes=5-2", 100), byte_range(None, 100)
    ('unsatisfiable', None, None)
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or not (first or last) or \
            not all(x.isdigit() for x in (first, last) if x):
        return None
    if not first:  # the last N bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored (RFC 9110)
    if start >= size:
        return "unsatisfiable"
    return start, min(size, int(last) + 1) if last else size


class DataServer:
    """A threaded HTTP server (CORS on) for the folders and documents the viewer reads, on
    ``bind`` at a free port. It serves a folder only inside ``roots`` (the paths named,
    resolved), and its URLs name ``host``, an address a browser can reach (see
    :func:`reachable_host`)."""

    def __init__(self, bind: str, roots: Sequence[Path] = (), host: str | None = None):
        self.served = Served()
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        handler = type("Handler", (_Handler,), {"served": self.served})
        server = type("Server", (_Server,), {"address_family": check_bind(bind)})
        try:
            self.httpd = server((bind, 0), handler)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot serve on --bind {bind!r}: "
                                       f"{exc.strerror or exc}") from None
        self.host = host or reachable_host(bind)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.httpd.server_address[1]}"

    def folder(self, path: Path) -> str:
        real = Path(os.path.realpath(path))
        if self.roots and not within(real, self.roots):
            raise InvalidArgumentError(f"{path} lies outside the paths named ({real}): "
                                       "emarray view serves only those")
        key = f"d{len(self.served.folders)}"
        self.served.folders[key] = real
        return f"{self.url}/{key}"

    def prefix(self, where: Any) -> str:
        """Serve the prefix ``where`` on object storage (a RemotePath, read with its store
        options on this machine); return its URL."""
        key = f"r{len(self.served.prefixes)}"
        self.served.prefixes[key] = where
        return f"{self.url}/{key}"

    def document(self, obj: Any) -> str:
        """Serve ``obj`` as ``.../info`` of a folder of its own; return that folder's URL."""
        key = f"/doc{len(self.served.documents)}"
        self.served.documents[f"{key}/info"] = json.dumps(obj).encode()
        return f"{self.url}{key}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- where it listens, and the address a browser uses ------------------------------------------
WILDCARD = ("0.0.0.0", "::")


def check_bind(bind: str) -> int:
    """The address family of ``bind`` (one clear line when it is empty or no address)."""
    if not bind.strip():
        raise InvalidArgumentError(
            "--bind '' is empty: give the address to serve on (127.0.0.1, the default; "
            "0.0.0.0 or :: for every interface; or one of this machine's addresses)")
    try:
        infos = socket.getaddrinfo(bind, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidArgumentError(f"--bind {bind!r} is not an address or host name this "
                                   f"machine can listen on ({exc})") from None
    return int(infos[0][0])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            try:  # :: takes IPv4 connections too
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()


def _outward(family: int) -> str | None:
    """This machine's address toward other networks (the source of a UDP socket 'connected' to
    a documentation address: nothing is sent), unless it is loopback or link-local."""
    probe = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            addr = str(s.getsockname()[0])
    except OSError:
        return None
    ip = ipaddress.ip_address(addr.split("%")[0])
    return None if ip.is_loopback or ip.is_unspecified or ip.is_link_local else addr


def _reaches_out(name: str) -> bool:
    """Whether the host name ``name`` resolves, and only to addresses other machines can use."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        ips = {ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos}
    except (OSError, ValueError, UnicodeError):
        return False
    return bool(ips) and not any(ip.is_loopback or ip.is_unspecified for ip in ips)


def reachable_host(bind: str) -> str:
    """The host the URLs of a server bound to ``bind`` name: ``bind`` itself, and for a
    wildcard (every interface) this machine's name where it resolves to an address other
    machines can use, else its outward address (loopback when it has none)."""
    if bind not in WILDCARD:
        return bind
    name = socket.getfqdn()
    if _reaches_out(name):
        return name
    first, second = ((socket.AF_INET6, socket.AF_INET) if bind == "::"
                     else (socket.AF_INET, socket.AF_INET6))
    return _outward(first) or _outward(second) or ("::1" if bind == "::" else "127.0.0.1")


def url_host(host: str) -> str:
    """``host`` as a URL names it (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# -- what may be served ------------------------------------------------------------------------
def within(path: str | os.PathLike, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (links resolved) is one of ``roots`` or inside one."""
    real = Path(os.path.realpath(path))
    return any(real == r or r in real.parents for r in roots)
