"""The ``emarray`` command line: one subcommand per public operator."""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from typing import Any

import click

from . import redact
from .operator_commands import Group, command, run_options
from .errors import EmarrayError, EmarrayWarning
from .spec import ENGINE

def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """-v/-q work before or after the subcommand; the last one given wins."""
    if value:
        root = ctx.find_root()
        root.meta["emarray.quiet" if param.name == "quiet" else "emarray.verbose"] = value
        _configure_logging(root)
    return value


def _verbosity_options(f):
    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity,
                     show_default=False,
                     help="More log output: -v emarray's steps, -vv its debug, -vvv also dask/zarr.")(f)
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
                     help="No progress display, errors only.")(f)
    return f


#: other libraries' loggers: quiet unless -vv
_NOISY = ("distributed", "dask", "numcodecs", "zarr", "asyncio", "fsspec", "numba", "tornado",
          "bokeh", "matplotlib", "PIL", "tifffile", "h5py")


def _configure_logging(root: click.Context) -> None:
    verbose = root.meta.get("emarray.verbose", 0)
    quiet = root.meta.get("emarray.quiet", False)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", force=True,
                        level=logging.ERROR if quiet else logging.WARNING)
    redact.hide_in_logs(logging.getLogger().handlers)  # store options: never in a log line
    mine = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.getLogger("emarray").setLevel(mine)
    # other libraries: their warnings by default, their debug output only with -vvv
    theirs = logging.ERROR if quiet else logging.DEBUG if verbose >= 3 else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(theirs)
    # distributed sets its loggers' levels from dask's config when it is imported
    import dask
    dask.config.set({"logging.distributed": logging.getLevelName(theirs).lower()})
    if isinstance(root.obj, dict):
        root.obj["progress"] = not quiet


def _engine_options(f):
    """The engine's run options and -v/-q, for the commands that are not operators."""
    return _verbosity_options(run_options(*ENGINE)(f))


def _friendly(f):
    """Print emarray errors and OS errors (disk full, permissions) as one line and exit 2."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", EmarrayWarning)
                warnings.showwarning = _show_warning
                return f(*args, **kwargs)
        except BrokenPipeError:  # `emarray info X | head`: the reader left; not an error
            _quiet_stdout()
            sys.exit(0)
        except EmarrayError as exc:
            click.echo(redact.text(f"error: {exc}"), err=True)
            sys.exit(2)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            reason = exc.strerror or str(exc)
            click.echo(redact.text(f"error: {reason}{where}"), err=True)
            sys.exit(2)
    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    click.echo(redact.text(f"warning: {message}"), err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"],
                                    "show_default": True})
@click.version_option(package_name="emarray", message="emarray %(version)s")
@_verbosity_options
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
              help="An option of the object store for s3://, gs:// and https:// volumes "
                   "(endpoint_url=..., profile=..., anon=true); repeat for more. Give it "
                   "before the command.")
@click.pass_context
def cli(ctx: click.Context, storage_options: tuple[str, ...]) -> None:
    """emarray: out-of-core chunked operators for electron-microscopy volumes.

    Volumes are OME-Zarr (zarr v3) directories or URLs (s3://, gs://, https:// read-only);
    zarr v2, N5 and neuroglancer precomputed volumes are read too. Tuples are written z,y,x.
    """
    ctx.obj = {"progress": not ctx.meta.get("emarray.quiet", False)}
    _configure_logging(ctx)
    if storage_options:
        from . import storage
        try:
            storage.configure(storage.parse_options(storage_options))
        except EmarrayError as exc:
            click.echo(redact.text(f"error: {exc}"), err=True)
            sys.exit(2)


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_verbosity_options
@_friendly
def info(path: str, as_json: bool) -> None:
    """Describe the volume at PATH: shape, dtype, chunks, voxel size, levels, storage."""
    from .info import info as _info
    d = _info(path)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=list))
        return
    for key in ("url", "format", "shape", "dtype", "axes", "chunks", "shards"):
        click.echo(f"{key:>12}: {d[key]}")
    click.echo(f"{'voxel size':>12}: {d['voxel_size']} {d['unit']}")
    click.echo(f"{'levels':>12}: {len(d['levels'])} {d['levels']}")
    for lv in d["level_info"]:
        click.echo(f"{'':>12}  {lv['path']}: {lv['shape']} voxel {lv['voxel_size']}")
    click.echo(f"{'codecs':>12}: {', '.join(d['codecs']) or '-'}")
    if d["chunks_stored"] is not None:
        click.echo(f"{'stored as':>12}: {d['chunks_stored']:,} of {d['chunks_expected']:,} "
                   f"{'shards' if d['shards'] else 'chunks'}")
    click.echo(f"{'status':>12}: {d['status']}")
    click.echo(f"{'bytes':>12}: {d['nbytes']:,} uncompressed")
    if d["stored_bytes"] is not None:
        click.echo(f"{'stored':>12}: {d['stored_bytes']:,} bytes "
                   f"(compression ratio {d['compression_ratio']:.2f})")


@cli.group()
def model() -> None:
    """Make and inspect model files (3D U-Nets; needs PyTorch: pip install 'emarray[train]')."""


@model.command("new")
@click.argument("out")
@click.option("--depth", type=int, default=3, help="Resolution levels (2: one pooling).")
@click.option("--filters", type=int, default=16, help="Feature maps at the first level.")
@click.option("--padding", type=click.Choice(["same", "valid"]), default="same",
              help="same: output as large as the input; valid: no padding, tiles without blending.")
@click.option("--anisotropic", is_flag=True,
              help="Pool y,x only (1,2,2) but at the last level, for data such as 50x4x4 nm.")
@click.option("--pool", default=None, help="Pooling per level, e.g. '1,2,2;2,2,2'.")
@click.option("--channels-in", type=int, default=1, help="Input channels.")
@click.option("--channels-out", type=int, default=1, help="Output channels.")
@click.option("--norm", type=click.Choice(["batch", "instance", "group", "none"]), default="batch")
@click.option("--residual", is_flag=True, help="Residual blocks.")
@click.option("--dropout", type=float, default=0.0,
              help="Channel dropout (what predict --mc-samples samples).")
@click.option("--activation", type=click.Choice(["sigmoid", "softmax", "none"]), default="sigmoid")
@click.option("--normalize", default="0,255",
              help="MEAN,STD: the network sees (raw - MEAN) / STD (0,255: uint8 to [0,1]).")
@click.option("--patch", default=None, help="Default input patch z,y,x (default: one near 64^3, "
                                            "or 32,128,128 when anisotropic).")
@click.option("--seed", type=int, default=0, help="Seed of the random initial weights.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_verbosity_options
@_friendly
def model_new(out: str, **kw: Any) -> None:
    """Write a seeded, randomly initialised 3D U-Net model file OUT."""
    from .models import describe, new_model
    path = new_model(out, **kw)
    d = describe(path)
    click.echo(f"wrote {path}: {d['parameters']:,} parameters, patch {_zyx(d['patch'])} -> "
               f"output {_zyx(d['output'])}")


def _zyx(v: Any) -> str:
    return ",".join(str(int(x)) for x in v)


@model.command("info")
@click.argument("ckpt")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_verbosity_options
@_friendly
def model_info(ckpt: str, as_json: bool) -> None:
    """Describe the model file CKPT: architecture, parameters, receptive field, input sizes."""
    from .models import describe
    d = describe(ckpt)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    c = d["config"]
    kind = "TorchScript archive" if d["torchscript"] else "model file"
    click.echo(f"{d['path']} ({kind})")
    click.echo(f"  3D U-Net: depth {c['depth']}, {c['filters']} filters, {c['padding']} padding, "
               f"{c['norm']} norm{', residual' if c['residual'] else ''}"
               f"{', dropout ' + str(c['dropout']) if c['dropout'] else ''}")
    click.echo(f"  pooling: {' '.join(_zyx(p) for p in c['pool']) or '-'}; channels "
               f"{c['in_channels']} -> {c['out_channels']} ({c['activation']})")
    click.echo(f"  parameters: {d['parameters']:,}")
    click.echo(f"  receptive field: {_zyx(d['receptive_field'])}; context per side "
               f"{_zyx(d['context'])}; sizes in multiples of {_zyx(d['factor'])}")
    n = d["normalize"]
    click.echo(f"  input normalisation: (raw - {n['mean']:g}) / {n['std']:g}")
    click.echo(f"  default patch: {_zyx(d['patch'])} -> output {_zyx(d['output'])}")
    click.echo("  admissible input sizes -> output sizes:")
    for ax, sizes in d["admissible"].items():
        click.echo(f"    {ax}: " + ", ".join(f"{i}->{o}" for i, o in sizes) + ", ...")


@cli.command()
@click.argument("config", metavar="CONFIG.yaml")
@click.option("--out", default=None, help="The run's folder (overrides the config's out).")
@click.option("--steps", type=int, default=None, help="Train this many steps (overrides steps).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Change a config value, e.g. --set sampling.mode=balanced (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue the run in OUT from its last checkpoint (only --steps may change).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier run in OUT (kept until the new run's first checkpoint).")
@click.option("--print-config", is_flag=True, help="Print the whole config with defaults and stop.")
@_verbosity_options
@click.pass_obj
@_friendly
def train(obj: dict, config: str, sets: tuple[str, ...], print_config: bool, **kw: Any) -> None:
    """Train the zoo's 3D U-Net on zarr volumes as CONFIG.yaml says; write checkpoints
    (model.pt, best.pt: model files predict reads), metrics.csv/.json and training.png."""
    from .training import resolve_config, train as _train
    if print_config:
        import yaml
        full = resolve_config(config, out=kw["out"], steps=kw["steps"], sets=sets)
        click.echo(yaml.safe_dump(full, sort_keys=False), nl=False)
        return
    r = _train(config, sets=sets, progress=obj["progress"], **kw)
    click.echo(f"{r.stopped}; model files in {r.out}: model.pt (latest)"
               + (", best.pt" if r.best else ""))
    if r.best:
        b = r.best
        click.echo(f"best validation at step {b['step']}: F1 {b['f1']:.4f} (threshold "
                   f"{b['threshold_f1']:.2f}), IoU {b['iou']:.4f} (threshold {b['threshold_iou']:.2f})")


def _slurm_options(f):
    """--slurm-* options: the SLURM settings, over --slurm-config and the recipe's run.slurm."""
    opts = [("partition", str, "Partition (sbatch -p)."), ("account", str, "Account (sbatch -A)."),
            ("walltime", str, "Wall time per worker job, e.g. 02:00:00."),
            ("cores", int, "CPUs per job (default 1)."),
            ("processes", int, "dask workers per job (default 1)."),
            ("memory", str, "Memory per job, e.g. 16GB (default 4GB)."),
            ("gres", str, "Generic resources per job, e.g. gpu:1."),
            ("jobs", int, "Scale to N worker jobs (default: --workers, else 1)."),
            ("adapt", str, "MIN:MAX: scale the jobs to the work instead of --slurm-jobs."),
            ("interface", str, "Network interface the workers reach the scheduler on (ib0)."),
            ("log-directory", str, "Folder for the jobs' stdout/stderr."),
            ("start-timeout", float, "Seconds to wait for the first worker job (default 300).")]
    for name, kind, text in reversed(opts):
        f = click.option(f"--slurm-{name}", f"slurm_{name.replace('-', '_')}", type=kind,
                         default=None, help=text)(f)
    f = click.option("--slurm-prologue", multiple=True, metavar="LINE",
                     help="A shell line each job runs first, e.g. 'module load cuda' "
                          "(repeatable).")(f)
    f = click.option("--slurm-directive", multiple=True, metavar="OPTION",
                     help="An extra #SBATCH option, e.g. --qos=short (repeatable).")(f)
    return f


@cli.command("run")
@click.argument("recipe", metavar="RECIPE.yaml")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Change the recipe: STEP.KEY=VALUE, VAR=VALUE, workdir=PATH or any dotted "
                   "key (repeatable).")
@click.option("--workdir", default=None, help="Folder for the steps' outputs (overrides the "
                                              "recipe's workdir).")
@click.option("--dry-run", is_flag=True, help="Print the plan (each step, its inputs, outputs "
                                              "and whether it runs) and stop.")
@click.option("--resume", is_flag=True, help="Finish a step that was interrupted (its finished "
                                             "blocks are kept).")
@click.option("--overwrite", is_flag=True, help="Run every step again, replacing the outputs "
                                                "an earlier run made.")
@click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where blocks are computed (default: the recipe's run.backend, else auto).")
@_slurm_options
@_engine_options
@click.pass_context
@_friendly
def run_recipe(ctx: click.Context, recipe: str, sets: tuple[str, ...], **kw: Any) -> None:
    """Run the pipeline RECIPE.yaml: its steps in order, each one's output the next one's input.

    Steps that finished in an earlier run are skipped; a step whose recipe or inputs changed
    runs again, with every step after it. See pipelines/ for recipes.
    """
    from .pipeline import run_pipeline
    if ctx.get_parameter_source("retries") == click.core.ParameterSource.DEFAULT:
        kw["retries"] = None  # the recipe's run.retries, else the default
    slurm = {k[len("slurm_"):]: kw.pop(k) for k in list(kw) if k.startswith("slurm_")}
    slurm["prologue"] = list(slurm["prologue"]) or None
    slurm["directives"] = list(slurm.pop("directive")) or None
    given = {k: v for k, v in slurm.items() if v is not None}
    config = kw.pop("slurm")
    if config is not None or given:  # defaults < recipe's run.slurm < --slurm-config < options
        from .engine.slurm import read_given
        kw["slurm"] = {**read_given(config), **given}
    r = run_pipeline(recipe, sets, progress=ctx.obj["progress"], echo=click.echo, **kw)
    if not kw["dry_run"] and r.estimate is None:
        n = len(r.ran)
        click.echo(f"pipeline done: {n} step{'s' if n != 1 else ''} run, "
                   f"{len(r.plan) - n} finished before; outputs in {r.recipe.workdir}")


@cli.command()
@click.option("--size", default="128,512,512", help="Synthetic volume shape z,y,x (or one number).")
@click.option("--out", default="emarray-demo", help="Folder for the demo's volumes.")
@click.option("--value", default=0.5, type=float, help="Threshold for the probability map.")
@_engine_options
@click.pass_obj
@_friendly
def demo(obj: dict, size: str, out: str, value: float, **kw: Any) -> None:
    """Run the demo: synthetic volume -> threshold -> score against ground truth."""
    from .demo import run_demo
    run_demo(out, size, value=value, progress=obj["progress"], echo=click.echo, **kw)


@cli.command()
@click.argument("workdir")
@click.option("--out", default=None, metavar="PAGE.html",
              help="Where to write the page (default: WORKDIR/report.html).")
@_verbosity_options
@_friendly
def report(workdir: str, out: str | None) -> None:
    """Make the HTML page of the pipeline run in WORKDIR again: the recipe, each step's time
    and output, slices of every volume, the steps' figures and scores. `emarray run` writes
    it after every run; it is one file, pictures included, to open in any browser."""
    from .report import workdir_report
    click.echo(f"wrote {workdir_report(workdir, out)}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--screenshot", default=None, metavar="OUT.png",
              help="Write a PNG of the view (headless Chromium) and stop, instead of serving.")
@click.option("--layout", type=click.Choice(["xy", "xz", "yz", "3d", "4panel"]),
              default="4panel", help="The viewer's panels.")
@click.option("--position", default=None, metavar="Z,Y,X",
              help="Look at this voxel (of the first volume; default: its middle).")
@click.option("--segments", default=None, metavar="ID,ID,...",
              help="Show only these objects (and their meshes in the 3D view).")
@click.option("--size", default="1280,960", metavar="W,H", help="Screenshot size in pixels.")
@click.option("--port", type=int, default=0, help="The viewer's port (0: any free one).")
@click.option("--bind", default="127.0.0.1",
              help="Address to serve on; only this machine can connect unless you widen it "
                   "(0.0.0.0 or :: for every interface: the URLs then name this machine).")
@click.option("--open", "open_browser", is_flag=True, help="Open the viewer in a browser.")
@_verbosity_options
@_friendly
def view(paths: tuple[str, ...], segments: str | None, size: str, **kw: Any) -> None:
    """Show volumes in neuroglancer, served from disk (never loaded into memory).

    PATH is an OME-Zarr / zarr v3 volume, an objects table, mesh or skeleton folder made from a label
    volume (name that volume too), or a folder of them such as a recipe's work folder. Only
    the paths named are served. A volume in a bucket (s3://...) is read there by this machine,
    with the store options: the browser never sees them. Label volumes show as segmentations,
    with their objects table (segment properties), meshes and skeletons when emarray made them.
    Prints the viewer's address; Ctrl-C ends it.

    \b
    emarray view work/demo
    emarray view raw.zarr cells.zarr cells.meshes --layout 3d --segments 3,17
    emarray view work/demo --screenshot demo.png
    """
    from ._normalize import parse_tuple, whole_number
    from .view import view as _view
    ids = tuple(whole_number(v, "--segments", 1) for v in segments.split(",")
                if v.strip()) if segments else ()
    w, h = parse_tuple(size, "--size", 2)
    if kw["screenshot"] is not None:  # written after Chromium ran: checked before it starts
        from pathlib import Path

        from .report import check_new_file
        data = [p for p in paths if not os.path.isdir(p) or os.path.exists(
            os.path.join(p, "zarr.json")) or os.path.exists(os.path.join(p, "info"))]
        check_new_file(Path(kw["screenshot"]), "--screenshot", (".png",), data)
    _view(paths, segments=ids, size=(w, h), echo=click.echo, **kw)


@cli.command("gui")
@click.argument("folders", nargs=-1, metavar="[FOLDER]...")
@click.option("--port", type=int, default=None,
              help="The port (default: 8765, or the next free one above it).")
@click.option("--bind", default="127.0.0.1",
              help="Address to serve on; only this machine can connect unless you widen it.")
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
@click.option("--jobs", "max_running", type=click.IntRange(min=1), default=2,
              help="Jobs that run at once; more wait in the queue.")
@_verbosity_options
@click.pass_context
@_friendly
def gui(ctx: click.Context, folders: tuple[str, ...], port: int | None, bind: str,
        no_open: bool, max_running: int) -> None:
    """Serve the operators, training, recipes, results and the viewer as a web page, for the
    FOLDERs named (default: this one).

    Prints the page's address with a fresh token first; only this machine can open it (reach
    it from elsewhere through an SSH tunnel: see the gui page of the docs). Ctrl-C stops the
    page; the jobs it started go on and are listed again next time.
    """
    from . import storage
    from .gui import serve
    given = ctx.find_root().params.get("storage_options") or ()
    serve(list(folders) or ["."], port=port, bind=bind, open_browser=not no_open,
          max_running=max_running, storage_options=storage.parse_options(given) or None,
          echo=click.echo)


def _verbosity_params() -> list[click.Parameter]:
    holder = click.Command("x")
    _verbosity_options(holder)
    return list(holder.params)


def _progress() -> bool:
    obj = click.get_current_context().find_object(dict)
    return bool(obj.get("progress", True)) if obj else True


def _add_operator_commands() -> None:
    """One subcommand per declared operator (see :mod:`emarray.spec`)."""
    from .spec import operators
    for op in operators().values():
        assert op.call is not None
        cli.add_command(command(op, op.call, _friendly, _verbosity_params(), _progress))


_add_operator_commands()


def main() -> None:
    cli(prog_name="emarray")


if __name__ == "__main__":
    main()
