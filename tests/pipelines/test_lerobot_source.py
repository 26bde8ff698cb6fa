"""A LeRobot v3 episode as a curate source: its ``sources`` row describes the episode's span of the
mp4 it shares with other episodes (frames, duration, fps), not the whole file."""

from __future__ import annotations

import numpy as np
from factories import moving_square

from defi.curate.probe import Probe
from defi.pipelines.config import from_dict
from defi.pipelines.sources import list_sources
from defi.pipelines.curate_video import VideoDone, process_source
from defi.pipelines.curate_config import CurateConfig
from defi.curate.lerobot import EpisodeBuffer, LeRobotV3Writer

FPS = 10
LENGTHS = (12, 17, 9)


def test_episode_sources_count_their_own_frames(tmp_path):
    root = tmp_path / "ds"
    w = LeRobotV3Writer(root, FPS, {"action": {"dtype": "float32", "shape": [2], "names": None}}, {"front": (32, 48)})
    for n in LENGTHS:
        w.add_episode(EpisodeBuffer({"front": np.stack(list(moving_square(n, 32, 48, size=8)))}, {"action": np.zeros((n, 2))}, task="push"))
    w.close()
    specs = list_sources([str(root)])
    assert len(specs) == 3 and len({s.uri for s in specs}) == 1  # three episodes, one shared mp4
    whole = Probe()(specs[0].uri)
    assert whole.num_frames == sum(LENGTHS)  # what the row held before: the file's count

    cfg = from_dict(CurateConfig, {"use_dedup": False, "encode": {"fps": FPS}})
    for spec, n in zip(specs, LENGTHS, strict=True):
        done = [x for x in process_source(spec, cfg) if isinstance(x, VideoDone)][0]
        src = done.source
        assert src.error is None
        assert src.num_frames == n and src.num_frames_exact
        assert abs(src.duration_s - n / FPS) < 1e-9
        assert abs(src.fps_avg - FPS) < 1e-9
