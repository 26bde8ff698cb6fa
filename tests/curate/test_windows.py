"""Window arithmetic: clip spans in seconds and frames, exact multiples, remainders, snapping."""

import numpy as np
import pytest

from defi.curate.shots import Shot
from defi.curate.windows import Clip, Windows, window_spans

FPS = 24


def shot(duration_s: float, start_frame: int = 0, index: int = 0, fps: float = FPS) -> Shot:
    """A constant-rate shot of ``duration_s`` seconds starting at source frame ``start_frame``."""
    n = round(duration_s * fps)
    return Shot(index, start_frame, start_frame + n, start_frame / fps, (start_frame + n) / fps)


def spans(clips):
    return [(round(c.start_s - clips[0].start_s, 6), round(c.end_s - clips[0].start_s, 6), c.reject_reason) for c in clips]


W = Windows(clip_len_s=4.0, stride_s=4.0, min_clip_s=1.0, max_clip_s=8.0)


def test_shot_up_to_max_is_one_clip():
    assert spans(W([shot(8.0)])) == [(0, 8, None)]
    assert spans(W([shot(1.0)])) == [(0, 1, None)]  # exactly min: kept


def test_shot_shorter_than_min_is_rejected_too_short():
    clips = W([shot(0.5, start_frame=48)])
    assert [(c.start_frame, c.end_frame, c.reject_reason) for c in clips] == [(48, 60, "too_short")]


def test_exact_multiple_has_no_remainder():
    clips = W([shot(12.0)])
    assert spans(clips) == [(0, 4, None), (4, 8, None), (8, 12, None)]
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 96), (96, 192), (192, 288)]


def test_remainder_kept_at_min_and_rejected_below_it():
    assert spans(W([shot(13.0)])) == [(0, 4, None), (4, 8, None), (8, 12, None), (12, 13, None)]
    assert spans(W([shot(12.5)])) == [(0, 4, None), (4, 8, None), (8, 12, None), (12, 12.5, "too_short")]


def test_just_over_max_is_split():
    # 8.5 s > max 8: two whole windows and a 0.5 s remainder, rejected.
    assert spans(W([shot(8.5)])) == [(0, 4, None), (4, 8, None), (8, 8.5, "too_short")]


def test_overlapping_and_gapped_strides():
    over = Windows(clip_len_s=4, stride_s=2, min_clip_s=1, max_clip_s=8)
    assert spans(over([shot(9.0)])) == [(0, 4, None), (2, 6, None), (4, 8, None), (6, 9, None)]
    gaps = Windows(clip_len_s=4, stride_s=5, min_clip_s=1, max_clip_s=8)
    # Next start (15 s) is past the end: no remainder.
    assert spans(gaps([shot(14.0)])) == [(0, 4, None), (5, 9, None), (10, 14, None)]
    assert spans(gaps([shot(16.0)])) == [(0, 4, None), (5, 9, None), (10, 14, None), (15, 16, None)]


def test_float_noise_does_not_break_exact_multiples():
    # 0.1 + 0.2 != 0.3 in floats; the spans must still be exactly three whole windows.
    assert [(round(a, 9), round(b, 9), r) for a, b, r in window_spans(0.3, 0.1, 0.1, 0.05, 0.1)] == [
        (0, 0.1, None),
        (0.1, 0.2, None),
        (0.2, 0.3, None),
    ]
    # NTSC rate: 360 frames at 30000/1001 fps last 12.012 s; windows of 4 s are 119.88 frames, so
    # boundaries snap up to whole frames, and the 0.012 s remainder holds no frame: dropped.
    fps = 30000 / 1001
    clips = W([Shot(0, 0, 360, 0.0, 360 / fps)])
    assert [(c.start_frame, c.end_frame, c.reject_reason) for c in clips] == [(0, 120, None), (120, 240, None), (240, 360, None)]
    assert clips[1].start_s == pytest.approx(120 / fps)


def test_frames_follow_shot_offset_and_clip_index_runs_over_shots():
    shots = [shot(3.0, start_frame=0, index=0), shot(10.0, start_frame=72, index=1), shot(0.25, start_frame=312, index=2)]
    clips = W(shots)
    assert [(c.shot_index, c.clip_index, c.start_frame, c.end_frame, c.reject_reason) for c in clips] == [
        (0, 0, 0, 72, None),
        (1, 1, 72, 168, None),
        (1, 2, 168, 264, None),
        (1, 3, 264, 312, None),  # 2 s remainder kept
        (2, 4, 312, 318, "too_short"),
    ]
    for c in clips:
        assert c.start_s == pytest.approx(c.start_frame / FPS) and c.end_s == pytest.approx(c.end_frame / FPS)
        assert c.num_frames == c.end_frame - c.start_frame


def test_variable_frame_rate_snaps_to_the_first_frame_at_or_after_the_boundary():
    # 10 fps for 5 s, then 40 fps for 5 s: 50 + 200 frames.
    pts = np.concatenate([np.arange(50) / 10, 5 + np.arange(200) / 40])
    s = Shot(0, 0, 250, 0.0, 10.0)
    clips = W([s], pts_s=pts)
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 40), (40, 50 + 120), (170, 250)]
    assert [c.start_s for c in clips] == pytest.approx([0.0, 4.0, 8.0])
    assert clips[-1].end_s == 10.0
    # Between frames: a boundary at 4.0 s with frames at 3.95 and 4.05 snaps to 4.05.
    pts2 = np.arange(120) * 0.1 - 0.05
    pts2[0] = 0.0
    c = W([Shot(0, 0, 120, 0.0, 12.0)], pts_s=pts2)
    assert [x.start_frame for x in c] == [0, 41, 81]
    assert c[1].start_s == pytest.approx(4.05)


def test_no_max_never_splits():
    w = Windows(clip_len_s=4, stride_s=4, min_clip_s=1, max_clip_s=None)
    assert spans(w([shot(100.0)])) == [(0, 100, None)]


def test_bad_parameters_are_all_reported():
    with pytest.raises(ValueError) as e:
        Windows(clip_len_s=4, stride_s=0, min_clip_s=5, max_clip_s=2)
    msg = str(e.value)
    assert "stride_s=0" in msg and "min_clip_s=5" in msg and "max_clip_s=2" in msg


def test_clip_is_a_value():
    assert Clip(0, 0, 0, 24, 0.0, 1.0).duration_s == 1.0
    assert Windows().lineage() == {
        "name": "windows",
        "version": "1",
        "params": {"clip_len_s": 4.0, "stride_s": 4.0, "min_clip_s": 1.0, "max_clip_s": 8.0},
    }
