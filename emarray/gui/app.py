"""``emarray gui``: the web app (Starlette, Jinja2 templates, a little plain JavaScript,
served by uvicorn; everything ships in the package, nothing is fetched from the internet).

The pages are drawn from the declarations (:mod:`emarray.spec`), the training config's
defaults and the folders' contents; :mod:`emarray.gui.api` is the JSON API under them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import EmarrayError
from ..spec import operators
from . import api, forms, recipes, training, viewer
from .jobs import Jobs
from .pages import page, templates
from .places import Folders
from .security import Guard, allowed_hosts
from .state import Gui

HERE = Path(__file__).parent
#: files the gui shows from the folders, and how (HTML is sandboxed: no script runs)
SHOWN = {".png": "image/png", ".html": "text/html", ".csv": "text/csv",
         ".json": "application/json", ".txt": "text/plain", ".yaml": "text/plain",
         ".yml": "text/plain", ".log": "text/plain"}


def run_index(request: Request) -> Response:
    ops = [forms.describe(op) for op in operators().values()]
    return page(request, "run.html", operators=ops)


def run_form(request: Request) -> Response:
    op = operators().get(request.path_params["name"])
    if op is None:
        return PlainTextResponse(f"no operator {request.path_params['name']!r}", 404)
    prefill = {k: v for k, v in request.query_params.items()}
    return page(request, "form.html", op=forms.describe(op), prefill=prefill)


def data_page(request: Request) -> Response:
    return page(request, "data.html")


def jobs_page(request: Request) -> Response:
    return page(request, "jobs.html")


def evaluate_page(request: Request) -> Response:
    return page(request, "evaluate.html")


def file_route(request: Request) -> Response:
    """A file from the folders: a figure, a report page, a table (confined, types listed)."""
    g: Gui = request.app.state.gui
    try:
        path = g.folders.resolve(request.query_params.get("path", ""), "path")
    except EmarrayError as exc:
        return PlainTextResponse(str(exc), 403)
    kind = SHOWN.get(path.suffix.lower())
    if kind is None or not path.is_file():
        return PlainTextResponse(f"the gui does not show {path.name}", 404)
    return FileResponse(path, media_type=kind, headers={
        "Content-Security-Policy": "sandbox", "Cache-Control": "no-store"})


class Headers:
    """Headers on every answer: no framing by other sites, no sniffing, no caching."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in ((b"x-frame-options", b"SAMEORIGIN"),
                             (b"x-content-type-options", b"nosniff"),
                             (b"referrer-policy", b"no-referrer")):
                    if k not in names:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def make_app(folders: Folders, token: str, *, bind: str = "127.0.0.1", port: int = 0,
             max_running: int = 2, storage_options: dict[str, Any] | None = None,
             watch: bool = True) -> Starlette:
    """The app for ``folders``, guarded by ``token`` (see :mod:`emarray.gui.security`)."""
    jobs = Jobs(folders, max_running=max_running, storage_options=storage_options, watch=watch)
    routes = [
        Route("/", run_index),
        Route("/run/{name}", run_form),
        Route("/data", data_page),
        Route("/jobs", jobs_page),
        Route("/evaluate", evaluate_page),
        Route("/file", file_route),
        *api.ROUTES,
        *training.ROUTES,
        *recipes.ROUTES,
        *viewer.ROUTES,
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[
        Middleware(Guard, token=token, hosts=allowed_hosts(bind), cookie=f"emarray-gui-{port}"),
        Middleware(Headers)])
    app.state.gui = Gui(folders, jobs, token)
    app.state.templates = templates
    return app


def url_host(bind: str) -> str:
    if bind in ("0.0.0.0", "::", ""):
        import socket
        return socket.gethostname()
    return f"[{bind}]" if ":" in bind else bind


def serve(paths: list[str | os.PathLike], *, port: int | None = None, bind: str = "127.0.0.1",
          open_browser: bool = True, max_running: int = 2,
          storage_options: dict[str, Any] | None = None, echo: Any = print) -> None:
    """Serve the gui for ``paths`` until Ctrl-C (see ``emarray gui --help``)."""
    import socket

    import uvicorn

    from ..errors import InvalidArgumentError
    from .security import LOOPBACK, new_token
    folders = Folders(paths)
    if max_running < 1:
        raise InvalidArgumentError(f"--jobs must be at least 1, got {max_running}")
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tries = [port] if port is not None else list(range(8765, 8785))
    for p in tries:
        try:
            sock.bind((bind, p))
            break
        except OSError as exc:
            if p == tries[-1]:
                sock.close()
                raise InvalidArgumentError(
                    f"cannot serve on {bind}:{p}: {exc.strerror or exc} (choose another --port"
                    f"{'' if bind in LOOPBACK else ' or --bind'})") from None
    sock.listen(128)
    real_port = sock.getsockname()[1]
    token = new_token()
    app = make_app(folders, token, bind=bind, port=real_port, max_running=max_running,
                   storage_options=storage_options)
    url = f"http://{url_host(bind)}:{real_port}/?token={token}"
    echo(url)
    if bind not in LOOPBACK:
        echo(f"warning: serving on {bind}: anyone who can reach this machine and has the "
             "address above can read these folders and run jobs as you")
    echo(f"serving {folders.named()}; Ctrl-C stops the gui (its jobs go on)")
    if open_browser:
        import webbrowser
        try:
            opened = webbrowser.open(url)
        except Exception:
            opened = False
        if not opened:
            echo("no browser to open here: open the address above")
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        app.state.gui.jobs.close()
        if app.state.gui.viewers is not None:
            app.state.gui.viewers.close()
        echo("stopped")


class Background:
    """The gui for ``paths`` served by uvicorn in a thread of this process, on a free port of
    127.0.0.1 (for tests, scripts and notebooks); ``url``, ``token``, ``app``; ``close()``."""

    def __init__(self, paths: list[str | os.PathLike], **kw: Any):
        import socket
        import threading
        import time

        import uvicorn

        from .security import new_token
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.token = new_token()
        self.app = make_app(Folders(paths), self.token, port=self.port, **kw)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        gui = self.app.state.gui
        gui.jobs.close()
        if gui.viewers is not None:
            gui.viewers.close()
