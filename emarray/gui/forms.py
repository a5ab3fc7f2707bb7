"""Operator forms made from the declarations (:mod:`emarray.spec`), as the CLI's commands are.

Each operator's form has its inputs and output (:class:`~emarray.spec.Port`), its parameters
(:class:`~emarray.spec.Param`: kind, help, unit, choices, default) and the run options it
declares, "where to run" among them. A field is checked by the declaration's own check (the
CLI's one-line message) when it changes and again, with the rest, before a job is made; a
checked form becomes the command line of the same job on the CLI (no shell: a list of
arguments). Nothing here names an operator: one declared later gets its form with no change.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..operator_commands import RUN_OPTIONS
from ..errors import EmarrayError, InvalidArgumentError
from ..spec import Operator, Param, Port
from .places import Folders

#: where a job's blocks run, as the form offers it (``--scheduler``'s values and what each needs)
WHERE = {
    "threads": "this machine, threads (workers: how many; default every core)",
    "local-cluster": "this machine, a dask cluster of worker processes (workers: how many)",
    "address": "a running dask scheduler (its address, tcp://host:8786)",
    "slurm": "SLURM worker jobs (a saved SLURM config file; workers: how many jobs)",
}
#: run options the form shows as their own fields (``scheduler`` and ``slurm`` are "where";
#: ``resume`` is the Resume button of an interrupted job)
SPECIAL_RUN = ("scheduler", "workers", "slurm", "connect_timeout", "resume")
#: the extension of a suggested output, by the output's kind
SUFFIX = {"volume": ".zarr", "table": ".csv", "folder": "", "file": ".tif", "model": ".pt"}


class FormError(EmarrayError):
    """Fields refused: ``fields`` maps each to its one-line message."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        super().__init__(next(iter(fields.values())))


@dataclass
class Field:
    """One field of a form, as the page draws it."""

    name: str
    group: str          # input, output, param, run, where
    widget: str         # path, text, choice, flag
    label: str
    help: str = ""
    kind: str = ""      # a path's kind (volume, file, model, table, folder) or a param's kind
    unit: str = ""
    choices: list[Any] = field(default_factory=list)
    default: str = ""   # as text; "" when there is none
    required: bool = False
    cli: str = ""       # how the command line takes it
    labels: bool = False


def _text(value: Any) -> str:
    if value is None or value is inspect.Parameter.empty or value is False:
        return ""
    if value is True:
        return "true"
    if isinstance(value, (tuple, list)):
        return ",".join(_text(v) for v in value)
    return str(value)


def _sentence(text: str) -> str:
    """A declared help as the page shows it: as written (it may start with a value, ``gt``),
    without rST marks."""
    return text.strip().replace("``", "")


def _port_field(port: Port, group: str) -> Field:
    return Field(port.name, group, "path", port.name.replace("_", " "), _sentence(port.help),
                 port.kind, required=not port.optional,
                 cli=(f"--{port.name}" if port.option or port.optional else port.metavar),
                 labels=port.labels)


def _param_field(p: Param) -> Field:
    widget = "choice" if p.kind == "choice" else "flag" if p.kind == "flag" else "text"
    return Field(p.name, "param", widget, p.name.replace("_", " "), _sentence(p.help), p.kind,
                 p.unit, [_text(c) for c in p.choices], _text(p.default), p.required,
                 cli=p.flag)


def _run_field(name: str) -> Field:
    decls, attrs = RUN_OPTIONS[name]
    choices = list(getattr(attrs.get("type"), "choices", ()) or ())
    widget = "flag" if attrs.get("is_flag") else "choice" if choices else "text"
    return Field(name, "run", widget, name.replace("_", " "), _sentence(attrs.get("help", "")),
                 choices=choices, default=_text(attrs.get("default")), cli=decls[0])


def where_fields(run: tuple[str, ...]) -> list[Field]:
    """The "where to run" fields of a job that takes ``scheduler`` (else none): the scheduler
    option split in two for a form, a choice of where and a scheduler's address."""
    if "scheduler" not in run:
        return []
    out = [Field("where", "where", "choice", "where", "Where the blocks run.",
                 choices=list(WHERE), default="threads"),
           Field("workers", "where", "text", "workers", _sentence(RUN_OPTIONS["workers"][1]["help"]),
                 "int", cli="--workers"),
           Field("address", "where", "text", "scheduler address",
                 "A dask scheduler's address, tcp://host:8786.", cli="--scheduler")]
    if "slurm" in run:
        out.append(Field("slurm_config", "where", "path", "SLURM config",
                         _sentence(RUN_OPTIONS["slurm"][1]["help"]), "file", cli="--slurm-config"))
    if "connect_timeout" in run:
        out.append(Field("connect_timeout", "where", "text", "connect timeout",
                         _sentence(RUN_OPTIONS["connect_timeout"][1]["help"]), "float",
                         unit="seconds", cli="--connect-timeout"))
    return out


#: the gui's own field: the CLI's --report page of a job (every operator with an output)
REPORT = Field("report", "run", "flag", "report page",
               "also write an HTML page of this run: inputs, output, slices of the volumes, "
               "figures (a fixed cost of about half a second)", default="true", cli="--report")


def fields(op: Operator) -> list[Field]:
    """Every field of ``op``'s form, in the order the page shows them."""
    out = [_port_field(p, "input") for p in op.inputs]
    if op.path_output is not None:
        out.append(_port_field(op.path_output, "output"))
    out += [_param_field(p) for p in op.params]
    out += where_fields(op.run)
    out += [_run_field(r) for r in op.run if r not in SPECIAL_RUN]
    if op.output is not None:
        out.append(REPORT)
    return out


def describe(op: Operator) -> dict[str, Any]:
    """``op`` as ``GET /api/operators`` gives it."""
    doc = inspect.cleandoc(op.func.__doc__ or "") if op.func is not None else ""
    return {"name": op.name, "summary": op.summary, "usage": op.usage(),
            "about": " ".join(doc.split("\n\n")[0].replace("``", "").split()) if doc else "",
            "output": op.output.kind if op.output is not None else None,
            "suffix": SUFFIX.get(op.output_kind, ""),
            "fields": [asdict(f) for f in fields(op)]}


# -- checking ------------------------------------------------------------------------------
def _given(value: Any) -> bool:
    return value is not None and value is not False and not (isinstance(value, str)
                                                             and not value.strip())


def check_field(op: Operator, name: str, value: Any, folders: Folders,
                values: dict[str, Any] | None = None) -> str:
    """The one-line message for ``value`` in the field ``name`` of ``op``'s form ("" when it
    is fine); ``values``: the rest of the form, for fields that depend on others."""
    try:
        _check(op, name, value, folders, values or {})
    except EmarrayError as exc:
        return str(exc)
    return ""


def _check(op: Operator, name: str, value: Any, folders: Folders,
           values: dict[str, Any]) -> Any:
    """``value`` of field ``name`` checked (or raise naming it); returns the CLI text."""
    ports = {p.name: p for p in op.inputs}
    if op.path_output is not None:
        ports[op.path_output.name] = op.path_output
    params = {p.name: p for p in op.params}
    if name in params:
        p = params[name]
        if not _given(value):
            if p.required:
                raise InvalidArgumentError(f"{name} is needed ({p.flag})")
            return None
        checked = p.check(value.strip() if isinstance(value, str) else value)
        if p.kind == "flag":
            return bool(checked)
        return value.strip() if isinstance(value, str) else _text(checked)
    if name in ports:
        port = ports[name]
        is_output = op.output is not None and port is op.output
        if not _given(value):
            if not port.optional:
                raise InvalidArgumentError(
                    f"{name}: choose {'where the output goes' if is_output else 'the input'}")
            return None
        path = folders.resolve(value, name)
        if is_output:
            op.check_output({name: str(path)})
            overwrite = _given(values.get("overwrite"))
            if os.path.lexists(path) and not overwrite:
                raise InvalidArgumentError(
                    f"output {value.strip()!r} already exists; tick overwrite to replace it "
                    "(an interrupted job of the gui resumes from the Jobs page)")
            if not path.parent.is_dir():
                raise InvalidArgumentError(f"{name}: the folder {str(path.parent)!r} does not "
                                           "exist")
        elif not path.exists():
            raise InvalidArgumentError(f"{name}: nothing at {value.strip()!r}")
        return str(path)
    return _check_run(name, value, folders, values)


def _check_run(name: str, value: Any, folders: Folders, values: dict[str, Any]) -> Any:
    from .._normalize import finite_number, whole_number
    where = values.get("where") or "threads"
    if name == "report":
        return None
    if name == "where":
        if value not in WHERE:
            raise InvalidArgumentError(f"where must be one of {', '.join(WHERE)}, got {value!r}")
        return value
    if not _given(value):
        if name == "address" and where == "address":
            raise InvalidArgumentError("scheduler address: give a dask scheduler's address, "
                                       "tcp://host:8786")
        if name == "slurm_config" and where == "slurm":
            raise InvalidArgumentError("SLURM config: choose a saved SLURM config file "
                                       "(docs: clusters)")
        return None
    text = value.strip() if isinstance(value, str) else value
    if name == "workers":
        return str(whole_number(text, "workers", 1))
    if name == "connect_timeout":
        t = finite_number(text, "connect timeout")
        if t <= 0:
            raise InvalidArgumentError(f"connect timeout must be > 0 seconds, got {value!r}")
        return str(t)
    if name == "address":
        from ..engine.schedulers import check_scheduler
        if "://" not in str(text):
            raise InvalidArgumentError(f"scheduler address must look like tcp://host:8786, got "
                                       f"{value!r}")
        return check_scheduler(text)
    if name == "slurm_config":
        path = folders.resolve(text, "SLURM config")
        from ..engine.slurm import read_settings
        read_settings(str(path))
        return str(path)
    if name not in RUN_OPTIONS:
        raise InvalidArgumentError(f"no field {name!r} in this form")
    decls, attrs = RUN_OPTIONS[name]
    if attrs.get("is_flag"):
        from ..spec import Param as _P
        return bool(_P(name, "flag", "").check(value))
    choices = list(getattr(attrs.get("type"), "choices", ()) or ())
    if choices and text not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    if name == "retries":
        return str(whole_number(text, "retries", 0))
    return str(text)


@dataclass
class Command:
    """A checked form as the job that runs it: the CLI arguments (after ``emarray``), the
    paths it reads and writes, and whether it can be resumed."""

    argv: list[str]
    inputs: list[str]
    outputs: list[str]
    resumable: bool
    title: str
    report: bool = False  # whether the job writes its --report page


def where_args(values: dict[str, Any], run: tuple[str, ...], folders: Folders,
               errors: dict[str, str]) -> list[str]:
    """``--scheduler``, ``--workers``, ``--slurm-config``, ``--connect-timeout`` of the "where to
    run" fields (messages into ``errors``)."""
    if "scheduler" not in run:
        return []
    checked: dict[str, Any] = {}
    for f in where_fields(run):
        try:
            checked[f.name] = _check_run(f.name, values.get(f.name, f.default if f.name ==
                                                               "where" else None),
                                         folders, values)
        except EmarrayError as exc:
            errors[f.name] = str(exc)
    where = checked.get("where") or "threads"
    args = [f"--scheduler={checked.get('address') if where == 'address' else where}"]
    if where == "address" and not checked.get("address"):
        return []
    if checked.get("workers") and where != "address":
        args.append(f"--workers={checked['workers']}")
    if where == "slurm" and checked.get("slurm_config"):
        args.append(f"--slurm-config={checked['slurm_config']}")
    if where == "address" and checked.get("connect_timeout"):
        args.append(f"--connect-timeout={checked['connect_timeout']}")
    return args


def command(op: Operator, values: dict[str, Any], folders: Folders) -> Command:
    """The job of ``op`` with the form's ``values``: every field checked (all the messages at
    once, :class:`FormError`), then the command line the CLI would be given."""
    errors: dict[str, str] = {}
    known = {f.name for f in fields(op)}
    for name in values:
        if name not in known:
            errors[name] = f"{op.name} has no field {name!r}"
    checked: dict[str, Any] = {}
    for f in fields(op):
        if f.group == "where" or f is REPORT:
            continue
        try:
            checked[f.name] = _check(op, f.name, values.get(f.name), folders, values)
        except EmarrayError as exc:
            errors[f.name] = str(exc)
    run = where_args(values, op.run, folders, errors)
    if errors:
        raise FormError(errors)
    positional: list[str] = []
    options: list[str] = []
    ins: list[str] = []
    outs: list[str] = []
    for port in op.inputs + ((op.path_output,) if op.path_output is not None else ()):
        v = checked.get(port.name)
        if v is None:
            continue
        (outs if port is op.output else ins).append(v)
        if port.option or port.optional:
            options.append(f"--{port.name}={v}")
        else:
            positional.append(v)
    for p in op.params:
        v = checked.get(p.name)
        if v is None or v is False:
            continue
        options.append(p.flag if p.kind == "flag" else f"{p.flag}={v}")
    for r in op.run:
        if r in SPECIAL_RUN:
            continue
        v = checked.get(r)
        decls, attrs = RUN_OPTIONS[r]
        if attrs.get("is_flag"):
            if v:
                options.append(decls[0])
        elif v is not None and v != _text(attrs.get("default")):
            options.append(f"{decls[0]}={v}")
    if op.output is not None and op.output.kind == "inplace":
        outs = [checked[op.output.name]] if checked.get(op.output.name) else ins[:1]
    first = Path(outs[0]).name if outs else (Path(ins[0]).name if ins else "")
    report = op.output is not None and values.get("report", True) not in (False, "false", "0")
    return Command([op.name, *positional, *options, *run], ins, outs,
                   "resume" in op.run, f"{op.name} {first}".strip(), report)


def suggest_output(op: Operator, source: str, folders: Folders) -> str:
    """Where ``op``'s output goes by default: beside its first input, named after both
    (``prob.zarr`` -> ``prob-threshold.zarr``), a number added while that name is taken."""
    if op.path_output is None:
        return ""
    src = folders.resolve(source, "input")
    stem = src.name
    for suffix in (".zarr", ".n5", ".tiff", ".tif", ".hdf5", ".h5", ".csv", ".parquet"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    suffix = SUFFIX.get(op.output_kind, "")
    for k in range(1, 1000):
        name = f"{stem}-{op.name}{'' if k == 1 else f'-{k}'}{suffix}"
        if not os.path.lexists(src.parent / name):
            return str(src.parent / name)
    return str(src.parent / f"{stem}-{op.name}{suffix}")
