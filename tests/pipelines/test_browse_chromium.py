"""`defi browse` output opened in a real headless Chromium: every clip preview on the page loads
and plays, and a screenshot of the page is kept as a CI artifact.

The corpus is real: generated H.264 videos curated with Ray (kept and rejected clips), labeled
with latent actions by a tiny random GIDM, browsed with a query over clips joined with labels.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from browser import check_page, find_chromium
from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.label import LabelConfig, run_label
from defi.pipelines.curate_config import CurateConfig
from defi.schemas.corpus import Corpus
from defi.training.checkpoint import save_checkpoint
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny
from factories import moving_square, pan, scenes, static_color, write_video

REPO = Path(__file__).resolve().parents[2]
CFG = {
    "windows": {"clip_len_s": 10, "stride_s": 10, "max_clip_s": None, "min_clip_s": 0.5},
    "shots": {"min_shot_s": 0.5},
    "encode": {"fps": 8, "short_side": 48},
    "motion": {"min_frame_diff": 0.2},
    "ray": {"num_cpus": 2},
}


def artifact_dir() -> Path:
    return Path(os.environ.get("DEFI_ARTIFACTS") or REPO / ".artifacts")


@pytest.fixture(scope="module")
def labeled_corpus(tmp_path_factory):
    """(root, labeler name): kept clips with moving content, rejected static ones, all labeled."""
    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (install Debian package `chromium`, or set $DEFI_CHROMIUM)")
    inputs = tmp_path_factory.mktemp("inputs")
    write_video(inputs / "square.mp4", moving_square(40, h=64, w=96), fps=24)
    write_video(inputs / "pan.mp4", pan(40, h=64, w=96, seed=3), fps=24)
    write_video(inputs / "two_shots.mp4", scenes([30, 30], h=64, w=96, seed=1), fps=24)
    write_video(inputs / "static.mp4", static_color(40), fps=24)  # rejected: no motion
    write_video(inputs / "gone.mp4", static_color(40, color=(90, 90, 90)), fps=24)  # rejected, then deleted
    root = str(tmp_path_factory.mktemp("corpus"))
    rec = run_curate([str(inputs)], root, from_dict(CurateConfig, CFG), progress=False)
    assert rec["status"] == "done", rec
    # a rejected clip has no shard sample; browse cuts its preview from the source, so with the
    # source gone its card shows "no preview" (and must not count as a broken video)
    (inputs / "gone.mp4").unlink()

    torch.manual_seed(0)
    cfg = gidm_tiny(
        image_size=32,
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
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "gidm", GIDM(cfg), cfg, step=1)
    lab = run_label(root, str(ckpt), cfg=LabelConfig(runner="local", clips_per_batch=2, batch_size=8), progress=False)
    assert lab["status"] == "done" and lab["counts"]["labeled"] >= 3, lab
    return root, lab["labeler"]["name"]


def test_corpus_has_kept_and_rejected_labeled_clips(labeled_corpus):
    root, name = labeled_corpus
    c = Corpus.open(root)
    kept = c.query("SELECT count(*) AS n FROM clips WHERE kept").column("n")[0].as_py()
    rejected = c.query("SELECT count(*) AS n FROM clips WHERE NOT kept").column("n")[0].as_py()
    labeled = c.query(f"SELECT count(*) AS n FROM latent_actions WHERE num_steps > 0 AND labeler = '{name}'").column("n")[0].as_py()
    assert kept >= 3 and rejected >= 2 and labeled == kept, (kept, rejected, labeled)


def test_browse_page_plays_every_preview_in_chromium(labeled_corpus, tmp_path, capsys):
    from defi.pipelines.views.browse import main

    root, name = labeled_corpus
    out = tmp_path / "page.html"
    sql = "SELECT c.key, l.norm_mean AS latent_norm FROM clips c LEFT JOIN latent_actions l USING (key) ORDER BY c.kept DESC, c.key"
    assert main(["browse", sql, "--root", root, "--out", str(out), "--no-progress"]) == 0
    assert f"labels: {name}" in capsys.readouterr().out
    doc = out.read_text()
    c = Corpus.open(root)
    n_clips = c.query("SELECT count(*) AS n FROM clips").column("n")[0].as_py()
    n_rejected = c.query("SELECT count(*) AS n FROM clips WHERE NOT kept").column("n")[0].as_py()
    cards = re.findall(r'<article class="card (\w+)"', doc)
    assert len(cards) == n_clips and cards.count("rejected") == n_rejected >= 1
    n_previews = len(re.findall(r"<video\b", doc))
    assert doc.count('class="nopreview"') == 1 and "source not found: gone.mp4" in doc
    assert n_previews == n_clips - 1 > 0
    assert 'data-origin="shard"' in doc and 'data-origin="source"' in doc  # kept and rejected previews

    shot = artifact_dir() / "browse.png"
    t0 = time.monotonic()
    report = check_page(out, screenshot=shot, timeout_s=60)
    elapsed = time.monotonic() - t0
    assert report["videos"] == n_previews and report["playing"] == n_previews, report["broken"]
    assert report["broken"] == [] and report["broken_images"] == [] and report["console_errors"] == []
    assert report["title"] == "defi browse (1/1)"
    assert elapsed < 30, f"checking {n_previews} previews took {elapsed:.1f} s"

    # the artifact is a full-page PNG, 1280 px wide, with the moving square's yellow in the previews
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] == 1280 and img.shape[0] >= 900
    yellow = (np.abs(img[..., ::-1].astype(int) - (240, 200, 40)).max(-1) <= 40).sum()
    assert yellow > 100, "no preview frame was painted into the screenshot"


def test_every_page_of_a_paginated_browse_plays(labeled_corpus, tmp_path):
    from defi.pipelines.views.browse import run_browse

    root, _ = labeled_corpus
    out = tmp_path / "pages" / "p.html"
    res = run_browse(root, "SELECT key FROM clips WHERE kept ORDER BY key", str(out), per_page=2)
    n_pages = -(-res["clips"] // 2)
    assert n_pages >= 2 and len(res["pages"]) == n_pages and res["previews"] == res["kept"] == res["clips"]
    total = 0
    for i, page in enumerate(res["pages"]):
        report = check_page(page, timeout_s=30, width=900)
        assert report["broken"] == [] and report["console_errors"] == [], report
        assert report["videos"] == report["playing"] == min(2, res["clips"] - 2 * i) > 0
        assert report["title"] == f"defi browse ({i + 1}/{n_pages})"
        total += report["playing"]
    assert total == res["clips"]
