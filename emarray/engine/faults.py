"""Test modes for faults: fail a fraction of block writes, and trace every block computed.

``EMARRAY_FAULT_WRITES=0.2`` makes each block's write fail with that probability: the block
writes the first half of its first output's region, then raises :class:`InjectedFault` (a torn
write, as a worker that dies mid-write leaves). The engine retries the block (``retries``), so a
job with enough retries still finishes with the exact output. ``EMARRAY_FAULT_SEED`` makes the
draws repeatable per process.

``EMARRAY_TRACE=FILE`` appends one line per block that finished computing (on whichever worker):
``job<TAB>stage<TAB>flat block index<TAB>pid<TAB>node``, where ``job`` is the folder that keeps the
job's progress and ``node`` the SLURM node (``SLURMD_NODENAME``) or else the host name. Comparing
the lines of a job killed and resumed with its saved progress shows which blocks were computed
more than once, and the nodes show where they ran.

``EMARRAY_SLOW_WRITES=0.01`` waits that many seconds before each block's write: a job slow
enough to stop or overlap on purpose, however fast the machine.

All are read once per job, on the driver when it starts each stage (:func:`modes`), and reach
the blocks with the stage: set them where the job is started, as for any other setting; a
worker's own environment is not read for them.
"""
from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import environment

FAULT_VAR = "EMARRAY_FAULT_WRITES"
SEED_VAR = "EMARRAY_FAULT_SEED"
TRACE_VAR = "EMARRAY_TRACE"
SLOW_VAR = "EMARRAY_SLOW_WRITES"

_rng: random.Random | None = None
_rng_lock = threading.Lock()
_trace_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """A block write failed on purpose (``EMARRAY_FAULT_WRITES``)."""


@dataclass(frozen=True)
class FaultModes:
    """The test modes of one job, as its driver's environment said when the stage started."""

    fraction: float = 0.0  # EMARRAY_FAULT_WRITES
    seed: str | None = None  # EMARRAY_FAULT_SEED
    slow: float = 0.0  # EMARRAY_SLOW_WRITES
    trace: str = ""  # EMARRAY_TRACE


#: no fault, no delay, no trace: what a stage not started by the engine gets
NONE = FaultModes()


def modes() -> FaultModes:
    """The test modes the environment asks for (read once per stage, on the driver)."""
    return FaultModes(fraction=fault_fraction(), seed=os.environ.get(SEED_VAR),
                      slow=environment.number(SLOW_VAR) or 0.0,
                      trace=os.environ.get(TRACE_VAR) or "")


def fault_fraction() -> float:
    """The fraction of block writes to fail (0 when the variable is unset)."""
    return environment.number(FAULT_VAR) or 0.0


def _draw(seed: str | None) -> float:
    global _rng
    with _rng_lock:
        if _rng is None:
            _rng = random.Random(f"{seed}:{os.getpid()}" if seed is not None else None)
        return _rng.random()


def write_block(writes: list[tuple[Any, tuple[slice, ...], np.ndarray]], what: str,
                mode: FaultModes = NONE) -> None:
    """Write a block's outputs (``(volume, region, data)`` each), failing (torn) as
    ``mode.fraction`` asks: one draw per block, however many outputs it writes."""
    if mode.slow:
        time.sleep(mode.slow)
    p = mode.fraction
    if p and _draw(mode.seed) < p:
        volume, region, data = writes[0]
        half = (data.shape[0] + 1) // 2
        r0 = region[0]
        volume.write((slice(r0.start, r0.start + half),) + tuple(region[1:]), data[:half])
        raise InjectedFault(f"injected write fault ({FAULT_VAR}={p:g}) in {what}")
    for volume, region, data in writes:
        volume.write(region, data)


def trace(job: str, stage: str, flat: int, mode: FaultModes = NONE) -> None:
    """Record that a block finished computing, when ``mode.trace`` names a file."""
    path = mode.trace
    if not path:
        return
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    line = f"{job}\t{stage}\t{flat}\t{os.getpid()}\t{node}\n".encode()
    with _trace_lock:  # one write(2) per line on an O_APPEND file: lines never interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
