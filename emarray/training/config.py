"""The training config: a YAML file (or a dict), checked whole before any work.

Every section and key is known: an unknown one, a wrong type or a value out of range fails with
one line naming it (``sampling.mode: must be one of uniform, foreground, balanced, got
'foregound'``). Relative paths are taken from the config file's folder. See the README's
"Training" section for a full example; :data:`DEFAULTS` holds every key with its default.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .._yaml import read_mapping, set_value
from ..errors import InvalidArgumentError

DEFAULTS: dict[str, Any] = {
    "out": None,                 # the run's folder (checkpoints, metrics, plot)
    "seed": 0,
    "steps": 1000,
    "batch": 2,
    "patch": None,               # z,y,x network input (default: the model's default patch)
    "threads": None,             # PyTorch threads (default: every core)
    "device": "auto",            # auto | cpu | cuda
    "precision": "auto",         # auto (bfloat16 autocast on CUDA) | float32 | bfloat16
    "checkpoint_every": 100,
    "log_every": 10,
    "data": {
        "raw": None,             # a volume or a list of volumes
        "labels": None,          # as many, of the same shapes
        "mask": None,            # optional: annotated regions (nonzero), as many
        "foreground": None,      # label values that are foreground (default: every label > 0)
        "ignore_label": None,    # a label value that counts nowhere
        "anisotropic": "auto",   # auto: z voxel size > 1.5 x the y,x size
    },
    "model": {
        "file": None,            # start from a model file's weights (and architecture), or:
        "depth": 3, "filters": 16, "padding": "same", "pool": None, "anisotropic": None,
        "norm": "batch", "residual": False, "dropout": 0.0, "activation": "sigmoid",
        "channels_out": 1, "normalize": None,   # MEAN,STD (default: the raw's dtype range)
    },
    "sampling": {"mode": "foreground", "foreground_fraction": 0.5, "cache_mb": 1024,
                 "workers": 1,
                 "patches_per_region": "auto",  # auto: 32 when the volumes outgrow the cache
                 "region": None},               # z,y,x voxels (default: 2x the net's output)
    "augment": {
        "flip": True, "transpose": True, "rotate90": True,
        "elastic": 0.5, "elastic_magnitude": [2.0, 4.0, 4.0], "elastic_spacing": [8, 32, 32],
        "contrast": 0.5, "contrast_range": [0.75, 1.25], "brightness": 0.1,
        "gamma": 0.3, "gamma_range": [0.75, 1.33], "noise": 0.3, "noise_std": 0.03,
        "blur": 0.2, "blur_sigma": [0.5, 1.5],
        "missing_section": 0.0, "misalignment": 0.0, "misalignment_shift": 8,
    },
    "loss": {"kind": "bce+dice", "class_weights": None, "ohem": None, "ohem_min": 1024},
    "optimizer": {"kind": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {"kind": "constant", "warmup": 0, "step_every": 1000, "gamma": 0.5},
    "validation": {
        "raw": None, "labels": None, "mask": None,   # a separate volume, or:
        "region": None,          # z0:z1,y0:y1,x0:x1 of the first training volume, held out
        "every": 100,            # steps between evaluations
        "thresholds": 100,
        "metric": "f1",          # f1 | iou: what best.pt and early stopping follow
        "patience": 0,           # evaluations without improvement before stopping (0: never)
        "min_delta": 0.0,
    },
}

CHOICES = {
    "device": ("auto", "cpu", "cuda"), "precision": ("auto", "float32", "bfloat16"),
    "sampling.mode": ("uniform", "foreground", "balanced"),
    "model.padding": ("same", "valid"), "model.norm": ("batch", "instance", "group", "none"),
    "model.activation": ("sigmoid", "softmax"), "loss.kind": ("bce", "dice", "bce+dice", "affinities"),
    "optimizer.kind": ("adam", "adamw", "sgd"), "schedule.kind": ("constant", "cosine", "step"),
    "validation.metric": ("f1", "iou"),
}
PATHS = ("data.raw", "data.labels", "data.mask", "model.file", "validation.raw",
         "validation.labels", "validation.mask", "out")
PROBABILITIES = ("elastic", "contrast", "gamma", "noise", "blur", "missing_section", "misalignment")


def _merge(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        name = f"{where}{key}"
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise InvalidArgumentError(f"unknown config key {name!r}; {where.rstrip('.') or 'the config'} "
                                       f"has: {known}")
        if isinstance(defaults[key], dict):
            if key == "augment" and value is False:
                value = {k: (False if isinstance(v, bool) else 0.0) for k, v in defaults[key].items()
                         if isinstance(v, bool) or k in PROBABILITIES}
            if not isinstance(value, dict):
                raise InvalidArgumentError(f"config {name!r} must be a section of keys, got {value!r}")
            out[key] = _merge(defaults[key], value, name + ".")
        else:
            out[key] = value
    return out


def load_config(config: str | os.PathLike | dict[str, Any], sets: tuple[str, ...] = ()
                ) -> dict[str, Any]:
    """The whole config, defaults filled in, paths absolute, every value checked.

    >>> cfg = load_config({"out": "/tmp/run", "data": {"raw": "/r.zarr", "labels": "/l.zarr"}},
    ...                   ("sampling.mode=balanced",))
    >>> cfg["sampling"]["mode"], cfg["data"]["raw"], cfg["loss"]["kind"]
    ('balanced', ['/r.zarr'], 'bce+dice')
    >>> load_config({"out": "/tmp/run", "data": {"raw": "/r.zarr", "labels": "/l.zarr"},
    ...              "sampling": {"mdoe": "uniform"}})
    Traceback (most recent call last):
    ...
    emarray.errors.InvalidArgumentError: unknown config key 'sampling.mdoe'; sampling has: ...
    """
    base = Path.cwd()
    if isinstance(config, dict):
        given = copy.deepcopy(config)
    else:
        path = Path(config)
        given = read_mapping(path, "training config")
        base = path.resolve().parent
    from .._yaml import split_assignment
    cwd = Path.cwd()
    for s in sets:
        keys, value = split_assignment(s)
        if ".".join(keys) in PATHS and value is not None:
            # a path typed on the command line is the user's, from the working folder
            s = f"{'.'.join(keys)}={_quoted(_absolute(value, cwd))}"
        set_value(given, s)
    cfg = _merge(DEFAULTS, given, "")
    for dotted in PATHS:
        sec, _, key = dotted.rpartition(".")
        d = cfg[sec] if sec else cfg
        d[key] = _absolute(d[key], base)
    _check(cfg)
    return cfg


def _quoted(value: Any) -> str:
    import json
    return json.dumps(value)  # YAML reads JSON: a path, or a list of paths


def _absolute(value: Any, base: Path) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_absolute(v, base) for v in value]
    s = os.fspath(value)
    return s if "://" in s or os.path.isabs(s) else os.fspath(base / s)


def _check(cfg: dict[str, Any]) -> None:
    from .._normalize import finite_number, whole_number
    for dotted, allowed in CHOICES.items():
        sec, _, key = dotted.rpartition(".")
        value = (cfg[sec] if sec else cfg)[key]
        if value not in allowed:
            raise InvalidArgumentError(f"{dotted}: must be one of {', '.join(allowed)}, got {value!r}")
    for key, low in (("steps", 1), ("batch", 1), ("checkpoint_every", 1), ("log_every", 1),
                     ("seed", 0)):
        cfg[key] = whole_number(cfg[key], key, low)
    for sec, key, low in (("validation", "every", 1), ("validation", "thresholds", 1),
                          ("validation", "patience", 0), ("sampling", "workers", 1),
                          ("sampling", "cache_mb", 1), ("schedule", "warmup", 0),
                          ("schedule", "step_every", 1), ("loss", "ohem_min", 0),
                          ("augment", "misalignment_shift", 0)):
        cfg[sec][key] = whole_number(cfg[sec][key], f"{sec}.{key}", low)
    ppr = cfg["sampling"]["patches_per_region"]
    if ppr != "auto":
        cfg["sampling"]["patches_per_region"] = whole_number(ppr, "sampling.patches_per_region", 0)
    if cfg["sampling"]["region"] is not None:
        from .._normalize import parse_tuple
        cfg["sampling"]["region"] = list(parse_tuple(cfg["sampling"]["region"], "sampling.region", 3))
    if cfg["threads"] is not None:
        cfg["threads"] = whole_number(cfg["threads"], "threads", 1)
    for key in PROBABILITIES:
        v = cfg["augment"][key]
        p = 0.0 if v is False else 1.0 if v is True else finite_number(v, f"augment.{key}")
        if not 0.0 <= p <= 1.0:
            raise InvalidArgumentError(f"augment.{key}: a probability in [0, 1], got {v!r}")
        cfg["augment"][key] = p
    for key in ("flip", "transpose", "rotate90"):
        if not isinstance(cfg["augment"][key], bool):
            raise InvalidArgumentError(f"augment.{key}: true or false, got {cfg['augment'][key]!r}")
    for sec, key in (("optimizer", "lr"), ("optimizer", "weight_decay"), ("optimizer", "momentum"),
                     ("schedule", "gamma"), ("sampling", "foreground_fraction"),
                     ("validation", "min_delta"), ("augment", "brightness"),
                     ("augment", "noise_std")):
        v = finite_number(cfg[sec][key], f"{sec}.{key}")
        if v < 0:
            raise InvalidArgumentError(f"{sec}.{key}: must be >= 0, got {cfg[sec][key]!r}")
        cfg[sec][key] = v
    if cfg["optimizer"]["lr"] <= 0:
        raise InvalidArgumentError(f"optimizer.lr: must be > 0, got {cfg['optimizer']['lr']!r}")
    if cfg["sampling"]["foreground_fraction"] > 1:
        raise InvalidArgumentError("sampling.foreground_fraction: must be in [0, 1], got "
                                   f"{cfg['sampling']['foreground_fraction']!r}")
    for key, n in (("elastic_magnitude", 3), ("elastic_spacing", 3), ("contrast_range", 2),
                   ("gamma_range", 2), ("blur_sigma", 2)):
        v = cfg["augment"][key]
        try:
            vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * n)]
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"augment.{key}: {n} numbers, got {v!r}") from None
        if len(vals) != n or any(x < 0 for x in vals) or (n == 2 and vals[0] > vals[1]):
            raise InvalidArgumentError(f"augment.{key}: {n} numbers >= 0"
                                       + (" (low, high)" if n == 2 else " (z,y,x)") + f", got {v!r}")
        cfg["augment"][key] = vals
    cw = cfg["loss"]["class_weights"]
    if cw is not None:
        if not isinstance(cw, (list, tuple)) or not cw:
            raise InvalidArgumentError(f"loss.class_weights: a list of numbers, one per class, got {cw!r}")
        cfg["loss"]["class_weights"] = [finite_number(w, "loss.class_weights") for w in cw]
        if any(w < 0 for w in cfg["loss"]["class_weights"]):
            raise InvalidArgumentError(f"loss.class_weights: must be >= 0, got {cw!r}")
    if cfg["loss"]["ohem"] is not None:
        o = finite_number(cfg["loss"]["ohem"], "loss.ohem")
        if o <= 0:
            raise InvalidArgumentError(f"loss.ohem: negatives kept per positive, > 0, got {o!r}")
        cfg["loss"]["ohem"] = o
    d = cfg["data"]
    if d["raw"] is None or d["labels"] is None:
        raise InvalidArgumentError("data.raw and data.labels are needed: the volumes to train on")
    for key in ("raw", "labels", "mask"):
        if d[key] is not None and not isinstance(d[key], list):
            d[key] = [d[key]]
    if len(d["raw"]) != len(d["labels"]) or (d["mask"] is not None and len(d["mask"]) != len(d["raw"])):
        raise InvalidArgumentError(
            f"data: {len(d['raw'])} raw volume(s) but {len(d['labels'])} label volume(s)"
            + (f" and {len(d['mask'])} mask(s)" if d["mask"] is not None else "")
            + "; give one of each per volume")
    if d["anisotropic"] not in ("auto", True, False):
        raise InvalidArgumentError(f"data.anisotropic: auto, true or false, got {d['anisotropic']!r}")
    if d["foreground"] is not None:
        fg = d["foreground"] if isinstance(d["foreground"], list) else [d["foreground"]]
        d["foreground"] = [whole_number(v, "data.foreground", 0) for v in fg]
    if d["ignore_label"] is not None:
        d["ignore_label"] = whole_number(d["ignore_label"], "data.ignore_label", 0)
    v = cfg["validation"]
    if v["region"] is not None and v["raw"] is not None:
        raise InvalidArgumentError("validation: give either region (held out of data.raw) or "
                                   "raw/labels (a separate volume), not both")
    if (v["raw"] is None) != (v["labels"] is None):
        raise InvalidArgumentError("validation: raw and labels go together")
    if cfg["out"] is None:
        raise InvalidArgumentError("out: the run's folder is needed (in the config or --out)")


def parse_region(text: Any, shape: tuple[int, ...], name: str) -> tuple[slice, ...]:
    """``"16:20,:,:"`` -> slices inside ``shape`` (Python slice syntax, no steps).

    >>> parse_region("16:20,:,-8:", (20, 64, 64), "validation.region")
    (slice(16, 20, None), slice(0, 64, None), slice(56, 64, None))
    """
    parts = str(text).split(",")
    if len(parts) != len(shape):
        raise InvalidArgumentError(f"{name}: {len(shape)} ranges z0:z1,y0:y1,x0:x1, got {text!r}")
    out = []
    for p, n in zip(parts, shape):
        bits = p.strip().split(":")
        try:
            if len(bits) != 2:
                raise ValueError
            lo = int(bits[0]) if bits[0].strip() else 0
            hi = int(bits[1]) if bits[1].strip() else n
        except ValueError:
            raise InvalidArgumentError(f"{name}: ranges look like 16:20 or :, got {p.strip()!r}") from None
        lo, hi = (lo + n if lo < 0 else lo), (hi + n if hi < 0 else hi)
        if not 0 <= lo < hi <= n:
            raise InvalidArgumentError(f"{name}: {p.strip()!r} is empty or outside 0:{n}")
        out.append(slice(lo, hi))
    return tuple(out)
