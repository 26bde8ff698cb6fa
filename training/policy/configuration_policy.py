"""Configuration of the DeFI policy (see modeling_policy.py for the data flow).

One dataclass holds every knob; ``__post_init__`` validates all fields at once and names each bad
value. The GFDM and GIDM configs are nested as dicts (their own dataclasses validate them), so a
policy checkpoint rebuilds the whole model from its config.json alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configuration import ConfigDict

# --init: what starts pretrained. Every variant goes through the same code path and trains the
# same parts (projection, GIDM encoder + codebook, head; GFDM frozen unless unfrozen by config).
INITS = ("defi", "scratch", "no-gfdm-pretrain", "no-gidm-pretrain", "bc")
HEADS = ("mlp", "transformer")


@dataclass
class PolicyConfig(ConfigDict):
    init: str = field(
        default="defi",
        metadata={"help": f"what starts pretrained: {' | '.join(INITS)} (bc: no future branch, image + instruction straight to the head)"},
    )
    horizon: int = field(default=10, metadata={"help": "H: actions predicted (and executed) per observation, at the robot's rate"})
    action_dim: int = field(default=4, metadata={"help": "width of one action row"})
    image_size: int = field(default=64, metadata={"help": "side of the square observation frames, pixels"})
    context_frames: int = field(default=1, metadata={"help": "observation frames o_t-c+1 .. o_t (the GFDM's)"})
    text_dim: int = field(default=64, metadata={"help": "width of the instruction embedding"})
    head: str = field(default="mlp", metadata={"help": f"action head: {' | '.join(HEADS)}"})
    head_dim: int = field(default=256, metadata={"help": "hidden width of the action head"})
    head_depth: int = field(default=2, metadata={"help": "hidden layers (mlp) / transformer layers of the head"})
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
        for name in ("horizon", "action_dim", "image_size", "context_frames", "head_dim", "head_depth", "bc_width", "gfdm_steps"):
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
        if self.init == "bc" and (
            self.forward_weight or self.consistency_weight or self.unfreeze_gfdm_step >= 0 or self.gidm_lr_scale != 1
        ):
            errors.append(
                "init='bc' has no future branch: forward_weight, consistency_weight, unfreeze_gfdm_step and gidm_lr_scale must stay off"
            )
        if self.init != "bc" and self.gidm:
            g = self.gidm
            if g.get("image_size", self.image_size) != self.image_size:
                errors.append(f"GIDM image_size {g.get('image_size')} differs from the policy's {self.image_size}")
        if self.init != "bc" and self.gfdm:
            g = self.gfdm
            if g.get("image_size", self.image_size) != self.image_size:
                errors.append(f"GFDM image_size {g.get('image_size')} differs from the policy's {self.image_size}")
        if errors:
            raise ValueError("invalid PolicyConfig: " + "; ".join(errors))

    @property
    def future_branch(self) -> bool:
        return self.init != "bc"
