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
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, restore_rng, save_checkpoint
from ..distributed import barrier, broadcast_module, sync_gradients, world
from ..gfdm import GFDM, GFDMConfig
from .train_gidm import DEVICES, _scalars, _seed_all, last_checkpoint, lr_factor
from .logs import log_row, open_logs, run_summary


@dataclass
class TrainConfig:
    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50  # linear warmup from 0, then cosine to min_lr_ratio * lr at ``steps``
    min_lr_ratio: float = 0.1
    batch_size: int = 16  # informational: the batches iterable decides the real size
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    seed: int = 0
    log_every: int = 10  # steps between TensorBoard / metrics.jsonl entries (step 1 always logs)
    ckpt_every: int = 500  # steps between checkpoints; the last step always checkpoints
    grid_every: int = 250  # steps between prediction grids (PNG + TensorBoard); the last step always
    grid_rows: int = 4  # items shown per grid
    out_dir: str = "runs/gfdm"
    device: str = "auto"  # auto = cuda if available
    bf16: bool = True  # bf16 autocast, on GPU only (CPU always runs fp32)
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        errors = []
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "grid_every", "grid_rows"):
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
    model_cfg: GFDMConfig, train_cfg: TrainConfig, batches: Iterable[dict] | Callable[[int], Iterable[dict]], extra: dict | None = None
) -> dict[str, Any]:
    """Train (or resume training) a GFDM; returns a summary: steps run, start step, per-step
    losses of this call, first/last loss, seconds per step, last checkpoint and grid paths.
    ``extra`` (JSON-serialisable: the data facts, text model) is saved in every checkpoint.

    Under torchrun every rank runs this with its own data shard; gradients are averaged each step
    and rank 0 alone writes logs, grids and checkpoints."""
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
    model = GFDM(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_cfg))

    start_step, resumed_from = 0, None
    ckpt = last_checkpoint(out)
    if ckpt is not None:
        loaded, saved_cfg, state = load_checkpoint(ckpt)
        if saved_cfg != model_cfg:
            raise ValueError(f"{ckpt}: saved model config differs from the one given; use a new out_dir")
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        start_step, resumed_from = state["step"], str(ckpt)
    broadcast_module(model)
    writer = None
    metrics_path = None
    if main:
        (out / "train_config.json").write_text(
            json.dumps({"model": model_cfg.to_dict(), "train": dataclasses.asdict(train_cfg), "world_size": world_size}, indent=2)
        )
        metrics_path, writer = open_logs(out, start_step)
    stream = iter(batches(start_step)) if callable(batches) else itertools.islice(iter(batches), start_step, None)

    # --- loop --------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt, last_grid, grid_batch = ckpt, None, None
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(
        range(start_step + 1, train_cfg.steps + 1),
        initial=start_step,
        total=train_cfg.steps,
        disable=not (train_cfg.progress and main),
        desc="gfdm",
    )
    with metrics_path.open("a") if main else open(os.devnull, "w") as metrics:
        for step in bar:  # ``step`` counts optimizer steps from 1
            try:
                batch = _to_device(next(stream), device)
            except StopIteration:
                raise ValueError(f"batches ran out at step {step} of {train_cfg.steps}") from None
            if grid_batch is None:
                grid_batch = {k: v[: train_cfg.grid_rows] for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                result = model(batch["obs"], batch["future"], batch.get("text_emb"), batch.get("has_text"))
            optimizer.zero_grad(set_to_none=True)
            result["loss"].backward()
            sync_gradients(model.trainable_parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.trainable_parameters(), train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf")
            )
            optimizer.step()
            scheduler.step()

            loss = float(result["loss"].detach())
            losses.append(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}")
            if main and (step == 1 or step % train_cfg.log_every == 0 or step == train_cfg.steps):
                row = {"step": step, **_scalars(result), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, writer)
                bar.set_postfix(loss=f"{loss:.4g}", mse=f"{row.get('mse', 0):.3g}")
            if main and (step % train_cfg.grid_every == 0 or step == train_cfg.steps):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    last_grid = write_grid(out, step, prediction_grid(model, grid_batch, train_cfg.seed), writer)
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
                barrier()
                last_ckpt = path
    if writer is not None:
        writer.close()
    return run_summary(
        start_step, resumed_from, losses, time.perf_counter() - t0, last_ckpt, grid=str(last_grid) if last_grid else None, model=model
    )
