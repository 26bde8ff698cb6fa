"""Is the labeler the bottleneck? `defi label` throughput beside the training step rate of the same GIDM.

    .venv/bin/python bench/label.py --corpus C --gidm RUN      # a curated corpus and a GIDM run
    .venv/bin/python bench/label.py                            # makes both (small; ~5 min on 2 cores)

1. A corpus: ``--corpus`` (copied into WORK for each labeling run, so the original gets no labels),
   else a small one made by ``bench/gidm_quality.py``'s ``make_corpus`` (Meta-World, 64 px, 20 fps).
2. A GIDM: ``--gidm`` (a ``defi train gidm`` run or checkpoint), else ``defi train gidm --model
   keypoint`` for ``--train-steps`` steps (throughput does not depend on how well it learned).
3. ``run_label`` (the public entry of ``defi label latent-actions``) labels every kept clip of a
   fresh copy of the corpus, ``--repeats`` times; its run record gives clips/s and pair-steps/s
   (one step = one latent action of a pair (o_t, o_t+k); Ray's start-up is reported apart).
4. The training step rate of the same model and input size: forward + backward + AdamW on batches
   of ``--batch-size`` pairs of frames, after warm-up.

Reading: a training step consumes ``batch`` pairs; labeling produces ``pair-steps/s``. Their ratio
(label pairs/s over train pairs/s) above 1 means labeling the pairs a run trains on takes less time
than training on them once. Results print as a table and go to WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "defi_label_bench"), help="work folder")
    p.add_argument("--corpus", help="curated corpus to label (copied; default: make a small Meta-World one)")
    p.add_argument("--gidm", help="GIDM run folder or checkpoint (default: train a keypoint GIDM briefly)")
    p.add_argument("--model", default="keypoint", help="preset of the GIDM trained when --gidm is not given")
    p.add_argument("--train-steps", type=int, default=20, help="steps of that GIDM (default 20)")
    p.add_argument("--select", help="SQL of the clips to label (default: every kept clip)")
    p.add_argument("--repeats", type=int, default=2, help="labeling runs, each on a fresh copy (default 2)")
    p.add_argument("--label-batch", type=int, default=64, help="LabelConfig.batch_size: transitions per model batch")
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray of labeling")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training-step timing (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per training step (default 32)")
    p.add_argument("--step-warmup", type=int, default=3)
    p.add_argument("--step-iters", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu | cuda (training-step timing and labeling)")
    a = p.parse_args(argv)
    return a


def _corpus(a: argparse.Namespace, work: Path) -> str:
    if a.corpus:
        return a.corpus
    from gidm_quality import QUICK_EVAL, QUICK_TRAIN, make_corpus
    from gidm_quality import parse as gq_parse

    q = gq_parse(["--quick", "--work", str(work / "data")])
    return make_corpus(work / "data", q, [("train_ds", QUICK_TRAIN, 4, True, 0), ("eval_ds", QUICK_EVAL, 2, False, 1)])


def _gidm(a: argparse.Namespace, work: Path, root: str) -> str:
    if a.gidm:
        return a.gidm
    from defi.pipelines.train import main as train_main

    run = work / "gidm"
    args = ["gidm", "--root", root, "--out", str(run), "--model", a.model, "--steps", str(a.train_steps), "--size", "64"]
    args += ["--train.batch_size", str(a.batch_size), "--train.ckpt_every", str(a.train_steps), "--no-progress"]
    if train_main(args):
        raise SystemExit("defi train gidm failed")
    return str(run)


def label_runs(a: argparse.Namespace, work: Path, root: str, ckpt: str) -> list[dict]:
    from defi.pipelines.ray_adapter import RayConfig
    from defi.pipelines.label import LabelConfig, run_label

    out = []
    for i in range(a.repeats):
        copy = work / f"label_copy_{i}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("labels", "index.duckdb*"))
        cfg = LabelConfig(batch_size=a.label_batch, device=a.device, ray=RayConfig(num_cpus=a.cpus))
        t = time.time()
        rec = run_label(str(copy), ckpt, select=a.select, cfg=cfg, progress=False)
        wall = time.time() - t
        c = rec["counts"]
        label_s = rec.get("label_s") or wall
        row = {
            "status": rec["status"],
            "clips": c.get("labeled", 0),
            "pair_steps": c.get("steps", 0),
            "errors": c.get("errors", 0),
            "wall_s": wall,
            "label_s": label_s,
            "startup_s": rec.get("ray_start_s") or 0.0,
            "clips_per_s": c.get("labeled", 0) / label_s if label_s else None,
            "pair_steps_per_s": c.get("steps", 0) / label_s if label_s else None,
            "clips_per_s_wall": c.get("labeled", 0) / wall,
            "pair_steps_per_s_wall": c.get("steps", 0) / wall,
        }
        print(f"[label {i}] " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        out.append(row)
        shutil.rmtree(copy, ignore_errors=True)
    return out


def train_step_rate(a: argparse.Namespace, ckpt: str) -> dict:
    """Forward + backward + AdamW steps per second of the checkpoint's model on random frames."""
    import torch

    from defi.training.checkpoint import load_checkpoint
    from defi.training.recipes.gidm import last_checkpoint

    torch.set_num_threads(a.threads)
    path = Path(ckpt)
    model, cfg, _ = load_checkpoint(last_checkpoint(path) if (path / "checkpoints").exists() else path)
    device = torch.device(a.device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    shape = (a.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    o, n = torch.rand(shape, generator=g).to(device), torch.rand(shape, generator=g).to(device)
    times = []
    for i in range(a.step_warmup + a.step_iters):
        t = time.perf_counter()
        out = model(o, n)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= a.step_warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    # the labeling path alone (encode, no decoder, no backward) at the same batch, for reference
    t = time.perf_counter()
    for _ in range(a.step_iters):
        model.encode(o, n)
    enc = (time.perf_counter() - t) / a.step_iters
    return {
        "model": f"{cfg.bottleneck}, keypoints {cfg.keypoints}, patch {cfg.patch_size}, {cfg.image_size} px",
        "threads": a.threads,
        "batch": a.batch_size,
        "step_s_median": med,
        "steps_per_s": 1 / med,
        "pairs_per_s": a.batch_size / med,
        "encode_pairs_per_s": a.batch_size / enc,
    }


def main(argv=None) -> dict:
    import torch

    a = parse(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    root = _corpus(a, work)
    ckpt = _gidm(a, work, root)
    labels = label_runs(a, work, root, ckpt)
    train = train_step_rate(a, ckpt)
    best = max(labels, key=lambda r: r["pair_steps_per_s"] or 0)
    res = {
        "corpus": root,
        "gidm": ckpt,
        "device": a.device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "label": labels,
        "train": train,
        "label_over_train_pairs": (best["pair_steps_per_s"] or 0) / train["pairs_per_s"],
    }
    (work / "results.json").write_text(json.dumps(res, indent=2))
    print(
        f"\nlabeling ({a.device}, Ray with {a.cpus} CPUs): {best['clips']} clips, {best['pair_steps']} pair-steps; "
        f"best of {len(labels)}: {best['clips_per_s']:.2f} clips/s, {best['pair_steps_per_s']:.1f} pair-steps/s "
        f"(after {best['startup_s']:.1f} s of start-up; with it {best['pair_steps_per_s_wall']:.1f})"
    )
    print(
        f"training ({train['model']}, {a.threads} threads, batch {train['batch']}): {train['steps_per_s']:.2f} steps/s = "
        f"{train['pairs_per_s']:.1f} pairs/s; encode alone {train['encode_pairs_per_s']:.1f} pairs/s"
    )
    print(
        f"label pairs/s over train pairs/s: {res['label_over_train_pairs']:.1f} "
        f"({'labeling is not' if res['label_over_train_pairs'] > 1 else 'labeling IS'} the slower of the two)"
    )
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
