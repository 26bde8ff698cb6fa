"""Run ids, version capture and run records, one way for every command that writes a corpus
(``defi curate``, ``defi label``): ``ROOT/runs/<run_id>.json`` is written when the run starts
(``status: running``) and again when it ends (``done`` or ``failed``), with the resolved config,
the argv, the versions of the packages that shaped the output, counts and timings."""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
import uuid
from typing import Any

from defi.schemas.corpus import Corpus, defi_version

# packages whose versions can change what a run writes (decoders, encoders, models, formats)
VERSIONED = ("ray", "av", "pyarrow", "duckdb", "torch", "open-clip-torch", "scenedetect-headless", "webdataset")


def new_run_id(now: float | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sorts by start time (UTC), unique by its random tail."""
    t = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    return t.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def versions() -> dict[str, str]:
    """Python, defi and the installed ``VERSIONED`` packages (absent ones left out)."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "defi": defi_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def record_path(run_id: str) -> str:
    return f"runs/{run_id}.json"


def start_record(corpus: Corpus, run_id: str, command: str, t_start: float, **fields: Any) -> dict[str, Any]:
    """The record of a run that begins: ``fields`` (inputs, config, ...) beside the run id,
    command, start time, versions and argv; saved now, with ``status: running``."""
    record: dict[str, Any] = {
        "run_id": run_id,
        "command": command,
        "status": "running",
        "started_at": dt.datetime.fromtimestamp(t_start, dt.timezone.utc).isoformat(),
        **fields,
        "versions": versions(),
        "argv": sys.argv,
    }
    corpus.write_json(record_path(run_id), record)
    return record


def finish_record(corpus: Corpus, record: dict[str, Any], status: str, t_start: float, **fields: Any) -> dict[str, Any]:
    """Close ``record``: its status, finish time, wall time since ``t_start`` and ``fields``; saved."""
    record.update(
        {"status": status, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(), "wall_s": time.time() - t_start, **fields}
    )
    corpus.write_json(record_path(record["run_id"]), record)
    return record
