"""Recipe: pretrain the entangled model, GFDM + projection + GIDM on one summed loss (the loop,
resume and checkpoints are ``loop.fit``'s), writing the GFDM's prediction grids.

Data: as the GFDM recipe's (gfdm.py): batches of ``obs``, ``future``, ``text_emb``,
``has_text``, or a callable ``make_batches(start_step)`` returning them. The GIDM reads o_t (the
last context frame) and the first future frame o_t+k.

Every ``grid_every`` steps (and at the last) the GFDM's predictions are written as in the GFDM
recipe (``out_dir/grids/step-NNNNNNNN.png``: o_t | predicted | true).
"""

from __future__ import annotations

from typing import Any

from ..distributed import broadcast_module
from ..gidm.configuration_gidm import CODEBOOK_BOTTLENECKS
from ..joint import JointConfig
from ..joint.modeling_joint import JointModel
from .configuration import GFDMTrainConfig
from .loop import Batches, fit, last_checkpoint, start
from .gfdm import Grids

__all__ = ["last_checkpoint", "train"]


def train(model_cfg: JointConfig, train_cfg: GFDMTrainConfig, batches: Batches, extra: dict | None = None) -> dict[str, Any]:
    """Train (or resume) the joint model; returns ``loop.fit``'s summary plus ``grid`` (the last
    grid's path). ``extra`` (JSON: the data facts, text model) is saved in every checkpoint."""
    run = start(train_cfg)
    model = JointModel(model_cfg)
    grids = Grids(run, model.gfdm, train_cfg)
    vq = run.world_size > 1 and model.gidm.config.bottleneck in CODEBOOK_BOTTLENECKS

    def forward(batch: dict, step: int) -> dict[str, Any]:
        b = run.to_device(batch, ("obs", "future", "text_emb", "has_text"))
        grids.batch(b)
        return model(b["obs"], b["future"], b.get("text_emb"), b.get("has_text"), diagnostics=run.logs(step))

    def after_step(step: int) -> None:
        if vq:  # dead-code restarts drew from rank-local batches
            broadcast_module(model.gidm.bottleneck)
        grids.after_step(step)

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
        report=grids.report,
    )
