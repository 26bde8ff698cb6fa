"""``load_gfdm``: a trained GFDM from a run folder or a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

from .configuration_gfdm import GFDMConfig
from .modeling_gfdm import GFDM


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder (has config.json), or a run folder's latest ``checkpoints/step-*``."""
    from ..checkpoint import checkpoint_dir  # here: checkpoint.py imports this package's model

    return checkpoint_dir(path)


def load_gfdm(run_dir_or_checkpoint_dir: str | Path, map_location: str = "cpu") -> tuple[GFDM, GFDMConfig]:
    """(model in eval mode, config) from a run folder (its latest checkpoint) or a checkpoint
    folder. Refuses a checkpoint of another model type naming both types (CheckpointError)."""
    from ..checkpoint import CheckpointError, load_checkpoint, load_config

    ckpt = resolve_checkpoint_dir(run_dir_or_checkpoint_dir)
    mtype, _ = load_config(ckpt)
    if mtype != "gfdm":
        raise CheckpointError(f"{ckpt}: a {mtype!r} checkpoint where a 'gfdm' checkpoint is expected")
    model, config, _ = load_checkpoint(ckpt, map_location=map_location)
    return model.eval(), config


def load_text_config(run_dir_or_checkpoint_dir: str | Path):
    """The ``TextModelConfig`` a GFDM run embedded its instructions with (stamped by ``defi train
    gfdm`` into each checkpoint's state.json ``extra["data"]["text"]``), so a consumer (the
    policy) embeds its instructions the same way: ``embed_instructions(root, texts, cfg)``.
    None when the checkpoint has no such stamp (a model saved outside ``defi train gfdm``)."""
    import json

    from .text import TextModelConfig

    state = resolve_checkpoint_dir(run_dir_or_checkpoint_dir) / "state.json"
    if not state.is_file():
        return None
    text = ((json.loads(state.read_text()).get("extra") or {}).get("data") or {}).get("text")
    return TextModelConfig(**text) if text else None
