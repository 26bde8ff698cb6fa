"""`defi browse` on a tiny real corpus: 3 kept clips (H.264 in two webdataset shards, labeled by a
tiny VQ GIDM through the real `run_label`), a rejected clip whose source video exists (its preview
is cut from the source) and a rejected clip whose source is unreadable. The pages are parsed back:
cards, data-URI videos decoded with PyAV, scores, code strips, pagination links."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import av
import pytest
import torch
from defi.pipelines.views.browse import (
    clip_cards_html,
    cut_preview,
    load_clip_rows,
    main,
    page_names,
    render_page,
    run_browse,
)
from defi.pipelines.label import LabelConfig, run_label
from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table
from defi.training.checkpoint import save_checkpoint
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny
from factories import moving_square, shard_writers, write_clip_sample, write_video

SIZE = 32
FPS = 10.0
# name -> (shard, frames, speed, motion_mean)
KEPT = {"a": (0, 12, 1, 1.0), "b": (0, 9, 3, 3.0), "c": (1, 10, 2, 2.0)}
KEYS = {n: clip_key(f"{i + 1:016x}", 0, spec[1], {"t": 1}) for i, (n, spec) in enumerate(KEPT.items())}
SRC_ID, BAD_ID = "5" * 16, "6" * 16
CUT = clip_key(SRC_ID, 5, 15, {"t": 1})  # rejected, source readable: 0.5-1.5 s of a 3 s video
BAD = clip_key(BAD_ID, 0, 10, {"t": 1})  # rejected, source unreadable
ORDER_SQL = "SELECT key, motion_mean * 2 AS m2 FROM clips ORDER BY motion_mean DESC"
MOTION = {KEYS["a"]: 1.0, KEYS["b"]: 3.0, KEYS["c"]: 2.0, CUT: 0.25, BAD: 0.5}
EXPECTED_ORDER = sorted(MOTION, key=lambda k: -MOTION[k])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, labeler name, {key: labels row}); built once, only read by the tests."""
    tmp = tmp_path_factory.mktemp("browse")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c)
    records = []
    for name, (shard, n, speed, motion) in KEPT.items():
        mp4 = write_video(tmp / f"{name}.mp4", moving_square(n, h=SIZE, w=SIZE, size=8, speed=speed), fps=FPS).read_bytes()
        uri = str(tmp / f"{name}.mp4")
        records.append(
            write_clip_sample(
                writers,
                shard,
                KEYS[name],
                mp4,
                n,
                FPS,
                SIZE,
                uri=uri,
                motion_mean=motion,
                blur=100.0 + n,
                extra_scores={"my_score": speed / 10},
            )
        )
    for w in writers:
        w.close()
    src = write_video(tmp / "source video.mp4", moving_square(30, h=48, w=64, size=12, speed=2), fps=FPS)
    cut = ClipRecord(key=CUT, source_id=SRC_ID, start_frame=5, end_frame=15, start_s=0.5, end_s=1.5, motion_mean=MOTION[CUT], blur=50.0)
    cut.reject("too_static")
    bad = ClipRecord(
        key=BAD, source_id=BAD_ID, start_frame=0, end_frame=10, start_s=0.0, end_s=1.0, uri=str(tmp / "gone.mp4"), motion_mean=MOTION[BAD]
    )
    bad.reject("blurry <&>")
    c.write_part("clips", clips_table([*records, cut, bad]), part="batch0")
    # the rejected clip's uri comes from the sources table (the clips row has none)
    c.write_part(
        "sources",
        sources_table(
            [SourceRecord(source_id=SRC_ID, uri=str(src)), SourceRecord(source_id=BAD_ID, uri=str(tmp / "gone.mp4"), error="decode_failed")]
        ),
        part="batch0",
    )
    torch.manual_seed(0)
    cfg = gidm_tiny(
        image_size=SIZE,
        patch_size=8,
        model_dim=32,
        num_heads=2,
        enc_depth=1,
        dec_depth=1,
        bottleneck="vq",
        codebook_size=4,
        num_action_tokens=2,
        latent_dim=4,
    )
    ckpt = str(save_checkpoint(tmp / "ckpt", GIDM(cfg), cfg, step=1))
    rec = run_label(str(tmp / "corpus"), ckpt, cfg=LabelConfig(runner="local", clips_per_batch=2, batch_size=8), progress=False)
    name = rec["labeler"]["name"]
    labels = {r["key"]: r for r in Corpus.open(str(tmp / "corpus")).read_table(f"labels/{name}").to_pylist()}
    assert set(labels) == set(KEYS.values())
    return str(tmp / "corpus"), name, labels


class _Page(HTMLParser):
    """Cards (attrs, text, video attrs, svgs) and nav links of a browse page."""

    def __init__(self, text: str):
        super().__init__()
        self.cards: list[dict] = []
        self.links: list[str] = []
        self.srcs: list[str] = []
        self._card = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                (self.links if k == "href" else self.srcs).append(a[k])
        if tag == "article":
            self._card = {"attrs": a, "text": "", "video": None, "cells": {}}
            self.cards.append(self._card)
        elif self._card is not None and tag == "video":
            self._card["video"] = a

    def handle_endtag(self, tag):
        if tag == "article":
            self._card = None

    def handle_data(self, data):
        if self._card is not None:
            self._card["text"] += data


def _svgs(html_text: str, kind: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(rf'<svg class="chart chart-{kind}".*?</svg>', html_text, re.DOTALL)]


def _cards_svgs(html_text: str) -> dict[str, str]:
    """key -> the card's HTML."""
    return dict(re.findall(r'<article [^>]*data-key="([^"]+)"[^>]*>(.*?)</article>', html_text, re.DOTALL))


def _frames(data_uri: str) -> int:
    assert data_uri.startswith("data:video/mp4;base64,")
    with av.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))) as f:
        return sum(1 for _ in f.decode(video=0))


def test_cards_follow_the_query_with_previews_scores_and_labels(corpus, tmp_path):
    root, name, labels = corpus
    out = tmp_path / "page.html"
    s = run_browse(root, ORDER_SQL, str(out))
    assert s["pages"] == [str(out)] and s["clips"] == 5 and s["kept"] == 3 and s["rejected"] == 2
    assert s["previews"] == 4 and s["no_preview"] == 1 and s["labeler"] == name and s["bytes"] == out.stat().st_size
    text = out.read_text()
    page = _Page(text)
    assert [c["attrs"]["data-key"] for c in page.cards] == EXPECTED_ORDER
    cards = {c["attrs"]["data-key"]: c for c in page.cards}
    html_of = _cards_svgs(text)
    for n, (_, frames, _, _) in KEPT.items():
        c = cards[KEYS[n]]
        assert c["attrs"]["data-kept"] == "true" and c["video"]["data-origin"] == "shard"
        assert {"autoplay", "muted", "loop", "playsinline"} <= set(c["video"])
        assert _frames(c["video"]["src"]) == frames  # the shard's mp4, as is
        # code strip: one cell per (step, token), the codes of the labels table in order
        strip = ET.fromstring(re.search(r'<svg class="chart chart-codes".*?</svg>', html_of[KEYS[n]], re.DOTALL).group(0))
        cells = strip.findall("rect")
        codes = labels[KEYS[n]]["codes"]
        assert len(codes) == frames - 1
        assert [(int(r.get("data-step")), int(r.get("data-token")), int(r.get("data-code"))) for r in cells] == [
            (i, t, c) for i, step in enumerate(codes) for t, c in enumerate(step)
        ]
        mag = ET.fromstring(re.search(r'<svg class="chart chart-line".*?</svg>', html_of[KEYS[n]], re.DOTALL).group(0))
        assert mag.get("data-n") == str(frames - 1)
        # every numeric score, formatted; the query's own column first
        assert re.search(rf'data-col="motion_mean"><td>motion_mean</td><td class="v">{KEPT[n][3]:g}<', html_of[KEYS[n]])
        assert re.search(rf'data-col="blur"><td>blur</td><td class="v">{100 + frames}<', html_of[KEYS[n]])
        assert re.search(rf'data-col="m2"><td>m2</td><td class="v">{2 * KEPT[n][3]:g}<', html_of[KEYS[n]])
        assert re.search(rf'data-col="my_score"><td>my_score</td><td class="v">{KEPT[n][2] / 10:g}<', html_of[KEYS[n]])
        assert f"0.00–{frames / FPS:.2f} s" in c["text"]
    cut = cards[CUT]
    assert cut["attrs"]["data-kept"] == "false" and cut["attrs"]["data-reason"] == "too_static"
    assert "rejected: too_static" in cut["text"] and "source video.mp4" in cut["text"] and "0.50–1.50 s" in cut["text"]
    assert cut["video"]["data-origin"] == "source" and _frames(cut["video"]["src"]) == 10  # 1 s at 10 fps
    assert "chart-codes" not in html_of[CUT]  # rejected clips are not labeled
    bad = cards[BAD]
    assert bad["video"] is None and "no preview: source unreadable (decode_failed)" in bad["text"]
    assert bad["attrs"]["data-reason"] == "blurry <&>" and "rejected: blurry <&>" in bad["text"]
    # summary: counts and a histogram per score, kept vs rejected, counting every value
    assert "<b>5</b> clips" in text and "<b>3</b> kept" in text and "<b>2</b> rejected" in text
    hists = {h.get("aria-label"): h for h in _svgs(text, "histogram")}
    assert {"motion_mean", "blur", "my_score", "label: norm_mean"} <= set(hists)
    counts = {
        g: sum(int(r.get("data-count")) for r in hists["motion_mean"].iter("rect") if r.get("data-group") == g)
        for g in ("kept", "rejected")
    }
    assert counts == {"kept": 3, "rejected": 2}
    assert hists["blur"].get("data-missing") == "1"  # the unreadable clip has no blur
    reasons = _svgs(text, "bars")[0]
    assert sorted(r.get("data-label") for r in reasons.iter("rect")) == ["blurry <&>", "too_static"]
    # offline: no remote source or link anywhere, every inline svg well-formed
    assert all(not re.match(r"\s*(https?:)?//", u) for u in page.srcs + page.links)
    assert "http://" not in text and "https://" not in text
    assert len(re.findall(r"<svg ", text)) == len(re.findall(r"<svg .*?</svg>", text, re.DOTALL))


def test_pagination_splits_pages_with_working_links(corpus, tmp_path):
    root, _, _ = corpus
    out = tmp_path / "sub" / "page.html"
    s = run_browse(root, ORDER_SQL, str(out), per_page=2, previews=False)
    names = [str(tmp_path / "sub" / n) for n in ("page.html", "page-2.html", "page-3.html")]
    assert s["pages"] == names == page_names(str(out), 3)
    keys = []
    for i, path in enumerate(names):
        with open(path) as f:
            text = f.read()
        page = _Page(text)
        keys += [c["attrs"]["data-key"] for c in page.cards]
        assert len(page.cards) == (2 if i < 2 else 1)
        assert all(c["video"] is None and "no preview: previews off" in c["text"] for c in page.cards)
        for href in page.links:  # relative, and each names a page that exists
            assert "/" not in href and os.path.exists(os.path.join(os.path.dirname(path), href))
        targets = set(page.links)
        assert targets == {os.path.basename(n) for j, n in enumerate(names) if j != i}
        prev = re.search(r'rel="prev" href="([^"]+)"', text)
        nxt = re.search(r'rel="next" href="([^"]+)"', text)
        assert (prev.group(1) if prev else None) == (os.path.basename(names[i - 1]) if i > 0 else None)
        assert (nxt.group(1) if nxt else None) == (os.path.basename(names[i + 1]) if i < 2 else None)
    assert keys == EXPECTED_ORDER


def test_cli_errors_are_one_line_exit_2(corpus, tmp_path, capsys):
    root, name, _ = corpus
    out = str(tmp_path / "p.html")
    assert main(["browse", "SELECT motion_mean FROM clips", "--root", root, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key" in err and "motion_mean" in err
    assert main(["browse", "DELETE FROM clips", "--root", root, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "read-only" in err
    assert main(["browse", "SELECT key FROM clips", "--root", root, "--out", out, "--labeler", "nope"]) == 2
    assert name in capsys.readouterr().err
    assert main(["browse", "SELECT key FROM clips", "--root", str(tmp_path / "missing"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(out)
    # success: a one-line summary; an unknown key is a visible card, a repeated key shown once
    sql = f"SELECT '{KEYS['a']}' AS key UNION ALL SELECT 'nope' UNION ALL SELECT '{KEYS['a']}'"
    assert main(["browse", sql, "--root", root, "--out", out, "--no-progress", "--no-previews"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "2 clips (1 kept, 0 rejected)" in line
    with open(out) as f:
        text = f.read()
    page = _Page(text)
    assert [c["attrs"]["data-key"] for c in page.cards] == [KEYS["a"], "nope"]
    assert "unknown key" in page.cards[1]["text"] and "1 row repeats a key" in text


def test_cards_fragment_for_reports(corpus):
    root, name, _ = corpus
    c = Corpus.open(root)
    frag = clip_cards_html(c, [KEYS["b"], CUT], previews=False)
    assert frag.startswith('<div class="cards">') and frag.count("<article ") == 2
    assert frag.index(KEYS["b"]) < frag.index(CUT) and "chart-codes" in frag
    doc = render_page("t <&>", frag)
    assert "<title>t &lt;&amp;&gt;</title>" in doc and "<style>" in doc
    rows = load_clip_rows(c, [CUT], name)
    assert rows[0]["source_uri"].endswith("source video.mp4") and rows[0]["labels"] is None


def test_newest_labeler_by_default_and_missing_previews_explained(corpus, tmp_path):
    base, vq_name, _ = corpus
    root = str(tmp_path / "corpus")
    shutil.copytree(base, root)
    # a second, newer labeler with a continuous bottleneck: magnitudes but no codes
    torch.manual_seed(1)
    cfg = gidm_tiny(image_size=SIZE, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1)
    ckpt = str(save_checkpoint(tmp_path / "ckpt", GIDM(cfg), cfg, step=1))
    cont = run_label(root, ckpt, cfg=LabelConfig(runner="local", clips_per_batch=2, batch_size=8), progress=False)
    cont_name = cont["labeler"]["name"]
    os.utime(os.path.join(root, "labels", vq_name), None)  # the folder's time must not matter, the parts' does
    # a kept clip whose shard and source are both gone
    lost = clip_key("7" * 16, 0, 10, {"t": 1})
    Corpus.open(root).write_part(
        "clips",
        clips_table(
            [
                ClipRecord(
                    key=lost,
                    source_id="7" * 16,
                    start_frame=0,
                    end_frame=10,
                    start_s=0.0,
                    end_s=1.0,
                    uri=str(tmp_path / "lost.mp4"),
                    shard="shard-000009.tar",
                    out_frames=10,
                )
            ]
        ),
        part="extra",
    )
    sql = f"SELECT key FROM clips WHERE key IN ('{KEYS['a']}', '{lost}', '{CUT}') ORDER BY key = '{CUT}', key"
    out = tmp_path / "p.html"
    s = run_browse(root, sql, str(out), preview_seconds=0.5)
    assert s["labeler"] == cont_name and s["previews"] == 2 and s["no_preview"] == 1
    cards = {c["attrs"]["data-key"]: c for c in _Page(out.read_text()).cards}
    html_of = _cards_svgs(out.read_text())
    assert "chart-codes" not in html_of[KEYS["a"]] and "chart-line" in html_of[KEYS["a"]] and cont_name in cards[KEYS["a"]]["text"]
    assert cards[lost]["video"] is None
    assert "no preview: not found in shard-000009.tar; source not found: lost.mp4" in cards[lost]["text"]
    assert _frames(cards[CUT]["video"]["src"]) == 5  # --preview-seconds 0.5 at 10 fps
    run_browse(root, sql, str(out), labeler=vq_name, previews=False)
    assert "chart-codes" in _cards_svgs(out.read_text())[KEYS["a"]] and vq_name in out.read_text()


def test_cut_preview_from_local_and_fsspec_sources(tmp_path):
    import fsspec

    src = write_video(tmp_path / "s.mp4", moving_square(30, h=48, w=64, size=12, speed=2), fps=FPS)
    url = f"memory://browse-test/{tmp_path.name}/s.mp4"
    with fsspec.open(url, "wb") as f:  # a remote-style URL: read through curate's fsspec decoder
        f.write(src.read_bytes())
    for uri in (str(src), "file://" + str(src), url):
        mp4, why = cut_preview({"source_uri": uri, "start_s": 0.5, "end_s": 1.5, "out_fps": FPS})
        assert why is None and _frames("data:video/mp4;base64," + base64.b64encode(mp4).decode()) == 10, uri
    assert cut_preview({"source_uri": url + ".gone", "start_s": 0.0, "end_s": 1.0})[1] == "source unreadable (open_failed)"
    assert cut_preview({"uri": str(tmp_path / "gone.mp4"), "start_s": 0.0, "end_s": 1.0})[1] == "source not found: gone.mp4"
    assert cut_preview({"source_uri": str(src), "start_s": 1.0, "end_s": 1.0})[1] == "no time range"
    assert (
        cut_preview({"source_uri": str(src), "source_error": "truncated", "start_s": 0, "end_s": 1})[1] == "source unreadable (truncated)"
    )
