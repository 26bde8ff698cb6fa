"""Expand what the user gave `defi curate` into a sorted list of source specs.

Accepted: a video file, a folder (searched recursively for video extensions), a glob, an fsspec
URL (file, folder or glob), a manifest (``.csv``, ``.jsonl`` or ``.parquet`` with a ``uri`` column
and optional ``dataset``, ``kind`` (human|robot|web), ``license``, ``language``; other columns are
kept as metadata), a LeRobot v3 dataset folder (one source per episode and camera, with its
actions), and plain ``episode.mp4 + episode.npz`` pairs (robot episodes with actions).

A manifest row whose file is missing still becomes a source: probe records it as ``not_found``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv")
MANIFEST_EXTS = (".csv", ".jsonl", ".parquet")
KINDS = ("human", "robot", "web")


class SourceError(ValueError):
    """An input that cannot be listed at all (the one-line message names it)."""


@dataclass
class SourceSpec:
    """One source to probe. ``robot`` holds what robot episodes carry (see curate.robot)."""

    uri: str
    kind: str | None = None
    dataset: str | None = None
    license: str | None = None
    language: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    robot: dict[str, Any] | None = None  # {"format": "lerobot"|"npz", "root"/"npz": ..., "episode_index", "camera", "from_s", "to_s"}

    @property
    def sort_key(self) -> tuple:
        r = self.robot or {}
        return (self.uri, r.get("episode_index", -1), r.get("camera", ""))


def canonical_uri(uri: str) -> str:
    """One spelling per file: local paths (plain or ``file://``) absolute and normalised (``a/./b``,
    ``a//b`` and ``a/x/../b`` spelled alike, relative to the current folder); URLs with the
    scheme and host lower-cased and the path normalised, query kept. The same video named by
    walking a folder, on the command line or in a manifest is one source, whatever the cwd."""
    if not _is_remote(uri):
        return os.path.abspath(os.path.normpath(_strip_file(uri)))
    from urllib.parse import urlsplit, urlunsplit
    import posixpath

    u = urlsplit(uri)
    path = posixpath.normpath(u.path) if u.path else u.path
    if u.path.endswith("/") and not path.endswith("/"):
        path += "/"
    if path.startswith("//"):  # posixpath keeps a leading '//': one slash is the same object
        path = "/" + path.lstrip("/")
    return urlunsplit((u.scheme.lower(), u.netloc.lower() if u.scheme in ("http", "https") else u.netloc, path, u.query, u.fragment))


def _is_remote(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def _strip_file(s: str) -> str:
    return s[len("file://") :] if s.startswith("file://") else s


def list_sources(inputs: list[str], kind: str | None = None, dataset: str | None = None) -> list[SourceSpec]:
    """Expand inputs into source specs, sorted (so units of work are deterministic) and unique."""
    if kind is not None and kind not in KINDS:
        raise SourceError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    specs: list[SourceSpec] = []
    for inp in inputs:
        specs += _expand(inp)
    for s in specs:
        s.uri = canonical_uri(s.uri)
        s.kind = s.kind or kind
        s.dataset = s.dataset or dataset
    seen, out = set(), []
    for s in sorted(specs, key=lambda s: s.sort_key):
        if s.sort_key not in seen:
            seen.add(s.sort_key)
            out.append(s)
    return out


def _expand(inp: str) -> list[SourceSpec]:
    if _is_remote(inp):
        fs, path = fsspec.core.url_to_fs(inp)
        proto = inp.split("://", 1)[0]
        if any(ch in path for ch in "*?["):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = [p for p in fs.find(path) if p.lower().endswith(VIDEO_EXTS)]
        elif path.lower().endswith(MANIFEST_EXTS):
            return _read_manifest(inp)
        else:
            paths = [path]
        return [SourceSpec(uri=fs.unstrip_protocol(p) if proto != "file" else p) for p in sorted(paths) if p.lower().endswith(VIDEO_EXTS)]
    local = _strip_file(inp)
    if not local.strip():
        raise SourceError("an input is empty")
    if any(ch in local for ch in "*?[") and not os.path.exists(local):
        import glob

        out = []
        for p in sorted(glob.glob(local, recursive=True)):
            out += _expand(p) if os.path.isdir(p) else ([SourceSpec(uri=os.path.abspath(p))] if p.lower().endswith(VIDEO_EXTS) else [])
        return out
    if os.path.isdir(local):
        local = os.path.abspath(local)
        if os.path.exists(os.path.join(local, "meta", "info.json")):
            return _lerobot_sources(local)
        out = []
        for dirpath, dirnames, filenames in os.walk(local):
            dirnames.sort()
            if os.path.exists(os.path.join(dirpath, "meta", "info.json")):
                out += _lerobot_sources(dirpath)
                dirnames[:] = []
                continue
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                if fn.lower().endswith(VIDEO_EXTS):
                    out.append(_video_or_npz_episode(p))
        return out
    if local.lower().endswith(MANIFEST_EXTS):
        if not os.path.exists(local):
            raise SourceError(f"manifest {inp} does not exist")
        return _read_manifest(local)
    if not os.path.exists(local) and not local.lower().endswith(VIDEO_EXTS):
        raise SourceError(f"input {inp} does not exist")
    # a single file (a missing one is kept: probe records it as not_found)
    return [_video_or_npz_episode(os.path.abspath(local))]


def _video_or_npz_episode(path: str) -> SourceSpec:
    path = os.path.abspath(path)
    npz = os.path.splitext(path)[0] + ".npz"
    if os.path.exists(npz):
        return SourceSpec(uri=path, kind="robot", robot={"format": "npz", "npz": npz})
    return SourceSpec(uri=path)


def _lerobot_sources(root: str) -> list[SourceSpec]:
    from defi.curate.lerobot import load_lerobot

    specs = []
    for ep in load_lerobot(root):
        specs.append(
            SourceSpec(
                uri=os.path.abspath(ep.uri),
                kind="robot",
                dataset=os.path.basename(os.path.abspath(root)),
                language=ep.language,
                robot={
                    "format": "lerobot",
                    "root": os.path.abspath(root),
                    "episode_index": int(ep.episode_index),
                    "camera": ep.camera,
                    "from_s": float(ep.from_s),
                    "to_s": float(ep.to_s),
                },
            )
        )
    return specs


def _read_manifest(uri: str) -> list[SourceSpec]:
    import pyarrow as pa

    lower = uri.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            with fsspec.open(uri, "rb") as f:
                rows = pq.read_table(f).to_pylist()
        elif lower.endswith(".csv"):
            import pyarrow.csv as pcsv

            with fsspec.open(uri, "rb") as f:
                rows = pcsv.read_csv(f).to_pylist()
        else:
            with fsspec.open(uri, "rt") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise SourceError(f"manifest {uri}: {str(e).splitlines()[0]}") from None
    base = os.path.dirname(os.path.abspath(_strip_file(uri))) if not _is_remote(uri) else None
    specs = []
    for i, r in enumerate(rows):
        if not r.get("uri"):
            raise SourceError(f"manifest {uri}: row {i} has no 'uri' (columns: {', '.join(r)})")
        u = str(r.pop("uri"))
        if base is not None and not _is_remote(u) and not os.path.isabs(u):
            u = os.path.normpath(os.path.join(base, u))  # relative to the manifest
        k = r.pop("kind", None)
        if k is not None and k not in KINDS:
            raise SourceError(f"manifest {uri}: row {i} has kind {k!r}; valid: {', '.join(KINDS)}")
        specs.append(
            SourceSpec(
                uri=u,
                kind=k,
                dataset=r.pop("dataset", None),
                license=r.pop("license", None),
                language=r.pop("language", None),
                meta={k2: v for k2, v in r.items() if v is not None},
            )
        )
    return specs
