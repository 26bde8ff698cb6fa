"""encode_clip / encode_frames: real H.264 in, real H.264 out, re-decoded with PyAV.

Source videos encode their frame index as a grey level (level = 10 + 3 * index), so a decoded
output frame names the source frame it came from."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
from factories import moving_square, write_video

from defi.curate.base import Frames
from defi.curate.encode import ClipEncoder, EncodeResult, encode_clip, encode_frames, even_size, select_ticks
from defi.schemas.records import ClipRecord

FPS = 24
N = 72  # 3 s


def grey_frames(n: int, h: int = 64, w: int = 96) -> list[np.ndarray]:
    return [np.full((h, w, 3), 10 + 3 * i, np.uint8) for i in range(n)]


def decode(src) -> tuple[list[np.ndarray], dict]:
    """All frames (RGB) and stream facts of an MP4 (path or bytes)."""
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    with av.open(src) as c:
        s = c.streams.video[0]
        info = {
            "rate": s.average_rate,
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "codec": s.codec_context.name,
            "pix_fmt": s.codec_context.pix_fmt,
        }
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    return frames, info


def grey_index(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - 10) / 3))


def top_level_boxes(data: bytes) -> list[str]:
    """Names of the top-level ISO-BMFF boxes in order."""
    names, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        names.append(kind.decode("latin-1"))
        if size < 8:
            break
        pos += size
    return names


@pytest.fixture(scope="module")
def grey_src(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("enc") / "grey.mp4", grey_frames(N), fps=FPS)


def test_window_fps_size_and_exact_source_frames(grey_src):
    buf = io.BytesIO()
    r = encode_clip(grey_src, 1.0, 2.5, buf, fps=12, short_side=32)
    assert r.ok, r.error_detail
    # ticks 1.0 + i/12 < 2.5 -> 18 frames; 12 fps is every 2nd source frame from frame 24
    expected = [24 + 2 * i for i in range(18)]
    frames, info = decode(buf.getvalue())
    assert [grey_index(f) for f in frames] == expected
    assert r.num_frames == len(frames) == 18
    assert r.pts_s == pytest.approx([i / FPS for i in expected])
    assert info["rate"] == 12 and r.fps == 12
    assert (info["width"], info["height"]) == (r.width, r.height) == (48, 32)  # 96x64 -> short side 32
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert r.bytes == len(buf.getvalue())


def test_non_integer_fps_ratio_takes_nearest_source_frame(grey_src):
    buf = io.BytesIO()
    r = encode_clip(grey_src, 0.5, 1.5, buf, fps=10)
    assert r.ok
    ticks = 0.5 + np.arange(10) / 10
    expected = np.round(ticks * FPS).astype(int).tolist()  # 12, 14, 17, 19, 22, 24, 26, 29, 31, 34
    frames, info = decode(buf.getvalue())
    assert [grey_index(f) for f in frames] == expected
    assert info["rate"] == 10
    assert (r.width, r.height) == (96, 64)  # short_side None keeps the size


def test_faststart_moov_before_mdat_for_bytesio_and_path(grey_src, tmp_path):
    buf = io.BytesIO()
    assert encode_clip(grey_src, 0.0, 1.0, buf, fps=8).ok
    boxes = top_level_boxes(buf.getvalue())
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    out = tmp_path / "c.mp4"
    r = encode_clip(grey_src, 0.0, 1.0, out, fps=8)
    assert r.ok and r.bytes == out.stat().st_size
    boxes = top_level_boxes(out.read_bytes())
    assert boxes.index("moov") < boxes.index("mdat"), boxes


def test_odd_source_size_gives_even_output(tmp_path):
    src = write_video(tmp_path / "odd.mp4", moving_square(24, h=65, w=97), fps=FPS, pix_fmt="yuv444p")
    r = encode_clip(src, 0.0, 1.0, io.BytesIO(), fps=FPS)
    assert r.ok and (r.width, r.height) == (96, 64)
    buf = io.BytesIO()
    r = encode_clip(src, 0.0, 1.0, buf, fps=FPS, short_side=48)
    frames, info = decode(buf.getvalue())
    assert (info["width"], info["height"]) == (r.width, r.height) == (70, 48)  # 97 * 48/65 = 71.6 -> 70
    assert len(frames) == 24


def test_never_upscales_unless_asked(grey_src):
    assert encode_clip(grey_src, 0, 0.5, io.BytesIO(), fps=8, short_side=128).width == 96
    r = encode_clip(grey_src, 0, 0.5, io.BytesIO(), fps=8, short_side=128, upscale=True)
    assert (r.width, r.height) == (192, 128)
    assert even_size(1280, 720, 256) == (454, 256)


def test_max_frames_and_window_past_the_end(grey_src):
    buf = io.BytesIO()
    r = encode_clip(grey_src, 0.0, 3.0, buf, fps=12, max_frames=5)
    assert r.num_frames == 5 and [grey_index(f) for f in decode(buf.getvalue())[0]] == [0, 2, 4, 6, 8]
    # the source ends at 3.0 s (last frame 71 shown 2.958..3.0): no repeated tail to 5 s
    buf = io.BytesIO()
    r = encode_clip(grey_src, 2.5, 5.0, buf, fps=12)
    assert [grey_index(f) for f in decode(buf.getvalue())[0]] == [60, 62, 64, 66, 68, 70]
    assert r.num_frames == 6


def test_seek_lands_before_start_with_sparse_keyframes(tmp_path):
    # one keyframe only (whole file one GOP): the seek must go back to 0 and decode forward
    frames = grey_frames(48)
    path = tmp_path / "gop.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.options = {"g": "1000", "keyint_min": "1000", "sc_threshold": "0", "crf": "18"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    buf = io.BytesIO()
    assert encode_clip(path, 1.25, 1.5, buf, fps=24).ok
    assert [grey_index(f) for f in decode(buf.getvalue())[0]] == [30, 31, 32, 33, 34, 35]


def test_variable_frame_rate_source(tmp_path):
    pts = [0.0, 0.04, 0.31, 0.33, 0.52, 0.9, 0.95]
    src = write_video(tmp_path / "vfr.mp4", grey_frames(len(pts)), fps=FPS, pts_s=pts)
    buf = io.BytesIO()
    r = encode_clip(src, 0.0, 1.0, buf, fps=5)
    # ticks 0, .2, .4, .6, .8 -> nearest frames 0 (0.0), 2 (0.31 vs 0.04), 3 (0.33), 4 (0.52), 5 (0.9)
    assert [grey_index(f) for f in decode(buf.getvalue())[0]] == [0, 2, 3, 4, 5]
    assert r.pts_s == pytest.approx([0.0, 0.31, 0.33, 0.52, 0.9])


def test_failures_are_results_not_exceptions(grey_src, tmp_path):
    assert encode_clip(tmp_path / "missing.mp4", 0, 1, io.BytesIO(), fps=8).error == "open_failed"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    assert encode_clip(bad, 0, 1, io.BytesIO(), fps=8).error == "open_failed"
    assert encode_clip(grey_src, 10.0, 11.0, io.BytesIO(), fps=8).error == "no_frames_in_window"
    assert encode_clip(grey_src, 1.0, 1.0, io.BytesIO(), fps=8).error == "empty_window"
    with pytest.raises(ValueError):
        encode_clip(grey_src, 0, 1, io.BytesIO(), fps=0)


def test_encode_frames_round_trip(tmp_path):
    arr = np.stack(grey_frames(20, h=33, w=51))
    buf = io.BytesIO()
    r = encode_frames(arr, 8, buf)
    frames, info = decode(buf.getvalue())
    assert r.ok and r.num_frames == 20 and len(frames) == 20
    assert [grey_index(f) for f in frames] == list(range(20))
    assert info["rate"] == 8 and (info["width"], info["height"]) == (50, 32)
    assert r.pts_s == pytest.approx([i / 8 for i in range(20)])
    fr = Frames(arr[:6], np.arange(6) * 0.5 + 2.0, np.arange(6))
    r = encode_frames(fr, 2, tmp_path / "f.mp4", short_side=16)
    assert r.pts_s == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5] and (r.width, r.height) == (24, 16)
    assert top_level_boxes((tmp_path / "f.mp4").read_bytes()).index("moov") < top_level_boxes((tmp_path / "f.mp4").read_bytes()).index(
        "mdat"
    )


def test_select_ticks_ties_go_to_earlier_frame():
    items = [(0.0, "a"), (0.1, "b"), (0.2, "c")]
    # tick 0.05 is equidistant from a and b
    got = [x for _, x in select_ticks(iter(items), 0.0, 0.3, fps=20)]
    assert got == ["a", "a", "b", "b", "c", "c"]


def test_operator_updates_record(grey_src):
    enc = ClipEncoder(fps=12, short_side=32)
    rec = ClipRecord(key="k", source_id="s", start_frame=24, end_frame=60, start_s=1.0, end_s=2.5)
    res = enc(grey_src, rec.start_s, rec.end_s, io.BytesIO())
    enc.update_record(rec, res)
    assert (rec.out_fps, rec.out_width, rec.out_height, rec.out_frames) == (12.0, 48, 32, 18)
    assert rec.out_bytes == res.bytes > 0 and rec.kept
    bad = ClipRecord(key="b", source_id="s", start_frame=0, end_frame=1, start_s=0, end_s=1)
    enc.update_record(bad, EncodeResult(error="open_failed", error_detail="x"))
    assert not bad.kept and bad.reject_reason == "encode_failed" and bad.errors["encode"].startswith("open_failed")
    assert enc.lineage()["params"]["fps"] == 12
    with pytest.raises(ValueError):
        ClipEncoder(crf=60)


def test_display_rotation_is_applied(tmp_path):
    # a white corner at the top-left of a 96x64 frame, stored with a 90 deg counter-clockwise
    # display matrix: upright, the frame is 64x96 with the corner at the bottom-left
    path = tmp_path / "rot.mp4"
    f = np.zeros((64, 96, 3), np.uint8)
    f[:8, :8] = 255
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.set_display_rotation(90)
        for _ in range(6):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    buf = io.BytesIO()
    r = encode_clip(path, 0.0, 0.25, buf, fps=FPS)
    assert (r.width, r.height) == (64, 96)
    first = decode(buf.getvalue())[0][0]
    ys, xs = np.nonzero(first.mean(-1) > 128)
    assert ys.min() >= 86 and xs.max() <= 10


def test_encode_frames_from_i420_frames(tmp_path):
    """yuv420p frames (the curate pipeline's layout) go to the encoder as they are, or resized."""
    rgb = np.stack([f for f in moving_square(12, h=64, w=96)])
    i420 = np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray() for f in rgb])
    fr = Frames(i420, np.arange(12) / 6, np.arange(12), layout="i420")
    buf = io.BytesIO()
    r = encode_frames(fr, 6, buf)
    frames, info = decode(buf.getvalue())
    assert r.ok and len(frames) == 12 and (info["width"], info["height"]) == (96, 64)
    assert np.abs(np.stack(frames).astype(int) - rgb).mean() < 4
    r = encode_frames(fr, 6, tmp_path / "small.mp4", short_side=32)
    small, info = decode(str(tmp_path / "small.mp4"))
    assert (r.width, r.height) == (48, 32) and (info["width"], info["height"]) == (48, 32) and len(small) == 12
