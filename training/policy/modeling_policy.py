"""The DeFI policy: the pretrained forward model imagines the future, the pretrained inverse model
reads the action that leads there, a head maps that latent action to a chunk of robot actions.

Data flow (shapes as in the released ``VPP_policy.py`` of LogosRoboticsGroup/DeFi; the code is ours):

    obs [B, 3c, S, S], instruction embedding [B, D]
      -> GFDM.extract_features (frozen, one pass): prediction [B, T, 3, S, S], up-block features
      -> FeatureProjection (trainable): tokens of the predicted future in the GIDM's input space,
         tokens(prediction) + a zero-initialised correction from the features, so at step 0 a
         pretrained GIDM reads (o_t, predicted o_t+k) exactly as in its own pretraining
      -> GIDM.encode_tokens (trainable, decoder unused): latent action tokens z [B, Q, W]
      -> head (trainable) on the conditioning tokens [z, GFDM features, instruction, state]
         -> actions [B, H, A]

Conditioning tokens (each [B, n, head_dim]): z as one vector or, with ``latent_tokens``, its Q
tokens; the GFDM's up-block features mean-pooled to one vector or, with ``resampler_queries`` N,
resampled to N tokens by a Perceiver (so the head's input does not depend on the feature maps'
size); the instruction; and, with ``state_dim``, the proprioception. Heads: ``mlp`` (all tokens
flattened), ``transformer`` (H action queries over the tokens, ACT-style), ``diffusion`` (a
transformer that denoises the standardised chunk, cross-attending to the tokens, trained on
diffusers' DDPM noise and sampled with DDIM or DDPM, as the release's head).

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


def sincos_2d(h: int, w: int, dim: int, device=None) -> Tensor:
    """Fixed 2-D sine-cosine position codes [h * w, dim] of normalised (y, x) in [0, 1]: the same
    code for the same relative place at every feature-map size."""
    n = dim // 4
    freqs = torch.pi * 2.0 ** torch.arange(n, device=device, dtype=torch.float32)
    ys = torch.linspace(0, 1, h, device=device)[:, None].expand(h, w).reshape(-1, 1) * freqs
    xs = torch.linspace(0, 1, w, device=device)[None, :].expand(h, w).reshape(-1, 1) * freqs
    out = torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1)
    return F.pad(out, (0, dim - out.shape[1]))


class ResamplerLayer(nn.Module):
    """Latent queries attend to [inputs; queries] (Flamingo's Perceiver resampler), then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        qn = self.norm_q(q)
        kv = torch.cat([self.norm_x(x), qn], dim=1)
        q = q + self.attn(qn, kv, kv, need_weights=False)[0]
        return q + self.ff(q)


class PerceiverResampler(nn.Module):
    """GFDM up-block features (list of [B, T, C_i, h_i, w_i]) -> [B, N, dim]: every position of
    every map and frame is a token (projected, plus a per-level embedding and a 2-D position code
    of its relative place); N learned queries read them. N does not depend on the maps' size."""

    def __init__(self, channels: list[int], dim: int, num_queries: int, depth: int = 2, heads: int = 4):
        super().__init__()
        self.inp = nn.ModuleList(nn.Linear(c, dim) for c in channels)
        self.level = nn.Parameter(torch.zeros(len(channels), dim))
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: list[Tensor]) -> Tensor:
        tokens = []
        for i, f in enumerate(feats):
            B, T, C, h, w = f.shape
            x = self.inp[i](f.float().flatten(3).transpose(2, 3))  # [B, T, h*w, dim]
            x = x + self.level[i] + sincos_2d(h, w, x.shape[-1], x.device)
            tokens.append(x.flatten(1, 2))
        x = torch.cat(tokens, dim=1)
        q = self.queries.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, x)
        return self.norm(q)


class MLPHead(nn.Module):
    """All conditioning tokens flattened -> an MLP -> the chunk."""

    def __init__(self, n_cond: int, dim: int, depth: int, horizon: int, action_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_cond * dim, dim), nn.GELU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, dim), nn.GELU()]
        layers.append(nn.Linear(dim, horizon * action_dim))
        self.net = nn.Sequential(*layers)
        self.shape = (horizon, action_dim)

    def forward(self, cond: Tensor) -> Tensor:
        return self.net(cond.flatten(1)).view(-1, *self.shape)


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

    def forward(self, cond: Tensor) -> Tensor:
        c = cond + self.cond_pos
        x = torch.cat([self.queries.expand(c.shape[0], -1, -1), c], dim=1)
        return self.out(self.body(x)[:, : self.horizon])


class DiffusionHead(nn.Module):
    """A diffusion-transformer action head: the noisy standardised chunk [B, H, A] (one token per
    step, plus the noise level's embedding) self-attends and cross-attends to the conditioning
    tokens; it predicts the noise (epsilon). Training noise: diffusers' ``DDPMScheduler``
    (squared-cosine betas); sampling: a ``DDIMScheduler`` or ``DDPMScheduler`` built from the same
    config, ``infer_steps`` steps, from noise drawn with the caller's generator (so a sample is
    deterministic given the generator's seed)."""

    def __init__(
        self,
        n_cond: int,
        dim: int,
        depth: int,
        horizon: int,
        action_dim: int,
        train_steps: int = 100,
        infer_steps: int = 10,
        sampler: str = "ddim",
        heads: int = 4,
    ):
        super().__init__()
        from diffusers import DDPMScheduler
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.noise = DDPMScheduler(
            num_train_timesteps=train_steps, beta_schedule="squaredcos_cap_v2", clip_sample=False, prediction_type="epsilon"
        )
        self.infer_steps, self.sampler, self.shape = infer_steps, sampler, (horizon, action_dim)
        self.time_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_emb = TimestepEmbedding(dim, dim)
        self.inp = nn.Linear(action_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, horizon, dim) * 0.02)
        self.cond_pos = nn.Parameter(torch.randn(1, n_cond, dim) * 0.02)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, 0.0, activation="gelu", batch_first=True, norm_first=True)
        self.body = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(dim))
        self.out = nn.Linear(dim, action_dim)

    def denoise(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Predicted noise [B, H, A] of the noisy chunk ``x`` at noise levels ``t`` [B]."""
        temb = self.time_emb(self.time_proj(t).to(x.dtype))[:, None]
        h = self.inp(x) + self.pos + temb
        memory = torch.cat([cond + self.cond_pos, temb], dim=1)
        return self.out(self.body(h, memory))

    def training_terms(self, target: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(per-element squared error of the predicted noise [B, H, A], the one-step estimate of the
        clean chunk [B, H, A]) at a random noise level per item."""
        t = torch.randint(0, self.noise.config.num_train_timesteps, (target.shape[0],), device=target.device)
        eps = torch.randn_like(target)
        noisy = self.noise.add_noise(target, eps, t)
        pred = self.denoise(noisy, t, cond)
        abar = self.noise.alphas_cumprod.to(target.device)[t].view(-1, 1, 1)
        x0 = (noisy - (1 - abar).sqrt() * pred) / abar.sqrt()
        return (pred - eps) ** 2, x0

    def sample(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A standardised chunk [B, H, A] denoised from Gaussian noise in ``infer_steps`` steps."""
        from diffusers import DDIMScheduler, DDPMScheduler

        sched = (DDIMScheduler if self.sampler == "ddim" else DDPMScheduler).from_config(self.noise.config)
        sched.set_timesteps(self.infer_steps, device=cond.device)
        gen_device = generator.device if generator is not None else cond.device
        x = torch.randn((cond.shape[0], *self.shape), generator=generator, device=gen_device).to(cond.device)
        for t in sched.timesteps:
            eps = self.denoise(x, t.expand(x.shape[0]).to(cond.device), cond)
            x = sched.step(eps, t, x, generator=generator).prev_sample
        return x


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
        self.state = nn.Linear(c.state_dim, d) if c.state_dim else None
        if c.state_dim:
            self.register_buffer("state_mean", torch.zeros(c.state_dim))
            self.register_buffer("state_std", torch.ones(c.state_dim))
        n_cond = (1 if c.text_dim else 0) + (1 if c.state_dim else 0)
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
            if c.latent_tokens:
                self.latent = nn.Linear(ic.code_width, d)
                n_cond += ic.num_action_tokens
            else:
                self.latent = nn.Linear(ic.num_action_tokens * ic.code_width, d)
                n_cond += 1
            if c.resampler_queries:
                self.resampler = PerceiverResampler(channels, d, c.resampler_queries, c.resampler_depth)
                n_cond += c.resampler_queries
            else:
                self.pooled = nn.Linear(sum(channels), d)
                n_cond += 1
        else:
            self.gfdm = self.gidm = None
            self.image = ImageEncoder(3 * c.context_frames, c.bc_width, d)
            n_cond += 1
        if c.head == "diffusion":
            self.head = DiffusionHead(
                n_cond, d, c.head_depth, c.horizon, c.action_dim, c.diffusion_train_steps, c.diffusion_infer_steps, c.diffusion_sampler
            )
        else:
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
    def _text_and_state(self, text_emb: Tensor | None, state: Tensor | None, B: int, device) -> list[Tensor]:
        c, out = self.config, []
        if self.text is not None:
            if text_emb is None:
                text_emb = torch.zeros(B, c.text_dim, device=device)
            out.append(self.text(text_emb.float())[:, None])
        if self.state is not None:
            if state is None or state.shape != (B, c.state_dim):
                got = "none" if state is None else list(state.shape)
                raise ValueError(f"this policy takes proprioception: state must be [B, {c.state_dim}] (observation.state), got {got}")
            out.append(self.state((state.float() - self.state_mean) / self.state_std)[:, None])
        return out

    def features(
        self, obs: Tensor, text_emb: Tensor | None, state: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """The conditioning of the head: ``cond`` [B, n_cond, head_dim] (tokens: latent action,
        GFDM features, instruction, state) and, with the future branch, ``z`` [B, Q, W],
        ``tok_t``, ``tok_future`` (GIDM input tokens), ``prediction`` and the bottleneck's
        ``bottleneck_loss``. ``generator``: the noise a diffusion GFDM starts its pass from."""
        c = self.config
        B = obs.shape[0]
        if obs.shape[1:] != (3 * c.context_frames, c.image_size, c.image_size):
            raise ValueError(f"obs must be [B, {3 * c.context_frames}, {c.image_size}, {c.image_size}], got {list(obs.shape)}")
        cond = self._text_and_state(text_emb, state, B, obs.device)
        if not c.future_branch:
            return {"cond": torch.cat([self.image(obs)[:, None], *cond], dim=1)}
        g_text = text_emb if self.gfdm.config.text_dim == c.text_dim else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.gfdm_trainable):
            out = self.gfdm.extract_features(obs, g_text, num_steps=c.gfdm_steps, generator=generator)
        feats = [f.float() for f in out.features]
        pred = out.prediction[:, 0].float().clamp(0, 1)  # the first predicted frame: o_t+k
        tok_t = self.gidm.tokens(obs[:, -3:])
        tok_future = self.gidm.tokens(pred) + self.project(feats)
        lang = text_emb if self.gidm.config.lang_dim else None
        z, _, extra = self.gidm.encode_tokens(tok_t, tok_future, lang)
        latent = self.latent(z) if c.latent_tokens else self.latent(z.flatten(1))[:, None]
        if c.resampler_queries:
            gfdm_tokens = self.resampler(feats)
        else:
            gfdm_tokens = self.pooled(torch.cat([f.mean(dim=(1, 3, 4)) for f in feats], dim=-1))[:, None]
        return {
            "cond": torch.cat([latent, gfdm_tokens, *cond], dim=1),
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
        state: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """obs [B, 3c, S, S] in [0, 1] (o_t last); text_emb [B, text_dim]; actions [B, H, A] (raw
        units) and mask [B, H] bool for the loss; future [B, 3, S, S] the true o_t+k (forward and
        consistency losses only); state [B, state_dim] the proprioception (when the policy takes
        it); generator: the noise of a diffusion GFDM's pass and a diffusion head's sample when
        predicting (training draws from the global generator the recipe seeds). Returns ``actions`` [B, H, A] (raw
        units) and, with targets, ``loss``, ``action_mse`` (standardised) and ``action_l1`` (raw
        units), all 0-dim. A diffusion head's loss is the masked MSE of its predicted noise, and
        its ``actions``/``action_mse``/``action_l1`` with targets are the one-step estimate of the
        clean chunk at the sampled noise level (a training signal, not a sample)."""
        c = self.config
        f = self.features(obs, text_emb, state, generator if actions is None else None)
        diffusion = c.head == "diffusion"
        if actions is None:
            norm = self.head.sample(f["cond"], generator) if diffusion else self.head(f["cond"])
            return {"actions": norm * self.action_std + self.action_mean}
        if mask is None:
            mask = torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
        target = (actions - self.action_mean) / self.action_std
        m = mask.unsqueeze(-1).to(target.dtype)
        denom = m.sum().clamp_min(1.0) * actions.shape[-1]
        if diffusion:
            sq_err, norm = self.head.training_terms(target, f["cond"])
            loss = (sq_err * m).sum() / denom
            mse = ((norm - target) ** 2 * m).sum() / denom
        else:
            norm = self.head(f["cond"])
            mse = loss = ((norm - target) ** 2 * m).sum() / denom
        out: dict[str, Tensor] = {"actions": norm * self.action_std + self.action_mean}
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
    def predict(
        self, obs: Tensor, text_emb: Tensor | None = None, state: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Actions [B, H, A] in raw units, eval mode, no gradients. A diffusion head samples with
        ``generator`` (the same seed gives the same chunk)."""
        was = self.training
        self.eval()
        try:
            return self(obs, text_emb, state=state, generator=generator)["actions"]
        finally:
            self.train(was)


def num_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(policy: DeFiPolicy) -> dict[str, tuple[int, int]]:
    """Part -> (parameters, trainable parameters), parts in data-flow order: ``gfdm``,
    ``project``, ``gidm`` (encoder, tokenizer and codebook; its decoder is not in the policy's
    graph but is counted), ``resampler``, ``image`` (bc), ``conditioning`` (the head's input
    projections: latent, pooled GFDM features, instruction, state), ``head``."""
    parts: dict[str, list[nn.Module | None]] = {
        "gfdm": [policy.gfdm],
        "project": [getattr(policy, "project", None)],
        "gidm": [policy.gidm],
        "resampler": [getattr(policy, "resampler", None)],
        "image": [getattr(policy, "image", None)],
        "conditioning": [getattr(policy, n, None) for n in ("latent", "pooled", "text", "state")],
        "head": [policy.head],
    }
    out = {}
    for name, mods in parts.items():
        total = sum(num_parameters(m) for m in mods)
        if total:
            out[name] = (total, sum(num_parameters(m, trainable_only=True) for m in mods))
    return out
