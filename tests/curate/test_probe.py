"""probe: facts of real tiny videos, and one specific reason for each kind of bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from factories import (
    moving_square,
    static_color,
    truncate_copy,
    write_audio_only,
    write_image,
    write_rotated_video,
    write_video,
)

from defi.curate.probe import Probe, content_hash, is_vfr_pts, probe
from defi.schemas.records import SourceRecord, sources_table


@pytest.fixture(scope="module")
def cfr(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    return write_video(d / "cfr.mp4", moving_square(48, h=64, w=96), fps=24, audio=True)


def test_cfr_facts(cfr):
    r = probe(cfr, kind="human", dataset="toy")
    assert r.ok, r.error_detail
    assert (r.container, r.codec) == ("mp4", "h264")
    assert (r.width, r.height, r.rotation) == (96, 64, 0)
    assert r.fps_real == pytest.approx(24.0)
    assert r.fps_avg == pytest.approx(24.0, rel=1e-3)
    assert r.duration_s == pytest.approx(2.0, abs=1e-3)
    assert (r.num_frames, r.num_frames_exact) == (48, True)
    assert r.has_audio is True and r.is_vfr is False
    assert (r.kind, r.dataset, r.size_bytes) == ("human", "toy", cfr.stat().st_size)
    assert len(r.source_id) == 32 and r.source_id == content_hash(cfr)
    # The record converts to the sources table as is.
    assert sources_table([r]).num_rows == 1


def test_no_audio_and_estimated_frame_count(tmp_path):
    # Matroska stores no frame count: estimated from duration x rate, flagged as not exact.
    p = write_video(tmp_path / "a.mkv", static_color(30), fps=10, container_format="matroska")
    r = probe(p)
    assert r.ok, r.error_detail
    assert r.container == "matroska" and r.has_audio is False
    assert (r.num_frames, r.num_frames_exact) == (30, False)
    assert r.duration_s == pytest.approx(3.0, abs=0.01)


def test_vfr_flagged(tmp_path):
    pts = [0.0, 0.04, 0.08, 0.2, 0.25, 0.5, 0.52, 0.9, 1.0, 1.3]
    p = write_video(tmp_path / "vfr.mp4", moving_square(10), fps=24, pts_s=pts)
    r = probe(p, min_frames=8)
    assert r.ok, r.error_detail
    assert r.is_vfr is True
    assert r.num_frames == 10
    assert r.fps_avg == pytest.approx(10 / r.duration_s)
    assert r.duration_s == pytest.approx(1.3 + 0.04, abs=0.05)  # last pts + its duration


def test_is_vfr_pts_tolerates_rounding():
    # 30000/1001 fps in a 1/1000 time base: deltas 33/34 ticks are rounding, not VFR.
    pts = np.round(np.arange(60) * 1001 / 30).astype(int)
    assert is_vfr_pts(pts) is False
    pts[30:] += 40  # one gap of ~2 frames
    assert is_vfr_pts(pts) is True
    assert is_vfr_pts([0, 1, 2]) is None


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation(tmp_path, rotation):
    p = write_rotated_video(tmp_path / "rot.mp4", moving_square(10, h=64, w=96), rotation=rotation)
    r = probe(p)
    assert r.ok, r.error_detail
    assert r.rotation == rotation
    assert (r.width, r.height) == ((64, 96) if rotation % 180 else (96, 64))


def test_content_hash_path_fileobj_and_change(cfr, tmp_path):
    h = content_hash(cfr)
    assert h == content_hash(io.BytesIO(cfr.read_bytes()))
    assert h == content_hash(f"file://{cfr}")
    data = bytearray(cfr.read_bytes())
    data[-1] ^= 0xFF  # the tail is hashed
    other = tmp_path / "x.mp4"
    other.write_bytes(bytes(data))
    assert content_hash(other) != h


def test_fsspec_url(cfr):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/probe/cfr.mp4", cfr.read_bytes())
    r = probe("memory://probe/cfr.mp4")
    assert r.ok, r.error_detail
    assert (r.num_frames, r.width, r.height, r.has_audio) == (48, 96, 64, True)
    assert r.source_id == content_hash(cfr)


# --- bad inputs: each gets its reason, none raises ------------------------------------------


def _bad(tmp_path, name: str, make) -> SourceRecord:
    p = tmp_path / name
    make(p)
    return probe(p)


def test_empty_file(tmp_path):
    r = _bad(tmp_path, "e.mp4", lambda p: p.write_bytes(b""))
    assert r.error == "empty_file" and r.size_bytes == 0


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    r = _bad(tmp_path, "r.mp4", lambda p: p.write_bytes(data))
    assert r.error == "unreadable_container", r.error_detail
    assert "Invalid data" in r.error_detail


def test_text_named_mp4(tmp_path):
    r = _bad(tmp_path, "t.mp4", lambda p: p.write_text("not a video\n" * 100))
    assert r.error == "unreadable_container", r.error_detail


def test_first_half_of_mp4_is_truncated(tmp_path, cfr):
    r = probe(truncate_copy(cfr, tmp_path / "half.mp4", 0.5))
    assert r.error == "truncated", (r.error, r.error_detail)
    assert "mdat" in r.error_detail


def test_tail_cut_faststart_mp4(tmp_path):
    # moov first (faststart): the file opens and its index promises 96 frames that are not there.
    import av

    p = tmp_path / "fs.mp4"
    with av.open(str(p), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for f in moving_square(96):
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    assert probe(p).ok
    r = probe(truncate_copy(p, tmp_path / "cut.mp4", 0.6))
    assert r.error == "truncated", (r.error, r.error_detail)
    assert r.num_frames == 96  # facts known before the verdict stay filled


def test_tail_cut_matroska(tmp_path):
    # Matroska has no box sizes to check: caught by the tail demux ending before the duration.
    p = write_video(tmp_path / "a.mkv", moving_square(96), fps=24, container_format="matroska")
    assert probe(p).ok
    r = probe(truncate_copy(p, tmp_path / "cut.mkv", 0.6))
    assert r.error == "truncated", (r.error, r.error_detail)
    assert "header says 4.000s" in r.error_detail


def test_audio_only(tmp_path):
    r = probe(write_audio_only(tmp_path / "a.mp4"))
    assert r.error == "no_video_stream" and r.has_audio is True


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_single_image(tmp_path, suffix):
    r = probe(write_image(tmp_path / f"i.{suffix}", np.zeros((32, 48, 3), np.uint8)))
    assert r.error == "single_image", (r.error, r.error_detail)
    assert (r.width, r.height, r.num_frames) == (48, 32, 1)


def test_one_frame_video_is_single_image(tmp_path):
    r = probe(write_video(tmp_path / "one.mp4", moving_square(1)))
    assert r.error == "single_image"


def test_three_frames_too_few(tmp_path):
    p = write_video(tmp_path / "three.mp4", moving_square(3))
    r = probe(p)
    assert r.error == "too_few_frames" and r.num_frames == 3
    assert probe(p, min_frames=3).ok


def test_missing_path(tmp_path):
    r = probe(tmp_path / "nope.mp4")
    assert r.error == "not_found" and len(r.source_id) == 32
    assert probe("memory://nope/x.mp4").error == "not_found"


def test_probe_operator(cfr):
    op = Probe(min_frames=100)
    assert op.lineage()["name"] == "probe" and op.lineage()["params"]["min_frames"] == 100
    assert op(cfr).error == "too_few_frames"
    with pytest.raises(ValueError, match="min_frames"):
        Probe(min_frames=0)
