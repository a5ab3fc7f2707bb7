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

from .errors import EmarrayError, EmarrayWarning

_SCHED_HELP = ("threads (default), processes, synchronous, local-cluster, cuda (one worker per "
               "GPU, dask-cuda), slurm (workers in SLURM jobs, dask-jobqueue; see "
               "--slurm-config), or a scheduler address tcp://host:port (default: "
               "$DASK_SCHEDULER_ADDRESS when set)")


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """-v/-q work before or after the subcommand; the last one given wins."""
    if value:
        root = ctx.find_root()
        root.meta["emarray.quiet" if param.name == "quiet" else "emarray.verbose"] = value
        _configure_logging(root)
    return value


def _verbosity_options(f):
    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity,
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
    f = click.option("--scheduler", default=None, help=_SCHED_HELP)(f)
    f = click.option("--workers", type=int, default=None,
                     help="Threads, processes or local-cluster workers (default: all cores).")(f)
    f = click.option("--connect-timeout", type=float, default=None,
                     help="Seconds to wait for a scheduler address to answer (default 10).")(f)
    f = click.option("--retries", type=click.IntRange(min=0), default=2,
                     help="Run a failed block again this often before stopping with its name.")(f)
    f = click.option("--slurm-config", "slurm", default=None, metavar="FILE",
                     help="--scheduler slurm: a YAML file of SLURM settings (partition, account, "
                          "walltime, cores, memory, gres, jobs, prologue; see the README).")(f)
    f = _verbosity_options(f)
    return f


def _incomplete_option(f):
    return click.option("--allow-incomplete", is_flag=True,
                        help="Accept inputs that are unfinished outputs of an interrupted job "
                             "(their missing chunks read as 0).")(f)


def _output_options(f):
    f = click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")(f)
    f = click.option("--resume", is_flag=True,
                     help="Finish an interrupted run into DST, skipping finished chunks.")(f)
    return f


def _layout_options(default_chunks: str | None):
    def deco(f):
        f = click.option("--chunks", default=default_chunks, show_default=bool(default_chunks),
                         help="Storage chunk shape z,y,x.")(f)
        f = click.option("--shards", default=None, help="Shard shape z,y,x (multiples of chunks).")(f)
        f = click.option("--compression", default="zstd", show_default=True,
                         type=click.Choice(["zstd", "blosc-zstd", "blosc-lz4", "gzip", "none"]))(f)
        return f
    return deco


def _backend_options(f):
    f = click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     help="Where blocks are computed (auto: CUDA when CuPy sees a device).")(f)
    f = click.option("--gpu-memory-limit", default=None,
                     help="CUDA: device memory cap, a fraction of the card or a size "
                          "(8GB). Default 0.5.")(f)
    return f


def _elementwise_options(f):
    """The options of every elementwise operator: backend, output layout, output policy, engine."""
    for deco in (_engine_options, _output_options, _layout_options(None), _backend_options,
                 _incomplete_option):
        f = deco(f)
    return f


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
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            reason = exc.strerror or str(exc)
            click.echo(f"error: {reason}{where}", err=True)
            sys.exit(2)
    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    click.echo(f"warning: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="emarray", message="emarray %(version)s")
@_verbosity_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """emarray: out-of-core chunked operators for electron-microscopy volumes.

    Volumes are OME-Zarr (zarr v3) directories; zarr v2, N5 and neuroglancer precomputed
    volumes are read too. Tuples are written z,y,x.
    """
    ctx.obj = {"progress": not ctx.meta.get("emarray.quiet", False)}
    _configure_logging(ctx)


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


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--dataset", default=None, help="HDF5 dataset name (when the file holds several).")
@click.option("--voxel-size", default=None,
              help="Voxel size z,y,x in --unit (default: read from SRC, else 1,1,1 with a warning).")
@click.option("--unit", default=None, help="Spatial unit (nanometer, micrometer, nm, um...).")
@_layout_options("64,256,256")
@click.option("--level", "compression_level", type=int, default=None, help="Compression level.")
@_output_options
@_engine_options
@click.pass_obj
@_friendly
def ingest(obj: dict, src: str, dst: str, **kw: Any) -> None:
    """Ingest SRC (slice folder, TIFF stack or HDF5 file) into an OME-Zarr volume DST."""
    from .ingest import ingest as _ingest
    v = _ingest(src, dst, progress=obj["progress"], **kw)
    click.echo(f"wrote {v.url}: {v.shape} {v.dtype}, chunks {v.chunks}")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--region", default=None, help="z0:z1,y0:y1,x0:x1 (empty parts mean all).")
@click.option("--dataset", default="data", help="Dataset name in an HDF5 output.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@_incomplete_option
@_verbosity_options
@click.pass_obj
@_friendly
def export(obj: dict, src: str, dst: str, **kw: Any) -> None:
    """Export a region of volume SRC to DST (.tif stack or .h5)."""
    from .export import export as _export
    p = _export(src, dst, progress=obj["progress"], **kw)
    click.echo(f"wrote {p}")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--value", "-t", required=True,
              help="The threshold (whole numbers are exact at any size: 18446744073709551614).")
@click.option("--op", type=click.Choice(["gt", "ge", "lt", "le"]), default="gt",
              help="gt: SRC > value; ge: SRC >= value; lt: SRC < value (cell interiors of a "
                   "boundary map); le: SRC <= value.")
@_elementwise_options
@click.pass_obj
@_friendly
def threshold(obj: dict, src: str, dst: str, **kw: Any) -> None:
    """Threshold probability map SRC into a uint8 0/1 mask DST."""
    from .ops.threshold import threshold as _threshold
    v = _threshold(src, dst, progress=obj["progress"], **kw)
    click.echo(f"wrote {v.url}: {v.shape} uint8 mask")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--range", "lo_hi", required=True, help="lo,hi: the values mapped to 0 and 255.")
@_elementwise_options
@click.pass_obj
@_friendly
def rescale(obj: dict, src: str, dst: str, lo_hi: str, **kw: Any) -> None:
    """Rescale SRC linearly to uint8 DST: --range lo,hi maps to 0..255 (clipped, NaN -> 0)."""
    from ._normalize import real_number
    from .ops.rescale import rescale as _rescale
    parts = [p for p in str(lo_hi).split(",") if p.strip()]
    if len(parts) != 2:
        raise click.UsageError(f"--range takes lo,hi, got {lo_hi!r}")
    lo, hi = (real_number(p, "range") for p in parts)
    v = _rescale(src, dst, lo, hi, progress=obj["progress"], **kw)
    click.echo(f"wrote {v.url}: {v.shape} uint8")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--sigma", required=True, help="Gaussian sigma: one number or z,y,x.")
@click.option("--unit", type=click.Choice(["voxel", "physical"]), default="voxel",
              help="Sigma in voxels, or in the volume's physical unit (e.g. nanometer).")
@click.option("--truncate", type=float, default=4.0, help="Cut the filter at this many sigmas.")
@_elementwise_options
@click.pass_obj
@_friendly
def smooth(obj: dict, src: str, dst: str, sigma: str, **kw: Any) -> None:
    """Gaussian-smooth SRC into DST (float32), equal to scipy's gaussian_filter on the whole."""
    from .ops.smooth import smooth as _smooth
    v = _smooth(src, dst, sigma, progress=obj["progress"], **kw)
    click.echo(f"wrote {v.url}: {v.shape} {v.dtype}")


@cli.command()
@click.argument("path")
@click.option("--levels", type=int, default=None, help="Number of levels to add.")
@click.option("--until-size", type=int, default=None,
              help="Add levels until every axis is at most S voxels (default 64).")
@click.option("--mode", type=click.Choice(["auto", "mean", "mode", "max", "min", "nearest"]),
              default="auto", help="auto: mode for labels, mean for images.")
@click.option("--factors", default="auto",
              help="auto (y,x only while z is coarser, then all three) or z,y,x of 1 or 2.")
@click.option("--labels", is_flag=True, default=None,
              help="PATH holds labels (pooled by mode, never averaged).")
@_engine_options
@_output_options
@_backend_options
@click.pass_obj
@_friendly
def pyramid(obj: dict, path: str, **kw: Any) -> None:
    """Add downsampled levels to the OME-Zarr image PATH and update its multiscales."""
    from .ops.pyramid import pyramid as _pyramid
    v = _pyramid(path, progress=obj["progress"], **kw)
    from .volume import open_volume
    for k in range(1, len(v.levels)):
        lv = open_volume(v.url, level=k)
        click.echo(f"level {v.levels[k]}: {lv.shape} voxel {lv.voxel_size} {lv.unit}")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--like", required=True, help="Reference volume whose grid DST gets.")
@click.option("--mode", type=click.Choice(["auto", "nearest", "linear"]), default="auto",
              help="auto: nearest for labels, linear for images.")
@click.option("--chunks", default=None, help="Chunk shape z,y,x (default: the reference's).")
@_engine_options
@_output_options
@_incomplete_option
@click.pass_obj
@_friendly
def upsample(obj: dict, src: str, dst: str, **kw: Any) -> None:
    """Resample the coarse volume SRC onto the grid of --like into DST."""
    from .ops.upsample import upsample as _upsample
    v = _upsample(src, dst, progress=obj["progress"], **kw)
    click.echo(f"wrote {v.url}: {v.shape} {v.dtype}")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--connectivity", type=int, default=26,
              help="Neighbours that join: faces (6), + edges (18), + corners (26).")
@click.option("--binary", "mode", flag_value="binary",
              help="Every voxel other than --background is foreground.")
@click.option("--multilabel", "mode", flag_value="multilabel",
              help="Each distinct value has its own components.")
@click.option("--background", default="0", help="The background value (exact at any size).")
@click.option("--min-size", type=int, default=0,
              help="Remove components of fewer voxels than this (before numbering).")
@_elementwise_options
@click.pass_obj
@_friendly
def label(obj: dict, src: str, dst: str, connectivity: int, mode: str | None, **kw: Any) -> None:
    """Label the connected components of SRC into DST: ids 1..N in C order of first voxel.

    The ids do not depend on the chunking. Without --binary or --multilabel, label volumes
    (32/64-bit integers, or marked as labels) are multilabel and everything else binary.
    """
    from .ops.label import label as _label
    v = _label(src, dst, connectivity=connectivity, mode=mode or "auto",
               progress=obj["progress"], **kw)
    n = v.attrs.get("emarray", {}).get("components")
    click.echo(f"wrote {v.url}: {v.shape} {v.dtype}, {n} components")


@cli.command()
@click.argument("labels")
@click.option("--raw", default=None, help="Intensity volume: adds mean/min/max intensity.")
@click.option("--out", required=True,
              help="objects.csv or objects.parquet (a .json summary and .png plot beside it).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier table at --out.")
@click.option("--resume", is_flag=True, help="Finish a killed run into the same --out.")
@_incomplete_option
@_engine_options
@click.pass_obj
@_friendly
def objects(obj: dict, labels: str, **kw: Any) -> None:
    """Measure each object of LABELS: voxels, volume, bounding box, centroid, intensities."""
    from .ops.objects import objects as _objects
    df = _objects(labels, progress=obj["progress"], **kw)
    total = float(df["volume_um3"].sum())
    click.echo(f"{len(df)} objects, {total:.6g} µm³ in all")
    click.echo(f"wrote {kw['out']} (summary and volume histogram beside it)")


@cli.command()
@click.argument("pred")
@click.argument("truth")
@click.option("--out", required=True,
              help="Folder for match.json, matching.csv, objects.csv and match.png.")
@click.option("--label", "label_first", is_flag=True,
              help="PRED and TRUTH are masks: label them first (into --out).")
@click.option("--connectivity", type=int, default=26, help="With --label: 6, 18 or 26.")
@click.option("--match-threshold", type=float, default=0.5,
              help="IoU at which the per-object table counts a match.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier match in --out.")
@click.option("--resume", is_flag=True, help="Finish a killed match into the same --out.")
@_incomplete_option
@_engine_options
@click.pass_obj
@_friendly
def match(obj: dict, pred: str, truth: str, **kw: Any) -> None:
    """Match predicted instances PRED against ground truth TRUTH: F1 at IoU 0.1..0.9, VOI,
    adapted Rand error, per-object table."""
    from .ops.match import match as _match
    r = _match(pred, truth, progress=obj["progress"], **kw)
    thr = kw["match_threshold"]
    row = r["matching"].set_index("threshold").loc[thr]  # the match threshold is always a row
    click.echo(f"{r['n_true']} truth objects, {r['n_pred']} predicted")
    click.echo(f"at IoU {thr:g}: precision {row['precision']:.4f}, recall {row['recall']:.4f}, "
               f"F1 {row['f1']:.4f}")
    click.echo(f"VOI split {r['voi_split']:.4f}, merge {r['voi_merge']:.4f}; adapted Rand error "
               f"{r['adapted_rand_error']:.4f}")
    click.echo(f"wrote {os.path.join(kw['out'], 'match.json')}, matching.csv, objects.csv and "
               "match.png")


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
@click.argument("raw")
@click.argument("model_file", metavar="MODEL")
@click.argument("out")
@click.option("--patch", default=None, help="Network input z,y,x (default: the model file's).")
@click.option("--overlap", default=None,
              help="Overlap of output tiles z,y,x in voxels (default: a quarter tile; 0 for "
                   "valid nets).")
@click.option("--blend", type=click.Choice(["gaussian", "bump", "constant"]), default=None,
              help="Tile weights (default gaussian; constant for valid nets).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "uint8"]), default="float32",
              help="Output dtype (uint8: round(p*255), a quarter of the store).")
@click.option("--channels", default=None, help="Output channels to write, e.g. 0,2 (default all).")
@click.option("--batch", type=int, default=4, help="Patches per forward pass.")
@click.option("--mc-samples", type=int, default=0,
              help="Monte-Carlo dropout samples per patch: mean in OUT, variance in OUT/variance.")
@click.option("--seed", type=int, default=0, help="Seed of the Monte-Carlo dropout samples.")
@click.option("--block", default=None,
              help="Voxels per task z,y,x, whole output chunks (default: four to eight tiles "
                   "per axis, up to 32 Mi voxels). Bigger blocks recompute fewer tiles at their "
                   "borders and take more memory.")
@click.option("--chunks", default=None, help="Output chunk shape z,y,x (default: RAW's).")
@click.option("--compression", default="zstd", show_default=True,
              type=click.Choice(["zstd", "blosc-zstd", "blosc-lz4", "gzip", "none"]))
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              help="auto: bfloat16 autocast on CUDA where the device has it, else float32.")
@click.option("--threads", type=int, default=None,
              help="PyTorch threads per worker process (default: its share of the cores).")
@click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="Where the network runs (auto: CUDA when PyTorch sees a device).")
@_output_options
@_incomplete_option
@_engine_options
@click.pass_obj
@_friendly
def predict(obj: dict, raw: str, model_file: str, out: str, **kw: Any) -> None:
    """Run the 3D U-Net in MODEL over RAW into the OME-Zarr OUT, blended seamlessly.

    Equals one sliding window over the whole volume with the same patches and weights,
    for any chunking; resumable, on any scheduler.
    """
    import time

    from .ops.predict import predict as _predict
    t0 = time.monotonic()
    v = _predict(raw, model_file, out, progress=obj["progress"], **kw)
    about = v.attrs.get("emarray", {}).get("prediction", {})
    dt = time.monotonic() - t0
    tiles = about.get("tiles", 0) * max(1, kw["mc_samples"])
    click.echo(f"wrote {v.url}: {v.shape} {v.dtype} in {dt:.1f} s "
               f"({tiles:,} patches of a whole-volume sliding window)")
    if kw["mc_samples"] > 1:
        click.echo(f"wrote {v.url}/variance: the variance of {kw['mc_samples']} dropout samples")


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
    if not kw["dry_run"]:
        n = len(r.ran)
        click.echo(f"pipeline done: {n} step{'s' if n != 1 else ''} run, "
                   f"{len(r.plan) - n} finished before; outputs in {r.recipe.workdir}")


@cli.command()
@click.argument("prob")
@click.argument("truth")
@click.option("--out", required=True, help="Folder for sweep.csv, sweep.json and sweep.png.")
@click.option("--thresholds", default=None,
              help="Sweep N thresholds evenly over the map's range: k/N for float maps, every "
                   "level of 8-bit maps (default 100, or 256 for 8-bit maps).")
@click.option("--values", default=None, help="Explicit thresholds, e.g. 0.1,0.25,0.5.")
@click.option("--truth-value", default=None,
              help="Truth is positive where it equals V (default: where it is nonzero).")
@click.option("--truth-nonzero", is_flag=True, help="Truth is positive where nonzero (default).")
@click.option("--mask", default=None, help="ROI volume: voxels where it is 0 are not counted.")
@click.option("--ignore-value", default=None,
              help="Voxels whose truth equals V are not counted.")
@click.option("--channel", type=int, default=None, help="Sweep one channel of a C,Z,Y,X map.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier sweep in --out.")
@click.option("--resume", is_flag=True, help="Finish a killed sweep into the same --out.")
@click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="Where the histograms are computed.")
@_incomplete_option
@_engine_options
@click.pass_obj
@_friendly
def sweep(obj: dict, prob: str, truth: str, truth_nonzero: bool, **kw: Any) -> None:
    """Sweep thresholds of PROB against TRUTH in one pass: counts, F1, IoU, volumes, plot."""
    from .ops.sweep import best_rows, sweep as _sweep
    if truth_nonzero and kw["truth_value"] is not None:
        raise click.UsageError("--truth-value and --truth-nonzero exclude each other")
    df = _sweep(prob, truth, progress=obj["progress"], **kw)
    for ch, best in best_rows(df).items():
        tag = f"channel {ch}: " if df["channel"].nunique() > 1 else ""
        click.echo(f"{tag}best F1 {best['f1']['f1']:.4f} at t={best['f1']['threshold']:g}; "
                   f"best IoU {best['iou']['iou']:.4f} at t={best['iou']['threshold']:g}")
    nan = sum(df.attrs["nan_voxels"].values())
    if nan:
        click.echo(f"{nan:,} NaN voxels in the map were not counted")
    click.echo(f"wrote {os.path.join(kw['out'], 'sweep.csv')}, sweep.json and sweep.png")


@cli.command()
@click.argument("dst")
@click.option("--size", default="128,256,256", help="Volume shape z,y,x (or one number).")
@click.option("--chunks", default="64,128,128", help="Chunk shape z,y,x.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@_output_options
@_engine_options
@click.pass_obj
@_friendly
def synthetic(obj: dict, dst: str, size: str, chunks: str, seed: int, **kw: Any) -> None:
    """Write a synthetic EM-like volume (raw, truth, prob) into folder DST."""
    from .datasets import synthetic as _synthetic
    vols = _synthetic(dst, size, chunks=chunks, seed=seed, progress=obj["progress"], **kw)
    for v in vols.values():
        click.echo(f"wrote {v.url}: {v.shape} {v.dtype}")


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


def main() -> None:
    cli(prog_name="emarray")


if __name__ == "__main__":
    main()
