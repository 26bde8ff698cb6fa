"""End-to-end `defi curate` throughput on generated inputs (by default about one minute of
720p60 and 360p30 H.264), with the local runner and with Ray, beside a full-resolution decode of
the same files by ``ffmpeg -f null``, in one run; plus peak RSS.

Goal (issue 17): `defi curate` end to end, start-up included, >= 0.5 x ffmpeg's full-resolution
decode of the same files on 2 cores, with shots + motion + encode on. Uses the `ffmpeg` binary
when on PATH (`make bench` installs it), else PyAV's full-resolution decode as the stand-in peer
(said in the output).

Per backend (``--runner local`` and ``--runner ray``) it prints: the ``defi curate`` command in a
fresh process (Python start-up, imports, Ray start and shutdown: what a user waits for), the same
run in this process (imports already paid), and the processing window (the run record's
``processing_window_s``: first video begun to last video done, on the workers' clocks), which
excludes the run's fixed costs. Then where each backend's per-video work went (decode, shots,
score, encode: seconds summed over workers).

Run: .venv/bin/python bench/curate.py [--videos 6] [--seconds 10] [--formats 720p60,360p30] [--runners local,ray]
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


def children_cpu() -> float:
    """CPU seconds (user + sys) of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peer_decode(paths: list[str]) -> tuple[str, float, float | None]:
    """(what, wall s, CPU s or None) of decoding ``paths`` at full resolution."""
    t0, c0 = time.perf_counter(), children_cpu()
    if shutil.which("ffmpeg"):
        for p in paths:
            subprocess.run(["ffmpeg", "-v", "error", "-threads", "2", "-i", p, "-f", "null", "-"], check=True)
        return "ffmpeg -f null (full res)", time.perf_counter() - t0, children_cpu() - c0
    import av

    for p in paths:
        with av.open(p) as c:
            c.streams.video[0].thread_type = "AUTO"
            for _ in c.decode(video=0):
                pass
    return "PyAV decode (full res; ffmpeg not on PATH)", time.perf_counter() - t0, None


def rss_of_one_video(path: str) -> tuple[float, float, int]:
    """Peak RSS (MiB) of a fresh process that runs one video through the per-video pipeline
    (no Ray: what one Ray worker does), its wall time, and the clips it made."""
    code = (
        "import resource, sys, time\n"
        "from defi.pipelines.config import from_dict\n"
        "from defi.pipelines.sources import SourceSpec\n"
        "from defi.pipelines.curate_config import CurateConfig\n"
        "from defi.pipelines.curate_video import VideoDone, process_source\n"
        "cfg = from_dict(CurateConfig, {'encode': {'fps': 10, 'short_side': 256}})\n"
        "t = time.perf_counter(); n = sum(1 for it in process_source(SourceSpec(uri=sys.argv[1]), cfg) if not isinstance(it, VideoDone))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t, n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


CFG = {"encode": {"fps": 10, "short_side": 256}, "motion": {"min_frame_diff": 0.1}}


def run_cli(inputs: str, root: str, runner: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``defi curate`` in a fresh process (start-up included; the CPU of
    processes it waits for, so not that of Ray's workers)."""
    cmd = [sys.executable, "-m", "defi.pipelines.cli", "curate", inputs, "--root", root, "--no-progress", "--runner", runner]
    cmd += ["--encode.fps", "10", "--encode.short_side", "256", "--motion.min_frame_diff", "0.1"]
    t0, c0 = time.perf_counter(), children_cpu()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0, children_cpu() - c0


def parse_formats(text: str) -> list[tuple[int, int]]:
    """``720p60,360p30`` -> [(720, 60), (360, 30)]"""
    out = []
    for f in text.split(","):
        h, fps = f.strip().split("p")
        out.append((int(h), int(fps)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6, help="input videos (formats alternate)")
    ap.add_argument("--seconds", type=float, default=10, help="length of each video")
    ap.add_argument("--formats", default="720p60,360p30", help="HEIGHTpFPS list the videos cycle through")
    ap.add_argument("--runners", default="local,ray", help="backends to time, in this order")
    ap.add_argument(
        "--rss-minutes",
        type=float,
        nargs="*",
        default=[],
        help="also measure one worker's peak RSS on videos of these lengths (360p), e.g. 1 10",
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
    from defi.pipelines.curate_config import CurateConfig

    formats = parse_formats(args.formats)
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    with tempfile.TemporaryDirectory() as d:
        inputs = os.path.join(d, "in")
        os.makedirs(inputs)
        paths, frames = [], 0
        for i in range(args.videos):
            h, fps = formats[i % len(formats)]
            p = os.path.join(inputs, f"v{i}_{h}p{fps}.mp4")
            frames += make_video(p, args.seconds, h, fps, i)
            paths.append(p)
        peer, peer_s, peer_cpu = peer_decode(paths)
        peer_fps = frames / peer_s
        rows, ratios, work, cpus = [(peer, peer_s, peer_cpu)], {}, {}, {}
        for runner in runners:
            cli_s, cli_cpu = run_cli(inputs, os.path.join(d, f"cli-{runner}"), runner)
            cfg = from_dict(CurateConfig, {**CFG, "runner": runner})
            t0 = time.perf_counter()
            rec = run_curate([inputs], os.path.join(d, f"corpus-{runner}"), cfg, progress=False)
            wall = time.perf_counter() - t0
            assert rec["frames_in"] == frames and rec["runner"]["backend"] == runner, (rec["frames_in"], frames, rec["runner"])
            rows += [
                (f"defi curate --runner {runner}: the command, start-up included", cli_s, cli_cpu),
                (f"defi curate --runner {runner}: in this process (imports paid)", wall, None),
                (f"defi curate --runner {runner}: processing window", rec["processing_window_s"], None),
            ]
            ratios[runner] = peer_s / cli_s
            cpus[runner] = cli_cpu
            work[runner] = (rec["timings_s"], rec["counts"])
        total_s = args.videos * args.seconds
        print(
            f"inputs: {args.videos} x {args.seconds:g} s ({total_s:g} s) of {args.formats} H.264 = {frames} frames; {os.cpu_count()} cores"
        )
        print(f"{'path':<66} {'wall s':>7} {'frames/s':>9} {'x peer':>7} {'CPU s':>7}")
        for label, t, cpu in rows:
            shown = f"{cpu:>7.2f}" if cpu is not None else f"{'':>7}"
            print(f"{label:<66} {t:>7.2f} {frames / t:>9.0f} {frames / t / peer_fps:>7.2f} {shown}")
        for runner, (st, counts) in work.items():
            tot = st.get("total", 0.0)
            print(
                f"{runner}: {counts.get('clips', 0)} clips, {counts.get('kept', 0)} kept; per-video work {tot:.1f} s summed over "
                f"workers = {1000 * tot / frames:.2f} ms/frame (probe {st.get('probe', 0):.1f}, decode {st.get('decode', 0):.1f}, "
                f"shots {st.get('shots', 0):.1f}, score {st.get('score', 0):.1f}, encode {st.get('encode', 0):.1f})"
                + (f", ray start {st['ray_start']:.1f} s" if "ray_start" in st else "")
            )
        print("end to end, start-up included (x peer, goal >= 0.5): " + ", ".join(f"{r} {v:.2f}x" for r, v in ratios.items()))
        print(
            f"peak RSS of a worker process: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB; "
            f"driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    sys.exit(main())
