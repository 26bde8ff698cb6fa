"""Recipe: pretrain the entangled model (GFDM + projection + GIDM, one loss). Read top to bottom:
setup (or resume), loop, grids, checkpoint.

Data: as the GFDM recipe's (train_gfdm.py): batches of ``obs``, ``future``, ``text_emb``,
``has_text``, or a callable ``make_batches(start_step)`` returning them. The GIDM reads o_t (the
last context frame) and the first future frame o_t+k.

Every ``grid_every`` steps (and at the last) the GFDM's predictions are written as in the GFDM
recipe (``out_dir/grids/step-NNNNNNNN.png``: o_t | predicted | true). Resume as every recipe:
the latest checkpoint's model, optimizer, scheduler, step and RNG.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..distributed import broadcast_module, world
from ..joint import JointConfig
from ..joint.modeling_joint import JointModel
from .configuration import GFDMTrainConfig
from .logs import log_row, open_logs, run_summary
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
from .train_gfdm import _to_device, prediction_grid, write_grid

__all__ = ["last_checkpoint", "train"]


def train(
    model_cfg: JointConfig, train_cfg: GFDMTrainConfig, batches: Iterable[dict] | Callable[[int], Iterable[dict]], extra: dict | None = None
) -> dict[str, Any]:
    """Train (or resume) the joint model; returns a summary as the other recipes (steps run,
    losses, seconds per step, last checkpoint and grid, ``model``). Under torchrun every rank
    trains on its own data shard; gradients are averaged and rank 0 writes."""
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
    model = JointModel(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_cfg))
    start_step, resumed_from = resume(out, model, model_cfg, optimizer, scheduler)
    broadcast_module(model)
    metrics_path, writer = open_logs(out, start_step) if main else (Path(os.devnull), None)
    stream = batch_iterator(batches, start_step)

    # --- loop --------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt, last_grid, grid_batch = resumed_from, None, None
    model.train()
    t0 = time.perf_counter()
    bar = step_bar(train_cfg, start_step, "joint", show=main)
    with metrics_path.open("a") as metrics:
        for step in bar:
            batch = _to_device(next_batch(stream, step, train_cfg.steps), device)
            if grid_batch is None:
                grid_batch = {k: v[: train_cfg.grid_rows] for k, v in batch.items()}
            log_now = main and (step == 1 or step % train_cfg.log_every == 0 or step == train_cfg.steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                result = model(batch["obs"], batch["future"], batch.get("text_emb"), batch.get("has_text"), diagnostics=log_now)
            grad_norm = optimizer_step(result["loss"], model.trainable_parameters(), optimizer, scheduler, train_cfg.grad_clip)
            if world_size > 1 and model.gidm.config.bottleneck in ("vq", "rvq", "nsvq"):
                broadcast_module(model.gidm.bottleneck)  # dead-code restarts drew from rank-local batches
            loss = finite_loss(result["loss"], step)
            losses.append(loss)
            if log_now:
                row = {"step": step, **scalars(result), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, writer)
                bar.set_postfix(loss=f"{loss:.4g}", fwd=f"{row['forward_loss']:.3g}", inv=f"{row['inverse_loss']:.3g}")
            if main and (step % train_cfg.grid_every == 0 or step == train_cfg.steps):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    last_grid = write_grid(out, step, prediction_grid(model.gfdm, grid_batch, train_cfg.seed), writer)
            if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                saved = {**(extra or {}), "train": dataclasses.asdict(train_cfg), "world_size": world_size}
                last_ckpt = save_step(out, step, model, model_cfg, optimizer, scheduler, saved, main)
    if writer is not None:
        writer.close()
    return run_summary(
        start_step, resumed_from, losses, time.perf_counter() - t0, last_ckpt, grid=str(last_grid) if last_grid else None, model=model
    )
