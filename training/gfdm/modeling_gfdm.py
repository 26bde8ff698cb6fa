"""GFDM: a language-conditioned forward dynamics model on diffusers' U-Nets and schedulers.

    context  o_t (and earlier frames), [B, 3 * context_frames, H, W] in [0, 1]
    text     an instruction embedding [B, text_dim] (open_clip text tower, cached in the corpus;
             see text.py) or the learned null embedding -> linear -> one cross-attention token
    target   the future o_t+k .. o_t+Tk in the U-Net's space:
               unet2d: pixels in [-1, 1] stacked on channels [B, 3T, H, W]; with ``residual`` the
                       change 2 (o_t+k - o_t), so copying o_t is the zero prediction
               svd:    SVD VAE latents [B, T, 4, H/8, W/8] (scaled), o_t's latent concatenated to
                       every frame's input as in SVD img2vid
    U-Net    UNet2DConditionModel (unet2d) or UNetSpatioTemporalConditionModel (svd), built from
             the config with random weights (svd: optionally SVD img2vid weights from a local path)

Objectives (``config.objective``):
- ``diffusion``: EDM (Karras et al. 2022) as SVD is trained: log sigma ~ N(p_mean, p_std^2),
  input scaling, skip/output preconditioning and loss weight from diffusers' ``EDMEulerScheduler``
  (``precondition_inputs/_noise/_outputs``), sampled with the same scheduler's Euler steps.
- ``regression``: the U-Net run once on a zero noisy input at one fixed noise level, its output
  the prediction, trained with a (changed-pixel weighted) MSE: a deterministic variant.

``extract_features`` is what the policy reads (as the release does): the outputs of the U-Net's
up blocks during one denoising pass from noise, plus the prediction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_gfdm import GFDMConfig

# The regression objective's fixed noise level: the U-Net's timestep embedding sees this c_noise.
_REGRESSION_SIGMA = 1.0


@dataclass
class GFDMFeatures:
    """What ``GFDM.extract_features`` returns.

    prediction  [B, T, 3, H, W] in [0, 1]: the predicted future frames o_t+k .. o_t+Tk
    features    one tensor per U-Net up block (coarse to fine), [B, T_f, C_i, h_i, w_i], C_i =
                ``GFDM.feature_channels[i]``, h_i = w_i = ``config.feature_sizes[i]``. T_f = T for
                svd (one feature map per predicted frame); 1 for unet2d (its frames share
                channels, so one map describes the whole predicted future).
    """

    prediction: Tensor
    features: list[Tensor]


class GFDM(nn.Module):
    def __init__(self, config: GFDMConfig, load_pretrained: bool = True):
        super().__init__()
        self.config = config
        c = config
        # learned "no instruction" embedding: clips without language, dropped instructions
        self.null_text = nn.Parameter(torch.randn(c.text_dim) * 0.02)
        self.text_proj = nn.Linear(c.text_dim, c.cross_attention_dim)
        if c.backbone == "unet2d":
            from diffusers import UNet2DConditionModel

            self.unet = UNet2DConditionModel(
                sample_size=c.latent_size,
                in_channels=(3 * c.context_frames + 3 * c.future_frames) * c.patch_size**2,
                out_channels=3 * c.future_frames * c.patch_size**2,
                down_block_types=c.down_block_types,
                up_block_types=c.up_block_types,
                block_out_channels=c.block_out_channels,
                layers_per_block=c.layers_per_block,
                cross_attention_dim=c.cross_attention_dim,
                attention_head_dim=c.attention_head_dim,
                norm_num_groups=c.norm_num_groups,
            )
            self.vae = None
        else:
            from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

            self.unet = UNetSpatioTemporalConditionModel(
                sample_size=c.latent_size,
                in_channels=2 * c.latent_channels,
                out_channels=c.latent_channels,
                block_out_channels=c.block_out_channels,
                layers_per_block=c.layers_per_block,
                cross_attention_dim=c.cross_attention_dim,
                num_frames=c.num_frames,
                num_attention_heads=tuple(max(1, ch // c.attention_head_dim) for ch in c.block_out_channels),
            )
            # SVD's VAE: image encoder of Stable Diffusion, temporal decoder; frozen
            self.vae = AutoencoderKLTemporalDecoder(
                block_out_channels=c.vae_block_out_channels,
                layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * len(c.vae_block_out_channels),
                latent_channels=c.latent_channels,
                sample_size=c.image_size,
                scaling_factor=c.vae_scaling_factor,
            )
            self.vae.requires_grad_(False)
            if c.pretrained_path and load_pretrained:
                self.load_svd_weights(c.pretrained_path)

    # --- weights ---------------------------------------------------------------------------
    def load_svd_weights(self, path: str | Path) -> None:
        """Fill the U-Net and VAE from a local SVD img2vid folder in diffusers layout
        (``unet/`` and ``vae/`` with config.json + safetensors). The text projection and null
        embedding stay random (SVD has no text)."""
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"pretrained SVD weights not found: {path}")
        for sub in ("unet", "vae"):
            if not (path / sub).is_dir():
                raise FileNotFoundError(f"pretrained SVD weights not found: {path / sub} (expected diffusers layout)")
        unet = UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", local_files_only=True)
        self.unet.load_state_dict(unet.state_dict(), strict=True)
        self.vae.load_state_dict(vae.state_dict(), strict=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # frozen
        return self

    @property
    def feature_channels(self) -> list[int]:
        """C_i of each entry of ``GFDMFeatures.features`` (coarse to fine)."""
        return self.config.feature_channels

    # --- spaces ----------------------------------------------------------------------------
    def _text_tokens(self, text_emb: Tensor | None, batch: int, has_text: Tensor | None = None) -> Tensor:
        """[B, 1, cross_attention_dim]; rows without text (``text_emb`` None, or ``has_text``
        False) use the learned null embedding."""
        null = self.null_text.to(self.text_proj.weight.dtype).expand(batch, -1)
        if text_emb is None:
            emb = null
        else:
            emb = text_emb.to(null.dtype)
            if has_text is not None:
                emb = torch.where(has_text.view(-1, 1).to(emb.device), emb, null)
        return self.text_proj(emb).unsqueeze(1)

    def _encode_latents(self, frames: Tensor) -> Tensor:
        """svd: frames [N, 3, H, W] in [0, 1] -> scaled VAE latents [N, 4, H/8, W/8]."""
        with torch.no_grad():
            return self.vae.encode(frames * 2 - 1).latent_dist.mode() * self.config.vae_scaling_factor

    def _target(self, obs: Tensor, future: Tensor) -> Tensor:
        """The future in the U-Net's space (see the module docstring)."""
        c = self.config
        B, T = future.shape[:2]
        if c.backbone == "svd":
            return self._encode_latents(future.flatten(0, 1)).unflatten(0, (B, T))
        now = obs[:, -3:].unsqueeze(1)
        y = 2 * (future - now) if c.residual else future * 2 - 1
        return y.flatten(1, 2)

    def _to_frames(self, y: Tensor, obs: Tensor) -> Tensor:
        """Inverse of ``_target``: U-Net space -> frames [B, T, 3, H, W] in [0, 1]."""
        c = self.config
        B = obs.shape[0]
        if c.backbone == "svd":
            T = y.shape[1]
            frames = self.vae.decode(y.flatten(0, 1) / c.vae_scaling_factor, num_frames=T).sample
            return ((frames.unflatten(0, (B, T)) + 1) / 2).clamp(0, 1)
        y = y.unflatten(1, (c.future_frames, 3))
        out = obs[:, -3:].unsqueeze(1) + y / 2 if c.residual else (y + 1) / 2
        return out.clamp(0, 1)

    def _condition(self, obs: Tensor) -> Tensor:
        """The context as the U-Net sees it: [-1, 1] pixels (unet2d) or o_t's latent (svd)."""
        if self.config.backbone == "svd":
            return self._encode_latents(obs[:, -3:])
        return obs * 2 - 1

    def _noise_shape(self, obs: Tensor) -> tuple[int, ...]:
        c = self.config
        B = obs.shape[0]
        if c.backbone == "svd":
            s = c.latent_size
            return (B, c.future_frames, c.latent_channels, s, s)
        return (B, 3 * c.future_frames, c.image_size, c.image_size)

    # --- the network ---------------------------------------------------------------------------
    def denoise_net(self, x: Tensor, cond: Tensor, c_noise: Tensor, text: Tensor) -> Tensor:
        """One U-Net pass: ``x`` the (scaled) noisy target, ``cond`` from ``_condition``,
        ``c_noise`` [B] the EDM noise embedding input, ``text`` [B, 1, D] tokens."""
        c = self.config
        if c.backbone == "svd":
            T = x.shape[1]
            sample = torch.cat([x, cond.unsqueeze(1).expand(-1, T, -1, -1, -1)], dim=2)
            ids = torch.tensor([c.svd_fps, c.motion_bucket_id, c.noise_aug_strength], dtype=x.dtype, device=x.device)
            return self.unet(sample, c_noise, encoder_hidden_states=text, added_time_ids=ids.expand(x.shape[0], -1)).sample
        p = c.patch_size
        inp = torch.cat([cond, x], dim=1)
        if p > 1:
            inp = F.pixel_unshuffle(inp, p)
        out = self.unet(inp, c_noise, encoder_hidden_states=text).sample
        return F.pixel_shuffle(out, p) if p > 1 else out

    def scheduler(self):
        """A fresh diffusers EDMEulerScheduler with this config's EDM constants (schedulers hold
        their step index, so each sampling call makes its own)."""
        from diffusers import EDMEulerScheduler

        c = self.config
        return EDMEulerScheduler(
            sigma_min=c.sigma_min, sigma_max=c.sigma_max, sigma_data=c.sigma_data, prediction_type="epsilon", sigma_schedule="karras"
        )

    def _changed_weight(self, obs: Tensor, future: Tensor, y: Tensor) -> Tensor | float:
        """Per-element loss weight in the target's shape: 1 + changed_weight where the frame changes."""
        c = self.config
        if c.changed_weight <= 0 or c.backbone == "svd":
            return 1.0
        changed = (future - obs[:, -3:].unsqueeze(1)).abs().amax(2, keepdim=True) > c.changed_threshold
        w = 1 + c.changed_weight * changed.expand_as(future).to(y.dtype)
        return w.flatten(1, 2)

    # --- training --------------------------------------------------------------------------
    def forward(
        self,
        obs: Tensor,
        future: Tensor,
        text_emb: Tensor | None = None,
        has_text: Tensor | None = None,
        generator: torch.Generator | None = None,
        with_features: bool = False,
    ) -> dict[str, Tensor]:
        """Training loss on a batch.

        obs [B, 3 * context_frames, H, W] and future [B, T, 3, H, W] in [0, 1]; text_emb
        [B, text_dim] or None; has_text [B] bool (False: that row uses the null embedding).
        In training mode a ``lang_dropout`` fraction of rows also uses the null embedding.
        Returns loss, mse (unweighted, target space) and, for diffusion, sigma_mean.
        ``with_features`` (regression only): also ``features``, the ``GFDMFeatures`` of the same
        U-Net pass (what ``extract_features`` returns), with gradients."""
        c = self.config
        B = obs.shape[0]
        if text_emb is not None and self.training and c.lang_dropout > 0:
            keep = torch.rand(B, device=obs.device, generator=generator) >= c.lang_dropout
            has_text = keep if has_text is None else has_text.to(obs.device) & keep
        text = self._text_tokens(text_emb, B, has_text)
        cond = self._condition(obs)
        y = self._target(obs, future)
        w = self._changed_weight(obs, future, y)
        if c.objective == "regression":
            c_noise = torch.full((B,), 0.25 * torch.log(torch.tensor(_REGRESSION_SIGMA)).item(), device=obs.device)
            passes: list[list[Tensor]] = []
            with self._capture_up_blocks(passes) if with_features else contextlib.nullcontext():
                pred = self.denoise_net(torch.zeros_like(y), cond, c_noise, text)
            err = (pred.float() - y.float()) ** 2
            out = {"loss": (w * err).mean(), "mse": err.mean().detach()}
            if with_features:  # the same pass extract_features makes (regression has one), with gradients
                out["features"] = self._features(self._to_frames(pred.float(), obs), passes[0])
            return out
        sched = self.scheduler()
        shape = (B,) + (1,) * (y.dim() - 1)
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(shape, device=obs.device, generator=generator))
        noisy = y + sigma * torch.randn(y.shape, device=y.device, generator=generator)
        out = self.denoise_net(sched.precondition_inputs(noisy, sigma), cond, sched.precondition_noise(sigma.flatten()), text)
        denoised = sched.precondition_outputs(noisy, out.float(), sigma)
        weight = (sigma**2 + c.sigma_data**2) / (sigma * c.sigma_data) ** 2  # EDM's lambda(sigma)
        err = (denoised - y.float()) ** 2
        return {"loss": (weight * w * err).mean(), "mse": err.mean().detach(), "sigma_mean": sigma.mean().detach()}

    # --- inference -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _capture_up_blocks(self, store: list[list[Tensor]]):
        """Record each up block's output of every U-Net pass made inside the block: one list per pass."""
        current: list[Tensor] = []

        def hook(_module, _inputs, output):
            current.append(output[0] if isinstance(output, tuple) else output)
            if len(current) == len(self.unet.up_blocks):
                store.append(list(current))
                current.clear()

        handles = [b.register_forward_hook(hook) for b in self.unet.up_blocks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def predict(
        self, obs: Tensor, text_emb: Tensor | None = None, *, num_steps: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Predicted future frames [B, T, 3, H, W] in [0, 1] (``num_steps`` Euler steps for
        diffusion, default ``config.num_inference_steps``; one pass for regression)."""
        return self.extract_features(obs, text_emb, num_steps=num_steps or self.config.num_inference_steps, generator=generator).prediction

    def extract_features(
        self, obs: Tensor, text_emb: Tensor | None, *, num_steps: int = 1, generator: torch.Generator | None = None
    ) -> GFDMFeatures:
        """Prediction and U-Net up-block features for a batch of (o_t, instruction).

        obs: float [B, 3 * context_frames, H, W] in [0, 1], o_t last. text_emb: [B, text_dim] or
        None (the learned null embedding). num_steps: Euler steps of the EDM sampler from pure
        noise at sigma_max (diffusion; ignored by regression, which always runs one pass).
        ``features`` are the up-block outputs of the *first* pass (from noise), as the released
        policy reads them; ``prediction`` is the sample after ``num_steps``. Runs with or without
        gradients (it does not switch them off itself: wrap it in ``torch.no_grad`` for a frozen
        GFDM). See ``GFDMFeatures`` for shapes."""
        c = self.config
        B = obs.shape[0]
        if obs.dim() != 4 or obs.shape[1] != 3 * c.context_frames or obs.shape[-1] != c.image_size:
            raise ValueError(f"obs must be [B, {3 * c.context_frames}, {c.image_size}, {c.image_size}], got {list(obs.shape)}")
        text = self._text_tokens(text_emb, B)
        cond = self._condition(obs)
        passes: list[list[Tensor]] = []
        with self._capture_up_blocks(passes):
            if c.objective == "regression":
                c_noise = torch.full((B,), 0.25 * torch.log(torch.tensor(_REGRESSION_SIGMA)).item(), device=obs.device)
                y = self.denoise_net(torch.zeros(self._noise_shape(obs), device=obs.device, dtype=cond.dtype), cond, c_noise, text)
            else:
                y = self._sample(cond, text, self._noise_shape(obs), num_steps, generator)
        return self._features(self._to_frames(y.float(), obs), passes[0])

    def _features(self, frames: Tensor, up_blocks: list[Tensor]) -> GFDMFeatures:
        """The prediction [B, T, 3, H, W] and one pass's up-block outputs as ``GFDMFeatures``."""
        B, T = frames.shape[:2]
        per_frame = self.config.backbone == "svd"
        return GFDMFeatures(prediction=frames, features=[f.unflatten(0, (B, T)) if per_frame else f.unsqueeze(1) for f in up_blocks])

    def _sample(self, cond: Tensor, text: Tensor, shape: tuple[int, ...], num_steps: int, generator: torch.Generator | None) -> Tensor:
        sched = self.scheduler()
        sched.set_timesteps(max(1, int(num_steps)), device=cond.device)
        x = torch.randn(shape, device=cond.device, generator=generator) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            out = self.denoise_net(inp.to(cond.dtype), cond, t.expand(shape[0]).to(cond.dtype), text)
            x = sched.step(out.float(), t, x, generator=generator).prev_sample
        return x


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def changed_mask(obs: Tensor, future: Tensor, threshold: float = 0.05) -> Tensor:
    """[B, T, 1, H, W] bool: pixels whose |future - o_t| exceeds ``threshold`` in any channel."""
    return (future - obs[:, -3:].unsqueeze(1)).abs().amax(2, keepdim=True) > threshold


def psnr(pred: Tensor, true: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of frames in [0, 1] (over ``mask`` only when given), from the mean squared error
    over all selected elements."""
    err = (pred.float() - true.float()) ** 2
    if mask is not None:
        m = mask.expand_as(err)
        if not bool(m.any()):
            return float("nan")
        mse = err[m].mean()
    else:
        mse = err.mean()
    return float(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
