"""The ``emarray`` subcommand of each declared operator, made from its :class:`~emarray.spec.Operator`
(the hand-written commands and the group are in :mod:`emarray.cli`).

Arguments are the operator's required inputs (and its output, unless it is an ``--out`` option),
options its parameters (``--min-size`` for ``min_size``, with the declared help, unit and
default) and the run options it declares. Values reach the operator's Python function as
the user typed them; the function's declared checks normalise them or refuse them with one
line naming the value, before any work.
"""
from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .engine.options import RunOptions
from .errors import InvalidArgumentError
from .spec import Operator, Param, Port
from .speaking import speaking

def _text(help_: str) -> str:
    """A help line as ``--help`` shows it: a capital first letter, a full stop, no rST marks."""
    t = help_.strip().replace("``", "")
    return (t[:1].upper() + t[1:] + ("" if t.endswith(".") else ".")) if t else ""


#: the command-line form of each run option an operator may declare: its flags and click's
#: settings; the help is RunOptions' docstring's (one text for the API, the CLI and the GUI)
_RUN_FLAGS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "scheduler": (["--scheduler"], {"default": None, "metavar": "NAME|ADDRESS"}),
    "workers": (["--workers"], {"type": int, "default": None, "metavar": "N"}),
    "connect_timeout": (["--connect-timeout"], {"type": float, "default": None,
                                                "metavar": "SECONDS"}),
    "retries": (["--retries"], {"type": click.IntRange(min=0), "default": 2, "metavar": "N"}),
    "slurm": (["--slurm-config", "slurm"], {"default": None, "metavar": "FILE"}),
    "overwrite": (["--overwrite"], {"is_flag": True}),
    "resume": (["--resume"], {"is_flag": True}),
    "estimate": (["--estimate"], {"is_flag": True}),
    "allow_incomplete": (["--allow-incomplete"], {"is_flag": True}),
    "backend": (["--backend"], {"type": click.Choice(["auto", "cpu", "cuda"]), "default": "auto",
                                "show_default": True}),
    "gpu_memory_limit": (["--gpu-memory-limit"], {"default": None, "metavar": "FRACTION|SIZE"}),
}
RUN_OPTIONS: dict[str, tuple[list[str], dict[str, Any]]] = {
    name: (decls, {**attrs, "help": _text(RunOptions.help(name))})
    for name, (decls, attrs) in _RUN_FLAGS.items()}


def run_option_table() -> str:
    """The run options as a Markdown table, for docs/commands.md."""
    rows = ["| run option | what it does |", "|---|---|"]
    for name, (decls, attrs) in RUN_OPTIONS.items():
        kind = attrs.get("type")
        metavar = attrs.get("metavar") or "|".join(getattr(kind, "choices", ()))
        flag = decls[0] + (f" {metavar}" if metavar else "")
        default = attrs.get("default")
        said = f" Default: {default}." if default not in (None, False) else ""
        rows.append(f"| `{flag}` | {RunOptions.help(name)}{said} |")  # (a | in a code span stays)
    return "\n".join(rows)


def run_option(name: str) -> click.Option:
    decls, attrs = RUN_OPTIONS[name]
    return click.Option(decls, **attrs)


def run_options(*names: str) -> Callable[[Any], Any]:
    """Decorate a hand-written command with run options, as generated commands get them."""
    def deco(f: Any) -> Any:
        for name in reversed(names):
            decls, attrs = RUN_OPTIONS[name]
            f = click.option(*decls, **attrs)(f)
        return f
    return deco


def _optional(required: bool) -> dict[str, Any]:
    """click's settings of an option that may be required: no default at all when it is (click
    8.3 and later take an explicit ``default=None`` for a value given, and never report the
    option missing)."""
    return {"required": True} if required else {"default": None}


def _param_option(p: Param) -> click.Option:
    flags = [p.flag, *p.aliases]
    unit = f" In {p.unit}." if p.unit else ""
    default = "" if p.required or p.default in (None, False) else f"  [default: {p.default}]"
    text = f"{_text(p.help)}{unit}{default}"
    if p.kind == "flag":
        return click.Option([*flags, p.name], is_flag=True, default=None, help=text,
                            show_default=False)
    metavar = p.metavar or ("[" + "|".join(map(str, p.choices)) + "]" if p.kind == "choice"
                            else p.type_text().upper().replace(" ", "_"))
    return click.Option([*flags, p.name], metavar=metavar, help=text, show_default=False,
                        **_optional(p.required))


def _port_param(port: Port, output: bool) -> click.Parameter:
    if port.option or port.optional:
        return click.Option([f"--{port.name}", port.name], metavar=port.metavar,
                            help=_text(port.help), show_default=False,
                            **_optional(not port.optional))
    return click.Argument([port.name], metavar=port.metavar)


class UsageLine(click.ClickException):
    """A usage error shown as one line, ``error: ...``, exit 2 (as emarray's own errors)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


#: a command given no arguments shows its help (click 8.2 and later raise this for it)
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(exc: click.UsageError, ctx: click.Context) -> click.ClickException:
    """``exc`` as one line naming what was wrong, with where to read more (the help a command
    shows when given no arguments stays as it is)."""
    if isinstance(exc, _HELP):
        return exc
    if isinstance(exc, click.MissingParameter) and exc.param is not None:
        p = exc.param
        shown = (p.opts[0] if isinstance(p, click.Option) else p.human_readable_name)
        metavar = p.make_metavar(ctx) if isinstance(p, click.Option) else ""
        text = f"{ctx.command_path} needs {shown}{' ' + metavar if metavar else ''}"
    else:
        text = exc.format_message()
    return UsageLine(f"{text.rstrip('.')} (see {ctx.command_path} --help)")


class Command(click.Command):
    """A command whose usage errors (a required value left out, an unknown option, a bad
    choice) are one line and exit 2, before the command runs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc, ctx) from None


class Group(click.Group):
    """A group of :class:`Command` (and groups): usage errors in one line; the command list
    shows each command's whole summary, never cut with "..."."""

    command_class = Command
    group_class = type

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc, ctx) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc, ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000).rstrip(".")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command(op: Operator, call: Callable[..., Any], friendly: Callable,
            common: list[click.Parameter], progress: Callable[[], bool]) -> click.Command:
    """The click command of ``op``: ``call`` is its (checked) Python function, ``friendly``
    wraps the callback (errors as one line), ``common`` are options every command has (-v, -q)
    and ``progress()`` says whether to show progress."""
    params: list[click.Parameter] = []
    ports = list(op.inputs)
    out = op.path_output
    for port in ports:
        params.append(_port_param(port, False))
    if out is not None:
        params.append(_port_param(out, True))
    params += [_param_option(p) for p in op.params]
    params += [run_option(name) for name in op.run] + common
    if op.output is not None:
        params.append(click.Option(["--report"], metavar="PAGE.html", default=None,
                                   help="Also write an HTML page of this run: inputs, output, "
                                        "slices of the volumes, figures."))

    named = ports + ([out] if out is not None else [])  # the inputs and output
    required = [(p.name, p.flag) for p in op.params if p.required] + [
        (p.name, f"--{p.name}" if p.option else p.metavar) for p in named if not p.optional]

    def callback(**kw: Any) -> None:
        for name, shown in required:  # click checks these; this holds whatever click does
            if kw.get(name) is None:
                raise InvalidArgumentError(f"emarray {op.name} needs {shown}")
        page = kw.pop("report", None)
        if page is not None:  # written after the job: checked before it
            from .report import check_page
            check_page(Path(page), replace=bool(kw.get("overwrite")),
                       inputs=[kw[p.name] for p in named if kw.get(p.name) is not None])
        args: dict[str, Any] = {}
        for port in named:
            value = kw.pop(port.name)
            if value is not None:
                args[port.name] = value
        for p in op.params:
            value = kw.pop(p.name)
            if value is not None:
                args[p.name] = value
        run = {k: v for k, v in kw.items() if v is not None and v is not False}
        t0 = time.monotonic()
        with speaking("cli"):
            result = call(**args, **run, progress=progress())
        if run.get("estimate"):
            for line in result.lines():
                click.echo(line)
            return
        lines = op.said(result, args)
        for line in lines:
            click.echo(line)
        if page is not None:
            from .report import job_report
            ins = {p.name: os.fspath(args[p.name]) for p in ports if p.name in args}
            dst = args.get(out.name) if out is not None else (
                args.get(op.output.name) if op.output is not None else None)
            job_report(page, op.name, ins, os.fspath(dst) if dst is not None else None, lines,
                       time.monotonic() - t0)
            click.echo(f"report: {page}")

    doc = inspect.cleandoc(op.func.__doc__ or "") if op.func is not None else ""
    first = doc.split("\n\n")[0].replace("``", "") if doc else ""
    text = _text(op.summary) + (f"\n\n{first}" if first else "")
    return Command(op.name, callback=friendly(callback), params=params, help=text,
                   short_help=_text(op.summary).rstrip("."))
