"""Progress of a job: a live bar on a terminal, a few plain lines in a log file, and for
programs that watch a job (``emarray gui``) a small JSON file named by
``EMARRAY_PROGRESS_FILE``, rewritten whole (a temporary file renamed over it) at most every
second with the stage, the units done of the total and an estimate of the seconds left."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

#: In a log (not a terminal), a line at most this often (seconds), and at every 10 %.
LOG_INTERVAL = 30.0
#: the environment variable naming the machine-readable progress file (unset: none written)
FILE_VAR = "EMARRAY_PROGRESS_FILE"
#: seconds between rewrites of that file (and at the start and end of each stage)
FILE_INTERVAL = 1.0


class Progress:
    """``with Progress(total, desc, enabled) as p: p.update(1)``.

    On a terminal this is a tqdm bar; elsewhere (a log file, a batch job's output) it prints
    one short line at each 10 % and at most every :data:`LOG_INTERVAL` seconds, instead of the
    carriage-return updates that turn into one endless line in a log.
    """

    def __init__(self, total: int | None, desc: str, enabled: bool = True, unit: str = "block",
                 initial: int = 0):
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.n = self.first = int(initial)
        self.postfix = ""
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._last_decile = int(10 * self.n / self.total) if self.total else 0
        self._file = os.environ.get(FILE_VAR) or None
        self._file_at = 0.0

    def __enter__(self) -> Progress:
        self._report(force=True)
        if self.enabled and _is_terminal():
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total, initial=self.n, desc=self.desc, unit=self.unit,
                             file=sys.stderr, dynamic_ncols=True)
        elif self.enabled and self.total:  # a log says at once what the job is doing
            print(f"{self.desc}: {self.total - self.n} {_plural(self.unit)} to do"
                  + (f" ({self.n} done before)" if self.n else ""), file=sys.stderr, flush=True)
        return self

    def update(self, n: int = 1) -> None:
        self.n += n
        self._report()
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            now = time.monotonic()
            decile = int(10 * self.n / self.total) if self.total else 0
            if decile > self._last_decile or now - self._last_line >= LOG_INTERVAL:
                self._last_decile, self._last_line = decile, now
                self._line(now)

    def set_postfix(self, **values: Any) -> None:
        """Figures shown after the count (``loss=0.1234``): on the bar, or in the next line."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values)

    def _line(self, now: float) -> None:
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rest = f"; {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {_plural(self.unit)}{pct} in {now - self._t0:.1f} s"
              f"{rest}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.__exit__(None, None, None)

    def _report(self, force: bool = False) -> None:
        """Rewrite the progress file (see the module's docs), at most every second."""
        if self._file is None:
            return
        now = time.monotonic()
        if not force and now - self._file_at < FILE_INTERVAL:
            return
        self._file_at = now
        write_progress_file(self._file, {
            "stage": self.desc, "unit": self.unit, "done": self.n, "total": self.total,
            "elapsed_s": round(now - self._t0, 3), "left_s": self.seconds_left(now),
            "pid": os.getpid(), "time": time.time()})

    def seconds_left(self, now: float) -> float | None:
        """The seconds this stage still needs at the rate of this run so far (None: unknown)."""
        done = self.n - self.first
        if not self.total or done <= 0:
            return None
        return round((self.total - self.n) * (now - self._t0) / done, 1)

    def __exit__(self, *exc: Any) -> None:
        self._report(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and exc[0] is None and self._last_decile < 10 and self.n > self.first:
            self._last_decile = 10
            self._line(time.monotonic())


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def write_progress_file(path: str, state: dict[str, Any]) -> None:
    """Replace the file at ``path`` by ``state`` as JSON, whole (a reader never sees half of
    it); a file that cannot be written is skipped: progress never stops a job."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_progress_file(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last state written to a progress file (None when there is none or it is not one)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
