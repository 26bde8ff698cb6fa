"""Captioning throughput: clips/s of `defi label captions`' model step on CPU, at the tiny test
shape and at the real ``coca_ViT-B-32`` shape (random weights: throughput does not depend on them;
nothing is downloaded).

    .venv/bin/python bench/caption.py                    # both shapes, batch 1 and 16
    .venv/bin/python bench/caption.py --shapes tiny --batches 1,4,16 --clips 32

Per clip the labeler captions one frame (the clip's middle one): the open_clip eval transform of a
``--frame-px`` square frame (PIL bicubic resize + centre crop), the image tower once, then greedy
decoding of up to ``--max-len`` tokens (the text tower and the multimodal decoder re-run over the
sequence each step), then BPE decoding: ``labelers.captions.preprocess_images``,
``greedy_tokens`` and ``decode_tokens``, what ``CaptionLabeler.caption_images`` runs. Random
weights rarely emit end-of-text, so every caption runs to ``--max-len`` tokens: the rate is the
worst case for that length (a trained model stops at the caption's end, ~10-15 tokens for COCO-style
captions). Decoding the frame from the shard (one H.264 frame) is not counted.

Prints a table (shape, parameters, batch, clips, seconds, clips/s, tokens per caption) and writes
WORK/results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "defi_caption_bench"), help="folder for results.json")
    p.add_argument("--shapes", default="tiny,coca_ViT-B-32", help="comma list: tiny and/or open_clip CoCa names (default both)")
    p.add_argument("--batches", default="1,16", help="comma list of images per forward pass (default 1,16)")
    p.add_argument("--clips", type=int, default=16, help="clips captioned per (shape, batch) (default 16)")
    p.add_argument("--max-len", type=int, default=20, help="tokens per caption incl. the start token (CaptionConfig.max_len, default 20)")
    p.add_argument("--frame-px", type=int, default=256, help="side of the decoded frames, px (default 256)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: at these sizes a step is dispatch-bound, and a second thread only spins on a busy box)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    return p.parse_args(argv)


def model_cfg(shape: str) -> dict:
    from defi.labelers.captions import tiny_coca_config

    if shape == "tiny":
        return tiny_coca_config()
    import open_clip

    cfg = open_clip.get_model_config(shape)
    if not cfg or "multimodal_cfg" not in cfg:
        raise SystemExit(f"{shape}: not an open_clip CoCa config")
    return cfg


def measure(shape: str, batch: int, a: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from defi.labelers.captions import build_captioner, decode_tokens, greedy_tokens, preprocess_images

    cfg = model_cfg(shape)
    net = build_captioner(cfg, seed=0).to(a.device)
    size = net.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (a.frame_px, a.frame_px, 3), dtype=np.uint8) for _ in range(a.clips)]
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def run(images) -> list[int]:
        lengths = []
        for i in range(0, len(images), batch):
            x = preprocess_images(images[i : i + batch], size, mean, std).to(a.device)
            tokens = greedy_tokens(net, x, a.max_len, 5)
            [decode_tokens(t) for t in tokens]
            lengths += [len(t) for t in tokens]
        return lengths

    run(frames[: min(batch, 2)])  # warm-up: first-call allocations, BPE tables
    if a.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    lengths = run(frames)
    if a.device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = float(np.mean(lengths))  # generated per caption, start token excluded
    return {
        "shape": shape,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "image_px": size[0],
        "batch": batch,
        "clips": len(frames),
        "seconds": secs,
        "clips_per_s": len(frames) / secs,
        "tokens_per_caption": tokens,
    }


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    for shape in [s for s in a.shapes.split(",") if s]:
        for batch in [int(b) for b in a.batches.split(",") if b]:
            r = measure(shape, batch, a)
            rows.append(r)
            print(f"  {shape} batch {batch}: {r['clips_per_s']:.2f} clips/s", file=sys.stderr)
    head = f"{'shape':<16} {'params':>8} {'px':>4} {'batch':>5} {'clips':>5} {'seconds':>8} {'clips/s':>8} {'tokens':>6}"
    print(f"captioning on {a.device}, {a.threads} torch threads, frames {a.frame_px} px, up to {a.max_len} tokens")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['shape']:<16} {r['params_m']:>7.1f}M {r['image_px']:>4} {r['batch']:>5} {r['clips']:>5} "
            f"{r['seconds']:>8.2f} {r['clips_per_s']:>8.2f} {r['tokens_per_caption']:>6.1f}"
        )
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps({"date": dt.date.today().isoformat(), "args": vars(a), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
