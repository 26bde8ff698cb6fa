"""Recipe: finetune the DeFI policy on labeled robot clips. Read top to bottom: setup (or
resume), loop, checkpoint.

The caller builds the policy (``DeFiPolicy`` with its pretrained GFDM/GIDM, or random ones for the
ablations) and sets its action standardisation; this recipe trains what requires gradients with
one AdamW learning rate (the release's recipe: action loss + the GIDM's VQ terms; the optional
losses and the staged GFDM unfreeze come from ``PolicyConfig``).

Data: ``batches`` is an iterable of batches or a callable ``make_batches(start_step)``. A batch is
a dict
    obs           float [B, 3c, S, S] in [0, 1]   o_t-c+1 .. o_t stacked on channels, o_t last
    text_emb      float [B, D]                     optional: instruction embeddings
    action_chunk  float [B, H, A]                  the next H action rows at the robot's rate
    action_mask   bool  [B, H]                     False past the end of the clip
    future        float [B, 3, S, S]               optional: the true o_t+k (forward/consistency losses)
    state         float [B, P]                     the proprioception at o_t (policies with state_dim)

Under torchrun (a process group initialised, see ``training.distributed``) every rank trains on
its own share of the data; gradients are averaged each step and rank 0 alone writes logs and
checkpoints.

Resume: if ``out_dir/checkpoints`` holds a checkpoint, weights, optimizer, scheduler, step and RNG
are restored from the latest; the GFDM unfreeze is re-applied from the step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..checkpoint import load_checkpoint, restore_rng
from ..distributed import broadcast_module, world
from ..policy.modeling_policy import DeFiPolicy
from .logs import log_row, open_logs, run_summary
from .configuration import TrainConfig
from .loop import (
    batch_iterator,
    finite_loss,
    last_checkpoint,
    lr_factor,
    next_batch,
    optimizer_step,
    pick_device,
    save_step,
    scalars,
    seed_all,
    step_bar,
)

__all__ = ["TrainConfig", "train_policy", "last_checkpoint"]


def _to(v: Any, device: torch.device) -> torch.Tensor | None:
    return v.to(device, non_blocking=True) if torch.is_tensor(v) else None


def param_groups(policy, lr: float) -> list[dict]:
    """The optimizer's groups: the GIDM at ``lr * gidm_lr_scale`` (PolicyConfig), the rest at ``lr``
    (the scheduler scales both alike). A scale of 0 keeps the GIDM where it started."""
    scale = policy.config.gidm_lr_scale
    gidm = {id(p) for p in policy.gidm.parameters()} if policy.gidm is not None and scale != 1 else set()
    groups = [{"params": [p for p in policy.parameters() if id(p) not in gidm], "lr": lr}]
    if gidm:
        groups.append({"params": list(policy.gidm.parameters()), "lr": lr * scale, "name": "gidm"})
    return groups


def train_policy(
    policy: DeFiPolicy, train_cfg: TrainConfig, batches: Iterable[dict] | Callable[[int], Iterable[dict]], extra: dict | None = None
) -> dict[str, Any]:
    """Train (or resume) ``policy``; returns a summary: steps run, start step, losses, first/last
    loss and action L1, seconds per step, last checkpoint, and the trained ``model``. ``extra``
    (JSON) is stored in every checkpoint's state.json (the data facts eval needs)."""
    # --- setup -------------------------------------------------------------------------------
    cfg = policy.config
    out = Path(train_cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(train_cfg)
    use_bf16 = train_cfg.bf16 and device.type == "cuda"
    rank, world_size = world()
    main = rank == 0
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    seed_all(train_cfg.seed)
    start_step, resumed_from = 0, None
    ckpt = last_checkpoint(out)
    state = None
    if ckpt is not None:
        loaded, saved_cfg, state = load_checkpoint(ckpt)
        if saved_cfg != cfg:
            raise ValueError(f"{ckpt}: saved policy config differs from the one given; use a new out_dir")
        policy.load_state_dict(loaded.state_dict())
        start_step, resumed_from = state["step"], str(ckpt)
    unfreeze_at = cfg.unfreeze_gfdm_step
    policy.set_gfdm_trainable(0 <= unfreeze_at <= start_step)
    policy.to(device)
    broadcast_module(policy)  # identical replicas from the first step (no-op on one process)
    # every parameter that may ever train is in the optimizer; frozen ones have no grad, which
    # AdamW skips, so a staged unfreeze needs no second optimizer
    optimizer = torch.optim.AdamW(param_groups(policy, train_cfg.lr), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_cfg))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
    metrics_path, writer = open_logs(out, start_step) if main else (Path(os.devnull), None)
    stream = batch_iterator(batches, start_step)

    # --- loop --------------------------------------------------------------------------------
    losses: list[float] = []
    l1s: list[float] = []
    last_ckpt = ckpt
    policy.train()
    t0 = time.perf_counter()
    bar = step_bar(train_cfg, start_step, f"policy ({cfg.init})", show=main)
    with metrics_path.open("a") as metrics:
        for step in bar:
            if step - 1 == unfreeze_at:
                policy.set_gfdm_trainable(True)
                policy.train()
            batch = next_batch(stream, step, train_cfg.steps)
            obs, text, act, mask, future, state = (
                _to(batch.get(k), device) for k in ("obs", "text_emb", "action_chunk", "action_mask", "future", "state")
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                result = policy(obs, text, act, mask, future, state=state)
            grad_norm = optimizer_step(result["loss"], policy.trainable_parameters(), optimizer, scheduler, train_cfg.grad_clip)
            loss = finite_loss(result["loss"], step)
            losses.append(loss)
            l1s.append(float(result["action_l1"]))
            if main and (step == 1 or step % train_cfg.log_every == 0 or step == train_cfg.steps):
                row = {"step": step, **scalars(result), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                log_row(row, metrics, writer)
                bar.set_postfix(loss=f"{loss:.4g}", l1=f"{l1s[-1]:.3g}")
            if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                saved = {"train": dataclasses.asdict(train_cfg), "world_size": world_size, **(extra or {})}
                last_ckpt = save_step(out, step, policy, cfg, optimizer, scheduler, saved, main)
    if writer is not None:
        writer.close()
    return run_summary(
        start_step,
        resumed_from,
        losses,
        time.perf_counter() - t0,
        last_ckpt,
        first_l1=l1s[0] if l1s else None,
        last_l1=l1s[-1] if l1s else None,
        model=policy,
    )
