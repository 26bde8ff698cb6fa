"""decode: frame counts, timestamps, pixels, rotation, chunking and seeking on real tiny videos."""

from __future__ import annotations

import numpy as np
import pytest
from factories import moving_square, static_color, write_audio_only, write_rotated_video, write_video

from defi.curate.base import Frames
from defi.curate.decode import Decode, DecodeError, decode, decode_all, output_size, rot90_i420

COLOR = (40, 120, 200)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    return {
        # 2 s at 30 fps; the square moves 2 px per frame along x.
        "square": write_video(d / "square.mp4", moving_square(60, h=64, w=96, size=16, speed=2), fps=30),
        "color": write_video(d / "color.mp4", static_color(20, h=72, w=128, color=COLOR), fps=10),
        "mkv": write_video(d / "sq.mkv", moving_square(48, h=64, w=96), fps=24, container_format="matroska"),
    }


def _square_x(img: np.ndarray) -> float:
    """Column centre of the bright square (the fg colour is far brighter than the bg)."""
    cols = np.nonzero(img[..., 0].astype(int).max(axis=0) > 128)[0]
    return float(cols.mean())


def test_every_frame_native_size(videos):
    f = decode_all(videos["square"])
    assert f.frames.shape == (60, 64, 96, 3) and f.frames.dtype == np.uint8
    np.testing.assert_allclose(f.pts_s, np.arange(60) / 30, atol=1e-3)
    np.testing.assert_array_equal(f.indices, np.arange(60))
    # The square (16 px wide, x = 2 i) is where the generator put it.
    for i in (0, 10, 39):
        assert _square_x(f.frames[i]) == pytest.approx(2 * i + 7.5, abs=1.0)


def test_static_color_pixels_and_size(videos):
    f = decode_all(videos["color"], size=36)
    assert f.frames.shape == (20, 36, 64, 3)  # short side 36, 128x72 aspect kept, even
    assert np.abs(f.frames.reshape(-1, 3).mean(0) - COLOR).max() < 4
    assert np.abs(f.frames.astype(int) - COLOR).max() < 12


def test_fps_subsampling_by_timestamp(videos):
    f = decode_all(videos["square"], fps=10)
    assert len(f) == 20  # 2 s at 10 fps
    np.testing.assert_array_equal(f.indices, np.arange(0, 60, 3))
    np.testing.assert_allclose(f.pts_s, np.arange(20) / 10, atol=1e-3)
    # Pixels follow the chosen source frames: square at x = 2 * index.
    assert _square_x(f.frames[7]) == pytest.approx(2 * 21 + 7.5, abs=1.0)


def test_fps_above_source_keeps_each_frame_once(videos):
    f = decode_all(videos["square"], fps=100)
    np.testing.assert_array_equal(f.indices, np.arange(60))


def test_size_and_fps_together_moving_square(videos):
    f = decode_all(videos["square"], fps=15, size=(48, 32))
    assert f.frames.shape == (30, 32, 48, 3)
    # Half-size output: the square at source x = 2 * index lands at x = index (centre + 3.75).
    for k in (0, 5, 12):
        i = int(f.indices[k])
        assert i == 2 * k
        assert _square_x(f.frames[k]) == pytest.approx(i + 3.75, abs=1.0)


def test_vfr_keeps_true_timestamps(tmp_path):
    pts = [0.0, 0.04, 0.08, 0.2, 0.25, 0.5, 0.52, 0.9, 1.0, 1.3]
    p = write_video(tmp_path / "vfr.mp4", moving_square(10), fps=24, pts_s=pts)
    f = decode_all(p)
    np.testing.assert_allclose(f.pts_s, pts, atol=1e-3)
    # Each frame's content is the one encoded at that time (square x = 2 * index).
    for i in range(10):
        assert _square_x(f.frames[i]) == pytest.approx(2 * i + 7.5, abs=1.0)
    # 10 fps: the frame nearest each 0.1 s tick, each frame once, gaps kept as gaps.
    g = decode_all(p, fps=10)
    np.testing.assert_allclose(g.pts_s, [0.0, 0.08, 0.2, 0.25, 0.5, 0.52, 0.9, 1.0, 1.3], atol=1e-3)
    np.testing.assert_array_equal(g.indices, [0, 2, 3, 4, 5, 6, 7, 8, 9])


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_decoded_upright(tmp_path, rotation):
    src = np.stack(list(moving_square(10, h=64, w=96)))
    p = write_rotated_video(tmp_path / "rot.mp4", src, rotation=rotation)
    f = decode_all(p)
    k = rotation // 90
    expected = np.rot90(src, k, axes=(1, 2))
    assert f.frames.shape[1:3] == expected.shape[1:3]
    err = np.abs(f.frames.astype(int) - expected).mean()
    wrong = np.abs(f.frames.astype(int) - np.rot90(src, k + 2, axes=(1, 2))).mean() if k % 2 else 99
    assert err < 3 and err < wrong
    # size applies to the upright picture: short side 32 of a 64x96 (or 96x64) upright frame.
    g = decode_all(p, size=32)
    assert g.frames.shape[1:3] == ((48, 32) if k % 2 else (32, 48))


def test_chunking_matches_one_chunk(videos):
    whole = list(decode(videos["square"], fps=12, size=32, chunk_frames=10_000))
    assert len(whole) == 1
    parts = list(decode(videos["square"], fps=12, size=32, chunk_frames=7))
    assert [len(c) for c in parts] == [7, 7, 7, 3]
    joined = Frames.concat(parts)
    np.testing.assert_array_equal(joined.frames, whole[0].frames)
    np.testing.assert_array_equal(joined.pts_s, whole[0].pts_s)
    np.testing.assert_array_equal(joined.indices, whole[0].indices)


@pytest.mark.parametrize("key", ["square", "mkv"])
def test_start_end_seek_keeps_source_indices(videos, key):
    full = decode_all(videos[key])
    part = decode_all(videos[key], start_s=1.0, end_s=1.5)
    m = (full.pts_s >= 1.0 - 1e-6) & (full.pts_s < 1.5 - 1e-6)
    np.testing.assert_array_equal(part.indices, full.indices[m])
    np.testing.assert_allclose(part.pts_s, full.pts_s[m])
    np.testing.assert_array_equal(part.frames, full.frames[m])


def test_output_size():
    assert output_size(1280, 720, 128) == (228, 128)
    assert output_size(720, 1280, 128) == (128, 228)
    assert output_size(100, 100, 33) == (34, 34)  # even
    assert output_size(1280, 720, (64, 48)) == (64, 48)
    assert output_size(1280, 720, None) == (1280, 720)


def test_errors(tmp_path):
    with pytest.raises(DecodeError, match="no video stream"):
        decode_all(write_audio_only(tmp_path / "a.mp4"))
    with pytest.raises(DecodeError, match="FileNotFoundError"):
        decode_all(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(DecodeError):
        decode_all(bad)
    with pytest.raises(ValueError, match="fps"):
        decode_all(bad, fps=0)
    with pytest.raises(ValueError, match="backend"):
        Decode(backend="gpu")


def test_decode_operator(videos):
    op = Decode(fps=5, size=32, chunk_frames=4)
    assert op.lineage() == {"name": "decode", "version": "3", "params": op.params()}
    chunks = list(op(videos["square"]))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert len(op.all(videos["square"])) == 10


def test_decord_backend_matches_on_cfr(videos):
    pytest.importorskip("decord")
    # (64, 32): decord 0.6 fails on some widths (48 px), so a size it handles.
    a = decode_all(videos["square"], fps=10, size=(64, 32), backend="pyav")
    b = decode_all(videos["square"], fps=10, size=(64, 32), backend="decord")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.pts_s, b.pts_s, atol=1e-3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 8


def test_fsspec_url(videos):
    fsspec = pytest.importorskip("fsspec")
    fsspec.filesystem("memory").pipe("/decode/square.mp4", videos["square"].read_bytes())
    a = decode_all("memory://decode/square.mp4", fps=10, size=32)
    b = decode_all(videos["square"], fps=10, size=32)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_fps_with_end_keeps_tick_before_end(tmp_path):
    # Frames at 1.3 s and 1.6 s, end_s = 1.5: the 1.4 s tick is nearest the 1.3 s frame.
    pts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.6, 1.7]
    p = write_video(tmp_path / "gap.mp4", moving_square(len(pts)), fps=10, pts_s=pts)
    f = decode_all(p, fps=2.5, end_s=1.5)  # ticks 0, 0.4, 0.8, 1.2 -> frames 0, 4, 8, 12
    np.testing.assert_array_equal(f.indices, [0, 4, 8, 12])
    g = decode_all(p, fps=1 / 0.36, end_s=1.5)  # ticks 0, .36, .72, 1.08, 1.44: 1.44 takes 1.3
    np.testing.assert_array_equal(g.indices, [0, 4, 7, 11, 13])


def test_skip_loop_filter_rule():
    from defi.curate.decode import _skips_loop_filter

    assert _skips_loop_filter("auto", 1280, 720, 128)  # 228x128 is 1/32 of the pixels
    assert _skips_loop_filter("auto", 720, 1280, 180)  # portrait, exactly 1/16 of the pixels
    assert not _skips_loop_filter("auto", 1280, 720, 256)  # 455x256 is 1/8 of the pixels
    assert not _skips_loop_filter("auto", 640, 360, None)  # full size: never under auto
    assert _skips_loop_filter("always", 640, 360, None) and not _skips_loop_filter("never", 1280, 720, 64)
    with pytest.raises(ValueError, match="skip_loop_filter"):
        next(decode("x.mp4", skip_loop_filter="sometimes"))


def test_skipping_the_loop_filter_stays_close_to_the_filtered_decode(tmp_path):
    """A detailed, moving 384x256 H.264 video with deblocking on (x264 veryfast, CRF 30, a lot of
    blocking): decoded at 96x64, skipping the filter changes pixels (so it was applied) but stays
    above 35 dB PSNR of the filtered decode, with the same frames, timestamps and indices; at
    192x128 (2x per side) "auto" keeps the filter."""
    from fractions import Fraction

    import av
    from factories import pan

    path = str(tmp_path / "pan.mp4")
    with av.open(path, "w") as out:  # not factories.write_video: its ultrafast preset turns deblocking off
        s = out.add_stream("libx264", rate=Fraction(24))
        s.width, s.height, s.pix_fmt = 384, 256, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "30"}
        for f in pan(48, h=256, w=384, speed=3):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    fast = decode_all(path, size=64)
    ref = decode_all(path, size=64, skip_loop_filter="never")
    assert fast.frames.shape == ref.frames.shape == (48, 64, 96, 3)
    np.testing.assert_array_equal(fast.pts_s, ref.pts_s)
    np.testing.assert_array_equal(fast.indices, ref.indices)
    mse = ((fast.frames.astype(np.float64) - ref.frames.astype(np.float64)) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 35
    np.testing.assert_array_equal(decode_all(path, size=128).frames, decode_all(path, size=128, skip_loop_filter="never").frames)


def test_yuv420p_matches_rgb_decode(videos):
    rgb = decode_all(videos["square"], size=32)
    yuv = decode_all(videos["square"], size=32, pix_fmt="yuv420p")
    assert yuv.layout == "i420" and yuv.frames.shape == (60, 48, 48) and yuv.size == (48, 32)
    np.testing.assert_array_equal(yuv.indices, rgb.indices)
    conv = yuv.to_rgb()
    assert conv.layout == "rgb" and conv.frames.shape == rgb.frames.shape
    # same picture; colour differs only where 4:2:0 chroma is coarser than the RGB path's
    assert np.abs(conv.frames.astype(int) - rgb.frames).mean() < 4
    for i in (0, 10, 39):
        assert _square_x(conv.frames[i]) == pytest.approx(_square_x(rgb.frames[i]), abs=1.0)
    # to_rgb(short_side) scales down at the same time; never up
    assert yuv.to_rgb(16).frames.shape == (60, 16, 24, 3)
    assert yuv.to_rgb(64).frames.shape == (60, 32, 48, 3)
    c = decode_all(videos["color"], pix_fmt="yuv420p").to_rgb()
    assert np.abs(c.frames.reshape(-1, 3).mean(0) - COLOR).max() < 4


@pytest.mark.parametrize("rotation", [90, 180])
def test_yuv420p_rotation_upright(tmp_path, rotation):
    src = np.stack(list(moving_square(6, h=64, w=96)))
    p = write_rotated_video(tmp_path / "rot.mp4", src, rotation=rotation)
    f = decode_all(p, pix_fmt="yuv420p").to_rgb()
    expected = np.rot90(src, rotation // 90, axes=(1, 2))
    assert f.frames.shape[1:3] == expected.shape[1:3]
    assert np.abs(f.frames.astype(int) - expected).mean() < 4


def test_yuv420p_odd_size_rounds_down_to_even(tmp_path):
    p = write_video(tmp_path / "odd.mp4", static_color(5, h=36, w=50, color=COLOR), fps=10)
    f = decode_all(p, size=(31, 17), pix_fmt="yuv420p")
    assert f.size == (30, 16)
    # a height of 2 mod 4: the chroma planes end mid-row of the packed array
    g = decode_all(p, size=(30, 18), pix_fmt="yuv420p")
    assert g.size == (30, 18) and g.frames.shape == (5, 27, 30)
    assert np.abs(g.to_rgb().frames.reshape(-1, 3).mean(0) - COLOR).max() < 4
    with pytest.raises(ValueError, match="pix_fmt"):
        next(decode(p, pix_fmt="nv12"))


@pytest.mark.parametrize("h, w", [(18, 12), (16, 10)])  # 18: a chroma plane ends mid-row
def test_rot90_i420_matches_rotating_the_rgb(h, w):
    import av
    import cv2

    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    i420 = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    for k in (1, 2, 3):
        turned = rot90_i420(i420, k)
        assert turned.shape == ((w if k % 2 else h) * 3 // 2, h if k % 2 else w)
        np.testing.assert_array_equal(cv2.cvtColor(turned, cv2.COLOR_YUV2RGB_I420), np.rot90(cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420), k))
    with pytest.raises(ValueError, match="rgb24 only"):
        next(decode("x.mp4", backend="decord", pix_fmt="yuv420p"))


@pytest.mark.parametrize("size", [None, 32, (30, 18)])
def test_yuv420p_frames_and_times_are_pyavs_own(videos, size):
    """The planes copied straight into the chunk and the int-arithmetic pts equal PyAV's
    ``reformat(...).to_ndarray()`` and ``float(pts * time_base)``, byte for byte."""
    import av

    got = decode_all(videos["square"], size=size, pix_fmt="yuv420p")
    want, pts = [], []
    with av.open(str(videos["square"])) as c:
        v = c.streams.video[0]
        for f in c.decode(v):
            w, h = output_size(f.width, f.height, size)
            w, h = max(2, w // 2 * 2), max(2, h // 2 * 2)
            want.append(f.reformat(width=w, height=h, format="yuv420p", interpolation="AREA").to_ndarray())
            pts.append(float((f.pts - (v.start_time or 0)) * v.time_base))
    assert np.array_equal(got.frames, np.stack(want)) and got.pts_s.tolist() == pts


def test_decoder_threads_do_not_change_the_pictures(videos):
    one = decode_all(videos["square"], size=32, pix_fmt="yuv420p", threads=1)
    auto = decode_all(videos["square"], size=32, pix_fmt="yuv420p")
    assert np.array_equal(one.frames, auto.frames) and np.array_equal(one.pts_s, auto.pts_s) and len(one) == 60
    with pytest.raises(ValueError, match="threads"):
        next(decode(videos["square"], threads=-1))
