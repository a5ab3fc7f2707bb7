"""The operators a pipeline step can run, and how each one is called: read from each operator's
declaration (:mod:`emarray.spec`).

A step's keys are its operator's declared parameters and inputs, the very names of its Python
arguments (``emarray.threshold(src, dst, value, compare, chunks=...)`` gives a threshold step
``src``, ``value``, ``compare``, ``chunks``, ...), so a recipe, the command line and the Python
API never disagree. Inputs name an earlier step (``mask``, or ``synthetic.prob`` for one of
several outputs) or a path.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..spec import Operator, operators

#: the kinds of input a step names as another step or a path
STEP_INPUTS = ("volume", "folder")
#: run options a single step may set (the rest are the pipeline's)
STEP_RUN_KEYS = ("backend", "gpu_memory_limit")


@dataclass(frozen=True)
class Op:
    """One operator as a recipe sees it.

    ``inputs`` are volume (or folder: skeletons, meshes) inputs that name a step or a path
    (required), ``optional`` such inputs that may be left out, ``files`` inputs that are files
    outside the pipeline (a TIFF stack, a model file).
    ``output`` is ``volume`` (``WORKDIR/STEP.zarr``), ``folder`` (``WORKDIR/STEP/``), ``table``
    (``WORKDIR/STEP.csv``), ``file`` or ``inplace`` (the step adds to its ``src``: pyramid
    levels); ``out_arg`` is the function's argument for the output path; ``parts`` names the
    volumes a folder output holds (``synthetic.raw``).
    """

    spec: Operator

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.spec.inputs if p.kind in STEP_INPUTS and not p.optional)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.spec.inputs if p.kind in STEP_INPUTS and p.optional)

    def input_kind(self, name: str) -> str:
        """The kind of the input ``name`` (``volume``, ``folder``, ...)."""
        return next(p.kind for p in self.spec.inputs if p.name == name)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.spec.inputs if p.kind in ("file", "model"))

    @property
    def output(self) -> str:
        return self.spec.output.kind if self.spec.output is not None else "none"

    @property
    def out_arg(self) -> str | None:
        out = self.spec.output
        return None if out is None or out.kind == "inplace" else out.name

    @property
    def parts(self) -> tuple[str, ...]:
        return self.spec.output.parts if self.spec.output is not None else ()

    @property
    def about(self) -> str:
        return self.spec.summary

    def function(self) -> Callable[..., Any]:
        assert self.spec.call is not None
        return self.spec.call

    def arg(self, key: str) -> str:
        return key

    def params(self) -> tuple[str, ...]:
        """The keys a step of this operator may set besides its inputs."""
        return tuple(p.name for p in self.spec.params) + STEP_RUN_KEYS

    def required(self) -> tuple[str, ...]:
        """The keys a step must set (parameters without a default)."""
        return tuple(p.name for p in self.spec.params if p.required)

    @property
    def volume_output(self) -> bool:
        return self.output in ("volume", "inplace")


_OPS: dict[str, Op] = {}


def all_ops() -> dict[str, Op]:
    """The operators a step can run, by name (every declared operator that writes something
    a later step or the user reads), read from the declarations on first use."""
    if not _OPS:
        for name, spec in operators().items():
            if spec.output is not None and spec.output.kind != "file":
                _OPS[name] = Op(spec)
    return _OPS


def check_values(op_name: str, step: str, params: dict[str, Any]) -> dict[str, Any]:
    """A step's parameter values checked and normalised by its operator's declaration, and its
    run keys by :class:`~emarray.engine.RunOptions` (``gpu_memory_limit=lots`` is refused here,
    before the first step runs); errors name the step."""
    from ..engine import RunOptions
    from ..errors import EmarrayError, InvalidArgumentError
    spec = all_ops()[op_name].spec
    try:
        out = spec.check_values({k: v for k, v in params.items()
                                 if k not in STEP_RUN_KEYS and v is not None})
        run = {k: params[k] for k in STEP_RUN_KEYS if params.get(k) is not None}
        RunOptions.make(None, **run)
    except EmarrayError as exc:
        raise InvalidArgumentError(f"step {step!r} ({op_name}): {exc}") from None
    return {**params, **out}
