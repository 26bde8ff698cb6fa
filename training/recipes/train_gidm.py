"""Recipe: train a GIDM. Read top to bottom: config, setup (or resume), loop, checkpoint.

Data: ``batches`` is either an iterable of batches or a callable ``make_batches(start_step)``
returning one. A batch is a dict
    obs       float [B, C, H, W] in [0, 1]   o_t
    next_obs  float [B, C, H, W] in [0, 1]   o_t+k
    frames    float [B, 3, C, H, W]          o_t, o_t+k, o_t+2k: what configs with additive_weight > 0
                                             train on instead of obs/next_obs
    lang_emb  float [B, D]                   optional, for configs with lang_dim > 0
    actions   float [B, A]                   optional, true actions (probes only; not trained on)
On resume at step s the callable is called with s and must yield the batches of steps s+1...;
a plain iterable is assumed to restart from the beginning, and its first s batches are skipped
(deterministic only if it yields the same batches again, e.g. a seeded loader).

Resume: if ``out_dir/checkpoints`` holds a checkpoint, model, optimizer, scheduler, step and RNG
states are restored from the latest, so a run killed and restarted continues the same loss curve.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, restore_rng, save_checkpoint
from ..distributed import barrier, broadcast_module, sync_gradients, world
from ..gidm import GIDM, GIDMConfig
from .logs import log_row, open_logs, run_summary

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50  # linear warmup from 0, then cosine to min_lr_ratio * lr at ``steps``
    min_lr_ratio: float = 0.1
    batch_size: int = 32  # informational: the batches iterable decides the real size
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    seed: int = 0
    log_every: int = 10  # steps between TensorBoard / metrics.jsonl entries (step 1 always logs)
    ckpt_every: int = 500  # steps between checkpoints; the last step always checkpoints
    out_dir: str = "runs/gidm"
    device: str = "auto"  # auto = cuda if available
    bf16: bool = True  # bf16 autocast, on GPU only (CPU always runs fp32)
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        errors = []
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("lr", "weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append(f"min_lr_ratio={self.min_lr_ratio!r}: must be in [0, 1]")
        if self.device not in DEVICES:
            errors.append(f"device={self.device!r}: unknown; valid: {', '.join(DEVICES)}")
        if errors:
            raise ValueError("invalid TrainConfig:\n  " + "\n  ".join(errors))


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


def _scalars(out: dict[str, Any]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model_cfg: GIDMConfig,
    train_cfg: TrainConfig,
    batches: Iterable[dict] | Callable[[int], Iterable[dict]],
    feature_extractor: torch.nn.Module | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a GIDM; returns a summary: steps run, start step, per-step
    losses of this call, first/last loss, seconds per step, last checkpoint path. ``extra``
    (JSON-serialisable, e.g. ``{"data": {"gap_frames": 10, ...}}``) is saved in every checkpoint.

    Under torchrun (a process group initialised, see ``training.distributed``) every rank runs
    this with its own data shard; gradients are averaged each step and rank 0 alone writes logs
    and checkpoints."""
    # --- setup -------------------------------------------------------------------------------
    out = Path(train_cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        "cuda" if train_cfg.device == "auto" and torch.cuda.is_available() else "cpu" if train_cfg.device == "auto" else train_cfg.device
    )
    use_bf16 = train_cfg.bf16 and device.type == "cuda"
    rank, world_size = world()
    main = rank == 0
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    _seed_all(train_cfg.seed)
    model = GIDM(model_cfg, feature_extractor=feature_extractor).to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_cfg))

    start_step, resumed_from = 0, None
    ckpt = last_checkpoint(out)
    if ckpt is not None:
        kwargs = (
            {"feature_extractor": model.features.backbone}
            if model_cfg.feature_encoder == "external" and model_cfg.input_space == "features"
            else {}
        )
        loaded, saved_cfg, state = load_checkpoint(ckpt, **kwargs)
        if saved_cfg != model_cfg:
            raise ValueError(f"{ckpt}: saved model config differs from the one given; use a new out_dir")
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        start_step, resumed_from = state["step"], str(ckpt)
    broadcast_module(model)  # identical replicas from the first step (no-op on one process)
    writer = None
    metrics_path = None
    if main:
        (out / "train_config.json").write_text(
            json.dumps({"model": model_cfg.to_dict(), "train": dataclasses.asdict(train_cfg), "world_size": world_size}, indent=2)
        )
        metrics_path, writer = open_logs(out, start_step)

    if callable(batches):
        stream = iter(batches(start_step))
    else:
        stream = itertools.islice(iter(batches), start_step, None)

    # --- loop --------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt = ckpt
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(
        range(start_step + 1, train_cfg.steps + 1),
        initial=start_step,
        total=train_cfg.steps,
        disable=not (train_cfg.progress and main),
        desc="gidm",
    )
    with metrics_path.open("a") if main else open(os.devnull, "w") as metrics:
        for step in bar:  # ``step`` counts optimizer steps from 1
            try:
                batch = next(stream)
            except StopIteration:
                raise ValueError(f"batches ran out at step {step} of {train_cfg.steps}") from None
            lang = batch.get("lang_emb")
            lang = lang.to(device) if lang is not None else None
            log_now = main and (step == 1 or step % train_cfg.log_every == 0 or step == train_cfg.steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                # diagnostics (a second decoder pass with shuffled latents, code statistics) only
                # on the steps that log them
                if model_cfg.additive_weight > 0:  # windows o_t, o_t+k, o_t+2k (see forward_window)
                    if "frames" not in batch:
                        raise ValueError("model.additive_weight > 0 needs windows of 3 frames (ClipDataset(window=3))")
                    result = model.forward_window(batch["frames"].to(device, non_blocking=True), lang, diagnostics=log_now)
                else:
                    result = model(
                        batch["obs"].to(device, non_blocking=True),
                        batch["next_obs"].to(device, non_blocking=True),
                        lang,
                        diagnostics=log_now,
                    )
            optimizer.zero_grad(set_to_none=True)
            result["loss"].backward()
            sync_gradients(model.trainable_parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.trainable_parameters(), train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf")
            )
            optimizer.step()
            scheduler.step()
            if world_size > 1 and model_cfg.bottleneck in ("vq", "rvq", "nsvq"):
                broadcast_module(model.bottleneck)  # dead-code restarts drew from rank-local batches

            loss = float(result["loss"].detach())
            losses.append(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}")
            if log_now:
                row = {"step": step, **_scalars(result), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, writer)
                bar.set_postfix(loss=f"{loss:.4g}", d_recon=f"{row.get('delta_recon', 0):.3g}")
            if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                path = out / "checkpoints" / f"step-{step:08d}"
                if main:
                    save_checkpoint(
                        path,
                        model,
                        model_cfg,
                        optimizer,
                        scheduler,
                        step=step,
                        extra={**(extra or {}), "train": dataclasses.asdict(train_cfg), "world_size": world_size},
                    )
                barrier()  # no rank runs ahead of a checkpoint it may need to resume from
                last_ckpt = path
    if writer is not None:
        writer.close()
    return run_summary(start_step, resumed_from, losses, time.perf_counter() - t0, last_ckpt, model=model)
