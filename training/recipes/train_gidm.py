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
import os
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

import torch

from ..distributed import broadcast_module, world
from ..gidm.modeling_gidm import GIDM
from ..gidm import GIDMConfig
from .logs import log_row, open_logs, run_summary
from .configuration import DEVICES, TrainConfig
from .loop import (
    batch_iterator,
    finite_loss,
    last_checkpoint,
    lr_factor,
    next_batch,
    optimizer_step,
    pick_device,
    resume,
    save_step,
    scalars,
    seed_all,
    step_bar,
)

__all__ = ["DEVICES", "TrainConfig", "last_checkpoint", "lr_factor", "train"]


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
    device = pick_device(train_cfg)
    use_bf16 = train_cfg.bf16 and device.type == "cuda"
    rank, world_size = world()
    main = rank == 0
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    seed_all(train_cfg.seed)
    model = GIDM(model_cfg, feature_extractor=feature_extractor).to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_cfg))

    external = model_cfg.feature_encoder == "external" and model_cfg.input_space == "features"
    load_kwargs = {"feature_extractor": model.features.backbone} if external else {}
    start_step, resumed_from = resume(out, model, model_cfg, optimizer, scheduler, **load_kwargs)
    broadcast_module(model)  # identical replicas from the first step (no-op on one process)
    writer = None
    metrics_path = None
    if main:  # the configs travel in each checkpoint (config.json, state.json): no separate file
        metrics_path, writer = open_logs(out, start_step)

    stream = batch_iterator(batches, start_step)

    # --- loop --------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt = resumed_from
    model.train()
    t0 = time.perf_counter()
    bar = step_bar(train_cfg, start_step, "gidm", show=main)
    with metrics_path.open("a") if main else open(os.devnull, "w") as metrics:
        for step in bar:  # ``step`` counts optimizer steps from 1
            batch = next_batch(stream, step, train_cfg.steps)
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
            grad_norm = optimizer_step(result["loss"], model.trainable_parameters(), optimizer, scheduler, train_cfg.grad_clip)
            if world_size > 1 and model_cfg.bottleneck in ("vq", "rvq", "nsvq"):
                broadcast_module(model.bottleneck)  # dead-code restarts drew from rank-local batches

            loss = finite_loss(result["loss"], step)
            losses.append(loss)
            if log_now:
                row = {"step": step, **scalars(result), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, writer)
                bar.set_postfix(loss=f"{loss:.4g}", d_recon=f"{row.get('delta_recon', 0):.3g}")
            if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                saved = {**(extra or {}), "train": dataclasses.asdict(train_cfg), "world_size": world_size}
                last_ckpt = save_step(out, step, model, model_cfg, optimizer, scheduler, saved, main)
    if writer is not None:
        writer.close()
    return run_summary(start_step, resumed_from, losses, time.perf_counter() - t0, last_ckpt, model=model)
