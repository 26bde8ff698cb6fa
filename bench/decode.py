"""Decode throughput: our low-res streaming decode vs a peer, on one generated file, side by side.

    .venv/bin/python bench/decode.py [--seconds 20] [--width 1280] [--height 720] [--fps 30]

Makes a ``--seconds`` long H.264 file (a pan over a blocky texture) in a temp dir,
then times, each in a fresh subprocess so its peak RSS is its own:

- ``defi.decode short=128``: ``defi.curate.decode.decode(path, size=128)``, every frame, RGB.
- ``defi_deblock``: the same with ``skip_loop_filter="never"`` (the codec's deblocking filter kept;
  ``"auto"`` skips it when scaling down by 2x or more: see ``curate.decode.decode``).
- ``pyav_naive``: PyAV with a per-frame ``to_ndarray(width=, height=)`` (a swscale context built
  per frame), the usual way, to show what the reused reformatter in ``decode`` buys.
- ``decord short=128``: decord's VideoReader at the same size, read in 256-frame batches.
- peer: ``ffmpeg -i F -f null -`` when the binary is on PATH; otherwise it is reported missing and
  a PyAV full-resolution decode (frames decoded, not converted: what ``-f null`` does) stands in.

Prints wall frames/s, CPU ms per frame (all threads; steadier than wall time on a shared machine),
ratios, and peak RSS (MiB) of each; then decodes a ``--long-factor`` times longer file with defi
and decord to compare peak RSS against length. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_video(path: Path, seconds: float, w: int, h: int, fps: int) -> Path:
    """Stream-encode a pan over a blocky texture (16 px blocks) plus grain, x264 veryfast CRF 23,
    one frame at a time (memory stays flat). Not ultrafast: that preset turns off the in-loop
    deblocking filter, which camera and web video has on, so it would flatter every decoder."""
    from fractions import Fraction

    import av
    import numpy as np

    n = int(seconds * fps)
    speed = 4
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (h // 16 + 1, (w + n * speed) // 16 + 2, 3), dtype=np.uint8)
    big = np.kron(blocks, np.ones((16, 16, 1), np.uint8))[:h]
    # Sensor-like grain (a few fixed noise fields, cycled) so the bitrate is that of camera video
    # (a few Mbit/s at 720p), not that of a synthetic pan, which decodes unrealistically fast.
    grain = rng.integers(-10, 11, (7, h, w, 3), dtype=np.int16)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        for i in range(n):
            img = big[:, i * speed : i * speed + w] + grain[i % len(grain)]
            img = np.clip(img, 0, 255).astype(np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime  # all threads of this process


def run_one(name: str, path: str) -> dict:
    import av

    from defi.curate.decode import decode  # imported before the clock starts (pulls pyarrow)

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    t, c0 = time.perf_counter(), _cpu_s()
    n = 0
    if name == "defi":
        for chunk in decode(path, size=128, chunk_frames=256):
            n += len(chunk)
    elif name == "defi_deblock":  # the same, with the deblocking filter kept (skip_loop_filter="never")
        for chunk in decode(path, size=128, chunk_frames=256, skip_loop_filter="never"):
            n += len(chunk)
    elif name == "decord":
        for chunk in decode(path, size=128, chunk_frames=256, backend="decord"):
            n += len(chunk)
    elif name == "pyav_naive":  # what most code does: a new swscale context per frame
        with av.open(path) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            for f in c.decode(v):
                f.to_ndarray(format="rgb24", width=228, height=128)
                n += 1
    elif name == "pyav_fullres":
        with av.open(path) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            for _ in c.decode(v):
                n += 1
    else:
        raise ValueError(name)
    dt, cpu = time.perf_counter() - t, _cpu_s() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "name": name,
        "frames": n,
        "seconds": dt,
        "fps": n / dt,
        "cpu_ms_per_frame": 1000 * cpu / max(n, 1),
        "peak_rss_mib": rss,
        "rss_growth_mib": rss - base_rss,
    }


def run_sub(name: str, path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", name, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ffmpeg(path: str, frames: int) -> dict:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"], check=True)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return {
        "name": "ffmpeg -f null",
        "frames": frames,
        "seconds": dt,
        "fps": frames / dt,
        "cpu_ms_per_frame": 1000 * cpu / frames,
        "peak_rss_mib": r1.ru_maxrss / 1024,
        "rss_growth_mib": float("nan"),
    }


def make_sub(path: str, seconds: float, args) -> str:
    # Encoded in a subprocess: ru_maxrss survives fork+exec, so the parent stays small and each
    # measured child reports its own peak.
    subprocess.run([sys.executable, __file__, "--make", path, str(seconds), str(args.width), str(args.height), str(args.fps)], check=True)
    return path


def table(rows: list[dict]) -> None:
    print(f"{'path':<16}{'frames':>7}{'wall s':>8}{'frames/s':>10}{'cpu ms/frame':>14}{'peak RSS MiB':>14}{'RSS growth':>12}")
    for r in rows:
        print(
            f"{r['name']:<16}{r['frames']:>7}{r['seconds']:>8.2f}{r['fps']:>10.1f}"
            f"{r['cpu_ms_per_frame']:>14.2f}{r['peak_rss_mib']:>14.0f}{r['rss_growth_mib']:>12.0f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument(
        "--long-factor",
        type=float,
        default=3.0,
        help="also decode a file this many times longer with defi and decord (RSS vs length); 0: skip",
    )
    ap.add_argument("--one", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        p, sec, w, h, fps = args.make
        make_video(Path(p), float(sec), int(w), int(h), int(fps))
        return
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = make_sub(str(Path(tmp) / "bench.mp4"), args.seconds, args)
        n_expected = int(args.seconds * args.fps)
        print(
            f"file: {args.seconds:g} s {args.width}x{args.height} {args.fps} fps H.264, "
            f"{os.path.getsize(path) / 2**20:.1f} MiB, {n_expected} frames; cpus={os.cpu_count()}, "
            f"load avg {os.getloadavg()[0]:.1f}"
        )
        rows = [run_sub("defi", path), run_sub("defi_deblock", path), run_sub("pyav_naive", path)]
        try:
            rows.append(run_sub("decord", path))
        except subprocess.CalledProcessError as e:
            print(f"decord failed: {e.stderr.strip().splitlines()[-1:]}")
        if shutil.which("ffmpeg"):
            peer = run_ffmpeg(path, n_expected)
        else:
            print("ffmpeg binary: missing from PATH; PyAV full-res decode (no RGB conversion, like -f null) stands in as the peer")
            peer = run_sub("pyav_fullres", path)
        rows.append(peer)
        table(rows)
        ours = rows[0]
        for r in rows[1:]:
            print(
                f"defi vs {r['name']}: frames/s ratio {ours['fps'] / r['fps']:.2f}, "
                f"CPU per frame ratio {ours['cpu_ms_per_frame'] / r['cpu_ms_per_frame']:.2f}"
            )
        assert ours["frames"] == peer["frames"], f"frame counts: {ours['frames']} vs {peer['frames']}"

        if args.long_factor > 0:
            long_s = args.seconds * args.long_factor
            lpath = make_sub(str(Path(tmp) / "long.mp4"), long_s, args)
            print(f"\nRSS vs length: {args.seconds:g} s above, {long_s:g} s here (same content)")
            long_rows = [run_sub("defi", lpath)]
            try:
                long_rows.append(run_sub("decord", lpath))
            except subprocess.CalledProcessError as e:
                print(f"decord failed: {e.stderr.strip().splitlines()[-1:]}")
            table(long_rows)


if __name__ == "__main__":
    main()
