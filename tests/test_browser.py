"""The headless-Chromium page checker (tests/browser.py) on pages made at test time: real H.264
clips from PyAV as data: URIs play; a truncated mp4, a missing file and a missing <source> are
reported broken with their MediaError codes; a browser that exits or never answers raises."""

from __future__ import annotations

import base64
import os
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser import BrowserError, check_page, find_chromium
from factories import moving_square, write_video

RED, BLUE = (200, 30, 30), (30, 60, 200)  # RGB backgrounds of the two clips


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (install Debian package `chromium`, or set $DEFI_CHROMIUM)")
    return exe


def data_uri(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def colour_pixels(img_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(img_bgr[..., ::-1].astype(int) - rgb).max(-1) <= tol).sum())


def test_two_h264_clips_play_and_the_screenshot_shows_them(chromium, tmp_path):
    red = write_video(tmp_path / "red.mp4", moving_square(36, h=64, w=96, bg=RED), fps=12)
    blue = write_video(tmp_path / "blue.mp4", moving_square(36, h=64, w=96, bg=BLUE), fps=12)
    # one autoplays, the other only plays because the checker calls play() on paused videos
    (tmp_path / "page.html").write_text(f"""<!doctype html><html><head><title>two clips</title></head>
<body style="margin:0;background:#fff">
<video autoplay muted loop playsinline width="192" height="128" src="{data_uri(red)}"></video>
<video muted width="192" height="128"><source src="{data_uri(blue)}" type="video/mp4"></video>
<img src="data:image/png;base64,{base64.b64encode(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1]).decode()}">
</body></html>""")
    shot = tmp_path / "out" / "page.png"
    t0 = time.monotonic()
    report = check_page(tmp_path / "page.html", screenshot=shot, width=800, height=400, chromium=chromium)
    elapsed = time.monotonic() - t0
    assert report["videos"] == 2 and report["playing"] == 2, report
    assert report["broken"] == [] and report["broken_images"] == [] and report["images"] == 1
    assert report["console_errors"] == [] and report["title"] == "two clips"
    assert elapsed < 15, f"two 3 s clips should start within seconds, took {elapsed:.1f} s"

    data = shot.read_bytes()
    w, h = png_size(data)
    assert w == 800 and h >= 400  # full page at device scale 1, at least one viewport tall
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (h, w)
    # both clips' frames were rendered (192x128 boxes, minus the moving square)
    assert colour_pixels(img, RED) > 0.8 * 192 * 128 and colour_pixels(img, BLUE) > 0.8 * 192 * 128


def test_broken_media_are_reported_with_error_codes(chromium, tmp_path):
    good = write_video(tmp_path / "good.mp4", moving_square(36, h=64, w=96), fps=12)
    raw = good.read_bytes()
    truncated = raw[: len(raw) // 2]  # PyAV writes the moov atom last: half a file has no index
    (tmp_path / "page.html").write_text(f"""<!doctype html><title>broken</title><body>
<video muted src="data:video/mp4;base64,{base64.b64encode(truncated).decode()}"></video>
<video muted src="missing.mp4"></video>
<video muted><source src="gone.webm" type="video/webm"></video>
<video muted loop src="{data_uri(good)}"></video>
<img src="missing.png">
</body>""")
    t0 = time.monotonic()
    report = check_page(tmp_path / "page.html", chromium=chromium, timeout_s=30)
    elapsed = time.monotonic() - t0
    assert report["videos"] == 4 and report["playing"] == 1, report
    broken = {b["index"]: b for b in report["broken"]}
    assert sorted(broken) == [0, 1, 2]
    # MEDIA_ERR_SRC_NOT_SUPPORTED (4) for an unparseable file and for a missing one
    assert broken[0]["error_code"] == 4 and broken[0]["src_prefix"].startswith("data:video/mp4;base64,")
    assert broken[1]["error_code"] == 4 and broken[1]["src_prefix"].endswith("/missing.mp4")
    # a failing <source> child leaves video.error null; the video has no source (NETWORK_NO_SOURCE)
    assert broken[2]["error_code"] is None and broken[2]["network_state"] == 3
    assert broken[2]["reason"] == "no usable source"
    assert all(b["ready_state"] == 0 for b in broken.values())
    assert [i["src_prefix"].rsplit("/", 1)[-1] for i in report["broken_images"]] == ["missing.png"]
    assert any("ERR_FILE_NOT_FOUND" in e and "missing.mp4" in e for e in report["console_errors"])
    # failures end the wait: it does not sit out the 30 s budget
    assert elapsed < 15, elapsed


def test_a_video_that_loads_but_never_plays_is_broken(chromium, tmp_path):
    """Decoded is not playing: with play() disabled by page script the clip loads (readyState >= 2)
    but currentTime stays 0; the checker waits its bounded real time and reports it."""
    clip = write_video(tmp_path / "c.mp4", moving_square(36, h=64, w=96), fps=12)
    (tmp_path / "page.html").write_text(f"""<!doctype html><title>frozen</title>
<script>HTMLMediaElement.prototype.play = function () {{ return Promise.resolve(); }};</script>
<body><video muted preload="auto" src="{data_uri(clip)}"></video></body>""")
    t0 = time.monotonic()
    report = check_page(tmp_path / "page.html", chromium=chromium, timeout_s=4)
    assert 2 < time.monotonic() - t0 < 8  # waited out the video part of the 4 s budget, no more
    assert report["playing"] == 0 and len(report["broken"]) == 1, report
    b = report["broken"][0]
    assert b["error_code"] is None and b["ready_state"] >= 2 and b["current_time"] == 0
    assert b["reason"] == "did not play within the wait (paused=True)"


def test_a_missing_page_or_a_browser_that_exits_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such page"):
        check_page(tmp_path / "none.html", chromium="/bin/false")
    (tmp_path / "p.html").write_text("<title>p</title>")
    with pytest.raises(BrowserError, match="exit|closed"):
        check_page(tmp_path / "p.html", chromium="/bin/false", timeout_s=10)


def test_a_browser_that_never_answers_times_out_and_is_killed(tmp_path):
    fake = tmp_path / "silent-browser"
    pidfile = tmp_path / "pid"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec /bin/sleep 60\n")
    fake.chmod(0o755)
    (tmp_path / "p.html").write_text("<title>p</title>")
    t0 = time.monotonic()
    with pytest.raises(BrowserError, match="did not answer in time"):
        check_page(tmp_path / "p.html", chromium=str(fake), timeout_s=1.5)
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


def test_find_chromium_honours_the_environment(monkeypatch):
    monkeypatch.setenv("DEFI_CHROMIUM", "/bin/true")
    assert find_chromium() == "/bin/true"
    monkeypatch.setenv("DEFI_CHROMIUM", "no-such-browser-defi")
    with pytest.raises(FileNotFoundError, match="DEFI_CHROMIUM"):
        find_chromium()
