"""``load_gfdm``: a trained GFDM from a run folder or a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

from .configuration_gfdm import GFDMConfig
from .modeling_gfdm import GFDM


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder (has config.json), or a run folder's latest ``checkpoints/step-*``."""
    from ..checkpoint import CheckpointError

    p = Path(path)
    if (p / "config.json").is_file():
        return p
    found = sorted((p / "checkpoints").glob("step-*"))
    if found:
        return found[-1]
    raise CheckpointError(f"{p}: neither a checkpoint folder (config.json) nor a run folder with checkpoints/step-*")


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
