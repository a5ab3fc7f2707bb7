"""The operators a pipeline step can run, and how each one is called.

A step's keys are its operator's Python arguments (``emarray.threshold(src, dst, value, op,
chunks=...)`` gives a threshold step ``src``, ``value``, ``op``, ``chunks``, ...): they are read
from the function's signature, so a recipe and the Python API never disagree. Inputs name an
earlier step (``mask``, or ``synthetic.prob`` for one of several outputs) or a path.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

#: run options a single step may set (the rest are the pipeline's)
STEP_RUN_KEYS = ("backend", "gpu_memory_limit")


@dataclass(frozen=True)
class Op:
    """One operator: its function, inputs, and where its output goes.

    ``inputs`` are volume inputs (required), ``optional`` volume inputs that may be left out,
    ``files`` inputs that are files outside the pipeline (a TIFF stack, a model file).
    ``output`` is ``volume`` (``WORKDIR/STEP.zarr``), ``folder`` (``WORKDIR/STEP/``), ``table``
    (``WORKDIR/STEP.csv``) or ``inplace`` (the step adds to its ``src``: pyramid levels).
    ``out_arg`` is the function's argument for the output path; ``parts`` names the volumes a
    folder output holds (``synthetic.raw``); ``args`` maps recipe names to argument names.
    """

    func: str
    inputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    output: str = "volume"
    out_arg: str | None = "dst"
    parts: tuple[str, ...] = ()
    args: tuple[tuple[str, str], ...] = ()
    about: str = ""

    def function(self) -> Callable[..., Any]:
        module, _, name = self.func.partition(":")
        return getattr(importlib.import_module(module), name)

    def arg(self, key: str) -> str:
        return dict(self.args).get(key, key)

    def params(self) -> tuple[str, ...]:
        """The keys a step of this operator may set besides its inputs (from the signature)."""
        taken = {self.arg(k) for k in self.inputs + self.optional + self.files}
        taken |= {self.out_arg or "", "options", "run"}
        recipe_name = {arg: key for key, arg in self.args}
        sig = inspect.signature(self.function())
        names = [recipe_name.get(p.name, p.name) for p in sig.parameters.values()
                 if p.name not in taken and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        return tuple(names) + STEP_RUN_KEYS

    def required(self) -> tuple[str, ...]:
        """The keys a step must set (arguments without a default)."""
        recipe_name = {arg: key for key, arg in self.args}
        sig = inspect.signature(self.function())
        names = self.params()
        return tuple(recipe_name.get(p.name, p.name) for p in sig.parameters.values()
                     if recipe_name.get(p.name, p.name) in names and p.default is p.empty)

    @property
    def volume_output(self) -> bool:
        return self.output in ("volume", "inplace")


OPS: dict[str, Op] = {
    "ingest": Op("emarray.ingest:ingest", files=("src",),
                 about="a slice folder, TIFF stack or HDF5 file -> OME-Zarr"),
    "synthetic": Op("emarray.datasets:synthetic", output="folder", out_arg="out_dir",
                    parts=("raw", "truth", "prob"),
                    about="synthetic EM-like raw, truth and prob volumes"),
    "predict": Op("emarray.ops.predict:predict", inputs=("raw",), files=("model",), out_arg="out",
                  about="3D U-Net probability map"),
    "threshold": Op("emarray.ops.threshold:threshold", inputs=("src",),
                    args=(("compare", "op"),),  # `op` names a step's operator
                    about="uint8 0/1 mask"),
    "rescale": Op("emarray.ops.rescale:rescale", inputs=("src",), about="linear map to uint8"),
    "smooth": Op("emarray.ops.smooth:smooth", inputs=("src",), about="Gaussian smoothing"),
    "label": Op("emarray.ops.label:label", inputs=("src",), about="connected components"),
    "upsample": Op("emarray.ops.upsample:upsample", inputs=("src", "like"),
                   about="resample onto another volume's grid"),
    "pyramid": Op("emarray.ops.pyramid:pyramid", inputs=("src",), output="inplace", out_arg=None,
                  args=(("src", "path"),), about="downsampled levels added to src"),
    "objects": Op("emarray.ops.objects:objects", inputs=("labels",), optional=("raw",),
                  output="table", out_arg="out", about="per-object table (objects.csv)"),
    "match": Op("emarray.ops.match:match", inputs=("pred", "truth"), output="folder",
                out_arg="out", about="instance matching against ground truth"),
    "sweep": Op("emarray.ops.sweep:sweep", inputs=("prob", "truth"), optional=("mask",),
                output="folder", out_arg="out", about="threshold sweep against ground truth"),
}


# -- values checked before any work ----------------------------------------------------------
# Each operator checks all its arguments when it starts; a pipeline checks these beforehand, so
# that a typo in the last step does not surface after the first steps ran for an hour.
def _number(v: Any, name: str) -> None:
    from .._normalize import finite_number
    finite_number(v, name)


def _whole(minimum: int) -> Callable[[Any, str], None]:
    def check(v: Any, name: str) -> None:
        from .._normalize import whole_number
        whole_number(v, name, minimum)
    return check


def _zyx(kind: type = int) -> Callable[[Any, str], None]:
    def check(v: Any, name: str) -> None:
        from .._normalize import parse_tuple
        parse_tuple(v, name, 3, kind=kind)
    return check


def _one_of(*choices: Any) -> Callable[[Any, str], None]:
    def check(v: Any, name: str) -> None:
        if v not in choices:
            from ..errors import InvalidArgumentError
            raise InvalidArgumentError(f"{name} must be one of {', '.join(map(str, choices))}, "
                                       f"got {v!r}")
    return check


_COMPRESSION = _one_of("zstd", "blosc-zstd", "blosc-lz4", "gzip", "none")
#: per key (any op), or per "op.key": a check of the value alone
CHECKS: dict[str, Callable[[Any, str], None]] = {
    "chunks": _zyx(), "shards": _zyx(), "shape": _zyx(), "patch": _zyx(), "block": _zyx(),
    "voxel_size": _zyx(float), "compression": _COMPRESSION, "seed": _whole(0),
    "backend": _one_of("auto", "cpu", "cuda"),
    "threshold.value": _number, "threshold.compare": _one_of("gt", "ge", "lt", "le"),
    "rescale.lo": _number, "rescale.hi": _number,
    "smooth.sigma": _zyx(float), "smooth.truncate": _number,
    "smooth.unit": _one_of("voxel", "physical"),
    "label.connectivity": _one_of(6, 18, 26), "label.min_size": _whole(0),
    "label.mode": _one_of("auto", "binary", "multilabel"), "label.background": _number,
    "pyramid.levels": _whole(1), "pyramid.until_size": _whole(1),
    "pyramid.mode": _one_of("auto", "mean", "mode", "max", "min", "nearest"),
    "upsample.mode": _one_of("auto", "nearest", "linear"),
    "predict.batch": _whole(1), "predict.mc_samples": _whole(0), "predict.overlap": _zyx(),
    "predict.blend": _one_of("gaussian", "bump", "constant"),
    "predict.dtype": _one_of("float32", "float16", "uint8"),
    "predict.precision": _one_of("auto", "float32", "bfloat16"), "predict.threads": _whole(1),
    "match.connectivity": _one_of(6, 18, 26), "match.match_threshold": _number,
    "match.label_first": _one_of(True, False),
    "sweep.thresholds": _whole(1), "sweep.channel": _whole(0),
    "sweep.truth_value": _number, "sweep.ignore_value": _number,
}


def check_values(op_name: str, step: str, params: dict[str, Any]) -> None:
    """Check the values of a step's keys that can be checked without its inputs."""
    for key, value in params.items():
        check = CHECKS.get(f"{op_name}.{key}") or CHECKS.get(key)
        if check is not None and value is not None:
            try:
                check(value, key)
            except Exception as exc:
                from ..errors import EmarrayError, InvalidArgumentError
                msg = str(exc) if isinstance(exc, EmarrayError) else f"{key}: {exc}"
                raise InvalidArgumentError(f"step {step!r} ({op_name}): {msg}") from None
