"""The simulators ``defi sim generate`` and ``defi eval`` know, each declared in one class.

An env class states what a policy trained on its episodes must match (``action_dim``,
``state_dim`` of the proprioception it gives, 0 when none), the defaults of the frames it renders
(``image_size``, ``camera``) and of an episode's length (``max_steps``), how its tasks are named
(``task_help``, ``tasks()``), and how to make one env, an instruction and an episode's seed.
``ENVS`` maps each ``--env`` name to its class.

To add a simulator: write its env module (an env with ``reset(seed, render)`` -> obs dict with
``proprio``, ``step(action, render)`` -> ``(obs, reward, success, done)``, ``render()`` -> uint8
[S, S, 3]; and a ``generate`` that writes a LeRobot v3.0 dataset), then a class here and its
``ENVS`` entry. ``defi sim generate --env`` and ``defi eval --env`` take their choices and
shapes from ``ENVS``.

Importing this module is cheap (no numpy, torch, mujoco): the command line builds its ``--help``
from it. The simulator itself loads when a method below is called.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EnvConfig:
    """One simulator's declared shapes and defaults; subclasses fill every class attribute and
    method (the simulator is imported inside the methods)."""

    name: ClassVar[str]  # the --env value
    title: ClassVar[str]  # in messages: "unknown <title> task(s)", "does not match <title>'s ..."
    action_dim: ClassVar[int]  # width of one action
    state_dim: ClassVar[int]  # width of the proprioception ``reset``/``step`` return; 0: none
    image_size: ClassVar[int]  # rendered frame side, px, when none is asked for
    camera: ClassVar[str]  # camera rendered when none is asked for
    max_steps: ClassVar[int]  # actions per episode at most, when not asked for
    task_help: ClassVar[str]  # how tasks are named, for --help

    @classmethod
    def tasks(cls) -> list[str]:
        """Task names this simulator can roll (loads the simulator)."""
        raise NotImplementedError

    @classmethod
    def make(cls, task: str, camera: str, size: int, seed: int, fast_render: bool, max_steps: int) -> Any:
        """One env of ``task`` rendering ``size`` px frames from ``camera``."""
        raise NotImplementedError

    @classmethod
    def instruction(cls, task: str) -> str:
        """The language instruction recorded for ``task`` in generated episodes."""
        raise NotImplementedError

    @classmethod
    def episode_seed(cls, seed: int, task: str, episode: int) -> Any:
        """``numpy.random.SeedSequence`` of episode ``episode`` of ``task`` in a run seeded ``seed``;
        generation and evaluation share it, so evaluation can replay the generated layouts."""
        raise NotImplementedError

    @classmethod
    def generate(cls, tasks: list[str], episodes_per_task: int, out_dir: str, **kwargs: Any) -> dict[str, Any]:
        """Scripted-expert episodes written as a LeRobot v3.0 dataset (``defi sim generate``)."""
        raise NotImplementedError

    @classmethod
    def check_policy(cls, action_dim: int, state_dim: int) -> None:
        """Refuse (``ValueError``, one line naming both) a policy whose action or proprioception
        width is not this simulator's."""
        if action_dim != cls.action_dim:
            raise ValueError(f"policy action_dim {action_dim} does not match {cls.title}'s action_dim {cls.action_dim}")
        if state_dim and state_dim != cls.state_dim:
            raise ValueError(f"policy state_dim {state_dim} does not match {cls.title}'s state_dim {cls.state_dim or 'none'}")


class MetaWorldEnvConfig(EnvConfig):
    """Meta-World v3 tasks, goal observable (``metaworld_env``): actions are hand dx, dy, dz and
    gripper; proprioception is hand x, y, z and gripper opening."""

    name = "metaworld"
    title = "Meta-World"
    action_dim = 4
    state_dim = 4
    image_size = 64
    camera = "corner"
    max_steps = 150
    task_help = "Meta-World v3 task names, e.g. reach-v3,push-v3"

    @classmethod
    def tasks(cls) -> list[str]:
        from .metaworld_env import available_tasks

        return available_tasks()

    @classmethod
    def make(cls, task: str, camera: str, size: int, seed: int, fast_render: bool, max_steps: int) -> Any:
        from .metaworld_env import MetaWorldEnv

        return MetaWorldEnv(task, camera, size, seed, fast_render, max_steps)

    @classmethod
    def instruction(cls, task: str) -> str:
        from .metaworld_env import instruction_for

        return instruction_for(task)

    @classmethod
    def episode_seed(cls, seed: int, task: str, episode: int) -> Any:
        from .metaworld_env import episode_seed

        return episode_seed(seed, task, episode)

    @classmethod
    def generate(cls, tasks: list[str], episodes_per_task: int, out_dir: str, **kwargs: Any) -> dict[str, Any]:
        from .metaworld_env import generate

        return generate(tasks, episodes_per_task, out_dir, **kwargs)


ENVS: dict[str, type[EnvConfig]] = {"metaworld": MetaWorldEnvConfig}
DEFAULT_ENV = "metaworld"


def env_config(name: str) -> type[EnvConfig]:
    """The env class of ``--env name`` (``ValueError`` naming the valid ones)."""
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; valid: {', '.join(ENVS)}")
    return ENVS[name]
