"""``load_text_config``: the text tower a GFDM run embedded its instructions with. Load the model
itself with ``defi.training.checkpoint.load_model(path, expect="gfdm")``."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_contract


def load_text_config(run_dir_or_checkpoint_dir: str | Path):
    """The ``TextModelConfig`` a GFDM run embedded its instructions with (its checkpoint's
    ``DataContract.text``, written by ``defi train gfdm``), so a consumer (the policy) embeds its
    instructions the same way: ``embed_instructions(root, texts, cfg)``. None when the checkpoint
    has no such record (a model saved outside ``defi train gfdm``)."""
    from .text import TextModelConfig

    contract = read_contract(run_dir_or_checkpoint_dir)
    return TextModelConfig(**contract.text) if contract and contract.text else None
