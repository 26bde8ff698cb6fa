"""The inline-SVG charts: well-formed XML, one element per datum (read back through the data-*
attributes), missing values skipped and counted, text escaped, output deterministic."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from defi.pipelines.views import svg

NAN = float("nan")


def parse(s: str) -> ET.Element:
    assert s.startswith("<svg ") and s.endswith("</svg>")
    root = ET.fromstring(s)
    assert root.tag == "svg"
    return root


def rects(root: ET.Element, cls: str) -> list[ET.Element]:
    return [r for r in root.iter("rect") if r.get("class") == cls]


def test_histogram_counts_match_numpy_on_shared_edges():
    rng = np.random.default_rng(0)
    kept, rej = rng.normal(0, 1, 200).tolist(), rng.normal(2, 0.5, 50).tolist()
    root = parse(svg.histogram({"kept": kept + [NAN, None], "rejected": rej + [math.inf]}, bins=10, title="motion", xlabel="px/frame"))
    bars = rects(root, "bar")
    edges = np.linspace(min(kept + rej), max(kept + rej), 11)
    for group, values in (("kept", kept), ("rejected", rej)):
        got = {int(r.get("data-bin")): int(r.get("data-count")) for r in bars if r.get("data-group") == group}
        want = np.histogram(values, bins=edges)[0]
        assert sum(got.values()) == len(values)
        assert [got.get(i, 0) for i in range(10)] == want.tolist()
        assert all(n > 0 for n in got.values())  # empty bins draw nothing
    assert root.get("data-missing") == "3"
    assert any(t.text == "3 missing" for t in root.iter("text"))
    texts = [t.text for t in root.iter("text")]
    assert "kept (200)" in texts and "rejected (50)" in texts and "px/frame" in texts
    # taller bars for larger counts, drawn from the same baseline
    tallest = max(bars, key=lambda r: float(r.get("height")))
    assert int(tallest.get("data-count")) == max(int(r.get("data-count")) for r in bars)
    assert len({round(float(r.get("y")) + float(r.get("height")), 1) for r in bars}) == 1


def test_histogram_edge_cases():
    one = parse(svg.histogram({"a": [3.0, 3.0, 3.0]}, bins=5))  # a single value: one bar of 3
    assert [int(r.get("data-count")) for r in rects(one, "bar")] == [3]
    empty = parse(svg.histogram({"a": [NAN, None]}))
    assert rects(empty, "bar") == [] and empty.get("data-missing") == "2"
    assert "no data" in [t.text for t in empty.iter("text")]
    with pytest.raises(ValueError, match="bins"):
        svg.histogram({"a": [1]}, bins=0)


def test_text_is_escaped_and_output_deterministic():
    title = 'a < b & "c"'
    for s in (
        svg.histogram({"x<&": [1, 2]}, title=title),
        svg.bars([("<&", 1.0)], title=title, unit="&"),
        svg.scatter([1], [2], categories=["<&>"], title=title, xlabel="<", ylabel="&"),
        svg.line([1, 2], title=title),
    ):
        root = parse(s)
        assert "&lt;" in s and "&amp;" in s
        assert root.find("title").text == title
    a = svg.histogram({"k": [0.1, 0.5, 0.9]}, title="t")
    assert a == svg.histogram({"k": [0.1, 0.5, 0.9]}, title="t")


def test_bars_rows_values_and_missing():
    items = [("long label " * 5, 4.0), ("b", 1.0), ("neg", -2.0), ("none", None), ("nan", NAN)]
    s = svg.bars(items, title="t", unit="clips")
    root = parse(s)
    bars = rects(root, "bar")
    assert [(r.get("data-label"), float(r.get("data-value"))) for r in bars] == [(l, v) for l, v in items[:3]]
    assert root.get("data-missing") == "2" and [t.text for t in root.iter("text")].count("n/a") == 2
    w = {r.get("data-label"): float(r.get("width")) for r in bars}
    assert w["b"] * 4 == pytest.approx(w["long label " * 5], rel=0.02)
    assert w["neg"] == pytest.approx(2 * w["b"], rel=0.02)
    # the negative bar lies left of the positive ones' start (the zero line)
    x0 = float(bars[1].get("x"))
    assert float(bars[2].get("x")) + float(bars[2].get("width")) == pytest.approx(x0, abs=0.02)
    assert "4 clips" in [t.text for t in root.iter("text")]
    # height grows with the number of rows
    assert int(parse(svg.bars([("a", 1)] * 10)).get("height")) > int(parse(svg.bars([("a", 1)] * 2)).get("height"))


def test_scatter_hue_wheel_and_categories():
    x, y = [0, 1, 2, 3, None], [0, 1, 4, NAN, 2]
    hue = [0.0, 2 * math.pi, math.pi, 1.0, 0.0]
    root = parse(svg.scatter(x, y, hue=hue, xlabel="x", ylabel="y"))
    pts = [c for c in root.iter("circle") if c.get("class") == "pt"]
    assert [int(c.get("data-i")) for c in pts] == [0, 1, 2] and root.get("data-missing") == "2"
    assert pts[0].get("fill") == pts[1].get("fill") == svg.hue_color(0)  # cyclic: 0 and 2*pi agree
    assert pts[2].get("fill") != pts[0].get("fill")
    wheel = [p for p in root.iter("path") if p.get("class") == "wheel"]
    assert len(wheel) == 12 and len({p.get("fill") for p in wheel}) == 12
    # y grows upwards; x to the right
    assert float(pts[2].get("cy")) < float(pts[1].get("cy")) < float(pts[0].get("cy"))
    assert float(pts[0].get("cx")) < float(pts[1].get("cx")) < float(pts[2].get("cx"))
    cats = parse(svg.scatter([1, 2, 3], [1, 2, 3], categories=["b", "a", "b"]))
    pts = [c for c in cats.iter("circle") if c.get("class") == "pt"]
    assert [c.get("fill") for c in pts] == [svg.palette(0), svg.palette(1), svg.palette(0)]
    legend = [t.text for t in cats.iter("text") if t.get("class") == "legend"]
    assert legend == ["b", "a"]
    with pytest.raises(ValueError, match="differ"):
        svg.scatter([1, 2], [1])
    with pytest.raises(ValueError, match="hue"):
        svg.scatter([1, 2], [1, 2], hue=[0.0])


def test_code_strip_cells_per_step_and_token():
    root = parse(svg.code_strip([0, 3, 1, None, 7], 4, width=100))
    cells = rects(root, "code")
    assert [c.get("data-code") for c in cells] == ["0", "3", "1", "–", "7"]
    assert [c.get("fill") for c in cells[:3]] == [svg.palette(0), svg.palette(3), svg.palette(1)]
    assert cells[3].get("fill") == cells[4].get("fill") == svg.MISSING_COLOR  # missing, out of range
    assert root.get("data-missing") == "2"
    assert [float(c.get("x")) for c in cells] == [0, 20, 40, 60, 80]
    assert cells[1].find("title").text == "step 1: code 3"
    multi = parse(svg.code_strip([[0, 1], [2, 3], [1, 1]], 4, height=14))
    cells = rects(multi, "code")
    assert [(c.get("data-step"), c.get("data-token"), c.get("data-code")) for c in cells] == [
        ("0", "0", "0"),
        ("0", "1", "1"),
        ("1", "0", "2"),
        ("1", "1", "3"),
        ("2", "0", "1"),
        ("2", "1", "1"),
    ]
    assert {float(c.get("height")) for c in cells} == {7.0}
    assert rects(parse(svg.code_strip([], 4)), "code") == []


def test_line_breaks_at_missing_values_and_scales_to_axis():
    root = parse(svg.line([1.0, 2.0, NAN, 4.0, 3.0], title="|z|"))
    path = next(p for p in root.iter("path") if p.get("class") == "series")
    d = path.get("d")
    assert path.get("data-n") == "4" and d.count("M") == 2 and d.count("L") == 2  # two segments: 1-2, 4-3
    ys = [float(v) for v in re.findall(r"[ML][\d.]+ ([\d.]+)", d)]
    assert ys[2] == min(ys) and ys[0] == max(ys)  # 4.0 at the top, 1.0 at the bottom
    assert root.get("data-missing") == "1"
    ticks = [t.text for t in root.iter("text") if t.get("class") == "tick"]
    assert ticks == ["4", "1"]
    zero = parse(svg.line([1.0, 2.0], ymin=0))
    assert [t.text for t in zero.iter("text") if t.get("class") == "tick"] == ["2", "0"]
    assert "no data" in [t.text for t in parse(svg.line([None])).iter("text")]


def test_palette_and_hue_colors():
    assert svg.palette(0) != svg.palette(1) and svg.palette(len(svg.PALETTE)) == svg.palette(0)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", svg.palette(i)) for i in range(20))
    assert svg.hue_color(0) == svg.hue_color(-2 * math.pi)
    r, g, b = (int(svg.hue_color(2 * math.pi / 3)[i : i + 2], 16) for i in (1, 3, 5))
    assert g > r and g > b  # a third of the wheel is green
    assert svg.standalone(svg.line([1, 2])).startswith('<svg xmlns="http://www.w3.org/2000/svg" ')
