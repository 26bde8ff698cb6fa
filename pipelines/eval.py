"""``defi eval``: roll a trained policy out in a simulator, report success with intervals.

``defi eval --policy RUN --env metaworld --tasks A,B --episodes N --seed S --out DIR`` runs the
closed loop of ``training.sim.evaluate`` (frames through the training data's camera, size and
H.264 round trips), then writes into DIR:

- ``results.json``: the resolved config, per task episodes / successes / success rate / Wilson
  95% interval / mean steps to success, per episode outcome, and time per part;
- ``videos/<task>-<episode>.mp4``: the first ``--videos`` rollouts of each task (rendered frames);
- ``report.html``: one self-contained page (the look of ``defi browse``; videos inlined as data
  URIs) with the table and the rollouts playing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .command import CommandSpec, add_dry_run_flag, layered, run_command
from .config import add_flags
from .usage import check_out_dir, run_standalone


def write_mp4(path: Path, frames, fps: int = 20, crf: int = 18) -> None:
    """uint8 [N, H, W, 3] frames as a browser-playable H.264 mp4 (yuv420p, faststart)."""
    import av

    h, w = frames.shape[1:3]
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        s.options = {"crf": str(crf), "preset": "veryfast"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f[: s.height, : s.width], format="rgb24")))
        c.mux(s.encode())


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def report_html(res: dict[str, Any], videos: dict[str, list[tuple[str, bool, int, Path]]], title: str) -> str:
    from .views.browse import render_page
    from .views.svg import esc

    rows = []
    for task, s in res["per_task"].items():
        lo, hi = s["wilson95"]
        steps = "-" if s["mean_steps_to_success"] is None else f"{s['mean_steps_to_success']:.1f}"
        rows.append(
            f"<tr><td>{esc(task)}</td><td class='v'>{s['successes']}/{s['episodes']}</td>"
            f"<td class='v'>{_pct(s['success_rate'])}</td><td class='v'>{_pct(lo)} - {_pct(hi)}</td>"
            f"<td class='v'>{steps}</td></tr>"
        )
    table = (
        "<table class='scores' style='max-width:720px;font-size:13px'><tr><th>task</th><th>successes</th>"
        "<th>rate</th><th>Wilson 95%</th><th>mean steps to success</th></tr>" + "".join(rows) + "</table>"
    )
    cards = []
    for task, vids in videos.items():
        for name, ok, steps, path in vids:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            cls = "kept" if ok else "rejected"
            cards.append(
                f"<article class='card {cls}' data-task='{esc(task)}'>"
                f"<video autoplay muted loop playsinline preload='auto' style='image-rendering:pixelated' "
                f"src='data:video/mp4;base64,{data}'></video><div class='head'><div class='src'>{esc(name)}</div>"
                f"<span class='status {cls}'>{'success' if ok else 'failure'}</span> {steps} steps</div></article>"
            )
    c = res["config"]
    tm = res["timings"]
    steps = max(res["steps"], 1)
    timing = ", ".join(f"{k} {1000 * v / steps:.2f} ms" for k, v in tm.items())
    body = (
        f"<h1>{esc(title)}</h1><div class='summary'><pre class='sql'>{esc(res['command'])}</pre>"
        f"<div class='counts'><span>policy {esc(res['policy'])}</span><span>seed {c['seed']}</span>"
        f"<span>{c['episodes']} episodes per task</span><span>max {c['max_steps']} steps</span>"
        f"<span>{res['seconds']:.1f} s</span></div><div class='counts'>per step: {esc(timing)}</div></div>"
        f"<h2>Success</h2>{table}<h2>Rollouts</h2><div class='cards'>{''.join(cards)}</div>"
    )
    return render_page(title, body)


def run_eval(policy: str, cfg, out: str, env: str = "metaworld", progress: bool = True, command: str = "") -> dict[str, Any]:
    """Evaluate, write results.json, videos and report.html into ``out``; returns the summary
    (``per_task``, ``timings``, ``seconds``, ``report``)."""
    import dataclasses

    from defi.training.sim.envs import env_config
    from defi.training.sim.evaluate import evaluate

    cfg = cfg.for_env(env_config(env))  # the horizon and camera the env gives, recorded as run
    res = evaluate(policy, cfg, progress=progress, env=env)
    outp = Path(out)
    (outp / "videos").mkdir(parents=True, exist_ok=True)
    videos: dict[str, list] = {}
    for r in res["episodes"]:
        if r.frames is not None:
            path = outp / "videos" / f"{r.task}-{r.episode:03d}.mp4"
            write_mp4(path, r.frames)
            videos.setdefault(r.task, []).append((f"{r.task} #{r.episode}", r.success, r.steps, path))
    summary = {
        "policy": str(policy),
        "env": env,
        "command": command or f"defi eval --policy {policy}",
        "config": dataclasses.asdict(cfg),
        "per_task": res["per_task"],
        "timings": res["timings"],
        "steps": res["steps"],
        "seconds": res["seconds"],
        "episodes": [
            {"task": r.task, "episode": r.episode, "success": r.success, "steps": r.steps, "steps_to_success": r.steps_to_success}
            for r in res["episodes"]
        ],
    }
    (outp / "results.json").write_text(json.dumps(summary, indent=2))
    (outp / "report.html").write_text(report_html(summary, videos, f"defi eval: {Path(policy).name}"))
    summary["report"] = str(outp / "report.html")
    return summary


def summary_text(s: dict[str, Any]) -> str:
    lines = [f"{'task':<24} {'success':>9} {'rate':>6} {'wilson95':>13} {'steps':>7}"]
    for task, t in s["per_task"].items():
        lo, hi = t["wilson95"]
        steps = "-" if t["mean_steps_to_success"] is None else f"{t['mean_steps_to_success']:.1f}"
        lines.append(
            f"{task:<24} {t['successes']:>4}/{t['episodes']:<4} {_pct(t['success_rate']):>6} {_pct(lo):>5} - {_pct(hi):<5} {steps:>7}"
        )
    n = max(s["steps"], 1)
    lines.append(
        f"{s['steps']} steps in {s['seconds']:.1f} s; per step: " + ", ".join(f"{k} {1000 * v / n:.2f} ms" for k, v in s["timings"].items())
    )
    lines.append(f"report {s['report']}")
    return "\n".join(lines)


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="roll a trained policy out in a simulator and report success",
        description="Closed-loop evaluation of a `defi train policy` run in Meta-World with the training "
        "frames' camera, size and H.264 round trips: success per task with a Wilson 95% interval, "
        "mean steps to success, rollout videos and a self-contained HTML report in --out.",
    )
    p.add_argument("--policy", help="policy run folder (its latest checkpoint) or checkpoint folder; required unless --dry-run")
    from defi.training.sim.envs import DEFAULT_ENV, ENVS

    p.add_argument("--env", default=DEFAULT_ENV, choices=list(ENVS), help=f"simulator the policy is rolled out in (default: {DEFAULT_ENV})")
    p.add_argument("--out", help="output folder: report.html, results.json, videos/; required unless --dry-run")
    add_dry_run_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from defi.training.sim.evaluate import EvalConfig

    # every EvalConfig field as a flag: --tasks, --episodes, --seed, --max-steps ...
    add_flags(p, EvalConfig, "evaluation")
    p.set_defaults(func=cmd_eval)
    return p


def _eval_build(args: argparse.Namespace, *layers: dict[str, Any]):
    from defi.training.sim.evaluate import EvalConfig

    return layered(EvalConfig)(args, *layers)


def _eval_check(args: argparse.Namespace, _cfg) -> None:
    # a folder holding results.json is an earlier evaluation: a rerun replaces it
    check_out_dir(args.out, reuse=lambda d: os.path.isfile(os.path.join(d, "results.json")))


def _eval_run(args: argparse.Namespace, cfg) -> dict[str, Any]:
    t0 = time.time()
    s = run_eval(args.policy, cfg, args.out, env=args.env, progress=not args.no_progress, command="defi " + " ".join(sys.argv[1:]))
    return {**s, "wall_s": time.time() - t0}


def _eval_summary(_args: argparse.Namespace, s: dict[str, Any]) -> None:
    print(summary_text(s))
    print(f"done in {s['wall_s']:.1f} s")


EVAL_SPEC = CommandSpec(
    name="eval",
    build=_eval_build,
    requires=("policy", "out"),
    check=_eval_check,
    run=_eval_run,
    summary=_eval_summary,
    errors=("defi.pipelines.config.ConfigError", "defi.training.checkpoint.CheckpointError", "ValueError"),
)


def cmd_eval(args: argparse.Namespace) -> int:
    return run_command(EVAL_SPEC, args)


def main(argv: list[str] | None = None) -> int:
    return run_standalone([add_eval_parser], argv, prefix=("eval",))


if __name__ == "__main__":
    raise SystemExit(main())
