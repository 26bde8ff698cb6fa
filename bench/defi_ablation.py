"""Is *decoupled* forward + inverse pretraining what helps? DeFI against entangled pretraining and scratch.

    nice -n 10 .venv/bin/python bench/defi_ablation.py            # full: 8 pretraining tasks, 4 targets, 3 x 3 seeds, curve
    nice -n 10 .venv/bin/python bench/defi_ablation.py --quick    # 4 pretraining tasks, 2 targets, 1 x 2 seeds, no curve
    .venv/bin/python bench/defi_ablation.py --smoke --work DIR    # smallest end-to-end run (the test's)
    make bench-ablation [QUICK=1]

Issue 37's study; every task, seed, size and budget below was fixed before any of its results.
Setting A only: the target tasks are not in pretraining. (The 2026-11-26 study, with setting B and
the variants no-gfdm-pretrain / no-gidm-pretrain / bc, is docs/ablation-2026-11-26.md, made with
an earlier version of this script.)

1. Data (``gidm_quality.make_corpus``: ``defi.training.sim.generate`` + ``run_curate``, one corpus):
   action-free scripted-expert episodes of the pretraining tasks in disjoint sets (``pre1`` ...,
   each with its own layout seed, ``PRETRAIN_SET_SEED + i``) so that the pretraining sizes nest:
   size ``x`` uses the first ``SIZES[x]`` sets (selected by the clips' ``dataset`` column, the
   generated dataset's folder name); and ``demos`` expert demos with actions per target task
   (layouts of seed + 1). Target tasks by rule (``target_tasks``): the Meta-World MT50 tasks minus
   the pretraining tasks minus the GIDM bench's held-out tasks (that bench was tuned on them),
   sorted, permuted by ``np.random.default_rng(37)``; the first N.
2. Pretraining with the CLI (``defi.pipelines.cli.main``) on the action-free clips of a size,
   seed ``p`` (``--train.seed p``: model init and data order):
     defi       ``defi train gidm`` (GIDM_STEPS) + ``defi train gfdm --model tiny`` regression
                (GFDM_STEPS), two separate runs;
     entangled  ``defi train joint``: the same GIDM and GFDM configs in one model (GFDM + feature
                projection + GIDM encoder and decoder) from random init, forward and inverse losses
                summed, ``joint_steps`` = gidm_steps + gfdm_steps at the same batch (the same
                pretraining budget).
3. Cells: ``defi train policy --init VARIANT --train.seed f`` on the target tasks' demos (same
   clips, steps, batch and horizon for every variant), then ``defi eval`` on the target tasks with
   env seed ``EVAL_SEED`` (held-out layouts, the same for every cell: episode i of a task is the
   same layout in every cell). Variants: ``defi`` (from the size-1 defi run of seed p), ``entangled``
   (``--init entangled --joint RUN``), ``scratch`` (random weights, the defi run's shapes; no p),
   ``defi-diffusion-head`` (issue 38: defi p=0 with ``--model.head diffusion``, compared with
   defi p=0), and the curve: defi at the other sizes, p=0. Each cell writes
   ``WORK/cells/<variant>-x<size>-p<p>-s<f>.json`` (scratch: ``scratch-s<f>.json``) atomically and
   each pretraining run a ``done`` marker: re-running skips what is finished.
   Order: data; the block of pretraining seed 0 (defi and joint pretraining, then the defi,
   entangled and scratch cells, then the diffusion-head cells), the blocks of seeds 1 and 2, the
   curve (its pretraining runs, then its cells). ``[i/N] ... ETA`` counts pretraining runs and cells.
4. Statistics (``WORK/results.json``, ``WORK/report.html``, ``WORK/curve.svg``): success per
   variant and task (mean over cells; Wilson 95% of the pooled successes); per-seed rows (p, f);
   paired bootstrap 95% of defi - scratch, defi - entangled and defi-diffusion-head - defi:
   pretraining seeds resampled independently per variant, then finetuning seeds (paired by f),
   then episode indices per task (paired: the same layouts). Curve: success against pretraining
   episodes per task (bootstrap 95% per point over finetuning seeds and episodes), and each
   point's GIDM probe R^2 (``gidm_quality``'s probes on the target tasks' demos, which the GIDM never
   saw: hand displacement and commanded action from the latent, beside the observation-only
   control ``pca_obs``); whether success is non-decreasing, or where not. Each policy's
   ``image_reliance`` (demo error with its image, another sample's, a blank one) is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gidm_quality import DEFAULT_MODEL_SET as GIDM_MODEL_SET  # noqa: E402  (the GIDM bench's best setting)
from gidm_quality import make_corpus, sql_for_tasks  # noqa: E402

from defi.training.sim import HELD_OUT_TASKS, PRETRAIN_TASKS  # noqa: E402

EVAL_SEED = 1000  # layouts of the evaluation episodes: neither the pretraining sets' nor the demos' (seed+1)
PRETRAIN_SET_SEED = 10  # action-free set i (0-based) has layout seed seed + PRETRAIN_SET_SEED + i
TARGET_RULE_SEED = 37  # the issue's number: the permutation of the candidate target tasks
MAIN = "1"  # the pretraining size of the main comparison
# cell variants beyond the --init ones: name -> (init, extra `defi train policy` flags, baseline)
EXTRAS = {"defi-diffusion-head": ("defi", ["--model.head", "diffusion"], "defi")}
COMPARISONS = (("defi", "scratch"), ("defi", "entangled"), ("defi-diffusion-head", "defi"))

# Fixed before any result (issue 37). pretrain_sets: action-free episodes per task of each disjoint
# set; sizes: pretraining size -> how many leading sets it uses (full: 5, 10, 20, 40 episodes per
# task); curve: the sizes defi is also pretrained at (p = 0); targets: how many of target_tasks().
CONFIGS = {
    "full": dict(
        pretrain_tasks=list(PRETRAIN_TASKS),
        targets=4,
        pretrain_sets=(5, 5, 10, 20),
        sizes={"0.25": 1, "0.5": 2, "1": 3, "2": 4},
        curve=("0.25", "0.5", "1", "2"),
        variants=("defi", "entangled", "scratch"),
        extras=("defi-diffusion-head",),
        pretrain_seeds=(0, 1, 2),
        finetune_seeds=(0, 1, 2),
        demos=10,
        size=64,
        gidm_steps=1500,
        gfdm_steps=800,
        joint_steps=2300,
        policy_steps=600,
        batch_size=16,
        horizon=10,
        eval_episodes=30,
        max_steps=150,
        gen_max_steps=150,
    ),
    "quick": dict(
        pretrain_tasks=["reach-v3", "push-v3", "door-open-v3", "drawer-open-v3"],
        targets=2,
        pretrain_sets=(10,),
        sizes={"1": 1},
        curve=(),
        variants=("defi", "entangled", "scratch"),
        extras=(),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1),
        demos=10,
        size=64,
        gidm_steps=600,
        gfdm_steps=300,
        joint_steps=900,
        policy_steps=600,  # the full run's finetuning budget: what the baselines need to read their image
        batch_size=16,
        horizon=10,
        eval_episodes=10,
        max_steps=150,
        gen_max_steps=150,
    ),
    "smoke": dict(
        pretrain_tasks=["reach-v3", "push-v3"],
        targets=1,
        pretrain_sets=(1, 1),
        sizes={"0.5": 1, "1": 2},
        curve=("0.5", "1"),
        variants=("defi", "entangled", "scratch"),
        extras=("defi-diffusion-head",),
        pretrain_seeds=(0,),
        finetune_seeds=(0,),
        demos=2,
        size=32,
        gidm_steps=2,
        gfdm_steps=2,
        joint_steps=2,
        policy_steps=2,
        batch_size=4,
        horizon=4,
        eval_episodes=2,
        max_steps=10,
        gen_max_steps=60,
    ),
}
# the tiny GFDM at 32 px (smoke): two levels
GFDM_SMALL = {
    "block_out_channels": "16,32",
    "down_block_types": "DownBlock2D,CrossAttnDownBlock2D",
    "up_block_types": "CrossAttnUpBlock2D,UpBlock2D",
    "cross_attention_dim": "16",
}


def target_tasks(n: int) -> list[str]:
    """The first ``n`` of the rule's permutation: Meta-World MT50 minus ``PRETRAIN_TASKS`` minus
    ``HELD_OUT_TASKS``, sorted, permuted by ``np.random.default_rng(TARGET_RULE_SEED)``. Reads the
    task names from metaworld's env table (no environment is built)."""
    from metaworld.env_dict import MT50_V3

    pool = sorted(set(MT50_V3) - set(PRETRAIN_TASKS) - set(HELD_OUT_TASKS))
    order = np.random.default_rng(TARGET_RULE_SEED).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# what a run keeps in --keep (small files: the config, each cell's outcomes and demo errors, the
# GIDM probes); everything else in WORK (corpus, checkpoints) is rebuilt or not needed for the report
KEPT = ("config.json", "cells/*.json", "cells/*/reliance.json", "pretrain/*/probe.json")


def restore_kept(work: Path, keep: Path) -> int:
    """Copy into WORK the kept files it lacks (a run continued on a machine that has lost WORK)."""
    n = 0
    for pattern in KEPT:
        for src in sorted(keep.glob(pattern)):
            dst = work / src.relative_to(keep)
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                n += 1
    return n


def save_kept(work: Path, keep: Path) -> None:
    """Mirror WORK's kept files into KEEP (atomically, only what changed)."""
    for pattern in KEPT:
        for src in sorted(work.glob(pattern)):
            dst = keep / src.relative_to(work)
            data = src.read_bytes()
            if dst.exists() and dst.read_bytes() == data:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, dst)


def cli(args: list[str]) -> None:
    from defi.pipelines.cli import main as defi_main

    print("[run] defi " + " ".join(f'"{x}"' if " " in x else x for x in args), flush=True)
    rc = defi_main(args)
    if rc:
        raise SystemExit(f"defi {args[0]} {args[1] if args[0] == 'train' else ''} failed with exit code {rc}")


def set_names(a: argparse.Namespace, size: str) -> list[str]:
    return [f"pre{i + 1}" for i in range(a.sizes[size])]


def episodes_per_task(a: argparse.Namespace, size: str) -> int:
    return sum(a.pretrain_sets[: a.sizes[size]])


def pretrain_sql(a: argparse.Namespace, size: str) -> str:
    sets = ", ".join(f"'{n}'" for n in set_names(a, size))
    return sql_for_tasks(a.pretrain_tasks) + f" AND dataset IN ({sets}) AND NOT has_actions"


def labeled_sql(a: argparse.Namespace) -> str:
    return sql_for_tasks(a.target_tasks) + " AND dataset = 'demos' AND has_actions"


# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------
def corpus_sets(a: argparse.Namespace) -> list[tuple]:
    """``make_corpus``'s sets: the disjoint action-free pretraining sets, then the labeled demos."""
    pre = [(f"pre{i + 1}", a.pretrain_tasks, eps, True, a.seed + PRETRAIN_SET_SEED + i) for i, eps in enumerate(a.pretrain_sets)]
    return pre + [("demos", a.target_tasks, a.demos, False, a.seed + 1)]


def data(work: Path, a: argparse.Namespace) -> str:
    done = work / "corpus.done"
    if done.exists():
        print(f"[data] reusing {work / 'corpus'}")
        return str(work / "corpus")
    ns = argparse.Namespace(size=a.size, fps=20, noise=0.1, max_steps=a.gen_max_steps, gen_workers=a.gen_workers, clip_s=3.0, cpus=a.cpus)
    root = make_corpus(work, ns, corpus_sets(a))
    done.write_text("ok")
    return root


def gidm_fields(a: argparse.Namespace) -> list[tuple[str, str]]:
    """The GIDM config fields of both pretraining kinds (the GIDM bench's best setting)."""
    out = [("latent_dim", "16")]
    for kv in GIDM_MODEL_SET:
        field, _, value = kv.partition("=")
        out.append((field, "8" if a.size < 64 and field == "keypoints" else value))
    return out


def gfdm_fields(a: argparse.Namespace) -> list[tuple[str, str]]:
    return [("objective", "regression")] + (list(GFDM_SMALL.items()) if a.size < 64 else [])


def flags(prefix: str, fields: list[tuple[str, str]]) -> list[str]:
    return [x for k, v in fields for x in (f"--{prefix}.{k}", v)]


def common_train(root: str, sql: str, out: Path, a: argparse.Namespace, steps: int, seed: int, warmup: int) -> list[str]:
    return [
        "--root",
        root,
        "--select",
        sql,
        "--out",
        str(out),
        "--gap-frames",
        str(a.gap_frames),
        "--size",
        str(a.size),
        "--steps",
        str(steps),
        "--train.batch_size",
        str(a.batch_size),
        "--train.lr",
        "1e-3",
        "--train.seed",
        str(seed),
        "--train.log_every",
        "25",
        "--train.ckpt_every",
        str(max(steps // 2, 1)),
        "--train.warmup_steps",
        str(min(warmup, steps // 10)),
        "--data.shuffle_buffer",
        "256",
        "--no-progress",
    ]


def pretrain_dir(work: Path, size: str, p: int) -> Path:
    return work / "pretrain" / f"x{size}-p{p}"


def pretrain_defi(work: Path, root: str, a: argparse.Namespace, size: str, p: int) -> None:
    """``defi train gidm`` then ``defi train gfdm`` (each skipped when its ``done`` marker exists)."""
    base, sql = pretrain_dir(work, size, p), pretrain_sql(a, size)
    gidm, gfdm = base / "gidm", base / "gfdm"
    if not (gidm / "done").exists():
        cli(
            ["train", "gidm", "--model", "tiny"]
            + common_train(root, sql, gidm, a, a.gidm_steps, p, 100)
            + ["--data.pairs_per_clip", "16"]
            + flags("model", gidm_fields(a))
        )
        (gidm / "done").write_text("ok")
    if not (gfdm / "done").exists():
        cli(
            ["train", "gfdm", "--model", "tiny"]
            + common_train(root, sql, gfdm, a, a.gfdm_steps, p, 50)
            + ["--data.pairs_per_clip", "8", "--train.grid_every", str(max(a.gfdm_steps, 1))]
            + flags("model", gfdm_fields(a))
        )
        (gfdm / "done").write_text("ok")


def pretrain_joint(work: Path, root: str, a: argparse.Namespace, size: str, p: int) -> None:
    """``defi train joint``: the same GIDM and GFDM configs, one model, the summed budget."""
    run = pretrain_dir(work, size, p) / "joint"
    if (run / "done").exists():
        return
    cli(
        ["train", "joint", "--gidm-model", "tiny", "--gfdm-model", "tiny"]
        + common_train(root, pretrain_sql(a, size), run, a, a.joint_steps, p, 100)
        + ["--data.pairs_per_clip", "16", "--train.grid_every", str(max(a.joint_steps, 1))]
        + flags("gidm", gidm_fields(a))
        + flags("gfdm", gfdm_fields(a))
        + ["--joint.forward_weight", "1.0", "--joint.inverse_weight", "1.0"]
    )
    (run / "done").write_text("ok")


def cell_name(variant: str, size: str, p: int | None, f: int) -> str:
    return f"{variant}-s{f}" if p is None else f"{variant}-x{size}-p{p}-s{f}"


def run_cell(work: Path, root: str, a: argparse.Namespace, variant: str, size: str, p: int | None, f: int) -> dict:
    name = cell_name(variant, size, p, f)
    cell = work / "cells" / name
    init, extra, _ = EXTRAS.get(variant, (variant, [], None))
    if init == "entangled":
        weights = ["--joint", str(pretrain_dir(work, size, p) / "joint")]
    else:  # scratch: the pretraining seed 0 runs give the shapes, not the weights
        base = pretrain_dir(work, size, 0 if p is None else p)
        weights = ["--gfdm", str(base / "gfdm"), "--gidm", str(base / "gidm")]
    t0 = time.time()
    cli(
        ["train", "policy", "--root", root, "--select", labeled_sql(a), "--out", str(cell / "run"), "--init", init]
        + weights
        + [
            "--horizon",
            str(a.horizon),
            "--steps",
            str(a.policy_steps),
            "--train.batch_size",
            str(a.batch_size),
            "--train.seed",
            str(f),
            "--train.log_every",
            "25",
            "--train.ckpt_every",
            str(a.policy_steps),
            "--train.warmup_steps",
            str(min(50, a.policy_steps // 10)),
            "--data.shuffle_buffer",
            "256",
            "--no-progress",
        ]
        + (["--model.head_dim", "64"] if a.size < 64 else [])
        + extra
    )
    t_train = time.time() - t0
    cli(
        [
            "eval",
            "--policy",
            str(cell / "run"),
            "--env",
            "metaworld",
            "--tasks",
            ",".join(a.target_tasks),
            "--episodes",
            str(a.eval_episodes),
            "--seed",
            str(EVAL_SEED),
            "--max-steps",
            str(a.max_steps),
            "--videos",
            "0",
            "--workers",
            str(a.eval_workers),
            "--out",
            str(cell / "eval"),
            "--no-progress",
        ]
    )
    ev = json.loads((cell / "eval" / "results.json").read_text())
    res = {
        "variant": variant,
        "size": size,
        "p": p,
        "f": f,
        "per_task": ev["per_task"],
        "episodes": [[e["task"], e["episode"], bool(e["success"])] for e in ev["episodes"]],
        "seconds": {"train": t_train, "eval": time.time() - t0 - t_train},
    }
    image_reliance(cell / "run")  # cached beside the cell (kept: the checkpoint is not)
    atomic_json(work / "cells" / f"{name}.json", res)
    return res


def plan(a: argparse.Namespace) -> list[tuple]:
    """Every unit of work in order: ("defi-pretrain"|"joint-pretrain", size, p) and
    ("cell", variant, size, p, f). Blocks: each pretraining seed at size 1 (its pretraining, its
    cells; scratch and the extras, which read seed 0's runs, in the first), the curve."""
    fs, items = a.finetune_seeds, []
    p0 = a.pretrain_seeds[0]
    for p in a.pretrain_seeds:
        items.append(("defi-pretrain", MAIN, p))
        if "entangled" in a.variants:
            items.append(("joint-pretrain", MAIN, p))
        for f in fs:
            items += [("cell", v, MAIN, p, f) for v in a.variants if v != "scratch"]
            if "scratch" in a.variants and p == p0:
                items.append(("cell", "scratch", MAIN, None, f))
        if p == p0:
            items += [("cell", v, MAIN, p0, f) for v in a.extras for f in fs]
    for size in a.curve:
        if size != MAIN:
            items.append(("defi-pretrain", size, p0))
    items += [("cell", "defi", size, p0, f) for size in a.curve if size != MAIN for f in fs]
    return items


def item_done(work: Path, item: tuple) -> bool:
    if item[0] == "cell":
        return (work / "cells" / f"{cell_name(*item[1:])}.json").exists()
    base = pretrain_dir(work, item[1], item[2])
    runs = ("gidm", "gfdm") if item[0] == "defi-pretrain" else ("joint",)
    return all((base / r / "done").exists() for r in runs)


def pretraining_needed(work: Path, a: argparse.Namespace, item: tuple, items: list[tuple]) -> bool:
    """Whether a pretraining item still has a reader: a cell not yet done that loads it (scratch
    cells take their shapes from seed 0's size-1 defi runs), or the curve's GIDM probe not yet kept.
    False lets a run restored from --keep skip pretraining whose results are all kept."""
    kind, size, p = item
    p0 = a.pretrain_seeds[0]
    if kind == "defi-pretrain" and size in a.curve and p == p0 and not (pretrain_dir(work, size, p) / "probe.json").exists():
        return True
    for it in items:
        if it[0] != "cell" or item_done(work, it):
            continue
        _, v, s, q, _ = it
        entangled = EXTRAS.get(v, (v,))[0] == "entangled"
        if entangled == (kind == "joint-pretrain") and s == size and (q == p or (q is None and p == p0)):
            return True
    return False


def item_text(item: tuple) -> str:
    if item[0] == "cell":
        _, v, size, p, f = item
        return f"cell {v} size x{size}" + ("" if p is None else f" p{p}") + f" f{f}"
    return f"{item[0]} size x{item[1]} p{item[2]}"


def eta_text(items_left: list[tuple], spent: dict[str, list[float]]) -> str:
    """Minutes left from the mean time of each kind of item (cell, defi-pretrain, joint-pretrain)
    run in this call; kinds not yet timed are named instead of guessed."""
    total, untimed = 0.0, set()
    for it in items_left:
        if spent.get(it[0]):
            total += float(np.mean(spent[it[0]]))
        else:
            untimed.add(it[0])
    if not spent:
        return "ETA after the first item"
    return f"ETA {total / 60:.0f} min" + (f" + the untimed {', '.join(sorted(untimed))}" if untimed else "")


def image_reliance(run: Path, pairs_per_clip: int = 4, seed: int = 0) -> dict:
    """Does a finetuned policy use its image? The standardised MSE of the action chunk it predicts
    (samples, for a diffusion head) on its own labeled demos (every clip, ``pairs_per_clip`` start
    frames each, in order) with the true observation, with the observation of another sample of
    the same instruction, and with a blank (mean grey) frame. A policy whose three numbers agree
    ignores the image: it outputs one chunk per instruction (an open-loop, per-task mean). Cached
    as ``RUN/../reliance.json``."""
    import torch

    from defi.schemas.corpus import Corpus
    from defi.schemas.gap import Gap
    from defi.schemas.selection import resolve_selection
    from defi.training.checkpoint import load_checkpoint
    from defi.training.data import ActionChunkDataset, collate_items
    from defi.training.recipes.policy import last_checkpoint

    cache = run.parent / "reliance.json"
    if cache.exists():
        return json.loads(cache.read_text())
    rc = json.loads((run / "run_config.json").read_text())
    policy, pcfg, state = load_checkpoint(last_checkpoint(run))
    policy.eval()
    corpus = Corpus.open(rc["root"])
    ds = ActionChunkDataset(
        resolve_selection(corpus, rc["select"]),
        corpus.shard_url,
        gap=Gap.of_frames(1),
        size=pcfg.image_size,
        pairs_per_clip=pairs_per_clip,
        shuffle=False,
        seed=seed,
        horizon=pcfg.horizon,
        context=pcfg.context_frames,
    )
    b = collate_items(list(ds))
    obs = b["context"].flatten(1, 2) if pcfg.context_frames > 1 else b["obs"]
    texts = state.get("instructions", {})
    text = torch.tensor([texts.get(t, [0.0] * pcfg.text_dim) for t in b["lang"]], dtype=torch.float32) if pcfg.text_dim else None
    langs = np.array(b["lang"])
    perm, rng = np.arange(len(langs)), np.random.default_rng(seed)
    for lang in sorted(set(langs)):
        idx = np.flatnonzero(langs == lang)
        perm[idx] = rng.permutation(idx)
    out = {"samples": len(langs)}
    with torch.no_grad():
        for name, o in (("true", obs), ("other_same_task", obs[perm]), ("blank", torch.full_like(obs, float(obs.mean())))):
            sq, count, gen = 0.0, 0.0, torch.Generator().manual_seed(seed)
            for i in range(0, len(o), 64):
                sl = slice(i, i + 64)
                # the chunk the policy would act with (a diffusion head's sample, with a fixed seed)
                pred = policy(o[sl], None if text is None else text[sl], generator=gen)["actions"]
                m = b["action_mask"][sl].unsqueeze(-1).float()
                sq += float((((pred - b["action_chunk"][sl]) / policy.action_std) ** 2 * m).sum())
                count += float(m.sum()) * pred.shape[-1]
            out[name] = sq / max(count, 1.0)
    atomic_json(cache, out)
    return out


def gidm_probe(work: Path, root: str, a: argparse.Namespace, size: str, p: int, pairs: dict | None = None) -> dict:
    """``gidm_quality``'s probes of the defi GIDM of (size, p) on the target tasks' demos (every
    2nd pair): R^2 of hand displacement (``disp``) and commanded action (``cmd``) from the latent,
    from the observation-only control ``pca_obs``, and from both (``obs+latent``). Cached as
    ``pretrain/x<size>-p<p>/probe.json``; ``pairs``: the demos' pairs when already read."""
    from defi.training.checkpoint import load_checkpoint
    from defi.training.gidm.latent_probe import encode_all, probe, probe_pairs
    from defi.training.recipes.loop import last_checkpoint

    cache = pretrain_dir(work, size, p) / "probe.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pairs = pairs or probe_pairs(root, labeled_sql(a), a.gap_frames, a.size, stride=2)
    model, cfg, _ = load_checkpoint(last_checkpoint(pretrain_dir(work, size, p) / "gidm"))
    res = probe(pairs, encode_all(model, pairs["obs"], pairs["next_obs"], "cpu"), cfg.num_codes)
    out = {t: {k: res["r2"][t][k] for k in ("latent", "pca_obs", "obs+latent")} for t in ("disp", "cmd")}
    out |= {"pairs": res["pairs"], "episodes": res["episodes"]}
    atomic_json(cache, out)
    return out


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def outcome_array(cells: list[dict], tasks: list[str], ps: list, fs: list[int]) -> np.ndarray:
    """Successes [pretraining seed, finetuning seed, task, episode] (0/1) of one variant's cells."""
    by = {(c["p"], c["f"]): c for c in cells}
    n = max(e[1] for c in cells for e in c["episodes"]) + 1
    m = np.zeros((len(ps), len(fs), len(tasks), n))
    for i, p in enumerate(ps):
        for j, f in enumerate(fs):
            for task, ep, ok in by[(p, f)]["episodes"]:
                m[i, j, tasks.index(task), ep] = ok
    return m


def bootstrap(x: np.ndarray, y: np.ndarray | None = None, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean success of ``x`` (minus ``y``) with a bootstrap 95% interval; arrays [P, F, T, N] as
    ``outcome_array``. Each replicate resamples the pretraining seeds of x and of y independently
    (their runs are unrelated), then the finetuning seeds (the same draw for both: paired by f),
    then the episode indices per finetuning seed and task (the same for both: the same layouts)."""
    rng = np.random.default_rng(seed)
    _, f, t, n = x.shape
    if y is not None and y.shape[1:] != x.shape[1:]:
        raise ValueError(f"paired arrays differ in finetuning seeds, tasks or episodes: {x.shape} vs {y.shape}")

    def draw(m: np.ndarray, fi: np.ndarray, ei: np.ndarray) -> float:
        ms = m[rng.integers(0, len(m), len(m))][:, fi]
        return float(np.take_along_axis(ms, np.broadcast_to(ei, ms.shape), 3).mean())

    stats = np.empty(reps)
    for r in range(reps):
        fi = rng.integers(0, f, f)
        ei = rng.integers(0, n, (f, t, n))
        stats[r] = draw(x, fi, ei) - (draw(y, fi, ei) if y is not None else 0.0)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(x.mean() - (y.mean() if y is not None else 0.0)), float(lo), float(hi)


def complete_grid(cells: list[dict], fs: list[int]) -> list:
    """The pretraining seeds of ``cells`` that have a cell for every finetuning seed in ``fs``."""
    have = {(c["p"], c["f"]) for c in cells}
    return sorted({c["p"] for c in cells if all((c["p"], f) in have for f in fs)}, key=lambda p: -1 if p is None else p)


def compare(x_cells: list[dict], y_cells: list[dict], tasks: list[str]) -> dict | None:
    """The paired bootstrap of x - y over the finetuning seeds both have, with each side's
    pretraining seeds that are complete for them; None when they share nothing yet."""
    fs = sorted({c["f"] for c in x_cells} & {c["f"] for c in y_cells})
    px, py = complete_grid(x_cells, fs), complete_grid(y_cells, fs)
    if not fs or not px or not py:
        return None
    x, y = outcome_array(x_cells, tasks, px, fs), outcome_array(y_cells, tasks, py, fs)
    if x.shape[3] != y.shape[3]:
        return None
    d, lo, hi = bootstrap(x, y)
    return {"diff": d, "bootstrap95": [lo, hi], "pretrain_seeds": [px, py], "finetune_seeds": fs}


def success_rate(cell: dict, tasks: list[str]) -> float:
    return sum(cell["per_task"][t]["successes"] for t in tasks) / sum(cell["per_task"][t]["episodes"] for t in tasks)


def row_stats(cells: list[dict], tasks: list[str]) -> dict:
    """Success per task and over all tasks: mean over cells, Wilson 95% of the pooled successes."""
    from defi.training.sim.evaluate import wilson

    row = {}
    for task in tasks + ["all"]:
        ts = tasks if task == "all" else [task]
        k = sum(c["per_task"][t]["successes"] for c in cells for t in ts)
        n = sum(c["per_task"][t]["episodes"] for c in cells for t in ts)
        mean = float(np.mean([success_rate(c, ts) for c in cells]))
        row[task] = {"mean": mean, "successes": k, "episodes": n, "wilson95": list(wilson(k, n))}
    row["cells"] = len(cells)
    row["per_seed"] = [
        {"p": c["p"], "f": c["f"]} | {task: success_rate(c, tasks if task == "all" else [task]) for task in tasks + ["all"]}
        for c in sorted(cells, key=lambda c: (-1 if c["p"] is None else c["p"], c["f"]))
    ]
    rel = [c["reliance"] for c in cells if c.get("reliance")]
    if rel:
        row["reliance"] = {k: float(np.mean([r[k] for r in rel])) for k in ("true", "other_same_task", "blank")}
    return row


def trend(points: list[dict]) -> str:
    """ "non-decreasing" or where the mean success falls from one size to the next (fewer than
    two sizes finished: no trend to read)."""
    if len(points) < 2:
        return f"no trend yet: {len(points)} pretraining size{'' if len(points) == 1 else 's'} finished"
    falls = [
        f"{a['episodes_per_task']} -> {b['episodes_per_task']} episodes/task ({100 * a['mean']:.1f}% -> {100 * b['mean']:.1f}%)"
        for a, b in pairwise(points)
        if b["mean"] < a["mean"]
    ]
    return "non-decreasing" if not falls else "decreasing at " + "; ".join(falls)


def verdict(d: dict) -> str:
    lo, hi = d["bootstrap95"]
    if lo > 0:
        return "positive (the interval excludes 0)"
    if hi < 0:
        return "negative (the interval excludes 0)"
    return "cannot tell the sign at this size"


def statistics(cells: list[dict], a: argparse.Namespace, probes: dict) -> dict:
    tasks = a.target_tasks
    main = {v: [c for c in cells if c["variant"] == v and c["size"] == MAIN] for v in (*a.variants, *a.extras)}
    out = {"rows": {v: row_stats(cs, tasks) for v, cs in main.items() if cs}, "comparisons": {}}
    for x, y in COMPARISONS:
        if main.get(x) and main.get(y):
            x_cells = main[x]
            if x in EXTRAS:  # compared with its baseline at the same pretraining seed(s)
                y_cells = [c for c in main[y] if c["p"] in {c2["p"] for c2 in x_cells}]
            else:
                y_cells = main[y]
            if d := compare(x_cells, y_cells, tasks):
                out["comparisons"][f"{x} - {y}"] = d | {"variant": x, "baseline": y, "verdict": verdict(d)}
    points = []
    p0 = a.pretrain_seeds[0]
    for size in a.curve:
        cs = [c for c in cells if c["variant"] == "defi" and c["size"] == size and c["p"] == p0]
        if not cs:
            continue
        fs = sorted(c["f"] for c in cs)
        m, lo, hi = bootstrap(outcome_array(cs, tasks, [p0], fs))
        points.append(
            {
                "size": size,
                "episodes_per_task": episodes_per_task(a, size),
                "mean": m,
                "bootstrap95": [lo, hi],
                "finetune_seeds": fs,
                "probe": probes.get(size),
            }
        )
    if points:
        out["curve"] = {"points": points, "trend": trend(points)}
    return out


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def pct(v: float) -> str:
    return f"{100 * v:+.1f}"


def table_text(t: dict, tasks: list[str], quick: bool = False) -> str:
    cols = tasks + ["all"]
    lines = [
        "setting A (target tasks not in pretraining), pretraining size x1",
        f"  {'variant':<20}" + "".join(f"{c[:22]:>24}" for c in cols),
    ]
    for v, row in t["rows"].items():
        cells = [f"{100 * row[c]['mean']:5.1f} [{100 * row[c]['wilson95'][0]:4.1f},{100 * row[c]['wilson95'][1]:5.1f}]" for c in cols]
        rel = row.get("reliance")
        mse = f"   demo MSE {rel['true']:.2f} / {rel['other_same_task']:.2f} / {rel['blank']:.2f}" if rel else ""
        lines.append(f"  {v:<20}" + "".join(f"{x:>24}" for x in cells) + f"   {row['cells']} cells{mse}")
    lines.append("  per seed (p = pretraining seed, f = finetuning seed; success %):")
    for v, row in t["rows"].items():
        for s in row["per_seed"]:
            ps = "-" if s["p"] is None else s["p"]
            lines.append(f"    {v:<20} p {ps} f {s['f']}" + "".join(f"{100 * s[c]:>24.1f}" for c in cols))
    for key, d in t["comparisons"].items():
        lo, hi = d["bootstrap95"]
        seeds = f"(pretraining seeds {d['pretrain_seeds'][0]} vs {d['pretrain_seeds'][1]}, finetuning seeds {d['finetune_seeds']})"
        if quick:  # a miniature: the sign only where its interval settles it
            lines.append(f"  {key}: {d['verdict']}, bootstrap 95% [{pct(lo)}, {pct(hi)}] {seeds}")
        else:
            lines.append(f"  {key}: {pct(d['diff'])} points, bootstrap 95% [{pct(lo)}, {pct(hi)}], {d['verdict']} {seeds}")
    if c := t.get("curve"):
        lines.append(
            "  curve (defi, pretraining seed 0): episodes/task  success [bootstrap 95%]  probe R^2 disp latent / obs-only, cmd latent / obs-only"
        )
        for pt in c["points"]:
            pr = pt["probe"]
            r2 = (
                f"{pr['disp']['latent']:.3f} / {pr['disp']['pca_obs']:.3f}, {pr['cmd']['latent']:.3f} / {pr['cmd']['pca_obs']:.3f}"
                if pr
                else "-"
            )
            lines.append(
                f"    x{pt['size']:<5} {pt['episodes_per_task']:>4}   {100 * pt['mean']:5.1f} [{100 * pt['bootstrap95'][0]:4.1f}, "
                f"{100 * pt['bootstrap95'][1]:5.1f}]   {r2}"
            )
        lines.append(f"  success with pretraining video: {c['trend']}")
    return "\n".join(lines)


def bars_svg(t: dict, tasks: list[str], title: str) -> str:
    """Grouped vertical bars (one group per task + all, one bar per variant) with Wilson whiskers;
    each bar carries data-variant, data-task, data-value, data-lo, data-hi."""
    from defi.pipelines.views.svg import _num, esc, palette

    cols = tasks + ["all"]
    variants = list(t["rows"])
    bw, gap, h, top, left = 14, 18, 160, 28, 34
    gw = bw * len(variants) + gap
    width = max(left + gw * len(cols) + 10, left + 150 * min(3, len(variants)), 7 * len(title) + left)  # bars, legend, title
    height = top + h + 40 + 14 * ((len(variants) + 2) // 3)
    y = lambda v: top + h * (1 - v)  # noqa: E731
    out = [
        f'<svg class="chart ablation" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" data-title="{esc(title)}">',
        f'<text x="{left}" y="14" font-size="12">{esc(title)}</text>',
    ]
    for p in (0, 0.5, 1):
        out.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{_num(y(p))}" y2="{_num(y(p))}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{_num(y(p) + 3)}" font-size="9" text-anchor="end">{int(100 * p)}%</text>'
        )
    for ci, c in enumerate(cols):
        gx = left + ci * gw + gap / 2
        for vi, v in enumerate(variants):
            r = t["rows"][v][c]
            lo, hi = r["wilson95"]
            x = gx + vi * bw
            out.append(
                f'<rect class="bar" data-variant="{esc(v)}" data-task="{esc(c)}" data-value="{_num(r["mean"])}" '
                f'data-lo="{_num(lo)}" data-hi="{_num(hi)}" x="{_num(x)}" y="{_num(y(r["mean"]))}" '
                f'width="{bw - 2}" height="{_num(h * r["mean"])}" fill="{palette(vi)}"/>'
            )
            xm = _num(x + (bw - 2) / 2)
            out.append(f'<line class="whisker" x1="{xm}" x2="{xm}" y1="{_num(y(lo))}" y2="{_num(y(hi))}" stroke="#222"/>')
        out.append(
            f'<text x="{_num(gx + bw * len(variants) / 2)}" y="{top + h + 14}" font-size="9" text-anchor="middle">{esc(c[:24])}</text>'
        )
    for vi, v in enumerate(variants):
        lx, ly = left + (vi % 3) * 150, top + h + 32 + 14 * (vi // 3)
        out.append(
            f'<rect x="{lx}" y="{ly - 8}" width="9" height="9" fill="{palette(vi)}"/>'
            f'<text x="{lx + 13}" y="{ly}" font-size="10">{esc(v)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def curve_svg(curve: dict) -> str:
    """Two panels against pretraining episodes per task (log2 spacing): defi's success with its
    bootstrap whiskers (``class="pt"`` circles with data-episodes/-value/-lo/-hi), and the GIDM
    probe's R^2 of the hand displacement from the latent and from the observation-only control."""
    from defi.pipelines.views.svg import _num, esc, palette

    pts = curve["points"]
    xs = [float(np.log2(p["episodes_per_task"])) for p in pts]
    x0, x1 = min(xs), (max(xs) if max(xs) > min(xs) else min(xs) + 1)
    pw, ph, top, left, gap = 220, 150, 44, 40, 60
    width, height = left + 2 * pw + gap + 20, top + ph + 46
    out = [
        f'<svg class="chart curve" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'data-trend="{esc(curve["trend"])}">',
        f'<text x="{left}" y="14" font-size="12">defi success and GIDM probe R² vs. action-free pretraining episodes per task</text>',
    ]

    def panel(ox: float, label: str, lo: float, hi: float, series: list[tuple[str, list, str]], whiskers: bool) -> None:
        y = lambda v: top + ph * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))  # noqa: E731  (clipped to the panel)
        x = lambda v: ox + pw * (v - x0) / (x1 - x0)  # noqa: E731
        out.append(f'<text x="{ox}" y="{top - 6}" font-size="10">{esc(label)}</text>')
        for tick in (lo, (lo + hi) / 2, hi):
            out.append(
                f'<line x1="{ox}" x2="{ox + pw}" y1="{_num(y(tick))}" y2="{_num(y(tick))}" stroke="#ddd"/>'
                f'<text x="{ox - 4}" y="{_num(y(tick) + 3)}" font-size="9" text-anchor="end">{tick:.2g}</text>'
            )
        for p, xv in zip(pts, xs, strict=True):
            out.append(f'<text x="{_num(x(xv))}" y="{top + ph + 14}" font-size="9" text-anchor="middle">{p["episodes_per_task"]}</text>')
        out.append(f'<text x="{ox + pw / 2}" y="{top + ph + 28}" font-size="9" text-anchor="middle">episodes per task</text>')
        for si, (name, vals, color) in enumerate(series):
            d = "".join(
                f"{'L' if i else 'M'}{_num(x(xv))} {_num(y(v))}"
                for i, (xv, v) in enumerate((xv, v) for xv, v in zip(xs, vals, strict=True) if v is not None)
            )
            if d:
                out.append(f'<path class="series" data-name="{esc(name)}" d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            out.append(f'<text x="{ox + 4 + 110 * si}" y="{top + ph + 40}" font-size="9" fill="{color}">{esc(name)}</text>')
        for p, xv in zip(pts, xs, strict=True) if whiskers else ():
            blo, bhi = p["bootstrap95"]
            out.append(
                f'<line class="whisker" x1="{_num(x(xv))}" x2="{_num(x(xv))}" y1="{_num(y(blo))}" y2="{_num(y(bhi))}" stroke="#222"/>'
                f'<circle class="pt" data-episodes="{p["episodes_per_task"]}" data-value="{_num(p["mean"])}" data-lo="{_num(blo)}" '
                f'data-hi="{_num(bhi)}" cx="{_num(x(xv))}" cy="{_num(y(p["mean"]))}" r="3" fill="{palette(0)}"/>'
            )

    panel(left, "success (bootstrap 95%)", 0.0, 1.0, [("defi", [p["mean"] for p in pts], palette(0))], whiskers=True)
    lat = [p["probe"]["disp"]["latent"] if p.get("probe") else None for p in pts]
    obs = [p["probe"]["disp"]["pca_obs"] if p.get("probe") else None for p in pts]
    vals = [v for v in lat + obs if v is not None]
    lo = max(-1.0, min([0.0] + vals))  # a probe worse than R^2 = -1 is drawn at -1
    panel(
        left + pw + gap,
        "probe R² of hand displacement",
        float(np.floor(lo * 10) / 10),
        1.0,
        [("latent", lat, palette(1)), ("obs only", obs, palette(2))],
        whiskers=False,
    )
    out.append("</svg>")
    return "".join(out)


def report_html(res: dict) -> str:
    from defi.pipelines.views.browse import render_page
    from defi.pipelines.views.svg import esc

    c = res["config"]
    t = res["table"]
    parts = [
        f"<h1>DeFI ablation, issue 37 ({esc(res['config_name'])})</h1>",
        f"<pre class='sql'>{esc(res['command'])}</pre>",
        f"<p>{esc(res['status'])}. Setting A: target tasks not in pretraining. Pretraining tasks: "
        f"{esc(', '.join(c['pretrain_tasks']))}; target tasks (by rule): {esc(', '.join(c['target_tasks']))}; "
        f"{c['demos']} labeled demos per target task; {c['eval_episodes']} eval episodes per task per cell "
        f"(env seed {EVAL_SEED}, at most {c['max_steps']} steps). Bars: mean success over cells; whiskers: "
        "Wilson 95% of the pooled successes.</p>",
    ]
    if t.get("rows"):
        parts.append(bars_svg(t, c["target_tasks"], "success per variant (pretraining size x1)"))
    if t.get("curve"):
        parts.append("<h2>More action-free video</h2>" + curve_svg(t["curve"]))
    parts.append(f"<pre>{esc(table_text(t, c['target_tasks'], res['config_name'] == 'quick'))}</pre>")
    return render_page("DeFI ablation", "".join(parts))


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="4 pretraining tasks, 2 targets, 1 x 2 seeds, no curve; full finetuning budget")
    size.add_argument("--smoke", action="store_true", help="smallest end-to-end configuration (tests)")
    p.add_argument("--work", help="work folder (default: TMPDIR/defi_ablation37[_quick|_smoke])")
    p.add_argument("--seed", type=int, default=0, help="data seed (pretraining set i: seed + 10 + i; demos: seed + 1)")
    p.add_argument("--gap-frames", type=int, default=10, help="k of GIDM/GFDM pretraining, frames (0.5 s)")
    p.add_argument("--eval-workers", type=int, default=1)
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray of curate")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--keep",
        help="folder that receives the run's small results (config, cells, probes) as they finish and restores them "
        "into --work when it lacks them: a study continued on another machine (e.g. a folder under git)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the table, results.json, report.html and curve.svg from the finished cells, run nothing "
        "(while a run is under way, or after it was stopped)",
    )
    a = p.parse_args(argv)
    a.config_name = "smoke" if a.smoke else "quick" if a.quick else "full"
    for k, v in CONFIGS[a.config_name].items():
        setattr(a, k, dict(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple | list) else v)
    a.target_tasks = target_tasks(a.targets)
    a.work = a.work or str(Path(tempfile.gettempdir()) / ("defi_ablation37" + ("" if a.config_name == "full" else "_" + a.config_name)))
    return a


def check_variants(a: argparse.Namespace) -> None:
    from defi.training.policy.configuration_policy import INITS

    missing = [v for v in (*a.variants, *(EXTRAS[e][0] for e in a.extras)) if v not in INITS]
    if missing:
        raise SystemExit(f"this checkout's `defi train policy --init` has no {', '.join(missing)} (valid: {', '.join(INITS)})")


def main(argv=None) -> dict:
    import torch

    a = parse(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(a, k) for k in CONFIGS["full"]} | {
        "target_tasks": a.target_tasks,
        "seed": a.seed,
        "gap_frames": a.gap_frames,
        "eval_seed": EVAL_SEED,
    }
    saved = work / "config.json"
    cmd = "bench/defi_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"[ablation] configuration {a.config_name}"
        + (
            ""
            if a.config_name == "full"
            else f" (NOT the full run: {len(a.pretrain_tasks)} pretraining tasks, {len(a.target_tasks)} targets, "
            f"pretraining seeds {a.pretrain_seeds}, finetuning seeds {a.finetune_seeds})"
        )
        + f"; work {work}\n[ablation] target tasks (rule: MT50 - pretraining - GIDM bench held-out, "
        f"rng({TARGET_RULE_SEED}) permutation, first {a.targets}): {', '.join(a.target_tasks)}",
        flush=True,
    )
    keep = Path(a.keep) if a.keep else None
    if keep and (n := restore_kept(work, keep)):
        print(f"[ablation] restored {n} kept result files from {keep}", flush=True)
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(config)):
        raise SystemExit(f"{work} holds a run of another configuration ({saved}); use another --work")
    t0 = time.time()
    if a.report_only:
        return summarise(work, a, config, cmd, 0.0, keep)
    check_variants(a)
    atomic_json(saved, config)
    items = plan(a)
    todo = [it for it in items if not item_done(work, it) and (it[0] == "cell" or pretraining_needed(work, a, it, items))]
    root = data(work, a) if todo else str(work / "corpus")
    spent: dict[str, list[float]] = {}
    for i, item in enumerate(items, 1):
        head = f"[{i}/{len(items)}] {item_text(item)}"
        if item not in todo:
            done = item_done(work, item)
            print(f"{head}: " + ("done, skipped" if done else "skipped, every result that reads it is kept"), flush=True)
            continue
        left = [it for it in todo[todo.index(item) :] if not item_done(work, it)]
        print(f"{head}: running (items left: {len(left)}, {eta_text(left, spent)})", flush=True)
        t = time.time()
        if item[0] == "defi-pretrain":
            pretrain_defi(work, root, a, item[1], item[2])
            if item[1] in a.curve and item[2] == a.pretrain_seeds[0]:
                gidm_probe(work, root, a, item[1], item[2])  # the curve's probe, kept
        elif item[0] == "joint-pretrain":
            pretrain_joint(work, root, a, item[1], item[2])
        else:
            run_cell(work, root, a, *item[1:])
        spent.setdefault(item[0], []).append(time.time() - t)
        if keep:
            save_kept(work, keep)
    return summarise(work, a, config, cmd, time.time() - t0, keep)


def summarise(work: Path, a: argparse.Namespace, config: dict, cmd: str, wall: float, keep: Path | None = None) -> dict:
    items = [it for it in plan(a) if it[0] == "cell"]
    names = {cell_name(*it[1:]) for it in items}
    cells = [json.loads(p.read_text()) for p in sorted((work / "cells").glob("*.json")) if p.stem in names]
    for c in cells:
        run = work / "cells" / cell_name(c["variant"], c["size"], c["p"], c["f"]) / "run"
        if (run.parent / "reliance.json").exists() or any((run / "checkpoints").glob("step-*")):
            c["reliance"] = image_reliance(run)
    probes, pairs = {}, None
    root = str(work / "corpus")
    for size in a.curve:
        kept = (pretrain_dir(work, size, a.pretrain_seeds[0]) / "probe.json").exists()
        if kept or item_done(work, ("defi-pretrain", size, a.pretrain_seeds[0])):
            if pairs is None and not (pretrain_dir(work, size, a.pretrain_seeds[0]) / "probe.json").exists():
                from defi.training.gidm.latent_probe import probe_pairs

                pairs = probe_pairs(root, labeled_sql(a), a.gap_frames, a.size, stride=2)
            probes[size] = gidm_probe(work, root, a, size, a.pretrain_seeds[0], pairs)
    res = {"config_name": a.config_name, "config": config, "command": cmd, "wall_s_this_call": wall}
    res["table"] = statistics(cells, a, probes)
    res["cells_done"], res["cells_expected"] = len(cells), len(items)
    res["status"] = ("complete" if len(cells) == len(items) else f"PARTIAL: {len(cells)} of {len(items)} cells") + (
        "" if a.config_name == "full" else f"; {a.config_name} configuration, not the full run"
    )
    atomic_json(work / "results.json", res)
    if keep:
        save_kept(work, keep)
    tmp = work / f"report.html.tmp{os.getpid()}"
    tmp.write_text(report_html(res))
    os.replace(tmp, work / "report.html")
    if res["table"].get("curve"):
        from defi.pipelines.views.svg import standalone

        (work / "curve.svg").write_text(standalone(curve_svg(res["table"]["curve"])))
    print(f"\nDeFI ablation, {res['status']} ({wall / 60:.1f} min this call)")
    print(table_text(res["table"], a.target_tasks, a.config_name == "quick"))
    if any("reliance" in r for r in res["table"]["rows"].values()):
        print(
            "demo MSE: standardised action MSE on the labeled demos with the true image / another sample's image of the "
            "same task / a blank frame (equal numbers: the policy ignores its image)"
        )
    print(
        f"results {work / 'results.json'}\nreport  {work / 'report.html'}"
        + (f"\ncurve   {work / 'curve.svg'}" if res["table"].get("curve") else "")
    )
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
