"""Recipe: finetune the DeFI policy on labeled robot clips (the loop, resume and checkpoints are
``loop.fit``'s).

The caller builds the policy (``DeFiPolicy`` with its pretrained GFDM/GIDM, or random ones for the
ablations) and sets its action standardisation; this recipe trains what requires gradients with
one AdamW learning rate (the release's recipe: action loss + the GIDM's VQ terms; the optional
losses and the staged GFDM unfreeze come from ``PolicyConfig``).

Data: ``batches`` is an iterable of batches or a callable ``make_batches(start_step)`` (see
loop.py for resume). A batch is a dict
    obs           float [B, 3c, S, S] in [0, 1]   o_t-c+1 .. o_t stacked on channels, o_t last
    text_emb      float [B, D]                     optional: instruction embeddings
    action_chunk  float [B, H, A]                  the next H action rows at the robot's rate
    action_mask   bool  [B, H]                     False past the end of the clip
    future        float [B, 3, S, S]               optional: the true o_t+k (forward/consistency losses)
    state         float [B, P]                     the proprioception at o_t (policies with state_dim)

On resume the GFDM unfreeze is re-applied from the step.
"""

from __future__ import annotations

from typing import Any

from ..policy.modeling_policy import DeFiPolicy
from .configuration import TrainConfig
from .loop import Batches, fit, last_checkpoint, start

__all__ = ["TrainConfig", "train_policy", "last_checkpoint"]


def param_groups(policy, lr: float) -> list[dict]:
    """The optimizer's groups: the GIDM at ``lr * gidm_lr_scale`` (PolicyConfig), the rest at ``lr``
    (the scheduler scales both alike). A scale of 0 keeps the GIDM where it started."""
    scale = policy.config.gidm_lr_scale
    gidm = {id(p) for p in policy.gidm.parameters()} if policy.gidm is not None and scale != 1 else set()
    groups = [{"params": [p for p in policy.parameters() if id(p) not in gidm], "lr": lr}]
    if gidm:
        groups.append({"params": list(policy.gidm.parameters()), "lr": lr * scale, "name": "gidm"})
    return groups


def train_policy(policy: DeFiPolicy, train_cfg: TrainConfig, batches: Batches, extra: dict | None = None) -> dict[str, Any]:
    """Train (or resume) ``policy``; returns ``loop.fit``'s summary plus the first/last action L1.
    ``extra`` (JSON) is stored in every checkpoint's state.json (the data facts eval needs)."""
    run = start(train_cfg)
    unfreeze_at = policy.config.unfreeze_gfdm_step
    l1s: list[float] = []

    def forward(batch: dict, step: int) -> dict[str, Any]:
        if step - 1 == unfreeze_at:
            policy.set_gfdm_trainable(True)
            policy.train()
        b = run.to_device(batch, ("obs", "text_emb", "action_chunk", "action_mask", "future", "state"))
        out = policy(b.get("obs"), b.get("text_emb"), b.get("action_chunk"), b.get("action_mask"), b.get("future"), state=b.get("state"))
        l1s.append(float(out["action_l1"]))
        return out

    return fit(
        run,
        policy,
        policy.config,
        batches,
        forward,
        desc=f"policy ({policy.config.init})",
        extra=extra,
        param_groups=param_groups(policy, train_cfg.lr),
        on_start=lambda start_step: policy.set_gfdm_trainable(0 <= unfreeze_at <= start_step),
        postfix={"l1": "action_l1"},
        report=lambda: {"first_l1": l1s[0] if l1s else None, "last_l1": l1s[-1] if l1s else None},
    )
