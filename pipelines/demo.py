"""``defi demo``: the main job on an embedded default.

Makes a small, fixed set of inputs (synthetic videos with known shots, a few bad files and, when
the ``[sim]`` extra renders, two Meta-World episodes with actions), curates them into a corpus
with `defi curate`'s pipeline, then prints the run summary, `defi info` and two example queries.
Everything is generated locally; nothing is downloaded.
"""

from __future__ import annotations

import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np


def _write(path: Path, frames, fps: int) -> None:
    import av

    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "20"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w]


def _shots(lengths, h, w, seed):
    """Shots of different textures, each with an object moving across: cuts at known frames."""
    for s, n in enumerate(lengths):
        img = _texture(h, w, seed + 31 * s)
        for i in range(n):
            f = img.copy()
            x = 4 + i * 3 % (w - 40)
            f[h // 3:h // 3 + 32, x:x + 32] = (250, 220, 30)
            yield f


def _pan(n, h, w, seed):
    big = _texture(h, w + 3 * n, seed)
    for i in range(n):
        yield big[:, 3 * i:3 * i + w].copy()


def make_inputs(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "kitchen_3shots.mp4", _shots([72, 96, 60], 180, 320, 1), 24)
    _write(folder / "workshop_2shots.mp4", _shots([120, 90], 240, 320, 2), 30)
    _write(folder / "pan_over_still.mp4", _pan(96, 180, 320, 3), 24)
    _write(folder / "static.mp4", (np.full((180, 320, 3), 90, np.uint8) for _ in range(72)), 24)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "not_a_video.mp4").write_text("hello\n" * 100)
    inputs = [str(folder)]
    try:
        from defi.training.sim import generate

        robot = folder / "robot_reach"  # a LeRobot v3 folder inside the inputs: curate finds it
        if not robot.exists():
            generate(["reach-v3"], 2, robot, size=128, max_steps=80, seed=0, progress=False)
    except Exception as e:  # the [sim] extra or its GL libraries are missing: curate web video only
        print(f"(no robot episodes in the demo: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", file=sys.stderr)
    return inputs


def run(args) -> int:
    from defi.pipelines.cli import corpus_summary, format_table
    from defi.pipelines.config import from_dict
    from defi.pipelines.curate import run_curate, summary_text
    from defi.pipelines.video import CurateConfig
    from defi.schemas.corpus import Corpus

    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    inputs = make_inputs(root.parent / (root.name + "_inputs"))
    cfg = from_dict(CurateConfig, {
        "windows": {"clip_len_s": 2.0, "stride_s": 2.0, "min_clip_s": 1.0, "max_clip_s": 3.0},
        "encode": {"fps": 10, "short_side": 128},
        "black": {"max_black_frac": 0.5},
        "motion": {"min_frame_diff": 0.1},
        "camera": {"max_camera_motion": 1.0, "min_local_motion": 0.5},
    })
    print(f"curating {', '.join(inputs)} -> {root}", file=sys.stderr)
    rec = run_curate(inputs, str(root), cfg)
    print(summary_text(rec))
    corpus = Corpus.open(str(root))
    corpus.build_index()
    s = corpus_summary(corpus)
    print(f"\ncorpus: {s['videos']} videos ({s['hours_in'] * 3600:.1f} s in), {s['clips_kept']} clips kept "
          f"({s['hours_out'] * 3600:.1f} s), {s['shards']} shards")
    q1 = ("SELECT reject_reason, count(*) AS clips, round(avg(motion_mean), 3) AS motion, "
          "round(avg(camera_motion), 3) AS camera FROM clips GROUP BY 1 ORDER BY 2 DESC")
    print(f"\n$ defi query \"{q1}\" --root {root}")
    print(format_table(corpus.query(q1)))
    q2 = ("SELECT regexp_extract(uri, '[^/]+$') AS file, count(*) AS clips, bool_or(has_actions) AS actions "
          "FROM clips WHERE kept GROUP BY 1 ORDER BY 1")
    print(f"\n$ defi query \"{q2}\" --root {root}")
    print(format_table(corpus.query(q2)))
    print(f"\nopen the index with DuckDB: duckdb {root / 'index.duckdb'}")
    return 0 if rec["status"] == "done" else 1
