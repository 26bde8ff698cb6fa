"""The Ray backend of the runner (``runner.py``): a Ray session for a run and the mapping of a
chain of stages onto Ray Data. Nothing here knows curate or label; their stages are plain
functions and classes (``curate_video.curate_stages``, ``label.label_stages``).

A task stage becomes ``flat_map`` (one Ray task per input item, as many as the cluster's CPUs
allow); an actor stage becomes ``map_batches`` over an ``ActorPoolStrategy`` of ``actors``
actors, each holding one instance of the stage's class (one model), a GPU each when the stage
asks for one. Rows carry pickled Python objects in one binary column (``item``): records,
encoded sample bytes and frames stay as they are, and blocks stay small because a stage yields
one output at a time (Ray Data splits generator output into blocks), so memory is bounded by the
block size. Only this module and ``runner.py`` import ray, and only inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RayConfig:
    address: str | None = field(
        default=None, metadata={"help": "address of the Ray cluster to join, e.g. ray://head:10001 (default: start a local Ray)"}
    )
    num_cpus: int | None = field(default=None, metadata={"help": "CPUs for a local Ray (default: all)"})
    temp_dir: str | None = field(
        default=None, metadata={"help": "folder for the local Ray's sockets, logs and spill files (default: a fresh dir under /tmp)"}
    )
    clip_actors: int = field(default=1, metadata={"help": "CLIP scoring actors (each takes a GPU when present)"})

    def wants_ray(self) -> str | None:
        """Why these settings ask for Ray (an address, or a local Ray's CPUs or temp dir), or None."""
        for name in ("address", "num_cpus", "temp_dir"):
            if getattr(self, name) is not None:
                return f"--ray.{name} given"
        return None


@contextlib.contextmanager
def ray_session(rcfg: RayConfig, scratch: str | None = None):
    """``ray.init`` for a run: joins ``address`` or starts a local Ray whose temp dir lives under
    the run's scratch space (not ~/.ray or /tmp/ray), with auth and usage stats off. Yields what
    the run record keeps of it (address, temp dir, CPUs, GPUs, live nodes)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    started = False
    tmp = None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING", "configure_logging": True}
        if rcfg.address:
            kwargs["address"] = rcfg.address
            # workers of a cluster run with their node's environment, not the driver's: without
            # this, `AWS_ENDPOINT_URL=... defi curate s3://... --address` lists on the driver's
            # endpoint and reads on AWS's. Credentials are not forwarded (the runtime env is kept
            # in the GCS and shown by the dashboard): nodes bring their own.
            env_vars = storage_env()
            if env_vars:
                kwargs["runtime_env"] = {"env_vars": env_vars}
        else:
            # unix socket paths must stay short (~107 bytes): a fresh short dir under /tmp
            tmp = rcfg.temp_dir or tempfile.mkdtemp(prefix="defi-ray-", dir=scratch or "/tmp")
            kwargs["_temp_dir"] = os.path.abspath(tmp)
            if rcfg.num_cpus:
                kwargs["num_cpus"] = rcfg.num_cpus
        ray.init(**kwargs)
        started = True
    for name in ("ray.data", "ray"):  # our own progress bar and summary say what matters
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        res = ray.cluster_resources()
        yield {
            "address": rcfg.address or "local",
            "temp_dir": tmp,
            "cpus": res.get("CPU", 0),
            "gpus": res.get("GPU", 0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        }
    finally:
        if started:
            ray.shutdown()
        if tmp is not None and not rcfg.temp_dir:
            # our own fresh dir (sockets, logs of this one session): gone with the session, so
            # runs do not leave a directory each under /tmp; a --ray.temp_dir given is kept
            shutil.rmtree(tmp, ignore_errors=True)


# storage settings (not secrets) that the driver's fsspec/botocore read from the environment
_STORAGE_ENV_PREFIXES = ("AWS_ENDPOINT_URL", "FSSPEC_")
_STORAGE_ENV_NAMES = ("AWS_REGION", "AWS_DEFAULT_REGION")
_SECRET = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)  # e.g. FSSPEC_S3_SECRET stays home


def storage_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's object-store settings that cluster workers need to see the same storage:
    endpoint URLs (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``), region and ``FSSPEC_*``."""
    environ = os.environ if environ is None else environ
    return {
        k: v
        for k, v in sorted(environ.items())
        if (k.startswith(_STORAGE_ENV_PREFIXES) or k in _STORAGE_ENV_NAMES) and not _SECRET.search(k)
    }


def ray_gpus() -> float:
    """GPUs of the Ray cluster this process has joined."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _task_rows(row: dict[str, Any], stage) -> Iterator[dict[str, Any]]:
    for out in stage.fn(pickle.loads(row["item"]), *stage.args):
        yield {"item": pickle.dumps(out)}


class _Actor:
    """One instance of an actor stage's class per Ray actor; maps batches of pickled items."""

    def __init__(self, stage):
        self.obj = stage.fn(*stage.args)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        outs = self.obj([pickle.loads(b) for b in batch["item"]])
        return {"item": [pickle.dumps(o) for o in outs]}


def ray_stream(items: list[Any], stages: list, gpus: list[int]) -> Iterator[Any]:
    """Run ``stages`` over ``items`` on Ray Data (``gpus``: GPUs per actor of each stage, already
    resolved); yield the last stage's outputs as they come."""
    import ray

    # one item per block, so tasks spread over every CPU (and every node) from the start
    ds = ray.data.from_items([{"item": pickle.dumps(x)} for x in items], override_num_blocks=max(1, len(items)))
    for stage, g in zip(stages, gpus, strict=True):
        remote: dict[str, Any] = {} if stage.cpus is None else {"num_cpus": stage.cpus}
        if stage.actors:
            ds = ds.map_batches(
                _Actor,
                fn_constructor_args=(stage,),
                batch_size=stage.batch_size,
                compute=ray.data.ActorPoolStrategy(size=stage.actors),
                num_gpus=g,
                batch_format="numpy",
                **remote,
            )
        else:
            ds = ds.flat_map(_task_rows, fn_args=(stage,), **remote)
    # Ray Data configures its loggers lazily; quiet the two that talk over our progress bar
    for name in ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for row in ds.iter_rows():
        yield pickle.loads(row["item"])


def ray_node_id() -> str | None:
    """The Ray node this process runs on, when it is a Ray worker or driver; else None."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()
