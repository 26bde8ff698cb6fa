"""Decode throughput: our low-res streaming decode vs a peer, on one generated file, side by side.

    .venv/bin/python bench/decode.py [--seconds 20] [--width 1280] [--height 720] [--fps 30]

Makes a ``--seconds`` long H.264 file (a pan over a blocky texture) in a temp dir,
then times, each in a fresh subprocess so its peak RSS is its own:

- ``defi.decode short=128``: ``defi.curate.decode.decode(path, size=128)``, every frame, RGB.
- ``decord short=128``: decord's VideoReader at the same size, read in 256-frame batches.
- peer: ``ffmpeg -i F -f null -`` when the binary is on PATH; otherwise it is reported missing and
  a PyAV full-resolution decode (frames decoded, not converted: what ``-f null`` does) stands in.

Prints frames/s, the ratio of ours to the peer, and peak RSS (MiB) of each. Not a test.
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
    """Stream-encode a pan over a blocky texture (16 px blocks) plus grain with x264 ultrafast, CRF 23. Frames are generated one at a time."""
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
    grain = rng.integers(-6, 7, (7, h, w, 3), dtype=np.int16)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(n):
            img = np.clip(big[:, i * speed:i * speed + w] + grain[i % len(grain)], 0, 255).astype(np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def run_one(name: str, path: str) -> dict:
    from defi.curate.decode import decode  # imported before the clock starts (pulls pyarrow)

    t = time.perf_counter()
    n = 0
    if name == "defi":
        for chunk in decode(path, size=128, chunk_frames=256):
            n += len(chunk)
    elif name == "decord":
        for chunk in decode(path, size=128, chunk_frames=256, backend="decord"):
            n += len(chunk)
    elif name == "pyav_fullres":
        import av

        with av.open(path) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            for _ in c.decode(v):
                n += 1
    else:
        raise ValueError(name)
    dt = time.perf_counter() - t
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"name": name, "frames": n, "seconds": dt, "fps": n / dt, "peak_rss_mib": rss_mib}


def run_sub(name: str, path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", name, path], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ffmpeg(path: str, frames: int) -> dict:
    t = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"], check=True)
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"name": "ffmpeg -f null", "frames": frames, "seconds": dt, "fps": frames / dt, "peak_rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
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
        path = str(Path(tmp) / "bench.mp4")
        # Encoded in a subprocess: ru_maxrss survives fork+exec, so the parent stays small and each
        # measured child reports its own peak.
        subprocess.run([sys.executable, __file__, "--make", path, str(args.seconds), str(args.width),
                        str(args.height), str(args.fps)], check=True)
        n_expected = int(args.seconds * args.fps)
        print(f"file: {args.seconds:g} s {args.width}x{args.height} {args.fps} fps H.264, "
              f"{os.path.getsize(path) / 2**20:.1f} MiB, {n_expected} frames; cpus={os.cpu_count()}")
        rows = [run_sub("defi", path)]
        try:
            rows.append(run_sub("decord", path))
        except subprocess.CalledProcessError as e:
            print(f"decord failed: {e.stderr.strip().splitlines()[-1:]}")
        if shutil.which("ffmpeg"):
            peer = run_ffmpeg(path, n_expected)
        else:
            print("ffmpeg binary: missing from PATH; PyAV full-res decode stands in as the peer")
            peer = run_sub("pyav_fullres", path)
        rows.append(peer)
        print(f"{'path':<22}{'frames':>8}{'seconds':>10}{'frames/s':>10}{'peak RSS MiB':>14}")
        for r in rows:
            print(f"{r['name']:<22}{r['frames']:>8}{r['seconds']:>10.2f}{r['fps']:>10.1f}{r['peak_rss_mib']:>14.0f}")
        ours = rows[0]
        print(f"ratio defi/{peer['name']}: {ours['fps'] / peer['fps']:.2f}x")
        for r in rows[1:-1]:
            print(f"ratio defi/{r['name']}: {ours['fps'] / r['fps']:.2f}x")
        assert ours["frames"] == peer["frames"], f"frame counts differ: {ours['frames']} vs {peer['frames']}"


if __name__ == "__main__":
    main()
