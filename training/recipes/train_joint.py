"""Recipe: pretrain the entangled model, GFDM + projection + GIDM on one summed loss (the loop,
resume and checkpoints are ``loop.fit``'s), writing the GFDM's prediction grids.

Data: as the GFDM recipe's (train_gfdm.py): batches of ``obs``, ``future``, ``text_emb``,
``has_text``, or a callable ``make_batches(start_step)`` returning them. The GIDM reads o_t (the
last context frame) and the first future frame o_t+k.

Every ``grid_every`` steps (and at the last) the GFDM's predictions are written as in the GFDM
recipe (``out_dir/grids/step-NNNNNNNN.png``: o_t | predicted | true).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..distributed import broadcast_module
from ..joint import JointConfig
from ..joint.modeling_joint import JointModel
from .configuration import GFDMTrainConfig
from .loop import Batches, fit, last_checkpoint, start
from .train_gfdm import prediction_grid, write_grid

__all__ = ["last_checkpoint", "train"]


def train(model_cfg: JointConfig, train_cfg: GFDMTrainConfig, batches: Batches, extra: dict | None = None) -> dict[str, Any]:
    """Train (or resume) the joint model; returns ``loop.fit``'s summary plus ``grid`` (the last
    grid's path). ``extra`` (JSON: the data facts, text model) is saved in every checkpoint."""
    run = start(train_cfg)
    model = JointModel(model_cfg)
    grid_batch: dict[str, torch.Tensor] | None = None
    last_grid: Path | None = None

    def forward(batch: dict, step: int) -> dict[str, Any]:
        nonlocal grid_batch
        b = run.to_device(batch, ("obs", "future", "text_emb", "has_text"))
        if grid_batch is None:
            grid_batch = {k: v[: train_cfg.grid_rows] for k, v in b.items()}
        return model(b["obs"], b["future"], b.get("text_emb"), b.get("has_text"), diagnostics=run.logs(step))

    def after_step(step: int) -> None:
        nonlocal last_grid
        if run.world_size > 1 and model.gidm.config.bottleneck in ("vq", "rvq", "nsvq"):
            broadcast_module(model.gidm.bottleneck)  # dead-code restarts drew from rank-local batches
        if run.due(step, train_cfg.grid_every):
            with run.autocast():
                last_grid = write_grid(run.out, step, prediction_grid(model.gfdm, grid_batch, train_cfg.seed), run.writer)

    return fit(
        run,
        model,
        model_cfg,
        batches,
        forward,
        desc="joint",
        extra=extra,
        after_step=after_step,
        postfix={"fwd": "forward_loss", "inv": "inverse_loss"},
        report=lambda: {"grid": str(last_grid) if last_grid else None},
    )
