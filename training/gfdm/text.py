"""Instruction embeddings: open_clip's text tower, each distinct text embedded once and cached in
the corpus.

Cache: ``ROOT/text_embeddings/part-*.parquet`` (schema ``defi.schemas.tables.TEXT_EMBEDDINGS``),
one row per (text_hash, text_model), written atomically by ``Corpus.write_part`` and readable from
DuckDB as the view ``text_embeddings`` (``defi query "SELECT text, text_model FROM
text_embeddings"``). ``embed_instructions`` reads the rows of its text model, encodes only the
texts without a row, and appends one part holding just those: training never re-encodes, and two
text models live side by side (their ids differ).

Text models (``TextModelConfig``):
- ``name="ViT-B-32"`` (any open_clip model name) with ``pretrained`` an open_clip tag or a local
  weights file: the released GFDM's text encoder is CLIP ViT-B/32 (512 wide).
- ``name="tiny"``: a randomly initialised 1-layer, 64-wide open_clip ``TextTransformer`` seeded by
  ``seed`` (tests, CPU benches): deterministic, no download. Its id names the seed and shape, so
  its cache rows never mix with a real model's.

Embeddings are the tower's pooled, projected output, L2-normalised (as CLIP compares them),
float32 [N, D], each text encoded alone (``TextEncoder.encode``), so the cache holds exactly what
a fresh encoding gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configuration_text import TextModelConfig, text_model_id

TEXT_TABLE = "text_embeddings"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_tiny_text_tower(width: int = 64, layers: int = 1, seed: int = 0) -> torch.nn.Module:
    """A small randomly initialised open_clip ``TextTransformer`` (CLIP's BPE vocabulary, 77
    tokens, ``width`` wide, output ``width`` dims), the same for the same arguments. No download."""
    from open_clip.model import CLIPTextCfg, _build_text_tower

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tower = _build_text_tower(width, CLIPTextCfg(context_length=77, width=width, heads=max(1, width // 32), layers=layers))
    finally:
        torch.random.set_rng_state(state)
    return tower.eval()


class TextEncoder:
    """Texts -> L2-normalised embeddings [N, D] (float32 numpy) with one open_clip text tower."""

    def __init__(self, cfg: TextModelConfig):
        import open_clip

        self.cfg = cfg
        self.id = text_model_id(cfg)
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32" if cfg.name == "tiny" else cfg.name)
        if cfg.name == "tiny":
            self.tower = build_tiny_text_tower(cfg.width, cfg.layers, cfg.seed)
            self.encode_fn = self.tower
        else:
            if (
                cfg.pretrained
                and not Path(cfg.pretrained).exists()
                and ("/" in cfg.pretrained or cfg.pretrained.endswith((".bin", ".pt", ".safetensors")))
            ):
                raise FileNotFoundError(f"text model weights not found: {cfg.pretrained}")
            torch.manual_seed(cfg.seed)
            model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained)
            self.tower = model.eval()
            self.encode_fn = model.encode_text
        self.tower.to(cfg.device)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        """One text at a time: a text's embedding is then a function of the text alone, the same
        bits whether it is cached beside other texts, looked up, or encoded at evaluation. In a
        batch, the batch's size picks the matrix kernels and so the low bits (~1e-7)."""
        out = []
        for text in texts:
            emb = self.encode_fn(self.tokenizer([text]).to(self.cfg.device)).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _corpus(root_or_corpus: Any):
    from defi.schemas.corpus import Corpus

    return root_or_corpus if isinstance(root_or_corpus, Corpus) else Corpus.open(str(root_or_corpus))


def cached_embeddings(root_or_corpus: Any, model_id: str) -> dict[str, np.ndarray]:
    """text_hash -> embedding of every cached row of ``model_id``."""
    import pyarrow.compute as pc

    table = _corpus(root_or_corpus).read_table(TEXT_TABLE)
    table = table.filter(pc.equal(table.column("text_model"), model_id))
    hashes = table.column("text_hash").to_pylist()
    embs = table.column("embedding").to_pylist()
    return {h: np.asarray(e, np.float32) for h, e in zip(hashes, embs, strict=True)}


def _write_part(corpus: Any, rows: Any, part: str) -> None:
    corpus.write_part(TEXT_TABLE, rows, part=part)


def embed_instructions(
    root_or_corpus: Any,
    texts: list[str],
    text_model_cfg: TextModelConfig,
    encoder: TextEncoder | None = None,
    save: Callable[[Any, Any, str], None] | None = None,
) -> np.ndarray:
    """Embeddings [len(texts), D] float32 of ``texts`` under ``text_model_cfg``, from the corpus'
    cache; texts without a cached row are encoded once (duplicates once) and their rows appended
    as one new part. ``encoder``: a ready ``TextEncoder`` for the same config (else built only if
    something needs encoding). ``save(corpus, rows, part)`` stores the new rows (default: write
    the part; a command passes one that holds the root's writer lock)."""
    import pyarrow as pa

    corpus = _corpus(root_or_corpus)
    model_id = text_model_id(text_model_cfg)
    cache = cached_embeddings(corpus, model_id)
    hashes = [text_hash(t) for t in texts]
    missing: dict[str, str] = {}
    for t, h in zip(texts, hashes, strict=True):
        if h not in cache:
            missing.setdefault(h, t)
    if missing:
        enc = encoder or TextEncoder(text_model_cfg)
        if enc.id != model_id:
            raise ValueError(f"encoder is {enc.id}, config names {model_id}")
        new_texts = list(missing.values())
        embs = enc.encode(new_texts)
        rows = pa.table(
            {
                "text_hash": pa.array(list(missing), pa.string()),
                "text_model": pa.array([model_id] * len(missing), pa.string()),
                "text": pa.array(new_texts, pa.string()),
                "embedding": pa.array([e.tolist() for e in embs], pa.list_(pa.float32())),
            }
        )
        # a part named by the model and its texts: writing the same texts again replaces it
        digest = hashlib.sha256((model_id + "\0" + "\0".join(sorted(missing))).encode()).hexdigest()[:16]
        (save or _write_part)(corpus, rows, digest)
        cache.update(zip(missing, embs, strict=True))
    if not texts:
        return np.zeros((0, 0), np.float32)
    return np.stack([cache[h] for h in hashes]).astype(np.float32)


# The text a clip trains with (``defi train gfdm --data.language``): its own instruction (robot
# episodes, manifests with a language column), the caption `defi label captions` wrote for it, or
# the instruction where there is one and the caption elsewhere.
LANGUAGE_MODES = ("instruction", "caption", "auto")


def pick_language(mode: str, instruction: str | None, caption: str | None) -> str | None:
    """The text of one clip under ``mode`` (``LANGUAGE_MODES``); None when it has none."""
    if mode == "instruction":
        return instruction or None
    if mode == "caption":
        return caption or None
    if mode == "auto":
        return instruction or caption or None
    raise ValueError(f"language={mode!r}: unknown; valid: {', '.join(LANGUAGE_MODES)}")
