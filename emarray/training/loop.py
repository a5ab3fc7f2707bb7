"""``emarray train``: the training loop over patches sampled from zarr.

Everything is checked before the first step (config, volumes, shapes, patch sizes, the run
folder). Each step takes the batch of ``(seed, step)`` from the sampler (made ahead by
background threads), so a resumed run continues exactly the run it resumes. Every
``validation.every`` steps the current weights are written as a model file and ``predict`` +
the one-pass ``sweep`` score the validation region: the best F1 and IoU over the thresholds,
and at which threshold. Early stopping follows ``validation.metric`` with ``patience``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, TrainingDivergedError
from ..volume import Volume
from .augment import AugmentConfig
from .config import load_config
from .losses import LossConfig, loss
from .report import progress_bar, say, tensorboard, why_stopped, write_logs
from .folder import STATE, RunFolder, check_same_run
from .sampler import Pair, PatchSampler, Prefetcher, Target
from .validate import Held, check_pair, evaluate, held_out, open_volumes, validation_set

log = logging.getLogger("emarray")


@dataclass
class TrainResult:
    """What a run did: its folder, the steps done, the best validation and why it stopped."""

    out: str
    steps: int
    best: dict[str, Any] | None
    stopped: str
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> str:
        return os.path.join(self.out, "model.pt")


# -- volumes and the model, checked ----------------------------------------------------------------
def _anisotropic(setting: Any, raw: Volume) -> bool:
    if setting != "auto":
        return bool(setting)
    vz, vy, vx = raw.voxel_size[-3:]
    return vz > 1.5 * max(vy, vx)


def _scale(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0


def _model(cfg: dict[str, Any], anisotropic: bool, raw: Volume) -> tuple[Any, Any, dict, Any]:
    """(network, UNetConfig, normalize, default patch) from ``model.file`` or a new net."""
    from ..models import build_model, default_patch, load_model, unet_config
    from ..models.modelfile import check_normalize
    m = cfg["model"]
    if m["file"]:
        mf = load_model(m["file"])
        if mf.torchscript:
            raise InvalidArgumentError(f"model.file {m['file']} is a TorchScript archive; train "
                                       "from an emarray model file")
        if mf.config.activation == "none":
            raise InvalidArgumentError("model.file has no sigmoid or softmax; train one that has")
        return mf.module, mf.config, mf.normalize, mf.patch
    aniso = anisotropic if m["anisotropic"] is None else bool(m["anisotropic"])
    net = unet_config(depth=m["depth"], filters=m["filters"], padding=m["padding"],
                      anisotropic=aniso, pool=m["pool"], channels_out=m["channels_out"],
                      norm=m["norm"], residual=m["residual"], dropout=m["dropout"],
                      activation=m["activation"], name="model.pool")
    if cfg["loss"]["kind"] == "affinities":
        if net.activation != "sigmoid" or net.out_channels != 3:
            raise InvalidArgumentError(
                "loss.kind affinities trains 3 sigmoid channels (the z, y and x neighbour "
                f"affinities): set model.channels_out: 3, got {net.out_channels} "
                f"({net.activation})")
    elif net.activation == "sigmoid" and net.out_channels != 1:
        raise InvalidArgumentError("model.channels_out: a sigmoid net trains one foreground "
                                   f"channel, got {net.out_channels}; use softmax for several classes")
    if net.activation == "softmax" and net.out_channels < 2:
        raise InvalidArgumentError("model.channels_out: a softmax net needs at least 2 classes")
    norm = m["normalize"] if m["normalize"] is not None else f"0,{_scale(raw.dtype):g}"
    return build_model(net, cfg["seed"]), net, check_normalize(norm), default_patch(net)


def _patch(cfg: dict[str, Any], net: Any, default: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from .._normalize import parse_tuple
    patch = tuple(parse_tuple(cfg["patch"], "patch", 3)) if cfg["patch"] is not None \
        else tuple(default)
    smallest = tuple(net.admissible(a, 1, 4096)[0] for a in range(3))
    if any(p < s for p, s in zip(patch, smallest)):
        raise InvalidArgumentError(
            f"patch {','.join(map(str, patch))} is smaller than the smallest input this net takes "
            f"({','.join(map(str, smallest))})")
    return patch, net.check_patch(patch)


# -- the loop -----------------------------------------------------------------------------------
def _lr_lambda(sched: dict[str, Any], steps: int) -> Any:
    warm = sched["warmup"]

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if sched["kind"] == "cosine":
            span = max(1, steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))
        if sched["kind"] == "step":
            return float(sched["gamma"]) ** ((step - warm) // sched["step_every"])
        return 1.0
    return f


def _optimizer(torch: Any, params: Any, o: dict[str, Any]) -> Any:
    if o["kind"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"])
    cls = torch.optim.AdamW if o["kind"] == "adamw" else torch.optim.Adam
    return cls(params, lr=o["lr"], weight_decay=o["weight_decay"])


def _dropout_seeds(seed: int, step: int, n: int) -> list[int]:
    ss = np.random.SeedSequence([seed, step, 7])
    return [int(s >> 1) for s in ss.generate_state(n, np.uint64)]


def resolve_config(config: str | os.PathLike | dict[str, Any], *,
                   out: str | os.PathLike | None = None, steps: int | None = None,
                   sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole checked config with ``--set`` changes, ``out`` and ``steps`` applied."""
    # --out is the user's path (from the working folder), not the config's
    extra = tuple(sets) + ((f"out={os.path.abspath(os.fspath(out))}",) if out is not None else ()) \
        + ((f"steps={steps}",) if steps is not None else ())
    return load_config(config, extra)


def train(config: str | os.PathLike | dict[str, Any], *, out: str | os.PathLike | None = None,
          steps: int | None = None, resume: bool = False, overwrite: bool = False,
          sets: tuple[str, ...] = (), progress: bool = False) -> TrainResult:
    """Train the zoo's 3D U-Net on patches sampled from zarr volumes; see :mod:`emarray.training`.

    Parameters
    ----------
    config : path or dict
        The training config (YAML file or the same as a dict); see the README's "Training".
    out, steps :
        Override the config's ``out`` and ``steps``.
    resume : bool
        Continue the run in ``out`` from its last checkpoint (only ``steps`` may change).
    overwrite : bool
        Replace an earlier run in ``out`` (kept aside until the new one's first checkpoint).
    sets : tuple of "key=value"
        Config changes, as ``emarray train --set sampling.mode=balanced``.

    Returns
    -------
    TrainResult
    """
    from ..extras import require_all
    from ..models import require_torch, save_model
    require_all(("torch", "pandas", "matplotlib"), "emarray train", extra="train")  # its report
    torch = require_torch()
    cfg = resolve_config(config, out=out, steps=steps, sets=sets)
    d = cfg["data"]
    raws, labs = open_volumes(d["raw"]), open_volumes(d["labels"])
    masks: list[Volume | None] = list(open_volumes(d["mask"])) if d["mask"] else \
        [None] * len(raws)
    for r, lab, m in zip(raws, labs, masks):
        check_pair(r, lab, m)
    aniso = _anisotropic(d["anisotropic"], raws[0])
    module, net, normalize, default = _model(cfg, aniso, raws[0])
    patch, output = _patch(cfg, net, default)
    softmax = net.activation == "softmax"
    target = Target(classes=net.out_channels if softmax else 2,
                    foreground=tuple(d["foreground"]) if d["foreground"] else None,
                    ignore=d["ignore_label"], binary=not softmax,
                    affinities=cfg["loss"]["kind"] == "affinities")
    if cfg["loss"]["class_weights"] and len(cfg["loss"]["class_weights"]) != target.classes:
        raise InvalidArgumentError(f"loss.class_weights: {target.classes} weights (one per class), "
                                   f"got {len(cfg['loss']['class_weights'])}")
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device cuda: PyTorch sees no CUDA device here")
    held = held_out(cfg, raws, labs, masks)
    threads = cfg["threads"] or os.cpu_count() or 1
    # the sampler's index pass also checks the labels (classes, foreground, mask) before work
    pairs = [Pair(r, lab, m, held.region if held is not None and i == 0 else None)
             for i, (r, lab, m) in enumerate(zip(raws, labs, masks))]
    s = cfg["sampling"]
    per_region = s["patches_per_region"]
    if per_region == "auto":   # several patches per region once the chunks outgrow the cache
        decoded = sum(v.nbytes for v in [*raws, *labs, *masks] if v is not None)
        per_region = 32 if decoded > s["cache_mb"] << 20 else 0
    sampler = PatchSampler(pairs, patch, output, target=target, patches_per_region=per_region,
                           region=s["region"],
                           augment=AugmentConfig.from_config(cfg["augment"], aniso),
                           mode=s["mode"], foreground_fraction=s["foreground_fraction"],
                           cache_bytes=s["cache_mb"] << 20, seed=cfg["seed"],
                           scale=_scale(raws[0].dtype),
                           normalize=(normalize["mean"], normalize["std"]), threads=threads)
    inputs = [*raws, *labs, *(m for m in masks if m is not None)] + \
        ([held.raw, held.labels] if held is not None and held.region is None else [])
    folder = RunFolder(cfg["out"], inputs, resume=resume, overwrite=overwrite)
    folder.open()
    try:
        return _train(Job(cfg, folder, sampler, held, module, net, normalize, patch, target,
                          softmax, device, threads), torch, save_model, progress)
    finally:
        folder.close()


@dataclass
class Job:
    """Everything checked before the run folder is touched."""

    cfg: dict[str, Any]
    folder: RunFolder
    sampler: PatchSampler
    held: Held | None
    module: Any
    net: Any
    normalize: dict[str, float]
    patch: tuple[int, ...]
    target: Target
    softmax: bool
    device: str
    threads: int


def _train(job: Job, torch: Any, save_model: Any, progress: bool) -> TrainResult:
    import yaml
    cfg, folder, sampler, net, target = job.cfg, job.folder, job.sampler, job.net, job.target
    normalize, patch, softmax, device, threads = (job.normalize, job.patch, job.softmax,
                                                  job.device, job.threads)
    run = folder.path
    steps = cfg["steps"]
    torch.set_num_threads(threads)
    saved = None
    if folder.resume:
        saved = torch.load(run / STATE, map_location="cpu", weights_only=True)
        check_same_run(saved["config"], cfg, folder.shown)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    val = validation_set(job.held, run, target, softmax) if job.held is not None else None
    s = cfg["sampling"]
    # channels-last puts 3-D convolutions on oneDNN/cuDNN's fast kernels (x1.8 per CPU step)
    module = job.module.to(device).to(memory_format=torch.channels_last_3d).train()
    opt = _optimizer(torch, module.parameters(), cfg["optimizer"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg["schedule"], steps))
    lcfg = LossConfig(cfg["loss"]["kind"], tuple(cfg["loss"]["class_weights"] or ()) or None,
                      cfg["loss"]["ohem"], cfg["loss"]["ohem_min"])
    v = cfg["validation"]
    state: dict[str, Any] = {"step": 0, "history": [], "evaluations": [], "best": None, "bad": 0,
                             "stopped": "", "elapsed": 0.0}
    if saved is not None:
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["schedule"])
        state.update({k: saved[k] for k in state})
        say(f"{folder.shown}: resuming at step {state['step']} of {steps}", progress)
    bf16 = device == "cuda" and cfg["precision"] in ("auto", "bfloat16") or \
        cfg["precision"] == "bfloat16"
    tb = tensorboard(run)
    meta = {"trained": {"config": os.fspath(run / "config.yaml")}}
    from ..models.unet import mc_seeds

    def save_models(step: int, name: str = "model.pt") -> str:
        info = {**meta, "trained": {**meta["trained"], "steps": step}}
        return save_model(run / name, module, net, normalize=normalize, patch=patch, meta=info)

    def checkpoint(step: int) -> None:
        state["step"] = step
        payload = {"config": cfg, "model": module.state_dict(), "optimizer": opt.state_dict(),
                   "schedule": sched.state_dict(), **{k: state[k] for k in state if k != "step"},
                   "step": step, "unlogged_loss": (run_loss, n_loss)}
        tmp = run / f".{STATE}.tmp{os.getpid()}"
        torch.save(payload, tmp)
        os.replace(tmp, run / STATE)
        folder.checkpointed()

    first = state["step"]
    if first >= steps or state["stopped"]:
        say(f"{folder.shown}: nothing to do: {why_stopped(state)}", progress)
        write_logs(run, state, cfg)
        return _result(run, state)
    feed = Prefetcher(sampler, cfg["batch"], first, workers=s["workers"])
    bar = progress_bar(progress, first, steps)
    # the losses since the last logged row (a checkpoint between two rows keeps them)
    run_loss, n_loss = (saved or {}).get("unlogged_loss", (0.0, 0))
    t0 = time.perf_counter() - state["elapsed"]
    try:
        for step in range(first, steps):
            x, y = next(feed)
            xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last_3d)
            yt = torch.from_numpy(y.astype(np.int64)).to(device)
            amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
            drop = mc_seeds(_dropout_seeds(cfg["seed"], step, x.shape[0])) if net.dropout > 0 \
                else contextlib.nullcontext()
            with amp, drop:
                value = loss(module.logits(xt), yt, lcfg, softmax, target.classes)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            lv = float(value.detach())
            if not math.isfinite(lv):
                raise TrainingDivergedError(
                    f"the loss became {lv} at step {step + 1} (optimizer.lr is "
                    f"{cfg['optimizer']['lr']:g}): lower optimizer.lr or check the data; "
                    f"--resume continues from the last checkpoint")
            run_loss, n_loss = run_loss + lv, n_loss + 1
            done = step + 1
            evaluate_now = val is not None and (done % v["every"] == 0 or done == steps)
            if done % cfg["log_every"] == 0 or evaluate_now or done == steps:
                row = {"step": done, "loss": run_loss / n_loss, "lr": opt.param_groups[0]["lr"],
                       "elapsed_s": round(time.perf_counter() - t0, 3)}
                state["history"].append(row)
                if tb is not None:
                    tb.add_scalar("loss", row["loss"], done)
                run_loss, n_loss = 0.0, 0
            if evaluate_now:
                assert val is not None
                module.eval()
                path = save_models(done)
                score = evaluate(path, val[0], val[1], run, v["thresholds"], device, threads,
                                 softmax)
                torch.set_num_threads(threads)
                module.train()
                score["step"] = done
                state["evaluations"].append(score)
                if tb is not None:
                    for m in ("f1", "iou"):
                        tb.add_scalar(f"validation/{m}", score[m], done)
                stop = _early_stopping(state, score, v, done)
                if state["best"] is not None and state["best"]["step"] == done:
                    save_models(done, "best.pt")
                log.info("step %d: validation f1 %.4f (t=%.2f), iou %.4f", done, score["f1"],
                         score["threshold_f1"], score["iou"])
                if bar is not None:
                    bar.set_postfix(loss=f"{state['history'][-1]['loss']:.4f}",
                                    f1=f"{score['f1']:.3f}")
                if stop:
                    state["stopped"] = stop
                    say(stop, progress)
            elif bar is not None and state["history"] and state["history"][-1]["step"] == done:
                bar.set_postfix(loss=f"{state['history'][-1]['loss']:.4f}")
            if bar is not None:
                bar.update(1)
            state["elapsed"] = time.perf_counter() - t0
            if state["stopped"] or done % cfg["checkpoint_every"] == 0 or done == steps \
                    or evaluate_now:
                if not evaluate_now:
                    module.eval()
                    save_models(done)
                    module.train()
                checkpoint(done)
                write_logs(run, state, cfg)
            if state["stopped"]:
                break
    finally:
        feed.close()
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    return _result(run, state)   # the last step (or the stop) was checkpointed in the loop


def _early_stopping(state: dict[str, Any], score: dict[str, Any], v: dict[str, Any],
                    step: int) -> str:
    metric = v["metric"]
    best = state["best"]
    if best is None or score[metric] > best[metric] + v["min_delta"]:
        state["best"] = {**score, "metric": metric}
        state["bad"] = 0
        return ""
    state["bad"] += 1
    if v["patience"] and state["bad"] >= v["patience"]:
        return (f"early stopping at step {step}: validation {metric} has not improved by more than "
                f"{v['min_delta']:g} for {state['bad']} evaluations (best {best[metric]:.4f} at step "
                f"{best['step']}, kept in best.pt)")
    return ""


def _result(run: Path, state: dict[str, Any]) -> TrainResult:
    return TrainResult(os.fspath(run), state["step"], state["best"], why_stopped(state),
                       state["history"], state["evaluations"])
