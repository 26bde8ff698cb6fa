"""Shot detection on real H.264 frames: cut positions, no false cuts, minimum length, streaming."""

import itertools

import av
import numpy as np
import pytest

from defi.curate.base import Frames
from defi.curate.shots import Shot, Shots, min_length_cuts
from factories import moving_square, pan, scenes, smooth_pan, static_color, write_video

FPS = 24
DETECTORS = ["adaptive", "content"]


def decode(path, step: int = 1) -> Frames:
    """Every ``step``-th frame of the video, with its pts and source index."""
    frames, pts, idx = [], [], []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % step == 0:
                frames.append(f.to_ndarray(format="rgb24"))
                pts.append(float(f.pts * f.time_base))
                idx.append(i)
    return Frames(np.stack(frames), np.array(pts), np.array(idx, np.int64))


@pytest.fixture(scope="module")
def scenes_video(tmp_path_factory):
    # Cuts at frames 30, 70, 95 (cumulative sums of the shot lengths).
    return decode(write_video(tmp_path_factory.mktemp("v") / "scenes.mp4", scenes([30, 40, 25, 50]), fps=FPS))


@pytest.fixture(scope="module")
def mixed_video(tmp_path_factory):
    # Static colour, then a moving square, then a pan: cuts at frames 30 and 70.
    gen = itertools.chain(static_color(30), moving_square(40), smooth_pan(40))
    return decode(write_video(tmp_path_factory.mktemp("v") / "mixed.mp4", gen, fps=FPS))


def _starts(shots):
    return [s.start_frame for s in shots]


@pytest.mark.parametrize("detector", DETECTORS)
def test_cuts_of_concatenated_scenes_within_one_frame(scenes_video, detector):
    shots = Shots(detector=detector)(scenes_video)
    assert len(shots) == 4
    assert np.all(np.abs(np.array(_starts(shots)) - [0, 30, 70, 95]) <= 1), _starts(shots)
    # Half-open and contiguous: each shot ends where the next starts, in frames and seconds.
    for a, b in zip(shots, shots[1:]):
        assert (a.end_frame, a.end_s) == (b.start_frame, b.start_s)
    pts = scenes_video.pts_s
    for s in shots:
        assert s.start_s == pytest.approx(pts[s.start_frame])
    assert [s.index for s in shots] == [0, 1, 2, 3]
    # The last shot ends one frame after the last frame.
    assert shots[-1].end_frame == 145
    assert shots[-1].end_s == pytest.approx(145 / FPS)


@pytest.mark.parametrize("detector", DETECTORS)
def test_cuts_between_static_square_and_pan(mixed_video, detector):
    shots = Shots(detector=detector)(mixed_video)
    assert np.all(np.abs(np.array(_starts(shots)) - [0, 30, 70]) <= 1), _starts(shots)


def test_adaptive_does_not_cut_a_fast_pan_over_fine_texture(tmp_path):
    # The factory pan moves 2 px/frame over 4 px noise blocks: ContentDetector's HSV change is ~31
    # (> its 27 default) every frame, so it over-cuts; the adaptive ratio stays ~1.
    f = decode(write_video(tmp_path / "pan.mp4", pan(120), fps=FPS))
    assert _starts(Shots(detector="adaptive", min_shot_s=0)(f)) == [0]
    gen = itertools.chain(static_color(30), moving_square(40), pan(40))
    f = decode(write_video(tmp_path / "mixed.mp4", gen, fps=FPS))
    assert np.all(np.abs(np.array(_starts(Shots(detector="adaptive")(f))) - [0, 30, 70]) <= 1)


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("gen", [moving_square, smooth_pan], ids=["square", "smooth_pan"])
def test_no_cut_in_a_single_source_video(tmp_path, detector, gen):
    f = decode(write_video(tmp_path / "one.mp4", gen(120), fps=FPS))
    shots = Shots(detector=detector, min_shot_s=0)(f)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 120)]
    assert shots[0].end_s == pytest.approx(5.0)


@pytest.mark.parametrize("detector", DETECTORS)
def test_min_shot_length_drops_cuts_and_merges_a_short_tail(tmp_path, detector):
    # Cuts at 10, 40, 48; 10 is 0.42 s after the start and 48 is 0.33 s after 40.
    f = decode(write_video(tmp_path / "s.mp4", scenes([10, 30, 8, 40]), fps=FPS))
    assert _starts(Shots(detector=detector, min_shot_s=0)(f)) == [0, 10, 40, 48]
    shots = Shots(detector=detector, min_shot_s=1.0)(f)
    assert _starts(shots) == [0, 40]
    assert all(s.duration_s >= 1.0 for s in shots)
    # A last shot shorter than the minimum merges into the one before it.
    f = decode(write_video(tmp_path / "t.mp4", scenes([40, 10]), fps=FPS))
    assert _starts(Shots(detector=detector, min_shot_s=0)(f)) == [0, 40]
    assert [(s.start_frame, s.end_frame) for s in Shots(detector=detector, min_shot_s=1.0)(f)] == [(0, 50)]


def test_min_length_cuts_arithmetic():
    pts = np.arange(20) * 0.25  # 4 fps
    assert min_length_cuts([2, 3, 8, 10], pts, 5.0, 1.0) == [8]  # 2: 0.5 s; 3: 0.75 s; 10: 0.5 s after 8
    assert min_length_cuts([4, 8, 18], pts, 5.0, 1.0) == [4, 8]  # 18 leaves a 0.5 s tail: merged
    assert min_length_cuts([4, 8, 18], pts, 5.0, 0.0) == [4, 8, 18]


@pytest.mark.parametrize("detector", DETECTORS)
def test_streaming_chunks_give_the_same_shots(scenes_video, detector):
    op = Shots(detector=detector)
    det = op.stream()
    f = scenes_video
    for i in range(0, len(f), 17):  # chunk edges fall inside shots and next to cuts (30 = 17 + 13)
        det.push(Frames(f.frames[i:i + 17], f.pts_s[i:i + 17], f.indices[i:i + 17]))
    assert det.finish() == op(f)


@pytest.mark.parametrize("detector", DETECTORS)
def test_subsampled_analysis_reports_cuts_late_by_less_than_the_step(tmp_path, detector):
    path = write_video(tmp_path / "s.mp4", scenes([31, 40, 25, 50]), fps=FPS)  # cuts 31, 71, 96
    f = decode(path, step=3)  # analysis at 8 fps: frames 0, 3, 6, ...
    shots = Shots(detector=detector)(f, end_frame=146, end_s=146 / FPS)
    # The first analysis frame at or after each true cut: 33, 72, 96.
    assert _starts(shots) == [0, 33, 72, 96]
    assert [s.start_s for s in shots] == pytest.approx([0, 33 / FPS, 72 / FPS, 96 / FPS])
    assert (shots[-1].end_frame, shots[-1].end_s) == (146, pytest.approx(146 / FPS))


def test_empty_input_and_bad_detector_name():
    empty = Frames(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64))
    assert Shots()(empty) == []
    with pytest.raises(ValueError, match="adaptive, content"):
        Shots(detector="hist")
    assert Shots().lineage()["name"] == "shots"
    assert Shot(0, 10, 34, 1.0, 2.0).num_frames == 24
