"""``defi sim generate``: scripted-expert episodes from a simulator, written as LeRobot v3.0.

Import-light: mujoco/metaworld load only when the command runs. Wire it with
``add_sim_parser(subparsers)`` (then call ``args.func(args)``) or call ``sim_generate_main(argv)``.
"""

from __future__ import annotations

import argparse
import sys

from defi.pipelines.usage import int_at_least

from .envs import DEFAULT_ENV, ENVS, env_config


def check_out(out: str) -> None:
    """Refuse an output folder that cannot be a new dataset, as every command does
    (``pipelines.usage.check_out_dir``), as a one-line ValueError."""
    from defi.pipelines.usage import UsageError, check_out_dir

    try:
        check_out_dir(out)
    except UsageError as e:
        raise ValueError(str(e)) from None


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    d = ENVS[DEFAULT_ENV]
    p.add_argument(
        "--env", default=DEFAULT_ENV, choices=list(ENVS), help=f"simulator the episodes are generated in (default: {DEFAULT_ENV})"
    )
    p.add_argument("--tasks", required=True, help=f"comma-separated task names of --env ({d.name}: {d.task_help})")
    p.add_argument("--episodes", type=int, required=True, help="episodes per task")
    p.add_argument("--out", required=True, help="output folder (new or empty): a LeRobot v3.0 dataset")
    p.add_argument("--size", type=int, help=f"square frame size in pixels (default: the env's, {d.image_size} for {d.name})")
    p.add_argument("--fps", type=int, default=20, help="frame rate written to the dataset (default 20)")
    p.add_argument(
        "--camera",
        help=f"camera the frames are rendered from (default: the env's, {d.camera} for {d.name}; Meta-World's corner* are rotated upright)",
    )
    p.add_argument("--seed", type=int, default=0, help="run seed; output is deterministic given it (default 0)")
    p.add_argument("--action-noise", type=float, default=0.0, help="std of Gaussian noise on expert actions (default 0)")
    p.add_argument(
        "--keep-failed-frac", type=float, default=1.0, help="fraction of unsuccessful episodes kept, marked success=false (default 1.0)"
    )
    p.add_argument("--max-steps", type=int, help=f"actions per episode at most (default: the env's, {d.max_steps} for {d.name})")
    p.add_argument("--steps-after-success", type=int, default=10, help="steps recorded after the first success (default 10)")
    p.add_argument("--action-free", action="store_true", help="write videos without action/state columns")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="processes, one env each (default 1)")
    p.add_argument(
        "--slow-render",
        action="store_true",
        help="MuJoCo's default visual quality (shadows, 4x MSAA, reflections), ~10x slower. "
        "By default the fast render settings are used: shadowsize=0, offsamples=0, "
        "mat_reflectance=0",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_sim_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``sim`` (with its ``generate`` subcommand) to a ``defi`` subparsers object."""
    sim = subparsers.add_parser("sim", help="generate labeled robot episodes in a simulator")
    sub = sim.add_subparsers(dest="sim_command", required=True)
    gen = sub.add_parser(
        "generate",
        help="roll scripted experts, write a LeRobot v3.0 dataset",
        description="Roll scripted experts and write a LeRobot v3.0 dataset (H.264 video + parquet). "
        "Rendering is headless (MUJOCO_GL=egl, else osmesa) with the fast render settings "
        "by default (no shadows, no multisampling, no reflections).",
    )
    _add_generate_args(gen)
    gen.set_defaults(func=cmd_generate)
    return sim


def cmd_generate(args: argparse.Namespace) -> int:
    """``defi sim generate``: exit 0 when written, 2 with one line for a bad task or output."""
    try:
        run_generate(args)
    except (ValueError, FileExistsError) as e:
        print(f"defi sim generate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def run_generate(args: argparse.Namespace) -> dict:
    sim = env_config(args.env)  # its simulator loads on its first env
    check_out(args.out)
    summary = sim.generate(
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        args.episodes,
        args.out,
        size=sim.image_size if args.size is None else args.size,
        fps=args.fps,
        camera=args.camera or sim.camera,
        seed=args.seed,
        action_noise=args.action_noise,
        keep_failed_frac=args.keep_failed_frac,
        max_steps=sim.max_steps if args.max_steps is None else args.max_steps,
        action_free=args.action_free,
        workers=args.workers,
        steps_after_success=args.steps_after_success,
        fast_render=not args.slow_render,
        progress=not args.no_progress,
    )
    pt = summary["per_task"]
    print(
        f"wrote {summary['episodes_written']}/{summary['episodes_attempted']} episodes, "
        f"{summary['frames']} frames to {summary['out_dir']} in {summary['seconds']:.1f}s "
        f"({summary['frames_per_second']:.0f} frames/s); success rate {summary['success_rate']:.2f}"
    )
    for task, s in pt.items():
        print(f"  {task}: {s['succeeded']}/{s['attempted']} succeeded, {s['kept']} kept, {s['frames']} frames")
    return summary


def sim_generate_main(argv: list[str] | None = None) -> int:
    """``defi sim generate ...`` as a standalone entry point (argv without ``sim generate``)."""
    p = argparse.ArgumentParser(
        prog="defi sim generate",
        description=("Roll scripted experts and write a LeRobot v3.0 dataset. Fast render settings are the default."),
    )
    _add_generate_args(p)
    args = p.parse_args(argv)
    try:
        run_generate(args)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(sim_generate_main())
