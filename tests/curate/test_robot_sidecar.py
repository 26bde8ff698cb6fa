"""`episode.mp4` + `episode.npz` sidecars as they come: a per-step `success` array is accepted
(success = any step), unknown fields are kept in the source's metadata, and a sidecar that
cannot give actions names the field and why while the video is still curated, action-free."""

import json

import numpy as np
import pytest
from factories import moving_square, write_video

from defi.curate.robot import SidecarError, load_npz_episode
from defi.pipelines.config import from_dict
from defi.pipelines.sources import list_sources
from defi.pipelines.curate_video import ClipItem, VideoDone, process_source
from defi.pipelines.curate_config import CurateConfig

FPS = 10
N = 20


def _episode(tmp_path, **arrays):
    mp4 = write_video(tmp_path / "episode.mp4", moving_square(N, h=48, w=64), fps=FPS)
    np.savez(tmp_path / "episode.npz", **arrays)
    return mp4


def _curate(tmp_path):
    (spec,) = list_sources([str(tmp_path)])
    cfg = from_dict(CurateConfig, {"windows": {"min_clip_s": 0.5}, "encode": {"fps": FPS, "short_side": 32}})
    out = list(process_source(spec, cfg))
    done = next(o for o in out if isinstance(o, VideoDone))
    return done.source, [o.record for o in out if isinstance(o, ClipItem)]


def test_per_step_success_and_unknown_fields(tmp_path):
    success = np.zeros(N, bool)
    success[-3:] = True
    actions = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    _episode(tmp_path, actions=actions, success=success, reward=np.linspace(0, 1, N), task_id=np.int64(7), robot_name="arm-1")
    ep = load_npz_episode(tmp_path / "episode.mp4")
    assert ep.success is True and np.array_equal(ep.actions, actions)
    assert ep.extra["task_id"] == 7 and ep.extra["robot_name"] == "arm-1"
    assert ep.extra["reward"] == {"shape": [N], "dtype": "float64"}
    src, clips = _curate(tmp_path)
    assert src.error is None and src.kind == "robot"
    meta = json.loads(src.meta_json)
    assert meta["success"] is True and meta["sidecar_fields"]["robot_name"] == "arm-1"
    assert clips and all(c.has_actions for c in clips if c.kept)
    # all-false steps: not a success
    np.savez(tmp_path / "episode.npz", actions=actions, success=np.zeros(N, np.int8))
    assert load_npz_episode(tmp_path / "episode.mp4").success is False


@pytest.mark.parametrize(
    "arrays, field, reason",
    [
        (dict(action=np.zeros((N, 2), np.float32)), "actions", "missing (fields: action)"),
        (dict(actions=np.array(["up"] * N)), "actions", "expected numbers"),
        (dict(actions=np.zeros((N, 2, 2), np.float32)), "actions", "expected [steps, dims]"),
        (dict(actions=np.zeros((N, 2), np.float32), success=np.array(["yes"] * N)), "success", "expected booleans"),
    ],
)
def test_unusable_sidecar_names_the_field_and_video_is_curated_action_free(tmp_path, arrays, field, reason):
    _episode(tmp_path, **arrays)
    with pytest.raises(SidecarError) as e:
        load_npz_episode(tmp_path / "episode.mp4")
    assert e.value.field == field and reason in e.value.reason
    src, clips = _curate(tmp_path)
    assert src.error is None, src.error_detail  # not lost for a metadata quirk
    assert f"robot sidecar unusable ({field}: " in src.error_detail and "curated action-free" in src.error_detail
    assert json.loads(src.meta_json)["sidecar_error"].startswith(f"{field}: ")
    assert clips and any(c.kept for c in clips) and not any(c.has_actions for c in clips)


def test_a_sidecar_that_is_not_an_npz(tmp_path):
    write_video(tmp_path / "episode.mp4", moving_square(N, h=48, w=64), fps=FPS)
    (tmp_path / "episode.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(SidecarError, match="^file: episode.npz is not a readable npz"):
        load_npz_episode(tmp_path / "episode.mp4")
    src, clips = _curate(tmp_path)
    assert src.error is None and "file: episode.npz is not a readable npz" in src.error_detail
    assert any(c.kept for c in clips)
