"""``defi eval`` throughput on this machine: policy steps per second of closed-loop Meta-World
rollouts, with the time per env step split into env physics, render, H.264 round trips and policy
inference. Goal (issue 20): 50 episodes x 150 steps of one task in under 3 minutes on 2 cores.

    .venv/bin/python bench/eval.py [--policy RUN] [--init defi|bc] [--task reach-v3]
                                   [--episodes 50] [--max-steps 150] [--workers 2] [--execute 0]

Without ``--policy`` a policy of the given ``--init`` with random weights and the tiny GFDM/GIDM
configs is saved to a temporary folder (timing does not depend on the weights; a random policy
rarely succeeds, so every episode runs all ``--max-steps``, the worst case).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import defi.training.sim  # noqa: F401  (chooses MUJOCO_GL before mujoco loads)


def random_policy(init: str, out: Path) -> Path:
    import torch

    from defi.training.checkpoint import save_checkpoint
    from defi.training.policy.modeling_policy import DeFiPolicy
    from defi.training.policy import INIT_VARIANTS, PolicyConfig

    torch.manual_seed(0)
    kw = {}
    if INIT_VARIANTS[init].future_branch:
        from defi.training.gfdm import gfdm_tiny
        from defi.training.gidm import gidm_tiny

        g = gfdm_tiny()
        kw = {
            "gfdm": g.to_dict(),
            "gidm": gidm_tiny(image_size=g.image_size).to_dict(),
            "image_size": g.image_size,
            "context_frames": g.context_frames,
            "text_dim": g.text_dim,
        }
    cfg = PolicyConfig(init=init, **kw)
    from defi.training.sim import instruction_for

    save_checkpoint(
        out / "checkpoints" / "step-00000001",
        DeFiPolicy(cfg),
        cfg,
        step=1,
        extra={
            "data": {"frame_stride": 2},
            "instructions": {instruction_for(t): [0.0] * cfg.text_dim for t in ("reach-v3", "push-v3", "drawer-open-v3")},
        },
    )
    return out


def main() -> None:
    from defi.training.sim.evaluate import EvalConfig, evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", help="policy run folder (default: a random policy of --init)")
    ap.add_argument("--init", default="defi", help="architecture of the random policy (default defi)")
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--execute", type=int, default=0, help="actions executed per chunk (0: all H)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = a.policy or str(random_policy(a.init, Path(tmp)))
        cfg = EvalConfig(tasks=[a.task], episodes=a.episodes, max_steps=a.max_steps, videos=0, workers=a.workers, execute=a.execute)
        t0 = time.perf_counter()
        res = evaluate(path, cfg, progress=False)
        wall = time.perf_counter() - t0
    n = res["steps"]
    t = res["timings"]
    busy = sum(t.values())
    print(
        f"{a.episodes} episodes x <= {a.max_steps} steps of {a.task}, {a.workers} workers, policy "
        f"{a.policy or 'random ' + a.init}: {n} steps in {wall:.1f} s = {n / wall:.0f} steps/s "
        f"(goal: 50 x 150 in < 180 s)"
    )
    print(f"per step, summed over workers ({1000 * busy / n:.2f} ms):")
    for k, v in t.items():
        print(f"  {k:<11} {1000 * v / n:7.3f} ms  {100 * v / busy:5.1f}%")
    succ = res["per_task"][a.task]
    print(f"success {succ['successes']}/{succ['episodes']}")


if __name__ == "__main__":
    main()
