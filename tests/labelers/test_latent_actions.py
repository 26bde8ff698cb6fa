"""The latent-action labeler, without Ray: tiny randomly initialised GIDMs saved as real
checkpoints, clips of a moving square decoded from real H.264."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defi.schemas.gap import Gap
from defi.labelers.latent_actions import LatentActionLabeler, clip_stats, window_starts
from defi.schemas.tables import LATENT_ACTIONS, table_from_rows
from defi.training.checkpoint import CheckpointError, save_checkpoint
from defi.training.data import decode_frames
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny
from factories import moving_square, textured_image, write_video

SIZE = 32


def make_ckpt(path, seed=0, extra=None, **overrides):
    torch.manual_seed(seed)
    cfg = gidm_tiny(image_size=SIZE, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1, **overrides)
    return save_checkpoint(path, GIDM(cfg), cfg, step=3, extra=extra)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    return {
        "vq": make_ckpt(tmp / "vq", bottleneck="vq", codebook_size=8, num_action_tokens=2, latent_dim=4),
        "cont": make_ckpt(tmp / "cont", seed=1),
        "fsq": make_ckpt(tmp / "fsq", seed=2, bottleneck="fsq", fsq_levels=(3, 2), extra={"data": {"gap_s": 0.2}}),
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames of a square moving 2 px/frame, through H.264 and back (uint8 [12, 32, 32, 3])."""
    path = write_video(tmp_path_factory.mktemp("v") / "sq.mp4", moving_square(12, h=SIZE, w=SIZE, size=8, speed=2), fps=10)
    return decode_frames(path.read_bytes())


def test_windows_cover_every_transition_once():
    assert window_starts(12, 1).tolist() == list(range(11))
    assert window_starts(12, 3, stride=2).tolist() == [0, 2, 4, 6, 8]  # t + 3 <= 11
    assert window_starts(3, 3).tolist() == [] and window_starts(0, 1).tolist() == []


def test_vq_labels_match_the_model_encode(ckpts, clip):
    lab = LatentActionLabeler(str(ckpts["vq"]), batch_size=5)  # batches cut across windows
    row = lab.label_clip(clip, fps=10.0, key="k1", run_id="r")
    assert row["num_steps"] == 12 - 1 and row["gap_frames"] == 1
    assert np.array(row["codes"]).shape == (11, 2)  # [step][token]
    assert np.array(row["vectors"]).shape == (11, 2 * 4)  # tokens x code dim, flattened
    # the labeler's tokenize-once path equals GIDM.encode on explicit (o_t, o_t+1) pairs
    x = torch.from_numpy(clip.transpose(0, 3, 1, 2).copy()).float() / 255
    ref = lab.model.encode(x[:-1], x[1:])
    assert np.array_equal(np.array(row["codes"]), ref["codes"].numpy())
    np.testing.assert_allclose(np.array(row["vectors"]), ref["z"].reshape(11, -1).numpy(), rtol=1e-5, atol=1e-6)
    hist = np.array(row["code_hist"])
    assert len(hist) == 8 and hist.sum() == 11 * 2
    assert hist.tolist() == np.bincount(ref["codes"].reshape(-1).numpy(), minlength=8).tolist()
    p = hist[hist > 0] / hist.sum()
    assert row["code_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()))
    assert row["dominant_code"] == int(np.argmax(hist))
    norms = np.linalg.norm(np.array(row["vectors"]), axis=1)
    assert row["norm_mean"] == pytest.approx(norms.mean(), rel=1e-5)
    assert row["norm_p90"] == pytest.approx(np.percentile(norms, 90), rel=1e-5)
    np.testing.assert_allclose(row["mean_vector"], np.array(row["vectors"]).mean(0), rtol=1e-5, atol=1e-6)
    table = table_from_rows([row], LATENT_ACTIONS, "latent_actions")  # fits the schema
    assert table.column("labeler")[0].as_py() == lab.name == f"gidm-{lab.hash}"


def test_keypoint_rvq_preset_labels_first_stage_codes_and_summed_vectors(tmp_path, clip):
    from defi.training.gidm import gidm_keypoint_rvq

    torch.manual_seed(3)
    cfg = gidm_keypoint_rvq(image_size=SIZE, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1, keypoints=8)
    path = save_checkpoint(tmp_path / "rvq", GIDM(cfg), cfg, step=1)
    lab = LatentActionLabeler(str(path), batch_size=4, gap_frames=2)
    row = lab.label_clip(clip, fps=10.0)
    x = torch.from_numpy(clip.transpose(0, 3, 1, 2).copy()).float() / 255
    ref = lab.model.encode(x[:-2], x[2:])
    codes, z = np.array(row["codes"]), np.array(row["vectors"])
    assert codes.shape == (10, 1) and np.array_equal(codes, ref["codes"].numpy())
    np.testing.assert_allclose(z, ref["z"].reshape(10, 16).numpy(), rtol=1e-5, atol=1e-6)
    # codes are the first stage's ids (what dominant_code counts), vectors the sum of all 8 stages'
    book = lab.model.bottleneck.codebook.detach().numpy()
    assert book.shape == (8, 16, 16) and np.abs(z - book[0][codes[:, 0]]).max() > 1e-4
    hist = np.array(row["code_hist"])
    assert len(hist) == 16 and hist.sum() == 10 and row["dominant_code"] == int(np.argmax(hist))
    table_from_rows([row], LATENT_ACTIONS)


def test_continuous_has_no_codes_and_short_clips_have_no_steps(ckpts, clip):
    lab = LatentActionLabeler(str(ckpts["cont"]), gap_frames=3)
    row = lab.label_clip(clip, fps=10.0)
    assert row["num_steps"] == 12 - 3 and row["gap_frames"] == 3
    assert row["codes"] is None and row["code_hist"] is None and row["dominant_code"] is None
    assert np.array(row["vectors"]).shape == (9, 8) and row["norm_mean"] > 0
    x = torch.from_numpy(clip.transpose(0, 3, 1, 2).copy()).float() / 255
    ref = lab.model.encode(x[:-3], x[3:])["z"].reshape(9, -1).numpy()
    np.testing.assert_allclose(np.array(row["vectors"]), ref, rtol=1e-5, atol=1e-6)
    short = lab.label_clip(clip[:3], fps=10.0)
    assert short["num_steps"] == 0 and short["vectors"] == [] and short["mean_vector"] is None
    assert short["norm_mean"] is None
    table_from_rows([row, short], LATENT_ACTIONS)


def test_batched_clips_equal_single_clips_and_resize(ckpts, clip):
    lab = LatentActionLabeler(str(ckpts["vq"]), batch_size=7, window_stride=2)
    assert lab.name == f"gidm-{lab.hash}-s2"
    big = np.repeat(np.repeat(clip, 2, axis=1), 2, axis=2)  # 64 px: resized back to 32 by area
    rows = lab.label_clips([("a", clip, 10.0), ("b", clip[:5], 10.0), ("c", big, 10.0)])
    assert [r["num_steps"] for r in rows] == [len(window_starts(12, 1, 2)), 2, 6]
    alone = lab.label_clip(clip[:5], 10.0, key="b")
    assert rows[1]["codes"] == alone["codes"]
    np.testing.assert_allclose(rows[1]["vectors"], alone["vectors"], rtol=1e-5, atol=1e-6)
    assert rows[2]["codes"] == rows[0]["codes"]  # 2x2 area down-sampling restores the same frames


def test_gap_defaults_from_checkpoint_and_names(ckpts, clip):
    fsq = LatentActionLabeler(str(ckpts["fsq"]))  # extra={"data": {"gap_s": 0.2}}
    assert fsq.gap_spec == Gap.of_seconds(0.2) and fsq.name == f"gidm-{fsq.hash}"
    assert fsq.gap(10.0) == 2 and fsq.gap(20.0) == 4 and fsq.gap(1.0) == 1
    row = fsq.label_clip(clip, fps=20.0)
    assert row["gap_frames"] == 4 and row["num_steps"] == 12 - 4
    assert len(row["code_hist"]) == 6 and sum(row["code_hist"]) == 8  # FSQ 3 x 2 levels, 1 token
    other = LatentActionLabeler(str(ckpts["fsq"]), gap_frames=1)
    assert other.name == f"gidm-{fsq.hash}-k1"  # a non-default gap gets its own labels
    # no gap in the checkpoint: 1 frame; naming it explicitly is the same labeler
    assert LatentActionLabeler(str(ckpts["vq"]), gap_frames=1).name == LatentActionLabeler(str(ckpts["vq"])).name
    assert len({fsq.hash, LatentActionLabeler(str(ckpts["vq"])).hash, LatentActionLabeler(str(ckpts["cont"])).hash}) == 3


def test_run_folder_and_bad_arguments(ckpts, tmp_path):
    run = tmp_path / "run"
    make_ckpt(run / "checkpoints" / "step-00000001", seed=5)
    last = make_ckpt(run / "checkpoints" / "step-00000010", seed=6)
    assert LatentActionLabeler(str(run)).ckpt_path == last
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        LatentActionLabeler(str(tmp_path / "nothing"))
    with pytest.raises(ValueError) as e:
        LatentActionLabeler(str(ckpts["vq"]), gap_frames=1, gap_s=0.1, batch_size=0, device="tpu")
    for word in ("not both", "batch_size=0", "device='tpu'"):
        assert word in str(e.value)


def test_clip_stats_by_hand():
    z = np.array([[[3.0, 4.0]], [[0.0, 0.0]], [[6.0, 8.0]]], np.float32)  # norms 5, 0, 10
    codes = np.array([[2], [2], [0]])
    s = clip_stats(z, codes, num_codes=4)
    assert s["code_hist"] == [1, 0, 2, 0] and s["dominant_code"] == 2
    assert s["code_entropy"] == pytest.approx(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)))
    assert s["norm_mean"] == pytest.approx(5.0) and s["norm_p90"] == pytest.approx(9.0)
    assert s["mean_vector"] == pytest.approx([3.0, 4.0])


def test_features_model_labels_match_encode(tmp_path, clip):
    """A GIDM over a frozen (tiny, random) open_clip ViT's patch tokens: the frozen weights come
    back from the checkpoint, and tokenizing each frame once gives what encode() gives."""
    import json

    import open_clip

    vit = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": SIZE, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "defi-label-vit.json").write_text(json.dumps(vit))
    open_clip.add_model_config(tmp_path)
    ck = make_ckpt(
        tmp_path / "feat",
        seed=3,
        input_space="features",
        feature_encoder="open_clip:defi-label-vit",
        feature_dim=32,
        bottleneck="vq",
        codebook_size=8,
    )
    lab = LatentActionLabeler(str(ck), gap_frames=2, batch_size=4)
    row = lab.label_clip(clip, fps=10.0)
    x = torch.from_numpy(clip.transpose(0, 3, 1, 2).copy()).float() / 255
    ref = lab.model.encode(x[:-2], x[2:])
    assert row["num_steps"] == 10 and np.array_equal(np.array(row["codes"]), ref["codes"].numpy())
    np.testing.assert_allclose(np.array(row["vectors"]), ref["z"].reshape(10, -1).numpy(), rtol=1e-5, atol=1e-6)


def test_stabilize_takes_a_camera_pan_out_of_the_labels(ckpts):
    """A still textured scene seen by a panning camera (2 px/frame right, 1 px/frame down): with
    ``stabilize_px`` each window's latent is close to the latent of a pair with no motion at all
    (o_t, o_t); without it, the pan reads as an action. On a still camera it changes nothing."""
    scene = textured_image(64, 64, seed=3)
    pan = np.stack([scene[10 + i : 10 + i + SIZE, 8 + 2 * i : 8 + 2 * i + SIZE] for i in range(8)])
    plain = LatentActionLabeler(str(ckpts["cont"]))
    steady = LatentActionLabeler(str(ckpts["cont"]), stabilize_px=4, batch_size=5)
    assert steady.name == f"gidm-{steady.hash}-st4" and steady.params()["stabilize_px"] == 4
    x = torch.from_numpy(pan.transpose(0, 3, 1, 2).copy()).float() / 255
    still = plain.model.encode(x[:-1], x[:-1])["z"].reshape(7, -1).numpy()  # o_t paired with itself
    z_plain = np.array(plain.label_clip(pan, fps=10.0)["vectors"])
    z_steady = np.array(steady.label_clip(pan, fps=10.0)["vectors"])
    err_plain, err_steady = np.abs(z_plain - still).mean(), np.abs(z_steady - still).mean()
    assert err_plain > 0 and err_steady < 0.25 * err_plain, (err_plain, err_steady)
    # a still camera: nothing to take out, the same labels
    calm = np.repeat(pan[:1], 6, axis=0)
    calm[3:, 10:16, 10:16] = 255  # something moves in the scene, not the camera
    np.testing.assert_allclose(steady.label_clip(calm, 10.0)["vectors"], plain.label_clip(calm, 10.0)["vectors"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stabilize_px=-1"):
        LatentActionLabeler(str(ckpts["cont"]), stabilize_px=-1)
    with pytest.raises(ValueError, match="at most a quarter"):
        LatentActionLabeler(str(ckpts["cont"]), stabilize_px=12)  # 32-px model
