"""One runner for every pipeline that maps work over items (``defi curate``: videos; ``defi
label``: shard reads), with two backends:

- ``ray``: Ray Data (``ray_adapter.py``), on a local Ray or a cluster (``--address``);
- ``local``: a pool of worker processes on this machine (forked, or spawned: ``start``), no Ray.

A pipeline is a list of ``Stage``s. A *task* stage (``actors=0``) is a function ``fn(item,
*args)`` yielding outputs, run once per input item; an *actor* stage (``actors>=1``) is a class
``fn(*args)`` whose instances hold a model and map a batch (a list of up to ``batch_size``
items) to a list of outputs. A stage declares what it needs: ``cpus`` per task or actor, ``gpus``
(a number, or ``"auto"``: one per actor when the machine or cluster has a GPU, probed once per
run), ``actors`` (pool size) and ``batch_size``. Outputs stream back to the driver, which commits
them (``curate.Committer``, ``label.LabelCommitter``); a stage never commits and never imports ray.

On the local backend the leading task stages run fused in ``workers`` processes (one per CPU by
default), each taking the next item when it finishes one; actor stages run in the driver, one
instance each, fed in batches (one machine: one model). Outputs of one item arrive in the order the
stage yields them (a video's clips before its ``VideoDone``), on both backends.

How local workers start (``Runner(..., start=)``, ``local_stream(..., start=)``):

- ``"fork"`` (the default): they start at once, with the driver's imports, so a task stage must
  not use a library whose thread pool or state breaks in a forked child (torch's OpenMP pool, a
  GL/MuJoCo context): model work belongs in actor stages, which run in the driver.
- ``"spawn"``: fresh interpreters (each imports what its stages need, ~seconds), for task stages
  that hold GL/MuJoCo/torch state of their own (``defi eval`` and ``defi sim generate`` roll one
  simulator per worker). Stages travel pickled: their ``fn`` and ``args`` must be picklable
  (module-level functions and classes), which the driver checks before starting any worker.

Either way a worker dies with the driver (``die_with_parent``), caps its thread pools at its
stage's CPUs (``limit_threads``) before it loads its stages, ends on SIGTERM, leaves Ctrl-C to the
driver, and a worker that dies stops the run with ``RunnerError``, as a stage that raises does.

Order across items (``stream(..., ordered=True)``): by default outputs come as workers produce
them, one item's interleaved with another's; ``ordered=True`` yields every output of item i before
any of item i+1 (the driver buffers those that come early, so one slow item holds back, in memory,
what the workers made since), for a result that must not depend on which worker was fastest (a
written dataset's episode order, an eval's episode list). Local backend only: Ray raises
``NotImplementedError`` for it.

Backend choice (``--runner``, see ``RUNNER_HELP``): ``auto`` picks Ray for what needs it (a
cluster, a configured local Ray, several actors of a stage, a large job where Ray's task retries
and spilling pay for its ~6 s start-up) and the local pool otherwise.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import platform
import queue
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .ray_adapter import RayConfig, ray_gpus, ray_node_id, ray_session, ray_stream

BACKENDS = ("auto", "local", "ray")
# above this many tasks (curate: videos; label: shard reads of up to clips_per_unit clips) `auto`
# picks Ray: its start-up (~6 s on 2 cores) is then small beside the work, and it retries the
# task of a worker that dies (the local pool stops the run)
LOCAL_MAX_TASKS = 1000
RUNNER_HELP = (
    "where the work runs: local (a process pool on this machine, no Ray), ray (Ray Data: a local Ray, "
    "or the cluster of --ray.address) or auto: ray when --address/--ray.address, RAY_ADDRESS, --ray.num_cpus "
    f"or --ray.temp_dir is given, a stage asks for more than one actor, or the job has more than {LOCAL_MAX_TASKS} "
    "tasks (videos; for label, shard reads); else local"
)
WORKERS_HELP = "processes of the local runner (default: one per CPU)"


class RunnerError(RuntimeError):
    """A stage raised, or a worker process died, on the local backend."""


@dataclass
class Stage:
    """One step of a pipeline (see the module docstring). ``name`` says which, in errors and logs."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    cpus: float | None = None  # None: the engine's default (Ray: 1 per task, none reserved per actor)
    gpus: float | str = 0
    actors: int = 0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.actors < 0:
            raise ValueError(f"stage {self.name}: actors={self.actors!r} must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"stage {self.name}: batch_size={self.batch_size!r} must be >= 1")
        if self.gpus != "auto" and not (isinstance(self.gpus, (int, float)) and self.gpus >= 0):
            raise ValueError(f"stage {self.name}: gpus={self.gpus!r} must be a number >= 0 or 'auto'")
        if self.cpus is not None and self.cpus <= 0:
            raise ValueError(f"stage {self.name}: cpus={self.cpus!r} must be > 0")


def runner_field_errors(runner: str, workers: int | None) -> list[str]:
    """Validation of a run config's ``runner`` and ``workers`` fields (for ``__post_init__``)."""
    errors = []
    if runner not in BACKENDS:
        errors.append(f"runner={runner!r}: unknown; valid: {', '.join(BACKENDS)}")
    if workers is not None and int(workers) < 1:
        errors.append(f"workers={workers!r}: must be >= 1")
    return errors


def pick_backend(runner: str, ray_cfg: RayConfig, tasks: int, stages: Iterable[Stage] = ()) -> tuple[str, str]:
    """(backend, why) for ``runner`` (auto | local | ray) and a job of ``tasks`` items; the rule
    is ``RUNNER_HELP``'s. ``why`` goes to the run record."""
    if runner not in BACKENDS:
        raise ValueError(f"runner={runner!r}: unknown; valid: {', '.join(BACKENDS)}")
    if runner != "auto":
        return runner, f"--runner {runner}"
    why = ray_cfg.wants_ray() or ("RAY_ADDRESS set" if os.environ.get("RAY_ADDRESS") else None)
    if why:
        return "ray", f"auto: {why}"
    for s in stages:
        if s.actors > 1:
            return "ray", f"auto: stage {s.name} asks for {s.actors} actors"
    if tasks > LOCAL_MAX_TASKS:
        return "ray", f"auto: {tasks} tasks > {LOCAL_MAX_TASKS}"
    return "local", f"auto: no cluster, {tasks} tasks <= {LOCAL_MAX_TASKS}"


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def node_id() -> str:
    """Where this code runs: the Ray node id in a Ray worker, else ``local:<hostname>``."""
    return ray_node_id() or f"local:{platform.node()}"


def _local_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


START_METHODS = ("fork", "spawn")


class Runner:
    """``with Runner(backend, ray_cfg) as r: for out in r.stream(items, stages): ...``

    Entering starts the backend (a Ray session; nothing for the local pool, whose workers start
    with each ``stream``); ``info`` is what the run record keeps of it, ``start_s`` what starting
    cost, ``ray_info`` the Ray session's facts (Ray only).

    Local backend: ``workers`` processes at most (default one per CPU), started by ``start``:
    ``"fork"`` (default) or ``"spawn"`` for task stages holding GL/MuJoCo/torch state (picklable,
    module-level stage functions; see the module docstring). ``stream(items, stages,
    ordered=True)`` yields item i's outputs before item i+1's (local backend only). E.g. the
    simulator's episodes::

        with Runner("local", RayConfig(), workers=4, start="spawn") as r:
            for result in r.stream(jobs, [Stage("episode", run_one, cpus=1)], ordered=True): ...
    """

    def __init__(self, backend: str, ray_cfg: RayConfig, workers: int | None = None, why: str = "", start: str = "fork"):
        if backend not in ("local", "ray"):
            raise ValueError(f"backend={backend!r}: must be local or ray (resolve auto with pick_backend)")
        if start not in START_METHODS:
            raise ValueError(f"start={start!r}: must be one of {', '.join(START_METHODS)}")
        self.backend, self.ray_cfg, self.why, self.start = backend, ray_cfg, why, start
        self.workers = workers or cpu_count()
        self.info: dict[str, Any] = {}
        self.ray_info: dict[str, Any] | None = None
        self.start_s = 0.0
        self._stack = contextlib.ExitStack()
        self._gpus: float | None = None

    def __enter__(self) -> Runner:
        t = time.time()
        if self.backend == "ray":
            self.ray_info = self._stack.enter_context(ray_session(self.ray_cfg))
            self.info = {"backend": "ray", "why": self.why, **self.ray_info}
        else:
            self.info = {"backend": "local", "why": self.why, "workers": self.workers, "cpus": cpu_count(), "node": node_id()}
            if self.start != "fork":  # the record of a forked pool stays as it was
                self.info["start"] = self.start
        self.start_s = time.time() - t
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def gpus_of(self, stage: Stage) -> int | float:
        """GPUs for each actor of ``stage``: its number, or for ``"auto"`` 1 when the cluster (or,
        locally, torch) sees a GPU, else 0; probed once per run."""
        if stage.gpus != "auto":
            return stage.gpus
        if self._gpus is None:
            self._gpus = ray_gpus() if self.backend == "ray" else _local_gpus()
            self.info["gpus"] = self._gpus
        return 1 if self._gpus >= 1 else 0

    def stream(self, items: list[Any], stages: list[Stage], ordered: bool = False) -> Iterator[Any]:
        """Run ``stages`` over ``items``; yield the last stage's outputs as they come, or with
        ``ordered`` every output of item i before item i+1's (local backend only: on Ray
        ``NotImplementedError``)."""
        if self.backend == "ray" and ordered:
            raise NotImplementedError("ordered=True: the Ray backend yields outputs as they come; use the local backend")
        gpus = [self.gpus_of(s) if s.actors else 0 for s in stages]
        if self.backend == "ray":
            yield from ray_stream(items, stages, gpus)
        else:
            yield from local_stream(items, stages, self.workers, start=self.start, ordered=ordered)


# ----------------------------------------------------------------------------------------------
# the local backend
# ----------------------------------------------------------------------------------------------
_OUT, _DONE, _FAILED = 0, 1, 2


def _chain(stages: list[Stage], item: Any) -> Iterator[Any]:
    if not stages:
        yield item
        return
    first, rest = stages[0], stages[1:]
    for out in first.fn(item, *first.args):
        yield from _chain(rest, out)


def limit_threads(n: int) -> None:
    """In a worker: cap the compute thread pools that read the environment when they start
    (OpenMP, BLAS) at ``n``, as Ray does for its workers (``OMP_NUM_THREADS`` = the task's CPUs).
    OpenCV's pool is set in the driver around the fork (``_forked``): reconfiguring it in a forked
    child can wait forever on the parent's pool threads, which the child does not have. A spawned
    worker calls this before it unpickles its stages, so before their imports load those pools."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


@contextlib.contextmanager
def _forked(threads: int):
    """While worker processes are forked: OpenCV's thread pool at ``threads`` (what the workers
    inherit), back to the driver's setting afterwards."""
    cv2 = sys.modules.get("cv2")
    before = cv2.getNumThreads() if cv2 is not None else None
    if cv2 is not None:
        cv2.setNumThreads(threads)
    try:
        yield
    finally:
        if cv2 is not None:
            cv2.setNumThreads(before)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """In a worker (forked or spawned): end this process when ``parent`` (the driver) ends, however it ends
    (SIGKILL included), so a killed run leaves no worker behind. Linux: the kernel sends SIGKILL
    on the parent's death (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the
    parent pid once a second. Either way, a parent already gone ends the worker at once. (Linux
    sends the signal when the driver *thread* that forked the worker ends: ``_pooled`` starts and
    drains its workers in one thread.)"""
    import signal
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the driver died before the signal was armed
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="defi-parent-watch").start()


def _worker(stages: list[Stage] | bytes, tasks, results, threads: int, parent: int) -> None:
    """A local worker: take (index, item) until None; send each output pickled, then done.
    ``stages`` comes pickled to a spawned worker, unpickled here once its threads are capped."""
    die_with_parent(parent)
    import signal

    # the driver's handlers are not ours: SIGTERM (what the driver's cleanup sends) ends a worker
    # at once, and Ctrl-C, which reaches the whole process group, is the driver's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(threads)
    if isinstance(stages, bytes):
        try:
            stages = pickle.loads(stages)  # imports the stages' modules
        except BaseException:  # noqa: BLE001 - reported to the driver, which raises it as RunnerError
            results.put((_FAILED, None, traceback.format_exc()))
            return
    while True:
        msg = tasks.get()
        if msg is None:
            return
        i, item = msg
        try:
            for out in _chain(stages, item):
                results.put((_OUT, i, pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)))
        except BaseException:  # noqa: BLE001 - reported to the driver, which raises it as RunnerError
            results.put((_FAILED, i, traceback.format_exc()))
            return
        results.put((_DONE, i, None))


def _spawnable(stages: list[Stage]) -> bytes:
    """``stages`` pickled for spawned workers; a stage that does not pickle is named here, in the
    driver, before any worker starts."""
    for s in stages:
        try:
            pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - pickle raises several kinds
            raise RunnerError(
                f"local runner: stage {s.name} cannot go to a spawned worker ({type(e).__name__}: {e}); "
                "its fn and args must be picklable (a module-level function or class)"
            ) from None
    return pickle.dumps(stages, protocol=pickle.HIGHEST_PROTOCOL)


def _pooled(items: list[Any], stages: list[Stage], workers: int, start: str = "fork", ordered: bool = False) -> Iterator[Any]:
    """The task stages over ``items`` in ``workers`` processes started by ``start``; outputs as
    they come, or with ``ordered`` item by item (see the module docstring)."""
    # fork: workers inherit the driver's imports, no start-up cost; spawn: fresh interpreters
    ctx = mp.get_context(start)
    payload_stages: list[Stage] | bytes = _spawnable(stages) if start == "spawn" else stages
    tasks = ctx.Queue()
    results = ctx.Queue(maxsize=4 * workers + 16)  # bounded: workers wait while the driver commits
    for i, x in enumerate(items):
        tasks.put((i, x))
    for _ in range(workers):
        tasks.put(None)
    threads = max(1, int(max(s.cpus or 1 for s in stages)))
    procs = [
        ctx.Process(target=_worker, args=(payload_stages, tasks, results, threads, os.getpid()), daemon=True, name=f"defi-local-{k}")
        for k in range(workers)
    ]
    with _forked(threads) if start == "fork" else contextlib.nullcontext():
        for p in procs:
            p.start()
    left = len(items)
    # ordered: the next item to yield, outputs (pickled) of later items, and the items done
    nxt, early, done = 0, {}, set()
    try:
        while left:
            try:
                kind, i, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RunnerError(
                        f"local runner: worker pid {dead[0].pid} died (exit code {dead[0].exitcode}), its item is lost; "
                        "re-run to resume, or use --runner ray, which retries such tasks"
                    ) from None
                continue
            if kind == _OUT:
                if not ordered or i == nxt:
                    yield pickle.loads(payload)
                else:
                    early.setdefault(i, []).append(payload)
            elif kind == _DONE:
                left -= 1
                if ordered:
                    done.add(i)
                    while nxt in done:  # item nxt is complete: yield what came early of the next
                        done.discard(nxt)
                        nxt += 1
                        for out in early.pop(nxt, ()):
                            yield pickle.loads(out)
            elif i is None:
                raise RunnerError(f"local runner: a worker could not load stage {'/'.join(s.name for s in stages)}:\n{payload}")
            else:
                raise RunnerError(f"local runner: stage {'/'.join(s.name for s in stages)} failed on item {i}:\n{payload}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        tasks.cancel_join_thread()  # items a stopped run never handed out: drop them, do not block exit
        tasks.close()
        results.close()


def _in_driver(stage: Stage, upstream: Iterator[Any]) -> Iterator[Any]:
    if not stage.actors:
        for x in upstream:
            yield from stage.fn(x, *stage.args)
        return
    obj = stage.fn(*stage.args)
    batch: list[Any] = []
    for x in upstream:
        batch.append(x)
        if len(batch) >= stage.batch_size:
            yield from obj(batch)
            batch = []
    if batch:
        yield from obj(batch)


def local_stream(items: list[Any], stages: list[Stage], workers: int, start: str = "fork", ordered: bool = False) -> Iterator[Any]:
    """The local backend: leading task stages fused in a pool of processes started by ``start``
    (fork | spawn; at most one per item and ``workers // cpus`` of the most demanding), the rest
    in the driver, in order. ``ordered``: item i's outputs before item i+1's."""
    if start not in START_METHODS:
        raise ValueError(f"start={start!r}: must be one of {', '.join(START_METHODS)}")
    lead = 0
    while lead < len(stages) and not stages[lead].actors:
        lead += 1
    pool, rest = stages[:lead], stages[lead:]
    if pool and items:
        per = max(s.cpus or 1 for s in pool)
        stream: Iterator[Any] = _pooled(items, pool, max(1, min(len(items), int(workers // per))), start, ordered)
    else:
        stream = iter(items)
    for s in rest:
        stream = _in_driver(s, stream)
    yield from stream
