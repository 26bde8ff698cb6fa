"""ClipScorer with a tiny randomly initialised open_clip model (no hub, no download), on frames
decoded from real H.264 test videos."""

from __future__ import annotations

import pickle

import av
import numpy as np
import pytest
import torch
from factories import moving_square, pan, static_color, write_video

from defi.curate.base import Frames
from defi.curate.clip_score import ClipScorer, load_clip_model, sample_keyframes
from defi.schemas.records import ClipRecord, clips_table

PROMPTS = ["a robot arm grasping an object", "hands manipulating objects", "a red square"]


def decode(path) -> Frames:
    with av.open(str(path)) as c:
        fr = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in c.decode(video=0)]
    return Frames(np.stack([f for f, _ in fr]), np.array([t for _, t in fr]), np.arange(len(fr)))


def tiny(**kw) -> ClipScorer:
    args = dict(model="defi-tiny", pretrained=None, prompts=PROMPTS, device="cpu", seed=0)
    args.update(kw)
    return ClipScorer(**args)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    return {
        "square": decode(write_video(d / "sq.mp4", moving_square(20), fps=10)),
        "pan": decode(write_video(d / "pan.mp4", pan(20, seed=1), fps=10)),
        "pan_big": decode(write_video(d / "pan_big.mp4", pan(12, h=96, w=128, seed=4), fps=10)),
        "static": decode(write_video(d / "st.mp4", static_color(8), fps=10)),
    }


@pytest.fixture(scope="module")
def scorer():
    return tiny()


def test_outputs_shape_norm_and_range(scorer, videos):
    out = scorer.score(videos["square"])
    emb = np.asarray(out["clip_embedding"], np.float32)
    assert emb.shape == (64,) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    assert list(out["clip_scores"]) == PROMPTS
    vals = np.array(list(out["clip_scores"].values()))
    assert np.all(vals >= -1) and np.all(vals <= 1)
    assert out["clip_score_max"] == max(vals)
    # scores are the cosine of the stored embedding with the prompt embeddings
    text = scorer._text_emb.numpy()
    np.testing.assert_allclose(vals, text @ emb, atol=1e-5)
    assert "clip_error" not in out


def test_deterministic_given_seed(scorer, videos):
    a = scorer.score(videos["pan"])["clip_embedding"]
    b = tiny().score(videos["pan"])["clip_embedding"]
    c = tiny(seed=1).score(videos["pan"])["clip_embedding"]
    assert a == b
    assert not np.allclose(a, c, atol=1e-3)


def test_identical_frames_identical_embedding_different_videos_differ(scorer, videos):
    st = videos["static"]
    # a static clip: every keyframe is the same image, so any length gives the same embedding
    e8 = np.array(scorer.score(st)["clip_embedding"])
    e3 = np.array(scorer.score(Frames(st.frames[:3], st.pts_s[:3], st.indices[:3]))["clip_embedding"])
    one = np.array(scorer.embed_images(st.frames[:1])[0])
    np.testing.assert_allclose(e8, e3, atol=1e-6)
    np.testing.assert_allclose(e8, one, atol=1e-6)
    es = np.array(scorer.score(videos["square"])["clip_embedding"])
    ep = np.array(scorer.score(videos["pan"])["clip_embedding"])
    assert float(es @ ep) < 0.999 and float(es @ e8) < 0.999 and float(ep @ e8) < 0.999


def test_batch_equals_one_by_one(scorer, videos):
    clips = [videos["square"], videos["pan_big"], videos["pan"], videos["static"]]  # two frame sizes
    small_batches = tiny(batch_size=3)
    batch = small_batches.score_batch(clips)
    for clip, b in zip(clips, batch, strict=False):
        single = scorer.score(clip)
        np.testing.assert_allclose(b["clip_embedding"], single["clip_embedding"], atol=1e-5)
        np.testing.assert_allclose(list(b["clip_scores"].values()), list(single["clip_scores"].values()), atol=1e-5)


def test_keyframe_sampling():
    assert sample_keyframes(20, 4).tolist() == [2, 7, 12, 17]
    assert sample_keyframes(3, 4).tolist() == [0, 1, 2]
    assert sample_keyframes(1, 1).tolist() == [0]


def test_local_checkpoint_round_trip(scorer, videos, tmp_path):
    from safetensors.torch import save_file

    net, _ = load_clip_model("defi-tiny", None, "cpu", seed=0)
    st_path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st_path))
    pt_path = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), pt_path)
    want = scorer.score(videos["pan"])
    for path in (st_path, pt_path):
        # a different seed proves the weights come from the file, not from the random init
        got = tiny(pretrained=str(path), seed=123).score(videos["pan"])
        np.testing.assert_allclose(got["clip_embedding"], want["clip_embedding"], atol=1e-6)
        np.testing.assert_allclose(list(got["clip_scores"].values()), list(want["clip_scores"].values()), atol=1e-6)
    with pytest.raises(ValueError, match="no pretrained tags"):
        load_clip_model("defi-tiny", "laion2b_s34b_b79k")


def test_threshold_reject_and_record(scorer, videos):
    rec = ClipRecord(key="k", source_id="s", start_frame=0, end_frame=20, start_s=0, end_s=2)
    s = tiny(min_score=1.0)  # nothing reaches cosine 1
    scores, reason = s(videos["square"])
    assert reason == "low_clip_score"
    s.update_record(rec, scores)
    assert not rec.kept and rec.reject_reason == "low_clip_score"
    assert rec.clip_score_max == scores["clip_score_max"] and len(rec.clip_embedding) == 64
    row = clips_table([rec]).to_pylist()[0]  # the columns accept what the scorer produced
    assert dict(row["clip_scores"]) == pytest.approx(scores["clip_scores"])
    assert row["clip_embedding"] == pytest.approx(scores["clip_embedding"])
    # thresholds act on scores only (no model needed): just below / above the max
    top = scores["clip_score_max"]
    assert tiny(min_score=top - 1e-3).reject_reason(scores) is None
    assert tiny(min_score=top + 1e-3).reject_reason(scores) == "low_clip_score"
    assert scorer(videos["square"])[1] is None  # score-only mode


def test_empty_clip_is_data_not_exception(scorer, videos):
    empty = Frames(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64))
    out = scorer.score_batch([empty, videos["square"]])
    assert out[0]["clip_error"] == "no_frames" and out[0]["clip_embedding"] is None
    assert out[1]["clip_embedding"] is not None
    assert scorer.reject_reason(out[0]) is None  # score-only: an unscored clip is not rejected
    rec = ClipRecord(key="k", source_id="s", start_frame=0, end_frame=0, start_s=0, end_s=0)
    tiny(min_score=0.0).update_record(rec, out[0])
    assert rec.errors == {"clip": "no_frames"} and rec.reject_reason == "clip_error"


def test_model_loads_once_and_pickles_without_it(scorer, videos):
    scorer.score(videos["square"])
    net = scorer._net
    scorer.score_batch([videos["pan"], videos["static"]])
    assert scorer._net is net
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone._net is None and clone.params() == scorer.params()
    assert clone.score(videos["pan"])["clip_embedding"] == scorer.score(videos["pan"])["clip_embedding"]
    assert set(scorer.lineage()["params"]) == {"model", "pretrained", "prompts", "num_frames", "device", "batch_size", "min_score", "seed"}


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="unknown CLIP model"):
        ClipScorer(model="no-such-model", pretrained=None).score(
            Frames(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(1), np.zeros(1, np.int64))
        )
    with pytest.raises(ValueError):
        ClipScorer(num_frames=0)
    with pytest.raises(ValueError):
        ClipScorer(prompts=[])


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (33, 51)])
def test_preprocess_matches_open_clip_eval_transform(size):
    import open_clip
    from PIL import Image

    s = tiny(model="defi-tiny-64")
    s._load()
    im = np.random.default_rng(0).integers(0, 255, size + (3,), dtype=np.uint8)
    ref = open_clip.image_transform(64, is_train=False)(Image.fromarray(im))
    torch.testing.assert_close(s._preprocess(im[None])[0], ref, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu(scorer, videos):
    gpu = tiny(device="auto")
    clips = [videos["square"], videos["pan_big"], videos["static"]]
    for a, b in zip(gpu.score_batch(clips), scorer.score_batch(clips), strict=False):
        np.testing.assert_allclose(a["clip_embedding"], b["clip_embedding"], atol=2e-2)
    assert gpu._device == "cuda"
