"""``load_text_config``: the text tower a GFDM run embedded its instructions with. Load the model
itself with ``defi.training.checkpoint.load_model(path, expect="gfdm")``."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import checkpoint_dir


def load_text_config(run_dir_or_checkpoint_dir: str | Path):
    """The ``TextModelConfig`` a GFDM run embedded its instructions with (stamped by ``defi train
    gfdm`` into each checkpoint's state.json ``extra["data"]["text"]``), so a consumer (the
    policy) embeds its instructions the same way: ``embed_instructions(root, texts, cfg)``.
    None when the checkpoint has no such stamp (a model saved outside ``defi train gfdm``)."""
    from .text import TextModelConfig

    state = checkpoint_dir(run_dir_or_checkpoint_dir) / "state.json"
    if not state.is_file():
        return None
    text = ((json.loads(state.read_text()).get("extra") or {}).get("data") or {}).get("text")
    return TextModelConfig(**text) if text else None
