"""Does the GFDM predict the future better than copying o_t? Meta-World, held-out episodes and tasks.

    nice -n 10 .venv/bin/python bench/gfdm_quality.py                 # both objectives: the table in docs/gfdm-quality-2026-11-26.md
    .venv/bin/python bench/gfdm_quality.py --objectives regression --steps 300 --episodes 4   # smoke run

1. ``defi.training.sim.generate``: scripted-expert episodes with Gaussian action noise: the training
   tasks *action-free* (video + instruction only; what ``defi train gfdm`` trains on), more episodes
   of the same tasks with actions and proprioception (held-out episodes), and held-out tasks with
   actions and proprioception.
2. ``run_curate`` imports the three datasets into one corpus (real shards + index).
3. ``defi train gfdm --model tiny`` (``pipelines.train.main``) on the action-free clips of the
   training tasks (SQL on language and has_actions), once per objective (``--objectives``).
4. On every ``stride``-th pair (o_t, o_t+k) of the held-out clips (``gidm.latent_probe.probe_pairs``):
   PSNR of the predicted o_t+k over the whole frame and over the changed pixels only (|o_t+k - o_t|
   above ``--threshold`` in any channel), beside copying o_t and the same model with the null
   instruction (no language); the end-effector position error (cm) read from the frame by a ridge
   probe on PCA of true frames (fitted on half of the held-out episodes, scored on the other half:
   true o_t+k, predicted, predicted without language, o_t); seconds per training step and per
   predicted batch.

Results print as a table and are saved to WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gidm_quality import EVAL_TASKS, TRAIN_TASKS, sql_for_tasks  # noqa: E402
from gidm_quality import make_corpus as gidm_make_corpus  # noqa: E402  (the GIDM bench's task split)

QUICK_TRAIN = ["reach-v3", "push-v3", "door-open-v3", "drawer-open-v3"]
QUICK_EVAL = ["drawer-close-v3", "window-close-v3"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def make_corpus(work: Path, a: argparse.Namespace) -> str:
    """The GIDM bench's corpus builder with a third set: held-out episodes of the training tasks."""
    return gidm_make_corpus(
        work,
        a,
        sets=[
            ("train_ds", a.train_tasks, a.episodes, True, a.seed),
            ("heldout_ep_ds", a.train_tasks, a.heldout_episodes, False, a.seed + 1),
            ("eval_ds", a.eval_tasks, a.eval_episodes, False, a.seed + 2),
        ],
    )


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def predict_all(model, pairs: dict, text: np.ndarray | None, batch: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Predicted o_t+k [N, 3, H, W] of every pair, and seconds per predicted batch."""
    import torch

    preds, times = [], []
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(0, len(pairs["obs"]), batch):
            obs = torch.from_numpy(pairs["obs"][i : i + batch])
            emb = None if text is None else torch.from_numpy(text[i : i + batch])
            t = time.perf_counter()
            pred = model.predict(obs, emb, generator=g)
            times.append(time.perf_counter() - t)
            preds.append(pred[:, 0].numpy())
    return np.concatenate(preds), float(np.mean(times[:-1] or times))


def psnr_np(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> float:
    err = (pred - true) ** 2
    if mask is not None:
        err = err[np.broadcast_to(mask, err.shape)]
    return float(10 * np.log10(1.0 / max(float(err.mean()), 1e-10)))


class PositionProbe:
    """End-effector xyz from a frame: ridge on the top PCA components of true frames."""

    def __init__(self, frames: np.ndarray, pos: np.ndarray, dims: int = 128, lam: float = 1.0):
        from defi.training.gidm.latent_probe import pca_fit

        x = frames.reshape(len(frames), -1).astype(np.float64)
        self.mu, self.vt = pca_fit(x, min(dims, len(x) - 1))
        z = (x - self.mu) @ self.vt.T
        self.zm, self.zs = z.mean(0), z.std(0) + 1e-8
        z = (z - self.zm) / self.zs
        self.ym = pos.mean(0)
        self.w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (pos - self.ym))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        z = ((frames.reshape(len(frames), -1).astype(np.float64) - self.mu) @ self.vt.T - self.zm) / self.zs
        return z @ self.w + self.ym


def evaluate(model, splits: dict[str, dict], texts: dict[str, np.ndarray], a) -> dict:
    """Per split: PSNR (whole / changed) of model, model without language, copy o_t; EE error."""
    out: dict = {"splits": {}}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for name, pairs in splits.items():
        p_lang, t_batch = predict_all(model, pairs, texts[name], a.eval_batch)
        p_null, _ = predict_all(model, pairs, None, a.eval_batch)
        preds[name] = {"pred": p_lang, "null": p_null}
        true, obs = pairs["next_obs"], pairs["obs"]
        mask = np.abs(true - obs).max(1, keepdims=True) > a.threshold
        row = {"pairs": len(true), "changed_frac": float(mask.mean()), "seconds_per_batch": t_batch, "batch": a.eval_batch}
        for key, x in (("model", p_lang), ("no_lang", p_null), ("copy", obs)):
            row[f"psnr_{key}"] = psnr_np(x, true)
            row[f"psnr_changed_{key}"] = psnr_np(x, true, mask)
        out["splits"][name] = row
    # EE probe: fit on true o_t+k of half of the episodes of both splits, score on the other half
    allp = {k: np.concatenate([splits[s][k] for s in splits]) for k in ("next_obs", "pos_next", "episode")}
    eps = np.unique(allp["episode"])
    fit_eps = set(eps[np.random.default_rng(0).permutation(len(eps))[: len(eps) // 2]])
    fit = np.array([e in fit_eps for e in allp["episode"]])
    probe = PositionProbe(allp["next_obs"][fit], allp["pos_next"][fit])
    for name, pairs in splits.items():
        test = np.array([e not in fit_eps for e in pairs["episode"]])
        if not test.any():
            continue
        pos = pairs["pos_next"][test]
        ee = {
            key: float(np.linalg.norm(probe(frames[test]) - pos, axis=1).mean() * 100)
            for key, frames in (
                ("true", pairs["next_obs"]),
                ("model", preds[name]["pred"]),
                ("no_lang", preds[name]["null"]),
                ("copy", pairs["obs"]),
            )
        }
        out["splits"][name].update({f"ee_cm_{k}": v for k, v in ee.items()}, ee_test_pairs=int(test.sum()))
    return out


def train_run(root: str, run: Path, objective: str, a) -> tuple[float, dict]:
    from defi.pipelines.train import main as train_main

    select = sql_for_tasks(a.train_tasks) + " AND NOT has_actions"
    args = [
        "gfdm",
        "--root",
        root,
        "--select",
        select,
        "--out",
        str(run),
        "--model",
        "tiny",
        "--gap-frames",
        str(a.gap_frames),
        "--size",
        str(a.size),
        "--steps",
        str(a.steps),
        "--model.objective",
        objective,
        "--train.batch_size",
        str(a.batch_size),
        "--train.lr",
        str(a.lr),
        "--train.log_every",
        "25",
        "--train.ckpt_every",
        str(max(a.steps // 2, 1)),
        "--train.grid_every",
        str(max(a.steps // 4, 1)),
        "--train.warmup_steps",
        str(min(50, a.steps // 10)),
        "--data.pairs_per_clip",
        "8",
        "--data.shuffle_buffer",
        "512",
        "--no-progress",
        "--train.seed",
        str(a.train_seed),
    ]
    for kv in a.model_set:
        field, _, value = kv.partition("=")
        args += [f"--model.{field}", value]
    print("[train] defi train " + " ".join(f'"{x}"' if " " in x else x for x in args), flush=True)
    t = time.time()
    rc = train_main(args)
    if rc:
        raise SystemExit(f"defi train gfdm failed with exit code {rc}")
    return time.time() - t, json.loads((run / "run_record.json").read_text())


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "defi_gfdm_quality"),
        help="work folder: datasets, corpus, runs, results.json (default: TMPDIR/defi_gfdm_quality)",
    )
    p.add_argument("--quick", action="store_true", help="4 training tasks, 2 held-out, fewer episodes and steps")
    p.add_argument("--train-tasks", help="comma-separated; default: the GIDM bench's 8 training tasks")
    p.add_argument("--eval-tasks", help="comma-separated held-out tasks; default: the GIDM bench's 5")
    p.add_argument("--episodes", type=int, help="action-free training episodes per task (default 12: 96 episodes)")
    p.add_argument("--heldout-episodes", type=int, default=2, help="held-out episodes per training task (default 2)")
    p.add_argument("--eval-episodes", type=int, default=3, help="episodes per held-out task (default 3)")
    p.add_argument("--noise", type=float, default=0.1, help="std of Gaussian action noise (default 0.1)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fps", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=120, help="actions per episode at most")
    p.add_argument("--clip-s", type=float, default=3.0, help="clip length when curating, seconds")
    p.add_argument("--gap-frames", type=int, default=10, help="k in frames (default 10 = 0.5 s)")
    p.add_argument("--objectives", default="regression,diffusion", help="train one model per objective")
    p.add_argument("--steps", type=int, help="training steps per model (default 400, quick 300)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any GFDMConfig field, passed as --model.FIELD VALUE (repeatable)",
    )
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.05, help="changed pixel: |o_t+k - o_t| above this (0..1)")
    p.add_argument("--stride", type=int, default=5, help="evaluate every stride-th pair")
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray of curate")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on the shared, oversubscribed 2-core box 2 threads ran the tiny "
        "GFDM's steps ~10x slower, 17.5 vs 1.8 s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", help="use this curated corpus (made by an earlier run) instead of generating one")
    a = p.parse_args(argv)
    split = lambda s: [t.strip() for t in s.split(",") if t.strip()]  # noqa: E731
    a.train_tasks = split(a.train_tasks) if a.train_tasks else (QUICK_TRAIN if a.quick else TRAIN_TASKS)
    a.eval_tasks = split(a.eval_tasks) if a.eval_tasks else (QUICK_EVAL if a.quick else EVAL_TASKS)
    a.episodes = a.episodes or (6 if a.quick else 12)
    a.steps = a.steps or (300 if a.quick else 400)
    a.objectives = split(a.objectives)
    if set(a.train_tasks) & set(a.eval_tasks):
        p.error(f"held-out tasks must differ from training tasks; both have {sorted(set(a.train_tasks) & set(a.eval_tasks))}")
    return a


def main(argv=None) -> dict:
    import torch

    from defi.training.checkpoint import load_model
    from defi.training.gfdm.text import TextModelConfig, embed_instructions
    from defi.training.gidm.latent_probe import probe_pairs

    a = parse(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = a.corpus or make_corpus(work, a)
    t_data = time.time() - t0
    splits = {
        "heldout_episodes": probe_pairs(root, sql_for_tasks(a.train_tasks) + " AND has_actions", a.gap_frames, a.size, a.stride),
        "heldout_tasks": probe_pairs(root, sql_for_tasks(a.eval_tasks), a.gap_frames, a.size, a.stride),
    }
    res = {"config": {k: v for k, v in vars(a).items()}, "runs": {}, "seconds": {"data": t_data}}
    for objective in a.objectives:
        run = work / f"run-{objective}"
        t_train, record = train_run(root, run, objective, a)
        model, cfg, _ = load_model(run, expect="gfdm")
        text_cfg = TextModelConfig(**{k: v for k, v in json.loads((run / "run_config.json").read_text())["text"].items()})
        texts = {name: embed_instructions(root, [str(t) for t in pairs["task"]], text_cfg) for name, pairs in splits.items()}
        t = time.time()
        ev = evaluate(model, splits, texts, a)
        res["runs"][objective] = {
            **ev,
            "train_seconds": t_train,
            "seconds_per_step": record["seconds_per_step"],
            "eval_seconds": time.time() - t,
            "grid": record["grid"],
            "selected_clips": record["selected_clips"],
            "model": cfg.to_dict(),
            "num_inference_steps": cfg.num_inference_steps,
        }
        (work / "results.json").write_text(json.dumps(res, indent=2, default=str))
        print_report(res)
    res["seconds"]["total"] = time.time() - t0
    (work / "results.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def print_report(res: dict) -> None:
    c = res["config"]
    print(
        f"\nGFDM quality: tiny, {c['steps']} steps x batch {c['batch_size']}, {c['size']} px, k={c['gap_frames']} "
        f"frames; changed pixels |o_t+k - o_t| > {c['threshold']}"
    )
    print(f"  trained on (action-free) {c['episodes']} episodes x {', '.join(c['train_tasks'])}")
    print(f"  held-out episodes: {c['heldout_episodes']} per training task; held-out tasks: {', '.join(c['eval_tasks'])}")
    head = (
        f"  {'objective':<11}{'split':<18}{'pairs':>6}{'PSNR':>7}{'copy':>7}{'nolang':>7}"
        f"{'chgPSNR':>8}{'copy':>7}{'nolang':>7}{'gain':>6}{'EEcm':>6}{'true':>6}{'copy':>6}{'nolang':>7}"
        f"{'s/step':>7}{'s/batch':>8}"
    )
    print(head)
    for objective, r in res["runs"].items():
        for name, s in r["splits"].items():
            gain = s["psnr_changed_model"] - s["psnr_changed_copy"]
            print(
                f"  {objective:<11}{name:<18}{s['pairs']:>6}{s['psnr_model']:>7.2f}{s['psnr_copy']:>7.2f}"
                f"{s['psnr_no_lang']:>7.2f}{s['psnr_changed_model']:>8.2f}{s['psnr_changed_copy']:>7.2f}"
                f"{s['psnr_changed_no_lang']:>7.2f}{gain:>+6.2f}{s.get('ee_cm_model', float('nan')):>6.2f}"
                f"{s.get('ee_cm_true', float('nan')):>6.2f}{s.get('ee_cm_copy', float('nan')):>6.2f}"
                f"{s.get('ee_cm_no_lang', float('nan')):>7.2f}{r['seconds_per_step']:>7.2f}"
                f"{s['seconds_per_batch']:>8.2f}"
            )
        print(
            f"  {objective}: train {r['train_seconds']:.0f} s on {r['selected_clips']} clips, eval "
            f"{r['eval_seconds']:.0f} s ({r['num_inference_steps']} sampler steps for diffusion), grid {r['grid']}"
        )
    print(f"  data {res['seconds']['data']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
