"""The CoCa captioner on its own: a tiny random CoCa in open_clip's folder layout (no hub)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from captioning import tiny_captioner

from defi.labelers.captions import CaptionLabeler, CaptionModelError, middle_frame, preprocess_images


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coca")
    return {"a": tiny_captioner(tmp / "coca-a", seed=0), "b": tiny_captioner(tmp / "coca-b", seed=1)}


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(n)]


def test_captions_are_text_deterministic_and_depend_on_the_image(models):
    lab = CaptionLabeler(models["a"], device="cpu", batch_size=2)
    ims = images(4)
    caps = lab.caption_images(ims)
    assert len(caps) == 4 and all(isinstance(c, str) and c for c in caps)
    assert len(set(caps)) > 1  # not one caption for every image
    assert CaptionLabeler(models["a"], device="cpu", batch_size=2).caption_images(ims) == caps
    rows = lab.caption_clips([("k1", ims[0]), ("k2", ims[1])], run_id="r1")
    assert [r["key"] for r in rows] == ["k1", "k2"] and [r["caption"] for r in rows] == caps[:2]
    assert rows[0]["labeler"] == lab.name == f"caption-{lab.config_hash}" and rows[0]["model"] == "coca-a"
    assert rows[0]["error"] is None and rows[0]["run_id"] == "r1" and rows[0]["version"] == lab.version


def test_config_hash_follows_the_model_and_the_decoding(models, tmp_path):
    a = CaptionLabeler(models["a"], device="cpu")
    assert CaptionLabeler(models["b"], device="cpu").name != a.name  # other weights
    assert CaptionLabeler(models["a"], device="cpu", max_len=12).name != a.name  # other decoding
    assert CaptionLabeler(models["a"], device="cpu", batch_size=3).name == a.name  # batching shapes nothing
    moved = shutil.copytree(models["a"], tmp_path / "elsewhere")
    assert CaptionLabeler(str(moved), device="cpu").name == a.name  # the content names it, not the path
    assert a.params()["identity"]["weights"] and a.params()["frame"] == "middle"


def test_frame_rule_and_preprocessing():
    assert [middle_frame(n) for n in (1, 2, 9, 10)] == [0, 1, 4, 5]
    # a 2:1 image: the short side becomes 8 px, the centre 8x8 is kept (left and right quarters cut)
    im = np.zeros((16, 32, 3), np.uint8)
    im[:, 4:28] = 255
    x = preprocess_images([im], (8, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert tuple(x.shape) == (1, 3, 8, 8) and float(x.min()) > 0.95


def test_bad_models_are_refused_in_one_line(models, tmp_path):
    def refused(spec) -> str:
        with pytest.raises(CaptionModelError) as e:
            CaptionLabeler(spec, device="cpu")
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert "no such folder" in refused(str(tmp_path / "nope"))
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    assert "is a file" in refused(str(tmp_path / "weights.safetensors"))
    (tmp_path / "empty").mkdir()
    assert "not an open_clip model folder" in refused(str(tmp_path / "empty"))
    clip = shutil.copytree(models["a"], tmp_path / "clip")
    cfg = json.loads((clip / "open_clip_config.json").read_text())
    del cfg["model_cfg"]["multimodal_cfg"]
    (clip / "open_clip_config.json").write_text(json.dumps(cfg))
    assert "is not a captioner" in refused(str(clip))
    nocoef = shutil.copytree(models["a"], tmp_path / "noweights")
    (nocoef / "open_clip_model.safetensors").unlink()
    assert "safetensors" in refused(str(nocoef))
    assert "is not a captioner" in refused("ViT-B-32:openai")  # refused before any download
    assert "not an open_clip model" in refused("no-such-arch:tag")
    assert "ARCH:TAG" in refused("coca_ViT-B-32") or "coca_ViT-B-32:TAG" in refused("coca_ViT-B-32")
