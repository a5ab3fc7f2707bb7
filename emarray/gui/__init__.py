"""``emarray gui``: the operators, training, recipes, results and the viewer in a browser,
for people who do not use a terminal (see docs/gui.md).

A Starlette app served by uvicorn on 127.0.0.1 behind a token, whose forms are made from the
operators' declarations and whose jobs are the command line's own jobs, recorded under the
folders it serves. Needs the ``gui`` extra: ``pip install 'emarray[gui]'``.
"""
from __future__ import annotations

from typing import Any


def require() -> None:
    """Refuse in one line when the gui's libraries are missing."""
    from ..extras import require_all
    require_all(("jinja2", "starlette", "uvicorn", "neuroglancer", "pandas"), "emarray gui",
                extra="gui")


def serve(*args: Any, **kwargs: Any) -> None:
    """Serve the gui until Ctrl-C (:func:`emarray.gui.app.serve`)."""
    require()
    from .app import serve as _serve
    _serve(*args, **kwargs)


__all__ = ["serve"]
