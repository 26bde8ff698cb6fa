"""A tiny randomly initialised CoCa saved in open_clip's folder layout, for caption tests."""

from __future__ import annotations

from pathlib import Path


def tiny_captioner(folder: str | Path, seed: int = 0, spread: float = 0.3) -> str:
    """Write a tiny CoCa (``labelers.captions.tiny_coca_config``) to ``folder``; returns its path.
    Its matrices are redrawn with std ``spread``: at open_clip's small init every image gets the
    same caption, at this spread captions depend on the image (still deterministic)."""
    import torch

    from defi.labelers.captions import build_captioner, save_captioner, tiny_coca_config

    cfg = tiny_coca_config()
    net = build_captioner(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * spread)
    return str(save_captioner(net, cfg, folder))
