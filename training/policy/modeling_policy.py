"""The DeFI policy: the pretrained forward model imagines the future, the pretrained inverse model
reads the action that leads there, a head maps that latent action to a chunk of robot actions.

Data flow (shapes as in the released ``VPP_policy.py`` of LogosRoboticsGroup/DeFi; the code is ours):

    obs [B, 3c, S, S], instruction embedding [B, D]
      -> GFDM.extract_features (frozen, one pass): prediction [B, T, 3, S, S], up-block features
      -> FeatureProjection (trainable): tokens of the predicted future in the GIDM's input space,
         tokens(prediction) + a zero-initialised correction from the features, so at step 0 a
         pretrained GIDM reads (o_t, predicted o_t+k) exactly as in its own pretraining
      -> GIDM.encode_tokens (trainable, decoder unused): latent action tokens z [B, Q, W]
      -> head (trainable) on [z, instruction, pooled GFDM features] -> actions [B, H, A]

``init="bc"`` drops the future branch: a small conv encoder of the observation and the
instruction go straight to the same head. Actions are standardised with per-dimension mean/std
buffers the recipe sets from the training data; ``loss`` is the masked MSE on standardised
actions (+ the GIDM bottleneck's VQ terms, + the optional forward / consistency losses).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..gidm.modeling_gidm import GIDM
from ..gidm import GIDMConfig
from .configuration_policy import PolicyConfig


class FeatureProjection(nn.Module):
    """GFDM up-block features [B, T, C_i, h_i, w_i] (mean over T) -> a correction [B, N, token_dim]
    to the GIDM tokens of the predicted frame, N = grid^2 patches."""

    def __init__(self, channels: list[int], grid: int, token_dim: int, width: int = 64):
        super().__init__()
        self.grid = grid
        self.inp = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.mix = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.out = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = sum(F.adaptive_avg_pool2d(conv(f.float().mean(1)), self.grid) for conv, f in zip(self.inp, feats, strict=True))
        return self.out(self.mix(x).flatten(2).transpose(1, 2))


class ImageEncoder(nn.Module):
    """bc: observation frames [B, 3c, S, S] -> [B, dim] (conv, stride 2 x3, 4x4 pooled)."""

    def __init__(self, in_channels: int, width: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * width, dim),
        )

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


class MLPHead(nn.Module):
    def __init__(self, n_cond: int, dim: int, depth: int, horizon: int, action_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_cond * dim, dim), nn.GELU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, dim), nn.GELU()]
        layers.append(nn.Linear(dim, horizon * action_dim))
        self.net = nn.Sequential(*layers)
        self.shape = (horizon, action_dim)

    def forward(self, cond: list[Tensor]) -> Tensor:
        return self.net(torch.cat(cond, dim=-1)).view(-1, *self.shape)


class TransformerHead(nn.Module):
    """H learned action queries attend to the conditioning tokens (a small ACT-style decoder)."""

    def __init__(self, n_cond: int, dim: int, depth: int, horizon: int, action_dim: int, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, horizon, dim) * 0.02)
        self.cond_pos = nn.Parameter(torch.randn(1, n_cond, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.0, activation="gelu", batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.out = nn.Linear(dim, action_dim)
        self.horizon = horizon

    def forward(self, cond: list[Tensor]) -> Tensor:
        c = torch.stack(cond, dim=1) + self.cond_pos
        x = torch.cat([self.queries.expand(c.shape[0], -1, -1), c], dim=1)
        return self.out(self.body(x)[:, : self.horizon])


class DeFiPolicy(nn.Module):
    def __init__(self, config: PolicyConfig, gfdm: nn.Module | None = None, gidm: GIDM | None = None):
        """``gfdm``/``gidm``: pretrained modules (their configs must be ``config.gfdm``/``config.gidm``);
        None builds them with random weights from those configs (``scratch`` and the ablations,
        and loading a policy checkpoint, whose weights then fill them)."""
        super().__init__()
        c = self.config = config
        d = c.head_dim
        self.register_buffer("action_mean", torch.zeros(c.action_dim))
        self.register_buffer("action_std", torch.ones(c.action_dim))
        self.text = nn.Linear(c.text_dim, d) if c.text_dim else None
        n_cond = 1 + (1 if c.text_dim else 0)
        if c.future_branch:
            from ..gfdm.modeling_gfdm import GFDM
            from ..gfdm import GFDMConfig

            if gfdm is None:
                gfdm = GFDM(GFDMConfig.from_dict(c.gfdm), load_pretrained=False)
            if gidm is None:
                gidm = GIDM(GIDMConfig.from_dict(c.gidm), load_feature_weights=False)
            gc, ic = gfdm.config, gidm.config
            if gc.image_size != c.image_size or ic.image_size != c.image_size:
                raise ValueError(f"image sizes differ: policy {c.image_size}, GFDM {gc.image_size}, GIDM {ic.image_size}")
            if ic.input_space != "pixels":
                raise ValueError(f"the policy needs a pixel-space GIDM (got input_space={ic.input_space!r})")
            if ic.lang_dim and ic.lang_dim != c.text_dim:
                raise ValueError(f"GIDM lang_dim {ic.lang_dim} differs from the instruction width {c.text_dim}")
            self.gfdm = gfdm
            self.gidm = gidm
            self.set_gfdm_trainable(False)
            channels = list(gfdm.feature_channels)
            self.project = FeatureProjection(channels, ic.grid, gidm.token_dim)
            self.latent = nn.Linear(ic.num_action_tokens * ic.code_width, d)
            self.pooled = nn.Linear(sum(channels), d)
            n_cond += 1
        else:
            self.gfdm = self.gidm = None
            self.image = ImageEncoder(3 * c.context_frames, c.bc_width, d)
        head = MLPHead if c.head == "mlp" else TransformerHead
        self.head = head(n_cond, d, c.head_depth, c.horizon, c.action_dim)

    # --- freezing ------------------------------------------------------------------------------
    def set_gfdm_trainable(self, on: bool) -> None:
        """Frozen (the default, as released): no gradients, eval mode whatever ``train()`` says."""
        if self.gfdm is None:
            return
        self.gfdm_trainable = bool(on)
        for p in self.gfdm.parameters():
            p.requires_grad_(on)
        self.gfdm.train(on and self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.gfdm is not None and not self.gfdm_trainable:
            self.gfdm.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- forward -------------------------------------------------------------------------------
    def _text(self, text_emb: Tensor | None, B: int, device) -> list[Tensor]:
        if self.text is None:
            return []
        if text_emb is None:
            text_emb = torch.zeros(B, self.config.text_dim, device=device)
        return [self.text(text_emb.float())]

    def features(self, obs: Tensor, text_emb: Tensor | None) -> dict[str, Any]:
        """The conditioning of the head: ``cond`` (list of [B, head_dim]) and, with the future
        branch, ``z`` [B, Q, W], ``tok_t``, ``tok_future`` (GIDM input tokens), ``prediction``
        and the bottleneck's ``bottleneck_loss``."""
        c = self.config
        B = obs.shape[0]
        if obs.shape[1:] != (3 * c.context_frames, c.image_size, c.image_size):
            raise ValueError(f"obs must be [B, {3 * c.context_frames}, {c.image_size}, {c.image_size}], got {list(obs.shape)}")
        cond = self._text(text_emb, B, obs.device)
        if not c.future_branch:
            return {"cond": [self.image(obs), *cond]}
        g_text = text_emb if self.gfdm.config.text_dim == c.text_dim else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.gfdm_trainable):
            out = self.gfdm.extract_features(obs, g_text, num_steps=c.gfdm_steps)
        feats = [f.float() for f in out.features]
        pred = out.prediction[:, 0].float().clamp(0, 1)  # the first predicted frame: o_t+k
        tok_t = self.gidm.tokens(obs[:, -3:])
        tok_future = self.gidm.tokens(pred) + self.project(feats)
        lang = text_emb if self.gidm.config.lang_dim else None
        z, _, extra = self.gidm.encode_tokens(tok_t, tok_future, lang)
        pooled = torch.cat([f.mean(dim=(1, 3, 4)) for f in feats], dim=-1)
        return {
            "cond": [self.latent(z.flatten(1)), self.pooled(pooled), *cond],
            "z": z,
            "tok_t": tok_t,
            "tok_future": tok_future,
            "prediction": pred,
            "bottleneck_loss": extra.get("bottleneck_loss"),
        }

    def forward(
        self,
        obs: Tensor,
        text_emb: Tensor | None = None,
        actions: Tensor | None = None,
        mask: Tensor | None = None,
        future: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """obs [B, 3c, S, S] in [0, 1] (o_t last); text_emb [B, text_dim]; actions [B, H, A] (raw
        units) and mask [B, H] bool for the loss; future [B, 3, S, S] the true o_t+k (forward and
        consistency losses only). Returns ``actions`` [B, H, A] (raw units) and, with targets,
        ``loss``, ``action_mse`` (standardised) and ``action_l1`` (raw units), all 0-dim."""
        c = self.config
        f = self.features(obs, text_emb)
        norm = self.head(f["cond"])
        out: dict[str, Tensor] = {"actions": norm * self.action_std + self.action_mean}
        if actions is None:
            return out
        if mask is None:
            mask = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
        m = mask.unsqueeze(-1).to(norm.dtype)
        target = (actions - self.action_mean) / self.action_std
        denom = m.sum().clamp_min(1.0) * actions.shape[-1]
        mse = ((norm - target) ** 2 * m).sum() / denom
        loss = mse
        out["action_mse"] = mse.detach()
        out["action_l1"] = ((out["actions"] - actions).abs() * m).sum().detach() / denom
        if f.get("bottleneck_loss") is not None:
            loss = loss + f["bottleneck_loss"]
        if c.consistency_weight and future is not None:
            with torch.no_grad():
                z_true, _, _ = self.gidm.encode_tokens(
                    f["tok_t"], self.gidm.tokens(future), text_emb if self.gidm.config.lang_dim else None
                )
            cons = F.mse_loss(f["z"], z_true)
            out["consistency"] = cons.detach()
            loss = loss + c.consistency_weight * cons
        if c.forward_weight and future is not None:
            g_text = text_emb if self.gfdm.config.text_dim == c.text_dim else None
            fwd = self.gfdm(obs, future.unsqueeze(1), g_text)["loss"]
            out["forward"] = fwd.detach()
            loss = loss + c.forward_weight * fwd
        out["loss"] = loss
        return out

    @torch.no_grad()
    def predict(self, obs: Tensor, text_emb: Tensor | None = None) -> Tensor:
        """Actions [B, H, A] in raw units, eval mode, no gradients."""
        was = self.training
        self.eval()
        try:
            return self(obs, text_emb)["actions"]
        finally:
            self.train(was)


def num_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
