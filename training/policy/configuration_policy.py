"""Configuration of the DeFI policy (see modeling_policy.py for the data flow).

One dataclass holds every knob; ``__post_init__`` validates all fields at once and names each bad
value. The GFDM and GIDM configs are nested as dicts (their own dataclasses validate them), so a
policy checkpoint rebuilds the whole model from its config.json alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configuration import ConfigDict


@dataclass(frozen=True)
class Init:
    """What a ``--init`` variant starts from. Every variant goes through the same code path and
    trains the same parts (projection, GIDM encoder + codebook, head; GFDM frozen unless unfrozen
    by config); a part that does not start pretrained keeps the pretrained run's architecture with
    random weights. ``future_branch=False``: no GFDM or GIDM at all (image + instruction straight
    to the head)."""

    name: str
    pretrained_gfdm: bool
    pretrained_gidm: bool
    future_branch: bool = True
    joint: bool = False  # GFDM, projection and GIDM from one `defi train joint` run (--joint)
    help: str = ""


# One explicit line per variant; the ablation bench reads this table.
INIT_VARIANTS: dict[str, Init] = {
    v.name: v
    for v in (
        Init("defi", True, True, help="both pretrained (the recipe)"),
        Init("scratch", False, False, help="the same model, random weights"),
        Init("no-gfdm-pretrain", False, True, help="pretrained GIDM, random GFDM"),
        Init("no-gidm-pretrain", True, False, help="pretrained GFDM, random GIDM"),
        Init("bc", False, False, future_branch=False, help="no future branch: image + instruction straight to the head"),
        Init(
            "entangled",
            True,
            True,
            joint=True,
            help="GFDM, projection and GIDM from one joint forward + inverse pretraining run (--joint, `defi train joint`)",
        ),
    )
}
INITS = tuple(INIT_VARIANTS)
HEADS = ("mlp", "transformer", "diffusion")
SAMPLERS = ("ddim", "ddpm")

# Named starting points for ``--model.preset``: a preset fills the fields a run does not set
# (``policy_run_config`` merges it beneath every layer), and may require a GFDM backbone.
# ``release``: the shape of the released DeFI policy (LogosRoboticsGroup/DeFi, ``VPP_policy.py``):
# the SVD img2vid GFDM, its up-block features resampled by a Perceiver, the GIDM's latent
# action tokens kept as tokens, and a diffusion-transformer head over 10-step chunks.
PRESETS: dict[str, dict] = {
    "release": {
        "head": "diffusion",
        "head_dim": 384,
        "head_depth": 6,
        "horizon": 10,
        "latent_tokens": True,
        "resampler_queries": 64,
        "resampler_depth": 2,
        "diffusion_train_steps": 100,
        "diffusion_infer_steps": 10,
        "diffusion_sampler": "ddim",
    },
}
PRESET_BACKBONE = {"release": "svd"}


@dataclass
class PolicyConfig(ConfigDict):
    init: str = field(
        default="defi",
        metadata={"help": "what starts pretrained: " + "; ".join(f"{v.name}: {v.help}" for v in INIT_VARIANTS.values())},
    )
    horizon: int = field(default=10, metadata={"help": "H: actions predicted (and executed) per observation, at the robot's rate"})
    action_dim: int = field(default=4, metadata={"help": "width of one action row"})
    image_size: int = field(default=64, metadata={"help": "side of the square observation frames, pixels"})
    context_frames: int = field(default=1, metadata={"help": "observation frames o_t-c+1 .. o_t (the GFDM's)"})
    text_dim: int = field(default=64, metadata={"help": "width of the instruction embedding"})
    head: str = field(default="mlp", metadata={"help": f"action head: {' | '.join(HEADS)}"})
    head_dim: int = field(default=256, metadata={"help": "hidden width of the action head"})
    head_depth: int = field(default=2, metadata={"help": "hidden layers (mlp) / transformer layers of the head"})
    latent_tokens: bool = field(
        default=False,
        metadata={"help": "give the head the GIDM's Q latent action tokens one by one (the release) instead of one flattened vector"},
    )
    resampler_queries: int = field(
        default=0,
        metadata={
            "help": "Perceiver resampler over the GFDM's up-block features: its number of latent queries, "
            "the head's GFDM tokens (0: one mean-pooled vector)"
        },
    )
    resampler_depth: int = field(default=2, metadata={"help": "cross-attention layers of the Perceiver resampler"})
    state_dim: int = field(
        default=0,
        metadata={"help": "width of the proprioception input (observation.state) given to the head as one token; 0: none"},
    )
    diffusion_train_steps: int = field(
        default=100, metadata={"help": "diffusion head: noise levels of its DDPM training schedule (squared-cosine betas)"}
    )
    diffusion_infer_steps: int = field(default=10, metadata={"help": "diffusion head: denoising steps when sampling an action chunk"})
    diffusion_sampler: str = field(
        default="ddim", metadata={"help": f"diffusion head: sampler at inference, {' | '.join(SAMPLERS)} (diffusers schedulers)"}
    )
    preset: str = field(
        default="",
        metadata={"help": f"named starting point whose values fill the fields a run leaves unset: {' | '.join(PRESETS)} ('': none)"},
    )
    bc_width: int = field(
        default=32, metadata={"help": "bc: channels of its conv image encoder (sized to the projection + GIDM encoder it replaces)"}
    )
    # what trains, and the optional losses (all off by default: the release's recipe)
    forward_weight: float = field(
        default=0.0, metadata={"help": "weight of the GFDM's own loss on the true future (useful once the GFDM is unfrozen)"}
    )
    consistency_weight: float = field(
        default=0.0, metadata={"help": "weight of |GIDM(o_t, projected prediction) - GIDM(o_t, true future)|^2 (target detached)"}
    )
    unfreeze_gfdm_step: int = field(
        default=-1, metadata={"help": "step at which the GFDM starts training (-1: frozen throughout, as released)"}
    )
    gidm_lr_scale: float = field(
        default=1.0,
        metadata={"help": "learning-rate multiplier of the GIDM encoder (0.1: a pretrained GIDM moves slowly; 0: frozen throughout)"},
    )
    gfdm_steps: int = field(default=1, metadata={"help": "GFDM sampler steps when reading its features"})
    gfdm: dict[str, Any] = field(default_factory=dict, metadata={"help": "GFDMConfig as a dict (filled from --gfdm)"})
    gidm: dict[str, Any] = field(default_factory=dict, metadata={"help": "GIDMConfig as a dict (filled from --gidm)"})
    text_model: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "the text tower that embedded the instructions, as a dict (filled from --text.*)"}
    )

    def __post_init__(self) -> None:
        errors = []

        def bad(name: str, why: str) -> None:
            errors.append(f"{name}={getattr(self, name)!r}: {why}")

        if self.init not in INITS:
            bad("init", f"unknown; valid: {', '.join(INITS)}")
        if self.head not in HEADS:
            bad("head", f"unknown; valid: {', '.join(HEADS)}")
        if self.diffusion_sampler not in SAMPLERS:
            bad("diffusion_sampler", f"unknown; valid: {', '.join(SAMPLERS)}")
        if self.preset and self.preset not in PRESETS:
            bad("preset", f"unknown; valid: {', '.join(PRESETS)}")
        if self.diffusion_infer_steps < 1:
            bad("diffusion_infer_steps", "a diffusion head needs >= 1 denoising step")
        elif self.diffusion_infer_steps > self.diffusion_train_steps:
            bad("diffusion_infer_steps", f"must be <= diffusion_train_steps ({self.diffusion_train_steps})")
        for name in ("resampler_queries", "state_dim"):
            if int(getattr(self, name)) < 0:
                bad(name, "must be >= 0")
        if not self.future_branch and (self.resampler_queries or self.latent_tokens):
            errors.append("init='bc' has no GFDM features or latent tokens: resampler_queries and latent_tokens must stay off")
        for name in (
            "horizon",
            "action_dim",
            "image_size",
            "context_frames",
            "head_dim",
            "head_depth",
            "bc_width",
            "gfdm_steps",
            "resampler_depth",
            "diffusion_train_steps",
        ):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if self.text_dim < 0:
            bad("text_dim", "must be >= 0")
        for name in ("forward_weight", "consistency_weight"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if not self.gidm_lr_scale >= 0:
            bad("gidm_lr_scale", "must be >= 0")
        if self.unfreeze_gfdm_step < -1:
            bad("unfreeze_gfdm_step", "must be -1 (never) or a step >= 0")
        if not self.future_branch and (
            self.forward_weight or self.consistency_weight or self.unfreeze_gfdm_step >= 0 or self.gidm_lr_scale != 1
        ):
            errors.append(
                "init='bc' has no future branch: forward_weight, consistency_weight, unfreeze_gfdm_step and gidm_lr_scale must stay off"
            )
        if self.future_branch and self.gidm:
            g = self.gidm
            if g.get("image_size", self.image_size) != self.image_size:
                errors.append(f"GIDM image_size {g.get('image_size')} differs from the policy's {self.image_size}")
        if self.future_branch and self.gfdm:
            g = self.gfdm
            if g.get("image_size", self.image_size) != self.image_size:
                errors.append(f"GFDM image_size {g.get('image_size')} differs from the policy's {self.image_size}")
        if errors:
            raise ValueError("invalid PolicyConfig: " + "; ".join(errors))

    @property
    def future_branch(self) -> bool:
        v = INIT_VARIANTS.get(self.init)  # an unknown name is refused by __post_init__
        return v is None or v.future_branch

    @property
    def variant(self) -> Init:
        return INIT_VARIANTS[self.init]
