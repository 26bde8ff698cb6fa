"""The entangled baseline of DeFI's claim: one model holding the GFDM, the feature projection and
the GIDM (encoder and decoder), pretrained from random weights in one run on the forward and
inverse losses summed. The config is here (torch-free); the model is ``modeling_joint.JointModel``."""

from .configuration_joint import JointConfig

__all__ = ["JointConfig"]
