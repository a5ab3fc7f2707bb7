"""Operators declared once: the command line, recipe steps, up-front checks and docs follow.

An operator module declares an :class:`Operator`: its inputs and output (:class:`Port`), its
parameters (:class:`Param`: kind, help, unit, allowed values, the check that runs before any
work) and which run options it takes, and decorates its Python function with it::

    SPEC = Operator("clip", "limit values to [lo, hi], same dtype",
                    inputs=(Port("src", "volume"),), output=Port("dst", "volume"),
                    params=(Param("lo", "number", "the least value kept"), ...),
                    run=ELEMENTWISE)

    @SPEC.function
    def clip(src, dst, lo, hi, *, chunks=None, ..., options=None, **run): ...

Defaults come from the function's signature (a parameter without one is required); the
decorator checks and normalises every declared value before the function runs, and writes the
docstring's *Parameters* section from the declaration. From the registry of declared operators
come the ``emarray`` subcommands (:mod:`emarray.cli`), the recipe steps and their whole-recipe
check (:mod:`emarray.pipeline`), the command table of the README and the operator pages of the
docs, and the tests that iterate every operator. Anchors: dask.config's declared keys, napari's
npe2 manifests, click's command classes, scikit-image's one function, one docstring.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._normalize import (finite_number, parse_tuple, real_number, whole_number)
from .codecs import COMPRESSIONS
from .errors import InvalidArgumentError

#: what a parameter may be; each kind has one parser (text from the command line or a recipe,
#: or a Python value) that returns the normalised value or raises naming the parameter
KINDS = ("number", "int", "float", "zyx", "zyx-float", "choice", "flag", "text", "numbers")
#: what an input or output is
PORTS = ("volume", "file", "model", "table", "folder", "inplace")
#: groups of run options (fields of :class:`~emarray.engine.RunOptions`) an operator takes
ENGINE = ("scheduler", "workers", "connect_timeout", "retries", "slurm", "estimate")
REPLACE = ("overwrite", "resume")
INCOMPLETE = ("allow_incomplete",)
BACKEND = ("backend", "gpu_memory_limit")
#: an operator that writes a volume and has a CUDA path takes all of them
ELEMENTWISE = ENGINE + REPLACE + INCOMPLETE + BACKEND


@dataclass(frozen=True)
class Param:
    """One parameter: its name (the Python argument and the recipe key; ``--name-with-dashes``
    on the command line), its kind, a one-line help, and optionally a unit, the allowed values
    (``choice``), bounds, a custom ``parse`` (text or value -> value, raising naming it), extra
    command-line spellings (``aliases``) and ``metavar``."""

    name: str
    kind: str
    help: str
    unit: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = True            # zyx: every value > 0 (False: >= 0)
    parse: Callable[[Any, str], Any] | None = None
    aliases: tuple[str, ...] = ()
    metavar: str = ""
    default: Any = field(default=inspect.Parameter.empty, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"param {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The normalised ``value`` (None stays None), or :class:`InvalidArgumentError` naming
        this parameter and the value."""
        if value is None:
            return None
        name = self.name
        if self.parse is not None:
            return self.parse(value, name)
        k = self.kind
        if k == "number":
            out: Any = real_number(value, name)
        elif k == "float":
            out = finite_number(value, name)
        elif k == "int":
            out = whole_number(value, name, int(self.minimum or 0) if self.minimum is not None
                               else -(2**63))
        elif k in ("zyx", "zyx-float"):
            out = parse_tuple(value, name, 3, kind=int if k == "zyx" else float,
                              positive=self.positive)
            if not self.positive and any(v < 0 for v in out):
                raise InvalidArgumentError(f"{name} must be >= 0 on every axis, got {value!r}")
        elif k == "choice":
            out = self._choice(value)
        elif k == "flag":
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise InvalidArgumentError(f"{name} must be true or false, got {value!r}")
            return value
        elif k == "numbers":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not items:
                raise InvalidArgumentError(f"{name} must list numbers (0.1,0.5), got {value!r}")
            return tuple(real_number(v, name) for v in items if str(v).strip())
        else:  # text (a path is text too)
            import os
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, str):
                raise InvalidArgumentError(f"{name} must be text, got {value!r}")
            return value
        if self.minimum is not None and k in ("number", "float") and out < self.minimum:
            raise InvalidArgumentError(f"{name} must be >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and k in ("number", "float", "int") and out > self.maximum:
            raise InvalidArgumentError(f"{name} must be <= {self.maximum:g}, got {value!r}")
        return out

    def _choice(self, value: Any) -> Any:
        for c in self.choices:
            if value == c or (isinstance(value, str) and str(c) == value.strip()):
                return c
        raise InvalidArgumentError(f"{self.name} must be one of "
                                   f"{', '.join(map(str, self.choices))}, got {value!r}")

    def type_text(self) -> str:
        """The kind as the docs and ``--help`` show it."""
        if self.kind == "choice":
            return " | ".join(map(str, self.choices))
        return {"number": "number", "int": "whole number", "float": "number",
                "zyx": "z,y,x", "zyx-float": "z,y,x", "flag": "flag", "text": "text",
                "numbers": "numbers"}[self.kind]


@dataclass(frozen=True)
class Port:
    """An input or the output: ``name`` (the Python argument), ``kind`` (:data:`PORTS`),
    whether it is ``optional``, holds ``labels``, or is given on the command line as an option
    (``option``: ``--like``, ``--out``) rather than an argument."""

    name: str
    kind: str
    help: str = ""
    optional: bool = False
    labels: bool = False
    option: bool = False
    parts: tuple[str, ...] = ()  # a folder output that holds several volumes (synthetic)

    def __post_init__(self) -> None:
        if self.kind not in PORTS:
            raise ValueError(f"port {self.name}: kind must be one of {PORTS}, got {self.kind!r}")

    @property
    def metavar(self) -> str:
        return self.name.upper()


@dataclass
class Operator:
    """One operator, declared once (see the module's docs)."""

    name: str
    summary: str
    inputs: tuple[Port, ...]
    output: Port | None
    params: tuple[Param, ...] = ()
    run: tuple[str, ...] = ENGINE + REPLACE
    #: the lines the command prints when the job is done, from its result and arguments (None:
    #: "wrote URL: SHAPE DTYPE" for a volume, nothing else); the run's HTML page keeps them too
    says: Callable[[Any, dict[str, Any]], list[str]] | None = None
    examples: tuple[str, ...] = ()  # command lines for the docs, as a user types them
    #: the name its per-block functions are registered under in :mod:`emarray.backends`
    #: (CPU and, where a kernel exists, CUDA); "" for operators without backends
    blocks: str = ""
    #: whether its output may be a URL (s3://): volumes, folders, tables and files go to object
    #: storage through the engine (emarray.engine.remote_output, emarray.engine.remote_files)
    remote_output: bool = True
    #: the modules of an extra it imports (emarray.extras): a missing one is one line naming
    #: the extra, before anything is read or written
    needs: tuple[str, ...] = ()
    func: Callable[..., Any] | None = field(default=None, repr=False)
    call: Callable[..., Any] | None = field(default=None, repr=False)  # the checked function

    def said(self, result: Any, arguments: dict[str, Any]) -> list[str]:
        """What the command prints when the job is done (see ``says``)."""
        if self.says is not None:
            return list(self.says(result, arguments))
        from .volume import Volume
        if isinstance(result, Volume):
            return [f"wrote {result.url}: {result.shape} {result.dtype}"]
        return []

    def check_output(self, arguments: dict[str, Any]) -> None:
        """Refuse a URL as the output of an operator that writes to local disk only."""
        from .storage import is_remote
        out = self.path_output
        if out is None or out.name not in arguments:
            return
        value = arguments[out.name]
        if not isinstance(value, (str, os.PathLike)) or not is_remote(value):
            return
        if not self.remote_output:
            what = "its volume" if out.kind == "volume" else f"its {out.kind}"
            raise InvalidArgumentError(
                f"{self.name} writes {what} to local disk only, got {os.fspath(value)!r}; give "
                "a local path (its inputs may be URLs)")

    # -- declaring ------------------------------------------------------------------------
    def function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate the operator's Python function: defaults from its signature, every declared
        value checked and normalised before it runs, its docstring given a *Parameters*
        section, and the operator registered."""
        sig = inspect.signature(fn)
        names = [p.name for p in sig.parameters.values()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "options"]
        out = self.path_output
        declared = [p.name for p in self.inputs] + [p.name for p in self.params] + (
            [out.name] if out is not None else [])
        if sorted(names) != sorted(declared):
            raise TypeError(f"operator {self.name}: the function's arguments {names} are not the "
                            f"declared inputs, output and params {declared}")
        self.params = tuple(_with_default(p, sig.parameters[p.name].default) for p in self.params)
        self.func = fn

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            if self.needs:
                from .extras import require_all
                require_all(self.needs, f"emarray {self.name}")
            self.check_output(bound.arguments)
            for p in self.params:
                if p.name in bound.arguments:
                    bound.arguments[p.name] = p.check(bound.arguments[p.name])
            self._set_up(bound)
            if _asks_estimate(bound):
                from .engine.estimate import estimate_call
                return estimate_call(self, fn, bound)
            return fn(*bound.args, **bound.kwargs)

        fn.__doc__ = checked.__doc__ = self.docstring(fn.__doc__ or "")
        checked.spec = self  # type: ignore[attr-defined]
        self.call = checked
        REGISTRY[self.name] = self
        return checked

    def _set_up(self, bound: inspect.BoundArguments) -> None:
        """What every operator's function began with: its run options (``options`` and the
        keywords) made one :class:`~emarray.engine.RunOptions`, given as ``options``; each
        declared volume input opened (a path or URL) and refused if an unfinished job's."""
        params = bound.signature.parameters
        extra = next((p.name for p in params.values() if p.kind == p.VAR_KEYWORD), None)
        if extra is None or "options" not in params:
            return
        from .engine.options import RunOptions
        opts = RunOptions.make(bound.arguments.get("options"), **bound.arguments.get(extra, {}))
        bound.arguments["options"] = opts
        bound.arguments[extra] = {}
        from .volume import Volume, open_volume
        for port in self.inputs:
            value = bound.arguments.get(port.name)
            if port.kind == "volume" and value is not None:
                vol = value if isinstance(value, Volume) else open_volume(value)
                bound.arguments[port.name] = vol.require_complete(opts.allow_incomplete)

    # -- what follows from the declaration ----------------------------------------------------
    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def input_port(self, name: str) -> Port:
        return next(p for p in self.inputs if p.name == name)

    @property
    def output_kind(self) -> str:
        """The output's kind (:data:`PORTS`); ``"none"`` for an operator that writes nothing."""
        return self.output.kind if self.output is not None else "none"

    @property
    def path_output(self) -> Port | None:
        """The output the caller gives a path for; None for an operator that writes nothing or
        adds to its input (``inplace``: pyramid levels)."""
        out = self.output
        return None if out is None or out.kind == "inplace" else out

    @property
    def output_parts(self) -> tuple[str, ...]:
        """The volumes a folder output holds (synthetic's ``raw``, ``prob``, ...); () for an
        output that is one thing."""
        return self.output.parts if self.output is not None else ()

    def check_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` (param name -> value, as a recipe or the command line gives them) checked
        and normalised; an unknown name is refused."""
        known = {p.name: p for p in self.params}
        out = {}
        for k, v in values.items():
            if k not in known:
                raise InvalidArgumentError(f"{self.name} has no parameter {k!r}; it takes: "
                                           f"{', '.join(known)}")
            out[k] = known[k].check(v)
        return out

    def usage(self) -> str:
        """The command line shape: ``emarray threshold SRC DST --value NUMBER [options]``."""
        words = ["emarray", self.name]
        words += [p.metavar for p in self.inputs if not p.optional and not p.option]
        out = self.path_output
        if out is not None:
            words.append(f"--{out.name} {out.metavar}" if out.option else out.metavar)
        words += [f"--{p.name.replace('_', '-')} {p.metavar or p.type_text().upper()}"
                  if p.kind != "flag" else p.flag for p in self.params if p.required]
        words += [f"--{p.name} {p.metavar}" for p in self.inputs if not p.optional and p.option]
        return " ".join(words) + " [options]"

    def docstring(self, written: str) -> str:
        """``written`` (summary, description, Returns, Examples) with a *Parameters* section
        made from the declaration, placed before the first other section."""
        text = inspect.cleandoc(written)
        lines = ["Parameters", "----------"]
        ports = self.inputs + ((self.path_output,) if self.path_output is not None else ())
        for port in ports:
            kind = ("Volume or path" if port.kind == "volume" and port is not self.output
                    else "path")
            lines.append(f"{port.name} : {kind}{', optional' if port.optional else ''}")
            lines.append(f"    {_sentence(port.help)}")
        for p in self.params:
            default = "" if p.required else f", default {p.default!r}"
            unit = f" In {p.unit}." if p.unit else ""
            lines.append(f"{p.name} : {p.type_text()}{default}")
            lines.append(f"    {_sentence(p.help)}{unit}")
        lines.append("options : RunOptions, optional")
        lines.append(f"    How the job runs: {', '.join(self.run)} (see "
                     ":class:`~emarray.engine.RunOptions`); its fields may also be given as "
                     "keywords.")
        section = "\n".join(lines)
        heads = [i for i, ln in enumerate(text.splitlines())
                 if ln.strip() in ("Returns", "Examples", "Raises", "Notes", "See Also")
                 and i + 1 < len(text.splitlines())
                 and set(text.splitlines()[i + 1].strip()) == {"-"}]
        if heads:
            body = text.splitlines()
            at = heads[0]
            return "\n".join(body[:at] + section.splitlines() + [""] + body[at:]) + "\n"
        return text + "\n\n" + section + "\n"


def _asks_estimate(bound: inspect.BoundArguments) -> bool:
    """Whether a call asks for an estimate (``estimate=True``, or in its ``options``)."""
    for p in bound.signature.parameters.values():
        value = bound.arguments.get(p.name)
        if p.kind == p.VAR_KEYWORD and isinstance(value, dict) and value.get("estimate"):
            return True
        if p.name == "options" and getattr(value, "estimate", False):
            return True
    return False


def _sentence(text: str) -> str:
    text = text.strip()
    return text + ("" if not text or text.endswith(".") else ".")


def _with_default(p: Param, default: Any) -> Param:
    from dataclasses import replace
    return replace(p, default=default)


#: every declared operator, by name (filled as operator modules are imported: :func:`operators`)
REGISTRY: dict[str, Operator] = {}
#: the packages whose modules declare operators
OPERATOR_PACKAGES = ("emarray.ops",)
OPERATOR_MODULES = ("emarray.datasets",)


def operators() -> dict[str, Operator]:
    """Every declared operator (importing each operator module once), in name order."""
    for pkg_name in OPERATOR_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for m in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg_name}.{m.name}")
    for name in OPERATOR_MODULES:
        importlib.import_module(name)
    return dict(sorted(REGISTRY.items()))


def layout_params() -> tuple[Param, ...]:
    """``chunks``, ``shards`` and ``compression``: the output layout most operators declare."""
    return (Param("chunks", "zyx", "output storage chunk shape (default: the input's)",
                  unit="voxels"),
            Param("shards", "zyx", "output shard shape, whole multiples of chunks (default: the "
                                   "input's when chunks are not given)", unit="voxels"),
            Param("compression", "choice", "output compression", choices=COMPRESSIONS))


def table_row(op: Operator, link: str = "") -> str:
    """The command table row of ``op`` (``link``: where its reference section is, the docs
    page; ``#name`` on that page)."""
    name = f"[`{op.name}`]({link}#{op.name})" if link is not None else f"`{op.name}`"
    return f"| {name} | {op.summary} |"


def readme_table() -> str:
    """The README's command table: one row per declared operator, linked to the docs."""
    return "\n".join(["| command | what it does |", "|---|---|"]
                     + [table_row(op, "docs/commands.md") for op in operators().values()])


def update_readme(path: str) -> bool:
    """Rewrite the command table of the README at ``path``; return whether it changed."""
    text = open(path).read()
    head, rest = text.split("<!-- commands:start -->\n", 1)
    _, tail = rest.split("<!-- commands:end -->", 1)
    new = f"{head}<!-- commands:start -->\n{readme_table()}\n<!-- commands:end -->{tail}"
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    return new != text


def reference(op: Operator) -> str:
    """The docs section of ``op``: usage, inputs and output, and a table of its parameters."""
    out = [f"## `{op.name}`", "", op.summary[0].upper() + op.summary[1:] + ".", "",
           "```", op.usage(), "```", ""]
    if op.func is not None and op.func.__doc__:
        first = textwrap.dedent(op.func.__doc__).strip().split("\n\n")[0]
        out += [" ".join(first.split()), ""]
    rows = ["| | name | kind | default | |", "|---|---|---|---|---|"]
    for port in op.inputs:
        rows.append(f"| input | `{port.name}` | {port.kind}{' (labels)' if port.labels else ''} | "
                    f"{'optional' if port.optional else 'required'} | {port.help} |")
    if op.output is not None:
        rows.append(f"| output | `{op.output.name}` | {op.output.kind} | | {op.output.help} |")
    for p in op.params:
        default = "required" if p.required else f"`{p.default!r}`"
        unit = f" ({p.unit})" if p.unit else ""
        rows.append(f"| param | `{p.name}` / `{p.flag}` | {p.type_text()} | {default} | "
                    f"{p.help}{unit} |")
    out += rows + ["", f"Run options: {', '.join(f'`{r}`' for r in op.run)}.", ""]
    for ex in op.examples:
        out += ["```bash", ex, "```", ""]
    return "\n".join(out)


__all__ = ["ELEMENTWISE", "ENGINE", "INCOMPLETE", "Operator", "Param", "Port", "REGISTRY",
           "REPLACE", "BACKEND", "layout_params", "operators", "reference", "table_row"]
