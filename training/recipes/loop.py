"""The one training loop of every recipe (gidm, gfdm, policy): ``start`` a run (out dir, device,
rank, seed) before building the model, then ``fit`` it: optimizer and schedule, resume from the
latest checkpoint, the steps (batch, forward under autocast, optimizer step, metrics row,
checkpoint) and the summary. A recipe adds only what is its model's: building it, its forward
step (batch -> output dict with ``loss``), and hooks (parameter groups, a step's side effects,
summary entries). None of this knows which model it trains.

Data: ``batches`` is an iterable of batches or a callable ``make_batches(start_step)``. On resume
at step s the callable is called with s and must yield the batches of steps s+1...; a plain
iterable is assumed to restart from the beginning, and its first s batches are skipped
(deterministic only if it yields the same batches again, e.g. a seeded loader).

Resume: if ``out_dir/checkpoints`` holds a checkpoint, weights, optimizer, scheduler, step and RNG
states are restored from the latest, so a run killed and restarted continues the same loss curve.

Under torchrun (a process group initialised, see ``training.distributed``) every rank runs the
recipe with its own data shard; gradients are averaged each step and rank 0 alone writes logs and
checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, restore_rng, save_checkpoint
from ..distributed import barrier, broadcast_module, sync_gradients, world
from .configuration import TrainConfig
from .logs import log_row, open_logs, run_summary

Batches = Iterable[dict] | Callable[[int], Iterable[dict]]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr after ``step`` optimizer steps: linear warmup, then cosine decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """Latest complete checkpoint ``out_dir/checkpoints/step-NNNNNNNN`` (complete by
    construction: save_checkpoint renames a folder into place only when fully written)."""
    found = sorted(Path(out_dir, "checkpoints").glob("step-*"))
    return found[-1] if found else None


def resume(out: Path, model: torch.nn.Module, model_cfg: Any, optimizer, scheduler, **load_kwargs: Any) -> tuple[int, str | None]:
    """Restore weights, optimizer, schedule and RNG from ``out``'s latest checkpoint, if any;
    returns (its step, its path) or (0, None). A checkpoint of another model config is refused
    (``load_kwargs`` go to ``load_checkpoint``, e.g. an external feature extractor)."""
    ckpt = last_checkpoint(out)
    if ckpt is None:
        return 0, None
    loaded, saved_cfg, state = load_checkpoint(ckpt, **load_kwargs)
    if saved_cfg != model_cfg:
        raise ValueError(f"{ckpt}: saved model config differs from the one given; use a new out_dir")
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return state["step"], str(ckpt)


def save_step(out: Path, step: int, model, model_cfg: Any, optimizer, scheduler, extra: dict, main: bool = True) -> Path:
    """Checkpoint ``out/checkpoints/step-NNNNNNNN`` (written by the main rank only); no rank runs
    ahead of a checkpoint it may need to resume from. Returns its path."""
    path = out / "checkpoints" / f"step-{step:08d}"
    if main:
        save_checkpoint(path, model, model_cfg, optimizer, scheduler, step=step, extra=extra)
    barrier()
    return path


def batch_iterator(batches: Batches, start_step: int) -> Iterator[dict]:
    """The batches of steps ``start_step + 1`` on: ``batches(start_step)`` for a callable; a plain
    iterable is assumed to restart from the beginning, so its first ``start_step`` are skipped."""
    return iter(batches(start_step)) if callable(batches) else itertools.islice(iter(batches), start_step, None)


def next_batch(stream: Iterator[dict], step: int, steps: int) -> dict:
    try:
        return next(stream)
    except StopIteration:
        raise ValueError(f"batches ran out at step {step} of {steps}") from None


def step_bar(cfg: TrainConfig, start_step: int, desc: str, show: bool = True) -> tqdm:
    """The steps ``start_step + 1 .. cfg.steps`` under a progress bar (shown if ``cfg.progress`` and ``show``)."""
    return tqdm(range(start_step + 1, cfg.steps + 1), initial=start_step, total=cfg.steps, disable=not (cfg.progress and show), desc=desc)


def pick_device(cfg: TrainConfig) -> torch.device:
    """``cfg.device``, with ``auto`` = cuda when available."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scalars(out: dict[str, Any]) -> dict[str, float]:
    """The 0-d tensors of a model's output dict as floats (the metrics row)."""
    return {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, scheduler, grad_clip: float) -> torch.Tensor:
    """One step on ``loss``: backward, gradients averaged over ranks (a no-op on one process),
    global norm clipped to ``grad_clip`` (0: not clipped, the norm is still measured), optimizer
    and schedule stepped. ``params``: the parameters that train now (a list: a staged unfreeze
    changes it between steps). Returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sync_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    return grad_norm


def finite_loss(loss: torch.Tensor, step: int) -> float:
    """``loss`` as a float; a NaN or infinite loss stops the run naming the step."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {step}")
    return value


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that train now (a staged unfreeze changes them between steps)."""
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class Run:
    """Where and how a run trains: fixed by ``start`` before the model is built, used by ``fit``
    and by a recipe's step and hooks."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    world_size: int
    main: bool  # rank 0: writes logs, grids and checkpoints
    writer: SummaryWriter | None = None  # TensorBoard on out/tb: opened by ``fit`` on the main rank

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast when ``cfg.bf16`` on cuda, else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16 and self.device.type == "cuda")

    def due(self, step: int, every: int) -> bool:
        """On the main rank: ``step`` is a multiple of ``every`` or the last."""
        return self.main and (step % every == 0 or step == self.cfg.steps)

    def logs(self, step: int) -> bool:
        """``step``'s metrics row is written (main rank: step 1, every ``log_every``, the last)."""
        return (self.main and step == 1) or self.due(step, self.cfg.log_every)

    def to_device(self, batch: dict[str, Any], keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors of ``batch`` under ``keys`` on the run's device (absent ones left out)."""
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys if torch.is_tensor(batch.get(k))}


def start(cfg: TrainConfig) -> Run:
    """Create ``cfg.out_dir``, pick the device (this rank's GPU under torchrun) and seed every RNG:
    call it before building the model, so its initial weights follow ``cfg.seed``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg)
    rank, world_size = world()
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    seed_all(cfg.seed)
    return Run(cfg, out, device, world_size, rank == 0)


def fit(
    run: Run,
    model: torch.nn.Module,
    model_cfg: Any,
    batches: Batches,
    forward: Callable[[dict, int], dict[str, Any]],
    *,
    desc: str,
    extra: dict | None = None,
    param_groups: list[dict] | None = None,
    load_kwargs: dict[str, Any] | None = None,
    on_start: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    postfix: dict[str, str] | None = None,
    report: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) ``model`` for ``run.cfg.steps`` optimizer steps; returns
    ``run_summary`` (steps run, start step, per-step losses of this call, first/last loss,
    seconds per step, last checkpoint path), then ``report()``'s entries, then ``model``.

    ``forward(batch, step)``: the model's output dict for one batch (a 0-d ``loss`` and 0-d
    metrics, logged on ``run.logs(step)``), called under ``run.autocast()``; it moves the batch to
    ``run.device``. ``step`` counts optimizer steps from 1.
    ``extra``: JSON facts saved in every checkpoint beside the train config and world size.
    ``param_groups``: the optimizer's groups (default: the trainable parameters at ``run.cfg.lr``).
    ``load_kwargs``: for ``load_checkpoint`` on resume (e.g. an external feature extractor).
    ``on_start(start_step)``: after resume, before the first step (e.g. a staged unfreeze).
    ``after_step(step)``: after the optimizer step and the metrics row, before the
    checkpoint (e.g. a grid, a buffer broadcast).
    ``postfix``: progress bar label -> metric shown beside the loss.
    ``report()``: more summary entries, asked after the last step."""
    cfg = run.cfg
    model.to(run.device)
    # every parameter that may ever train can be in the optimizer: frozen ones get no grad,
    # which AdamW skips, so a staged unfreeze needs no second optimizer
    optimizer = torch.optim.AdamW(param_groups or trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    start_step, resumed_from = resume(run.out, model, model_cfg, optimizer, scheduler, **(load_kwargs or {}))
    if on_start is not None:
        on_start(start_step)
    broadcast_module(model)  # identical replicas from the first step (no-op on one process)
    # the configs travel in each checkpoint (config.json, state.json): no separate file
    metrics_path, run.writer = open_logs(run.out, start_step) if run.main else (Path(os.devnull), None)
    stream = batch_iterator(batches, start_step)

    losses: list[float] = []
    last_ckpt = resumed_from
    model.train()
    t0 = time.perf_counter()
    bar = step_bar(cfg, start_step, desc, show=run.main)
    with metrics_path.open("a") as metrics:
        for step in bar:
            batch = next_batch(stream, step, cfg.steps)
            with run.autocast():
                out = forward(batch, step)
            grad_norm = optimizer_step(out["loss"], trainable(model), optimizer, scheduler, cfg.grad_clip)
            loss = finite_loss(out["loss"], step)
            losses.append(loss)
            if run.logs(step):
                row = {"step": step, **scalars(out), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, run.writer)
                bar.set_postfix(loss=f"{loss:.4g}", **{label: f"{row.get(key, 0):.3g}" for label, key in (postfix or {}).items()})
            if after_step is not None:
                after_step(step)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                saved = {**(extra or {}), "train": dataclasses.asdict(cfg), "world_size": run.world_size}
                last_ckpt = save_step(run.out, step, model, model_cfg, optimizer, scheduler, saved, run.main)
    if run.writer is not None:
        run.writer.close()
    more = report() if report is not None else {}
    return run_summary(start_step, resumed_from, losses, time.perf_counter() - t0, last_ckpt, **more, model=model)
