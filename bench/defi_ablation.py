"""Does forward + inverse pretraining beat scratch at equal labeled data? DeFI's claim in miniature.

    nice -n 10 .venv/bin/python bench/defi_ablation.py            # full: 8 + 3 tasks, 3 seeds, 2 settings
    nice -n 10 .venv/bin/python bench/defi_ablation.py --quick    # 4 pretraining tasks, 2 targets, 2 seeds, setting A
    .venv/bin/python bench/defi_ablation.py --smoke --work DIR    # smallest end-to-end run (the test's)
    make bench-ablation [QUICK=1]

1. Data (``gidm_quality.make_corpus``: ``defi.training.sim.generate`` + ``run_curate``, one corpus):
   scripted-expert Meta-World episodes of the pretraining tasks written *action-free*, and
   ``--demos`` expert demos with actions per target task (other tasks; layouts of seed+1). With
   setting B in ``--settings`` the target tasks' own episodes are also written action-free
   (layouts of seed, not the demos').
2. Pretraining per setting, with the CLI (``defi.pipelines.cli.main``): ``defi train gidm`` and
   ``defi train gfdm --model tiny`` on the action-free clips (SQL: their language AND NOT
   has_actions). Setting A: the pretraining tasks only; B: plus the target tasks' action-free video
   (the paper's regime: the released GFDM mix holds CALVIN video). One pretraining run (seed 0) per
   setting; seeds vary the finetuning.
3. Cells: ``defi train policy --init VARIANT --train.seed SEED`` on the target tasks' labeled demos
   (same clips, same steps, same batch for every variant), then ``defi eval`` on the target tasks
   with the same env seed (held-out layouts, ``EVAL_SEED``) for every variant and seed. Each cell
   writes ``WORK/cells/<setting>/<variant>-s<seed>.json`` atomically: re-running skips finished
   cells (and the pretraining runs resume), so an interrupted run picks up where it stopped.
4. Table: success per variant and task (mean over seeds; Wilson 95% interval of the successes
   pooled over seeds), and a paired bootstrap 95% interval of ``defi`` minus ``scratch`` (seeds
   resampled, then episodes, the same episode index for both: the same layout). Written to
   ``WORK/results.json`` and ``WORK/report.html`` (inline SVG bars with intervals).

Tasks, seeds and sizes are fixed below, chosen before any result was seen; they are not to be
changed after looking at results.

5. Follow-ups (``--followups NAME,...`` or ``all``): extra cells named in ``FOLLOWUPS``, written
   *after* the quick run's result (defi below scratch, split by the pretrained GIDM) to test what
   might explain it: a slower or frozen pretrained GIDM, 4x finetuning steps (for defi and for
   scratch), a 5-step action chunk (both). They run after the main cells in the same folder, with
   the same seeds and env seed; each is compared with its own baseline (its entry's last field) by the same paired
   bootstrap. They are not part of the main table's count of cells.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gidm_quality import DEFAULT_MODEL_SET as GIDM_MODEL_SET  # noqa: E402  (the GIDM bench's best setting)
from gidm_quality import EVAL_TASKS, TRAIN_TASKS, make_corpus, sql_for_tasks  # noqa: E402

from defi.training.policy.configuration_policy import INITS as VARIANTS  # noqa: E402  (every --init variant)

# Follow-ups, fixed after the quick result and before any of theirs: name -> (init, extra `defi
# train policy` flags, factor on the finetuning steps, action chunk H or None for the config's,
# baseline it is compared with).
FOLLOWUPS = {
    "defi-gidm-lr0.1": ("defi", ["--policy.gidm_lr_scale", "0.1"], 1, None, "scratch"),
    "defi-gidm-frozen": ("defi", ["--policy.gidm_lr_scale", "0"], 1, None, "scratch"),
    "defi-4x-steps": ("defi", [], 4, None, "scratch-4x-steps"),
    "scratch-4x-steps": ("scratch", [], 4, None, None),
    "defi-h5": ("defi", [], 1, 5, "scratch-h5"),
    "scratch-h5": ("scratch", [], 1, 5, None),
    # issue 38, fixed before any run of it: does the release's diffusion head beat the MLP head at
    # this size? Same data, steps and seeds as defi; compared with defi itself.
    "defi-diffusion-head": ("defi", ["--policy.head", "diffusion"], 1, None, "defi"),
}
SETTINGS = {"A": "target tasks not in pretraining", "B": "target tasks' action-free video added to pretraining"}
EVAL_SEED = 1000  # layouts of the evaluation episodes: neither the pretraining (seed) nor the demos' (seed+1)

# Fixed before any result (issue 21). full: the GIDM bench's 8 training tasks; 3 of its held-out
# tasks as targets. quick: 4 + 2. smoke: the smallest run that exercises every step.
CONFIGS = {
    "full": dict(
        pretrain_tasks=TRAIN_TASKS,
        target_tasks=EVAL_TASKS[:3],
        settings="A,B",
        seeds=(0, 1, 2),
        episodes=20,
        demos=10,
        size=64,
        gidm_steps=1500,
        gfdm_steps=800,
        policy_steps=600,
        batch_size=16,
        eval_episodes=50,
        max_steps=120,
        horizon=10,
    ),
    "quick": dict(
        pretrain_tasks=["reach-v3", "push-v3", "door-open-v3", "drawer-open-v3"],
        target_tasks=["drawer-close-v3", "button-press-v3"],
        settings="A",
        seeds=(0, 1),
        episodes=6,
        demos=10,
        size=64,
        gidm_steps=250,
        gfdm_steps=150,
        policy_steps=120,
        batch_size=16,
        eval_episodes=10,
        max_steps=100,
        horizon=10,
    ),
    "smoke": dict(
        pretrain_tasks=["reach-v3", "push-v3"],
        target_tasks=["drawer-close-v3"],
        settings="A",
        seeds=(0,),
        episodes=1,
        demos=2,
        size=32,
        gidm_steps=2,
        gfdm_steps=2,
        policy_steps=2,
        batch_size=4,
        eval_episodes=2,
        max_steps=10,
        horizon=4,
    ),
}
GFDM_SMALL = [
    "--model.block_out_channels",
    "16,32",
    "--model.down_block_types",
    "DownBlock2D,CrossAttnDownBlock2D",
    "--model.up_block_types",
    "CrossAttnUpBlock2D,UpBlock2D",
    "--model.cross_attention_dim",
    "16",
]


def atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def cli(args: list[str]) -> None:
    from defi.pipelines.cli import main as defi_main

    print("[run] defi " + " ".join(f'"{x}"' if " " in x else x for x in args), flush=True)
    rc = defi_main(args)
    if rc:
        raise SystemExit(f"defi {args[0]} {args[1] if args[0] == 'train' else ''} failed with exit code {rc}")


def pretrain_sql(a: argparse.Namespace, setting: str) -> str:
    tasks = a.pretrain_tasks + (a.target_tasks if setting == "B" else [])
    return sql_for_tasks(tasks) + " AND NOT has_actions"


def labeled_sql(a: argparse.Namespace) -> str:
    return sql_for_tasks(a.target_tasks) + " AND has_actions"


# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------
def corpus_args(a: argparse.Namespace) -> argparse.Namespace:
    """The arguments ``gidm_quality.make_corpus`` reads (its own command line's), from ours."""
    return argparse.Namespace(
        train_tasks=a.pretrain_tasks + (a.target_tasks if "B" in a.settings else []),
        train_cameras=["corner"],  # the policy is evaluated from the camera it was pretrained on
        eval_tasks=a.target_tasks,
        episodes=a.episodes,
        eval_episodes=a.demos,
        seed=a.seed,
        size=a.size,
        fps=20,
        noise=0.1,
        max_steps=120,
        gen_workers=a.gen_workers,
        clip_s=3.0,
        cpus=a.cpus,
    )


def data(work: Path, a: argparse.Namespace) -> str:
    done = work / "corpus.done"
    if done.exists():
        print(f"[data] reusing {work / 'corpus'}")
        return str(work / "corpus")
    root = make_corpus(work, corpus_args(a))
    done.write_text("ok")
    return root


def pretrain(work: Path, root: str, a: argparse.Namespace, setting: str) -> tuple[str, str]:
    gidm, gfdm = work / f"pretrain-{setting}" / "gidm", work / f"pretrain-{setting}" / "gfdm"
    sql = pretrain_sql(a, setting)
    small = a.size < 64
    if not (gidm / "done").exists():
        args = [
            "train",
            "gidm",
            "--root",
            root,
            "--select",
            sql,
            "--out",
            str(gidm),
            "--model",
            "tiny",
            "--gap-frames",
            str(a.gap_frames),
            "--size",
            str(a.size),
            "--steps",
            str(a.gidm_steps),
            "--train.batch_size",
            str(a.batch_size),
            "--train.lr",
            "1e-3",
            "--train.log_every",
            "25",
            "--train.ckpt_every",
            str(max(a.gidm_steps // 2, 1)),
            "--train.warmup_steps",
            str(min(100, a.gidm_steps // 10)),
            "--data.pairs_per_clip",
            "16",
            "--data.shuffle_buffer",
            "256",
            "--no-progress",
            "--train.seed",
            "0",
            "--model.latent_dim",
            "16",
        ]
        for kv in GIDM_MODEL_SET:
            field, _, value = kv.partition("=")
            args += [f"--model.{field}", "8" if small and field == "keypoints" else value]
        cli(args)
        (gidm / "done").write_text("ok")
    if not (gfdm / "done").exists():
        args = [
            "train",
            "gfdm",
            "--root",
            root,
            "--select",
            sql,
            "--out",
            str(gfdm),
            "--model",
            "tiny",
            "--gap-frames",
            str(a.gap_frames),
            "--size",
            str(a.size),
            "--steps",
            str(a.gfdm_steps),
            "--model.objective",
            "regression",
            "--train.batch_size",
            str(a.batch_size),
            "--train.lr",
            "1e-3",
            "--train.log_every",
            "25",
            "--train.ckpt_every",
            str(max(a.gfdm_steps // 2, 1)),
            "--train.grid_every",
            str(max(a.gfdm_steps, 1)),
            "--train.warmup_steps",
            str(min(50, a.gfdm_steps // 10)),
            "--data.pairs_per_clip",
            "8",
            "--data.shuffle_buffer",
            "256",
            "--no-progress",
            "--train.seed",
            "0",
        ]
        if small:
            args += GFDM_SMALL
        cli(args)
        (gfdm / "done").write_text("ok")
    return str(gidm), str(gfdm)


def run_cell(work: Path, root: str, parts: tuple[str, str], a: argparse.Namespace, setting: str, variant: str, seed: int) -> dict:
    gidm, gfdm = parts
    cell = work / "cells" / setting / f"{variant}-s{seed}"
    init, extra, steps_factor, horizon, _ = FOLLOWUPS.get(variant, (variant, [], 1, None, None))
    steps, horizon = a.policy_steps * steps_factor, horizon or a.horizon
    t0 = time.time()
    cli(
        [
            "train",
            "policy",
            "--root",
            root,
            "--select",
            labeled_sql(a),
            "--gfdm",
            gfdm,
            "--gidm",
            gidm,
            "--out",
            str(cell / "run"),
            "--init",
            init,
            "--horizon",
            str(horizon),
            "--steps",
            str(steps),
            "--train.batch_size",
            str(a.batch_size),
            "--train.seed",
            str(seed),
            "--train.log_every",
            "25",
            "--train.ckpt_every",
            str(steps),
            "--train.warmup_steps",
            str(min(50, a.policy_steps // 10)),
            "--data.shuffle_buffer",
            "256",
            "--no-progress",
        ]
        + (["--policy.head_dim", "64"] if a.size < 64 else [])
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
        "setting": setting,
        "variant": variant,
        "seed": seed,
        "per_task": ev["per_task"],
        "episodes": [[e["task"], e["episode"], bool(e["success"])] for e in ev["episodes"]],
        "seconds": {"train": t_train, "eval": time.time() - t0 - t_train},
    }
    atomic_json(work / "cells" / setting / f"{variant}-s{seed}.json", res)
    return res


def image_reliance(run: Path, pairs_per_clip: int = 4, seed: int = 0) -> dict:
    """Does a finetuned policy use its image? The standardised action MSE on its own labeled demos
    (every clip, ``pairs_per_clip`` start frames each, in order) with the true observation, with
    the observation of another sample of the same instruction, and with a blank (mean grey)
    frame. A policy whose three numbers agree ignores the image: it outputs one chunk per
    instruction (an open-loop, per-task mean). Cached as ``RUN/../reliance.json``."""
    import torch

    from defi.schemas.corpus import Corpus
    from defi.schemas.gap import Gap
    from defi.schemas.selection import resolve_selection
    from defi.training.checkpoint import load_checkpoint
    from defi.training.data import ActionChunkDataset, collate_items
    from defi.training.recipes.train_policy import last_checkpoint

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
            total = 0.0
            for i in range(0, len(o), 64):
                sl = slice(i, i + 64)
                r = policy(o[sl], None if text is None else text[sl], b["action_chunk"][sl], b["action_mask"][sl])
                total += float(r["action_mse"]) * len(o[sl])
            out[name] = total / len(o)
    atomic_json(cache, out)
    return out


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def _matrix(cells: list[dict], variant: str, seeds: list[int], tasks: list[str]) -> np.ndarray:
    """successes [seed, task, episode] of one variant (0/1)."""
    by_seed = {c["seed"]: c for c in cells if c["variant"] == variant}
    n = max(e[1] for s in seeds for e in by_seed[s]["episodes"]) + 1
    m = np.zeros((len(seeds), len(tasks), n))
    for i, s in enumerate(seeds):
        for task, ep, ok in by_seed[s]["episodes"]:
            m[i, tasks.index(task), ep] = ok
    return m


def bootstrap_diff(x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean success of x minus y with a paired bootstrap 95% interval: seeds resampled, then
    episode indices per task (the same ones for x and y: the same layouts)."""
    rng = np.random.default_rng(seed)
    s, t, n = x.shape
    diffs = np.empty(reps)
    for r in range(reps):
        si = rng.integers(0, s, s)
        ei = rng.integers(0, n, (s, t, n))
        xs = np.take_along_axis(x[si], ei, 2)
        ys = np.take_along_axis(y[si], ei, 2)
        diffs[r] = xs.mean() - ys.mean()
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(x.mean() - y.mean()), float(lo), float(hi)


def table(cells: list[dict], tasks: list[str], seeds: list[int]) -> dict:
    from defi.training.sim.evaluate import wilson

    rows = {}
    for v in (*VARIANTS, *FOLLOWUPS):
        mine = [c for c in cells if c["variant"] == v]
        if not mine:
            continue
        row = {}
        for task in tasks + ["all"]:
            per_seed, k, n = [], 0, 0
            for c in mine:
                ts = tasks if task == "all" else [task]
                ks = sum(c["per_task"][t]["successes"] for t in ts)
                ns = sum(c["per_task"][t]["episodes"] for t in ts)
                per_seed.append(ks / ns)
                k, n = k + ks, n + ns
            row[task] = {
                "mean": float(np.mean(per_seed)),
                "per_seed": per_seed,
                "successes": k,
                "episodes": n,
                "wilson95": list(wilson(k, n)),
                "seeds": sorted(c["seed"] for c in mine),
            }
        rel = [c["reliance"] for c in mine if c.get("reliance")]
        if rel:
            row["reliance"] = {k: float(np.mean([r[k] for r in rel])) for k in ("true", "other_same_task", "blank")}
        rows[v] = row
    out = {"rows": rows}
    pairs = [("defi", "scratch")] + [(v, f[4]) for v, f in FOLLOWUPS.items() if f[4] and v in rows]
    for v, base in pairs:
        done = [s for s in seeds if all(any(c["variant"] == x and c["seed"] == s for c in cells) for x in (v, base))]
        if done:
            d, lo, hi = bootstrap_diff(_matrix(cells, v, done, tasks), _matrix(cells, base, done, tasks))
            key = "defi_minus_scratch" if v == "defi" else f"{v}_minus_{base}"
            out[key] = {"diff": d, "bootstrap95": [lo, hi], "seeds": done, "variant": v, "baseline": base}
    return out


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def table_text(setting: str, t: dict, tasks: list[str]) -> str:
    cols = tasks + ["all"]
    lines = [f"setting {setting} ({SETTINGS[setting]})", f"  {'variant':<18}" + "".join(f"{c[:22]:>24}" for c in cols)]
    for v, row in t["rows"].items():
        cells = []
        for c in cols:
            r = row[c]
            lo, hi = r["wilson95"]
            cells.append(f"{100 * r['mean']:5.1f} [{100 * lo:4.1f},{100 * hi:5.1f}]")
        rel = row.get("reliance")
        mse = f"   demo MSE {rel['true']:.2f} / {rel['other_same_task']:.2f} / {rel['blank']:.2f}" if rel else ""
        lines.append(f"  {v:<18}" + "".join(f"{x:>24}" for x in cells) + f"   seeds {row['all']['seeds']}{mse}")
    for key, d in t.items():
        if "_minus_" in key:
            v, base = d["variant"], d["baseline"]  # table() writes both into every comparison
            lines.append(
                f"  {v} - {base}: {100 * d['diff']:+.1f} points, bootstrap 95% [{100 * d['bootstrap95'][0]:+.1f}, "
                f"{100 * d['bootstrap95'][1]:+.1f}] (seeds {d['seeds']})" + ("" if v in VARIANTS else "   (follow-up)")
            )
    return "\n".join(lines)


def bars_svg(t: dict, tasks: list[str], title: str) -> str:
    """Grouped vertical bars (one group per task + all, one bar per variant) with Wilson whiskers;
    each bar carries data-variant, data-task, data-value, data-lo, data-hi."""
    from defi.pipelines.views.svg import _num, esc, palette

    cols = tasks + ["all"]
    variants = list(t["rows"])
    bw, gap, h, top, left = 14, 18, 160, 28, 34
    gw = bw * len(variants) + gap
    width = left + gw * len(cols) + 10
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
        lx, ly = left + (vi % 3) * 130, top + h + 32 + 14 * (vi // 3)
        out.append(
            f'<rect x="{lx}" y="{ly - 8}" width="9" height="9" fill="{palette(vi)}"/>'
            f'<text x="{lx + 13}" y="{ly}" font-size="10">{esc(v)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def report_html(res: dict) -> str:
    from defi.pipelines.views.browse import render_page
    from defi.pipelines.views.svg import esc

    parts = [
        f"<h1>DeFI ablation ({esc(res['config_name'])})</h1>",
        f"<pre class='sql'>{esc(res['command'])}</pre>",
        f"<p>{esc(res['status'])}. Pretraining tasks: {esc(', '.join(res['config']['pretrain_tasks']))}; "
        f"target tasks: {esc(', '.join(res['config']['target_tasks']))}; {res['config']['demos']} labeled demos per "
        f"target task; {res['config']['eval_episodes']} eval episodes per task per seed (env seed {EVAL_SEED}). "
        f"Bars: mean success over seeds; whiskers: Wilson 95% of the pooled successes.</p>",
    ]
    for setting, t in res["settings"].items():
        parts.append(f"<h2>Setting {setting}: {esc(SETTINGS[setting])}</h2>")
        parts.append(bars_svg(t, res["config"]["target_tasks"], f"success per variant, setting {setting}"))
        parts.append(f"<pre>{esc(table_text(setting, t, res['config']['target_tasks']))}</pre>")
    return render_page("DeFI ablation", "".join(parts))


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="4 pretraining tasks, 2 targets, 2 seeds, setting A only")
    size.add_argument("--smoke", action="store_true", help="smallest end-to-end configuration (tests)")
    p.add_argument("--work", help="work folder (default: TMPDIR/defi_ablation[_quick|_smoke])")
    p.add_argument("--settings", help="A, B or A,B (default: the configuration's)")
    p.add_argument("--seed", type=int, default=0, help="data seed (pretraining layouts; demos use seed+1)")
    p.add_argument("--gap-frames", type=int, default=10, help="k of GIDM/GFDM pretraining, frames (0.5 s)")
    p.add_argument("--eval-workers", type=int, default=1)
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray of curate")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--followups",
        default="",
        help=f"after the main cells, also run these follow-up variants (comma list, or all): {', '.join(FOLLOWUPS)}",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the table, results.json and report.html from the finished cells, run nothing "
        "(while a run is under way, or after it was stopped)",
    )
    a = p.parse_args(argv)
    a.config_name = "smoke" if a.smoke else "quick" if a.quick else "full"
    for k, v in CONFIGS[a.config_name].items():
        setattr(a, k, list(v) if isinstance(v, tuple | list) else v)
    if a.settings is None:
        a.settings = CONFIGS[a.config_name]["settings"]
    a.settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    bad = [s for s in a.settings if s not in SETTINGS]
    if bad:
        p.error(f"--settings {bad}: valid are A, B")
    a.followups = list(FOLLOWUPS) if a.followups == "all" else [f.strip() for f in a.followups.split(",") if f.strip()]
    if unknown := [f for f in a.followups if f not in FOLLOWUPS]:
        p.error(f"--followups {unknown}: valid are {', '.join(FOLLOWUPS)} or all")
    a.work = a.work or str(Path(tempfile.gettempdir()) / ("defi_ablation" + ("" if a.config_name == "full" else "_" + a.config_name)))
    return a


def main(argv=None) -> dict:
    import torch

    a = parse(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(a, k) for k in CONFIGS["full"]} | {
        "settings": a.settings,
        "seed": a.seed,
        "gap_frames": a.gap_frames,
        "eval_seed": EVAL_SEED,
    }
    saved = work / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(config)):
        raise SystemExit(f"{work} holds a run of another configuration ({saved}); use another --work")
    if not a.report_only:
        atomic_json(saved, config)
    cmd = "bench/defi_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"[ablation] configuration {a.config_name}"
        + (
            ""
            if a.config_name == "full"
            else f" (NOT the full run: {len(a.pretrain_tasks)} pretraining tasks, {len(a.target_tasks)} targets, "
            f"{len(a.seeds)} seeds, settings {','.join(a.settings)})"
        )
        + f"; work {work}",
        flush=True,
    )
    t0 = time.time()
    if a.report_only:
        return summarise(work, a, config, cmd, 0.0)
    root = data(work, a)
    cells_all = [(s, v, seed) for s in a.settings for seed in a.seeds for v in VARIANTS]
    done_before = sum((work / "cells" / s / f"{v}-s{seed}.json").exists() for s, v, seed in cells_all)
    ran, t_cells = 0, 0.0
    for s in a.settings:
        parts = pretrain(work, root, a, s)
        for seed in a.seeds:
            for v in VARIANTS:
                path = work / "cells" / s / f"{v}-s{seed}.json"
                i = cells_all.index((s, v, seed)) + 1
                if path.exists():
                    print(f"[cell {i}/{len(cells_all)}] setting {s} {v} seed {seed}: done, skipped", flush=True)
                    continue
                if reuse_cell(work, a, s, v, seed):
                    done_before += 1
                    print(f"[cell {i}/{len(cells_all)}] setting {s} {v} seed {seed}: reused from setting {a.settings[0]}", flush=True)
                    continue
                left = len(cells_all) - done_before - ran
                eta = f"ETA {t_cells / ran * left / 60:.0f} min" if ran else "ETA after the first cell"
                print(f"[cell {i}/{len(cells_all)}] setting {s} {v} seed {seed}: running ({left} cells left, {eta})", flush=True)
                t = time.time()
                run_cell(work, root, parts, a, s, v, seed)
                ran, t_cells = ran + 1, t_cells + time.time() - t
        extra = [(seed, v) for seed in a.seeds for v in a.followups if not (work / "cells" / s / f"{v}-s{seed}.json").exists()]
        for i, (seed, v) in enumerate(extra, 1):
            print(f"[follow-up {i}/{len(extra)}] setting {s} {v} seed {seed}: running", flush=True)
            run_cell(work, root, parts, a, s, v, seed)
    return summarise(work, a, config, cmd, time.time() - t0)


# variants that load no pretrained weights: the same seed trains the same policy in every setting
NO_PRETRAINED = ("scratch", "bc")


def _model_configs(work: Path, setting: str) -> list:
    """The pretrained GIDM's and GFDM's config objects (defaults filled in, so a config saved
    before a field existed equals one saved after)."""
    from defi.training.checkpoint import load_config
    from defi.training.recipes.train_policy import last_checkpoint

    return [load_config(last_checkpoint(work / f"pretrain-{setting}" / m)) for m in ("gidm", "gfdm")]


def reuse_cell(work: Path, a: argparse.Namespace, setting: str, variant: str, seed: int) -> bool:
    """A ``scratch`` or ``bc`` cell of a later setting is the first setting's cell of the same seed
    when both settings' pretrained models have the same configs (only their shapes reach these
    variants): copied with ``reused_from``, not re-run. Checked on the full run: setting B's
    scratch seed 0, run in both, has the same training log and the same 150 episode outcomes."""
    first = a.settings[0]
    src = work / "cells" / first / f"{variant}-s{seed}.json"
    if variant not in NO_PRETRAINED or setting == first or not src.exists():
        return False
    if _model_configs(work, first) != _model_configs(work, setting):
        return False
    cell = json.loads(src.read_text()) | {"setting": setting, "reused_from": first}
    atomic_json(work / "cells" / setting / f"{variant}-s{seed}.json", cell)
    return True


def summarise(work: Path, a: argparse.Namespace, config: dict, cmd: str, wall: float) -> dict:
    res = {"config_name": a.config_name, "config": config, "command": cmd, "settings": {}, "wall_s_this_call": wall}
    expected = len(a.settings) * len(a.seeds) * len(VARIANTS)
    found = 0
    for s in a.settings:
        cells = [json.loads(p.read_text()) for p in sorted((work / "cells" / s).glob("*-s*.json"))]
        cells = [c for c in cells if c["seed"] in a.seeds]
        for c in cells:
            run = work / "cells" / c.get("reused_from", s) / f"{c['variant']}-s{c['seed']}" / "run"
            if any((run / "checkpoints").glob("step-*")):
                c["reliance"] = image_reliance(run)
        found += sum(c["variant"] in VARIANTS for c in cells)
        if cells:
            res["settings"][s] = table(cells, a.target_tasks, a.seeds)
    res["cells_done"], res["cells_expected"] = found, expected
    res["status"] = ("complete" if found == expected else f"PARTIAL: {found} of {expected} cells") + (
        "" if a.config_name == "full" else f"; {a.config_name} configuration, not the full run"
    )
    atomic_json(work / "results.json", res)
    tmp = work / f"report.html.tmp{os.getpid()}"
    tmp.write_text(report_html(res))
    os.replace(tmp, work / "report.html")
    print(f"\nDeFI ablation, {res['status']} ({wall / 60:.1f} min this call)")
    for s, t in res["settings"].items():
        print(table_text(s, t, a.target_tasks))
    if any("reliance" in r for t in res["settings"].values() for r in t["rows"].values()):
        print(
            "demo MSE: standardised action MSE on the labeled demos with the true image / another sample's image of the "
            "same task / a blank frame (equal numbers: the policy ignores its image)"
        )
    print(f"results {work / 'results.json'}\nreport  {work / 'report.html'}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
