"""defi curate vs its peers on the same generated files: ffmpeg (decode, decode+encode),
PySceneDetect and Data-Juicer. One table; cut positions checked against each other and the truth.

    .venv/bin/python bench/peers.py [--quick] [--workdir DIR] [--no-dj]

Inputs: videos made here with PyAV (H.264, 30 fps, 360p and 720p, 10-60 s; ``--quick``: three short
ones), each a run of shots with known hard cuts: a panning blocky texture with grain and a moving
square, plus one frozen (static) shot that a motion filter should drop and short (< 1 s) shots
that a 1 s duration filter should drop. Cached in the work dir, keyed by the spec.

Each tool runs in its own subprocess; its wall time, CPU time (user+sys of the whole process
tree, reaped through a child subreaper so Ray's and Data-Juicer's workers count) and peak RSS
(largest process, and the largest sum over the tree sampled every 0.1 s) are measured the same way.

- ``ffmpeg decode``: ``ffmpeg -i F -f null -`` per file: the decode limit.
- ``ffmpeg dec+enc``: ffmpeg cuts and encodes exactly the clips defi kept, with defi's output
  settings (fps, short side, x264 preset and CRF): the encode limit for the same output.
- ``PySceneDetect``: ``scenedetect.detect(file, AdaptiveDetector())`` per file (its own decode).
- ``Data-Juicer``: ``dj-process`` with ``video_split_by_scene_mapper`` (AdaptiveDetector, same
  threshold) -> ``video_duration_filter`` (1 s) -> ``video_motion_score_filter`` (flow at 128 px
  short side like defi's, not its full-resolution default); installed from PyPI into
  ``bench/.venv-dj`` (created on first use, so its pins never touch ours), with the packages its
  ops would otherwise install at run time (ray, torch, av, opencv), so no install is timed.
- ``defi curate``: ``run_curate`` with shots -> windows (one clip per shot) -> duration (1 s) ->
  motion -> encode, through Ray on all cores.

Not like for like, and said so in the table's notes: Data-Juicer's split re-encodes every scene at
full resolution and fps (scenedetect's ``split_video_ffmpeg``), and its filters keep or drop a
whole sample (one input video with all its scenes, ``any_or_all``), not single clips; defi writes
clips at its output size into shards plus an index.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DJ_VENV = HERE / ".venv-dj"
# Data-Juicer installs an op's missing packages at run time with uv (it did so for ray and torch
# inside the timed run); install them up front so that is not timed. aiohttp: imported by
# data_juicer.utils.file_utils but not declared (py-data-juicer 1.6.1).
DJ_PACKAGES = ["py-data-juicer", "scenedetect", "opencv-python-headless", "av", "aiohttp", "ray", "torch"]
FPS = 30
MIN_CLIP_S = 1.0  # duration filter of every pipeline
# defi's output settings; the ffmpeg dec+enc peer uses the same
ENC = {"fps": 30.0, "short_side": 256, "crf": 22, "preset": "veryfast"}


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def video_specs(quick: bool) -> list[dict]:
    """(name, seconds, height, seed) of each input; durations and heights as the brief asks."""
    if quick:
        return [{"name": f"q{i}", "seconds": s, "height": h, "seed": i} for i, (s, h) in enumerate([(10, 360), (12, 360), (10, 720)])]
    rng = np.random.default_rng(1234)
    out = []
    for i in range(8):
        out.append({"name": f"v{i:02d}", "seconds": int(rng.integers(10, 61)), "height": 360 if i % 2 == 0 else 720, "seed": 100 + i})
    return out


def shot_plan(seconds: float, seed: int) -> tuple[list[int], int]:
    """Shot lengths in frames (1 s .. 6 s, with some 0.6-0.9 s ones) and the index of the static shot."""
    rng = np.random.default_rng(seed)
    n, lens = int(seconds * FPS), []
    while sum(lens) < n:
        short = rng.random() < 0.2
        lens.append(int(rng.integers(18, 28)) if short else int(rng.integers(30, 180)))
    lens[-1] -= sum(lens) - n
    if lens[-1] < 30:  # keep the last shot long enough to be detected and kept
        lens[-2] += lens.pop()
    static = int(rng.integers(0, len(lens)))
    while lens[static] < 45:
        static = (static + 1) % len(lens)
    return lens, static


def make_video(path: Path, seconds: float, height: int, seed: int) -> dict:
    """Write one input; returns its truth: cut frames, static shot span, frame count."""
    import av

    h, w = height, height * 16 // 9 // 2 * 2
    block = 16 if h <= 480 else 32
    rng = np.random.default_rng(seed)
    lens, static = shot_plan(seconds, seed)
    grain = rng.integers(-6, 7, (5, h, w, 3), dtype=np.int16)
    cuts = np.cumsum(lens)[:-1].tolist()
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        i = 0
        for k, n in enumerate(lens):
            blocks = rng.integers(0, 255, (h // block + 1, (w + 4 * n) // block + 2, 3), dtype=np.uint8)
            big = np.kron(blocks, np.ones((block, block, 1), np.uint8))[:h]
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            frozen = None
            for j in range(n):
                if k == static:
                    if frozen is None:
                        frozen = np.clip(big[:, :w] + grain[0], 0, 255).astype(np.uint8)
                    img = frozen
                else:
                    img = big[:, 3 * j : 3 * j + w] + grain[i % len(grain)]
                    img = np.clip(img, 0, 255).astype(np.uint8)
                    x = (j * 8) % (w - h // 4)
                    img[h // 3 : h // 3 + h // 4, x : x + h // 4] = color
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
                i += 1
        for p in s.encode():
            out.mux(p)
    starts = [0] + cuts
    return {
        "path": str(path),
        "frames": i,
        "seconds": i / FPS,
        "height": h,
        "width": w,
        "cuts": cuts,
        "static": [starts[static], starts[static] + lens[static]],
        "short_shots": sum(1 for x in lens if x < 30),
    }


def make_inputs(work: Path, quick: bool) -> list[dict]:
    specs = video_specs(quick)
    tag = hashlib.sha1(json.dumps(specs, sort_keys=True).encode() + b"v1").hexdigest()[:10]
    d = work / f"inputs-{tag}"
    truth_file = d / "truth.json"
    if truth_file.exists():
        return json.loads(truth_file.read_text())
    d.mkdir(parents=True, exist_ok=True)
    truth = []
    for sp in specs:
        t0 = time.time()
        truth.append(make_video(d / f"{sp['name']}.mp4", sp["seconds"], sp["height"], sp["seed"]))
        print(
            f"  made {sp['name']}.mp4: {sp['seconds']} s {sp['height']}p, {len(truth[-1]['cuts'])} cuts ({time.time() - t0:.0f} s)",
            file=sys.stderr,
        )
    truth_file.write_text(json.dumps(truth))
    return truth


# ---------------------------------------------------------------------------------------------
# measuring a process tree
# ---------------------------------------------------------------------------------------------
def _set_subreaper() -> None:
    """Orphans of our children (Ray's workers after its raylet exits) are re-parented to us, so
    reaping them adds their CPU time to RUSAGE_CHILDREN."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p))
    return kids


def _descendants(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> tuple[tuple[int, int], int] | None:
    """((pid, start time), utime + stime in clock ticks) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (pid, int(fields[19])), int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(cmd: list[str], env: dict | None = None, log: Path | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd``; wall s, CPU s (tree), peak RSS of one process and of the tree (MiB), rc.

    CPU s is the larger of two counts: RUSAGE_CHILDREN after reaping (exact for every process
    whose parent waited for it) and the last /proc utime+stime seen of each process in the tree
    (catches processes reaped elsewhere or killed; misses at most the last 0.1 s of each)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = open(log, "w") if log else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak = {"tree": 0.0, "one": 0.0}
    ticks: dict[tuple[int, int], int] = {}
    stop = threading.Event()

    def sample() -> None:
        # our own pid is the root: orphans re-parented to us (subreaper) stay in the tree
        while not stop.is_set():
            tree = [p for p in _descendants(os.getpid()) if p != os.getpid()]
            rss = [_rss_mib(p) for p in tree]
            for p in tree:
                t = _cpu_ticks(p)
                if t is not None:
                    ticks[t[0]] = t[1]
            if rss:
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["one"] = max(peak["one"], max(rss))
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    # reap orphans still shutting down (Ray's processes), for at most 15 s
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
    stop.set()
    th.join()
    if log:
        out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu_seen = sum(ticks.values()) / _TICK
    return {
        "wall_s": wall,
        "cpu_s": max(cpu_reaped, cpu_seen),
        "cpu_reaped_s": cpu_reaped,
        "cpu_seen_s": cpu_seen,
        "rss_one_mib": peak["one"],
        "rss_tree_mib": peak["tree"],
        "rc": rc,
    }


def tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [l for l in text.splitlines() if l.strip()]
    err = [l for l in lines if "Error" in l or "error" in l]
    return " | ".join((err or lines)[-2:])[-n:]


# ---------------------------------------------------------------------------------------------
# the tools
# ---------------------------------------------------------------------------------------------
def run_ffmpeg_decode(inputs: list[dict], work: Path) -> dict:
    if not shutil.which("ffmpeg"):
        return {"error": "ffmpeg not on PATH (apt-get install ffmpeg)"}
    script = "; ".join(f"ffmpeg -nostdin -v error -i '{v['path']}' -f null - || exit 1" for v in inputs)
    return measure(["sh", "-c", script], log=work / "ffmpeg_decode.log")


def run_ffmpeg_encode(clips: list[dict], work: Path) -> dict:
    """Cut and encode defi's kept clips with defi's output settings (accurate seek, then scale+fps)."""
    if not shutil.which("ffmpeg"):
        return {"error": "ffmpeg not on PATH"}
    if not clips:
        return {"error": "defi kept no clips to encode"}
    out = work / "ffmpeg_clips"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vf = f"fps={ENC['fps']:g},scale=-2:{ENC['short_side']}"
    lines = []
    for i, c in enumerate(clips):
        lines.append(
            f"ffmpeg -nostdin -v error -y -ss {c['start_s']:.6f} -i '{c['uri']}' -t {c['end_s'] - c['start_s']:.6f} "
            f"-vf {vf} -an -c:v libx264 -preset {ENC['preset']} -crf {ENC['crf']} -pix_fmt yuv420p "
            f"'{out}/c{i:05d}.mp4' || exit 1"
        )
    script = work / "ffmpeg_encode.sh"
    script.write_text("\n".join(lines) + "\n")
    r = measure(["sh", str(script)], log=work / "ffmpeg_encode.log")
    r["clips"] = len(list(out.glob("*.mp4")))
    return r


PYSCENEDETECT_SCRIPT = textwrap.dedent("""
    import json, sys
    from scenedetect import detect, AdaptiveDetector
    out = {}
    for path in sys.argv[2:]:
        scenes = detect(path, AdaptiveDetector(), start_in_scene=True)
        out[path] = [s[0].get_frames() for s in scenes[1:]]
    json.dump(out, open(sys.argv[1], "w"))
""")


def run_pyscenedetect(inputs: list[dict], work: Path) -> dict:
    res = work / "pyscenedetect.json"
    r = measure([sys.executable, "-c", PYSCENEDETECT_SCRIPT, str(res), *[v["path"] for v in inputs]], log=work / "pyscenedetect.log")
    if r["rc"] != 0:
        return {**r, "error": f"rc={r['rc']}: {tail(work / 'pyscenedetect.log')}"}
    r["cuts"] = json.loads(res.read_text())
    r["clips"] = sum(len(c) + 1 for c in r["cuts"].values())
    return r


def ensure_dj_venv() -> tuple[Path | None, str | None]:
    """bench/.venv-dj with Data-Juicer, created on first use; (dj-process path, error)."""
    exe = DJ_VENV / "bin" / "dj-process"
    stamp = DJ_VENV / (".installed-" + hashlib.sha1(" ".join(DJ_PACKAGES).encode()).hexdigest()[:8])
    if exe.exists() and stamp.exists():
        return exe, None
    print(f"installing Data-Juicer into {DJ_VENV} (one-off, a few minutes)...", file=sys.stderr)
    log = HERE / ".venv-dj-install.log"
    try:
        if not (DJ_VENV / "bin" / "pip").exists():
            subprocess.run([_base_python() or sys.executable, "-m", "venv", str(DJ_VENV)], check=True, capture_output=True, timeout=300)
        with open(log, "w") as f:
            subprocess.run(
                [str(DJ_VENV / "bin" / "pip"), "install", "-q", *DJ_PACKAGES], check=True, stdout=f, stderr=subprocess.STDOUT, timeout=1800
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        return None, f"install failed ({type(e).__name__}): {tail(log)}"
    if not exe.exists():
        return None, "install finished without dj-process"
    stamp.touch()
    return exe, None


def _base_python() -> str | None:
    """A python outside our venv to create the Data-Juicer venv from (the venv's own works too)."""
    base = getattr(sys, "_base_executable", None)
    return base if base and os.path.exists(base) else None


def run_data_juicer(inputs: list[dict], work: Path, ncpu: int) -> dict:
    exe, err = ensure_dj_venv()
    if err:
        return {"error": err}
    if not shutil.which("ffmpeg"):
        return {"error": "ffmpeg not on PATH (Data-Juicer's scene split calls it)"}
    d = work / "dj"
    shutil.rmtree(d, ignore_errors=True)
    (d / "clips").mkdir(parents=True)
    data = d / "data.jsonl"
    with open(data, "w") as f:
        for v in inputs:
            f.write(json.dumps({"videos": [v["path"]], "text": "<__dj__video> <|__dj__eoc|>"}) + "\n")
    cfg = textwrap.dedent(f"""
        project_name: defi-bench-peers
        dataset_path: {data}
        export_path: {d / "out" / "result.jsonl"}
        np: {ncpu}
        open_tracer: false
        use_cache: false
        process:
          - video_split_by_scene_mapper:
              detector: AdaptiveDetector
              threshold: 3.0
              min_scene_len: 15
              save_dir: {d / "clips"}
          - video_duration_filter:
              min_duration: {MIN_CLIP_S}
          - video_motion_score_filter:
              min_score: 0.25
              size: 128
        """)
    (d / "config.yaml").write_text(cfg)
    env = {**os.environ, "DATA_JUICER_CACHE_HOME": str(d / "cache"), "HF_DATASETS_CACHE": str(d / "cache" / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    r = measure([str(exe), "--config", str(d / "config.yaml")], env=env, log=d / "dj.log", timeout=3600)
    if r["rc"] != 0:
        return {**r, "error": f"dj-process rc={r['rc']}: {tail(d / 'dj.log')}"}
    # Cut positions: the scene clips it wrote, per input, in order; cumulative frame counts.
    cuts = {}
    for v in inputs:
        stem = Path(v["path"]).stem
        files = sorted(p for p in (d / "clips").glob(f"{stem}*.mp4"))
        counts = [_count_frames(p) for p in files]
        cuts[v["path"]] = np.cumsum(counts)[:-1].tolist() if len(counts) > 1 else []
    r["cuts"] = cuts
    r["clips_split"] = sum(len(c) + 1 for c in cuts.values())
    kept = 0
    res = d / "out" / "result.jsonl"
    if res.exists():
        for line in res.read_text().splitlines():
            if line.strip():
                kept += len(json.loads(line).get("videos", []))
    r["clips"] = kept
    return r


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(video=0) if p.size > 0)


def defi_config(ncpu: int) -> dict:
    return {
        "use_dedup": False,
        "shots": {"detector": "adaptive", "adaptive_threshold": 3.0, "min_shot_s": 0.5},
        "windows": {"clip_len_s": 8.0, "stride_s": 8.0, "min_clip_s": MIN_CLIP_S, "max_clip_s": None},
        "duration": {"min_s": MIN_CLIP_S},
        "motion": {"min_motion_mean": 0.25},
        "encode": dict(ENC),
        "ray": {"num_cpus": ncpu},
    }


def defi_worker(inputs_dir: str, root: str, out_json: str, ncpu: int) -> int:
    """Runs in the measured subprocess: curate, then dump cuts and kept clips."""
    from defi.pipelines.config import from_dict
    from defi.pipelines.curate import run_curate
    from defi.pipelines.curate_config import CurateConfig
    from defi.schemas.corpus import Corpus

    cfg = from_dict(CurateConfig, defi_config(ncpu))
    rec = run_curate([inputs_dir], root, cfg, progress=False)
    c = Corpus.open(root)
    # windows never split a shot here (max_clip_s None), so every clip row, kept or rejected,
    # starts a shot: its start frames are the cuts (shot_index restarts per analysis segment)
    rows = c.query("SELECT DISTINCT uri, start_frame FROM clips WHERE start_frame > 0 ORDER BY 1, 2").to_pylist()
    cuts: dict[str, list[int]] = {}
    for r in rows:
        cuts.setdefault(r["uri"], []).append(int(r["start_frame"]))
    kept = c.query("SELECT uri, start_s, end_s FROM clips WHERE kept ORDER BY uri, start_s").to_pylist()
    reasons = {
        r["reject_reason"]: r["n"] for r in c.query("SELECT reject_reason, count(*) AS n FROM clips WHERE NOT kept GROUP BY 1").to_pylist()
    }
    Path(out_json).write_text(
        json.dumps(
            {
                "status": rec["status"],
                "cuts": cuts,
                "kept": kept,
                "reasons": reasons,
                "segment_s": cfg.analysis.segment_s,
                "counts": rec["counts"],
            }
        )
    )
    return 0 if rec["status"] == "done" else 1


def run_defi(inputs: list[dict], work: Path, ncpu: int) -> dict:
    root = work / "defi_corpus"
    shutil.rmtree(root, ignore_errors=True)
    res = work / "defi.json"
    inputs_dir = str(Path(inputs[0]["path"]).parent)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    r = measure([sys.executable, __file__, "--_defi-worker", inputs_dir, str(root), str(res), str(ncpu)], env=env, log=work / "defi.log")
    if r["rc"] != 0:
        return {**r, "error": f"rc={r['rc']}: {tail(work / 'defi.log')}"}
    d = json.loads(res.read_text())
    # A shot longer than analysis.segment_s is split at the segment boundary (a forced cut, not a
    # detected one); they stay in the comparison and are counted here.
    seg = int(round(d["segment_s"] * FPS))
    r["cuts"] = d["cuts"]
    r["at_segment"] = sum(1 for cs in d["cuts"].values() for c in cs if c % seg == 0)
    r["kept"] = d["kept"]
    r["clips"] = len(d["kept"])
    r["reasons"] = d["reasons"]
    return r


# ---------------------------------------------------------------------------------------------
# comparing cuts
# ---------------------------------------------------------------------------------------------
def match(a: list[int], b: list[int], tol: int = 1) -> int:
    """Cuts of ``a`` with a cut of ``b`` within ``tol`` frames (each ``b`` used once)."""
    used, n = set(), 0
    for x in sorted(a):
        best = None
        for j, y in enumerate(b):
            if j not in used and abs(x - y) <= tol and (best is None or abs(x - y) < abs(x - b[best])):
                best = j
        if best is not None:
            used.add(best)
            n += 1
    return n


def agreement(name: str, cuts: dict, ref_name: str, ref: dict, paths: list[str]) -> str:
    na = sum(len(cuts.get(p, [])) for p in paths)
    nb = sum(len(ref.get(p, [])) for p in paths)
    m = sum(match(cuts.get(p, []), ref.get(p, [])) for p in paths)
    off = []
    for p in paths:
        for x in cuts.get(p, []):
            ys = ref.get(p, [])
            if ys:
                d = min(ys, key=lambda y: abs(y - x)) - x
                if abs(d) <= 3:
                    off.append(d)
    vals, counts = np.unique(off, return_counts=True)
    offs = f"; offsets (frames: count) {dict(zip(vals.tolist(), counts.tolist(), strict=False))}" if off else ""
    return f"  {name:<14} vs {ref_name:<8}: {m}/{na} cuts within 1 frame of {nb} ({m / max(na, 1):.0%}){offs}"


# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three short videos (< 5 min, excluding the one-off DJ install)")
    ap.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "defi-bench-peers"),
        help="inputs (cached) and outputs (default: $TMPDIR/defi-bench-peers)",
    )
    ap.add_argument("--no-dj", action="store_true", help="skip Data-Juicer")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="cores for defi's Ray and Data-Juicer's np")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--_defi-worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._defi_worker:
        a = args._defi_worker
        return defi_worker(a[0], a[1], a[2], int(a[3]))

    _set_subreaper()
    work = Path(args.workdir) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    inputs = make_inputs(work.parent, args.quick)
    paths = [v["path"] for v in inputs]
    frames = sum(v["frames"] for v in inputs)
    video_s = sum(v["seconds"] for v in inputs)
    truth = {v["path"]: v["cuts"] for v in inputs}
    heights = sorted({v["height"] for v in inputs})
    print(
        f"inputs: {len(inputs)} videos, {video_s:.0f} s, {frames} frames, {'/'.join(f'{h}p' for h in heights)} "
        f"{FPS} fps H.264, {sum(len(c) for c in truth.values())} true cuts; {args.cpus} cores",
        file=sys.stderr,
    )

    results: dict[str, dict] = {}
    for name, fn in [
        ("ffmpeg decode", lambda: run_ffmpeg_decode(inputs, work)),
        ("defi curate", lambda: run_defi(inputs, work, args.cpus)),
        ("PySceneDetect", lambda: run_pyscenedetect(inputs, work)),
    ]:
        print(f"running {name}...", file=sys.stderr)
        results[name] = fn()
    print("running ffmpeg dec+enc...", file=sys.stderr)
    results["ffmpeg dec+enc"] = run_ffmpeg_encode(results["defi curate"].get("kept", []), work)
    if args.no_dj:
        results["Data-Juicer"] = {"error": "skipped (--no-dj)"}
    else:
        print("running Data-Juicer...", file=sys.stderr)
        results["Data-Juicer"] = run_data_juicer(inputs, work, args.cpus)

    order = ["defi curate", "ffmpeg decode", "ffmpeg dec+enc", "PySceneDetect", "Data-Juicer"]
    what = {
        "defi curate": "shots+dur+motion+encode -> shards+index",
        "ffmpeg decode": "decode only, full res",
        "ffmpeg dec+enc": "encode defi's kept clips, same settings",
        "PySceneDetect": "AdaptiveDetector, its own decode",
        "Data-Juicer": "split(+full-res encode)+dur+motion@128px",
    }
    dw = results["defi curate"].get("wall_s")
    hdr = (
        f"{'tool':<15} {'wall s':>8} {'in fr/s':>8} {'CPU s':>8} {'vid h/core-h':>12} {'RSS MiB':>8} "
        f"{'tree MiB':>8} {'clips':>6} {'wall/defi':>9}  what"
    )
    print()
    print(hdr)
    print("-" * len(hdr))
    for name in order:
        r = results[name]
        if "error" in r:
            print(f"{name:<15} {'FAILED':>8}  {r['error']}")
            continue
        ratio = f"{r['wall_s'] / dw:.2f}" if dw else "-"
        print(
            f"{name:<15} {r['wall_s']:>8.1f} {frames / r['wall_s']:>8.0f} {r['cpu_s']:>8.1f} "
            f"{video_s / max(r['cpu_s'], 1e-9):>12.1f} {r['rss_one_mib']:>8.0f} {r['rss_tree_mib']:>8.0f} "
            f"{r.get('clips', '-')!s:>6} {ratio:>9}  {what[name]}"
        )
    print()
    print(
        "in fr/s: input frames / wall s. vid h/core-h: hours of input video per CPU-hour (user+sys of the "
        "process tree). RSS: peak of the largest process; tree: peak sum over the tree (0.1 s samples)."
    )
    defi = results["defi curate"]
    if "error" not in defi:
        print(
            f"defi: {defi['clips']} clips kept; rejected by reason {defi['reasons']}; "
            f"{defi['at_segment']} of its cuts fall on analysis segment boundaries (k x segment_s, where a "
            f"longer shot is split), counted in the comparison below"
        )
    dj = results["Data-Juicer"]
    if "error" not in dj:
        print(
            f"Data-Juicer: {dj['clips_split']} scene clips written (full res), {dj['clips']} in samples its filters "
            f"kept (it keeps/drops whole input videos, any_or_all=any)"
        )
    print(f"truth: {sum(v['short_shots'] for v in inputs)} shots < 1 s (duration filter), {len(inputs)} static shots (motion filter)")
    print("\ncut positions (a cut = first frame of a new shot):")
    for name in ["defi curate", "PySceneDetect", "Data-Juicer"]:
        r = results[name]
        if "cuts" not in r:
            continue
        print(agreement(name, r["cuts"], "truth", truth, paths))
        if name != "defi curate" and "cuts" in defi:
            print(agreement(name, r["cuts"], "defi", defi["cuts"], paths))
    print(f"\ntotal bench time {time.time() - t_all:.0f} s; logs in {work}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"inputs": inputs, "results": {k: {kk: vv for kk, vv in v.items() if kk != "kept"} for k, v in results.items()}},
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
