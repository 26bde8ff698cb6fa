"""Frame scorers on real H.264 frames: motion, camera vs local motion, blur, black frames."""

import dataclasses

import av
import cv2
import numpy as np
import pytest

from defi.curate.base import Frames
from defi.curate.filters import BlackFrames, Blur, CameraMotion, Duration, Motion, Resolution, analysis_gray, sample_evenly
from defi.curate.windows import Clip
from defi.schemas.records import ClipRecord, SourceRecord
from factories import moving_square, pan, scenes, static_color, write_video

FPS = 24


def decode(path) -> Frames:
    frames, pts = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(float(f.pts * f.time_base))
    return Frames(np.stack(frames), np.array(pts), np.arange(len(frames), dtype=np.int64))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("v")
    gens = {
        "static": static_color(48),
        "square": moving_square(48),  # 16 px square, 2 px/frame, on a flat 64x96 background
        "pan": pan(48),  # 2 px/frame over a still texture
        "black": static_color(48, color=(0, 0, 0)),
        "scenes": scenes([48]),
        "big_pan": pan(40, h=240, w=320, speed=6),
    }
    return {k: decode(write_video(d / f"{k}.mp4", g, fps=FPS)) for k, g in gens.items()}


def test_motion_static_below_moving_and_pan_speed_in_pixels(videos):
    m = Motion()
    static, square, pan_ = (m.score(videos[k]) for k in ("static", "square", "pan"))
    assert static["motion_mean"] < 0.01 and static["frame_diff"] == 0.0
    assert square["motion_mean"] > 0.2 and square["frame_diff"] > 1.0
    assert square["motion_p90"] == pytest.approx(2.0, abs=0.3)  # the square moves 2 px/frame
    assert pan_["motion_mean"] == pytest.approx(2.0, abs=0.2)  # every pixel moves 2 px/frame
    assert m(videos["static"])[1] is None  # no thresholds: score only
    low = Motion(min_motion_mean=0.1)
    assert low(videos["static"])[1] == "low_motion" and low(videos["square"])[1] is None
    assert Motion(min_frame_diff=0.5)(videos["static"])[1] == "low_motion"


def test_motion_is_measured_at_analysis_size(videos):
    # 6 px/frame on a 240 px-high source, shrunk to a 128 px short side: 6 * 128 / 240 = 3.2.
    s = Motion().score(videos["big_pan"])
    assert s["motion_mean"] == pytest.approx(3.2, abs=0.25)
    s64 = Motion(analysis_short_side=64).score(videos["big_pan"])
    assert s64["motion_mean"] == pytest.approx(1.6, abs=0.2)


def test_pan_is_camera_motion_and_square_is_local_motion(videos):
    cm = CameraMotion()
    p, sq, st = cm.score(videos["pan"]), cm.score(videos["square"]), cm.score(videos["static"])
    assert p["camera_motion"] == pytest.approx(2.0, abs=0.2) and p["local_motion"] < 0.3
    assert sq["camera_motion"] < 0.1 and sq["local_motion"] > 1.5
    assert st["camera_motion"] < 0.01 and st["local_motion"] < 0.01
    assert CameraMotion().score(videos["big_pan"])["local_motion"] < 0.3
    f = CameraMotion(max_camera_motion=1.0, min_local_motion=0.5)
    assert f(videos["pan"])[1] == "camera_motion"
    assert f(videos["square"])[1] is None
    assert f(videos["static"])[1] is None
    assert cm(videos["pan"])[1] is None  # no thresholds: score only


def test_blur_lower_for_blurred_frames(videos):
    sharp = videos["scenes"]
    blurred = dataclasses.replace(sharp, frames=np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in sharp.frames]))
    b_sharp, b_blur = Blur().score(sharp)["blur"], Blur().score(blurred)["blur"]
    assert b_blur < 0.2 * b_sharp, (b_sharp, b_blur)
    thr = Blur(min_blur=(b_sharp + b_blur) / 2)
    assert thr(blurred)[1] == "blurry" and thr(sharp)[1] is None


def test_black_and_flat_frames(videos):
    b = BlackFrames(max_black_frac=0.5)
    assert b(videos["black"]) == ({"black_frac": 1.0}, "black_frames")
    assert b(videos["square"]) == ({"black_frac": 0.0}, None)
    assert b.score(videos["static"])["black_frac"] == 1.0  # one flat colour counts too
    half = Frames.concat([videos["black"], videos["scenes"]])
    assert BlackFrames().score(half)["black_frac"] == pytest.approx(0.5, abs=0.07)


def test_duration_and_resolution():
    d = Duration(min_s=1.0, max_s=10.0)
    assert d(Clip(0, 0, 0, 12, 0.0, 0.5)) == ({"duration_s": 0.5}, "too_short")
    assert d(Clip(0, 0, 0, 300, 0.0, 12.5))[1] == "too_long"
    assert d(Clip(0, 0, 0, 48, 1.0, 3.0)) == ({"duration_s": 2.0}, None)
    f = Frames(np.zeros((48, 8, 8, 3), np.uint8), np.arange(48) / 24, np.arange(48))
    assert Duration().score(f)["duration_s"] == pytest.approx(2.0)
    r = Resolution(min_short_side=240)
    assert r(SourceRecord("s", "u", width=320, height=180)) == ({"short_side": 180.0}, "low_resolution")
    assert r(SourceRecord("s", "u", width=1280, height=720))[1] is None
    assert r(SourceRecord("s", "u"))[1] is None  # unknown size: no verdict
    assert r.score(f) == {"short_side": 8.0}


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_frames_give_none_scores_not_errors(n):
    f = Frames(np.zeros((n, 16, 16, 3), np.uint8), np.arange(n) / 24, np.arange(n))
    for s in (Motion(min_motion_mean=1), CameraMotion(max_camera_motion=1)):
        scores, reason = s(f)
        assert reason is None and all(v is None for v in scores.values())
    assert BlackFrames(max_black_frac=0.5)(f)[1] == (None if n == 0 else "black_frames")
    assert Blur(min_blur=1)(f)[1] == (None if n == 0 else "blurry")


def test_cost_is_bounded_by_sampling():
    assert list(sample_evenly(1000, 8)) == [0, 143, 285, 428, 571, 714, 856, 999]
    assert list(sample_evenly(3, 8)) == [0, 1, 2]
    g = analysis_gray(np.zeros((2, 480, 640, 3), np.uint8), 128)
    assert g.shape == (2, 128, 171)
    assert analysis_gray(np.zeros((1, 64, 96, 3), np.uint8), 128).shape == (1, 64, 96)  # no upscaling


def test_names_unique_and_scores_fill_clip_record_columns(videos):
    scorers = [Duration(), Resolution(), Motion(), CameraMotion(), Blur(), BlackFrames()]
    assert len({s.name for s in scorers}) == len(scorers)
    rec = ClipRecord("k", "s", 0, 48, 0.0, 2.0)
    for s in scorers[2:]:
        rec.set_scores(s.score(videos["square"]))
    for col in ("motion_mean", "motion_p90", "frame_diff", "camera_motion", "local_motion", "blur", "black_frac"):
        assert getattr(rec, col) is not None, col
    assert rec.extra_scores == {}
