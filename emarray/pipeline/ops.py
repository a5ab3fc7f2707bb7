"""The operators a pipeline step can run, and how each one is called: read from each operator's
declaration (:mod:`emarray.spec`).

A step's keys are its operator's declared parameters and inputs, the very names of its Python
arguments (``emarray.threshold(src, dst, value, compare, chunks=...)`` gives a threshold step
``src``, ``value``, ``compare``, ``chunks``, ...), so a recipe, the command line and the Python
API never disagree. Inputs name an earlier step (``mask``, or ``synthetic.prob`` for one of
several outputs) or a path.
"""
from __future__ import annotations

from typing import Any

from ..spec import Operator, operators

#: the kinds of input a step names as another step or a path
STEP_INPUTS = ("volume", "folder")
#: run options a single step may set (the rest are the pipeline's)
STEP_RUN_KEYS = ("backend", "gpu_memory_limit")


def step_inputs(op: Operator, *, optional: bool = False) -> tuple[str, ...]:
    """The inputs of ``op`` a step names as an earlier step or a path (volumes; folders:
    skeletons, meshes): the required ones, or (``optional``) those it may leave out."""
    return tuple(p.name for p in op.inputs if p.kind in STEP_INPUTS and p.optional == optional)


def file_inputs(op: Operator) -> tuple[str, ...]:
    """The inputs of ``op`` that are files outside the pipeline (a TIFF stack, a model file)."""
    return tuple(p.name for p in op.inputs if p.kind in ("file", "model"))


def step_keys(op: Operator) -> tuple[str, ...]:
    """The keys a step of ``op`` may set besides its inputs and ``out``."""
    return tuple(p.name for p in op.params) + STEP_RUN_KEYS


_STEP_OPERATORS: dict[str, Operator] = {}


def step_operators() -> dict[str, Operator]:
    """The operators a step can run, by name (every declared operator that writes something
    a later step or the user reads: a volume, ``WORKDIR/STEP.zarr``; a folder, ``WORKDIR/STEP/``;
    a table, ``WORKDIR/STEP.csv``; or levels added to its ``src``, ``inplace``), read from the
    declarations on first use."""
    if not _STEP_OPERATORS:
        for name, op in operators().items():
            if op.output_kind not in ("none", "file"):
                _STEP_OPERATORS[name] = op
    return _STEP_OPERATORS


def check_values(op_name: str, step: str, params: dict[str, Any]) -> dict[str, Any]:
    """A step's parameter values checked and normalised by its operator's declaration, and its
    run keys by :class:`~emarray.engine.RunOptions` (``gpu_memory_limit=lots`` is refused here,
    before the first step runs); errors name the step."""
    from ..engine import RunOptions
    from ..errors import EmarrayError, InvalidArgumentError
    op = step_operators()[op_name]
    try:
        out = op.check_values({k: v for k, v in params.items()
                               if k not in STEP_RUN_KEYS and v is not None})
        run = {k: params[k] for k in STEP_RUN_KEYS if params.get(k) is not None}
        RunOptions.make(None, **run)
    except EmarrayError as exc:
        raise InvalidArgumentError(f"step {step!r} ({op_name}): {exc}") from None
    return {**params, **out}
