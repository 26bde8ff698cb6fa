"""Recipe: train a GIDM (the loop, resume and checkpoints are ``loop.fit``'s).

Data: ``batches`` is either an iterable of batches or a callable ``make_batches(start_step)``
returning one (see loop.py for resume). A batch is a dict
    obs       float [B, C, H, W] in [0, 1]   o_t
    next_obs  float [B, C, H, W] in [0, 1]   o_t+k
    frames    float [B, 3, C, H, W]          o_t, o_t+k, o_t+2k: what configs with additive_weight > 0
                                             train on instead of obs/next_obs
    lang_emb  float [B, D]                   optional, for configs with lang_dim > 0
    actions   float [B, A]                   optional, true actions (probes only; not trained on)
"""

from __future__ import annotations

from typing import Any

import torch

from ..distributed import broadcast_module
from ..gidm import GIDMConfig
from ..gidm.configuration_gidm import CODEBOOK_BOTTLENECKS
from ..gidm.modeling_gidm import GIDM
from .configuration import DEVICES, TrainConfig
from .loop import Batches, fit, last_checkpoint, lr_factor, start

__all__ = ["DEVICES", "TrainConfig", "last_checkpoint", "lr_factor", "train"]


def train(
    model_cfg: GIDMConfig,
    train_cfg: TrainConfig,
    batches: Batches,
    feature_extractor: torch.nn.Module | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a GIDM; returns ``loop.fit``'s summary. ``extra``
    (JSON-serialisable, e.g. ``{"data": {"gap_frames": 10, ...}}``) is saved in every checkpoint."""
    run = start(train_cfg)
    model = GIDM(model_cfg, feature_extractor=feature_extractor)
    external = model_cfg.feature_encoder == "external" and model_cfg.input_space == "features"
    inputs = ("frames", "lang_emb") if model_cfg.additive_weight > 0 else ("obs", "next_obs", "lang_emb")

    def forward(batch: dict, step: int) -> dict[str, Any]:
        b = run.to_device(batch, inputs)
        # diagnostics (a second decoder pass with shuffled latents, code statistics) only on
        # the steps that log them
        if model_cfg.additive_weight > 0:  # windows o_t, o_t+k, o_t+2k (see forward_window)
            if "frames" not in b:
                raise ValueError("model.additive_weight > 0 needs windows of 3 frames (ClipDataset(window=3))")
            return model.forward_window(b["frames"], b.get("lang_emb"), diagnostics=run.logs(step))
        return model(b["obs"], b["next_obs"], b.get("lang_emb"), diagnostics=run.logs(step))

    def broadcast_codebook(_step: int) -> None:  # dead-code restarts drew from rank-local batches
        broadcast_module(model.bottleneck)

    return fit(
        run,
        model,
        model_cfg,
        batches,
        forward,
        desc="gidm",
        extra=extra,
        load_kwargs={"feature_extractor": model.features.backbone} if external else None,
        after_step=broadcast_codebook if run.world_size > 1 and model_cfg.bottleneck in CODEBOOK_BOTTLENECKS else None,
        postfix={"d_recon": "delta_recon"},
    )
