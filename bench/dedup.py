"""Near-duplicate detection across a corpus (`defi dedup`, curate/signature.py): precision and
recall on a generated set, and the faiss search at scale.

Quality (default): ``--sources N`` distinct sources, fixed by ``--seed``: FFmpeg lavfi patterns
(mandelbrot, life, a geq plasma), pans and zooms over smooth textures, and drifting shapes,
each with random parameters, 11 s at 24 fps, 128x96. Per source: the original clip (0-3 s), a
copy under each transform and under pairs of them, and a hard negative (the same source 8-11 s,
5 s after the original ends). Other sources of the same pattern are the other negatives.
Reported per transform: recall (copies grouped with their original) and precision (of the
predicted pairs that involve such a copy, the share that are true); overall: over all pairs of
the set. Beside it, curate's within-video dedup (curate/dedup.py: the middle keyframe's 64-bit
pHash within 6 bits) run over the same set.

Scale (``--scale N [N ...]``): faiss search over N synthetic 512-d unit embeddings (CLIP-sized)
with 1% planted near-duplicates (cosine ~0.98): PCA to 64-d, IVF-flat with 2 sqrt(N) cells, 4
cells probed, 8 neighbours per vector at projected similarity >= 0.8, every hit checked at full
width; each size in its own process: wall time, peak RSS and recall of the planted pairs at
cosine >= 0.95.

Run: .venv/bin/python bench/dedup.py --sources 200 [--workers 2]
     .venv/bin/python bench/dedup.py --scale 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from multiprocessing import get_context

import av
import cv2
import numpy as np

FPS = 24
W, H = 128, 96
SOURCE_S = 11.0
CLIP = (0.0, 3.0)  # seconds of the source in the original clip
NEGATIVE = (8.0, 11.0)  # the hard negative: 5 s after the original ends
# lavfi's cellauto and gradients are left out: their look is stationary (a moment 5 s later is a
# true visual duplicate), so they cannot give hard negatives; sierpinski draws the same fractal
# whatever its seed, so two of its sources are true duplicates
PATTERNS = ("pan", "zoom", "mandelbrot", "life", "shapes", "plasma")


# ----------------------------------------------------------------------------------------------
# the generated set
# ----------------------------------------------------------------------------------------------
def _lavfi(graph: str, n: int, repeat: int = 1, scale: int = 1) -> list[np.ndarray]:
    """``n`` frames of a lavfi source, each repeated ``repeat`` times (slows a pattern that changes
    every frame) and enlarged ``scale`` times (nearest: coarse cells, like objects, not pixels)."""
    out = []
    with av.open(graph, format="lavfi") as c:
        for f in c.decode(video=0):
            img = f.to_ndarray(format="rgb24")
            if scale > 1:
                img = cv2.resize(img, (W, H), interpolation=cv2.INTER_NEAREST)
            out += [img] * repeat
            if len(out) >= n:
                break
    return out[:n]


def _smooth_pan(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    speed = rng.uniform(0.4, 1.5)  # px/frame: 10-36 px/s, a slow handheld pan
    cell = int(rng.integers(8, 24))
    big_w = W + int(n * speed) + 2
    coarse = rng.integers(0, 255, (H // cell + 2, big_w // cell + 2, 3)).astype(np.float32)
    img = cv2.resize(coarse, (big_w + 2 * cell, H + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell : cell + H, cell : cell + big_w]
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return [np.ascontiguousarray(img[:, int(i * speed) : int(i * speed) + W]) for i in range(n)]


def _mandel_edge(rng: np.random.Generator) -> tuple[float, float]:
    """A random point near the Mandelbrot set's edge (escapes after 40-400 iterations): every
    source zooms into its own place, so two sources do not show the same picture."""
    while True:
        c = complex(rng.uniform(-2.0, 0.5), rng.uniform(-1.2, 1.2))
        z, it = 0j, 0
        while it < 399 and abs(z) <= 2:
            z = z * z + c
            it += 1
        if 40 <= it - 1 < 399 and abs(z) > 2:
            return c.real, c.imag


def _smooth_zoom(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A slow dolly into a smooth texture (1.5-4x over the source), centre drifting."""
    cell = int(rng.integers(6, 16))
    big = cv2.resize(
        rng.integers(0, 255, (H // cell * 4 + 2, W // cell * 4 + 2, 3)).astype(np.float32), (W * 4, H * 4), interpolation=cv2.INTER_CUBIC
    )
    big = np.clip(big, 0, 255).astype(np.uint8)
    end = rng.uniform(1.5, 4.0)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    out = []
    for i in range(n):
        z = end ** (i / n)  # zoom factor: the view shrinks from 4x the frame to 4/z
        vw, vh = W * 4 / z, H * 4 / z
        x0 = np.clip(cx * W * 4 - vw / 2, 0, W * 4 - vw)
        y0 = np.clip(cy * H * 4 - vh / 2, 0, H * 4 - vh)
        view = big[int(y0) : int(y0 + vh), int(x0) : int(x0 + vw)]
        out.append(cv2.resize(view, (W, H), interpolation=cv2.INTER_AREA))
    return out


def _shapes(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A few coloured discs and boxes drifting over a smooth background the camera pans across
    (objects in a scene)."""
    back = _smooth_pan(n, rng)
    k = int(rng.integers(3, 7))
    pos, vel = rng.uniform(0, 1, (k, 2)) * [W, H], rng.normal(0, 0.6, (k, 2))
    size, colour, disc = rng.integers(6, 24, k), rng.integers(0, 255, (k, 3)), rng.random(k) < 0.5
    out = []
    for i in range(n):
        img = back[i].copy()
        for j in range(k):
            x, y = int(pos[j, 0]) % W, int(pos[j, 1]) % H
            c = tuple(int(v) for v in colour[j])
            if disc[j]:
                cv2.circle(img, (x, y), int(size[j]), c, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(img, (x, y), (x + int(size[j]), y + int(size[j]) * 2 // 3), c, -1)
        pos += vel
        out.append(img)
    return out


def make_source(pattern: str, seed: int) -> list[np.ndarray]:
    """SOURCE_S seconds of ``pattern`` with parameters drawn from ``seed``: uint8 RGB [H, W, 3]."""
    rng = np.random.default_rng(seed)
    n = int(SOURCE_S * FPS)
    s = f"size={W}x{H}"
    if pattern == "pan":
        return _smooth_pan(n, rng)
    if pattern == "zoom":
        return _smooth_zoom(n, rng)
    if pattern == "mandelbrot":
        x, y = _mandel_edge(rng)
        scale = rng.uniform(0.02, 0.3)
        return _lavfi(f"mandelbrot={s}:rate={FPS}:start_x={x}:start_y={y}:start_scale={scale}:end_scale={scale / 20}", n)
    small = f"size={W // 4}x{H // 4}"
    if pattern == "life":
        g = f"life={small}:rate=3:seed={seed % 2**31}:ratio={rng.uniform(0.1, 0.5):.2f}:mold={int(rng.integers(0, 40))}"
        return _lavfi(g + ":life_color=#ffffff:death_color=#202020:mold_color=#a06020", n, repeat=8, scale=4)
    if pattern == "cellauto":
        rule = int(rng.choice([18, 30, 45, 73, 90, 105, 110, 150]))
        return _lavfi(f"cellauto={small}:rate=8:seed={seed % 2**31}:rule={rule}:scroll=1", n, repeat=3, scale=4)
    if pattern == "shapes":
        return _shapes(n, rng)
    if pattern == "gradients":
        g = f"gradients={s}:rate={FPS}:seed={seed % 2**31}:speed={rng.uniform(0.02, 0.06):.4f}:nb_colors={int(rng.integers(3, 8))}"
        return _lavfi(g + f":type={rng.choice(['linear', 'radial', 'circular', 'spiral'])}", n)
    if pattern == "plasma":
        a, b, c, d = np.exp(rng.uniform(np.log(6), np.log(60), 4))
        u, v = rng.uniform(-1, 1, 2)
        p, q, r = rng.uniform(0, 6.28, 3)
        th = rng.uniform(0, 3.14)
        x_, y_ = f"(X*{np.cos(th):.3f}+Y*{np.sin(th):.3f})", f"(Y*{np.cos(th):.3f}-X*{np.sin(th):.3f})"
        lum = (f"128+60*sin({x_}/{a:.2f}+T*{u:.2f}+{p:.2f})+60*cos({y_}/{b:.2f}-T*{v:.2f}+{q:.2f})"
               f"*sin(({x_}+{y_})/{c:.2f}+T*0.3+{r:.2f})*cos({x_}/{d:.2f})")  # fmt: skip
        return _lavfi(f"nullsrc=s={W}x{H}:r={FPS},geq=lum='{lum}':cb='128+40*sin(X/{d:.2f})':cr='128+40*cos(Y/{a:.2f})'", n)
    raise ValueError(pattern)


def _span(frames, t0, t1):
    return frames[int(round(t0 * FPS)) : int(round(t1 * FPS))]


def t_reencode(f):
    return f, FPS, {"crf": "38"}


def t_resize(f):
    return [cv2.resize(x, (W // 2, H // 2), interpolation=cv2.INTER_AREA) for x in f], FPS, {}


def t_crop(f):
    h, w = f[0].shape[:2]
    dy, dx = int(h * 0.05), int(w * 0.05)  # 5% off every side, scaled back
    return [cv2.resize(x[dy : h - dy, dx : w - dx], (w, h), interpolation=cv2.INTER_LINEAR) for x in f], FPS, {}


def t_trim(f):
    return f[int(0.7 * FPS) : len(f) - int(0.5 * FPS)], FPS, {}


def t_fps(f):
    idx = np.round(np.arange(0, len(f), FPS / 15)).astype(int)  # 24 -> 15 fps by timestamp
    return [f[i] for i in idx if i < len(f)], 15, {}


def t_letterbox(f):
    inner_h = int(W * 9 / 16) // 2 * 2  # a 16:9 picture in a 4:3 frame
    pad = (H - inner_h) // 2
    return (
        [np.pad(cv2.resize(x, (W, inner_h), interpolation=cv2.INTER_AREA), ((pad, H - inner_h - pad), (0, 0), (0, 0))) for x in f],
        FPS,
        {},
    )


def t_text(f, seed: int = 0):
    """A caption and a channel tag, their words drawn from ``seed`` (the source)."""
    rng = np.random.default_rng(seed)
    word = "".join(rng.choice(list("ABCDEFGHKLMNPRSTUVWXYZ"), 5))
    tag = "@" + "".join(rng.choice(list("abcdefghkmnprstuvwxyz"), 6))
    out = []
    for i, x in enumerate(f):
        x = x.copy()
        cv2.putText(x, f"{word} {i // FPS:02d}s", (4, H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(x, tag, (W - 64, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
        out.append(x)
    return out, FPS, {}


SINGLE = {
    "reencode": t_reencode,
    "resize": t_resize,
    "crop": t_crop,
    "trim": t_trim,
    "fps": t_fps,
    "letterbox": t_letterbox,
    "text": t_text,
}
PAIRS = [("resize", "crop"), ("trim", "fps"), ("letterbox", "text"), ("reencode", "resize"), ("crop", "text"), ("trim", "letterbox")]


def transform(name: str, frames, seed: int = 0):
    opts: dict = {}
    fps = FPS
    for part in name.split("+"):
        frames, f2, o = t_text(frames, seed) if part == "text" else SINGLE[part](frames)
        fps = f2 if f2 != FPS else fps
        opts.update(o)
    return frames, fps, opts


def write_mp4(path: str, frames, fps: float, crf: str = "20") -> None:
    h, w = frames[0].shape[:2]
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": crf}
        for x in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(x[: h - h % 2, : w - w % 2]), format="rgb24")
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def make_clips(job) -> list[dict]:
    """All clips of one source: (name, path, source, kind, width, height, duration)."""
    i, pattern, seed, folder = job
    frames = make_source(pattern, seed)
    out = []

    def put(kind, fr, fps, opts):
        path = os.path.join(folder, f"s{i:04d}-{kind}.mp4")
        write_mp4(path, fr, fps, opts.get("crf", "20"))
        out.append({"key": f"s{i:04d}-{kind}", "path": path, "source": i, "pattern": pattern, "kind": kind,
                    "width": fr[0].shape[1], "height": fr[0].shape[0], "duration_s": len(fr) / fps})  # fmt: skip

    clip = _span(frames, *CLIP)
    put("original", clip, FPS, {})
    for name in list(SINGLE) + ["+".join(p) for p in PAIRS]:
        put(name, *transform(name, clip, seed))
    put("negative", _span(frames, *NEGATIVE), FPS, {})
    return out


# ----------------------------------------------------------------------------------------------
# the two methods
# ----------------------------------------------------------------------------------------------
def _features(clip: dict) -> dict:
    from defi.curate.decode import decode_all
    from defi.curate.dedup import phash
    from defi.curate.signature import SignatureConfig, SignatureError, mp4_signature

    out = dict(clip)
    try:
        out["signature"] = mp4_signature(clip["path"], SignatureConfig())[0]
    except SignatureError as e:
        out["signature"], out["sig_error"] = None, e.reason
    frames = decode_all(clip["path"], size=128)  # curate's analysis size
    out["phash"] = phash(frames.frames[len(frames) // 2])
    return out


def _groups_to_pairs(keys, group_of) -> set[tuple[str, str]]:
    members = defaultdict(list)
    for k in keys:
        members[group_of[k]].append(k)
    return {tuple(sorted(p)) for ms in members.values() for p in itertools.combinations(ms, 2)}


def score(clips: list[dict], predicted: set[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Precision/recall per copy kind and overall. True pairs: clips of one source, the hard
    negative excepted."""
    by_key = {c["key"]: c for c in clips}
    truth = {tuple(sorted((a["key"], b["key"]))) for a, b in itertools.combinations(clips, 2)
             if a["source"] == b["source"] and "negative" not in (a["kind"], b["kind"])}  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    kinds = sorted({c["kind"] for c in clips} - {"original"}, key=lambda k: (k == "negative", "+" in k, k))
    for kind in kinds:
        pos = [(f"s{c['source']:04d}-original", c["key"]) for c in clips if c["kind"] == kind]
        pos = [tuple(sorted(p)) for p in pos]
        inv = [p for p in predicted if any(by_key[x]["kind"] == kind for x in p)]
        tp = sum(p in truth for p in inv)
        if kind == "negative":  # a negative has no true pair: report how often it was (wrongly) matched
            rows[kind] = {"n": len(pos), "recall": float("nan"), "precision": float("nan"),
                          "false_match": sum(p in predicted for p in pos) / max(1, len(pos))}  # fmt: skip
            continue
        rows[kind] = {"n": len(pos), "recall": sum(p in predicted for p in pos) / max(1, len(pos)),
                      "precision": tp / len(inv) if inv else float("nan")}  # fmt: skip
    tp = len(predicted & truth)
    rows["overall"] = {"n": len(truth), "recall": tp / max(1, len(truth)), "precision": tp / len(predicted) if predicted else float("nan")}
    return rows


def run_quality(n_sources: int, seed: int, workers: int, keep: str | None) -> None:
    from defi.curate.dedup import DedupItem, dedup
    from defi.curate.signature import ClipInfo, group_clips

    rng = np.random.default_rng(seed)
    folder = keep or tempfile.mkdtemp(prefix="defi-bench-dedup-")
    os.makedirs(folder, exist_ok=True)
    jobs = [(i, PATTERNS[i % len(PATTERNS)], int(rng.integers(0, 2**31)), folder) for i in range(n_sources)]
    t0 = time.time()
    ctx = get_context("fork")
    with ctx.Pool(workers) as pool:
        clips = [c for cs in pool.map(make_clips, jobs) for c in cs]
        t_gen = time.time() - t0
        t0 = time.time()
        feats = pool.map(_features, clips, chunksize=8)
    t_feat = time.time() - t0
    keys = [c["key"] for c in feats]
    t0 = time.time()
    g = group_clips([ClipInfo(c["key"], c["signature"], None, c["width"], c["height"], c["duration_s"]) for c in feats])
    t_group = time.time() - t0
    ours = _groups_to_pairs(keys, dict(zip(g.keys, g.dup_group, strict=True)))
    res = dedup([DedupItem(c["key"], [c["phash"]]) for c in feats], max_hamming=6)
    base = _groups_to_pairs(keys, {r.key: r.dup_group for r in res})
    a, b = score(feats, ours), score(feats, base)
    errors = sum(1 for c in feats if c.get("sig_error"))
    print(f"## bench/dedup.py --sources {n_sources} --seed {seed}  ({time.strftime('%Y-%m-%d')})")
    print(f"{len(feats)} clips from {n_sources} sources ({', '.join(PATTERNS)}); {errors} without signature;")
    print(f"generate {t_gen:.0f} s, signatures + pHash {t_feat:.0f} s on {workers} workers, group {t_group:.2f} s "
          f"({g.candidates} candidate pairs)\n")  # fmt: skip
    print("| copy | n | recall (defi dedup) | precision (defi dedup) | recall (curate pHash) | precision (curate pHash) |")
    print("|---|---|---|---|---|---|")

    def f(x):
        return "-" if x != x else f"{x:.3f}"

    for kind in a:
        if kind == "negative":
            print(
                f"| hard negative (5 s later), matched | {a[kind]['n']} | {f(a[kind]['false_match'])} | | {f(b[kind]['false_match'])} | |"
            )
            continue
        print(
            f"| {kind} | {a[kind]['n']} | {f(a[kind]['recall'])} | {f(a[kind]['precision'])} | {f(b[kind]['recall'])} | {f(b[kind]['precision'])} |"
        )
    per_pattern = defaultdict(lambda: [0, 0])
    orig = {c["source"]: c["key"] for c in feats if c["kind"] == "original"}
    for c in feats:
        if c["kind"] not in ("original", "negative"):
            per_pattern[c["pattern"]][0] += tuple(sorted((orig[c["source"]], c["key"]))) in ours
            per_pattern[c["pattern"]][1] += 1
    print("\nrecall by pattern (defi dedup): " + ", ".join(f"{p} {h / n:.3f}" for p, (h, n) in sorted(per_pattern.items())))


# ----------------------------------------------------------------------------------------------
# scale
# ----------------------------------------------------------------------------------------------
PCA, SEARCH_MIN = 64, 0.8  # search in 64 principal components, hits checked at full width


def scale_one(n: int, seed: int = 0, dim: int = 512) -> dict:
    """Search N synthetic embeddings (1% planted near-duplicates) with the dedup search."""
    import faiss

    from defi.curate.signature import build_index, near_pairs

    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in blocks: no float64 copy of the whole set
        blk = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
        x[s : s + len(blk)] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    m = n // 100
    src = rng.choice(n - m, m, replace=False)
    noise = rng.standard_normal((m, dim), dtype=np.float32) * (0.2 / np.sqrt(dim))  # cosine ~0.98
    x[n - m :] = x[src] + noise
    x[n - m :] /= np.linalg.norm(x[n - m :], axis=1, keepdims=True)
    planted = {(int(a), int(b)) for a, b in zip(src, range(n - m, n), strict=True)}
    t0 = time.time()
    nlist, nprobe = max(1, int(2 * np.sqrt(n))), 4
    index = build_index(x, nlist=nlist, nprobe=nprobe, pca=PCA)
    t_build = time.time() - t0
    pairs = near_pairs(x, np.arange(n, dtype=np.int64), 0.95, k=8, index=index, search_min=SEARCH_MIN)
    t = time.time() - t0
    found = {(int(a), int(b)) for a, b in pairs}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    return {"n": n, "nlist": nlist, "nprobe": nprobe, "threads": faiss.omp_get_max_threads(), "build_s": t_build, "total_s": t,
            "peak_rss_gib": rss, "recall": len(planted & found) / len(planted), "extra_pairs": len(found - planted)}  # fmt: skip


def run_scale(sizes: list[int]) -> None:
    print(f"## bench/dedup.py --scale {' '.join(map(str, sizes))}  ({time.strftime('%Y-%m-%d')})")
    print(
        "| embeddings (512-d) | IVF cells (PCA 64) | nprobe | threads | train+add s | total s | peak RSS GiB | recall of planted pairs | other pairs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--scale-one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['n']:,} | {r['nlist']} | {r['nprobe']} | {r['threads']} | {r['build_s']:.1f} | {r['total_s']:.1f} | "
              f"{r['peak_rss_gib']:.2f} | {r['recall']:.4f} | {r['extra_pairs']} |", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=200, help="distinct sources in the generated set")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated set")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating and signing clips")
    p.add_argument("--keep", help="write the generated clips to this folder (default: a temp folder)")
    p.add_argument("--scale", type=int, nargs="+", help="instead: time the search over these numbers of synthetic embeddings")
    p.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.scale_one:
        print(json.dumps(scale_one(a.scale_one)))
    elif a.scale:
        run_scale(a.scale)
    else:
        run_quality(a.sources, a.seed, a.workers, a.keep)


if __name__ == "__main__":
    main()
