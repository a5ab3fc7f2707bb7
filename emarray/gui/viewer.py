"""The View page: ``emarray view``'s neuroglancer viewer for any volume, output or mesh folder,
reached through the gui's own address, token and checks.

The layers are made by :mod:`emarray.view` (the same images, segmentations, objects tables and
meshes); their data is served by the gui under ``/data/`` through ``emarray view``'s own
confinement (:func:`emarray.view_server.served_path`), and only paths inside the gui's folders are
ever registered, whatever a file names. neuroglancer's Python server (which holds each
viewer's state) listens on 127.0.0.1 only and is reached through ``/ng/``: the page, its data
and the viewer share one origin, one port (one SSH tunnel) and one token.
"""
from __future__ import annotations

import http.client
import socket
import threading
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import EmarrayError
from ..view_server import DataServer, Served, served_path
from .places import Folders

#: viewers kept (the oldest are dropped)
KEEP = 16


class _Data(DataServer):
    """emarray view's data server as the gui serves it: its ``folder`` and ``document``, with
    no HTTP server of its own (the gui answers ``BASE/data/``); a folder is registered only
    inside the gui's folders as well as the paths named."""

    def __init__(self, served: Any, base: str, folders: Folders, roots: Any = ()):
        self.served, self.roots = served, [Path(r) for r in roots]
        self.base, self.folders = base, folders

    @property
    def url(self) -> str:
        return f"{self.base}/data"

    def folder(self, path: Path) -> str:
        self.folders.resolve(path, "viewer data")  # nothing a file names widens it
        return super().folder(path)


class Viewers:
    """neuroglancer viewers of the gui (made on demand, kept by what they show)."""

    def __init__(self, folders: Folders):
        from .. import view
        self.view = view
        self.ng = view.require_neuroglancer()
        self.folders = folders
        self.served = Served()
        self.kept: dict[Any, tuple[Any, list[str]]] = {}
        self.lock = threading.Lock()
        self.ng.set_server_bind_address(bind_address="127.0.0.1", bind_port=0)

    def open(self, paths: list[Path], base: str) -> tuple[str, list[str]]:
        """The address (under ``/ng/``) of a viewer showing ``paths``, and its notes."""
        key = (base, tuple(map(str, paths)))
        with self.lock:
            if key in self.kept:
                viewer, notes = self.kept[key]
                return self._path(viewer), notes
            view, ng = self.view, self.ng
            found = view.gather(paths)
            viewer = ng.Viewer()
            data = _Data(self.served, base, self.folders, found.roots)
            layers = view.make_layers(found, data, ng)
            notes = found.notes + [ly.note for ly in layers if ly.note]
            segments = view.largest(layers) if found.meshes or any(ly.meshes for ly in layers) \
                else ()
            view.apply(viewer, layers, ng, "4panel", view.where_objects(layers), (1280, 960),
                       segments)
            self.kept[key] = (viewer, notes)
            while len(self.kept) > KEEP:
                self.kept.pop(next(iter(self.kept)))
            return self._path(viewer), notes

    def _path(self, viewer: Any) -> str:
        url = viewer.get_viewer_url()
        return "/ng/" + url.split("/", 3)[3]

    def upstream(self) -> tuple[str, int]:
        from neuroglancer import server
        host, port = server.get_server_url().rsplit("/", 1)[-1].rsplit(":", 1)
        return host, int(port)

    def close(self) -> None:
        self.kept.clear()
        self.ng.stop()


def viewers(request: Request) -> Viewers:
    g = request.app.state.gui
    if g.viewers is None:
        g.viewers = Viewers(g.folders)
    return g.viewers


def view_page(request: Request) -> Response:
    from .pages import page
    g = request.app.state.gui
    given = request.query_params.getlist("path")
    src, error = "", ""
    notes: list[str] = []
    if given:
        try:
            paths = [g.folders.resolve(p, "path") for p in given]
            base = f"{request.url.scheme}://{request.headers['host']}"
            src, notes = viewers(request).open(paths, base)
        except EmarrayError as exc:
            error = str(exc)
    shown = [g.folders.shown(p) for p in given]
    return page(request, "view.html", src=src, notes=notes, error=error, shown=shown,
                given=given)


def data_route(request: Request) -> Response:
    """A file (or document) a viewer layer reads, confined as ``emarray view`` confines it."""
    g = request.app.state.gui
    if g.viewers is None:
        return PlainTextResponse("nothing is being viewed", 404)
    url_path = "/" + request.path_params["rest"]
    served = g.viewers.served
    doc = served.documents.get(url_path)
    if doc is not None:
        return Response(doc, media_type="application/json")
    target = Path(served_path(served, url_path))
    try:  # and inside the gui's folders, whatever the viewer's folders are
        g.folders.resolve(target)
    except EmarrayError:
        return PlainTextResponse("outside the folders this gui serves", 403)
    if not target.is_file():
        return PlainTextResponse("not found", 404)
    return FileResponse(target, headers={"Cache-Control": "no-store"})


async def ng_proxy(request: Request) -> Response:
    """neuroglancer's own server (viewer page, state events), reached through the gui."""
    g = request.app.state.gui
    if g.viewers is None:
        return PlainTextResponse("no viewer", 404)
    host, port = g.viewers.upstream()
    target = "/" + request.path_params["rest"] + (f"?{request.url.query}" if request.url.query
                                                  else "")
    body = await request.body()
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type",
                                                                          "accept")}

    def start() -> tuple[http.client.HTTPConnection, Any, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(host, port)
        conn.request(request.method, target, body=body or None, headers=headers)
        sock = conn.sock
        return conn, sock, conn.getresponse()

    conn, sock, resp = await run_in_threadpool(start)
    kind = resp.getheader("content-type", "application/octet-stream")
    if "text/event-stream" not in kind:
        data = await run_in_threadpool(resp.read)
        conn.close()
        return Response(data, resp.status, media_type=kind)

    async def events() -> Any:
        import anyio
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(resp.read1, 65536, abandon_on_cancel=True)
                if not chunk:
                    break
                yield chunk
        finally:  # the page went away: end the upstream stream (its reader thread returns)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    return StreamingResponse(events(), resp.status, media_type=kind,
                             headers={"Cache-Control": "no-cache"})


ROUTES = [
    Route("/view", view_page),
    Route("/data/{rest:path}", data_route),
    Route("/ng/{rest:path}", ng_proxy, methods=["GET", "POST"]),
]
