"""Recipe: train a GFDM. Read top to bottom: config, setup (or resume), loop, grids, checkpoint.

Data: ``batches`` is either an iterable of batches or a callable ``make_batches(start_step)``
returning one. A batch is a dict
    obs       float [B, 3 * context_frames, H, W] in [0, 1]   o_t (earlier context frames first)
    future    float [B, T, 3, H, W] in [0, 1]                  o_t+k .. o_t+Tk
    text_emb  float [B, text_dim]                              optional instruction embeddings
    has_text  bool [B]                                         optional: False rows use the null
                                                               embedding (clips without language)
On resume at step s the callable is called with s and must yield the batches of steps s+1...; a
plain iterable is assumed to restart from the beginning and its first s batches are skipped.

Every ``grid_every`` steps (and at the last) a grid of rows (o_t | predicted | true future) of
the first batch's first ``grid_rows`` items is written to ``out_dir/grids/step-NNNNNNNN.png`` and
to TensorBoard (``grid``), so a person can look.

Resume: if ``out_dir/checkpoints`` holds a checkpoint, model, optimizer, scheduler, step and RNG
states are restored from the latest (see train_gidm.py: same conventions, same helpers).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from ..distributed import broadcast_module, world
from ..gfdm.modeling_gfdm import GFDM
from ..gfdm import GFDMConfig
from .logs import log_row, open_logs, run_summary
from .configuration import GFDMTrainConfig
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

__all__ = ["GFDMTrainConfig", "last_checkpoint", "prediction_grid", "train"]


def prediction_grid(model: GFDM, batch: dict[str, torch.Tensor], seed: int = 0) -> np.ndarray:
    """uint8 [H', W', 3]: one row per item: o_t | predicted frames | true frames."""
    from torchvision.utils import make_grid

    was_training = model.training
    model.eval()
    with torch.no_grad():
        text = batch.get("text_emb")
        if text is not None and "has_text" in batch:
            text = torch.where(batch["has_text"].view(-1, 1), text, model.null_text.expand_as(text))
        pred = model.predict(batch["obs"], text, generator=torch.Generator(batch["obs"].device).manual_seed(seed))
    model.train(was_training)
    now = batch["obs"][:, -3:].unsqueeze(1).float().cpu()
    rows = torch.cat([now, pred.float().cpu(), batch["future"].float().cpu()], dim=1)  # [B, 1+2T, 3, H, W]
    grid = make_grid(rows.flatten(0, 1), nrow=rows.shape[1], padding=2, pad_value=1.0)
    return (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def write_grid(out: Path, step: int, image: np.ndarray, writer: SummaryWriter | None) -> Path:
    from PIL import Image

    path = out / "grids" / f"step-{step:08d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)
    if writer is not None:
        writer.add_image("grid", image, step, dataformats="HWC")
    return path


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in ("obs", "future", "text_emb", "has_text") if k in batch}


def train(
    model_cfg: GFDMConfig, train_cfg: GFDMTrainConfig, batches: Iterable[dict] | Callable[[int], Iterable[dict]], extra: dict | None = None
) -> dict[str, Any]:
    """Train (or resume training) a GFDM; returns a summary: steps run, start step, per-step
    losses of this call, first/last loss, seconds per step, last checkpoint and grid paths.
    ``extra`` (JSON-serialisable: the data facts, text model) is saved in every checkpoint.

    Under torchrun every rank runs this with its own data shard; gradients are averaged each step
    and rank 0 alone writes logs, grids and checkpoints."""
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
    model = GFDM(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_cfg))

    start_step, resumed_from = resume(out, model, model_cfg, optimizer, scheduler)
    broadcast_module(model)
    writer = None
    metrics_path = None
    if main:  # the configs travel in each checkpoint (config.json, state.json): no separate file
        metrics_path, writer = open_logs(out, start_step)
    stream = batch_iterator(batches, start_step)

    # --- loop --------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt, last_grid, grid_batch = resumed_from, None, None
    model.train()
    t0 = time.perf_counter()
    bar = step_bar(train_cfg, start_step, "gfdm", show=main)
    with metrics_path.open("a") if main else open(os.devnull, "w") as metrics:
        for step in bar:  # ``step`` counts optimizer steps from 1
            batch = _to_device(next_batch(stream, step, train_cfg.steps), device)
            if grid_batch is None:
                grid_batch = {k: v[: train_cfg.grid_rows] for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                result = model(batch["obs"], batch["future"], batch.get("text_emb"), batch.get("has_text"))
            grad_norm = optimizer_step(result["loss"], model.trainable_parameters(), optimizer, scheduler, train_cfg.grad_clip)
            loss = finite_loss(result["loss"], step)
            losses.append(loss)
            if main and (step == 1 or step % train_cfg.log_every == 0 or step == train_cfg.steps):
                row = {"step": step, **scalars(result), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, writer)
                bar.set_postfix(loss=f"{loss:.4g}", mse=f"{row.get('mse', 0):.3g}")
            if main and (step % train_cfg.grid_every == 0 or step == train_cfg.steps):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    last_grid = write_grid(out, step, prediction_grid(model, grid_batch, train_cfg.seed), writer)
            if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                saved = {**(extra or {}), "train": dataclasses.asdict(train_cfg), "world_size": world_size}
                last_ckpt = save_step(out, step, model, model_cfg, optimizer, scheduler, saved, main)
    if writer is not None:
        writer.close()
    return run_summary(
        start_step, resumed_from, losses, time.perf_counter() - t0, last_ckpt, grid=str(last_grid) if last_grid else None, model=model
    )
