"""Closed-loop evaluation of a trained policy in a simulator of ``envs.ENVS``, Meta-World by default
(``defi eval``'s engine; no Ray here: ``workers > 1`` runs episodes on the local backend of
``defi.pipelines.runner``, spawned workers, results in episode order).

The policy must see frames the way it saw them in training: rendered by the same camera at the
same size and orientation (``MetaWorldEnv``: corner cameras rotated upright, fast render settings),
then passed through the same H.264 round trips (``defi sim generate`` wrote them at CRF 20, ``defi
curate`` re-encoded them at CRF 23, both libx264 ``veryfast``; ``crf_chain``), then resized to the
policy's input with area interpolation as the shard loader does. The round trip keeps one encoder
and decoder per episode (``tune=zerolatency``, so each frame comes back at once): frames are
P-coded against the previous one as in a stream, not as isolated key frames.

Control: at step t the policy reads o_t (and its history) and returns H actions; ``execute`` of
them (default all H, as released) run before the next observation. Frames are rendered only when
the policy or a video needs them: rendering is most of a step's cost (23 ms per 64 px frame on
the loaded 2-core box, against 3 ms of physics), so by default only the frames the policy reads
go through the H.264 stream; ``full_stream`` also streams the frames between them at the training
clips' rate (the P-frame distances of training, at ~H/stride x the renders). An episode succeeds when the env reports success at any step;
it stops there (``steps_to_success``) or at ``max_steps``.

Determinism: episode e of task T resets the env with the seed ``defi sim generate --seed S`` uses
for its episode e of T (``metaworld_env.episode_seed``), so every policy evaluated with seed S
faces the same layouts, and ``--seed`` equal to the training data's seed replays its layouts
(use another seed for held-out layouts). Policy inference is deterministic (no sampling).
"""

from __future__ import annotations

import dataclasses

import contextlib
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from defi.schemas.contract import DataContract

from .envs import DEFAULT_ENV, env_config


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list, metadata={"help": "the env's task names, e.g. reach-v3,push-v3 (Meta-World)"})
    episodes: int = field(default=10, metadata={"help": "episodes per task"})
    seed: int = field(default=0, metadata={"help": "layout seed (same layouts as `defi sim generate --seed` episodes)"})
    max_steps: int = field(default=0, metadata={"help": "actions per episode at most (0: the env's, the generator's horizon)"})
    videos: int = field(default=2, metadata={"help": "rollouts per task kept as mp4 in the report"})
    workers: int = field(default=1, metadata={"help": "processes, one env each"})
    camera: str = field(default="", metadata={"help": "the env's camera, the training data's (empty: the env's default camera)"})
    render_size: int = field(default=0, metadata={"help": "rendered frame side, px (0: the policy's image size)"})
    crf_chain: list[int] = field(
        default_factory=lambda: [20, 23], metadata={"help": "H.264 round trips before the policy sees a frame (generator CRF, curate CRF)"}
    )
    preset: str = field(default="veryfast", metadata={"help": "libx264 preset of the round trips"})
    frame_stride: int = field(
        default=0, metadata={"help": "env steps per encoded frame of the training clips (0: from the policy checkpoint)"}
    )
    execute: int = field(default=0, metadata={"help": "actions of each chunk executed before re-planning (0: all H)"})
    full_stream: bool = field(
        default=False,
        metadata={
            "help": "render and round-trip every frame of the training clips' rate (every frame_stride steps), as "
            "they were encoded, not only the frames the policy reads (~H/stride x more renders)"
        },
    )

    def __post_init__(self) -> None:
        errors = []
        for name in ("episodes", "workers"):
            if getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("max_steps", "videos", "render_size", "frame_stride", "execute"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 0")
        repeated = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if repeated:  # the same seeded episodes twice would count twice and narrow the interval
            errors.append(f"tasks={self.tasks!r}: {', '.join(repeated)} given more than once")
        if any(not 0 <= c <= 51 for c in self.crf_chain):
            errors.append(f"crf_chain={self.crf_chain!r}: each CRF must be in [0, 51]")
        if errors:
            raise ValueError("invalid EvalConfig: " + "; ".join(errors))

    def for_env(self, sim) -> EvalConfig:
        """This config with the env's horizon and camera where it leaves them to the env
        (``max_steps`` 0, ``camera`` empty): what the episodes run with and the results record."""
        return dataclasses.replace(self, max_steps=self.max_steps or sim.max_steps, camera=self.camera or sim.camera)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


class H264RoundTrip:
    """Encode one RGB frame into an open libx264 stream and decode it back (one frame in, one out)."""

    def __init__(self, width: int, height: int, crf: int, preset: str = "veryfast", fps: int = 20):
        import av

        self.enc = av.CodecContext.create("libx264", "w")
        self.enc.width, self.enc.height, self.enc.pix_fmt = width, height, "yuv420p"
        self.enc.time_base, self.enc.framerate = Fraction(1, fps), Fraction(fps, 1)
        self.enc.options = {"crf": str(crf), "preset": preset, "tune": "zerolatency"}
        self.dec = av.CodecContext.create("h264", "r")
        self.i = 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = self.i
        self.i += 1
        out = None
        for pkt in self.enc.encode(frame):
            for f in self.dec.decode(pkt):
                out = f.to_ndarray(format="rgb24")
        if out is None:
            raise RuntimeError("H.264 round trip returned no frame (encoder buffering despite zerolatency)")
        return out


class FramePipeline:
    """Rendered frame -> the frame the policy trained on: H.264 round trips, then area resize."""

    def __init__(self, render_size: int, image_size: int, crf_chain: list[int], preset: str):
        self.trips = [H264RoundTrip(render_size, render_size, c, preset) for c in crf_chain]
        self.image_size = image_size

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        for trip in self.trips:
            rgb = trip(rgb)
        if rgb.shape[0] != self.image_size:
            import av

            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            rgb = f.reformat(width=self.image_size, height=self.image_size, format="rgb24", interpolation="AREA").to_ndarray()
        return rgb


def load_policy(path: str | Path):
    """(policy in eval mode, its checkpoint's ``extra``) from a run folder's latest checkpoint or a
    checkpoint folder; refuses another model type naming both."""
    from defi.training.checkpoint import CheckpointError, load_model

    try:
        model, _, state = load_model(path, expect="policy")
    except CheckpointError as e:
        raise CheckpointError(f"--policy {e}") from None
    return model, state.get("extra", {})


def instruction_embedding(policy, extra: dict, text: str) -> np.ndarray | None:
    """The instruction's embedding as training made it: from the checkpoint's table, else the
    policy's text model (``TextEncoder``)."""
    c = policy.config
    if not c.text_dim:
        return None
    table = extra.get("instructions") or {}
    if text in table:
        return np.asarray(table[text], np.float32)
    from defi.training.gfdm.text import TextEncoder
    from defi.training.gfdm import TextModelConfig

    return TextEncoder(TextModelConfig(**c.text_model)).encode([text])[0]


@dataclass
class EpisodeResult:
    task: str
    episode: int
    success: bool
    steps: int  # actions taken
    steps_to_success: int | None  # actions up to and including the first successful one
    frames: np.ndarray | None = None  # uint8 [N, S, S, 3] rendered frames (video episodes only)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: env_step, render, round_trip, inference


_CACHE: dict[str, Any] = {}  # per process: the loaded policy (workers load it once)


def _policy(path: str):
    if _CACHE.get("path") != path:
        import torch

        torch.set_num_threads(1)
        _CACHE.update(path=path, policy=load_policy(path), envs={})
    return _CACHE["policy"]


def run_episode(policy_path: str, cfg: EvalConfig, task: str, episode: int, video: bool, env_name: str = DEFAULT_ENV) -> EpisodeResult:
    """One closed-loop episode of ``task`` in ``ENVS[env_name]`` (its layout from ``(cfg.seed, task, episode)``)."""
    import torch

    sim = env_config(env_name)
    cfg = cfg.for_env(sim)
    policy, extra = _policy(policy_path)
    pc = policy.config
    contract = DataContract.from_state({"extra": extra})
    size = cfg.render_size or pc.image_size
    stride = cfg.frame_stride or (contract and contract.frame_stride) or 1
    execute = min(cfg.execute or pc.horizon, pc.horizon)
    key = (env_name, task, cfg.camera, size, cfg.max_steps)
    envs = _CACHE["envs"]
    if key not in envs:
        envs[key] = sim.make(task, cfg.camera, size, cfg.seed, True, cfg.max_steps)
    env = envs[key]
    emb = instruction_embedding(policy, extra, sim.instruction(task))
    text = None if emb is None else torch.as_tensor(emb, dtype=torch.float32)[None]
    frames_pipe = FramePipeline(size, pc.image_size, cfg.crf_chain, cfg.preset)
    tm = {"env_step": 0.0, "render": 0.0, "round_trip": 0.0, "inference": 0.0}
    env_seed, _, sample_seed = sim.episode_seed(cfg.seed, task, episode).spawn(3)
    # a diffusion head's samples: their own stream per episode, so results do not depend on
    # which worker ran the episode or in what order
    generator = torch.Generator().manual_seed(int(sample_seed.generate_state(1)[0]))
    t = time.perf_counter()
    obs = env.reset(int(env_seed.generate_state(1)[0]), render=False)
    tm["env_step"] += time.perf_counter() - t
    if pc.state_dim and (obs.get("proprio") is None or len(obs["proprio"]) != pc.state_dim):
        got = "none" if obs.get("proprio") is None else len(obs["proprio"])
        raise ValueError(f"the policy takes {pc.state_dim}-wide proprioception; {task}'s env gives {got}")
    history: list[np.ndarray] = []  # processed frames at the training clips' frame rate
    video_frames: list[np.ndarray] = []
    plan: list[np.ndarray] = []
    success_at = None
    steps = 0
    for step in range(cfg.max_steps):
        need_obs = not plan
        stream = need_obs or (cfg.full_stream and step % stride == 0)
        if stream or video:
            t = time.perf_counter()
            img = env.render()
            tm["render"] += time.perf_counter() - t
            if video:
                video_frames.append(img)
            if stream:
                t = time.perf_counter()
                history.append(frames_pipe(img))
                history = history[-pc.context_frames :]
                tm["round_trip"] += time.perf_counter() - t
        if need_obs:
            ctx = [history[0]] * (pc.context_frames - len(history)) + history
            x = torch.from_numpy(np.concatenate([f.transpose(2, 0, 1) for f in ctx]).astype(np.float32) / 255.0)[None]
            t = time.perf_counter()
            state = torch.as_tensor(obs["proprio"], dtype=torch.float32)[None] if pc.state_dim else None
            chunk = policy.predict(x, text, state, generator)[0].numpy()
            tm["inference"] += time.perf_counter() - t
            plan = list(chunk[:execute])
        t = time.perf_counter()
        obs, _, ok, done = env.step(plan.pop(0), render=False)
        tm["env_step"] += time.perf_counter() - t
        steps += 1
        if ok:
            success_at = step + 1
            break
        if done:
            break
    del obs
    if video:
        video_frames.append(env.render())
    return EpisodeResult(task, episode, success_at is not None, steps, success_at, np.stack(video_frames) if video else None, tm)


def _job(args: tuple) -> EpisodeResult:
    return run_episode(*args)


def _episode_stage(args: tuple):
    """The runner's task stage: one episode job in, its ``EpisodeResult`` out (module-level, so
    spawned workers can load it)."""
    yield _job(args)


def evaluate(policy_path: str, cfg: EvalConfig, progress: bool = True, env: str = DEFAULT_ENV) -> dict[str, Any]:
    """Roll every (task, episode) of ``cfg`` in the simulator ``ENVS[env]``; returns ``per_task`` (task -> episodes, successes,
    success_rate, wilson95 [lo, hi], mean_steps_to_success), ``episodes`` (EpisodeResult list in
    (task, episode) order), ``timings`` (seconds summed per part) and ``seconds``. Checks the
    env, the tasks and the policy's action and proprioception widths against the env's declared
    ones first (``ValueError``, one line naming the bad one)."""
    from tqdm.auto import tqdm

    sim = env_config(env)
    cfg = cfg.for_env(sim)
    valid = sim.tasks()
    unknown = [t for t in cfg.tasks if t not in valid]
    if unknown or not cfg.tasks:
        raise ValueError(f"unknown {sim.title} task(s) {unknown or cfg.tasks}; valid: {', '.join(valid)}")
    policy, _ = load_policy(policy_path)  # fail here, not in a worker, for a bad checkpoint
    sim.check_policy(policy.config.action_dim, policy.config.state_dim)
    jobs = [(str(policy_path), cfg, task, e, e < cfg.videos, env) for task in cfg.tasks for e in range(cfg.episodes)]
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="episode", disable=not progress, desc="eval")
    results: list[EpisodeResult] = []
    if cfg.workers <= 1:
        for j in jobs:
            results.append(_job(j))
            bar.update(1)
    else:
        # the project's local runner (imported here: training/ loads pipelines/ only for this);
        # spawn: forked children would share the parent's GL/MuJoCo state, which is not
        # fork-safe; ordered: the episodes come back in job order
        from defi.pipelines.ray_adapter import RayConfig
        from defi.pipelines.runner import Runner, Stage

        stages = [Stage("eval episode", _episode_stage, cpus=1)]
        with (
            Runner("local", RayConfig(), workers=cfg.workers, why="eval: workers > 1", start="spawn") as runner,
            contextlib.closing(runner.stream(jobs, stages, ordered=True)) as stream,  # closed on an error: workers end
        ):
            for r in stream:
                results.append(r)
                bar.update(1)
    bar.close()
    per_task = {}
    for task in cfg.tasks:
        rs = [r for r in results if r.task == task]
        k = sum(r.success for r in rs)
        lo, hi = wilson(k, len(rs))
        ok = [r.steps_to_success for r in rs if r.success]
        per_task[task] = {
            "episodes": len(rs),
            "successes": k,
            "success_rate": k / len(rs),
            "wilson95": [lo, hi],
            "mean_steps_to_success": float(np.mean(ok)) if ok else None,
        }
    timings = {k: sum(r.timings.get(k, 0.0) for r in results) for k in ("env_step", "render", "round_trip", "inference")}
    return {
        "per_task": per_task,
        "episodes": results,
        "timings": timings,
        "steps": sum(r.steps for r in results),
        "seconds": time.perf_counter() - t0,
    }
