"""Simulators that make labeled robot episodes (Meta-World) and write them as LeRobot v3.0 datasets.

``envs.ENVS`` declares each simulator's shapes, defaults and tasks in one class (``--env``).
Importing this package is cheap: mujoco and metaworld load when an env is made or ``generate`` runs.
"""

from defi.curate.lerobot import EpisodeBuffer, LeRobotV3Writer
from .metaworld_env import HELD_OUT_TASKS, PRETRAIN_TASKS, TASK_INSTRUCTIONS, GenerateConfig, MetaWorldEnv, generate, instruction_for

__all__ = [
    "EpisodeBuffer",
    "LeRobotV3Writer",
    "MetaWorldEnv",
    "GenerateConfig",
    "generate",
    "instruction_for",
    "TASK_INSTRUCTIONS",
    "PRETRAIN_TASKS",
    "HELD_OUT_TASKS",
]
