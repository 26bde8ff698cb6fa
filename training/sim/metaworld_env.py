"""Meta-World (v3) environments rendered headless, and scripted-expert episode generation.

``MetaWorldEnv`` wraps one Meta-World task with an offscreen MuJoCo renderer and returns upright
frames; ``generate`` rolls the task's scripted expert (``metaworld.policies``) for many episodes in
parallel and writes a LeRobot v3.0 dataset (see ``defi.curate.lerobot``).

Rendering facts this module relies on (measured on Meta-World 3.1.1 / MuJoCo 3.3):
- Headless GL through EGL (``MUJOCO_GL=egl``), OSMesa when no EGL library is found. The choice
  is read by MuJoCo at import, so ``_import_sim`` sets it before importing mujoco/metaworld.
- The default visual quality (shadow maps, 4x multisampling, reflections) costs ~80 ms per
  128 px frame on a CPU; ``shadowsize = 0``, ``offsamples = 0``, ``mat_reflectance = 0`` cut it
  ~10x. MuJoCo allocates the offscreen buffers when the render context is made, so these must be
  set before the first render (``fast_render=True``, the default, does that).
- The ``corner*`` cameras are rolled 180 degrees: their frames are rotated 180 (a vertical flip
  alone would mirror left and right).
- ``mujoco.Renderer.render`` makes its own GL context current, so several envs in one process
  each render their own scene.
- A CPU GL context (Mesa llvmpipe, EGL or OSMesa) loads Mesa's ``libLLVM`` into the process's
  global symbol scope. triton's ``libtriton.so`` carries its own LLVM with exported symbols:
  loaded after Mesa's, its static initialisers bind to the other LLVM and the process dies
  (SIGSEGV) at ``import triton``, which ``import diffusers`` does (via ``torch._dynamo``). Loaded
  first, each keeps its own, so ``_import_sim`` loads triton (when installed) before any context.
- Meta-World's ``reset(seed=)`` ignores the seed; ``SawyerXYZEnv.seed`` reseeds the generator
  that draws the goal and object positions, so ``reset(seed)`` here calls it.

Imports of mujoco/metaworld happen inside functions: importing this module is cheap.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes.util
import importlib.util
import os
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The project's standard split of Meta-World tasks (bench/gidm_quality.py and the benches built on
# it, `defi demo`): action-free pretraining video of 8 tasks, and 5 other tasks held out for probes
# and finetuning.
PRETRAIN_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "button-press-topdown-v3",
    "window-open-v3",
    "plate-slide-v3",
)
HELD_OUT_TASKS = ("drawer-close-v3", "window-close-v3", "button-press-v3", "sweep-into-v3", "door-close-v3")

# Short instructions for the tasks we generate most; other tasks get their name in words
# ("button-press-topdown-v3" -> "button press topdown").
TASK_INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "door-close-v3": "close the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-v3": "press the button",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "lever-pull-v3": "pull the lever up",
    "coffee-push-v3": "push the mug under the coffee machine",
    "plate-slide-v3": "slide the plate into the goal",
    "sweep-into-v3": "sweep the puck into the hole",
    "basketball-v3": "put the ball into the basket",
    "assembly-v3": "put the ring on the peg",
}

ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
PROPRIO_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"]


def instruction_for(task: str) -> str:
    """The language instruction recorded for ``task``."""
    return TASK_INSTRUCTIONS.get(task) or task.removesuffix("-v3").replace("-", " ")


def _select_gl_backend() -> str:
    """Pick MuJoCo's headless GL backend before mujoco is imported: the user's ``MUJOCO_GL`` if
    set, else EGL when libEGL is present, else OSMesa."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    backend = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    os.environ["MUJOCO_GL"] = backend
    if backend == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return backend


# MuJoCo reads MUJOCO_GL once, when it is first imported (by us, by metaworld or by a test), so
# the headless backend is chosen as soon as this module loads. Only sets a variable left unset.
_select_gl_backend()


def _load_triton_before_gl() -> None:
    """Load triton's LLVM before a GL context loads Mesa's (see the module docstring): generating
    episodes and then building a GFDM (diffusers) in one process must not crash."""
    if importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except ImportError:  # a triton that does not load here is one torch will not load either
        pass


def _import_sim():
    _select_gl_backend()
    _load_triton_before_gl()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import metaworld  # noqa: F401  (registers envs; imports mujoco with the chosen backend)
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP
    return mujoco, ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


def available_tasks() -> list[str]:
    """Meta-World v3 task names that have a scripted expert."""
    _, envs, policies = _import_sim()
    return sorted(t for t in policies if f"{t}-goal-observable" in envs)


def apply_fast_render(model) -> None:
    """No shadows, no multisampling, no reflections: ~10x cheaper offscreen frames. Must run
    before the renderer (its GL context and buffers) is created."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.mat_reflectance[:] = 0


_LIVE_ENVS: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()


_ATEXIT_REGISTERED = False


def _close_live_envs() -> None:
    # Free GL contexts before mujoco.egl's own exit hook terminates the EGL display; freeing them
    # later (from __del__ during shutdown) raises EGL_NOT_INITIALIZED noise. Registered after
    # the first GL context is made, so it runs first (exit hooks run last-registered first).
    for env in list(_LIVE_ENVS):
        try:
            env.close()
        except Exception:  # noqa: BLE001  shutting down anyway
            pass


class MetaWorldEnv:
    """One Meta-World v3 task, goal observable, rendered offscreen from one camera.

    ``reset(seed)`` -> obs; ``step(action)`` -> ``(obs, reward, success, done)`` where ``done``
    is True when ``max_steps`` actions have been taken (truncation; Meta-World never terminates).
    obs: ``image`` uint8 [size, size, 3] upright RGB (None when ``render=False``), ``proprio``
    float32 [4] (hand x, y, z in metres, gripper opening), ``state`` float64 [39] (full obs).
    """

    def __init__(self, task: str, camera: str = "corner", size: int = 64, seed: int = 0, fast_render: bool = True, max_steps: int = 500):
        mujoco, envs, policies = _import_sim()
        key = f"{task}-goal-observable"
        if key not in envs:
            valid = sorted(k.removesuffix("-goal-observable") for k in envs)
            raise ValueError(f"unknown Meta-World task {task!r}; valid: {valid}")
        self.task, self.camera, self.size, self.fast_render = task, camera, size, fast_render
        self._mujoco = mujoco
        self.env = envs[key](seed=seed)
        # The goal-observable constructor freezes the first random goal; unfreeze so every
        # reset(seed) draws its own goal/object layout from the env's seeded generator.
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        self.env.max_path_length = max_steps
        self.max_steps = max_steps
        model = self.env.model
        if camera not in [model.camera(i).name for i in range(model.ncam)]:
            raise ValueError(f"unknown camera {camera!r}; valid: {[model.camera(i).name for i in range(model.ncam)]}")
        if fast_render:
            apply_fast_render(model)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._renderer = mujoco.Renderer(model, size, size)
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:  # after the first GL context, i.e. after mujoco.egl's hook
            atexit.register(_close_live_envs)
            _ATEXIT_REGISTERED = True
        self._rot180 = camera.startswith("corner")
        self.expert = policies[task]() if task in policies else None
        self._obs: np.ndarray | None = None
        _LIVE_ENVS.add(self)

    def render(self) -> np.ndarray:
        """Current scene from the camera: uint8 [size, size, 3], upright."""
        self._renderer.update_scene(self.env.data, camera=self.camera)
        frame = self._renderer.render()  # makes this renderer's GL context current first
        return np.ascontiguousarray(np.rot90(frame, 2)) if self._rot180 else frame

    def _obs_dict(self, render: bool) -> dict[str, Any]:
        s = self._obs
        return {"image": self.render() if render else None, "proprio": s[:4].astype(np.float32), "state": s.copy()}

    def reset(self, seed: int | None = None, render: bool = True) -> dict[str, Any]:
        if seed is not None:
            self.env.seed(int(seed))
        self._obs, _ = self.env.reset()
        # reset leaves some of what the renderer reads as the previous episode left it: frame 0
        # depended on which episode the env ran before (so on which worker ran it; measured: up
        # to 169 levels on push-v3 at 96 px). mj_forward recomputes it without advancing time;
        # later states then differ from before this line by solver round-off, amplified by contacts.
        self._mujoco.mj_forward(self.env.model, self.env.data)
        return self._obs_dict(render)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (unclipped, float32 [4])."""
        assert self.expert is not None, f"no scripted expert for {self.task}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": we clip ourselves
            return np.asarray(self.expert.get_action(self._obs), np.float32)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], float, bool, bool]:
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self._obs, reward, _, truncated, info = self.env.step(action)
        return self._obs_dict(render), float(reward), bool(info["success"]), bool(truncated)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
            self.env.close()


# -- generation ---------------------------------------------------------------------------------


@dataclass
class GenerateConfig:
    """Parameters of one ``generate`` run (saved to ``meta/defi_generate.json``)."""

    tasks: list[str]
    episodes_per_task: int
    size: int = 64
    fps: int = 20
    camera: str = "corner"
    seed: int = 0
    action_noise: float = 0.0  # std of Gaussian noise added to the expert's action, before clipping
    keep_failed_frac: float = 1.0  # fraction of unsuccessful episodes kept (drawn per episode)
    max_steps: int = 150  # actions per episode at most
    steps_after_success: int = 10  # keep recording this many steps after the first success
    action_free: bool = False  # write videos (+ success) without action/state columns
    fast_render: bool = True
    crf: int = 20

    def __post_init__(self) -> None:
        bad = []
        if not self.tasks:
            bad.append("tasks is empty")
        if self.episodes_per_task < 1:
            bad.append(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if not 16 <= self.size <= 2048:
            bad.append(f"size must be in [16, 2048], got {self.size}")
        if self.size % 2:
            bad.append(f"size must be even (yuv420p), got {self.size}")
        if self.fps < 1 or int(self.fps) != self.fps:
            bad.append(f"fps must be a positive integer, got {self.fps}")
        if not 0.0 <= self.keep_failed_frac <= 1.0:
            bad.append(f"keep_failed_frac must be in [0, 1], got {self.keep_failed_frac}")
        if self.action_noise < 0:
            bad.append(f"action_noise must be >= 0, got {self.action_noise}")
        if self.max_steps < 1:
            bad.append(f"max_steps must be >= 1, got {self.max_steps}")
        if bad:
            raise ValueError("; ".join(bad))


@dataclass
class Rollout:
    task: str
    episode: int  # index of this episode within its task (before failed episodes are dropped)
    frames: np.ndarray  # uint8 [N, H, W, 3]
    actions: np.ndarray  # float32 [N, 4], executed (noisy, clipped); action i follows frame i
    proprio: np.ndarray  # float32 [N, 4]
    state: np.ndarray  # float32 [N, 39]
    reward: np.ndarray  # float32 [N], after action i
    success: np.ndarray  # bool [N], after action i
    keep: bool
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def episode_seed(seed: int, task: str, episode: int) -> np.random.SeedSequence:
    """Seed of one episode: depends on the run seed, the task name and the episode number only,
    so results do not depend on how episodes were spread over workers."""
    task_key = int.from_bytes(task.encode(), "little") % (2**63)
    return np.random.SeedSequence([seed, task_key, episode])


_ENVS: dict[tuple, MetaWorldEnv] = {}  # one env per (task, camera, size, ...) per process


def _get_env(cfg: GenerateConfig, task: str) -> MetaWorldEnv:
    key = (task, cfg.camera, cfg.size, cfg.fast_render, cfg.max_steps)
    if key not in _ENVS:
        _ENVS[key] = MetaWorldEnv(task, cfg.camera, cfg.size, cfg.seed, cfg.fast_render, cfg.max_steps)
    return _ENVS[key]


def rollout(cfg: GenerateConfig, task: str, episode: int) -> Rollout:
    """Roll the scripted expert for one episode; frame i is observed before action i."""
    t0 = time.perf_counter()
    env = _get_env(cfg, task)
    ss = episode_seed(cfg.seed, task, episode)
    env_seed, noise_ss, keep_ss = ss.spawn(3)
    rng = np.random.default_rng(noise_ss)
    obs = env.reset(int(env_seed.generate_state(1)[0]))
    frames, actions, proprio, state, reward, success = [], [], [], [], [], []
    first_success = None
    for t in range(cfg.max_steps):
        a = env.expert_action()
        if cfg.action_noise > 0:
            a = a + rng.normal(0.0, cfg.action_noise, size=a.shape).astype(np.float32)
        a = np.clip(a, -1.0, 1.0).astype(np.float32)
        frames.append(obs["image"])
        proprio.append(obs["proprio"])
        state.append(obs["state"].astype(np.float32))
        actions.append(a)
        obs, r, ok, done = env.step(a)
        reward.append(r)
        success.append(ok)
        if ok and first_success is None:
            first_success = t
        if done or (first_success is not None and t - first_success >= cfg.steps_after_success):
            break
    succeeded = first_success is not None
    keep = succeeded or bool(np.random.default_rng(keep_ss).random() < cfg.keep_failed_frac)
    return Rollout(
        task,
        episode,
        np.stack(frames),
        np.stack(actions),
        np.stack(proprio),
        np.stack(state),
        np.asarray(reward, np.float32),
        np.asarray(success, bool),
        keep,
        time.perf_counter() - t0,
        {"first_success_step": -1 if first_success is None else first_success},
    )


def _rollout_job(args: tuple[GenerateConfig, str, int]) -> Rollout:
    return rollout(*args)


def _rollout_stage(args: tuple[GenerateConfig, str, int]):
    """The runner's task stage: one episode job in, its ``Rollout`` out (module-level, so spawned
    workers can load it)."""
    yield _rollout_job(args)


def generate(
    tasks: list[str] | str,
    episodes_per_task: int,
    out_dir: str | Path,
    size: int = 64,
    fps: int = 20,
    camera: str = "corner",
    seed: int = 0,
    action_noise: float = 0.0,
    keep_failed_frac: float = 1.0,
    max_steps: int = 150,
    action_free: bool = False,
    workers: int = 1,
    steps_after_success: int = 10,
    fast_render: bool = True,
    crf: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll scripted experts and write a LeRobot v3.0 dataset to ``out_dir`` (must not exist
    or be empty). Returns a summary (counts, success rate, seconds).

    Each episode ends ``steps_after_success`` steps after the first success or after
    ``max_steps`` actions. Episodes that never succeed are kept with probability
    ``keep_failed_frac`` (marked ``success=False``). Frames and rows are 1:1: row i holds the
    frame observed at ``timestamp = i / fps`` seconds and the action taken from it.
    Deterministic given ``seed`` (any ``workers``). ``workers > 1`` runs episodes on the local
    backend of ``defi.pipelines.runner`` (spawned workers, results in episode order), one env per
    task per process.
    """
    from tqdm import tqdm

    from defi.curate.lerobot import LeRobotV3Writer

    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    cfg = GenerateConfig(
        tasks=list(tasks),
        episodes_per_task=episodes_per_task,
        size=size,
        fps=fps,
        camera=camera,
        seed=seed,
        action_noise=action_noise,
        keep_failed_frac=keep_failed_frac,
        max_steps=max_steps,
        steps_after_success=steps_after_success,
        action_free=action_free,
        fast_render=fast_render,
        crf=crf,
    )
    valid = available_tasks()
    unknown = [t for t in cfg.tasks if t not in valid]
    if unknown:
        raise ValueError(f"unknown or expert-less Meta-World tasks {unknown}; valid: {valid}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")

    writer = LeRobotV3Writer(out, fps, _features(action_free), {camera: (size, size)}, robot_type="sawyer", crf=crf)

    jobs = [(cfg, t, e) for t in cfg.tasks for e in range(episodes_per_task)]
    t0 = time.perf_counter()
    per_task = {t: {"attempted": 0, "succeeded": 0, "kept": 0, "frames": 0} for t in cfg.tasks}
    sim_seconds = 0.0

    def consume(results):
        nonlocal sim_seconds
        for r in tqdm(results, total=len(jobs), desc="sim episodes", disable=not progress):
            s = per_task[r.task]
            s["attempted"] += 1
            s["succeeded"] += int(r.success.any())
            sim_seconds += r.seconds
            if not r.keep:
                continue
            s["kept"] += 1
            s["frames"] += len(r.frames)
            writer.add_episode(_episode_buffer(r, camera, action_free))

    if workers <= 1:
        consume(map(_rollout_job, jobs))
    else:
        # the project's local runner (imported here: training/ loads pipelines/ only for this);
        # spawn: a forked child would inherit the parent's GL/MuJoCo state, which is not
        # fork-safe; ordered: episode indices are deterministic
        from defi.pipelines.ray_adapter import RayConfig
        from defi.pipelines.runner import Runner, Stage

        stages = [Stage("sim episode", _rollout_stage, cpus=1)]
        with (
            Runner("local", RayConfig(), workers=workers, why="sim generate: workers > 1", start="spawn") as runner,
            contextlib.closing(runner.stream(jobs, stages, ordered=True)) as stream,  # closed on an error: workers end
        ):
            consume(stream)
    info = writer.close()
    import json
    from dataclasses import asdict

    (out / "meta" / "defi_generate.json").write_text(json.dumps(asdict(cfg), indent=2))
    wall = time.perf_counter() - t0
    attempted = sum(s["attempted"] for s in per_task.values())
    succeeded = sum(s["succeeded"] for s in per_task.values())
    return {
        "out_dir": str(out),
        "episodes_attempted": attempted,
        "episodes_written": info["total_episodes"],
        "episodes_succeeded": succeeded,
        "success_rate": succeeded / max(attempted, 1),
        "frames": info["total_frames"],
        "per_task": per_task,
        "seconds": wall,
        "frames_per_second": info["total_frames"] / max(wall, 1e-9),
        "sim_seconds": sim_seconds,
        "workers": workers,
    }


def _features(action_free: bool) -> dict[str, dict[str, Any]]:
    """The dataset's columns: every robot signal, or only success for action-free video."""
    features: dict[str, dict[str, Any]] = {}
    if not action_free:
        features["action"] = {"dtype": "float32", "shape": [4], "names": ACTION_NAMES}
        features["observation.state"] = {"dtype": "float32", "shape": [4], "names": PROPRIO_NAMES}
        features["observation.environment_state"] = {"dtype": "float32", "shape": [39], "names": None}
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    return features


def _episode_buffer(r, camera: str, action_free: bool):
    """The ``EpisodeBuffer`` of one rollout, with its task, episode index and success as extras."""
    from defi.curate.lerobot import EpisodeBuffer

    cols = {"next.success": r.success}
    if not action_free:
        cols.update(
            {"action": r.actions, "observation.state": r.proprio, "observation.environment_state": r.state, "next.reward": r.reward}
        )
    return EpisodeBuffer(
        frames={camera: r.frames},
        columns=cols,
        task=instruction_for(r.task),
        extra={
            "success": bool(r.success.any()),
            "env_task": r.task,
            "task_episode": r.episode,
            "first_success_step": r.extra["first_success_step"],
        },
    )
