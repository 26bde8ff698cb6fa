"""Shot detection on real H.264 frames: cut positions, no false cuts, minimum length, streaming."""

import itertools

import av
import numpy as np
import pytest

from defi.curate.base import Frames
from defi.curate.shots import Shot, Shots
from factories import moving_square, noise, pan, scenes, smooth_pan, static_color, write_video

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
    for a, b in zip(shots, shots[1:], strict=False):
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
def test_every_cut_splits_and_short_shots_are_marked(tmp_path, detector):
    # Cuts at 10, 40, 48; 10 is 0.42 s after the start and 48 is 0.33 s after 40: with a 1 s
    # minimum those pieces are marked too_short, but every cut still splits.
    f = decode(write_video(tmp_path / "s.mp4", scenes([10, 30, 8, 40]), fps=FPS))
    assert _starts(Shots(detector=detector, min_shot_s=0)(f)) == [0, 10, 40, 48]
    shots = Shots(detector=detector, min_shot_s=1.0)(f)
    assert _starts(shots) == [0, 10, 40, 48]
    assert [s.reject_reason for s in shots] == ["too_short", None, "too_short", None]
    # A last shot shorter than the minimum is its own (too_short) shot, not merged.
    f = decode(write_video(tmp_path / "t.mp4", scenes([40, 10]), fps=FPS))
    shots = Shots(detector=detector, min_shot_s=1.0)(f)
    assert [(s.start_frame, s.end_frame, s.reject_reason) for s in shots] == [(0, 40, None), (40, 50, "too_short")]


def solid_shots(lengths, colors, h=48, w=64):
    """Solid-colour shots with hard cuts at the cumulative sums of ``lengths``."""
    for n, c in zip(lengths, colors, strict=True):
        for _ in range(n):
            yield np.full((h, w, 3), c, np.uint8)


COLORS = [(230, 40, 40), (30, 60, 160), (240, 240, 60), (20, 160, 40)]  # hue and brightness differ: both detectors cut


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("last", [2, 3, 5, 8])
def test_a_cut_in_the_last_frames_splits(tmp_path, detector, last):
    """The last shot is a few frames long (bikes.mp4: a cut 8 frames before the end was lost)."""
    f = decode(write_video(tmp_path / "v.mp4", solid_shots([30, 30, last], COLORS[:3]), fps=FPS))
    shots = Shots(detector=detector, min_shot_s=0.5)(f)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(0, 30), (30, 60), (60, 60 + last)]
    assert [s.reject_reason for s in shots] == [None, None, "too_short"]


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_context_finds_a_cut_just_after_a_segment_boundary(tmp_path, detector, cut):
    """An analysis segment starting ``cut`` frames before a cut: the previous segment's last frames
    are the context that lets the detector judge the first frames."""
    f = decode(write_video(tmp_path / "v.mp4", solid_shots([40 + cut, 30], COLORS[:2]), fps=FPS))
    ctx = Frames(f.frames[37:40], f.pts_s[37:40], f.indices[37:40])
    seg = Frames(f.frames[40:], f.pts_s[40:], f.indices[40:])
    shots = Shots(detector=detector, min_shot_s=0.5)(seg, context=ctx)
    assert [(s.start_frame, s.end_frame) for s in shots] == [(40, 40 + cut), (40 + cut, 70 + cut)]
    assert shots[0].reject_reason == "too_short"


@pytest.mark.parametrize("detector", DETECTORS)
def test_streaming_chunks_give_the_same_shots(scenes_video, detector):
    op = Shots(detector=detector)
    det = op.stream()
    f = scenes_video
    for i in range(0, len(f), 17):  # chunk edges fall inside shots and next to cuts (30 = 17 + 13)
        det.push(Frames(f.frames[i : i + 17], f.pts_s[i : i + 17], f.indices[i : i + 17]))
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


@pytest.mark.parametrize("luma_only", [False, True])
def test_batched_scores_equal_pyscenedetects(luma_only):
    """HSVScores gives ContentDetector's own frame scores, bit for bit, across uneven blocks."""
    import cv2
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import ContentDetector

    from defi.curate.shots import HSVScores

    frames = np.stack(
        [*scenes([5, 7], h=48, w=80, seed=3), *pan(9, h=48, w=80, speed=3), *noise(70, h=48, w=80, seed=1), *static_color(3, h=48, w=80)]
    )
    ref = ContentDetector(luma_only=luma_only)
    want = [ref._calculate_frame_score(FrameTimecode(i, fps=1000.0), cv2.cvtColor(f, cv2.COLOR_RGB2BGR)) for i, f in enumerate(frames)]
    scorer = HSVScores(ref._weights)
    got = scorer(frames[:1]) + scorer(frames[1:6]) + scorer(frames[6:90]) + scorer(frames[90:])
    assert got == want and len(set(got)) > 10
