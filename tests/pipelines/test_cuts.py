"""A detected cut always splits a video's clips: at the end of the video (a last shot a few frames
long) and next to an analysis segment boundary alike; a short piece is a rejected too_short clip.
Real H.264 of solid-colour shots with hard cuts, through the per-video pipeline (no Ray)."""

import numpy as np
import pytest
from factories import write_video

from defi.pipelines.config import from_dict
from defi.pipelines.sources import SourceSpec
from defi.pipelines.curate_video import ClipItem, process_source
from defi.pipelines.curate_config import CurateConfig

FPS = 24
COLORS = [(230, 40, 40), (30, 60, 160), (240, 240, 60), (20, 160, 40), (200, 200, 200)]


def solid_shots(lengths):
    for n, c in zip(lengths, COLORS, strict=False):
        for _ in range(n):
            yield np.full((48, 64, 3), c, np.uint8)


def _clips(path, **over):
    cfg = from_dict(
        CurateConfig,
        {
            "windows": {"clip_len_s": 4, "stride_s": 4, "max_clip_s": None, "min_clip_s": 0.5},
            "shots": {"min_shot_s": 0.5},
            "encode": {"fps": 8, "short_side": 32},
            **over,
        },
    )
    items = [it for it in process_source(SourceSpec(uri=str(path)), cfg) if isinstance(it, ClipItem)]
    return [(it.record.start_frame, it.record.end_frame, it.record.reject_reason) for it in items]


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_last_shot_of_a_few_frames_is_split_off(tmp_path, detector):
    path = write_video(tmp_path / "v.mp4", solid_shots([36, 30, 4]), fps=FPS)
    assert _clips(path, shots={"min_shot_s": 0.5, "detector": detector}) == [(0, 36, None), (36, 66, None), (66, 70, "too_short")]


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_cuts_next_to_segment_boundaries_split(tmp_path, detector):
    # 1 s segments (24 frames): cuts 1 frame after the boundary at 24 and 1 frame before the one at 48
    lengths = [25, 22, 30]
    path = write_video(tmp_path / "v.mp4", solid_shots(lengths), fps=FPS)
    clips = _clips(path, shots={"min_shot_s": 0.5, "detector": detector}, analysis={"segment_s": 1.0})
    bounds = sorted({b for c in clips for b in c[:2]})
    cuts = set(np.cumsum(lengths)[:-1].tolist())
    assert cuts <= set(bounds), clips  # every true cut is a clip boundary
    shot_of = np.repeat(np.arange(len(lengths)), lengths)
    for start, end, _ in clips:
        assert len(set(shot_of[start:end])) == 1, (start, end, clips)  # no clip holds a cut
    # the 1-frame pieces are rejected too_short; the clips cover the video without gaps
    assert (24, 25, "too_short") in clips and (47, 48, "too_short") in clips
    assert bounds[0] == 0 and bounds[-1] == sum(lengths)
