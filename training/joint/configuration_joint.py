"""Configuration of the jointly pretrained forward + inverse model (see modeling_joint.py).

The GFDM and GIDM configs are nested as dicts (their own dataclasses validate them), as in
``PolicyConfig``, so a joint checkpoint rebuilds the whole model from its config.json alone, and a
policy started from it (``--init entangled``) gets the same parts a ``defi`` policy gets from two
separate runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configuration import ConfigDict
from ..gfdm.configuration_gfdm import GFDMConfig
from ..gidm.configuration_gidm import GIDMConfig


@dataclass
class JointConfig(ConfigDict):
    gfdm: dict[str, Any] = field(default_factory=dict, metadata={"help": "GFDMConfig as a dict"})
    gidm: dict[str, Any] = field(default_factory=dict, metadata={"help": "GIDMConfig as a dict (pixel input space)"})
    forward_weight: float = field(default=1.0, metadata={"help": "weight of the GFDM's loss on the true future"})
    inverse_weight: float = field(
        default=1.0,
        metadata={
            "help": "weight of the GIDM's reconstruction loss when it encodes (o_t, projected GFDM prediction) "
            "and decodes the true o_t+k (its gradient reaches the GFDM through the prediction)"
        },
    )

    def __post_init__(self) -> None:
        errors = []
        for name in ("forward_weight", "inverse_weight"):
            if not getattr(self, name) >= 0:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not (self.forward_weight or self.inverse_weight):
            errors.append("forward_weight and inverse_weight are both 0: nothing would train")
        try:
            gfdm = GFDMConfig.from_dict(self.gfdm)
            gidm = GIDMConfig.from_dict(self.gidm)
        except (TypeError, ValueError) as e:
            errors.append(str(e))
        else:
            if gidm.input_space != "pixels":
                errors.append(f"the GIDM must read pixels (got input_space={gidm.input_space!r}): the policy's path does")
            if gfdm.image_size != gidm.image_size:
                errors.append(f"GFDM image_size {gfdm.image_size} differs from GIDM image_size {gidm.image_size}")
            if gidm.lang_dim and gidm.lang_dim != gfdm.text_dim:
                errors.append(f"GIDM lang_dim {gidm.lang_dim} differs from the GFDM's text_dim {gfdm.text_dim}")
        if errors:
            raise ValueError("invalid JointConfig: " + "; ".join(errors))
