"""Instruction embeddings: the tiny random open_clip tower, the corpus cache (same embedding
twice, rows only for new texts, two text models side by side, readable from DuckDB)."""

from __future__ import annotations

import numpy as np
import pytest

from defi.schemas.corpus import Corpus
from defi.training.gfdm.text import TextEncoder, build_tiny_text_tower, embed_instructions
from defi.training.gfdm import TextModelConfig, text_model_id


def test_tiny_tower_is_deterministic_and_separates_texts():
    a = TextEncoder(TextModelConfig(name="tiny", seed=0)).encode(["open the drawer", "close the drawer"])
    b = TextEncoder(TextModelConfig(name="tiny", seed=0)).encode(["open the drawer", "close the drawer"])
    c = TextEncoder(TextModelConfig(name="tiny", seed=1)).encode(["open the drawer"])
    assert a.shape == (2, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1]) and not np.allclose(a[0], c[0])
    tower = build_tiny_text_tower(width=32, layers=2, seed=3)
    assert sum(p.numel() for p in tower.parameters()) < 3_000_000


def test_an_embedding_does_not_depend_on_the_texts_beside_it(tmp_path):
    # the cache stores texts encoded together; a fresh encoding of one text must give the same bits
    enc = TextEncoder(TextModelConfig(name="tiny", seed=0))
    texts = ["move down", "move right", "pick up the red block and put it in the drawer", "x"]
    together = enc.encode(texts)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(together[i], enc.encode([t])[0])
    cached = embed_instructions(Corpus.create(str(tmp_path / "corpus")), texts, TextModelConfig(name="tiny", seed=0))
    np.testing.assert_array_equal(cached, together)


def test_cache_embeds_each_text_once_and_adds_rows_only_for_new_texts(tmp_path):
    corpus = Corpus.create(str(tmp_path / "corpus"))
    cfg = TextModelConfig(name="tiny", seed=0)
    first = embed_instructions(corpus, ["push the puck", "open the door", "push the puck"], cfg)
    assert first.shape == (3, 64)
    np.testing.assert_array_equal(first[0], first[2])
    assert len(corpus.parts("text_embeddings")) == 1
    assert corpus.query("SELECT count(*) AS n FROM text_embeddings").column("n")[0].as_py() == 2

    # again, nothing new: the same numbers and no new part
    again = embed_instructions(str(tmp_path / "corpus"), ["open the door", "push the puck"], cfg)
    np.testing.assert_array_equal(again, first[[1, 0]])
    assert len(corpus.parts("text_embeddings")) == 1

    # one new text: one more row; it is the tower's own embedding of that text
    more = embed_instructions(corpus, ["push the puck", "press the button"], cfg)
    assert len(corpus.parts("text_embeddings")) == 2
    rows = corpus.query("SELECT text, text_model FROM text_embeddings ORDER BY text")
    assert rows.column("text").to_pylist() == ["open the door", "press the button", "push the puck"]
    np.testing.assert_allclose(more[1], TextEncoder(cfg).encode(["press the button"])[0], rtol=1e-6)

    # a second text model lives beside the first
    other = TextModelConfig(name="tiny", seed=7, width=32)
    emb = embed_instructions(corpus, ["push the puck"], other)
    assert emb.shape == (1, 32)
    models = corpus.query("SELECT text_model, count(*) AS n FROM text_embeddings GROUP BY 1 ORDER BY 1")
    assert models.column("text_model").to_pylist() == sorted([text_model_id(cfg), text_model_id(other)])
    assert models.column("n").to_pylist() == [3, 1] if text_model_id(cfg) < text_model_id(other) else [1, 3]


def test_bad_text_config_and_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match="width=12"):
        TextModelConfig(width=12)
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        TextEncoder(TextModelConfig(name="ViT-B-32", pretrained=str(missing)))
