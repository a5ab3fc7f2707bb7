"""Figures without pyplot: a matplotlib ``Figure`` drawn by the Agg canvas (no GUI backend, no
global state, thread-safe), and an import started early so that a job's plot does not wait
for matplotlib after its blocks are done."""
from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

_started: set[str] = set()
_lock = threading.Lock()
PLOT = ("matplotlib.figure", "matplotlib.backends.backend_agg")


def prewarm(*modules: str) -> None:
    """Import ``modules`` (default: matplotlib's figure and canvas) in a background thread while
    a job's blocks run; each module once per process. A failed import is left for the real one.

    >>> prewarm(); prewarm("pandas", "pandas")
    """
    names = modules or PLOT
    with _lock:
        todo = [m for m in dict.fromkeys(names) if m not in _started and m not in sys.modules]
        _started.update(todo)
    if todo:
        threading.Thread(target=_import, args=(todo,), name="emarray-import", daemon=True).start()


def _import(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the caller's own import reports it
            return


def subplots(ncols: int = 1, figsize: tuple[float, float] = (7, 4.5)) -> tuple[Any, Any]:
    """``(figure, axes)`` like ``pyplot.subplots(1, ncols)``; save with ``fig.savefig``.

    >>> fig, ax = subplots()
    >>> type(ax).__name__
    'Axes'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def save(fig: Any, path: Any, dpi: int = 110) -> None:
    """Save ``fig`` as a PNG at ``path`` (local disk or object storage), whole or not at all."""
    import io

    from .engine.checkpoint import atomic_write
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(path, buf.getvalue())
