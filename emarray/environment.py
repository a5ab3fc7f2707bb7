"""The numbers emarray reads from environment variables, each declared once and read one way.

Every reader in the package calls :func:`number`; :func:`check` reads them all, and runs when a
job's :class:`~emarray.engine.RunOptions` are made, so a bad value stops the job in one line
naming the variable and the value, before any output exists. A variable that is unset or set
to the empty string takes its default.

>>> import os
>>> os.environ["EMARRAY_CHECKPOINT_SECONDS"] = "0.5"
>>> number("EMARRAY_CHECKPOINT_SECONDS")
0.5
>>> os.environ["EMARRAY_CHECKPOINT_SECONDS"] = "soon"
>>> try:
...     number("EMARRAY_CHECKPOINT_SECONDS")
... except InvalidArgumentError as exc:
...     print(str(exc).split(";")[0])
EMARRAY_CHECKPOINT_SECONDS must be a number of seconds from 0 to 86400, got 'soon'
>>> del os.environ["EMARRAY_CHECKPOINT_SECONDS"]
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class Number:
    """One numeric environment variable: what it means, its unit, its bounds and default.

    ``low`` and ``high`` are inclusive unless ``low_open``/``high_open``; a value must be
    finite. ``default`` None means the reader decides (said in ``default_text``).
    """

    name: str
    meaning: str
    unit: str
    low: float
    high: float
    default: float | None
    low_open: bool = False
    high_open: bool = False
    default_text: str = ""

    def bounds(self) -> str:
        """The allowed range in words, e.g. ``from 0 to 86400`` or ``in [0, 1)``."""
        lo, hi = _fmt(self.low), _fmt(self.high)
        if self.low_open or self.high_open:
            return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        return f"from {lo} to {hi}"

    def parse(self, text: str | None) -> float | None:
        """The value of ``text`` (None or empty: the default), or the one-line error."""
        if text is None or not text.strip():
            return self.default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = (math.isfinite(value)
              and (value > self.low if self.low_open else value >= self.low)
              and (value < self.high if self.high_open else value <= self.high))
        if not ok:
            raise InvalidArgumentError(
                f"{self.name} must be a {self.unit} {self.bounds()}, got {text!r}; "
                f"it sets the {self.meaning}")
        return value


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x == int(x) else f"{x:g}"  # whole numbers in full: 2**50, not 1.1e+15


DAY = 86400.0
#: every numeric environment variable emarray reads, in the order the docs list them
NUMBERS: dict[str, Number] = {n.name: n for n in (
    Number("EMARRAY_CHUNK_CACHE", "size of the cache of decoded chunks that halo reads share, "
           "0 for none", "number of bytes", 0, 2.0**50, 256 * 2**20,
           default_text="268435456 (256 MiB)"),
    Number("EMARRAY_LABEL_KEEP_MIB", "memory label may use to keep each block's local labels "
           "between its first and last stage, 0 to keep none", "number of MiB", 0, 2.0**30,
           256, default_text="256"),
    Number("EMARRAY_CHECKPOINT_SECONDS", "time between saves of a job's progress, 0 for after "
           "every block", "number of seconds", 0, DAY, 1.0, default_text="1"),
    Number("EMARRAY_LOCK_LEASE_SECONDS", "age at which an object-storage output's lock that "
           "was not refreshed counts as abandoned", "number of seconds", 1, DAY, 90.0,
           default_text="90"),
    Number("EMARRAY_WORKER_TIMEOUT", "time a distributed job waits with no dask worker left",
           "number of seconds", 0, 7 * DAY, None, low_open=True,
           default_text="60 (SLURM: its start timeout)"),
    Number("EMARRAY_FAULT_WRITES", "fraction of block writes that fail torn (a test mode)",
           "fraction", 0, 1, 0.0, high_open=True, default_text="0 (off)"),
    Number("EMARRAY_SLOW_WRITES", "delay before each block's write (a test mode)",
           "number of seconds", 0, 3600, 0.0, default_text="0 (off)"),
)}


def number(name: str) -> float | None:
    """The value of the declared variable ``name`` in this process's environment.

    Raises
    ------
    InvalidArgumentError
        One line naming the variable, what it means, its range and the value found.
    """
    return NUMBERS[name].parse(os.environ.get(name))


def check() -> None:
    """Read every declared variable: the first bad one raises its one-line error."""
    for name in NUMBERS:
        number(name)


def table() -> str:
    """The variables as a Markdown table (for the docs, made from the declarations)."""
    rows = ["| variable | what it sets | allowed | default |", "|---|---|---|---|"]
    for n in NUMBERS.values():
        rows.append(f"| `{n.name}` | {n.meaning} | a {n.unit} {n.bounds()} | "
                    f"{n.default_text or _fmt(n.default or 0)} |")
    return "\n".join(rows)
