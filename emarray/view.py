"""Look at volumes in neuroglancer: ``emarray view PATH [PATH ...]``.

The ``neuroglancer`` Python package serves the viewer (its client ships inside it) on
127.0.0.1; a small HTTP server beside it serves the volumes from disk (zarr v3 / OME-Zarr, with
CORS), chunk by chunk as the viewer asks: nothing is loaded into memory, and neuroglancer reads
the voxel size, units and pyramid levels from the OME metadata itself. Images become image
layers (contrast from the dtype or a sample of chunks), label volumes segmentation layers, with
the ``objects`` table made from them as segment properties and the ``emarray mesh`` and
``emarray skeleton`` folders made from them as meshes and skeletons (found beside them, or
given on the command line). float64 volumes, which
neuroglancer cannot show, are served as float32 through the package's own volume server.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._normalize import micrometres
from .errors import BackendUnavailableError, EmarrayError, InvalidArgumentError
from .volume import Volume, is_labels, open_volume
from .view_server import DataServer, check_bind, url_host, within

LAYOUTS = ("xy", "xz", "yz", "3d", "4panel")
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
#: headless Chromium draws WebGL2 in software with these (no GPU, no display)
SOFTWARE_GL = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
               "--disable-dev-shm-usage")
LOCAL = ("127.0.0.1", "localhost", "::1")
TABLE_SUFFIXES = (".csv", ".parquet")


def require_neuroglancer() -> Any:
    """neuroglancer, and pandas for the objects tables (both in the view extra)."""
    from .extras import require
    require("pandas", "emarray view", extra="view")
    return require("neuroglancer", "emarray view")


# -- what to show --------------------------------------------------------------------------
def contrast(vol: Volume) -> tuple[float, float]:
    """The display range: 0 to 1 for a mask, the whole range of other 8-bit data, else the 0.5
    and 99.5 percentiles of up to 8 chunks read at random (seeded)."""
    grid = [max(1, -(-n // c)) for n, c in zip(vol.shape, vol.chunks)]
    rng = np.random.default_rng(0)
    values = []
    for _ in range(min(8, int(np.prod(grid)))):
        idx = [int(rng.integers(0, g)) for g in grid]
        region = tuple(slice(i * c, min((i + 1) * c, n))
                       for i, c, n in zip(idx, vol.chunks, vol.shape))
        block = vol.read(region).astype(np.float64).ravel()
        block = block[np.isfinite(block)]
        values.append(block[:: max(1, block.size // 100_000)])
    v = np.concatenate(values) if values else np.zeros(0)
    if not v.size:
        return 0.0, 1.0
    if vol.dtype in (np.uint8, np.int8, np.bool_):
        if v.min() >= 0 and v.max() <= 1:
            return 0.0, 1.0
        info = np.iinfo(vol.dtype)
        return float(info.min), float(info.max)
    lo, hi = np.percentile(v, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def segment_properties(table: Path) -> dict[str, Any]:
    """neuroglancer's segment properties from an ``objects`` table: a label (id and size) and
    the voxels and volume of each id, as numbers to sort and filter by."""
    import pandas as pd
    df = pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table)
    if not {"id", "voxels", "volume_um3"} <= set(df.columns):
        raise InvalidArgumentError(f"{table} is not an objects table (it needs the columns id, "
                                   "voxels and volume_um3)")
    ids = [str(int(i)) for i in df["id"]]
    voxels = df["voxels"].to_numpy()
    props: list[dict[str, Any]] = [
        {"id": "label", "type": "label",
         "values": [f"{i}: {int(n):,} voxels" for i, n in zip(ids, voxels)]},
        {"id": "voxels", "type": "number",
         "data_type": "uint32" if voxels.size == 0 or voxels.max() < 2**32 else "float32",
         "values": [int(n) for n in voxels]},
        {"id": "volume_um3", "type": "number", "data_type": "float32",
         "values": [float(v) for v in df["volume_um3"]]}]
    return {"@type": "neuroglancer_segment_properties",
            "inline": {"ids": ids, "properties": props}}


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def table_labels(table: Path) -> str | None:
    """The label volume an ``objects`` table was made from (its summary beside it says)."""
    try:
        doc = json.loads(table.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    labels = doc.get("labels") if isinstance(doc, dict) else None
    return _real(labels) if isinstance(labels, str) and "://" not in labels else None


def mesh_labels(folder: Path) -> str | None:
    """The label volume an ``emarray mesh`` folder, or a precomputed ``emarray skeleton``
    folder, was made from (its ``info`` says): both are shown as sources of its layer."""
    from .ops.mesh import read_info
    from .ops.skeleton_files import read_info as skeleton_info
    info = read_info(folder) or skeleton_info(folder)
    labels = (info or {}).get("emarray", {}).get("labels")
    return _real(labels) if isinstance(labels, str) and "://" not in labels else None


def _is_volume(path: Path) -> bool:
    return (path / "zarr.json").is_file() or path.suffix in (".n5", ".zarr") and path.is_dir()


@dataclass
class Found:
    """What the paths given hold: volumes in order, and tables and mesh folders by the real
    path of the label volume they belong to; the paths named, resolved (all that may be
    served), and notes on what was left out."""

    volumes: list[Path] = field(default_factory=list)
    tables: dict[str, list[Path]] = field(default_factory=dict)
    meshes: dict[str, list[Path]] = field(default_factory=dict)
    roots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, other: Found) -> None:
        self.volumes += other.volumes
        for k, v in other.tables.items():
            self.tables.setdefault(k, []).extend(v)
        for k, v in other.meshes.items():
            self.meshes.setdefault(k, []).extend(v)
        self.notes += other.notes


def gather(paths: Sequence[str | os.PathLike]) -> Found:
    """Sort the paths given into volumes, tables and mesh folders; a folder that is none of
    these (a recipe's work folder) stands for everything in it. Only the paths named, links
    resolved, are ever served: what a folder holds through a link that leaves it is left out
    (with a note), and a table or mesh folder whose label volume (as its own files say) lies
    elsewhere is refused (named) or left out (found in a folder)."""
    from .storage import is_remote
    remote = [_bucket_volume(p) for p in paths if is_remote(p)]
    paths = [p for p in paths if not is_remote(p)]
    for p in paths:
        if not Path(p).exists():
            raise InvalidArgumentError(f"no volume, table or mesh folder at {os.fspath(p)!r}")
    roots = [Path(_real(p)) for p in paths]
    found = _sort([Path(p) for p in paths], roots)
    found.volumes = remote + found.volumes
    found.roots = roots
    known = {_real(v) for v in found.volumes}
    for owner, items in [*found.tables.items(), *found.meshes.items()]:
        if owner in known:
            continue
        if not (within(owner, roots) and Path(owner).exists()):
            raise InvalidArgumentError(
                f"{items[0]} belongs to the label volume {owner}, which is not among the paths "
                "named: name it too (emarray view serves only the paths named)")
        found.volumes.append(Path(owner))  # inside a folder named: it comes with its table
        known.add(owner)
    return found


def _bucket_volume(url: str | os.PathLike) -> Any:
    """A volume in a bucket, to be served from there with the store options (the browser
    reads it through the data server and never sees a credential)."""
    from .storage import RemotePath, options_for
    shown = os.fspath(url).rstrip("/")
    try:
        vol = open_volume(shown)
    except EmarrayError as exc:
        raise InvalidArgumentError(f"{shown}: emarray view shows volumes in a bucket (tables, "
                                   f"mesh and skeleton folders from local disk): {exc}") from None
    if vol.kind != "zarr3":
        raise InvalidArgumentError(f"{shown}: emarray view shows zarr v3 / OME-Zarr volumes "
                                   "(emarray ingest converts others)")
    return RemotePath(vol.url, vol.storage_options or options_for(vol.url))


def _sort(paths: Sequence[Path], roots: Sequence[Path]) -> Found:
    found = Found()
    for path in paths:
        if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
            owner = table_labels(path)
            if owner is None:
                raise InvalidArgumentError(
                    f"{path} has no summary beside it naming its label volume "
                    f"({path.with_suffix('.json').name}); give tables made by emarray objects")
            found.tables.setdefault(owner, []).append(path)
        elif path.is_dir() and (path / "info").is_file() and not _is_volume(path):
            owner = mesh_labels(path)
            if owner is None:
                raise InvalidArgumentError(f"{path} is not a mesh folder made by emarray mesh, "
                                           "nor a precomputed one made by emarray skeleton")
            found.meshes.setdefault(owner, []).append(path)
        elif path.is_dir() and not _is_volume(path):
            inner = _inside(path, roots)
            if not inner.volumes:
                raise InvalidArgumentError(f"{path} holds no zarr volume to show" + (
                    f" ({'; '.join(inner.notes)})" if inner.notes else ""))
            found.add(inner)
        else:
            found.volumes.append(path)
    return found


def _inside(folder: Path, roots: Sequence[Path], depth: int = 2) -> Found:
    """What a folder that is not itself a volume holds (a recipe's work folder: its outputs,
    and those of steps that write several, one folder down), inside the paths named."""
    items, notes = [], []
    for q in sorted(folder.iterdir()):
        if q.name.startswith("."):
            continue
        if not within(q, roots):
            notes.append(f"{q} is not shown: it is a link to {_real(q)}, outside the paths "
                         "named")
            continue
        owner = (table_labels(q) if q.suffix.lower() in TABLE_SUFFIXES and q.is_file()
                 else mesh_labels(q) if q.is_dir() and not _is_volume(q) else None)
        if owner is not None and not within(owner, roots):
            notes.append(f"{q} is not shown: its label volume {owner} is not among the paths "
                         "named")
            continue
        if _is_volume(q) or owner is not None:
            items.append(q)
    found = _sort(items, roots) if items else Found()
    found.notes += notes
    if depth > 1:
        for q in sorted(folder.iterdir()):
            if q.is_dir() and not q.name.startswith(".") and q not in items and \
                    within(q, roots) and not _is_volume(q):
                found.add(_inside(q, roots, depth - 1))
    return found


def beside(vol_path: Path) -> tuple[list[Path], list[Path]]:
    """The objects tables and mesh folders made from the label volume at ``vol_path`` that lie
    in its folder."""
    me = _real(vol_path)
    tables, meshes = [], []
    for q in sorted(vol_path.parent.iterdir()):
        if q.suffix.lower() in TABLE_SUFFIXES and q.is_file() and table_labels(q) == me:
            tables.append(q)
        elif q.is_dir() and (q / "info").is_file() and mesh_labels(q) == me:
            meshes.append(q)
    return tables, meshes


@dataclass
class Layer:
    name: str
    kind: str                 # image or segmentation
    sources: list[Any]
    volume: Volume
    shader_range: tuple[float, float] | None = None
    note: str = ""
    tables: list[Path] = field(default_factory=list)
    meshes: list[Path] = field(default_factory=list)


class Float32View:
    """A float64 volume read as float32, block by block, for neuroglancer's volume server."""

    def __init__(self, vol: Volume):
        self.vol, self.shape, self.dtype = vol, vol.shape, np.dtype(np.float32)
        self.ndim = vol.ndim

    def __getitem__(self, region: Any) -> np.ndarray:
        return self.vol.read(tuple(region)).astype(np.float32)


def _space(neuroglancer: Any, vol: Volume) -> Any:
    names, scales, units = [], [], []
    spatial = iter(vol.voxel_size)
    for a in vol.axes:
        if a in ("z", "y", "x"):
            names.append(a)
            scales.append(next(spatial) * micrometres(vol.unit) * 1e-6)
            units.append("m")
        else:
            names.append("c^")
            scales.append(1)
            units.append("")
    return neuroglancer.CoordinateSpace(names=names, scales=scales, units=units)


def make_layers(found: Found, server: DataServer, neuroglancer: Any) -> list[Layer]:
    """One layer per volume: images first, then segmentations, each name unique."""
    out: list[Layer] = []
    seen: set[str] = set()
    names: set[str] = set()
    for path in found.volumes:
        real = _real(path)
        if real in seen:
            continue
        seen.add(real)
        vol = open_volume(path)
        if vol.kind != "zarr3" or (vol.local_path is None and not vol.remote):
            raise InvalidArgumentError(f"{path}: emarray view shows zarr v3 / OME-Zarr volumes "
                                       "on local disk (emarray ingest converts others)")
        name = path.name.removesuffix(".zarr") or path.name
        while name in names:
            name += "'"
        names.add(name)
        if vol.dtype == np.float64:
            source: Any = neuroglancer.LocalVolume(data=Float32View(vol),
                                                   dimensions=_space(neuroglancer, vol))
            out.append(Layer(name, "image", [source], vol, contrast(vol),
                             f"{path} is float64, which neuroglancer cannot show: served as "
                             "float32"))
            continue
        if vol.remote:  # read from the bucket by the data server: its group and every version
            url = f"zarr3://{server.prefix(path)}"
        else:
            if found.roots and not within(vol.url, found.roots):
                raise InvalidArgumentError(
                    f"{path} is part of the volume {vol.url}: name that (emarray view serves "
                    "only the paths named)")
            url = f"zarr3://{server.folder(Path(vol.url))}"
        if not is_labels(vol):
            out.append(Layer(name, "image", [url], vol, contrast(vol)))
            continue
        near = beside(path) if not vol.remote else ([], [])
        left = [q for q in near[0] + near[1] if not within(q, found.roots)]
        if left:
            found.notes.append(
                f"{', '.join(q.name for q in left)} beside {path} not shown: emarray view "
                "serves only the paths named (name them, or their folder, to add them)")
        tables = [q for q in near[0] if within(q, found.roots)] + found.tables.get(real, [])
        meshes = [q for q in near[1] if within(q, found.roots)] + found.meshes.get(real, [])
        layer = Layer(name, "segmentation", [url], vol,
                      tables=list(dict.fromkeys(Path(_real(t)) for t in tables)),
                      meshes=list(dict.fromkeys(Path(_real(m)) for m in meshes)))
        for t in layer.tables:
            layer.sources.append(f"precomputed://{server.document(segment_properties(t))}")
        for m in layer.meshes:
            layer.sources.append(f"precomputed://{server.folder(m)}")
        out.append(layer)
    # images first (a raw one first of all), then segmentations; otherwise in the order given
    return sorted(out, key=lambda ly: (ly.kind == "segmentation", "raw" not in ly.name))


def largest(layers: list[Layer], n: int = 20) -> tuple[int, ...]:
    """The ``n`` largest objects of the first segmentation with meshes (by its objects table,
    else the first ids meshed): what a 3D view shows when no segments are chosen."""
    for layer in layers:
        if layer.kind != "segmentation" or not layer.meshes:
            continue
        if layer.tables:
            import pandas as pd
            t = layer.tables[0]
            df = pd.read_parquet(t) if t.suffix == ".parquet" else pd.read_csv(t)
            return tuple(int(i) for i in df.nlargest(n, "voxels")["id"])
        ids = sorted(int(p.name) for m in layer.meshes for p in m.iterdir() if p.name.isdigit())
        return tuple(ids[:n])
    return ()


def shader(lo: float, hi: float, channels: int = 1) -> str:
    """A grey (or, for 3 channels, colour) shader over ``[lo, hi]`` with its slider."""
    if channels == 3:
        ctl = "".join(f"#uicontrol invlerp {c}(range=[{lo!r}, {hi!r}], channel=[{i}])\n"
                      for i, c in enumerate("rgb"))
        return ctl + "void main() { emitRGB(vec3(r(), g(), b())); }"
    return (f"#uicontrol invlerp normalized(range=[{lo!r}, {hi!r}])\n"
            "void main() { emitGrayscale(normalized()); }")


def where_objects(layers: list[Layer]) -> list[float] | None:
    """Where to look when no ``--position`` is given: inside an object of the first label
    (else mask) volume, on the slice an ``emarray report`` shows first
    (:func:`emarray.preview.object_voxel`), as z, y, x in the first layer's voxels; None (the
    middle) when no layer shows objects."""
    from .preview import object_voxel, shows_objects
    first = layers[0].volume
    for layer in sorted(layers, key=lambda ly: ly.kind != "segmentation"):
        vol = layer.volume
        if len(layer.sources) and not isinstance(layer.sources[0], str):
            continue  # served through neuroglancer's own volume server (float64)
        if not shows_objects(vol):
            continue
        at = object_voxel(vol)
        if at is None:
            continue
        here = micrometres(vol.unit)
        there = micrometres(first.unit)
        out = []
        for k in range(3):  # the voxel's middle, in physical units, then in the first's voxels
            phys = ((at[k] + 0.5) * vol.voxel_size[k] + _offset(vol, k)) * here
            out.append((phys / there - _offset(first, k)) / first.voxel_size[k])
        return out
    return None


def _offset(vol: Volume, k: int) -> float:
    t = getattr(vol, "translation", None)
    return float(t[k]) if t is not None and len(t) == 3 else 0.0


def apply(viewer: Any, layers: list[Layer], neuroglancer: Any, layout: str,
          position: Sequence[float] | None, size: Sequence[int],
          segments: Sequence[int] = ()) -> None:
    """Put the layers into the viewer, set the layout and look at the middle of the first
    volume (or ``position``, z, y, x in its voxels), zoomed to fit."""
    first = layers[0].volume
    spatial = [i for i, a in enumerate(first.axes) if a in ("z", "y", "x")]
    extent = [first.shape[i] for i in spatial]          # z, y, x
    voxel_m = [v * micrometres(first.unit) * 1e-6 for v in first.voxel_size]
    with viewer.txn() as s:
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="m",
                                                    scales=voxel_m[::-1])
        shown: set[str] = set()
        for layer in layers:
            if layer.kind == "segmentation":
                s.layers[layer.name] = neuroglancer.SegmentationLayer(source=layer.sources)
                if segments:
                    s.layers[layer.name].segments = {int(i) for i in segments}
            else:
                rng = layer.shader_range or (0.0, 1.0)
                c = layer.volume.shape[0] if layer.volume.ndim == 4 else 1
                s.layers[layer.name] = neuroglancer.ImageLayer(source=layer.sources,
                                                               shader=shader(*rng, c))
            # one of each kind shown; the others would cover it: listed, a click away
            s.layers[layer.name].visible = layer.kind not in shown
            shown.add(layer.kind)
        s.layout = layout
        at = position if position is not None else [n / 2 for n in extent]
        s.position = [float(at[2]), float(at[1]), float(at[0])]
        panel = min(size) / (2 if layout == "4panel" else 1)
        s.cross_section_scale = max(extent[1], extent[2]) / (0.9 * panel)
        s.projection_scale = 1.2 * max(extent)
        if layout == "3d":  # from above and to the side: depth shows
            s.projection_orientation = [0.24, -0.28, -0.07, 0.93]


# -- the command ------------------------------------------------------------------------------
def view(paths: Sequence[str | os.PathLike], *, port: int = 0, bind: str = "127.0.0.1",
         layout: str = "4panel", position: Any = None,
         screenshot: str | os.PathLike | None = None, size: Sequence[int] = (1280, 960),
         open_browser: bool = False, segments: Sequence[int] = (),
         echo: Callable[[str], None] = print, wait: bool = True) -> Any:
    """Show ``paths`` (volumes, objects tables, mesh or skeleton folders, or a folder of them) in
    neuroglancer and return the viewer; ``wait``: serve until Ctrl-C, then stop.

    With ``screenshot``, a headless Chromium loads the viewer, waits until every layer has
    loaded, writes a PNG of ``size`` and stops.
    """
    neuroglancer = require_neuroglancer()
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not paths:
        raise InvalidArgumentError("view needs at least one volume")
    pos: Sequence[float] | None = None
    if position is not None:
        from ._normalize import parse_tuple
        pos = parse_tuple(position, "position", 3, kind=float, positive=False)
    if screenshot is not None:
        shot = Path(screenshot)
        if shot.suffix.lower() != ".png":
            raise InvalidArgumentError(f"--screenshot {os.fspath(screenshot)!r} must end in .png")
        if not shot.parent.is_dir():
            raise InvalidArgumentError(f"the folder of --screenshot {os.fspath(screenshot)!r} "
                                       "does not exist")
        chromium()
    check_bind(bind)
    found = gather(paths)
    server = DataServer(bind, found.roots)
    if bind not in LOCAL:
        echo(f"note: serving on {bind} as {server.host}: anyone who can reach this machine can "
             "read these volumes")
    neuroglancer.set_server_bind_address(bind_address=bind, bind_port=int(port))
    try:
        viewer = neuroglancer.Viewer()
        ours = neuroglancer.server.global_server  # its own URL would name 0.0.0.0 or ::1 bare
        ours.server_url = f"http://{url_host(server.host)}:{ours.port}"
        layers = make_layers(found, server, neuroglancer)
        for note in found.notes + [layer.note for layer in layers if layer.note]:
            echo(f"note: {note}")
        if layout == "3d" and not segments:
            segments = largest(layers)
        if pos is None:
            pos = where_objects(layers)
        apply(viewer, layers, neuroglancer, layout, pos, size, segments)
        if screenshot is not None:
            take_screenshot(viewer, Path(screenshot), size)
            echo(f"wrote {screenshot}")
            return viewer
        try:  # from the moment the address is out, Ctrl-C ends the serving, not a traceback
            echo(f"neuroglancer: {viewer}")
            if open_browser:
                import webbrowser
                if not webbrowser.open(str(viewer)):
                    echo("no browser to open here: open the address above")
            if wait:
                echo("serving; Ctrl-C ends it")
                while True:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            if not wait:
                raise
            echo("stopped")
        return viewer
    finally:
        if screenshot is not None or wait:
            server.close()
            neuroglancer.stop()


def chromium() -> str:
    """The Chromium to take screenshots with."""
    for p in CHROMIUM:
        if os.path.exists(p):
            return p
    raise BackendUnavailableError("a screenshot needs Chromium and its driver: apt-get install "
                                  "chromium chromium-driver (Debian)")


def browser(viewer: Any, size: Sequence[int]) -> Any:
    """A headless Chromium (selenium, through neuroglancer's webdriver) showing ``viewer``."""
    import logging

    import neuroglancer.webdriver
    logging.getLogger("selenium").setLevel(logging.ERROR)  # it asks the network for drivers
    return neuroglancer.webdriver.Webdriver(viewer, headless=True, browser="chrome",
                                            browser_binary_path=chromium(), print_logs=False,
                                            window_size=tuple(size),
                                            extra_command_line_args=list(SOFTWARE_GL))


def capture(viewer: Any, size: Sequence[int], timeout: float = 180.0) -> bytes:
    """A PNG of the viewer once every visible chunk has loaded (the client waits for them)."""
    with viewer.config_state.txn() as s:
        s.show_ui_controls = False
        s.show_panel_borders = False
        s.viewer_size = list(size)
    for _ in range(5):  # the first may come before the canvas took its new size
        done = threading.Event()
        reply: list[Any] = []

        def handler(r: Any, reply: list[Any] = reply, done: threading.Event = done) -> None:
            reply.append(r)
            done.set()

        viewer.async_screenshot(handler)
        if not done.wait(timeout):
            raise EmarrayError(f"the viewer did not finish drawing within {timeout:.0f} s")
        shot = reply[0].screenshot
        if [shot.width, shot.height] == list(size):
            break
    return shot.image


def take_screenshot(viewer: Any, path: Path, size: Sequence[int]) -> None:
    """Load the viewer in headless Chromium and write its screenshot once the layers loaded."""
    with browser(viewer, size) as wd:
        wd.sync()
        from .engine.checkpoint import atomic_write
        atomic_write(path, capture(viewer, size))
