"""The gui's pages drawn from their Jinja2 templates (shipped in the package), with what every
page shows: the folders served and which tab is open."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .state import Gui

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def page(request: Request, name: str, **context: Any) -> Response:
    """The page of template ``name`` with ``context``."""
    g: Gui = request.app.state.gui
    return templates.TemplateResponse(request, name, {
        "folders": [str(r) for r in g.folders.roots], "nav": name.split(".")[0], **context})
