"""Figures without pyplot: a matplotlib ``Figure`` drawn by the Agg canvas (no GUI backend, no
global state, thread-safe), and an import started early so that a job's plot does not wait
for matplotlib after its blocks are done."""
from __future__ import annotations

import threading
from typing import Any

_warm: threading.Thread | None = None


def prewarm() -> None:
    """Import matplotlib in a background thread while a job's blocks run (once per process).

    >>> prewarm(); prewarm()
    """
    global _warm
    if _warm is None:
        _warm = threading.Thread(target=_import, name="emarray-matplotlib", daemon=True)
        _warm.start()


def _import() -> None:
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


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
