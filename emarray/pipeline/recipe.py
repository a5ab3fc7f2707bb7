"""A pipeline recipe: YAML steps, each an operator whose inputs are earlier steps' outputs.

Read, changed by ``--set`` and checked whole before any work: an unknown top-level key, step,
operator or step key, an input that is neither a step nor an existing path, a reference to an
output a step does not have, a missing required key, and a cycle are each one error naming it.
Relative paths in a recipe are taken from the recipe's folder.

.. code-block:: yaml

    workdir: ../work/demo            # each step writes WORKDIR/STEP.zarr (or STEP/, STEP.csv)
    vars: {value: 0.5}               # ${value} below; --set value=0.6
    run: {scheduler: threads, retries: 2}
    storage_options: {endpoint_url: "http://127.0.0.1:9000"}  # for s3:// paths (optional)
    steps:
      synthetic: {op: synthetic, shape: 64,256,256}
      mask: {op: threshold, src: synthetic.prob, value: "${value}"}
      cells: {op: label, src: mask}
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.output import check_no_overlap, real_path
from ..errors import InvalidArgumentError
from ..spec import Operator
from .ops import check_values, file_inputs, step_inputs, step_keys, step_operators

TOP_KEYS = ("about", "workdir", "vars", "run", "steps", "storage_options")
RUN_KEYS = ("scheduler", "workers", "retries", "backend", "gpu_memory_limit", "connect_timeout",
            "window", "slurm")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_VAR = re.compile(r"\$\{([^}]*)\}")


@dataclass
class Step:
    """One planned step: its operator, inputs (``("step", name, part)`` or ``("path", p)``),
    other arguments, and output path."""

    name: str
    op_name: str
    op: Operator
    inputs: dict[str, tuple[str, ...]]
    params: dict[str, Any]
    out: str
    after: list[str] = field(default_factory=list)

    def output_of(self, part: str | None) -> str:
        """The path of this step's output (``part``: one volume of a folder output)."""
        if self.op.output_kind == "inplace":
            return self.out
        if self.op.output_parts:
            return os.path.join(self.out, f"{part}.zarr")
        return self.out


@dataclass
class Recipe:
    path: str | None
    about: str
    workdir: str
    run: dict[str, Any]
    steps: list[Step]  # in the order they run

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def load_recipe(recipe: str | os.PathLike | dict[str, Any], sets: tuple[str, ...] = (), *,
                workdir: str | os.PathLike | None = None) -> Recipe:
    """Read, change (``sets``: ``key=value``) and check a recipe; return its plan.

    ``--set`` addresses the recipe by dotted path (``steps.mask.value=0.6``, ``workdir=/x``)
    and, for short, ``STEP.KEY=...`` or ``VAR=...``. ``workdir`` (from the command line) is
    taken from the working folder; the recipe's own paths from the recipe's folder.
    """
    from .._yaml import read_mapping, set_value, split_assignment
    if isinstance(recipe, dict):
        given, base, path = copy.deepcopy(recipe), Path.cwd(), None
    else:
        given = read_mapping(recipe, "pipeline recipe")
        base, path = Path(recipe).resolve().parent, os.fspath(Path(recipe).resolve())
    unknown = sorted(set(given) - set(TOP_KEYS))
    if unknown:
        raise InvalidArgumentError(f"unknown recipe key {unknown[0]!r}; a recipe has: "
                                   f"{', '.join(TOP_KEYS)}")
    for section in ("vars", "run", "steps", "storage_options"):
        if given.get(section) is None:
            given[section] = {}
        if not isinstance(given[section], dict):
            raise InvalidArgumentError(f"recipe {section!r} must be a mapping, got "
                                       f"{given[section]!r}")
    for s in sets:
        keys, _ = split_assignment(s)
        head = keys[0]
        if head not in TOP_KEYS:
            if head in given["steps"] and len(keys) > 1:
                s = "steps." + s
            elif head in given["vars"] and len(keys) == 1:
                s = "vars." + s
            else:
                raise InvalidArgumentError(
                    f"--set {'.'.join(keys)}: {head!r} is not a recipe key, a step or a var "
                    f"(steps: {', '.join(given['steps']) or '-'}; vars: "
                    f"{', '.join(given['vars']) or '-'})")
        set_value(given, s)
    given = _substitute(given, given["vars"])
    from .. import storage
    storage.configure(given["storage_options"])  # s3:// paths below (never recorded)
    if not given["steps"]:
        raise InvalidArgumentError("the recipe has no steps")
    run = dict(given["run"])
    bad = sorted(set(run) - set(RUN_KEYS))
    if bad:
        raise InvalidArgumentError(f"unknown run key {bad[0]!r}; run has: {', '.join(RUN_KEYS)}")
    if workdir is not None:
        wd = os.fspath(workdir)
        wd = wd.rstrip("/") if "://" in wd else os.path.abspath(wd)
    elif given.get("workdir"):
        wd = _absolute(given["workdir"], base)
    else:
        stem = Path(path).stem if path else "pipeline"
        wd = os.path.abspath(f"{stem}-out")
    steps = [_parse_step(name, spec, wd, base) for name, spec in given["steps"].items()]
    ordered = _order(steps)
    _check_inputs(ordered, wd)
    return Recipe(path, str(given.get("about") or ""), wd, run, ordered)


def _absolute(value: Any, base: Path) -> str:
    s = os.fspath(value)
    return s if "://" in s or os.path.isabs(s) else os.path.normpath(base / s)


def _substitute(value: Any, variables: dict[str, Any], where: str = "") -> Any:
    """``${name}`` -> the var's value (the whole value keeps the var's type)."""
    if isinstance(value, dict):
        return {k: (v if where == "" and k == "vars" else _substitute(v, variables, f"{where}{k}."))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name: str) -> Any:
        if name not in variables:
            raise InvalidArgumentError(
                f"{where.rstrip('.')}: unknown var ${{{name}}}; vars: "
                f"{', '.join(variables) or '-'}")
        return variables[name]

    whole = _VAR.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return _VAR.sub(lambda m: str(lookup(m.group(1))), value)


def _parse_step(name: Any, spec: Any, workdir: str, base: Path) -> Step:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgumentError(f"step name {name!r} must start with a letter and hold only "
                                   "letters, digits, _ and -")
    if not isinstance(spec, dict) or "op" not in spec:
        raise InvalidArgumentError(f"step {name!r} needs an op (one of "
                                   f"{', '.join(step_operators())})")
    spec = dict(spec)
    op_name = spec.pop("op")
    if op_name not in step_operators():
        raise InvalidArgumentError(f"step {name!r}: unknown op {op_name!r}; the ops are "
                                   f"{', '.join(step_operators())}")
    op = step_operators()[op_name]
    needed, optional, files = step_inputs(op), step_inputs(op, optional=True), file_inputs(op)
    allowed = needed + optional + files + step_keys(op) + ("out",)
    bad = [k for k in spec if k not in allowed]
    if bad:
        raise InvalidArgumentError(f"step {name!r}: unknown key {bad[0]!r}; {op_name} takes: "
                                   f"{', '.join(allowed)}")
    out_given = spec.pop("out", None)
    if op.output_kind == "inplace":
        if out_given is not None:
            raise InvalidArgumentError(f"step {name!r}: {op_name} adds to its src and has no out")
        out = ""
    elif out_given is not None:
        out = _absolute(out_given, base)
    else:
        suffix = {"volume": ".zarr", "folder": "", "table": ".csv"}[op.output_kind]
        out = os.path.join(workdir, name + suffix)
    inputs: dict[str, tuple[str, ...]] = {}
    for key in needed + files:
        if spec.get(key) is None:
            raise InvalidArgumentError(f"step {name!r} ({op_name}) needs {key!r}")
    for key in needed + optional + files:
        value = spec.pop(key, None)
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise InvalidArgumentError(f"step {name!r}: {key} must name a step or a path, got "
                                       f"{value!r}")
        inputs[key] = ("file", _absolute(value, base), os.fspath(value)) if key in files else (
            "ref", os.fspath(value), _absolute(value, base))
    missing = [p.name for p in op.params if p.required and p.name not in spec]
    if missing:
        raise InvalidArgumentError(f"step {name!r} ({op_name}) needs {missing[0]!r}")
    check_values(op_name, name, spec)
    return Step(name, op_name, op, inputs, spec, out)


def _resolve(steps: dict[str, Step]) -> None:
    """Turn each ``ref`` input into a step reference or a path; record what each step needs."""
    for st in steps.values():
        for key, ref in list(st.inputs.items()):
            if ref[0] != "ref":
                continue
            text, as_path = ref[1], ref[2]
            head, _, part = text.partition(".")
            if head in steps and not text.endswith(".zarr"):
                up = steps[head]
                if head == st.name:
                    raise InvalidArgumentError(f"step {st.name!r}: {key} is its own output")
                parts = up.op.output_parts
                if part and part not in parts:
                    has = (f"its outputs are {', '.join(parts)}" if parts
                           else "it has one output")
                    raise InvalidArgumentError(f"step {st.name!r}: {key}: step {head!r} has no "
                                               f"output {part!r} ({has})")
                if not part and parts:
                    raise InvalidArgumentError(
                        f"step {st.name!r}: {key}: step {head!r} has several outputs; name one: "
                        + ", ".join(f"{head}.{p}" for p in parts))
                want, writes = st.op.input_port(key).kind, up.op.output_kind
                if not parts and not (writes in ("volume", "inplace") if want == "volume"
                                      else writes == want):
                    raise InvalidArgumentError(
                        f"step {st.name!r}: {key}: step {head!r} ({up.op_name}) writes a "
                        f"{writes}, not a {want}")
                st.inputs[key] = ("step", head, part)
                if head not in st.after:
                    st.after.append(head)
            else:
                st.inputs[key] = ("path", as_path, text)


def _order(steps: list[Step]) -> list[Step]:
    """The steps in an order that runs each after its inputs (ties: the recipe's order)."""
    by_name: dict[str, Step] = {}
    for st in steps:
        by_name[st.name] = st
    _resolve(by_name)
    for st in steps:  # a pyramid step changes its src: later readers of that src wait for it
        if st.op.output_kind == "inplace":
            kind, *ref = st.inputs["src"]
            if kind == "step":
                st.out = by_name[ref[0]].output_of(ref[1] or None)
            else:
                st.out = ref[0]
    order: list[Step] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed

    def visit(st: Step, path: list[str]) -> None:
        if state.get(st.name) == 2:
            return
        if state.get(st.name) == 1:
            cycle = path[path.index(st.name):] + [st.name]
            raise InvalidArgumentError("the steps form a cycle: " + " -> ".join(cycle))
        state[st.name] = 1
        for up in st.after:
            visit(by_name[up], path + [st.name])
        state[st.name] = 2
        order.append(st)

    for st in steps:
        visit(st, [])
    return order


def _check_outputs(steps: list[Step], workdir: str) -> None:
    """No step writes the workdir itself (or a folder holding it), or inside another step's
    output: checked for every step before the first one runs (links resolved)."""
    wd = real_path(workdir)
    outs = [(st, real_path(st.out)) for st in steps if st.op.output_kind != "inplace"]
    for st, o in outs:
        if o == wd or o in wd.parents:
            raise InvalidArgumentError(
                f"step {st.name!r} would write {st.out}, which is (or holds) the workdir "
                f"{workdir}; give the step an out inside it, or leave out out")
    for k, (st, o) in enumerate(outs):
        for other, o2 in outs[k + 1:]:
            if o2 == o:  # one place under two spellings (a link, a parent folder's link)
                raise InvalidArgumentError(
                    f"steps {st.name!r} and {other.name!r} both write {o} ({st.out} and "
                    f"{other.out}, links resolved); give one of them another out")
    for st, o in outs:
        for other, o2 in outs:
            if other is not st and o2 in o.parents:
                raise InvalidArgumentError(
                    f"step {st.name!r} would write {st.out}, inside the output of step "
                    f"{other.name!r} ({other.out}); choose another out")


def _check_inputs(steps: list[Step], workdir: str) -> None:
    """Every path input exists (or is made by a step); no two steps write one output."""
    made: dict[str, str] = {}
    for st in steps:
        if st.op.output_kind == "inplace":
            continue
        for p in [st.out] + [st.output_of(part) for part in st.op.output_parts]:
            if p in made:
                raise InvalidArgumentError(f"steps {made[p]!r} and {st.name!r} both write {p}")
            made[p] = st.name
    _check_outputs(steps, workdir)
    for st in steps:
        for key, (kind, *ref) in st.inputs.items():
            if kind == "step":
                continue
            p, shown = ref[0], (ref[1] if len(ref) > 1 else ref[0])
            if p in made:
                raise InvalidArgumentError(
                    f"step {st.name!r}: {key} {p} is step {made[p]!r}'s output: name the step "
                    f"({made[p]}) so that it runs first")
            for out, name in made.items():  # the engine's own check, links resolved
                try:
                    check_no_overlap(real_path(out), [p], out)
                except InvalidArgumentError:
                    raise InvalidArgumentError(
                        f"step {name!r} would write {real_path(out)}, which holds (or is inside) "
                        f"the input {key} {shown!r} of step {st.name!r}; choose another workdir "
                        "or out") from None
            if "://" not in p and not os.path.exists(p):
                what = (f"no file {p}" if kind == "file" else
                        f"no step named {shown!r} and no path {p}")
                raise InvalidArgumentError(f"step {st.name!r}: missing input {key} {shown!r} "
                                           f"({what})")
