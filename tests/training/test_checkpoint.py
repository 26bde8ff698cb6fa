"""Checkpoints: round trip, optimizer/RNG state, hash, and clear errors on corrupt files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from defi.training.checkpoint import CheckpointError, checkpoint_hash, load_checkpoint, restore_rng, save_checkpoint
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny


def make(tmp_path, bottleneck="vq"):
    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=16, patch_size=4, bottleneck=bottleneck)
    m = GIDM(cfg)
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        m(x, y)["loss"].backward()
        opt.step()
        sched.step()
    d = save_checkpoint(tmp_path / "ck", m, cfg, opt, sched, step=3, extra={"note": "hi"})
    return m, cfg, opt, sched, (x, y), d


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    m, cfg, opt, sched, (x, y), d = make(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "state.json", "state.safetensors"]
    assert not list(tmp_path.glob(".tmp-*"))
    expected_rand = torch.rand(3)  # drawn right after the save
    m2, cfg2, state = load_checkpoint(d)
    assert cfg2 == cfg and state["step"] == 3 and state["extra"] == {"note": "hi"}
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert int(m2.bottleneck.steps) == 3  # VQ usage buffers travel with the weights
    m.eval(), m2.eval()
    assert torch.equal(m.encode(x, y)["codes"], m2.encode(x, y)["codes"])
    opt2 = torch.optim.AdamW(m2.trainable_parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sorted(s1) == sorted(s2)
    for pid, a in s1.items():
        b = s2[pid]
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and float(a["step"]) == float(b["step"]) == 3
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5**s)
    sched2.load_state_dict(state["scheduler"])
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    random.random(), np.random.rand()
    restore_rng(state["rng"])
    assert torch.equal(torch.rand(3), expected_rand)


def test_hash_is_stable_and_tracks_weights(tmp_path):
    m, cfg, opt, sched, _, d = make(tmp_path)
    h = checkpoint_hash(d)
    assert len(h) == 12 and h == checkpoint_hash(d)
    d2 = save_checkpoint(tmp_path / "again", m, cfg, step=3)
    assert checkpoint_hash(d2) == h  # same weights, same name for their labels
    with torch.no_grad():
        m.head.bias.add_(1.0)
    save_checkpoint(d, m, cfg, step=4)  # overwrite in place, atomically
    assert checkpoint_hash(d) != h
    assert load_checkpoint(d)[2]["step"] == 4


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    *_, d = make(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors.*truncated or corrupt"):
        load_checkpoint(d)


def test_garbage_config_is_a_clear_error(tmp_path):
    *_, d = make(tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(d)
    (d / "config.json").write_text(json.dumps({"format_version": 1, "model_type": "gidm", "config": {"bottleneck": "gumbel"}}))
    with pytest.raises(CheckpointError, match=r"(?s)config\.json: invalid config.*bottleneck='gumbel'"):
        load_checkpoint(d)
    (d / "config.json").write_text(json.dumps({"format_version": 1, "model_type": "gan", "config": {}}))
    with pytest.raises(CheckpointError, match="unknown model_type 'gan'; registered: gidm"):
        load_checkpoint(d)


def test_weights_not_matching_config_and_missing_files(tmp_path):
    *_, d = make(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["model_dim"] = 32
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match config.json"):
        load_checkpoint(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        checkpoint_hash(d)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")


def test_corrupt_train_state_is_a_clear_error(tmp_path):
    *_, d = make(tmp_path)
    (d / "state.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match=r"state\.safetensors: unreadable"):
        load_checkpoint(d)


def test_keypoint_encoder_round_trip_and_config_without_the_field(tmp_path):
    """A keypoint-encoder GIDM loads with identical latents; a config.json written before the
    keypoints field existed still loads (as the transformer encoder it was)."""
    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=16, patch_size=4, keypoints=4)
    m = GIDM(cfg)
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    d = save_checkpoint(tmp_path / "kp", m, cfg, step=0)
    m2, cfg2, _ = load_checkpoint(d)
    assert cfg2.keypoints == 4 and m2.keypoint_encoder is not None
    assert torch.equal(m.encode(x, y)["z"], m2.encode(x, y)["z"])
    old = gidm_tiny(image_size=16, patch_size=4)
    d_old = save_checkpoint(tmp_path / "old", GIDM(old), old, step=0)
    saved = json.loads((d_old / "config.json").read_text())
    model_cfg = saved["config"]
    assert model_cfg.pop("keypoints") == 0
    (d_old / "config.json").write_text(json.dumps(saved))
    m3, cfg3, _ = load_checkpoint(d_old)
    assert cfg3.keypoints == 0 and m3.keypoint_encoder is None


def test_checkpoints_in_the_old_data_layout_load_and_a_newer_one_is_refused(tmp_path):
    """state.json extra["data"] as `defi train gidm` wrote it before ``DataContract``: the labeler
    reads the same gap (and names its labels the same); a record of a newer version is refused
    in one line naming the version."""
    from defi.labelers.latent_actions import LatentActionLabeler
    from defi.schemas.contract import DataContract
    from defi.schemas.gap import Gap
    from defi.training.checkpoint import load_model, read_contract

    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=16, patch_size=4)
    old = {"gap_s": None, "gap_frames": 3, "size": 16, "image_size": 16}
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "step-00000005", GIDM(cfg), cfg, step=5, extra={"data": old})
    _, _, state = load_model(run, expect="gidm")
    assert state["contract"] == read_contract(run) == DataContract(image_size=16, gap=Gap.of_frames(3))
    labeler = LatentActionLabeler(str(run), device="cpu")
    assert labeler.gap_spec == Gap.of_frames(3) and labeler.name == f"gidm-{labeler.hash}"
    assert LatentActionLabeler(str(run), gap_frames=3, device="cpu").name == labeler.name
    new = save_checkpoint(tmp_path / "new", GIDM(cfg), cfg, extra={"data": {"version": 7, "image_size": 16}})
    with pytest.raises(CheckpointError) as e:
        load_model(new, expect="gidm")
    assert "data contract version 7: this code reads version 1" in str(e.value) and "\n" not in str(e.value)
