"""Recipe: train a GFDM (the loop, resume and checkpoints are ``loop.fit``'s), writing grids.

Data: ``batches`` is either an iterable of batches or a callable ``make_batches(start_step)``
returning one (see loop.py for resume). A batch is a dict
    obs       float [B, 3 * context_frames, H, W] in [0, 1]   o_t (earlier context frames first)
    future    float [B, T, 3, H, W] in [0, 1]                  o_t+k .. o_t+Tk
    text_emb  float [B, text_dim]                              optional instruction embeddings
    has_text  bool [B]                                         optional: False rows use the null
                                                               embedding (clips without language)

Every ``grid_every`` steps (and at the last) a grid of rows (o_t | predicted | true future) of
the first batch's first ``grid_rows`` items is written to ``out_dir/grids/step-NNNNNNNN.png`` and
to TensorBoard (``grid``), so a person can look.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from ..gfdm import GFDMConfig
from ..gfdm.modeling_gfdm import GFDM
from .configuration import GFDMTrainConfig
from .loop import Batches, Run, fit, last_checkpoint, start

__all__ = ["GFDMTrainConfig", "Grids", "last_checkpoint", "prediction_grid", "train"]


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


class Grids:
    """The prediction grids of a run: ``batch(b)`` keeps the first batch's first ``grid_rows``
    items (the moved batch ``b`` of every step), ``after_step(step)`` writes a grid when due,
    ``report()`` names the last one for the summary."""

    def __init__(self, run: Run, model: GFDM, cfg: GFDMTrainConfig):
        self.run, self.model, self.cfg = run, model, cfg
        self.rows: dict[str, torch.Tensor] | None = None
        self.last: Path | None = None

    def batch(self, b: dict[str, torch.Tensor]) -> None:
        if self.rows is None:
            self.rows = {k: v[: self.cfg.grid_rows] for k, v in b.items()}

    def after_step(self, step: int) -> None:
        if self.run.due(step, self.cfg.grid_every):
            with self.run.autocast():
                self.last = write_grid(self.run.out, step, prediction_grid(self.model, self.rows, self.cfg.seed), self.run.writer)

    def report(self) -> dict[str, Any]:
        return {"grid": str(self.last) if self.last else None}


def train(model_cfg: GFDMConfig, train_cfg: GFDMTrainConfig, batches: Batches, extra: dict | None = None) -> dict[str, Any]:
    """Train (or resume training) a GFDM; returns ``loop.fit``'s summary plus ``grid`` (the last
    grid's path). ``extra`` (JSON-serialisable: the data facts, text model) is saved in every
    checkpoint."""
    run = start(train_cfg)
    model = GFDM(model_cfg)
    grids = Grids(run, model, train_cfg)

    def forward(batch: dict, _step: int) -> dict[str, Any]:
        b = run.to_device(batch, ("obs", "future", "text_emb", "has_text"))
        grids.batch(b)
        return model(b["obs"], b["future"], b.get("text_emb"), b.get("has_text"))

    return fit(
        run,
        model,
        model_cfg,
        batches,
        forward,
        desc="gfdm",
        extra=extra,
        after_step=grids.after_step,
        postfix={"mse": "mse"},
        report=grids.report,
    )
