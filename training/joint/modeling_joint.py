"""The entangled baseline: the parts of the DeFI policy's future branch pretrained together.

    obs o_t [B, 3c, S, S], instruction embedding [B, D], true future o_t+k [B, T, 3, S, S]
      forward loss: the GFDM's own loss on the true future
      -> its prediction of o_t+k and up-block features (the same U-Net pass for regression, with
         gradients; diffusion: one more pass from noise, as the policy reads it)
      -> FeatureProjection: GIDM tokens of the prediction + a correction from the features
      -> GIDM encoder on (o_t, predicted o_t+k) -> z -> GIDM decoder reconstructs the *true* o_t+k
      inverse loss: that reconstruction error (+ the bottleneck's terms)
    loss = forward_weight * forward + inverse_weight * inverse

This is the policy's own path (``DeFiPolicy.features``: the GIDM reads the projected prediction,
never the true future), so the inverse loss trains GFDM, projection and GIDM together. ``defi``
pretrains the GFDM and the GIDM apart, the GIDM on true frame pairs; ``--init entangled`` of the
policy starts from this model instead, with the same modules and parameter count.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..gfdm.configuration_gfdm import GFDMConfig
from ..gfdm.modeling_gfdm import GFDM
from ..gidm.configuration_gidm import GIDMConfig
from ..gidm.modeling_gidm import GIDM
from ..policy.modeling_policy import FeatureProjection
from .configuration_joint import JointConfig


class JointModel(nn.Module):
    def __init__(self, config: JointConfig):
        """Random weights throughout (the joint run starts from initialisation; a checkpoint's
        weights then fill them)."""
        super().__init__()
        self.config = config
        self.gfdm = GFDM(GFDMConfig.from_dict(config.gfdm), load_pretrained=False)
        self.gidm = GIDM(GIDMConfig.from_dict(config.gidm), load_feature_weights=False)
        self.project = FeatureProjection(list(self.gfdm.feature_channels), self.gidm.config.grid, self.gidm.token_dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self,
        obs: Tensor,
        future: Tensor,
        text_emb: Tensor | None = None,
        has_text: Tensor | None = None,
        diagnostics: bool = False,
    ) -> dict[str, Tensor]:
        """obs [B, 3 * context_frames, S, S] and future [B, T, 3, S, S] in [0, 1]; text_emb
        [B, text_dim] or None; has_text [B] bool (False: the null embedding). Returns ``loss``
        (with gradient) and 0-dim diagnostics: ``forward_loss``, ``forward_mse``,
        ``inverse_loss``, ``recon_loss`` and the GIDM's own (``delta_recon``... when
        ``diagnostics``)."""
        c = self.config
        regression = self.gfdm.config.objective == "regression"
        fwd = self.gfdm(obs, future, text_emb, has_text, with_features=regression)
        if regression:
            feats = fwd.pop("features")
        else:
            text = text_emb
            if text_emb is not None and has_text is not None:  # rows without text read the null embedding
                text = torch.where(has_text.view(-1, 1), text_emb, self.gfdm.null_text.expand_as(text_emb))
            feats = self.gfdm.extract_features(obs, text, num_steps=1)
        pred = feats.prediction[:, 0].float().clamp(0, 1)
        g = self.gidm
        tok_t = g.tokens(obs[:, -3:])
        tok_pred = g.tokens(pred) + self.project([f.float() for f in feats.features])
        lang = text_emb if g.config.lang_dim else None
        inv = g.forward_tokens(tok_t, tok_pred, lang, diagnostics, target=g.tokens(future[:, 0]))
        loss = c.forward_weight * fwd["loss"] + c.inverse_weight * inv["loss"]
        out = {
            "loss": loss,
            "forward_loss": fwd["loss"].detach(),
            "forward_mse": fwd["mse"],
            "inverse_loss": inv["loss"].detach(),
        }
        out.update({k: v for k, v in inv.items() if k not in ("loss", "z", "codes") and torch.is_tensor(v) and v.dim() == 0})
        return out
