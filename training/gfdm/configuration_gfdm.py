"""Configuration of the GFDM (general forward dynamics model): predict the future from the current
frame(s) and the instruction.

One dataclass holds every knob; ``__post_init__`` validates all fields at once and names each bad
value. Builder functions give the two shapes we use:

- ``gfdm_tiny``: a diffusers ``UNet2DConditionModel`` in pixel space at 64 px that predicts o_t+k
  from o_t (frames stacked on channels), the instruction entering through cross-attention. Trains
  on a CPU in minutes.
- ``gfdm_svd``: the released shape (DeFI / VPP Step1): Stable Video Diffusion img2vid's
  ``UNetSpatioTemporalConditionModel`` over the latents of SVD's ``AutoencoderKLTemporalDecoder``,
  16 future frames at 256 px, CLIP ViT-B/32 text states (512 wide) as cross-attention in place of
  the image embedding, EDM noise with P_mean 0.7, P_std 1.6, 5% of instructions dropped.

Units: ``image_size`` is the side of the square frames in pixels; ``context_frames`` and
``future_frames`` count frames (the gap between o_t and o_t+k is a data setting, not a model one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configuration import ConfigDict

BACKBONES = ("unet2d", "svd")
# "diffusion": EDM-preconditioned denoiser, sampled with diffusers' EDMEulerScheduler in a few
#              steps; "regression": the same U-Net run once on a zero "noisy" input at a fixed
#              noise level, trained with a plain (changed-pixel weighted) MSE: deterministic.
OBJECTIVES = ("diffusion", "regression")
_DOWN_2D = ("DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D")
_UP_2D = ("UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D")


@dataclass
class GFDMConfig(ConfigDict):
    # --- frames ----------------------------------------------------------------------------
    backbone: str = field(
        default="unet2d",
        metadata={"help": "unet2d (a small diffusers U-Net in pixel space) | svd (SVD img2vid's spatio-temporal U-Net over VAE latents)"},
    )
    image_size: int = field(default=64, metadata={"help": "side of the square input and predicted frames, px"})
    context_frames: int = field(default=1, metadata={"help": "frames given, o_t last (svd: 1)"})
    future_frames: int = field(default=1, metadata={"help": "frames predicted: o_t+k .. o_t+Tk"})
    # --- objective -------------------------------------------------------------------------
    objective: str = field(
        default="regression",
        metadata={"help": "regression (one deterministic U-Net pass, MSE) | diffusion (EDM denoiser sampled in num_inference_steps)"},
    )
    # predict the change (future - o_t) instead of the future itself (pixel backbones only):
    # copying o_t is then the zero prediction, which the network gets for free
    residual: bool = field(
        default=True,
        metadata={"help": "predict the change future - o_t instead of the future (pixel backbones), so copying o_t is the zero prediction"},
    )
    # >0: weight the loss on pixels that change (|o_t+k - o_t| > changed_threshold in any
    # channel) by 1 + changed_weight. At 64 px the moving arm is a few hundred pixels.
    changed_weight: float = field(default=10.0, metadata={"help": "weight the loss on pixels that change by 1 + this (0: plain MSE)"})
    changed_threshold: float = field(
        default=0.05, metadata={"help": "a pixel counts as changed when |o_t+k - o_t| exceeds this in any channel, 0-1 intensity"}
    )
    # EDM (Karras et al. 2022): training noise log sigma ~ N(p_mean, p_std^2); sampling from
    # sigma_max down to sigma_min in num_inference_steps Euler steps (karras rho schedule)
    sigma_data: float = field(default=0.5, metadata={"help": "EDM: standard deviation of the data"})
    p_mean: float = field(default=-1.2, metadata={"help": "EDM: mean of the training noise log sigma"})
    p_std: float = field(default=1.2, metadata={"help": "EDM: standard deviation of the training noise log sigma"})
    sigma_min: float = field(default=0.002, metadata={"help": "EDM: lowest noise level of the sampler"})
    sigma_max: float = field(default=80.0, metadata={"help": "EDM: highest noise level of the sampler, where sampling starts"})
    num_inference_steps: int = field(default=4, metadata={"help": "diffusion: Euler sampler steps per prediction"})
    # --- U-Net (diffusers) -----------------------------------------------------------------
    # unet2d: frames enter the U-Net as patch_size x patch_size pixel blocks stacked on channels
    # (space-to-depth; the output is shuffled back), so a CPU U-Net runs at image_size / patch_size
    patch_size: int = field(
        default=4,
        metadata={
            "help": "unet2d: frames enter as blocks of this many px per side stacked on channels, so the U-Net runs at image_size / patch_size"
        },
    )
    block_out_channels: tuple[int, ...] = field(
        default=(32, 64, 64), metadata={"help": "U-Net channels per level (comma-separated; its length is the number of levels)"}
    )
    # unet2d: block types, one per level (DownBlock2D / CrossAttnDownBlock2D ...); svd ignores
    # them (its blocks are fixed by UNetSpatioTemporalConditionModel)
    down_block_types: tuple[str, ...] = field(
        default=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        metadata={"help": "unet2d: diffusers down block type per level (comma-separated)"},
    )
    up_block_types: tuple[str, ...] = field(
        default=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        metadata={"help": "unet2d: diffusers up block type per level (comma-separated)"},
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per U-Net block"})
    attention_head_dim: int = field(
        default=8, metadata={"help": "unet2d: width of one attention head; svd: the head count derives from it"}
    )
    norm_num_groups: int = field(
        default=8, metadata={"help": "groups of the U-Net's group norms (each level's channels must divide by it)"}
    )
    cross_attention_dim: int = field(default=64, metadata={"help": "width of the instruction token inside the U-Net"})
    # --- language --------------------------------------------------------------------------
    text_dim: int = field(default=64, metadata={"help": "width of the instruction embedding given (the text tower's output)"})
    lang_dropout: float = field(default=0.05, metadata={"help": "fraction of training instructions replaced by the null embedding, 0-1"})
    # --- svd only --------------------------------------------------------------------------
    latent_channels: int = field(default=4, metadata={"help": "svd: channels of the VAE latents"})
    vae_block_out_channels: tuple[int, ...] = field(
        default=(128, 256, 512, 512), metadata={"help": "svd: VAE channels per level (comma-separated)"}
    )
    vae_scaling_factor: float = field(default=0.18215, metadata={"help": "svd: factor that scales VAE latents to unit variance"})
    num_frames: int = field(default=16, metadata={"help": "svd: nominal clip length of the temporal layers, frames"})
    # SVD's added time ids, fixed: frames per second, motion bucket, conditioning noise strength
    svd_fps: int = field(default=7, metadata={"help": "svd: the frames-per-second time id SVD is conditioned on"})
    motion_bucket_id: int = field(default=127, metadata={"help": "svd: the motion-bucket time id SVD is conditioned on"})
    noise_aug_strength: float = field(default=0.02, metadata={"help": "svd: the conditioning-noise time id SVD is conditioned on"})
    # local folder of pretrained SVD img2vid weights in diffusers layout (unet/, vae/); None:
    # random weights. Read when the model is built (not when a checkpoint is loaded: it holds them)
    pretrained_path: str | None = field(
        default=None, metadata={"help": "svd: local folder of SVD img2vid weights in diffusers layout (unet/, vae/); none: random weights"}
    )

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(v) for v in self.block_out_channels)
        self.vae_block_out_channels = tuple(int(v) for v in self.vae_block_out_channels)
        self.down_block_types = tuple(str(v) for v in self.down_block_types)
        self.up_block_types = tuple(str(v) for v in self.up_block_types)
        errors = []

        def bad(name: str, why: str) -> None:
            errors.append(f"{name}={getattr(self, name)!r}: {why}")

        if self.backbone not in BACKBONES:
            bad("backbone", f"unknown; valid: {', '.join(BACKBONES)}")
        if self.objective not in OBJECTIVES:
            bad("objective", f"unknown; valid: {', '.join(OBJECTIVES)}")
        for name in (
            "context_frames",
            "future_frames",
            "patch_size",
            "layers_per_block",
            "attention_head_dim",
            "norm_num_groups",
            "cross_attention_dim",
            "text_dim",
            "num_inference_steps",
            "latent_channels",
            "num_frames",
        ):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if not self.block_out_channels or any(c < 1 for c in self.block_out_channels):
            bad("block_out_channels", "needs at least one level, each >= 1")
        levels = len(self.block_out_channels)
        down = 2 ** (levels - 1) * (8 if self.backbone == "svd" else max(1, self.patch_size))  # svd: VAE 8x
        if self.image_size < 8 or self.image_size % down:
            bad(
                "image_size",
                f"must be >= 8 and a multiple of {down} ({levels} U-Net levels"
                f"{', VAE 8x' if self.backbone == 'svd' else f', patch {self.patch_size}'})",
            )
        if self.norm_num_groups >= 1 and any(c % self.norm_num_groups for c in self.block_out_channels):
            bad("block_out_channels", f"each must be divisible by norm_num_groups={self.norm_num_groups}")
        self._check_backbone(bad, levels)
        if not 0.0 <= self.lang_dropout <= 1.0:
            bad("lang_dropout", "must be in [0, 1]")
        for name in ("changed_weight", "changed_threshold", "noise_aug_strength"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("sigma_data", "p_std", "sigma_min", "vae_scaling_factor"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        if self.sigma_max <= self.sigma_min:
            bad("sigma_max", f"must be > sigma_min={self.sigma_min}")
        if errors:
            raise ValueError("invalid GFDMConfig:\n  " + "\n  ".join(errors))

    def _check_backbone(self, bad, levels: int) -> None:
        """Checks that depend on the backbone (``bad(name, why)`` records one error)."""
        if self.backbone == "unet2d":
            for name, valid in (("down_block_types", _DOWN_2D), ("up_block_types", _UP_2D)):
                blocks = getattr(self, name)
                if len(blocks) != levels:
                    bad(name, f"needs one block per level ({levels})")
                unknown = sorted(set(blocks) - set(valid))
                if unknown:
                    bad(name, f"unknown {unknown}; valid: {', '.join(valid)}")
        else:
            if self.context_frames != 1:
                bad("context_frames", "svd conditions on one frame (o_t)")
            if self.residual:
                bad("residual", "svd predicts latents of the future frames, not a pixel change")
            if self.patch_size != 1:
                bad("patch_size", "svd works on VAE latents (patch_size 1)")
            if len(self.vae_block_out_channels) != 4:
                bad("vae_block_out_channels", "svd's VAE has 4 levels (8x down, which latent_size assumes)")

    # --- derived ---------------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        """Side of the U-Net's input grid: the frame side (unet2d) or the VAE latent side (svd)."""
        return self.image_size // 8 if self.backbone == "svd" else self.image_size // self.patch_size

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each up-block output, first (coarsest) to last."""
        return list(reversed(self.block_out_channels))

    @property
    def feature_sizes(self) -> list[int]:
        """Spatial side of each up-block output: every up block but the last ends with a 2x
        upsample, so block i of L outputs latent_size / 2^(L-2-i) (the last two: full size)."""
        levels = len(self.block_out_channels)
        return [self.latent_size // 2 ** max(0, levels - 2 - i) for i in range(levels)]


# --- builders per size (keyword overrides replace any field) -----------------------------------
def gfdm_tiny(**overrides: Any) -> GFDMConfig:
    """CPU-sized: pixel-space UNet2DConditionModel at 64 px on 4x4 pixel blocks (a 16x16 grid),
    3 levels (32, 64, 64; 1.7 M parameters, the size bench/gfdm_quality.py measured) with
    cross-attention to the instruction on the two coarse levels (8x8, 4x4); predicts the change o_t+k - o_t; text from a 64-wide tower (the tiny test tower; give
    text_dim=512 for CLIP ViT-B/32). The 4x4 blocks keep self-attention to 64 and 16 tokens."""
    base = dict(
        backbone="unet2d",
        image_size=64,
        context_frames=1,
        future_frames=1,
        patch_size=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
        cross_attention_dim=64,
        text_dim=64,
        residual=True,
        p_mean=-1.2,
        p_std=1.2,
        sigma_data=0.5,
    )
    return GFDMConfig(**{**base, **overrides})


def gfdm_svd(**overrides: Any) -> GFDMConfig:
    """The released shape: SVD img2vid's spatio-temporal U-Net (320, 640, 1280, 1280; 2 layers per
    block; heads of 64) over SVD VAE latents (4 channels, 8x down), 16 frames at 256 px, CLIP
    ViT-B/32 text (512) projected to SVD's 1024-wide cross-attention, EDM noise P_mean 0.7,
    P_std 1.6, 5% instruction dropout. ``pretrained_path``: a local SVD img2vid folder."""
    base = dict(
        backbone="svd",
        image_size=256,
        context_frames=1,
        future_frames=16,
        num_frames=16,
        patch_size=1,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=64,
        norm_num_groups=32,
        cross_attention_dim=1024,
        text_dim=512,
        residual=False,
        objective="diffusion",
        p_mean=0.7,
        p_std=1.6,
        sigma_data=0.5,
        lang_dropout=0.05,
        changed_weight=0.0,
    )
    return GFDMConfig(**{**base, **overrides})


# One explicit line per name.
GFDM_PRESETS = {
    "tiny": gfdm_tiny,
    "svd": gfdm_svd,
}


def gfdm_config(preset: str, **overrides: Any) -> GFDMConfig:
    """The config of a named preset (``GFDM_PRESETS``) with ``overrides``; an unknown name lists the valid ones."""
    if preset not in GFDM_PRESETS:
        raise ValueError(f"unknown GFDM preset {preset!r}; valid: {', '.join(GFDM_PRESETS)}")
    return GFDM_PRESETS[preset](**overrides)
