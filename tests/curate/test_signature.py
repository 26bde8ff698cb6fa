"""Keyframe signatures and corpus-level grouping (curate/signature.py) on tiny real H.264 clips:
copies under each transform match their original, other content and other moments do not,
and the grouping depends only on the set of clips."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
from factories import smooth_pan, static_color, write_video

from defi.curate.signature import (
    ClipInfo,
    SignatureConfig,
    SignatureError,
    build_index,
    clip_similarity,
    content_box,
    group_clips,
    mp4_signature,
    near_pairs,
)

FPS = 24
H, W = 72, 128
CFG = SignatureConfig()


def _resize(frames, w, h):
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]


def _letterbox(frames):
    inner = _resize(frames, W, H - 24)
    return [np.pad(f, ((12, 12), (0, 0), (0, 0))) for f in inner]


def _crop(frames, frac=0.06):
    dy, dx = int(H * frac), int(W * frac)
    return _resize([f[dy : H - dy, dx : W - dx] for f in frames], W, H)


def _text(frames):
    out = []
    for f in frames:
        f = f.copy()  # a white caption over the bottom left
        cv2.putText(f, "HELLO 2024", (6, H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(f)
    return out


@pytest.fixture(scope="module")
def source():
    # 12 s of a pan (1 px/frame at 24 fps over smooth texture): 5 s later shows new ground
    return list(smooth_pan(12 * FPS, h=H, w=W, speed=1, seed=3))


@pytest.fixture(scope="module")
def sig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sig")

    def make(name, frames, fps=FPS):
        path = write_video(tmp / f"{name}.mp4", frames, fps=fps)
        return mp4_signature(str(path), CFG)[0]

    return make


def test_copies_under_each_transform_match_the_original(source, sig):
    clip = source[: 3 * FPS]
    orig = sig("orig", clip)
    copies = {
        "resize": sig("resize", _resize(clip, 80, 44)),
        "letterbox": sig("letterbox", _letterbox(clip)),
        "crop": sig("crop", _crop(clip)),
        "text": sig("text", _text(clip)),
        "fps": sig("fps", clip[::2], fps=FPS / 2),
        "trim": sig("trim", clip[20 : 20 + 2 * FPS]),
        "crop+resize": sig("crop_resize", _resize(_crop(clip), 96, 54)),
    }
    for name, s in copies.items():
        sim = clip_similarity(orig, s)
        assert sim >= 0.88, f"{name}: similarity {sim:.3f} < 0.88"


def test_other_content_and_other_moments_stay_apart(source, sig):
    orig = sig("orig", source[: 3 * FPS])
    later = sig("later", source[5 * FPS : 8 * FPS])  # the same pan, 5 s on
    other = sig("other", list(smooth_pan(3 * FPS, h=H, w=W, speed=1, seed=11)))
    assert clip_similarity(orig, later) < 0.88
    assert clip_similarity(orig, other) < 0.88


def test_letterbox_bars_are_found_and_dark_content_is_not_cut():
    g = np.full((2, 60, 80), 120, np.uint8)
    g[:, :8] = 16
    g[:, 52:] = 16
    assert content_box(g, 40) == (8, 52, 0, 80)
    dark = np.full((2, 60, 80), 10, np.uint8)  # all dark: at most a third of each side goes
    top, bottom, left, right = content_box(dark, 40)
    assert top == 20 and bottom == 40 and left == 26 and right == 54


def test_a_flat_clip_has_no_signature(tmp_path):
    path = write_video(tmp_path / "flat.mp4", static_color(24, h=H, w=W), fps=FPS)
    with pytest.raises(SignatureError) as e:
        mp4_signature(str(path), CFG)
    assert e.value.reason == "flat"
    with pytest.raises(SignatureError) as e:
        (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
        mp4_signature(str(tmp_path / "bad.mp4"), CFG)
    assert e.value.reason == "decode"


def _random_signatures(n, seed=0, dim=CFG.dim, frames=4):
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(n, frames, dim)).astype(np.float32)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def test_grouping_is_order_independent_and_keeps_the_most_pixels():
    base = _random_signatures(30)
    clips = [ClipInfo(f"k{i:02d}", base[i], width=64, height=48, duration_s=2.0) for i in range(30)]
    noise = np.random.default_rng(1).normal(scale=0.05, size=base[0].shape).astype(np.float32)
    dup = base[3] + noise
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    clips.append(ClipInfo("a-copy", dup, width=128, height=96, duration_s=1.0))  # bigger: the keeper
    clips.append(ClipInfo("z-copy", base[3].copy(), width=64, height=48, duration_s=1.0))
    ref = group_clips(clips)
    for seed in range(3):
        shuffled = clips[:]
        random.Random(seed).shuffle(shuffled)
        g = group_clips(shuffled)
        assert (g.keys, g.dup_group, g.keeper, g.neighbour, g.distance) == (
            ref.keys,
            ref.dup_group,
            ref.keeper,
            ref.neighbour,
            ref.distance,
        )
    by_key = dict(zip(ref.keys, zip(ref.dup_group, ref.keeper, ref.group_size, strict=True), strict=True))
    assert by_key["a-copy"] == ("a-copy", True, 3)
    assert by_key["k03"] == ("a-copy", False, 3) and by_key["z-copy"] == ("a-copy", False, 3)
    assert sum(1 for k in ref.keys if by_key[k][2] == 1) == 29


def test_semantic_duplicates_join_by_embedding():
    sig = _random_signatures(2)
    e = np.random.default_rng(2).normal(size=(2, 16)).astype(np.float32)
    clips = [ClipInfo("a", sig[0], e[0]), ClipInfo("b", sig[1], e[0] * 2.0)]  # same direction
    g = group_clips(clips, semantic_min_cosine=0.97)
    assert g.dup_group == ["a", "a"] and g.match == ["embedding", "embedding"]
    assert group_clips(clips, semantic_min_cosine=None).group_size == [1, 1]


def test_ivf_search_finds_the_planted_pairs_the_flat_search_finds():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    x[2000:2100] = x[:100] + rng.normal(scale=0.05, size=(100, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    owner = np.arange(len(x))
    flat = {tuple(p) for p in near_pairs(x, owner, 0.95, k=4)}
    ivf = {tuple(p) for p in near_pairs(x, owner, 0.95, k=4, index=build_index(x, nlist=32, nprobe=8))}
    planted = {(i, 2000 + i) for i in range(100)}
    assert planted <= flat
    assert len(planted & ivf) >= 95


def test_a_forked_worker_can_search_after_the_parent_did():
    """The local runner forks its workers; a dedup search in the driver before (a later curate in
    the same process) must not leave faiss's OpenMP pool to hang or crash a forked child."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, numpy as np
        from defi.curate.signature import near_pairs
        rng = np.random.default_rng(0)
        v = rng.normal(size=(20000, 35)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        owner = np.arange(len(v)) // 4
        near_pairs(v, owner, 0.9)
        pid = os.fork()
        if pid == 0:
            near_pairs(v[:4000], owner[:4000], 0.9)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", status)
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "child 0" in p.stdout, (p.stdout, p.stderr[-2000:])
