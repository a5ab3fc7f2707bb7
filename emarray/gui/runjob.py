"""``python -m emarray.gui.runjob JOBDIR [--resume]``: one job of ``emarray gui``.

It runs the job's command (``JOBDIR/job.json``) through the ``emarray`` command line itself,
in this process, so the job is the CLI's job (same checks, engine, locks, progress and resume),
and records how it ended in ``JOBDIR/exit.json``, which a gui started later reads: the exit
status, and whether it was interrupted (Ctrl-C, the gui's Stop: SIGINT or SIGTERM, both clean:
the finished blocks are kept for ``--resume``). A job killed outright leaves no ``exit.json``;
the gui then says it was interrupted. Store options (secrets) come in the environment, never
on the command line or on disk.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .jobs import STORAGE_VAR



def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    jobdir = Path(args[0])
    resume = "--resume" in args[1:]
    record = json.loads((jobdir / "job.json").read_text())
    argv = list(record["argv"]) + (["--resume"] if resume else [])
    interrupted: dict[str, str | None] = {"by": None}

    def on_signal(signum: int, frame: Any) -> None:
        interrupted["by"] = signal.Signals(signum).name
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    options = os.environ.pop(STORAGE_VAR, None)
    code: int = 1
    try:
        from ..cli import cli
        if options:
            from .. import storage
            storage.configure(json.loads(options))
        sys.argv = ["emarray", *argv]
        cli.main(args=argv, prog_name="emarray")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    finally:
        import resource
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        done = {"code": code, "interrupted": interrupted["by"], "ended": time.time(),
                "resume": resume, "cpu_s": round(cpu, 3)}
        tmp = jobdir / ".exit.json.tmp"
        tmp.write_text(json.dumps(done))
        os.replace(tmp, jobdir / "exit.json")
    return code


if __name__ == "__main__":
    sys.exit(main())
