"""Task stages for the runner's tests with spawned workers (tests/pipelines/test_runner.py): a
spawned worker imports its stages by module name, so they live here, in a module on the tests'
path that imports nothing heavy (a test module would load torch and the pipelines in each worker)."""

from __future__ import annotations

import os
import time


def slow_first(item: int, n: int, base: float):
    """``n`` outputs of ``item``, each after a sleep that shrinks with the item: early items end
    last, so they finish out of order across workers."""
    for j in range(n):
        time.sleep(base * (4 - item % 4))
        yield (item, j, os.getpid())


def die_on(item: int, bad: int):
    if item == bad:
        os._exit(5)
    yield item


def threads(item: int):
    """What a spawned worker sees: its pid, its OMP cap, and its parent."""
    yield (item, os.getpid(), os.environ.get("OMP_NUM_THREADS"), os.getppid())


def fail_on(item: int, bad: int):
    if item == bad:
        raise ValueError(f"item {item} is bad")
    yield item
