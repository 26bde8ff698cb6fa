"""Configuration of the GIDM (general inverse-dynamics model, a latent action model).

One dataclass holds every knob; ``__post_init__`` validates all fields at once and names each bad
value. Builder functions give the sizes we use: ``gidm_tiny`` (CPU, trains in seconds),
``gidm_small`` and ``gidm_univla`` (the shape of UniVLA's stage-1 latent action model, which the
DeFI paper uses as its GIDM: frozen DINOv2 ViT-B/14 patch features at 224 px, 4 action queries,
VQ with 16 codes x 128 dims).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configuration import ConfigDict

INPUT_SPACES = ("pixels", "features")
# vq: nearest code, straight-through; nsvq: the same codebook trained by noise substitution
# (LAPA); rvq: residual VQ, vq_stages codebooks; fsq: finite scalar quantisation
BOTTLENECKS = ("continuous", "vq", "fsq", "rvq", "nsvq")
# the bottlenecks with a learned codebook: its ids are the codes, and with several processes its
# rank-local dead-code restarts are synchronised after each step (the gidm and joint recipes)
CODEBOOK_BOTTLENECKS = ("vq", "rvq", "nsvq")
# Frozen image encoders for input_space="features":
#   "open_clip:<model name>"  an open_clip ViT's patch tokens (weights: feature_weights, a local
#                             file or an open_clip pretrained tag; none = random, tests only)
#   "dinov2_vitb14[_reg]"     DINOv2 ViT-B/14 (with registers) through timm; needs
#                             feature_weights on local disk (tests never reach the hub)
#   "external"                the caller passes the module (GIDM(cfg, feature_extractor=...))
FEATURE_ENCODERS = ("open_clip", "dinov2_vitb14", "dinov2_vitb14_reg", "external")


@dataclass
class GIDMConfig(ConfigDict):
    # --- input -----------------------------------------------------------------------------
    input_space: str = field(
        default="pixels",
        metadata={"help": "pixels (frames as patches) | features (patch tokens of a frozen image encoder, see feature_encoder)"},
    )
    image_size: int = field(default=64, metadata={"help": "side of the square input frames, px"})
    in_channels: int = field(default=3, metadata={"help": "colour channels of the input frames"})
    # pixels: side of one patch token in pixels. features: the frozen encoder's patch size (its
    # token grid is image_size // patch_size per side).
    patch_size: int = field(default=8, metadata={"help": "pixels: side of one patch token, px; features: the frozen encoder's patch size"})
    feature_encoder: str = field(
        default="external",
        metadata={
            "help": "frozen image encoder for input_space=features: open_clip:<model> | dinov2_vitb14 | dinov2_vitb14_reg | external"
        },
    )
    feature_dim: int = field(default=0, metadata={"help": "width of the frozen encoder's patch tokens (768 for a ViT-B)"})
    feature_weights: str | None = field(
        default=None,
        metadata={"help": "local weights file (or open_clip pretrained tag) of the frozen encoder; none: random weights (tests only)"},
    )
    # --- transformer -----------------------------------------------------------------------
    model_dim: int = field(default=64, metadata={"help": "width of the transformer encoder and decoder"})
    enc_depth: int = field(default=2, metadata={"help": "transformer blocks of the encoder"})
    dec_depth: int = field(default=2, metadata={"help": "transformer blocks of the decoder"})
    num_heads: int = field(default=4, metadata={"help": "attention heads per transformer block"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "hidden width of each block's MLP as a multiple of model_dim"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability inside the transformer blocks"})
    # --- latent action ---------------------------------------------------------------------
    num_action_tokens: int = field(default=1, metadata={"help": "learned action queries, i.e. latent tokens per transition"})
    bottleneck: str = field(
        default="continuous",
        metadata={
            "help": "latent kind: "
            + " | ".join(BOTTLENECKS)
            + " (continuous: beta-VAE; rvq: residual VQ; nsvq: VQ trained by noise substitution)"
        },
    )
    # per-token latent width: the VQ code dim and the continuous latent dim. FSQ ignores it and
    # uses len(fsq_levels).
    latent_dim: int = field(default=8, metadata={"help": "width of one latent token (the VQ code width; fsq uses len(fsq_levels) instead)"})
    # vq
    codebook_size: int = field(default=16, metadata={"help": "codes per codebook (vq, rvq, nsvq)"})
    commitment_beta: float = field(
        default=0.25, metadata={"help": "weight of the VQ commitment loss that pulls encoder outputs towards their codes"}
    )
    # a code used fewer than this many times (summed over the last restart_interval training
    # steps) is re-initialised from a random encoder output of the current batch
    dead_code_threshold: float = field(
        default=1.0,
        metadata={"help": "a code used fewer times than this over restart_interval steps is re-initialised from an encoder output"},
    )
    restart_interval: int = field(default=50, metadata={"help": "training steps between dead-code restarts (0: never restart)"})
    vq_stages: int = field(default=4, metadata={"help": "rvq: residual codebooks of codebook_size codes each"})
    # fsq
    fsq_levels: tuple[int, ...] = field(
        default=(8, 5, 5, 5), metadata={"help": "fsq: quantisation levels per latent dimension (comma-separated)"}
    )
    # continuous (beta-VAE): KL per latent element, weighted by kl_beta
    kl_beta: float = field(default=1e-4, metadata={"help": "continuous: weight of the KL term per latent element"})
    # >0: weight each token's reconstruction error by 1 + changed_weight * (its change |o_t+k - o_t|
    # relative to the batch mean change). At 64 px a robot arm is a few patches; with a plain MSE
    # the decoder can ignore the latent and predict "nothing moved" nearly as well.
    changed_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight each token's reconstruction error by 1 + this x its relative change, so the decoder cannot ignore small moving parts (0: plain MSE)"
        },
    )
    # >0: train on windows (o_t, o_t+k, o_t+2k) and add additive_weight x the relative error of
    # z(t -> t+2k) against z(t -> t+k) + z(t+k -> t+2k), so latent actions compose by addition as
    # displacements do (continuous bottleneck only; the model then also learns the gap 2k).
    additive_weight: float = field(
        default=0.0,
        metadata={
            "help": "continuous: weight of the loss making z(t->t+2k) equal z(t->t+k) + z(t+k->t+2k), so latents add like displacements (0: off)"
        },
    )
    # >0: the encoder is this many spatial soft-argmax keypoints per frame (a small conv net, then
    # the expected (x, y) of each of its heat maps; Finn et al. 2016's deep spatial autoencoder)
    # instead of the transformer: the latent is a linear map of where the keypoints are in o_t and
    # how far they moved by o_t+k, so it is linear in image-space motion, not a code of how the
    # changed pixels look. Pixels only; the decoder is unchanged.
    keypoints: int = field(
        default=0,
        metadata={
            "help": "encode each frame as this many spatial soft-argmax keypoints instead of the transformer encoder (0: transformer)"
        },
    )
    # The soft-argmax temperature the keypoint encoder starts from (it is learned). It divides the
    # conv's logits, so below 1 the heat maps sharpen sooner in training and the keypoints follow
    # small parts such as the gripper after fewer steps (the demo's 400-step GIDM uses 0.3).
    keypoint_temperature: float = field(
        default=1.0,
        metadata={
            "help": "starting soft-argmax temperature of the keypoints (learned); it divides the logits, so below 1 the heat maps sharpen sooner"
        },
    )
    # --- language conditioning -------------------------------------------------------------
    # >0: an instruction embedding [B, lang_dim] enters encoder and decoder as one token, so the
    # latent only needs to carry what language cannot explain.
    lang_dim: int = field(
        default=0, metadata={"help": "width of an instruction embedding fed to encoder and decoder as one token (0: no language)"}
    )

    def __post_init__(self) -> None:
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        errors = []

        def bad(name: str, why: str) -> None:
            errors.append(f"{name}={getattr(self, name)!r}: {why}")

        if self.input_space not in INPUT_SPACES:
            bad("input_space", f"unknown; valid: {', '.join(INPUT_SPACES)}")
        if self.bottleneck not in BOTTLENECKS:
            bad("bottleneck", f"unknown; valid: {', '.join(BOTTLENECKS)}")
        for name in (
            "image_size",
            "in_channels",
            "patch_size",
            "model_dim",
            "num_heads",
            "num_action_tokens",
            "latent_dim",
            "codebook_size",
            "vq_stages",
        ):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        for name in ("enc_depth", "dec_depth"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1 (one transformer block at least)")
        if self.patch_size >= 1 and self.image_size % self.patch_size:
            bad("image_size", f"must be a multiple of patch_size={self.patch_size}")
        if self.num_heads >= 1 and self.model_dim % self.num_heads:
            bad("model_dim", f"must be divisible by num_heads={self.num_heads}")
        for name in ("mlp_ratio", "keypoint_temperature"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        for name, why in (
            ("commitment_beta", "must be >= 0"),
            ("kl_beta", "must be >= 0"),
            ("changed_weight", "must be >= 0"),
            ("dead_code_threshold", "must be >= 0"),
            ("restart_interval", "must be >= 0 (0 disables restarts)"),
        ):
            if getattr(self, name) < 0:
                bad(name, why)
        if self.additive_weight < 0:
            bad("additive_weight", "must be >= 0 (0 disables the additivity loss)")
        elif self.additive_weight > 0 and self.bottleneck != "continuous":
            bad("additive_weight", "needs bottleneck='continuous' (codes do not add)")
        if not self.fsq_levels or any(v < 2 for v in self.fsq_levels):
            bad("fsq_levels", "needs at least one level, each >= 2")
        if self.keypoints < 0:
            bad("keypoints", "must be >= 0 (0: transformer encoder)")
        elif self.keypoints > 0 and self.input_space != "pixels":
            bad("keypoints", "needs input_space='pixels' (keypoints come from a conv net over the frames)")
        if self.lang_dim < 0:
            bad("lang_dim", "must be >= 0 (0 disables language conditioning)")
        if self.input_space == "features":
            self._check_features(bad)
        if errors:
            raise ValueError("invalid GIDMConfig:\n  " + "\n  ".join(errors))

    def _check_features(self, bad) -> None:
        """The checks of input_space='features': a known feature encoder and its width."""
        kind = self.feature_encoder.split(":", 1)[0]
        if kind not in FEATURE_ENCODERS:
            bad("feature_encoder", f"unknown; valid: {', '.join(FEATURE_ENCODERS)} (open_clip as 'open_clip:<model name>')")
        if kind == "open_clip" and not self.feature_encoder.partition(":")[2]:
            bad("feature_encoder", "open_clip needs a model name, e.g. 'open_clip:ViT-B-16'")
        if self.feature_dim < 1:
            bad("feature_dim", "must be >= 1 with input_space='features'")

    # --- derived ---------------------------------------------------------------------------
    @property
    def grid(self) -> int:
        """Patch tokens per side of one frame."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def code_width(self) -> int:
        """Width of one latent token as returned by ``encode``."""
        return len(self.fsq_levels) if self.bottleneck == "fsq" else self.latent_dim

    @property
    def num_codes(self) -> int:
        """Distinct code ids per token (0 for the continuous bottleneck)."""
        if self.bottleneck in CODEBOOK_BOTTLENECKS:
            return self.codebook_size  # rvq: the first stage's codes
        if self.bottleneck == "fsq":
            n = 1
            for v in self.fsq_levels:
                n *= v
            return n
        return 0


# --- builders per size (keyword overrides replace any field) -----------------------------------
def gidm_tiny(**overrides: Any) -> GIDMConfig:
    """CPU-sized: 64 px pixels, 8 px patches, 64-wide 2+2 block transformer, continuous latent.

    Continuous, because on a short CPU run a quantised latent can collapse to a single code while
    a continuous one keeps learning (bottlenecks compared: docs/gidm-discrete-2026-11-26.md)."""
    base = dict(
        input_space="pixels",
        image_size=64,
        patch_size=8,
        model_dim=64,
        enc_depth=2,
        dec_depth=2,
        num_heads=4,
        num_action_tokens=1,
        bottleneck="continuous",
        latent_dim=8,
        kl_beta=1e-4,
    )
    return GIDMConfig(**{**base, **overrides})


def gidm_small(**overrides: Any) -> GIDMConfig:
    """A single-GPU size on pixels: 128 px, 8 px patches (256 tokens per frame), 256 wide, 6+6
    blocks, 4 action tokens, VQ with dead-code restart."""
    base = dict(
        input_space="pixels",
        image_size=128,
        patch_size=8,
        model_dim=256,
        enc_depth=6,
        dec_depth=6,
        num_heads=8,
        num_action_tokens=4,
        bottleneck="vq",
        latent_dim=32,
        codebook_size=64,
    )
    return GIDMConfig(**{**base, **overrides})


def gidm_univla(**overrides: Any) -> GIDMConfig:
    """UniVLA stage-1 latent action model shape: frozen DINOv2 ViT-B/14 patch tokens at 224 px
    (16x16 tokens of 768), 768-wide 12+12 block transformer with 12 heads, 4 action queries, VQ
    with 16 codes x 128 dims, commitment 0.25, dead codes restarted. ``feature_weights`` must
    point to DINOv2 weights on local disk (or pass ``feature_encoder="external"`` and a module)."""
    base = dict(
        input_space="features",
        image_size=224,
        patch_size=14,
        feature_encoder="dinov2_vitb14",
        feature_dim=768,
        model_dim=768,
        enc_depth=12,
        dec_depth=12,
        num_heads=12,
        num_action_tokens=4,
        bottleneck="vq",
        latent_dim=128,
        codebook_size=16,
        commitment_beta=0.25,
    )
    return GIDMConfig(**{**base, **overrides})


def gidm_keypoint(**overrides: Any) -> GIDMConfig:
    """``gidm_tiny`` with a 32-keypoint spatial soft-argmax encoder, 16 latent dims, 4-px patches and
    changed_weight 30 (``bench/gidm_quality.py``'s defaults): keypoints make the latent a linear
    map of where things moved, which is what a robot action is. The default of ``defi train
    gidm``; its probe numbers against the controls are in docs/results.md. Use it for robot or
    fixed-camera video; the keypoints move with the camera, so filter panning clips out of its
    selection (``camera_motion`` score)."""
    keypoint = dict(patch_size=4, latent_dim=16, keypoints=32, changed_weight=30.0)
    return gidm_tiny(**{**keypoint, **overrides})


def gidm_keypoint_rvq(**overrides: Any) -> GIDMConfig:
    """``gidm_keypoint`` with discrete codes: residual VQ, 8 stages of 16 codes over its 16 dims,
    for queries by code (``dominant_code``). Residual stages keep the displacement a single
    16-code book would round away (the comparison of bottlenecks: docs/gidm-discrete-2026-11-26.md).
    ``codes`` (so ``dominant_code``, ``code_hist``) are the first stage's ids; the labels'
    vectors are the sum of all stages. Training seeds vary: train more than one and keep the
    best probe."""
    rvq = dict(bottleneck="rvq", codebook_size=16, vq_stages=8)
    return gidm_keypoint(**{**rvq, **overrides})


# one explicit line per preset; `defi train gidm --model NAME` and gidm_config(NAME) read it
GIDM_PRESETS = {
    "keypoint": gidm_keypoint,
    "keypoint-rvq": gidm_keypoint_rvq,
    "tiny": gidm_tiny,
    "small": gidm_small,
    "univla": gidm_univla,
}


def gidm_config(preset: str, **overrides: Any) -> GIDMConfig:
    """The config of a named preset (``GIDM_PRESETS``) with ``overrides``; an unknown name lists the valid ones."""
    if preset not in GIDM_PRESETS:
        raise ValueError(f"unknown GIDM preset {preset!r}; valid: {', '.join(GIDM_PRESETS)}")
    return GIDM_PRESETS[preset](**overrides)
