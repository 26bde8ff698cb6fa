"""No action row lost in curation: a 20 Hz LeRobot dataset -> ``defi curate`` (at 10 fps and at its
native 20 fps) -> ``defi export lerobot`` gives back every action and state row of every episode,
equal values, in order. At 10 fps each clip stores all its rows at 20 Hz with the map from its
frames to rows; the export holds each frame over the two rows it spans."""

import numpy as np
import pytest

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

pytest.importorskip("metaworld")

from defi.curate.lerobot import load_lerobot
from defi.curate.robot import rows_to_frames
from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.export import export_lerobot
from defi.pipelines.curate_config import CurateConfig
from defi.schemas.corpus import Corpus
from defi.schemas.shards import ShardReader

SQL = "SELECT key FROM clips WHERE kept AND has_actions ORDER BY key"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from defi.training.sim import generate

    ds = tmp_path_factory.mktemp("rows") / "reach"
    generate(["reach-v3"], 2, ds, size=64, fps=20, max_steps=40, steps_after_success=40, seed=1, progress=False)
    return ds


def _curate(ds, root, fps):
    # one clip per episode (windows longer than an episode), nothing filtered away
    cfg = from_dict(
        CurateConfig,
        {
            "windows": {"clip_len_s": 30.0, "stride_s": 30.0, "min_clip_s": 0.2, "max_clip_s": 30.0},
            "encode": {"fps": fps, "short_side": 64},
            "use_dedup": False,
            "ray": {"num_cpus": 1},
            "motion": {"min_motion_mean": 0.0},
            "blur": {"min_blur": 0.0},
            "black": {"max_black_frac": 1.0},
        },
    )
    assert run_curate([str(ds)], str(root), cfg, progress=False)["status"] == "done"


@pytest.mark.slow  # two curate + export runs, ~70 s on 2 cores
@pytest.mark.parametrize("fps", [10, 20])
def test_every_action_row_survives_curate_and_export(dataset, tmp_path, fps):
    src = load_lerobot(dataset)
    root = tmp_path / "corpus"
    _curate(dataset, root, fps)
    c = Corpus.open(str(root))
    kept = c.query("SELECT key, shard FROM clips WHERE kept AND has_actions").to_pylist()
    assert len(kept) == len(src) == 2

    # the shard samples: all rows at 20 Hz, a frame -> row map with one frame per 20/fps rows
    samples = list(ShardReader(sorted({c.shard_url(k["shard"]) for k in kept})))
    for s in samples:
        actions, proprio, frame_rows, rate = s.rows()
        assert rate == 20.0 and s.meta.fps == fps
        assert len(frame_rows) == s.meta.num_frames and (frame_rows >= 0).all()
        assert np.all(np.diff(frame_rows) == 20 // fps)
        assert len(actions) == len(proprio) == len(s.meta.row_times_s)
        np.testing.assert_array_equal(rows_to_frames(frame_rows, len(actions))[frame_rows], np.arange(len(frame_rows)))

    out = tmp_path / "lerobot"
    summary = export_lerobot(str(root), SQL, str(out), progress=False)
    assert summary["skipped"] == {} and summary["fps"] == 20 and summary["episodes"] == 2
    back = load_lerobot(out)
    # episodes come back in key order; match them to the source by their first action row
    by_first = {ep.actions[0].tobytes(): ep for ep in back}
    for ep in src:
        got = by_first[ep.actions[0].tobytes()]
        assert len(got) == len(ep), f"{len(ep)} rows in, {len(got)} out"
        np.testing.assert_array_equal(got.actions, ep.actions)
        np.testing.assert_array_equal(got.proprio, ep.proprio)
        assert got.timestamp_issues == []
        assert got.language == ep.language
