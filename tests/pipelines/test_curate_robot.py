"""Robot episodes generated in Meta-World, re-imported through `defi curate`: every clip's
``.actions.npy`` holds exactly the generated actions of the frames it contains."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

pytest.importorskip("metaworld")

from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.curate_config import CurateConfig
from defi.schemas.corpus import Corpus


def test_reimported_episodes_carry_their_actions(tmp_path):
    from defi.training.sim import generate

    ds = tmp_path / "reach"
    generate(["reach-v3"], 2, ds, size=64, fps=20, max_steps=60, seed=0, progress=False)
    cfg = from_dict(
        CurateConfig,
        {
            "windows": {"clip_len_s": 1.0, "stride_s": 1.0, "min_clip_s": 0.5, "max_clip_s": 1.0},
            "encode": {"fps": 20, "short_side": 64},
            "use_dedup": False,
            "ray": {"num_cpus": 2},
        },
    )
    root = str(tmp_path / "corpus")
    rec = run_curate([str(ds)], root, cfg, progress=False)
    assert rec["status"] == "done"
    c = Corpus.open(root)
    src = c.query("SELECT kind, error, meta_json FROM sources").to_pylist()
    assert len(src) == 2 and all(s["kind"] == "robot" and s["error"] is None for s in src)
    rows = pq.read_table(ds / "data" / "chunk-000" / "file-000.parquet").to_pandas().sort_values("index")
    starts = _episode_starts(ds)
    # episodes are concatenated in one mp4: a row's time on the file's clock is its episode's start + timestamp
    row_times = np.array([starts[int(e)] + t for e, t in zip(rows.episode_index, rows.timestamp, strict=False)])
    row_actions = np.stack(rows.action.to_numpy()).astype(np.float32)
    kept = c.query("SELECT key, shard FROM clips WHERE kept").to_pylist()
    assert len(kept) >= 2
    checked = 0
    for shard in {k["shard"] for k in kept}:
        for sample in wds.WebDataset(c.shard_url(shard), shardshuffle=False):
            meta = json.loads(sample["json"])
            actions = np.load(io.BytesIO(sample["actions.npy"]))
            assert actions.shape == (meta["num_frames"], 4) and meta["action_dim"] == 4
            pts = np.array(meta["extra"]["frame_pts_s"])
            nearest = np.abs(row_times[None, :] - pts[:, None]).argmin(axis=1)
            assert np.abs(row_times[nearest] - pts).max() < 1e-3  # every clip frame is a recorded row
            np.testing.assert_array_equal(actions, row_actions[nearest])
            assert sample["lang.txt"].decode()
            checked += 1
    assert checked == len(kept)


def _episode_starts(ds):
    eps = pq.read_table(ds / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    col = [k for k in eps[0] if k.startswith("videos/") and k.endswith("from_timestamp")][0]
    return {int(e["episode_index"]): float(e[col]) for e in eps}
