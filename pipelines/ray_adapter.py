"""Maps the curate operators onto Ray Data (``defi label`` wires its own actor pool in label.py).

Stage 1 (tasks): ``process_source`` per video -> one row per clip plus one per finished video.
Stage 2 (actor pool, optional): CLIP scoring in batches, one model per actor, a GPU each when the
cluster has GPUs. The driver consumes the stream and commits units (``curate.Committer``).

Rows carry pickled Python objects in one binary column (``item``): clip records, encoded sample
bytes and keyframes stay as they are, and blocks stay small because a video yields one clip at a
time (Ray Data splits generator output into blocks), so memory is bounded by the block size.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from typing import Any
from collections.abc import Iterator

from .sources import SourceSpec
from .curate_video import ClipItem, CurateConfig, VideoDone, process_source, score_clip_batch


@contextlib.contextmanager
def ray_session(rcfg, scratch: str | None = None):
    """``ray.init`` for a run: joins ``address`` or starts a local Ray whose temp dir lives under
    the run's scratch space (not ~/.ray or /tmp/ray), with auth and usage stats off."""
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
    import logging

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
            import shutil

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


def _process_row(row: dict[str, Any], cfg: CurateConfig, run_id: str) -> Iterator[dict[str, Any]]:
    import ray

    spec: SourceSpec = pickle.loads(row["spec"])
    node = ray.get_runtime_context().get_node_id()
    for item in process_source(spec, cfg, run_id):
        if isinstance(item, VideoDone):
            item.node = node
            yield {"kind": "done", "item": pickle.dumps(item)}
        else:
            yield {"kind": "clip", "item": pickle.dumps((spec.sort_key, item))}


class _ClipActor:
    """Holds one CLIP model; scores the clip rows of each batch that carry keyframes."""

    def __init__(self, cfg: CurateConfig):
        self.scorer = cfg.clip

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        kinds = list(batch["kind"])
        items = [pickle.loads(b) for b in batch["item"]]
        clips: list[ClipItem] = [it[1] for k, it in zip(kinds, items, strict=False) if k == "clip"]
        score_clip_batch(clips, self.scorer)
        return {"kind": kinds, "item": [pickle.dumps(it) for it in items]}


def curate_stream(specs: list[SourceSpec], cfg: CurateConfig, run_id: str) -> Iterator[VideoDone | tuple[tuple, ClipItem]]:
    """Run the per-video stages on Ray Data; yield finished videos and their clips as they come."""
    import ray

    items = [{"spec": pickle.dumps(s)} for s in specs]
    # one video per block, so tasks spread over every CPU (and every node) from the start
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.flat_map(_process_row, fn_args=(cfg, run_id), num_cpus=1)
    if cfg.use_clip:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        ds = ds.map_batches(
            _ClipActor,
            fn_constructor_args=(cfg,),
            batch_size=32,
            compute=ray.data.ActorPoolStrategy(size=max(1, cfg.ray.clip_actors)),
            num_gpus=gpus,
            batch_format="numpy",
        )
    import logging

    # Ray Data configures its loggers lazily; quiet the two that talk over our progress bar
    for name in ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for row in ds.iter_rows():
        obj = pickle.loads(row["item"])
        yield obj
