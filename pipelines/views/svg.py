"""Small, dependency-free charts as inline SVG strings (for `defi browse` and HTML reports).

Every function returns one ``<svg ...>`` element as a string: no network, no matplotlib, no
JavaScript, so a page embedding them works offline and stays a single file. Output is
deterministic (same data, same bytes): numbers are written with fixed precision and no set or
dict ordering leaks in. Text (titles, labels, categories) is escaped with ``html.escape``.

Missing values (``None``, NaN, +-inf) are skipped and counted in a small "N missing" note, never
plotted as zero. Elements carry ``data-*`` attributes with the numbers they draw (``data-count``
on histogram bars, ``data-value`` on bars, ``data-code`` on code cells...) so tests and scripts
can read a chart back without guessing from pixel geometry.

The SVGs carry no ``xmlns`` attribute: inline in HTML5 the parser puts them in the SVG namespace
itself (and the page keeps no ``http://`` string a offline check could trip on). To save one as a
stand-alone ``.svg`` file, pass it through ``standalone``.
"""

from __future__ import annotations

import colorsys
import html
import math
from collections.abc import Sequence
from typing import Any

# A categorical palette (Tableau 10, then 6 darker variants): distinguishable on white and for
# the common colour-vision deficiencies in its first entries.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#2f4b7c",
    "#a05195",
    "#d45087",
    "#665191",
    "#003f5c",
    "#7a5195",
)
MISSING_COLOR = "#cccccc"
AXIS_COLOR = "#555555"
FONT = 'font-family="system-ui,sans-serif"'


def palette(i: int) -> str:
    """Categorical colour number ``i`` (hex ``#rrggbb``); cycles after ``len(PALETTE)``."""
    return PALETTE[int(i) % len(PALETTE)]


def hue_color(angle: float, saturation: float = 0.65, lightness: float = 0.45) -> str:
    """Colour of an angle in radians on a cyclic wheel (0 = red, 2*pi/3 = green, ...): angles
    that differ by a multiple of 2*pi get the same colour."""
    h = (float(angle) / (2 * math.pi)) % 1.0
    r, g, b = colorsys.hls_to_rgb(h, lightness, saturation)
    return "#" + "".join(f"{round(c * 255):02x}" for c in (r, g, b))


def standalone(svg: str) -> str:
    """``svg`` with the SVG namespace declared, for writing a ``.svg`` file."""
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def esc(s: Any) -> str:
    """``s`` as text safe inside HTML/SVG elements and quoted attributes (the one escape of the views)."""
    return html.escape(str(s), quote=True)


def _num(v: float) -> str:
    """A coordinate: 2 decimals, no trailing zeros (deterministic and short)."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def fmt(v: Any) -> str:
    """A value for people: integers as is, floats with 4 significant digits, missing as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == int(f) and abs(f) < 1e9:
        return str(int(f))
    return f"{f:.4g}"


def _finite(v: Any) -> float | None:
    """``v`` as a float, or None when it is missing (None, NaN, inf) or not a number."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _open(width: float, height: float, kind: str, title: str, **data: Any) -> list[str]:
    attrs = "".join(f' data-{k.replace("_", "-")}="{esc(v)}"' for k, v in data.items())
    label = esc(title or kind)
    parts = [
        (
            f'<svg class="chart chart-{kind}" width="{_num(width)}" height="{_num(height)}" '
            f'viewBox="0 0 {_num(width)} {_num(height)}" role="img" aria-label="{label}"{attrs}>'
        )
    ]
    if title:
        parts.append(f"<title>{esc(title)}</title>")
    return parts


def _text(x: float, y: float, s: Any, size: int = 10, anchor: str = "start", cls: str = "", color: str = "#222") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text{c} x="{_num(x)}" y="{_num(y)}" font-size="{size}" {FONT} fill="{color}" text-anchor="{anchor}">{esc(s)}</text>'


def _missing_note(n: int, x: float, y: float, anchor: str = "end") -> str:
    return _text(x, y, f"{n} missing", 9, anchor, "missing", "#a00") if n else ""


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    """A non-empty [lo, hi]: a single value v becomes [v - 0.5, v + 0.5]."""
    if hi > lo:
        return lo, hi
    return lo - 0.5, hi + 0.5


def _truncate(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# charts
# ---------------------------------------------------------------------------------------------
def histogram(
    groups: dict[str, Sequence[float]],
    *,
    bins: int = 20,
    title: str = "",
    xlabel: str = "",
    width: int = 360,
    height: int = 180,
    colors: Sequence[str] | None = None,
) -> str:
    """Overlaid histograms of several groups (e.g. ``{"kept": [...], "rejected": [...]}``) on
    shared bin edges: ``bins`` equal bins from the smallest to the largest finite value over all
    groups (the last bin includes its right edge). Each non-empty bin of a group is a
    ``<rect class="bar" data-group=.. data-bin=.. data-count=.. data-lo=.. data-hi=..>`` drawn
    semi-transparent in the group's colour (``colors[i]``, else ``palette(i)``), so the counts
    of a group's bars sum to its number of finite values. Legend: group name and count."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    clean: dict[str, list[float]] = {}
    missing = 0
    for name, values in groups.items():
        vals = [_finite(v) for v in values]
        clean[str(name)] = [v for v in vals if v is not None]
        missing += sum(v is None for v in vals)
    allv = [v for vs in clean.values() for v in vs]
    # the legend sits in a header row above the plot, the missing note in a footer row below the
    # ticks, so neither covers bars or tick labels
    left, right = 34, 8
    top = 6 + (12 if title else 0) + 12
    bottom = 16 + (12 if xlabel else 0) + (10 if missing else 0)
    pw, ph = width - left - right, height - top - bottom
    out = _open(width, height, "histogram", title, bins=bins, missing=missing)
    if title:
        out.append(_text(left, 12, title, 11, cls="title"))
    if not allv:
        out.append(_text(width / 2, top + ph / 2, "no data", 10, "middle", "empty", "#888"))
        out.append(_missing_note(missing, width - right, height - 2))
        out.append("</svg>")
        return "".join(out)
    lo, hi = _nice_range(min(allv), max(allv))
    step = (hi - lo) / bins
    counts: dict[str, list[int]] = {}
    for name, vs in clean.items():
        c = [0] * bins
        for v in vs:
            i = min(int((v - lo) / step), bins - 1)  # the max lands in the last bin
            c[max(i, 0)] += 1
        counts[name] = c
    ymax = max(max(c) for c in counts.values()) or 1
    bw = pw / bins
    # axes
    out.append(f'<path class="axis" d="M{left} {top}V{top + ph}H{left + pw}" fill="none" stroke="{AXIS_COLOR}" stroke-width="1"/>')
    for gi, (name, c) in enumerate(counts.items()):
        color = colors[gi % len(colors)] if colors else palette(gi)
        for i, n in enumerate(c):
            if not n:
                continue
            h = ph * n / ymax
            out.append(
                f'<rect class="bar" data-group="{esc(name)}" data-bin="{i}" data-count="{n}" '
                f'data-lo="{lo + i * step:.6g}" data-hi="{lo + (i + 1) * step:.6g}" '
                f'x="{_num(left + i * bw + 0.5)}" y="{_num(top + ph - h)}" width="{_num(max(bw - 1, 0.5))}" '
                f'height="{_num(h)}" fill="{color}" fill-opacity="0.55">'
                f"<title>{esc(name)}: {n} in [{fmt(lo + i * step)}, {fmt(lo + (i + 1) * step)})</title></rect>"
            )
    # ticks: x min/max, y 0/max
    out.append(_text(left, top + ph + 11, fmt(min(allv)), 9, "start", "tick"))
    out.append(_text(left + pw, top + ph + 11, fmt(max(allv)), 9, "end", "tick"))
    out.append(_text(left - 3, top + ph, "0", 9, "end", "tick"))
    out.append(_text(left - 3, top + 8, str(ymax), 9, "end", "tick"))
    if xlabel:
        out.append(_text(left + pw / 2, top + ph + 24, xlabel, 10, "middle", "xlabel"))
    # legend: one row above the plot, right-aligned, groups left to right
    x = left + pw
    for gi, name in reversed(list(enumerate(counts))):
        color = colors[gi % len(colors)] if colors else palette(gi)
        label = f"{_truncate(name, 16)} ({len(clean[name])})"
        x -= len(label) * 5.2 + 16
        out.append(f'<rect class="legend" x="{_num(x)}" y="{_num(top - 15)}" width="9" height="9" fill="{color}" fill-opacity="0.55"/>')
        out.append(_text(x + 12, top - 7, label, 9, cls="legend"))
    out.append(_missing_note(missing, width - right, height - 2))
    out.append("</svg>")
    return "".join(out)


def bars(
    items: Sequence[tuple[str, float]],
    *,
    title: str = "",
    unit: str = "",
    width: int = 360,
    colors: Sequence[str] | None = None,
    row_height: int = 16,
    label_width: int | None = None,
) -> str:
    """Horizontal bars, one row per ``(label, value)`` in the order given; the height grows with
    the number of items (``row_height`` pixels each). Bars start at zero (negative values extend
    left of a zero line). Each bar is ``<rect class="bar" data-label=.. data-value=..>``; a
    missing value gets no bar, the text "n/a", and counts in the "missing" note. ``unit`` is
    appended to the value text."""
    rows = [(str(lbl), _finite(v)) for lbl, v in items]
    missing = sum(v is None for _, v in rows)
    top = 18 if title else 4
    height = top + max(len(rows), 1) * row_height + (12 if missing else 4)
    lw = label_width if label_width is not None else min(max([len(l) for l, _ in rows] + [4]) * 6 + 6, width // 3)
    vw = 52  # room for the value text
    pw = max(width - lw - vw - 4, 10)
    out = _open(width, height, "bars", title, items=len(rows), missing=missing)
    if title:
        out.append(_text(2, 12, title, 11, cls="title"))
    vals = [v for _, v in rows if v is not None]
    lo, hi = min(vals + [0.0]), max(vals + [0.0])
    span = (hi - lo) or 1.0
    x0 = lw + pw * (0 - lo) / span
    suffix = f" {unit}" if unit else ""
    for i, (label, v) in enumerate(rows):
        y = top + i * row_height
        out.append(_text(lw - 4, y + row_height * 0.7, _truncate(label, max(lw // 6, 4)), 10, "end", "label"))
        if v is None:
            out.append(_text(lw + 2, y + row_height * 0.7, "n/a", 10, cls="value", color="#a00"))
            continue
        color = colors[i % len(colors)] if colors else palette(0)
        x, w = (x0, pw * v / span) if v >= 0 else (x0 + pw * v / span, pw * -v / span)
        out.append(
            f'<rect class="bar" data-label="{esc(label)}" data-value="{v:.6g}" x="{_num(x)}" '
            f'y="{_num(y + 2)}" width="{_num(max(w, 0.5))}" height="{_num(row_height - 4)}" fill="{color}">'
            f"<title>{esc(label)}: {esc(fmt(v))}{esc(suffix)}</title></rect>"
        )
        out.append(_text(max(x0, x + w) + 3, y + row_height * 0.7, fmt(v) + suffix, 10, cls="value"))
    if lo < 0:
        out.append(f'<path class="zero" d="M{_num(x0)} {top}V{top + len(rows) * row_height}" stroke="{AXIS_COLOR}"/>')
    out.append(_missing_note(missing, width - 2, height - 2))
    out.append("</svg>")
    return "".join(out)


def _wheel(cx: float, cy: float, r: float, segments: int = 12) -> list[str]:
    """A ring of ``segments`` wedges coloured like ``hue_color``; 0 rad at 3 o'clock, counter-clockwise
    like the usual math convention (SVG y points down, so angles are negated)."""
    out = []
    for i in range(segments):
        a0, a1 = 2 * math.pi * i / segments, 2 * math.pi * (i + 1) / segments
        p = [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (a0, a1)]
        out.append(
            f'<path class="wheel" d="M{_num(cx)} {_num(cy)}L{_num(p[0][0])} {_num(p[0][1])}'
            f'A{_num(r)} {_num(r)} 0 0 0 {_num(p[1][0])} {_num(p[1][1])}Z" '
            f'fill="{hue_color((a0 + a1) / 2)}"/>'
        )
    out.append(_text(cx + r + 2, cy + 3, "0", 8, cls="wheel-label"))
    out.append(_text(cx, cy - r - 2, "π/2", 8, "middle", "wheel-label"))
    return out


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    *,
    hue: Sequence[float] | None = None,
    categories: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    width: int = 360,
    height: int = 300,
    radius: float = 2.5,
) -> str:
    """Points ``(x[i], y[i])`` as ``<circle class="pt" data-i=i>``. Colour: ``hue`` (an angle in
    radians per point, e.g. the direction of a latent action) on a cyclic colour wheel, drawn as a
    small legend; or ``categories`` (one label per point) with the palette in order of first
    appearance and a legend; else one colour. A point with a missing x or y is skipped and counted
    as missing; a missing hue draws the point grey."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    for name, seq in (("hue", hue), ("categories", categories)):
        if seq is not None and len(seq) != len(x):
            raise ValueError(f"{name} has {len(seq)} entries for {len(x)} points")
    if hue is not None and categories is not None:
        raise ValueError("give hue or categories, not both")
    pts = [(i, _finite(a), _finite(b)) for i, (a, b) in enumerate(zip(x, y, strict=False))]
    ok = [(i, a, b) for i, a, b in pts if a is not None and b is not None]
    missing = len(pts) - len(ok)
    cats: list[str] = []
    if categories is not None:
        for c in categories:
            if str(c) not in cats:
                cats.append(str(c))
    legend_w = 0 if (hue is None and categories is None) else 70
    left, right, top, bottom = 38, 8 + legend_w, 18 if title else 8, 32 if xlabel else 20
    pw, ph = width - left - right, height - top - bottom
    out = _open(width, height, "scatter", title, points=len(ok), missing=missing)
    if title:
        out.append(_text(left, 12, title, 11, cls="title"))
    out.append(f'<path class="axis" d="M{left} {top}V{top + ph}H{left + pw}" fill="none" stroke="{AXIS_COLOR}"/>')
    if ok:
        xlo, xhi = _nice_range(min(a for _, a, _ in ok), max(a for _, a, _ in ok))
        ylo, yhi = _nice_range(min(b for _, _, b in ok), max(b for _, _, b in ok))
        for i, a, b in ok:
            if hue is not None:
                h = _finite(hue[i])
                color = MISSING_COLOR if h is None else hue_color(h)
                tip = f"{fmt(a)}, {fmt(b)}; hue {fmt(h)} rad"
            elif categories is not None:
                color = palette(cats.index(str(categories[i])))
                tip = f"{fmt(a)}, {fmt(b)}; {categories[i]}"
            else:
                color, tip = palette(0), f"{fmt(a)}, {fmt(b)}"
            px = left + pw * (a - xlo) / (xhi - xlo)
            py = top + ph - ph * (b - ylo) / (yhi - ylo)
            out.append(
                f'<circle class="pt" data-i="{i}" cx="{_num(px)}" cy="{_num(py)}" r="{_num(radius)}" '
                f'fill="{color}" fill-opacity="0.8"><title>{esc(tip)}</title></circle>'
            )
        out.append(_text(left, top + ph + 11, fmt(min(a for _, a, _ in ok)), 9, "start", "tick"))
        out.append(_text(left + pw, top + ph + 11, fmt(max(a for _, a, _ in ok)), 9, "end", "tick"))
        out.append(_text(left - 3, top + ph, fmt(min(b for _, _, b in ok)), 9, "end", "tick"))
        out.append(_text(left - 3, top + 8, fmt(max(b for _, _, b in ok)), 9, "end", "tick"))
    else:
        out.append(_text(left + pw / 2, top + ph / 2, "no data", 10, "middle", "empty", "#888"))
    if xlabel:
        out.append(_text(left + pw / 2, height - 4, xlabel, 10, "middle", "xlabel"))
    if ylabel:
        cy = top + ph / 2
        out.append(
            f'<text class="ylabel" x="10" y="{_num(cy)}" font-size="10" {FONT} fill="#222" text-anchor="middle" '
            f'transform="rotate(-90 10 {_num(cy)})">{esc(ylabel)}</text>'
        )
    lx = width - legend_w + 4
    if hue is not None:
        out.extend(_wheel(lx + 24, top + 34, 22))
        out.append(_text(lx + 24, top + 70, "angle (rad)", 8, "middle", "legend"))
    elif categories is not None:
        for ci, c in enumerate(cats[:20]):
            yy = top + 10 + ci * 12
            out.append(f'<circle class="legend" cx="{_num(lx + 4)}" cy="{_num(yy - 3)}" r="3.5" fill="{palette(ci)}"/>')
            out.append(_text(lx + 11, yy, _truncate(c, 10), 9, cls="legend"))
        if len(cats) > 20:
            out.append(_text(lx, top + 10 + 20 * 12, f"+{len(cats) - 20} more", 9, cls="legend"))
    out.append(_missing_note(missing, width - 2, height - 2))
    out.append("</svg>")
    return "".join(out)


def code_strip(codes: Sequence[int] | Sequence[Sequence[int]], num_codes: int, *, width: int = 240, height: int = 14) -> str:
    """One cell per step coloured ``palette(code)``, left to right in step order, each a
    ``<rect class="code" data-step=.. data-code=..>`` with a tooltip "step i: code c". A step may
    hold several tokens (``codes[step]`` a sequence, as in the ``latent_actions.codes`` column):
    the cell is then split into one row per token (``data-token``). A missing code, or one
    outside ``[0, num_codes)``, is drawn grey and counted as missing."""
    steps = [list(c) if isinstance(c, (list, tuple)) else [c] for c in codes]
    ntok = max([len(s) for s in steps] + [1])
    n = len(steps)
    out = _open(width, height, "codes", "", steps=n, num_codes=num_codes)
    if not n:
        out.append(_text(2, height - 3, "no steps", 9, cls="empty", color="#888"))
        out.append("</svg>")
        return "".join(out)
    cw, rh = width / n, height / ntok
    missing = 0
    for i, step in enumerate(steps):
        for t, c in enumerate(step):
            v = _finite(c)
            bad = v is None or not (0 <= v < num_codes) or v != int(v)
            missing += bad
            code = "–" if v is None else fmt(v)
            color = MISSING_COLOR if bad else palette(int(v))
            tok = f' data-token="{t}"' if ntok > 1 else ""
            tip = f"step {i}: code {code}" + (f" (token {t})" if ntok > 1 else "")
            out.append(
                f'<rect class="code" data-step="{i}"{tok} data-code="{esc(code)}" x="{_num(i * cw)}" '
                f'y="{_num(t * rh)}" width="{_num(cw)}" height="{_num(rh)}" fill="{color}">'
                f"<title>{esc(tip)}</title></rect>"
            )
    if missing:
        out[0] = out[0].replace(" data-steps=", f' data-missing="{missing}" data-steps=', 1)
    out.append("</svg>")
    return "".join(out)


def line(ys: Sequence[float], *, title: str = "", ylabel: str = "", width: int = 240, height: int = 60, ymin: float | None = None) -> str:
    """A small line plot of ``ys`` against their index (e.g. per-step latent-action magnitude),
    with the min and max written at the left axis. ``ymin``: the bottom of the axis (e.g. 0 for
    a magnitude, so small wiggles are not blown up to full height); default the data's minimum. Missing values break the line (the path gets
    a new ``M`` segment) and are counted in the note. The path carries ``data-n`` (points drawn)."""
    vals = [_finite(v) for v in ys]
    ok = [v for v in vals if v is not None]
    missing = len(vals) - len(ok)
    left, right, top, bottom = 30, 4, 12 if (title or ylabel) else 4, 4 + (10 if missing else 0)
    pw, ph = width - left - right, height - top - bottom
    out = _open(width, height, "line", title, n=len(ok), missing=missing)
    head = " — ".join(s for s in (title, ylabel) if s)
    if head:
        out.append(_text(left, 9, head, 9, cls="title"))
    out.append(f'<path class="axis" d="M{left} {top}V{top + ph}" fill="none" stroke="{AXIS_COLOR}"/>')
    if not ok:
        out.append(_text(left + 4, top + ph / 2 + 3, "no data", 9, cls="empty", color="#888"))
    else:
        lo = min(ok) if ymin is None else min(float(ymin), min(ok))
        lo, hi = _nice_range(lo, max(ok))
        step = pw / max(len(vals) - 1, 1)
        d, pen = [], False
        for i, v in enumerate(vals):
            if v is None:
                pen = False
                continue
            px, py = left + i * step, top + ph - ph * (v - lo) / (hi - lo)
            d.append(f"{'L' if pen else 'M'}{_num(px)} {_num(py)}")
            pen = True
        out.append(f'<path class="series" data-n="{len(ok)}" d="{"".join(d)}" fill="none" stroke="{palette(0)}" stroke-width="1.5"/>')
        if len(ok) == 1:  # a single point has no line: mark it
            i = next(i for i, v in enumerate(vals) if v is not None)
            out.append(
                f'<circle class="pt" cx="{_num(left + i * step)}" cy="{_num(top + ph - ph * (ok[0] - lo) / (hi - lo))}" '
                f'r="2" fill="{palette(0)}"/>'
            )
        out.append(_text(left - 3, top + 7, fmt(max(ok)), 8, "end", "tick"))
        out.append(_text(left - 3, top + ph, fmt(lo if ymin is not None else min(ok)), 8, "end", "tick"))
    out.append(_missing_note(missing, width - 2, height - 2))
    out.append("</svg>")
    return "".join(out)
