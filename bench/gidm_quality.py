"""Does the GIDM's latent action carry the action? Linear probes on held-out Meta-World tasks.

    .venv/bin/python bench/gidm_quality.py --quick            # ~2 min on a 2-core CPU (a smoke run)
    .venv/bin/python bench/gidm_quality.py                    # ~27 min on a quiet 2-core CPU
    .venv/bin/python bench/gidm_quality.py --bottleneck vq    # also: code usage, perplexity, NMI
    (--bottleneck fsq | rvq | nsvq likewise; --camera-shift 4 [--stabilize] adds camera motion to
    the held-out pairs [and takes it out]; --eval-camera corner2 probes an unseen viewpoint;
    --train-cameras corner,corner4,topview trains on three viewpoints, the remedy for new ones)

1. ``defi.training.sim.generate``: scripted-expert episodes with Gaussian action noise. Training
   tasks are written *action-free* (video only); held-out tasks (other tasks) with actions and
   proprioception.
2. ``run_curate`` imports both datasets into one corpus (real shards + index).
3. ``defi train gidm`` (``pipelines.train.main``) trains on the clips of the training tasks only,
   selected by SQL on the clips' language. Default model: the tiny continuous GIDM with the
   keypoint encoder (32 soft-argmax keypoints), 16 latent dims, 4-px patches, changed_weight 30,
   k = 10 frames (``--model-set keypoints=0`` for the transformer encoder).
4. On the held-out tasks, every pair (o_t, o_t+k) of every clip is encoded; ridge probes (closed
   form) are fitted on half of the episodes and scored (R^2, mean over x, y, z) on the other half,
   for two targets: the commanded translation (sum of action dx, dy, dz over t..t+k-1) and the
   end-effector displacement (proprio hand xyz at t+k minus at t). Features:
     latent       the GIDM latent z (continuous mean or VQ/FSQ code vectors), Q x W dims
     onehot       one-hot codes (VQ/FSQ only)
     pca_diff     control: PCA of the pixel difference o_t+k - o_t, same number of dims
     pca_obs      control: PCA of o_t alone (what the scene alone predicts), same dims
     *_wide       the two controls with 64 dims (a stronger control than the latent's size)
     rff_*        with --nonlinear: the same ridge on random Fourier features of the latent and of
                  the two same-size controls (is the information there at all, not only linearly)
   plus ΔPSNR (decoder's o_t+k PSNR with the inferred latent minus with the latent of another
   pair of the shuffled batch), and code usage / perplexity / NMI(codes; binned displacement).

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

from defi.training.gidm.configuration_gidm import BOTTLENECKS
from defi.training.gidm.latent_probe import encode_all, probe, probe_pairs
from defi.training.sim import HELD_OUT_TASKS, PRETRAIN_TASKS  # (importing it sets MUJOCO_GL before mujoco loads)

TRAIN_TASKS = list(PRETRAIN_TASKS)  # the project's standard split (training/sim/metaworld_env.py)
EVAL_TASKS = list(HELD_OUT_TASKS)
QUICK_TRAIN = TRAIN_TASKS[:4]
QUICK_EVAL = EVAL_TASKS[:3]
# The best measured setting (docs/results.md): 4-px patches, reconstruction weighted towards changed
# patches, keypoint encoder with 32 soft-argmax keypoints. --model-set overrides any of them.
DEFAULT_MODEL_SET = ["patch_size=4", "changed_weight=30", "keypoints=32"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def make_corpus(work: Path, a: argparse.Namespace, sets: list[tuple] | None = None) -> str:
    """Generate each (name, tasks, episodes, action_free, seed[, camera]) set under ``work``
    (reused when present) and curate them all into ``work/corpus``; default sets: action-free
    training tasks and held-out tasks with actions, camera "corner"."""
    from defi.pipelines.config import from_dict
    from defi.pipelines.curate import run_curate, summary_text
    from defi.pipelines.curate_config import CurateConfig
    from defi.training.sim import generate

    if sets is None:
        sets = train_sets(a) + [("eval_ds", a.eval_tasks, a.eval_episodes, False, a.seed + 1)]
    for name, tasks, eps, action_free, seed, *camera in sets:
        out = work / name
        if (out / "meta" / "info.json").exists():
            print(f"[data] {name}: reusing {out}")
            continue
        t = time.time()
        s = generate(
            tasks,
            eps,
            out,
            size=a.size,
            fps=a.fps,
            seed=seed,
            action_noise=a.noise,
            max_steps=a.max_steps,
            action_free=action_free,
            camera=camera[0] if camera else "corner",
            workers=a.gen_workers,
            progress=False,
        )
        print(
            f"[data] {name}: {s['episodes_written']} episodes, {s['frames']} frames of {len(tasks)} tasks "
            f"(action_free={action_free}, success {s['success_rate']:.2f}) in {time.time() - t:.0f} s",
            flush=True,
        )
    cfg = from_dict(
        CurateConfig,
        {
            "windows": {"clip_len_s": a.clip_s, "stride_s": a.clip_s, "min_clip_s": 1.0, "max_clip_s": a.clip_s},
            "encode": {"fps": a.fps, "short_side": a.size},
            "use_dedup": False,
            "ray": {"num_cpus": a.cpus},
        },
    )
    root = str(work / "corpus")
    t = time.time()
    rec = run_curate([str(work / n) for n, *_ in sets], root, cfg, progress=False)
    print(f"[curate] {time.time() - t:.0f} s\n" + summary_text(rec), flush=True)
    return root


def train_sets(a: argparse.Namespace) -> list[tuple]:
    """The action-free training set(s): one camera ("corner"), or with --train-cameras the same
    total episodes split evenly over the listed cameras, each with its own layout seed."""
    if a.train_cameras == ["corner"]:
        return [("train_ds", a.train_tasks, a.episodes, True, a.seed)]
    n = len(a.train_cameras)
    return [(f"train_ds_{cam}", a.train_tasks, max(1, a.episodes // n), True, a.seed + 2 + i, cam) for i, cam in enumerate(a.train_cameras)]


def camera_motion(pairs: dict[str, np.ndarray], a: argparse.Namespace) -> dict:
    """--camera-shift / --stabilize on the held-out pairs, in place; what was done, for the report."""
    from defi.training.gidm.camera import camera_shift, stabilize

    out: dict = {"eval_camera": a.eval_camera or "corner", "shift_px": a.camera_shift, "stabilized": a.stabilize}
    if a.camera_shift:
        pairs["obs"], pairs["next_obs"], d = camera_shift(pairs["obs"], pairs["next_obs"], a.camera_shift, seed=a.seed)
        out["mean_abs_shift_px"] = float(np.abs(d).mean())
    if a.stabilize:
        pairs["next_obs"], est = stabilize(pairs["obs"], pairs["next_obs"], max_px=max(8, 2 * a.camera_shift))
        out["mean_abs_estimated_px"] = float(np.abs(est).mean())
        if a.camera_shift:
            out["shift_recovered"] = float((est == d).all(1).mean())
    return out


def sql_for_tasks(tasks: list[str]) -> str:
    from defi.training.sim import instruction_for

    langs = ", ".join("'" + instruction_for(t).replace("'", "''") + "'" for t in tasks)
    return f"SELECT key FROM clips WHERE kept AND language IN ({langs})"


def eval_pairs(root: str, tasks: list[str], k: int, size: int, stride: int) -> dict[str, np.ndarray]:
    """Every stride-th pair (t, t+k) of the held-out clips: frames, targets, episode ids."""
    try:
        return probe_pairs(root, sql_for_tasks(tasks), k, size, stride)
    except ValueError as e:
        raise SystemExit(f"{e}: check the curate summary") from None


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer tasks, episodes and steps (~3 min on CPU)")
    p.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "defi_gidm_quality"),
        help="work folder: datasets, corpus, run, results.json (default: TMPDIR/defi_gidm_quality)",
    )
    p.add_argument("--train-tasks", help="comma-separated; default: 8 tasks (4 with --quick)")
    p.add_argument("--eval-tasks", help="comma-separated held-out tasks; default: 5 (3 with --quick)")
    p.add_argument("--episodes", type=int, help="episodes per training task (default 30, quick 6)")
    p.add_argument("--eval-episodes", type=int, help="episodes per held-out task (default 12, quick 6)")
    p.add_argument("--noise", type=float, default=0.1, help="std of Gaussian action noise (default 0.1)")
    p.add_argument("--size", type=int, default=64, help="frame side in px (default 64)")
    p.add_argument("--fps", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=120, help="actions per episode at most")
    p.add_argument("--clip-s", type=float, default=3.0, help="clip length when curating, seconds")
    p.add_argument("--gap-frames", type=int, default=10, help="k: pair gap in frames (default 10 = 0.5 s)")
    p.add_argument("--steps", type=int, help="GIDM training steps (default 3000, quick 400)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--model",
        default="tiny",
        choices=["keypoint", "keypoint-rvq", "tiny", "small"],
        help="GIDM preset under the defaults below (tiny + them = keypoint; keypoint-rvq: its residual-VQ codes)",
    )
    p.add_argument("--bottleneck", default=None, choices=BOTTLENECKS, help="override the model size's bottleneck")
    p.add_argument("--latent-dim", type=int, default=16, help="latent width (default 16)")
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any GIDMConfig field, passed as --model.FIELD VALUE (repeatable), e.g. changed_weight=10; "
        f"applied after the defaults {' '.join(DEFAULT_MODEL_SET)} (keypoints=0: transformer encoder)",
    )
    p.add_argument("--train-seed", type=int, default=0, help="seed of the GIDM training run (--train.seed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers of the training run")
    p.add_argument("--stride", type=int, default=1, help="probe every stride-th pair of the held-out clips")
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray of curate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh-run", action="store_true", help="delete WORK/run first (else training resumes)")
    p.add_argument("--corpus", help="use this curated corpus (made by an earlier run) instead of generating one")
    p.add_argument("--data-only", action="store_true", help="generate and curate, then stop")
    p.add_argument(
        "--camera-shift",
        type=int,
        default=0,
        metavar="PX",
        help="add camera motion to the held-out pairs: o_t moved by s, o_t+k by s + d, s and d uniform in [-PX, PX] px per axis",
    )
    p.add_argument(
        "--stabilize",
        action="store_true",
        help="the remedy: shift o_t+k back by its global translation from o_t (the shift most pixels agree on)",
    )
    p.add_argument(
        "--eval-camera",
        help="probe on held-out episodes rendered from this Meta-World camera (e.g. corner2, corner3), generated into WORK/eval_CAMERA",
    )
    p.add_argument(
        "--train-cameras",
        default="corner",
        help="comma-separated Meta-World cameras of the training videos; the --episodes are split evenly over them "
        "(e.g. corner,corner4,topview: the remedy for unseen viewpoints; use a new --work)",
    )
    p.add_argument(
        "--nonlinear", action="store_true", help="also kernel probes (ridge on random Fourier features) of the latent and the two controls"
    )
    a = p.parse_args(argv)
    split = lambda s: [t.strip() for t in s.split(",") if t.strip()]  # noqa: E731
    a.train_tasks = split(a.train_tasks) if a.train_tasks else (QUICK_TRAIN if a.quick else TRAIN_TASKS)
    a.eval_tasks = split(a.eval_tasks) if a.eval_tasks else (QUICK_EVAL if a.quick else EVAL_TASKS)
    a.train_cameras = split(a.train_cameras) or ["corner"]
    a.episodes = a.episodes or (6 if a.quick else 30)
    a.eval_episodes = a.eval_episodes or (6 if a.quick else 12)
    a.steps = a.steps or (400 if a.quick else 3000)
    overlap = set(a.train_tasks) & set(a.eval_tasks)
    if overlap:
        p.error(f"held-out tasks must differ from training tasks; both have {sorted(overlap)}")
    return a


def train_args(a: argparse.Namespace, root: str, run: Path) -> list[str]:
    """The ``defi train gidm`` arguments of the bench's training run (``--model`` preset, then
    ``--bottleneck`` / ``--latent-dim``, then ``DEFAULT_MODEL_SET`` and ``--model-set``)."""
    args = [
        "gidm",
        "--root",
        root,
        "--select",
        sql_for_tasks(a.train_tasks),
        "--out",
        str(run),
        "--model",
        a.model,
        "--gap-frames",
        str(a.gap_frames),
        "--size",
        str(a.size),
        "--steps",
        str(a.steps),
        "--train.batch_size",
        str(a.batch_size),
        "--train.lr",
        str(a.lr),
        "--train.device",
        a.device,
        "--train.log_every",
        "50",
        "--train.ckpt_every",
        str(max(a.steps // 4, 1)),
        "--train.warmup_steps",
        str(min(100, a.steps // 10)),
        "--data.pairs_per_clip",
        "16",
        "--data.shuffle_buffer",
        "512",
        "--no-progress",
        "--loader-workers",
        str(a.loader_workers),
        "--train.seed",
        str(a.train_seed),
    ]
    if a.bottleneck:
        args += ["--model.bottleneck", a.bottleneck]
    if a.latent_dim:
        args += ["--model.latent_dim", str(a.latent_dim)]
    for kv in DEFAULT_MODEL_SET + a.model_set:
        field, _, value = kv.partition("=")
        args += [f"--model.{field}", value]
    return args


def main(argv=None) -> dict:
    import shutil

    import torch

    from defi.pipelines.train import main as train_main
    from defi.training.checkpoint import load_checkpoint
    from defi.training.recipes.gidm import last_checkpoint

    a = parse(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = a.corpus or make_corpus(work, a)
    t_data = time.time() - t0
    if a.data_only:
        return {"corpus": root}

    run = work / "run"
    if a.fresh_run and run.exists():
        shutil.rmtree(run)
    args = train_args(a, root, run)
    print("[train] defi train " + " ".join(f'"{x}"' if " " in x else x for x in args))
    t = time.time()
    rc = train_main(args)
    if rc:
        raise SystemExit(f"defi train gidm failed with exit code {rc}")
    t_train = time.time() - t

    t = time.time()
    model, cfg, state = load_checkpoint(last_checkpoint(run))
    device = torch.device("cuda" if a.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model.to(device)
    probe_root = root
    if a.eval_camera:
        cam_work = work / f"eval_{a.eval_camera}"
        probe_root = make_corpus(cam_work, a, [("eval_ds", a.eval_tasks, a.eval_episodes, False, a.seed + 1, a.eval_camera)])
    pairs = eval_pairs(probe_root, a.eval_tasks, a.gap_frames, a.size, a.stride)
    camera = camera_motion(pairs, a)
    enc = encode_all(model, pairs["obs"], pairs["next_obs"], device)
    res = probe(pairs, enc, cfg.num_codes, nonlinear=a.nonlinear)
    t_probe = time.time() - t
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    res.update(
        config={
            "train_tasks": a.train_tasks,
            "eval_tasks": a.eval_tasks,
            "episodes": a.episodes,
            "eval_episodes": a.eval_episodes,
            "noise": a.noise,
            "size": a.size,
            "gap_frames": a.gap_frames,
            "steps": state["step"],
            "train_seed": a.train_seed,
            "data_seed": a.seed,
            "camera": camera,
            "train_cameras": a.train_cameras,
            "model": cfg.to_dict(),
        },
        train_loss_first=metrics[0]["loss"],
        train_loss_last=metrics[-1]["loss"],
        train_delta_recon_last=metrics[-1].get("delta_recon"),
        seconds={"data": t_data, "train": t_train, "probe": t_probe, "total": time.time() - t0},
        device=str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
    )
    (work / "results.json").write_text(json.dumps(res, indent=2))
    print_report(res)
    return res


def print_report(res: dict) -> None:
    c = res["config"]
    print(
        f"\nGIDM quality: {c['model']['bottleneck']} latent {res['latent_dims']} dims, {c['steps']} steps, "
        f"{c['size']} px, k={c['gap_frames']} frames, noise {c['noise']} on {res['device']}"
    )
    print(f"  trained on (action-free) {', '.join(c['train_tasks'])}")
    cam = c.get("camera") or {}
    if cam.get("shift_px") or cam.get("stabilized") or cam.get("eval_camera", "corner") != "corner":
        print(f"  camera: {cam}")
    print(
        f"  probed on held-out       {', '.join(c['eval_tasks'])}: {res['pairs']} pairs of {res['episodes']} "
        f"episodes ({res['probe_train_pairs']} fit / {res['probe_test_pairs']} test, split by episode)"
    )
    names = list(res["r2"]["disp"])
    print(f"  {'R^2 (x,y,z mean)':<26}" + "".join(f"{n:>14}" for n in names) + f"{'true_disp':>14}")
    for target, label in (("disp", "end-effector displacement"), ("cmd", "commanded dx,dy,dz (sum)")):
        row = res["r2"][target]
        print(
            f"  {label:<26}"
            + "".join(f"{row[n]:>14.3f}" for n in names)
            + (f"{row['true_disp']:>14.3f}" if "true_disp" in row else f"{'':>14}")
        )
    if "r2_disp_xyz" in res:
        print(
            "  displacement per axis (x, y, z): "
            + ", ".join(f"{n} " + "/".join(f"{v:.2f}" for v in res["r2_disp_xyz"][n]) for n in ("latent", "pca_diff", "pca_obs"))
        )
    print(
        f"  PSNR o_t+k: {res['psnr_true']:.2f} dB with its latent, {res['psnr_shuffled']:.2f} dB shuffled "
        f"(ΔPSNR {res['delta_psnr']:+.2f} dB); copying o_t scores {res['psnr_copy']:.2f} dB"
    )
    if "code_usage" in res:
        print(
            f"  codes: usage {res['code_usage']:.2f}, perplexity {res['perplexity']:.2f}, "
            f"NMI(codes; binned displacement) {res['nmi_codes_vs_binned_disp']:.3f}"
        )
    print(f"  train loss {res['train_loss_first']:.5f} -> {res['train_loss_last']:.5f}, delta_recon {res['train_delta_recon_last']:.5f}")
    s = res["seconds"]
    print(f"  time: data {s['data']:.0f} s, train {s['train']:.0f} s, probe {s['probe']:.0f} s, total {s['total']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
