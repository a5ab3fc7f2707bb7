"""One set of run options for every operator and CLI command (instead of ten keywords each)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from .schedulers import Runner, check_scheduler


@dataclass(frozen=True)
class RunOptions:
    """How a job runs: where, on what, with what display, and what it may do to its output.

    Every operator takes ``options=RunOptions(...)`` and/or the same fields as keywords
    (``emarray.threshold(src, dst, 0.5, scheduler="processes", resume=True)``). From Python,
    ``slurm`` may also be a dict of the settings, and ``estimate=True`` returns an
    :class:`~emarray.engine.estimate.Estimate`. The texts below are also the command line's
    ``--help`` and the GUI's.

    Attributes
    ----------
    scheduler : str or distributed.Client, optional
        Where the blocks run: ``threads`` (default), ``processes``, ``synchronous``,
        ``local-cluster``, ``cuda`` (one worker per GPU, dask-cuda), ``slurm`` (workers in SLURM
        jobs, dask-jobqueue, with the SLURM settings below), or a scheduler address
        ``tcp://host:port`` (default: ``$DASK_SCHEDULER_ADDRESS`` when set).
    workers : int, optional
        Threads, processes or local-cluster workers (default: all cores).
    backend : {"auto", "cpu", "cuda"}
        Where blocks are computed (auto: CUDA where a device and a kernel for the dtype exist),
        decided per operator and dtype where the block runs.
    gpu_memory_limit : float, int or str, optional
        CUDA: device memory cap, a fraction of the card or a size (``8GB``). Default 0.5.
    progress : bool
        Show a progress bar (a few log lines when not on a terminal).
    overwrite : bool
        Replace the output, if emarray made it.
    resume : bool
        Finish an interrupted run into the output, skipping finished blocks.
    connect_timeout : float, optional
        Seconds to wait for a scheduler address to answer (default 10).
    allow_incomplete : bool
        Accept inputs that are unfinished outputs of an interrupted job (their missing chunks
        read as 0).
    retries : int
        Run a failed block again this often before stopping with its name.
    window : int, optional
        Tasks in flight at most (default: 4 per worker, at least 8).
    slurm : dict or path, optional
        For the slurm scheduler: a YAML file of SLURM settings (partition, account, walltime,
        cores, memory, gres, jobs, prologue; see the clusters page of the docs).
    estimate : bool
        Run a sample of the blocks (into a scratch folder, never the output) and tell the
        expected wall time, memory per worker, bytes read and written, and output size instead
        of running the job.
    """

    scheduler: Any = None
    workers: int | None = None
    backend: str = "auto"
    gpu_memory_limit: Any = None
    progress: bool = False
    overwrite: bool = False
    resume: bool = False
    connect_timeout: float | None = None
    allow_incomplete: bool = False
    retries: int = 2
    window: int | None = None
    slurm: Any = None
    estimate: bool = False

    def __post_init__(self) -> None:
        from .. import environment
        environment.check()  # a bad EMARRAY_* number is refused before any work
        check_scheduler(self.scheduler)
        if self.slurm is not None:
            from .slurm import read_settings
            object.__setattr__(self, "slurm", read_settings(self.slurm))
        from ..backends import BACKENDS
        if str(self.backend).lower() not in BACKENDS:
            raise InvalidArgumentError(
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        from .memory import parse_memory_limit
        parse_memory_limit(self.gpu_memory_limit)  # "lots" is refused here, before any work
        if self.overwrite and self.resume:
            raise InvalidArgumentError("choose either overwrite or resume, not both")
        if self.estimate and self.resume:
            raise InvalidArgumentError(
                "choose either estimate or resume, not both (an estimate samples the whole job)")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidArgumentError(f"retries must be a whole number >= 0, got {self.retries!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise InvalidArgumentError(f"workers must be at least 1, got {self.workers!r}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise InvalidArgumentError(f"window must be at least 1, got {self.window!r}")

    @classmethod
    def make(cls, options: RunOptions | None = None, **overrides: Any) -> RunOptions:
        """``options`` (or the defaults) with ``overrides``; an unknown name is refused.

        >>> RunOptions.make(None, workers=2, resume=True).workers
        2
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidArgumentError(
                f"unknown run option {unknown[0]!r}; the options are {', '.join(sorted(names))}")
        base = options if options is not None else cls()
        if not isinstance(base, RunOptions):
            raise InvalidArgumentError(f"options must be a RunOptions, got {options!r}")
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def help(cls, name: str) -> str:
        """What the docstring above says of run option ``name``: the one text the command line's
        ``--help``, the GUI's forms and the API reference show.

        >>> RunOptions.help("workers")
        'Threads, processes or local-cluster workers (default: all cores).'
        """
        return _HELP.get(name, "")

    def runner(self, desc: str = "blocks") -> Runner:
        """The (not yet entered) Runner for these options."""
        return Runner(self.scheduler, self.workers, self.progress, desc,
                      connect_timeout=self.connect_timeout, window=self.window,
                      slurm=self.slurm)


def _attributes(doc: str | None) -> dict[str, str]:
    """The numpydoc ``Attributes`` section of ``doc``: name → its description on one line
    (``{}`` where Python keeps no docstrings, ``-OO``). The docstring is cleaned first: Python
    3.13 strips its indentation itself, earlier versions keep it."""
    import inspect
    _, found, section = inspect.cleandoc(doc or "").partition("Attributes\n----------\n")
    out: dict[str, str] = {}
    name = None
    for line in section.splitlines() if found else ():
        if line and not line.startswith(" ") and " : " in line:
            name = line.split(" : ", 1)[0].strip()
            out[name] = ""
        elif line.startswith("    ") and name is not None:
            out[name] = (out[name] + " " + line.strip()).strip()
    return out


_HELP = _attributes(RunOptions.__doc__)
