"""Meta-World throughput on this machine: physics steps/s, and rendered frames/s at 64 and 128 px
with the fast render settings (no shadows / MSAA / reflections) against MuJoCo's defaults.

    .venv/bin/python bench/sim.py [--task reach-v3] [--steps 300] [--frames 100]

One process, one env per setting; the renderer of each env is made after its settings are set.
"""

from __future__ import annotations

import argparse
import time


from defi.training.sim import MetaWorldEnv  # chooses MUJOCO_GL before mujoco loads


def steps_per_s(env: MetaWorldEnv, n: int) -> float:
    env.reset(0, render=False)
    t = time.perf_counter()
    for i in range(n):
        if i and i % (env.max_steps - 1) == 0:
            env.reset(i, render=False)
        env.step(env.expert_action(), render=False)
    return n / (time.perf_counter() - t)


def frames_per_s(env: MetaWorldEnv, n: int) -> float:
    env.reset(0, render=False)
    env.render()  # warm-up: first frame uploads textures
    t = time.perf_counter()
    for _ in range(n):
        env.render()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--frames", type=int, default=100)
    a = ap.parse_args()
    import os

    print(f"task {a.task}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    print(f"{'size':>5} {'settings':>8} {'steps/s':>9} {'frames/s':>9} {'ms/frame':>9} {'step+render/s':>14}")
    for size in (64, 128):
        for fast in (True, False):
            env = MetaWorldEnv(a.task, size=size, fast_render=fast, max_steps=500)
            sps = steps_per_s(env, a.steps)
            fps = frames_per_s(env, a.frames)
            both = 1.0 / (1.0 / sps + 1.0 / fps)
            print(f"{size:>5} {'fast' if fast else 'default':>8} {sps:>9.0f} {fps:>9.1f} {1000 / fps:>9.2f} {both:>14.1f}")
            env.close()


if __name__ == "__main__":
    main()
