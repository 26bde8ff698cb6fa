"""The demo's report: one self-contained HTML page (inline SVG plots, previews as data: URIs, no
network) of what the demo's steps did, with real numbers read back from the corpus.

Sections: the steps and their times; where the input hours went (kept, rejected by reason, not in
any clip, unreadable files); score distributions kept vs. rejected; GIDM training loss; latent-
action code usage; a 2-D projection of latent actions coloured by the true hand-motion direction
(robot clips with actions); the probe table (latent vs. observation-only controls); the query
results as galleries.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

SCORES = [("motion_mean", "optical flow, px/frame"), ("frame_diff", "mean |frame difference|, 0..255"),
          ("camera_motion", "camera motion, px/frame"), ("local_motion", "local motion, px/frame"),
          ("blur", "variance of Laplacian (sharper: higher)"), ("black_frac", "fraction of black frames"),
          ("duration_s", "clip duration, s")]

PROBE_ROWS = [("latent", "GIDM latent (z)"), ("onehot", "GIDM code, one-hot"),
              ("pca_diff", "control: PCA of o_t+k - o_t, same dims"), ("pca_obs", "control: PCA of o_t alone, same dims"),
              ("pca_diff_wide", "control: PCA of o_t+k - o_t, 64 dims"), ("pca_obs_wide", "control: PCA of o_t alone, 64 dims"),
              ("obs+latent", "o_t PCA + GIDM latent (what z adds to the scene)"),
              ("obs+diff", "control: o_t PCA + frame-difference PCA"),
              ("true_disp", "ceiling: true hand displacement")]


REPORT_CSS = """
section { background: #fff; border: 1px solid #e2e2de; border-radius: 6px; padding: 4px 14px 12px; margin: 14px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 8px; }
table.data { border-collapse: collapse; margin: 6px 0; }
table.data th, table.data td { border-bottom: 1px solid #eee; padding: 2px 10px 2px 0; text-align: left; }
nav { margin: 6px 0 10px; }
p.note { color: #666; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v[:6]) + (", …" if len(v) > 6 else "") + "]"
    return str(v)


def table_html(columns: list[str], rows: list[dict[str, Any]], max_rows: int = 20) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows[:max_rows])
    more = f"<p class=note>{len(rows) - max_rows} more rows not shown</p>" if len(rows) > max_rows else ""
    return f"<table class=data><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id={anchor}><h2>{_e(title)}</h2>{body}</section>"


def _spread(x: list[float], y: list[float]) -> tuple[list[float], list[float], str]:
    """A VQ latent has a handful of distinct points, each hiding hundreds of transitions: jitter
    them (deterministically, within 6% of the plot's range) so the colour mix of each code shows."""
    import numpy as np

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    distinct = len({(round(a, 6), round(b, 6)) for a, b in zip(xa.tolist(), ya.tolist(), strict=False)})
    if len(xa) == 0 or distinct > 50:
        return x, y, ""
    rng = np.random.default_rng(0)
    span = max(float(np.ptp(xa)), float(np.ptp(ya)), 1e-6)
    r = 0.06 * span * np.sqrt(rng.random(len(xa)))
    a = rng.random(len(xa)) * 2 * np.pi
    return ((xa + r * np.cos(a)).tolist(), (ya + r * np.sin(a)).tolist(),
            f"{distinct} distinct latents (one per code) among {len(xa)} transitions: points are jittered "
            f"around their code's position so that the colours inside each code show.")


def hours_breakdown(corpus) -> list[tuple[str, float]]:
    """Seconds of input video by fate: kept, rejected by reason, and not in any clip (shot edges,
    remainders shorter than a clip); readable sources only."""
    q = corpus.query
    total = q("SELECT coalesce(sum(duration_s), 0) AS s FROM sources WHERE error IS NULL").to_pylist()[0]["s"]
    rows = q("SELECT CASE WHEN kept THEN 'kept' ELSE 'rejected: ' || reject_reason END AS fate, "
             "sum(duration_s) AS s FROM clips GROUP BY 1 ORDER BY (fate = 'kept') DESC, s DESC").to_pylist()
    out = [(r["fate"], float(r["s"] or 0.0)) for r in rows]
    rest = float(total) - sum(s for _, s in out)
    out.append(("not in any clip", round(rest, 3) if rest > 1e-3 else 0.0))
    return out


def write_report(ctx, path: Path) -> dict[str, Any]:
    """Write the demo report for the finished steps in ``ctx.results``; returns what it holds."""
    from defi.pipelines import svg
    from defi.pipelines.browse import clip_cards_html, render_page
    from defi.pipelines.cli import corpus_summary
    from defi.schemas.corpus import Corpus

    from .demo import STEPS, step_seconds

    corpus = Corpus.open(ctx.root)
    summary = corpus_summary(corpus)
    res = ctx.results
    sections: list[str] = []
    shown: dict[str, Any] = {}

    # -- what ran --------------------------------------------------------------------------------
    secs = step_seconds(ctx.out)
    rows = [{"step": s.name, "what": s.does, "seconds": round(secs[s.name], 1) if s.name in secs else "this page"}
            for s in STEPS]
    facts = (f"<p>{summary['videos']} input videos ({summary['videos_ok']} readable, "
             f"{summary['hours_in'] * 3600:.0f} s of video) &rarr; {summary['clips_kept']} clips kept "
             f"({summary['hours_out'] * 3600:.0f} s), {summary['clips_rejected']} rejected, {summary['shards']} shards "
             f"({summary['shard_bytes'] / 1e6:.1f} MB); labels: "
             + (", ".join(f"{_e(k)} ({v} clips)" for k, v in summary["labels"].items()) or "none") + "</p>")
    sections.append(_section("What ran", facts + table_html(["step", "what", "seconds"], rows), "steps"))

    # -- where the input hours went ------------------------------------------------------------------
    fates = hours_breakdown(corpus)
    colors = ["#2e7d32" if f == "kept" else "#9e9e9e" if f == "not in any clip" else "#c62828" for f, _ in fates]
    errs = corpus.query("SELECT regexp_extract(uri, '[^/]+$') AS file, error, size_bytes FROM sources "
                        "WHERE error IS NOT NULL ORDER BY file")
    body = svg.bars([(f, s) for f, s in fates], title="seconds of readable input video, by fate", unit="s",
                    width=560, colors=colors)
    body += "<h3>Files that could not be read (kept as rows with their reason)</h3>" + table_html(errs.column_names, errs.to_pylist())
    sections.append(_section("Where the input hours went", body, "hours"))
    shown["hours"] = fates

    # -- score distributions ------------------------------------------------------------------------
    cols = ", ".join(c for c, _ in SCORES)
    clips = corpus.query(f"SELECT kept, {cols} FROM clips").to_pylist()
    plots = []
    for col, label in SCORES:
        groups = {"kept": [r[col] for r in clips if r["kept"]], "rejected": [r[col] for r in clips if not r["kept"]]}
        plots.append(svg.histogram(groups, bins=20, title=col, xlabel=label))
    reasons = corpus.query("SELECT reject_reason, count(*) AS clips FROM clips WHERE NOT kept GROUP BY 1 ORDER BY 2 DESC")
    body = ("<p>Every score is stored for every candidate clip, kept or rejected, so a threshold can be chosen "
            "later by a query.</p><div class=grid>" + "".join(f"<div>{p}</div>" for p in plots) + "</div>"
            + "<h3>Rejected clips by reason</h3>" + table_html(reasons.column_names, reasons.to_pylist()))
    sections.append(_section("Score distributions, kept vs. rejected", body, "scores"))

    # -- GIDM training ---------------------------------------------------------------------------------
    train = res.get("train_gidm") or {}
    if train.get("loss"):
        losses = [float(v) for _, v in train["loss"]]
        body = (f"<p>Tiny GIDM (VQ latent) trained {train.get('steps')} steps on <code>{_e(train.get('select'))}</code> "
                f"(action-free clips only): loss {losses[0]:.4f} &rarr; {losses[-1]:.4f}.</p>")
        if all(v > 0 for v in losses):
            body += svg.line([math.log10(v) for v in losses], title="training loss", ylabel="log10 loss",
                             width=560, height=140)
        sections.append(_section("GIDM training", body, "train"))

    # -- latent actions ----------------------------------------------------------------------------------
    label = res.get("label") or {}
    if label.get("labeler"):
        from defi.schemas.corpus import label_view_name

        view = label_view_name(label["labeler"])
        hists = corpus.query(f"SELECT code_hist FROM {view} WHERE code_hist IS NOT NULL").column("code_hist").to_pylist()
        body = f"<p>Labels in <code>labels/{_e(label['labeler'])}</code> (view <code>{_e(view)}</code>).</p>"
        if hists:
            n = max(len(h) for h in hists)
            usage = [sum(h[i] for h in hists if i < len(h)) for i in range(n)]
            total = sum(usage) or 1
            ent = -sum(u / total * math.log(u / total) for u in usage if u)
            body += (f"<p>{sum(1 for u in usage if u)} of {n} codes used over {total} steps; perplexity "
                     f"{math.exp(ent):.2f}.</p>"
                     + svg.bars([(f"code {i}", float(u)) for i, u in enumerate(usage)], title="steps per latent-action code",
                                unit="steps", width=560, colors=[svg.palette(i) for i in range(n)]))
            shown["code_usage"] = usage
        probe = res.get("probe") or {}
        proj = probe.get("projection")
        if proj:
            x, y, note = _spread(proj["x"], proj["y"])
            body += ("<h3>Latent actions of robot transitions, 2-D (PCA of z), coloured by the direction of the true "
                     "hand motion in the x-y plane</h3>" + (f"<p class=note>{note}</p>" if note else "")
                     + svg.scatter(x, y, hue=proj["angle"], title="GIDM latent, PCA 1-2",
                                   xlabel="PC 1", ylabel="PC 2", width=560, height=420))
        sections.append(_section("Latent actions", body, "latents"))

    # -- probe -------------------------------------------------------------------------------------------
    probe = res.get("probe") or {}
    if probe.get("r2"):
        r2 = probe["r2"]
        rows = [{"features": label_, "R² hand displacement": r2["disp"].get(name), "R² commanded action": r2["cmd"].get(name)}
                for name, label_ in PROBE_ROWS if name in r2["disp"] or name in r2["cmd"]]
        lat, obs, diff = r2["disp"]["latent"], r2["disp"]["pca_obs"], r2["disp"]["pca_diff"]
        verdict = ("above" if lat > max(obs, diff) + 0.05 else "not clearly above")
        body = (f"<p>Ridge probes fitted on half of the episodes of the held-out tasks with actions "
                f"({_e(', '.join(probe.get('tasks', [])))}) and scored on the other half: {probe['pairs']} pairs "
                f"(o_t, o_t+k) of {probe['episodes']} episodes. The latent ({probe['latent_dims']} dims) is "
                f"<b>{verdict}</b> the observation-only controls of the same size here "
                f"(R² {lat:.2f} vs. {obs:.2f} for o_t alone and {diff:.2f} for the frame difference). "
                f"ΔPSNR of the decoder with the pair's own latent vs. another pair's: {probe['delta_psnr']:+.2f} dB.</p>"
                + table_html(["features", "R² hand displacement", "R² commanded action"], rows))
        if "perplexity" in probe:
            body += (f"<p>Codes on these pairs: usage {probe['code_usage']:.2f}, perplexity {probe['perplexity']:.2f}, "
                     f"NMI(codes; binned displacement) {probe['nmi_codes_vs_binned_disp']:.3f}.</p>")
        sections.append(_section("Probe: does the latent carry the robot's action?", body, "probe"))
        shown["probe"] = {k: r2["disp"][k] for k in ("latent", "pca_obs", "pca_diff")}
    elif probe.get("skipped"):
        sections.append(_section("Probe", f"<p>not run: {_e(probe['skipped'])}</p>", "probe"))

    # -- query galleries -----------------------------------------------------------------------------------
    queries = (res.get("queries") or {}).get("queries") or []
    parts = []
    for q in queries:
        keys = [r["key"] for r in q["rows"] if "key" in r]
        gallery = clip_cards_html(corpus, keys, labeler=label.get("labeler")) if keys else ""
        parts.append(f"<h3>{_e(q['title'])}</h3><pre class=sql>$ defi query \"{_e(q['sql'])}\"</pre>"
                     + table_html(q["columns"], q["rows"]) + gallery)
    if parts:
        sections.append(_section("Latent-action queries", "".join(parts), "queries"))
    shown["queries"] = len(queries)

    nav = "<nav>" + " · ".join(f"<a href='#{a}'>{t}</a>" for a, t in (
        ("steps", "steps"), ("hours", "hours"), ("scores", "scores"), ("train", "training"), ("latents", "latent actions"),
        ("probe", "probe"), ("queries", "queries"))) + "</nav>"
    intro = ("<p>Everything on this page was generated on this machine by <code>defi demo</code>: synthetic web-style "
             "videos and Meta-World robot episodes, curated, labeled with latent actions by a GIDM trained on the "
             "action-free clips, and queried. Corpus: <code>" + _e(ctx.root) + "</code>.</p>")
    page = render_page("defi demo report", f"<style>{REPORT_CSS}</style><h1>defi demo report</h1>" + intro + nav
                       + "".join(sections))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.rename(path)
    shown["bytes"] = path.stat().st_size
    shown["sections"] = len(sections)
    return shown
