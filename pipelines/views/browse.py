"""`defi browse "SQL"`: render the clips a query returns as a static HTML gallery.

The SQL runs read-only over the corpus views (like ``defi query``) and must return a ``key``
column; its row order is the gallery's order (a key returned twice is shown once, at its first
row). Each clip gets a card: a looping preview, the source file and time range, kept or the reject
reason, every numeric column of its ``clips`` row, the other columns the query returned, and,
when the corpus has latent-action labels, the per-step code strip and latent magnitude plot. The
top of each page summarises the selection (counts, reject reasons, a histogram per score, kept
vs rejected).

Previews: a kept clip shows its H.264 mp4 from its shard as is; a rejected clip (no shard sample)
is cut from its source video, ``--preview-seconds`` at most, at a small size (PyAV, see
``curate.encode.encode_clip``). A preview that cannot be made is a visible "no preview: <reason>"
placeholder, never an error. Media are inlined as ``data:`` URIs and CSS/JS are inline, so a page
is one self-contained file that works offline (no CDN, no http(s) links).

Pagination: more than ``--per-page`` clips go to ``OUT``, ``OUT-2.html``, ``OUT-3.html`` ... (same
folder), each with prev/next and numbered links (relative file names).
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from defi.schemas.corpus import Corpus, label_view_name
from defi.schemas.tables import CLIPS

from . import svg
from .svg import esc

DEFAULT_PREVIEW_SECONDS = 5.0
PREVIEW_SHORT_SIDE = 160  # pixels; source cuts of rejected clips only
PREVIEW_FPS = 10.0  # source cuts when the clip has no out_fps
LABEL_STATS = ("num_steps", "gap_frames", "norm_mean", "norm_p90", "code_entropy", "dominant_code")

# numeric columns of ``clips`` (shown on every card, in schema order)
NUMERIC_COLUMNS = tuple(f.name for f in CLIPS if pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
# scores worth a histogram over a selection: floats that measure the clip (not its position or
# its encoding), plus the map-typed score columns and the labeler's statistics
HIST_COLUMNS = tuple(n for n in NUMERIC_COLUMNS if pa.types.is_floating(CLIPS.field(n).type) and n not in ("start_s", "end_s", "out_fps"))
HIST_LABEL_COLUMNS = ("norm_mean", "norm_p90", "code_entropy")


# ---------------------------------------------------------------------------------------------
# page chrome
# ---------------------------------------------------------------------------------------------
PAGE_CSS = """
:root { --kept: #2e7d32; --rej: #c62828; --fg: #222; --muted: #666; --bg: #f6f6f4; --card: #fff; }
* { box-sizing: border-box; }
body { font: 13px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 0; padding: 16px; }
h1 { font-size: 18px; margin: 0 0 8px; }
h2 { font-size: 15px; margin: 16px 0 8px; }
pre.sql { background: #fff; border: 1px solid #ddd; padding: 6px 8px; white-space: pre-wrap; margin: 4px 0 8px; }
.summary .counts span { margin-right: 14px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
.charts svg { background: #fff; border: 1px solid #e2e2e2; }
nav.pages { margin: 12px 0; display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
nav.pages a, nav.pages span { padding: 2px 8px; border: 1px solid #ccc; border-radius: 3px; text-decoration: none;
  color: var(--fg); background: #fff; }
nav.pages span.current { background: var(--fg); color: #fff; }
nav.pages span.disabled { color: #bbb; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 10px; }
.card { background: var(--card); border: 1px solid #ddd; border-left: 4px solid var(--kept); border-radius: 4px;
  padding: 8px; overflow: hidden; }
.card.rejected { border-left-color: var(--rej); }
.card.unknown { border-left-color: #999; }
.card video { width: 100%; max-height: 200px; background: #000; display: block; }
.nopreview { height: 120px; display: flex; align-items: center; justify-content: center; text-align: center;
  background: repeating-linear-gradient(45deg, #eee, #eee 8px, #e4e4e4 8px, #e4e4e4 16px); color: var(--muted);
  padding: 8px; }
.card .head { margin: 6px 0 4px; }
.card .key { font-family: ui-monospace, monospace; font-size: 11px; color: var(--muted); word-break: break-all; }
.card .lang { font-style: italic; }
.card .dataset { font-size: 11px; color: var(--muted); }
.card .src { font-weight: 600; word-break: break-all; }
.status { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; font-size: 11px; }
.status.kept { background: var(--kept); }
.status.rejected { background: var(--rej); }
.status.unknown { background: #999; }
.card .labels { margin: 6px 0; }
.card .labels .lname { font-size: 11px; color: var(--muted); }
table.scores { border-collapse: collapse; width: 100%; font-size: 11px; margin-top: 4px; }
table.scores td { padding: 1px 4px; border-top: 1px solid #f0f0f0; }
table.scores td.v { text-align: right; font-variant-numeric: tabular-nums; }
table.scores tr.null td.v { color: #bbb; }
table.scores tr.query td { background: #f4f8ff; }
details summary { cursor: pointer; color: var(--muted); font-size: 11px; }
"""

# Tiny inline script: click a video to pause/resume it (autoplay muted loop needs no script).
_PAGE_JS = """
document.addEventListener('click', function (e) {
  var v = e.target;
  if (v && v.tagName === 'VIDEO') { if (v.paused) { v.play(); } else { v.pause(); } }
});
"""


def render_page(title: str, body_html: str) -> str:
    """A complete, self-contained HTML document (inline CSS and JS, no external resource)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n"
        f"{body_html}\n<script>{_PAGE_JS}</script>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------
# loading rows
# ---------------------------------------------------------------------------------------------
def newest_labeler(corpus: Corpus) -> str | None:
    """The labeler whose parts were written last (file modification time; by name when the
    filesystem reports no times), or None when the corpus has no labels."""
    names = corpus.labelers()
    best, best_t = None, None
    for name in names:
        t = 0.0
        for p in corpus.parts(f"labels/{name}"):
            try:
                m = corpus.fs.modified(p)
                t = max(t, m.timestamp())
            except Exception:  # noqa: BLE001, S110 - stores without mtimes: name order decides
                pass
        if best_t is None or (t, name) >= (best_t, best):
            best, best_t = name, t
    return best


def resolve_labeler(corpus: Corpus, labeler: str | None) -> str | None:
    """``labeler`` checked against the corpus (UsageError listing the valid names), else the newest."""
    from ..cli import UsageError

    if labeler is not None:
        have = corpus.labelers()
        if labeler not in have:
            raise UsageError(f"no labeler {labeler!r} in this corpus; have: {', '.join(have) or 'none'}")
        return labeler
    return newest_labeler(corpus)


def load_clip_rows(corpus: Corpus, keys: Sequence[str], labeler: str | None = None) -> list[dict[str, Any]]:
    """One dict per key, in ``keys`` order: the ``clips`` row (less ``clip_embedding``) plus ``source_uri``/``source_error``
    from ``sources``, and ``labels`` (the labeler's row, or None). A key absent from ``clips``
    gives ``{"key": key, "unknown": True}``; a key with several ``clips`` rows (a corpus written
    twice without its part names) gives one of them, flagged ``duplicate_rows``. ``labeler``: a labeler name (no lookup of the newest
    here; see ``resolve_labeler``)."""
    keys = list(keys)
    con = corpus.connect()
    try:
        con.register("__browse_keys", pa.table({"key": pa.array(keys, pa.string()), "__pos": pa.array(range(len(keys)), pa.int64())}))
        # a source can have several rows (same content under two uris): take one, deterministically
        clips = (
            con.sql(
                "SELECT c.* EXCLUDE (clip_embedding), s.uri AS source_uri, s.error AS source_error, k.__pos, "
                "count(*) OVER (PARTITION BY c.key) AS __rows FROM __browse_keys k "
                "JOIN clips c ON c.key = k.key "
                "LEFT JOIN (SELECT * FROM sources QUALIFY row_number() OVER (PARTITION BY source_id ORDER BY uri) = 1) s "
                "ON s.source_id = c.source_id "
                "QUALIFY row_number() OVER (PARTITION BY c.key ORDER BY c.run_id NULLS FIRST) = 1"
            )
            .to_arrow_table()
            .to_pylist()
        )
        labels: dict[str, dict] = {}
        if labeler:
            view = label_view_name(labeler)
            for r in con.sql(f"SELECT l.* FROM __browse_keys k JOIN {view} l ON l.key = k.key").to_arrow_table().to_pylist():
                labels.setdefault(r["key"], r)
    except (duckdb.Error, OSError, pa.ArrowException) as e:
        raise corpus.sql_error(e) from None
    finally:
        con.close()
    by_key = {r["key"]: r for r in clips}
    out = []
    for k in keys:
        r = by_key.get(k)
        if r is None:
            out.append({"key": k, "unknown": True, "labels": labels.get(k)})
            continue
        r = dict(r)
        r.pop("__pos", None)
        if r.pop("__rows", 1) > 1:  # a key committed twice (should not happen): say so on the card
            r["duplicate_rows"] = True
        r["labels"] = labels.get(k)
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# previews
# ---------------------------------------------------------------------------------------------
def _local_path(uri: str) -> str | None:
    """A local filesystem path for ``uri`` (plain path or file://), else None."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except Exception:  # noqa: BLE001 - an unparsable uri is not local; the preview says why
        return None
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else None


def cut_preview(row: dict[str, Any], seconds: float = DEFAULT_PREVIEW_SECONDS) -> tuple[bytes | None, str | None]:
    """An H.264 mp4 of the first ``seconds`` of the clip's time range, cut from its source video
    at ``PREVIEW_SHORT_SIDE`` pixels: ``(mp4, None)``, or ``(None, reason)`` when it cannot be made."""
    from defi.curate.encode import encode_clip

    uri = row.get("source_uri") or row.get("uri")
    if not uri:
        return None, "no source uri"
    if row.get("source_error"):
        return None, f"source unreadable ({row['source_error']})"
    start, end = row.get("start_s"), row.get("end_s")
    if start is None or end is None or not end > start:
        return None, "no time range"
    path = _local_path(uri)
    if path is not None and not os.path.exists(path):
        return None, f"source not found: {os.path.basename(path)}"
    fps = min(float(row.get("out_fps") or PREVIEW_FPS), 30.0)
    start, stop = float(start), min(float(end), float(start) + seconds)
    buf = io.BytesIO()
    if path is not None:
        res = encode_clip(path, start, stop, buf, fps=fps, short_side=PREVIEW_SHORT_SIDE, crf=30)
    else:  # an fsspec URL (s3://, gs://, http...): curate's decoder reads those by range requests
        res = _cut_remote(uri, start, stop, fps, buf)
    if not res.ok:
        return None, f"source unreadable ({res.error})"
    return buf.getvalue(), None


def _cut_remote(uri: str, start_s: float, end_s: float, fps: float, out: io.BytesIO):
    """``encode_clip`` for a source ``encode_clip`` cannot open (it takes local paths): decode
    the range with ``curate.decode`` (fsspec) at preview size, then encode the frames."""
    from defi.curate.decode import decode
    from defi.curate.encode import EncodeResult, encode_frames

    try:
        chunks = list(decode(uri, fps=fps, size=PREVIEW_SHORT_SIDE, start_s=start_s, end_s=end_s))
    except Exception as e:  # noqa: BLE001 - unreachable, unreadable: a placeholder, not an error
        return EncodeResult(error="open_failed", error_detail=f"{type(e).__name__}: {e}"[:300])
    frames = [c.frames for c in chunks if len(c.frames)]
    if not frames:
        return EncodeResult(error="no_frames_in_window")
    return encode_frames(np.concatenate(frames), fps, out, crf=30)


def fetch_previews(
    corpus: Corpus, rows: Sequence[dict[str, Any]], seconds: float = DEFAULT_PREVIEW_SECONDS, bar=None
) -> dict[str, tuple[bytes | None, str]]:
    """key -> ``(mp4, origin)`` with origin ``"shard"`` or ``"source"``, or ``(None, reason)``.
    Kept clips are read from their shard (each shard opened once, only the wanted members read);
    the others, and kept clips missing from their shard, are cut from the source."""
    from defi.schemas.shards import ShardReader

    out: dict[str, tuple[bytes | None, str]] = {}
    by_shard: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if not r.get("unknown") and r.get("kept") and r.get("shard"):
            by_shard[r["shard"]].add(r["key"])
    for shard in sorted(by_shard):
        for sample in ShardReader(corpus.shard_url(shard), keys=by_shard[shard]):
            out.setdefault(sample.key, (sample.mp4, "shard"))
    for r in rows:
        k = r["key"]
        if k in out:
            if bar is not None:
                bar.update(1)
            continue
        if r.get("unknown"):
            out[k] = (None, "key not in the clips table")
        else:
            mp4, reason = cut_preview(r, seconds)
            if mp4 is None and r.get("kept") and r.get("shard"):
                reason = f"not found in {r['shard']}; {reason}"
            out[k] = (mp4, "source") if mp4 is not None else (None, reason)
        if bar is not None:
            bar.update(1)
    return out


# ---------------------------------------------------------------------------------------------
# cards
# ---------------------------------------------------------------------------------------------
def _time_range(r: dict[str, Any]) -> str:
    s, e = r.get("start_s"), r.get("end_s")
    if s is None or e is None:
        return "–"
    return f"{s:.2f}–{e:.2f} s"


def _map_scores(r: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for col, prefix in (("clip_scores", "clip: "), ("extra_scores", "")):
        m = r.get(col)
        if m:
            items = m.items() if isinstance(m, dict) else m
            out += [(f"{prefix}{k}", v) for k, v in sorted(items)]
    return out


def _label_block(labels: dict[str, Any] | None) -> str:
    if not labels:
        return ""
    name = esc(labels.get("labeler") or "")
    if labels.get("num_steps") is None:
        return f'<div class="labels"><span class="lname">{name}: labeling failed for this clip</span></div>'
    parts = [f'<div class="labels"><div class="lname">{name}</div>']
    codes = labels.get("codes")
    if codes:
        hist = labels.get("code_hist")
        num_codes = len(hist) if hist else max((c for step in codes for c in step if c is not None), default=0) + 1
        parts.append(svg.code_strip(codes, num_codes, width=250, height=14))
    vectors = labels.get("vectors")
    if vectors:
        norms = [float(np.linalg.norm(np.asarray(v, dtype=np.float64))) if v is not None else None for v in vectors]
        parts.append(svg.line(norms, title="latent |z| per step", width=250, height=56, ymin=0.0))
    if not codes and not vectors:
        parts.append(f'<span class="lname">{labels.get("num_steps")} steps</span>')
    parts.append("</div>")
    return "".join(parts)


def _score_rows(r: dict[str, Any], extra: dict[str, Any] | None) -> str:
    rows = []
    for name, v in (extra or {}).items():
        rows.append(f'<tr class="query" data-col="{esc(name)}"><td>{esc(name)}</td><td class="v">{esc(_truncate(svg.fmt(v)))}</td></tr>')
    items: list[tuple[str, Any]] = [(c, r.get(c)) for c in NUMERIC_COLUMNS] + _map_scores(r)
    labels = r.get("labels") or {}
    items += [(f"label: {c}", labels.get(c)) for c in LABEL_STATS if labels]
    empty = []
    for name, v in items:
        row = f'<tr data-col="{esc(name)}"><td>{esc(name)}</td><td class="v">{esc(svg.fmt(v))}</td></tr>'
        (empty if v is None else rows).append(row.replace("<tr ", '<tr class="null" ', 1) if v is None else row)
    out = '<table class="scores">' + "".join(rows) + "</table>"
    if empty:  # columns no operator filled: listed, but folded away
        out += (
            f'<details class="empty"><summary>{len(empty)} empty columns</summary><table class="scores">{"".join(empty)}</table></details>'
        )
    return out


def _truncate(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def card_html(r: dict[str, Any], preview: tuple[bytes | None, str] | None, extra: dict[str, Any] | None = None) -> str:
    """One clip's card. ``preview``: ``(mp4, origin)`` or ``(None, reason)``; None: previews off."""
    key = r["key"]
    if r.get("unknown"):
        status, status_text, reason = "unknown", "unknown key", "not in clips"
    elif r.get("kept"):
        status, status_text, reason = "kept", "kept", ""
    else:
        reason = r.get("reject_reason") or "unknown reason"
        status, status_text = "rejected", f"rejected: {reason}"
    attrs = f'class="card {status}" data-key="{esc(key)}" data-kept="{"true" if r.get("kept") else "false"}"' + (
        f' data-reason="{esc(reason)}"' if reason else ""
    )
    parts = [f"<article {attrs}>"]
    if preview is None:
        parts.append('<div class="nopreview">no preview: previews off</div>')
    elif preview[0] is None:
        parts.append(f'<div class="nopreview">no preview: {esc(preview[1])}</div>')
    else:
        data = base64.b64encode(preview[0]).decode("ascii")
        parts.append(
            f'<video autoplay muted loop playsinline preload="auto" data-origin="{esc(preview[1])}" '
            f'title="preview from {esc(preview[1])}" src="data:video/mp4;base64,{data}"></video>'
        )
    uri = r.get("source_uri") or r.get("uri") or ""
    name = os.path.basename(uri.rstrip("/")) or uri or "(no source)"
    parts.append(
        f'<div class="head"><div class="src" title="{esc(uri)}">{esc(name)}</div>'
        f'<div><span class="range">{esc(_time_range(r))}</span> '
        f'<span class="status {status}">{esc(status_text)}</span></div>'
        f'<div class="key">{esc(key)}</div>'
        + (f'<div class="lang">{esc(_truncate(r["language"], 120))}</div>' if r.get("language") else "")
        + (f'<div class="dataset">{esc(r["dataset"])}</div>' if r.get("dataset") and r.get("kind") == "robot" else "")
        + "</div>"
    )
    errors = r.get("errors_json")
    if errors:
        parts.append(f'<div class="errors" title="{esc(errors)}">operator errors: {esc(_truncate(errors, 120))}</div>')
    parts.append(_label_block(r.get("labels")))
    if not r.get("unknown"):
        parts.append(_score_rows(r, extra))
    parts.append("</article>")
    return "".join(parts)


def clip_cards_html(
    corpus: Corpus,
    keys: Sequence[str],
    *,
    labeler: str | None = None,
    previews: bool = True,
    preview_seconds: float = DEFAULT_PREVIEW_SECONDS,
    extra: dict[str, dict[str, Any]] | None = None,
    bar=None,
) -> str:
    """An HTML fragment (``<div class="cards">``) with one card per key, in order (embed it in a
    page made with ``render_page``; style: ``PAGE_CSS``). ``labeler``: whose latent actions to
    show (default: the newest labeler, if any). ``extra``: key -> {column: value} shown first on
    the card (e.g. the query's own columns). ``bar``: a tqdm-like object, updated once per clip."""
    labeler = resolve_labeler(corpus, labeler)
    rows = load_clip_rows(corpus, keys, labeler)
    return _cards(corpus, rows, previews, preview_seconds, extra, bar)


def _cards(corpus, rows, previews, preview_seconds, extra, bar) -> str:
    pv = fetch_previews(corpus, rows, preview_seconds, bar) if previews else {}
    if not previews and bar is not None:
        bar.update(len(rows))
    cards = [card_html(r, pv.get(r["key"]) if previews else None, (extra or {}).get(r["key"])) for r in rows]
    return '<div class="cards">\n' + "\n".join(cards) + "\n</div>"


# ---------------------------------------------------------------------------------------------
# summary, pages
# ---------------------------------------------------------------------------------------------
def summary_html(sql: str, rows: Sequence[dict[str, Any]], labeler: str | None, notes: Sequence[str] = ()) -> str:
    """Counts, reject reasons (bars) and one histogram per score over ``rows`` (kept vs rejected)."""
    kept = sum(1 for r in rows if r.get("kept"))
    unknown = sum(1 for r in rows if r.get("unknown"))
    rejected = len(rows) - kept - unknown
    parts = [
        '<section class="summary">',
        f'<pre class="sql">{esc(sql)}</pre>',
        f'<div class="counts"><span><b>{len(rows)}</b> clips</span><span class="kept"><b>{kept}</b> kept</span>'
        f'<span class="rejected"><b>{rejected}</b> rejected</span>'
        + (f"<span><b>{unknown}</b> unknown keys</span>" if unknown else "")
        + f"<span>labels: {esc(labeler or 'none')}</span></div>",
    ]
    for n in notes:
        parts.append(f'<div class="note">{esc(n)}</div>')
    charts = []
    reasons = Counter(r.get("reject_reason") or "unknown" for r in rows if not r.get("kept") and not r.get("unknown"))
    if reasons:
        items = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        charts.append(svg.bars(items, title="reject reasons", unit="clips", width=360, colors=["#c62828"]))
    series: dict[str, list[tuple[bool, Any]]] = {}
    for c in HIST_COLUMNS:
        series[c] = [(bool(r.get("kept")), r.get(c)) for r in rows if not r.get("unknown")]
    for r in rows:  # map-typed scores: one series per name
        for name, _ in _map_scores(r):
            series.setdefault(name, [])
    for name in [n for n in series if n not in HIST_COLUMNS]:
        series[name] = [(bool(r.get("kept")), dict(_map_scores(r)).get(name)) for r in rows if not r.get("unknown")]
    for c in HIST_LABEL_COLUMNS:
        # only labeled clips: an unlabeled (e.g. rejected) clip has no value to miss
        vals = [(bool(r.get("kept")), r["labels"].get(c)) for r in rows if r.get("labels")]
        if any(v is not None for _, v in vals):
            series[f"label: {c}"] = vals
    for name, vals in series.items():
        if not any(svg._finite(v) is not None for _, v in vals):
            continue
        groups = {"kept": [v for k, v in vals if k], "rejected": [v for k, v in vals if not k]}
        charts.append(svg.histogram(groups, bins=20, title=name, width=300, height=150, colors=["#2e7d32", "#c62828"]))
    if charts:
        parts.append('<div class="charts">' + "".join(charts) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def page_names(out: str, pages: int) -> list[str]:
    """File paths of the pages: ``out``, then ``<stem>-2<ext>``, ``<stem>-3<ext>`` ..."""
    stem, ext = os.path.splitext(out)
    ext = ext or ".html"
    return [out] + [f"{stem}-{i}{ext}" for i in range(2, pages + 1)]


def nav_html(names: Sequence[str], current: int) -> str:
    """Prev/next and numbered links between pages (relative file names; ``current`` 0-based)."""
    if len(names) <= 1:
        return ""
    base = [os.path.basename(n) for n in names]
    parts = ['<nav class="pages">']
    if current > 0:
        parts.append(f'<a class="prev" rel="prev" href="{esc(base[current - 1])}">‹ prev</a>')
    else:
        parts.append('<span class="prev disabled">‹ prev</span>')
    for i, b in enumerate(base):
        if i == current:
            parts.append(f'<span class="current">{i + 1}</span>')
        else:
            parts.append(f'<a class="page" href="{esc(b)}">{i + 1}</a>')
    if current < len(base) - 1:
        parts.append(f'<a class="next" rel="next" href="{esc(base[current + 1])}">next ›</a>')
    else:
        parts.append('<span class="next disabled">next ›</span>')
    parts.append("</nav>")
    return "".join(parts)


def run_browse(
    root: str,
    sql: str,
    out: str,
    per_page: int = 48,
    labeler: str | None = None,
    previews: bool = True,
    preview_seconds: float = DEFAULT_PREVIEW_SECONDS,
    progress: bool = False,
    tables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render the clips ``sql`` returns into ``out`` (and ``out-2.html`` ... past ``per_page``
    clips). Returns ``{"pages": [paths], "clips", "kept", "rejected", "unknown", "previews",
    "no_preview", "bytes", "labeler"}``. Raises ``UsageError`` for a query without ``key``
    and ``CorpusError`` for a missing root or bad/non-read-only SQL. ``tables``: extra Arrow
    tables the SQL may read (``text_scores`` of ``--text``)."""
    from ..usage import UsageError, check_out_file

    check_out_file(out, make_parents=True, root=root)
    if per_page < 1:
        raise UsageError(f"--per-page must be >= 1, got {per_page}")
    if not preview_seconds > 0:
        raise UsageError(f"--preview-seconds must be > 0, got {preview_seconds}")
    corpus = Corpus.open(root)
    name = resolve_labeler(corpus, labeler)
    columns = corpus.columns(sql, tables=tables)  # bound, not run: a query without `key` is refused before it runs
    if "key" not in columns:
        raise UsageError(f"the query must return a `key` column (clip key); it returned: {', '.join(columns) or 'no columns'}")
    table = corpus.query(sql, tables=tables)
    keys, extra, seen, notes = [], {}, set(), []
    others = [c for c in table.column_names if c != "key"]
    null_keys = dups = 0
    for rec in table.to_pylist():
        k = rec["key"]
        if k is None:
            null_keys += 1
            continue
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        keys.append(str(k))
        if others:
            extra[str(k)] = {c: rec[c] for c in others if _scalar(rec[c])}
    if dups:
        notes.append(f"{dups} row{'s repeat' if dups > 1 else ' repeats'} a key already shown; each clip is shown once")
    if null_keys:
        notes.append(f"{null_keys} row{'s have' if null_keys > 1 else ' has'} a NULL key (not shown)")
    rows = load_clip_rows(corpus, keys, name)
    multi = sum(1 for r in rows if r.get("duplicate_rows"))
    if multi:
        notes.append(f"{multi} key{'s have' if multi > 1 else ' has'} several rows in clips; one is shown per key")
    pages = max(1, math.ceil(len(rows) / per_page))
    names = page_names(out, pages)
    summary = summary_html(sql, rows, name, notes)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=len(rows), unit="clip", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    stats = Counter()
    total_bytes = 0
    try:
        for i, path in enumerate(names):
            chunk = rows[i * per_page : (i + 1) * per_page]
            pv = fetch_previews(corpus, chunk, preview_seconds, bar) if previews else {}
            if not previews:
                bar.update(len(chunk))
            stats["previews"] += sum(1 for v in pv.values() if v[0] is not None)
            stats["no_preview"] += sum(1 for v in pv.values() if v[0] is None)
            cards = [card_html(r, pv.get(r["key"]) if previews else None, extra.get(r["key"])) for r in chunk]
            nav = nav_html(names, i)
            first = i * per_page + 1
            heading = (
                f"<h1>defi browse — {len(rows)} clips"
                + (f", page {i + 1} of {pages} (clips {first}–{first + len(chunk) - 1})" if pages > 1 else "")
                + "</h1>"
            )
            body = heading + summary + nav + '<div class="cards">\n' + "\n".join(cards) + "\n</div>" + nav
            doc = render_page(f"defi browse ({i + 1}/{pages})", body)
            data = doc.encode("utf-8")
            tmp = f"{path}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            total_bytes += len(data)
    finally:
        bar.close()
    kept = sum(1 for r in rows if r.get("kept"))
    unknown = sum(1 for r in rows if r.get("unknown"))
    return {
        "pages": names,
        "clips": len(rows),
        "kept": kept,
        "rejected": len(rows) - kept - unknown,
        "unknown": unknown,
        "previews": stats["previews"],
        "no_preview": stats["no_preview"],
        "bytes": total_bytes,
        "labeler": name,
    }


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_browse_parser(subparsers) -> argparse.ArgumentParser:
    """``defi browse "SQL" --root ROOT --out page.html``"""
    p = subparsers.add_parser(
        "browse",
        help="render a query's clips as an HTML gallery (previews, scores, latent actions)",
        description="Run read-only SQL (it must return a key column; row order is kept) and write a self-contained "
        "HTML gallery: per clip a looping preview (kept: its shard mp4; rejected: cut from the source), "
        "source and time range, kept or the reject reason, every score, and the latent-action code strip "
        "and magnitude plot when labels exist. Pages past --per-page clips go to OUT-2.html, OUT-3.html ... "
        "The pages work offline (everything inline).",
    )
    p.add_argument(
        "sql",
        nargs="?",
        help='SQL returning key, e.g. "SELECT key FROM clips ORDER BY motion_mean DESC LIMIT 50" (with --text: default the 20 best matches)',
    )
    p.add_argument("--root", required=True, help="corpus root (local folder or fsspec URL)")
    p.add_argument("--out", required=True, help="HTML file to write (more pages go beside it)")
    p.add_argument("--per-page", type=int, default=48, help="clips per page (default 48)")
    p.add_argument("--labeler", help="labeler whose latent actions to show (default: the newest, if any)")
    p.add_argument("--no-previews", action="store_true", help="no video previews (fast, small pages)")
    p.add_argument(
        "--preview-seconds",
        type=float,
        default=DEFAULT_PREVIEW_SECONDS,
        help=f"longest preview cut from a source for rejected clips, seconds (default {DEFAULT_PREVIEW_SECONDS:g})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ..text_search import add_text_flags

    add_text_flags(p, "for the SQL to join; each card shows its text_score")
    p.set_defaults(func=cmd_browse)
    return p


def cmd_browse(args) -> int:
    from ..cli import UsageError
    from ..text_search import DEFAULT_SQL, search_tables

    if args.sql is None and args.text is None:
        raise UsageError("give SQL returning key (or --text to rank clips by a text)")
    tables = search_tables(args.root, args.text, args.clip_model, args.clip_pretrained)
    s = run_browse(
        args.root,
        args.sql or DEFAULT_SQL,
        args.out,
        per_page=args.per_page,
        labeler=args.labeler,
        previews=not args.no_previews,
        preview_seconds=args.preview_seconds,
        progress=not args.no_progress,
        tables=tables,
    )
    print(
        f"wrote {len(s['pages'])} page{'s' if len(s['pages']) != 1 else ''} to {s['pages'][0]}: {s['clips']} clips "
        f"({s['kept']} kept, {s['rejected']} rejected), {s['previews']} previews, {s['no_preview']} without, "
        f"{s['bytes'] / 1e6:.1f} MB, labels: {s['labeler'] or 'none'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``defi browse`` on its own (argv starts with ``browse``)."""
    from ..cli import run_standalone

    return run_standalone([add_browse_parser], argv)


if __name__ == "__main__":
    raise SystemExit(main())
