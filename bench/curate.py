"""End-to-end `defi curate` throughput on generated inputs, beside a full-resolution decode of
the same files, in one run; plus peak RSS.

Goal (pipeline issue): pipeline input frames/s >= 0.5 x ffmpeg's full-resolution decode rate on
2 cores, with shots + motion + encode on. Uses the `ffmpeg` binary when on PATH (`make bench`
installs it), else PyAV's full-resolution decode as the stand-in peer (said in the output).

Prints three rates of one run beside the peer's: end to end (includes the run's fixed cost: Ray
and Ray Data start-up, worker warm-up, the last commit, shutdown; several seconds on 2 cores),
without ray.init, and over the processing window (the run record's ``processing_window_s``: first
video begun to last video done, on the workers' clocks), and while all workers are busy and warm
(``warm_rate``), which is the rate a corpus of hours sees.

Run: .venv/bin/python bench/curate.py [--videos 12] [--seconds 20] [--height 720]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np


def make_video(path: str, seconds: float, h: int, fps: int, seed: int) -> int:
    import av

    w = h * 16 // 9 // 2 * 2
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    shots = np.cumsum(rng.integers(3 * fps, 8 * fps, size=64))
    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        base = None
        for i in range(n):
            if base is None or i in shots:
                small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
                base = np.kron(small, np.ones((16, 16, 1), np.uint8))[:h, :w]
            f = base.copy()
            x = (i * 6) % (w - 80)
            f[h // 3 : h // 3 + 80, x : x + 80] = (250, 220, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return n


def peer_decode(paths: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    if shutil.which("ffmpeg"):
        for p in paths:
            subprocess.run(["ffmpeg", "-v", "error", "-threads", "2", "-i", p, "-f", "null", "-"], check=True)
        return "ffmpeg -f null (full res)", time.perf_counter() - t0
    import av

    for p in paths:
        with av.open(p) as c:
            c.streams.video[0].thread_type = "AUTO"
            for _ in c.decode(video=0):
                pass
    return "PyAV decode (full res; ffmpeg not on PATH)", time.perf_counter() - t0


def rss_of_one_video(path: str) -> tuple[float, float, int]:
    """Peak RSS (MiB) of a fresh process that runs one video through the per-video pipeline
    (no Ray: what one Ray worker does), its wall time, and the clips it made."""
    code = (
        "import resource, sys, time\n"
        "from defi.pipelines.config import from_dict\n"
        "from defi.pipelines.sources import SourceSpec\n"
        "from defi.pipelines.curate_video import CurateConfig, VideoDone, process_source\n"
        "cfg = from_dict(CurateConfig, {'encode': {'fps': 10, 'short_side': 256}})\n"
        "t = time.perf_counter(); n = sum(1 for it in process_source(SourceSpec(uri=sys.argv[1]), cfg) if not isinstance(it, VideoDone))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t, n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def warm_rate(done: list, workers: int) -> float | None:
    """Input frames/s while every worker is busy and past its first video: from the time the
    ``workers``-th video finished (each worker has then finished one, warm-up included) to the
    last video's start (after it, workers run out of work). Frames in that window are counted
    pro rata of each video's [begin, finish] span on the workers' clocks. None when the run is
    too short to have such a window."""
    spans = [(d.started_at, d.finished_at, int(d.source.num_frames or 0)) for d in done if d.source.error is None]
    if len(spans) <= workers:
        return None
    a = sorted(f for _, f, _ in spans)[workers - 1]
    b = max(s for s, _, _ in spans)
    if b <= a:
        return None
    frames = sum(n * max(0.0, min(f, b) - max(s, a)) / (f - s) for s, f, n in spans if f > s)
    return frames / (b - a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument(
        "--rss-minutes",
        type=float,
        nargs="*",
        default=[1, 10],
        help="also measure one worker's peak RSS on videos of these lengths (360p); none to skip",
    )
    args = ap.parse_args()
    if args.rss_minutes:
        with tempfile.TemporaryDirectory() as d:
            print(f"{'video (360p30)':<20} {'peak RSS MiB':>12} {'wall s':>8} {'clips':>6}   (one worker, no Ray)")
            for m in args.rss_minutes:
                p = os.path.join(d, f"{m}min.mp4")
                make_video(p, m * 60, 360, 30, 7)
                rss, wall, n = rss_of_one_video(p)
                print(f"{f'{m:g} min':<20} {rss:>12.0f} {wall:>8.1f} {n:>6}")
    from defi.pipelines.config import from_dict
    from defi.pipelines.curate import run_curate
    from defi.pipelines.curate_video import CurateConfig

    cfg = from_dict(
        CurateConfig, {"encode": {"fps": 10, "short_side": 256}, "motion": {"min_frame_diff": 0.1}, "ray": {"num_cpus": os.cpu_count()}}
    )
    with tempfile.TemporaryDirectory() as d:
        paths, frames = [], 0
        for i in range(args.videos):
            p = os.path.join(d, f"v{i}.mp4")
            frames += make_video(p, args.seconds, args.height, args.fps, i)
            paths.append(p)
        peer, peer_s = peer_decode(paths)
        peer_fps = frames / peer_s
        done = []
        t0 = time.perf_counter()
        rec = run_curate([d], os.path.join(d, "corpus"), cfg, progress=False, on_video=done.append)
        wall = time.perf_counter() - t0
        st = rec["timings_s"]
        no_init = wall - st.get("ray_start", 0.0)
        window = rec["processing_window_s"]
        assert rec["frames_in"] == frames, (rec["frames_in"], frames)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"inputs: {args.videos} x {args.seconds:.0f} s {args.height}p {args.fps} fps H.264 = {frames} frames; {os.cpu_count()} cores")
        print(f"{'path':<62} {'wall s':>7} {'frames/s':>9} {'x peer':>7}")
        rows = [
            (peer, peer_s),
            ("defi curate, end to end (Ray start to shutdown)", wall),
            ("defi curate, without ray.init", no_init),
            ("defi curate, processing window (first video begun -> last done)", window),
        ]
        warm = warm_rate(done, int(rec["ray"]["cpus"]))
        if warm:
            rows.append(("defi curate, all workers busy and warm (see warm_rate)", frames / warm))
        for label, t in rows:
            print(f"{label:<62} {t:>7.2f} {frames / t:>9.0f} {frames / t / peer_fps:>7.2f}")
        # (the warm row's "wall s" is the time the whole input would take at that rate)
        print(
            f"goal: >= 0.5 x peer. The window excludes the run's fixed costs (ray.init {st.get('ray_start', 0):.1f} s, "
            f"then Ray Data's executor and workers starting, the last commit and shutdown: "
            f"{wall - st.get('ray_start', 0) - window:.1f} s here), which a corpus of hours amortises."
        )
        work = st.get("total", 0.0)
        print(
            f"clips: {rec['counts'].get('clips', 0)} candidates, {rec['counts'].get('kept', 0)} kept; per-video work "
            f"{work:.1f} s summed over workers = {1000 * work / frames:.2f} ms/frame (decode {st.get('decode', 0):.1f}, "
            f"shots {st.get('shots', 0):.1f}, score {st.get('score', 0):.1f}, encode {st.get('encode', 0):.1f})"
        )
        print(f"peak RSS of a worker process: {rss:.0f} MiB; driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
