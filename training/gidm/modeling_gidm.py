"""GIDM: a latent inverse-dynamics model (latent action model), readable in one sitting.

    encoder:  [action queries | per patch (o_t, o_t+k - o_t) | lang] -> transformer -> queries
              -> bottleneck (continuous / VQ / FSQ) -> z [B, Q, W]
              (or, with config.keypoints = K: conv net -> K soft-argmax keypoints per frame ->
              linear map of [keypoints(o_t), their motion to o_t+k] -> bottleneck)
    decoder:  [z | tokens(o_t) | lang] -> transformer -> per-patch residual -> tokens(o_t+k)

Tokens are pixel patches (input_space="pixels") or the patch features of a frozen image encoder
(input_space="features", as UniVLA's stage-1 model does with DINOv2). The decoder sees o_t but not
o_t+k, so whatever it needs to predict the change must pass through the small latent z: that is
the latent action. The shape follows UniVLA's latent action model (learned action queries in a
spatio-temporal transformer, VQ with commitment 0.25 and dead-code restart); the code is ours.

``forward`` returns a dict of losses and diagnostics (all scalars are 0-dim tensors):
loss, recon_loss, bottleneck_loss, [kl | vq_codebook, vq_commit], code_usage, perplexity,
dead_code_restarts, latent_norm and delta_recon. delta_recon = recon loss with z shuffled across
the batch minus recon loss with the true z: about 0 means the latent carries nothing the decoder
uses (collapse); large while the probe of true actions stays poor means it copies appearance.
``forward_window`` (windows o_t, o_t+k, o_t+2k; ``additive_weight``) adds additive_error: how far
z(t -> t+2k) is from z(t -> t+k) + z(t+k -> t+2k), relative to the latents' spread. Displacements
add up over time; a latent that holds the new position instead of the move does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_gidm import GIDMConfig

# open_clip ViTs are trained on these (open_clip.constants.OPENAI_DATASET_MEAN/STD); DINOv2 on
# ImageNet statistics.
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMM_DINOV2 = {"dinov2_vitb14": "vit_base_patch14_dinov2", "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2"}


# ----------------------------------------------------------------------------------------------
# Frozen feature extractor (input_space="features")
# ----------------------------------------------------------------------------------------------
class FrozenFeatureExtractor(nn.Module):
    """Images [B, C, H, W] in [0, 1] -> patch tokens [B, N, F], never trained.

    kind: "open_clip" (an open_clip VisionTransformer), "timm" (a timm ViT; prefix tokens such as
    CLS and registers are dropped) or "external" (any module mapping [0, 1] images to [B, N, F];
    no normalisation is applied for it)."""

    def __init__(self, backbone: nn.Module, kind: str, mean=None, std=None):
        super().__init__()
        assert kind in ("open_clip", "timm", "external"), kind
        self.backbone, self.kind = backbone, kind
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: dropout / norm statistics stay in inference mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std if self.normalize else images
        if self.kind == "open_clip":
            _, tokens = self.backbone(x)  # output_tokens=True -> (pooled, patch tokens)
        elif self.kind == "timm":
            tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        else:
            tokens = self.backbone(x)
        return tokens.float()


def build_feature_extractor(config: GIDMConfig, load_weights: bool = True) -> FrozenFeatureExtractor:
    """The frozen encoder named by ``config.feature_encoder``.

    load_weights=False builds the architecture only (``load_checkpoint`` then fills it from the
    checkpoint, which stores the frozen weights too, so labels never depend on a file elsewhere)."""
    kind, _, name = config.feature_encoder.partition(":")
    if kind == "external":
        raise ValueError("feature_encoder='external': pass the module, GIDM(config, feature_extractor=...)")
    if kind == "open_clip":
        import open_clip

        pretrained = config.feature_weights if load_weights else None
        model = open_clip.create_model(name, pretrained=pretrained)
        visual = model.visual
        visual.output_tokens = True
        return FrozenFeatureExtractor(visual, "open_clip", OPENAI_MEAN, OPENAI_STD)
    # DINOv2 through timm, weights from local disk only.
    import timm

    backbone = timm.create_model(TIMM_DINOV2[kind], pretrained=False, img_size=config.image_size, num_classes=0)
    if load_weights:
        path = Path(config.feature_weights) if config.feature_weights else None
        if path is None or not path.is_file():
            raise NotImplementedError(
                f"feature_encoder={config.feature_encoder!r} needs DINOv2 weights on local disk: set "
                f"feature_weights to a timm '{TIMM_DINOV2[kind]}' state dict (.safetensors); got "
                f"{config.feature_weights!r}. Downloading from a hub is not supported here."
            )
        from safetensors.torch import load_file

        backbone.load_state_dict(load_file(str(path)))
    return FrozenFeatureExtractor(backbone, "timm", IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------------------------
# Bottlenecks: h [B, Q, model_dim] -> z [B, Q, W], code ids [B, Q] (or None), losses
# ----------------------------------------------------------------------------------------------
class ContinuousBottleneck(nn.Module):
    """beta-VAE latent: z ~ N(mu, sigma) while training, z = mu otherwise; KL per element."""

    def __init__(self, in_dim: int, latent_dim: int, kl_beta: float):
        super().__init__()
        self.proj, self.kl_beta = nn.Linear(in_dim, 2 * latent_dim), kl_beta
        # Start with small noise (sigma ~ 0.1): with sigma = 1 the tiny initial mean is drowned,
        # the decoder learns to ignore z and the posterior collapses (seen on moving squares).
        with torch.no_grad():
            self.proj.bias[latent_dim:].fill_(-4.0)

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor | None, dict]:
        mu, logvar = self.proj(h).chunk(2, dim=-1)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return z, None, {"kl": kl, "bottleneck_loss": self.kl_beta * kl, "mean": mu}


class VQBottleneck(nn.Module):
    """Vector quantiser (VQ-VAE): nearest code, straight-through gradient, codebook loss +
    beta x commitment loss. A code used fewer than ``dead_threshold`` times over the last
    ``restart_interval`` training steps is reset to a random encoder output of the current batch
    (UniVLA restarts dead codes the same way), so the codebook does not collapse to a few codes."""

    def __init__(
        self,
        in_dim: int,
        num_codes: int,
        code_dim: int,
        beta: float,
        dead_threshold: float,
        restart_interval: int,
        noise_substitution: bool = False,
    ):
        super().__init__()
        # NSVQ (Vali & Bäckström 2022; LAPA's quantiser): while training, z + |z - q| * v / |v|
        # with v ~ N(0, I) replaces the straight-through estimator: the decoder sees a vector as
        # far from z as the code is, the encoder gets its gradient through z, the codebook
        # through |z - q|; no commitment loss. Outside training the code q itself.
        self.noise_substitution = noise_substitution
        self.proj = nn.Linear(in_dim, code_dim)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim) / math.sqrt(code_dim))
        self.beta, self.dead_threshold, self.restart_interval = beta, dead_threshold, restart_interval
        # Saved with the model so a resumed run restarts the same codes at the same steps.
        self.register_buffer("usage", torch.zeros(num_codes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Finetuning inside a policy: codes keep their meaning (no restarts, no usage counting)
        # while the codebook still trains through the VQ loss. Not saved: a runtime switch.
        self.frozen_codes = False

    @torch.no_grad()
    def _restart_dead_codes(self, z_flat: Tensor) -> int:
        """Runs before the codebook is used in this step's graph (in-place edits after use would
        break autograd). Returns the number of codes restarted."""
        dead = self.usage < self.dead_threshold
        n = int(dead.sum())
        if n:
            pick = torch.randint(0, z_flat.shape[0], (n,), device=z_flat.device)
            self.codebook.data[dead] = z_flat[pick].to(self.codebook.dtype)
        self.usage.zero_()
        return n

    def _count_step(self, z_flat: Tensor) -> int:
        """In training (codes not frozen): every ``restart_interval`` steps, restart the dead codes
        from this batch; count the step. Returns the number of codes restarted."""
        restarts = 0
        if self.training and not self.frozen_codes:
            if self.restart_interval and int(self.steps) > 0 and int(self.steps) % self.restart_interval == 0:
                restarts = self._restart_dead_codes(z_flat.detach())
            self.steps += 1
        return restarts

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, dict]:  # noqa: ARG002 (the bottlenecks' one signature)
        z = self.proj(h)
        z_flat = z.reshape(-1, z.shape[-1])
        restarts = self._count_step(z_flat)
        with torch.no_grad():
            dist = torch.cdist(z_flat.float(), self.codebook.float())
            ids = dist.argmin(dim=-1)
        q = self.codebook[ids].view_as(z)
        codebook_loss = F.mse_loss(q, z.detach())
        commit_loss = F.mse_loss(z, q.detach())
        if self.training and not self.frozen_codes:
            self.usage += torch.bincount(ids, minlength=self.codebook.shape[0]).to(self.usage.dtype)
        extra = {"vq_codebook": codebook_loss, "vq_commit": commit_loss, "dead_code_restarts": torch.tensor(float(restarts))}
        if self.noise_substitution:
            if self.training:
                v = torch.randn_like(z)
                z_q = z + (z - q).norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True).clamp_min(1e-8) * v
            else:
                z_q = q
            return z_q, ids.view(z.shape[:-1]), {**extra, "bottleneck_loss": z.new_zeros(())}
        z_q = z + (q - z).detach()  # straight-through estimator
        return z_q, ids.view(z.shape[:-1]), {**extra, "bottleneck_loss": codebook_loss + self.beta * commit_loss}


class ResidualVQBottleneck(VQBottleneck):
    """Residual VQ: ``stages`` codebooks of ``num_codes`` each; stage s quantises what stages
    0..s-1 left (z - q_0 - ... - q_s-1) and the code vector is q_0 + ... + q_S-1, so S stages of K
    codes name K^S vectors at the cost of S x K. Codebook loss per stage, commitment and
    straight-through on the sum, dead codes restarted per stage from that stage's residuals.
    ``codes`` are the first stage's ids (the coarse action, what ``dominant_code`` counts);
    ``stage_codes`` [B, Q, S] all of them."""

    def __init__(self, in_dim: int, num_codes: int, code_dim: int, beta: float, dead_threshold: float, restart_interval: int, stages: int):
        super().__init__(in_dim, num_codes, code_dim, beta, dead_threshold, restart_interval)
        # later stages start small: they code what the first one left
        scale = torch.tensor([1.0] + [0.3**s for s in range(1, stages)]).view(stages, 1, 1)
        self.codebook = nn.Parameter(torch.randn(stages, num_codes, code_dim) / math.sqrt(code_dim) * scale)
        self.register_buffer("usage", torch.zeros(stages, num_codes))

    @torch.no_grad()
    def _residual_ids(self, r: Tensor, s: int) -> Tensor:
        return torch.cdist(r.float(), self.codebook[s].float()).argmin(dim=-1)

    @torch.no_grad()
    def _restart_dead_codes(self, z_flat: Tensor) -> int:
        n, r = 0, z_flat
        for s in range(self.codebook.shape[0]):
            dead = self.usage[s] < self.dead_threshold
            k = int(dead.sum())
            if k:
                pick = torch.randint(0, r.shape[0], (k,), device=r.device)
                self.codebook.data[s, dead] = r[pick].to(self.codebook.dtype)
            n += k
            r = r - self.codebook[s][self._residual_ids(r, s)]
        self.usage.zero_()
        return n

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, dict]:  # noqa: ARG002 (the bottlenecks' one signature)
        z = self.proj(h)
        z_flat = z.reshape(-1, z.shape[-1])
        restarts = self._count_step(z_flat)
        r, q, ids, codebook_loss = z_flat.detach(), 0, [], 0
        for s in range(self.codebook.shape[0]):
            i = self._residual_ids(r, s)
            qs = self.codebook[s][i]
            codebook_loss = codebook_loss + F.mse_loss(qs, r)
            r, q = r - qs.detach(), q + qs
            ids.append(i)
            if self.training and not self.frozen_codes:
                self.usage[s] += torch.bincount(i, minlength=self.codebook.shape[1]).to(self.usage.dtype)
        q = q.view_as(z)
        commit_loss = F.mse_loss(z, q.detach())
        z_q = z + (q - z).detach()
        stage_ids = torch.stack(ids, dim=-1).view(*z.shape[:-1], -1)
        return (
            z_q,
            stage_ids[..., 0],
            {
                "vq_codebook": codebook_loss,
                "vq_commit": commit_loss,
                "bottleneck_loss": codebook_loss + self.beta * commit_loss,
                "dead_code_restarts": torch.tensor(float(restarts)),
                "stage_codes": stage_ids,
            },
        )


class FSQBottleneck(nn.Module):
    """Finite scalar quantisation (Mentzer et al. 2023): bound each dim to its number of levels,
    round with a straight-through gradient; no codebook, no auxiliary loss."""

    def __init__(self, in_dim: int, levels: tuple[int, ...]):
        super().__init__()
        self.proj = nn.Linear(in_dim, len(levels))
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), dim=0)
        self.register_buffer("basis", basis, persistent=False)

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, dict]:  # noqa: ARG002 (the bottlenecks' one signature)
        z = self.proj(h)
        half = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)  # even levels: grid is off-centre
        shift = torch.atanh(offset / half)
        bounded = torch.tanh(z + shift) * half - offset
        rounded = bounded + (bounded.round() - bounded).detach()
        width = torch.div(self.levels, 2, rounding_mode="floor")
        digits = (rounded.detach() + width).round().long()  # in [0, L-1]
        ids = (digits * self.basis).sum(dim=-1)
        return rounded / width, ids, {"bottleneck_loss": z.new_zeros(())}


def build_bottleneck(c: GIDMConfig) -> nn.Module:
    if c.bottleneck == "continuous":
        return ContinuousBottleneck(c.model_dim, c.latent_dim, c.kl_beta)
    if c.bottleneck in ("vq", "nsvq"):
        return VQBottleneck(
            c.model_dim,
            c.codebook_size,
            c.latent_dim,
            c.commitment_beta,
            c.dead_code_threshold,
            c.restart_interval,
            noise_substitution=c.bottleneck == "nsvq",
        )
    if c.bottleneck == "rvq":
        args = (c.model_dim, c.codebook_size, c.latent_dim, c.commitment_beta, c.dead_code_threshold, c.restart_interval)
        return ResidualVQBottleneck(*args, stages=c.vq_stages)
    return FSQBottleneck(c.model_dim, c.fsq_levels)


class KeypointEncoder(nn.Module):
    """Transition encoder over spatial soft-argmax keypoints (``config.keypoints``).

    A small conv net gives K heat maps per frame at half resolution; the softmax-weighted mean
    (x, y) of each map is a keypoint in [-1, 1]. The transition (o_t, o_t+k) becomes
    [keypoints(o_t), keypoints(o_t+k) - keypoints(o_t)] and one linear map turns that into the
    action-token states the bottleneck reads, so the latent is linear in the keypoints' motion."""

    def __init__(self, c: GIDMConfig):
        super().__init__()
        k, w = c.keypoints, 32
        self.net = nn.Sequential(
            nn.Conv2d(c.in_channels, w, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, k, 1),
        )
        self.log_temperature = nn.Parameter(torch.tensor(math.log(c.keypoint_temperature)))
        self.out = nn.Linear(4 * k, c.num_action_tokens * c.model_dim)
        self.q, self.d = c.num_action_tokens, c.model_dim

    def heatmaps(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> the keypoints' soft-argmax distributions [B, K, h, w] (each sums to 1)."""
        maps = self.net(images).float()  # soft-argmax in float32 (bf16 would round positions)
        B, K, h, w = maps.shape
        return torch.softmax(maps.flatten(2) / self.log_temperature.float().exp(), dim=-1).view(B, K, h, w)

    def points(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> keypoints [B, K, 2] as (x, y) in [-1, 1]."""
        p = self.heatmaps(images)
        h, w = p.shape[-2:]
        xs = torch.linspace(-1, 1, w, device=p.device, dtype=p.dtype)
        ys = torch.linspace(-1, 1, h, device=p.device, dtype=p.dtype)
        return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)

    def forward(self, img_t: Tensor, img_k: Tensor) -> Tensor:
        a, b = self.points(img_t), self.points(img_k)
        return self.out(torch.cat([a.flatten(1), (b - a).flatten(1)], dim=1)).view(-1, self.q, self.d)


def transformer(c: GIDMConfig, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        c.model_dim, c.num_heads, int(c.model_dim * c.mlp_ratio), c.dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(c.model_dim), enable_nested_tensor=False)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class GIDM(nn.Module):
    def __init__(self, config: GIDMConfig, feature_extractor: nn.Module | None = None, load_feature_weights: bool = True):
        """feature_extractor: for input_space="features", a module mapping [0, 1] images
        [B, C, H, W] to patch tokens [B, N, feature_dim] (wrapped as frozen); by default built
        from ``config.feature_encoder``."""
        super().__init__()
        c = self.config = config
        d, q = c.model_dim, c.num_action_tokens
        if c.input_space == "pixels":
            self.features = None
            token_dim = c.in_channels * c.patch_size**2
        else:
            if feature_extractor is None:
                self.features = build_feature_extractor(c, load_weights=load_feature_weights)
            elif isinstance(feature_extractor, FrozenFeatureExtractor):
                self.features = feature_extractor
            else:
                self.features = FrozenFeatureExtractor(feature_extractor, "external")
            token_dim = c.feature_dim
        self.token_dim = token_dim
        # Early fusion: one encoder token per patch holds [o_t, o_t+k - o_t] at that location, so
        # local motion is visible to the first layer. (UniVLA keeps two tokens per patch in a
        # spatio-temporal transformer; with frame tokens apart our tiny model did not learn to
        # match them within hundreds of steps on moving squares.)
        self.enc_in = None if c.keypoints else nn.Linear(2 * token_dim, d)
        self.dec_in = nn.Linear(token_dim, d)
        self.pos = nn.Parameter(torch.randn(1, c.num_patches, d) * 0.02)
        # learned action queries (none with the keypoint encoder: DDP wants no unused parameters)
        self.queries = None if c.keypoints else nn.Parameter(torch.randn(1, q, d) * 0.02)
        self.lang_enc = nn.Linear(c.lang_dim, d) if c.lang_dim else None
        self.lang_dec = nn.Linear(c.lang_dim, d) if c.lang_dim else None
        # keypoints: a conv + soft-argmax encoder replaces the transformer encoder
        self.keypoint_encoder = KeypointEncoder(c) if c.keypoints else None
        self.encoder = None if c.keypoints else transformer(c, c.enc_depth)
        self.bottleneck = build_bottleneck(c)
        self.latent_up = nn.Linear(c.code_width, d)
        self.latent_pos = nn.Parameter(torch.randn(1, q, d) * 0.02)
        self.decoder = transformer(c, c.dec_depth)
        self.head = nn.Linear(d, token_dim)
        # Zero head: the untrained decoder predicts "nothing changes" (o_t+k = o_t) instead of
        # noise, so early steps are spent on the change, not on undoing a random output.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # --- tokens --------------------------------------------------------------------------------
    def tokens(self, frames: Tensor) -> Tensor:
        """Frames [B, C, H, W] in [0, 1] -> tokens [B, N, token_dim] (pixel patches in raster
        order, or frozen patch features)."""
        c = self.config
        B, C, H, W = frames.shape
        assert (C, H, W) == (c.in_channels, c.image_size, c.image_size), (
            f"expected frames [B, {c.in_channels}, {c.image_size}, {c.image_size}], got {tuple(frames.shape)}"
        )
        if self.features is None:
            g, p = c.grid, c.patch_size
            return frames.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)
        tok = self.features(frames)
        assert tok.shape[1:] == (c.num_patches, c.feature_dim), (
            f"feature extractor gave {tuple(tok.shape[1:])}, config expects "
            f"({c.num_patches}, {c.feature_dim}) = ((image_size/patch_size)^2, feature_dim)"
        )
        return tok

    def untokens(self, tokens: Tensor) -> Tensor:
        """Inverse of ``tokens`` for pixels: [B, N, C*p*p] -> [B, C, H, W]."""
        c = self.config
        g, p = c.grid, c.patch_size
        B = tokens.shape[0]
        return tokens.reshape(B, g, g, c.in_channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, c.in_channels, c.image_size, c.image_size)

    # --- encoder / decoder ---------------------------------------------------------------------
    def _lang(self, proj: nn.Module | None, lang_emb: Tensor | None, B: int) -> list[Tensor]:
        if proj is None:
            return []
        assert lang_emb is not None, f"config.lang_dim={self.config.lang_dim}: pass lang_emb [B, lang_dim]"
        return [proj(lang_emb.float()).view(B, 1, -1)]

    def _encode(self, tok_t: Tensor, tok_k: Tensor, lang_emb: Tensor | None, sample: bool):
        B, q = tok_t.shape[0], self.config.num_action_tokens
        if self.keypoint_encoder is not None:
            h = self.keypoint_encoder(self.untokens(tok_t), self.untokens(tok_k))
            if self.lang_enc is not None:
                h = h + self._lang(self.lang_enc, lang_emb, B)[0]
            return self.bottleneck(h, sample)
        x = torch.cat(
            [
                self.queries.expand(B, -1, -1),
                self.enc_in(torch.cat([tok_t, tok_k - tok_t], dim=-1)) + self.pos,
                *self._lang(self.lang_enc, lang_emb, B),
            ],
            dim=1,
        )
        h = self.encoder(x)[:, :q]
        return self.bottleneck(h, sample)

    def _decode(self, tok_t: Tensor, z: Tensor, lang_emb: Tensor | None) -> Tensor:
        B, q = tok_t.shape[0], self.config.num_action_tokens
        lat = self.latent_up(z)
        # z enters twice: as tokens (UniVLA) and added to every patch token, which lets a small
        # decoder use it from the first steps instead of learning to attend to it first.
        x = torch.cat(
            [lat + self.latent_pos, self.dec_in(tok_t) + self.pos + lat.mean(dim=1, keepdim=True), *self._lang(self.lang_dec, lang_emb, B)],
            dim=1,
        )
        y = self.decoder(x)[:, q : q + tok_t.shape[1]]
        return tok_t + self.head(y)  # predict the change; "nothing moved" is free

    # --- public API ----------------------------------------------------------------------------
    def forward(self, obs: Tensor, next_obs: Tensor, lang_emb: Tensor | None = None, diagnostics: bool = True) -> dict[str, Tensor]:
        """obs, next_obs: frames o_t and o_t+k [B, C, H, W] float in [0, 1]; lang_emb [B, lang_dim].
        Returns losses and diagnostics (0-dim tensors; only ``loss`` carries gradient) plus
        ``z`` [B, Q, W] and ``codes`` [B, Q] (VQ/FSQ)."""
        return self._forward_tokens(self.tokens(obs), self.tokens(next_obs), lang_emb, diagnostics)

    def forward_window(self, frames: Tensor, lang_emb: Tensor | None = None, diagnostics: bool = True) -> dict[str, Tensor]:
        """frames [B, 3, C, H, W]: o_t, o_t+k, o_t+2k. Trains the three transitions t -> t+k,
        t+k -> t+2k and t -> t+2k as one batch of 3B pairs (outputs as ``forward``, over all of
        them) and adds ``additive_weight`` x ``additive_error``: |z02 - (z01 + z12)|^2 relative to
        the latents' variance over the batch (scale-free: shrinking z does not lower it), on the
        latent means."""
        B = frames.shape[0]
        assert frames.dim() == 5 and frames.shape[1] == 3, f"expected frames [B, 3, C, H, W], got {tuple(frames.shape)}"
        tok = self.tokens(frames.flatten(0, 1)).unflatten(0, (B, 3))  # each frame tokenised once
        src = torch.cat([tok[:, 0], tok[:, 1], tok[:, 0]])
        dst = torch.cat([tok[:, 1], tok[:, 2], tok[:, 2]])
        lang = lang_emb.repeat(3, 1) if lang_emb is not None else None
        out = self._forward_tokens(src, dst, lang, diagnostics, keep_mean=True)
        m01, m12, m02 = out.pop("mean").float().flatten(1).chunk(3)
        err = (m02 - m01 - m12).pow(2).sum(-1).mean()
        # relative to how much the latents vary over the batch (centred): a constant latent per
        # gap (z = v for every t -> t+k, 2v for t -> t+2k) adds up exactly but carries nothing,
        # so raw norms would let the model shrink the ratio with a constant offset
        scale = sum((m - m.mean(0)).pow(2).sum(-1).mean() for m in (m01, m12, m02)) / 3
        additive = err / scale.clamp_min(1e-8)
        out["loss"] = out["loss"] + self.config.additive_weight * additive
        out["additive_error"] = additive.detach()
        return out

    def forward_tokens(
        self, tok_t: Tensor, tok_k: Tensor, lang_emb: Tensor | None = None, diagnostics: bool = True, target: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``forward`` on tokens: encode (``tok_t``, ``tok_k``), decode, reconstruct ``target``
        (default ``tok_k``). A joint model encodes the tokens of a *predicted* o_t+k and
        reconstructs the true one, so the loss's gradient reaches the predictor through ``tok_k``."""
        return self._forward_tokens(tok_t, tok_k, lang_emb, diagnostics, target=target)

    def _forward_tokens(
        self,
        tok_t: Tensor,
        tok_k: Tensor,
        lang_emb: Tensor | None,
        diagnostics: bool,
        keep_mean: bool = False,
        target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        z, codes, extra = self._encode(tok_t, tok_k, lang_emb, sample=self.training)
        mean = extra.pop("mean", None)
        pred = self._decode(tok_t, z, lang_emb)
        tok_k = tok_k if target is None else target
        recon = F.mse_loss(pred.float(), tok_k.float())
        loss = recon
        if self.config.changed_weight > 0:
            change = (tok_k - tok_t).float().abs().mean(dim=-1, keepdim=True)  # [B, N, 1]
            w = 1 + self.config.changed_weight * change / change.mean().clamp_min(1e-8)
            loss = ((pred.float() - tok_k.float()) ** 2 * w).mean() / w.mean()
        out = {"loss": loss + extra.pop("bottleneck_loss"), "recon_loss": recon, **extra}
        out = {k: v if k == "loss" else v.detach() for k, v in out.items()}
        out["bottleneck_loss"] = (out["loss"] - loss).detach()
        if diagnostics:
            with torch.no_grad():
                out["latent_norm"] = z.detach().float().norm(dim=-1).mean()
                # The guard against a latent that carries nothing: decode with another sample's z.
                shuffled = self._decode(tok_t, z.detach().roll(1, dims=0), lang_emb)
                out["delta_recon"] = F.mse_loss(shuffled.float(), tok_k.float()) - recon.detach()
                if codes is not None:
                    out.update(code_stats(codes, self.config.num_codes))
        out["z"], out["codes"] = z.detach(), codes
        if keep_mean:
            out["mean"] = mean  # with gradient: forward_window's additivity loss
        return out

    @torch.no_grad()
    def encode(self, obs: Tensor, next_obs: Tensor, lang_emb: Tensor | None = None) -> dict[str, Tensor | None]:
        """Latent action of each transition, deterministic (continuous: the mean; VQ/FSQ: the
        code vectors) for labeling: ``z`` [B, Q, W] float and ``codes`` [B, Q] int64 (None for
        the continuous bottleneck). Does not update VQ usage statistics."""
        was = self.training
        self.eval()
        try:
            z, codes, _ = self._encode(self.tokens(obs), self.tokens(next_obs), lang_emb, sample=False)
        finally:
            self.train(was)
        return {"z": z.float(), "codes": codes}

    def encode_tokens(self, tok_t: Tensor, tok_k: Tensor, lang_emb: Tensor | None = None) -> tuple[Tensor, Tensor | None, dict]:
        """Latent action of tokens (``tokens(o_t)`` and tokens of o_t+k, real or predicted) with
        gradients, for finetuning inside a policy (``encode`` is the no-grad labeling path).
        Deterministic (continuous: the mean); a VQ bottleneck neither restarts nor counts codes
        here, whatever the train/eval mode. Returns ``z`` [B, Q, W] (straight-through for VQ),
        ``codes`` [B, Q] or None, and the bottleneck's terms (``bottleneck_loss``)."""
        vq = getattr(self.bottleneck, "frozen_codes", None)
        if vq is not None:
            self.bottleneck.frozen_codes = True
        try:
            return self._encode(tok_t, tok_k, lang_emb, sample=False)
        finally:
            if vq is not None:
                self.bottleneck.frozen_codes = vq

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def code_stats(codes: Tensor, num_codes: int) -> dict[str, Tensor]:
    """code_usage: fraction of the codebook used in this batch; perplexity: exp(entropy) of the
    batch's code histogram (1 = one code for everything, num_codes = uniform)."""
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"code_usage": (counts > 0).float().mean(), "perplexity": entropy.exp()}
