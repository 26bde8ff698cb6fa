"""Camera motion added to pairs and taken out again (``defi.training.gidm.camera``)."""

from __future__ import annotations

import numpy as np

from defi.training.gidm.camera import camera_shift, global_shift, stabilize, translate


def _scenes(n: int, seed: int) -> np.ndarray:
    """Blocky random textures [n, 3, 64, 64] (a table top seen by a fixed camera)."""
    small = np.random.default_rng(seed).random((n, 3, 8, 8))
    return np.kron(small, np.ones((1, 1, 8, 8))).astype(np.float32)


def test_translate_moves_content_and_repeats_edges():
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 2, 3] = 1
    y = translate(x, np.array([2]), np.array([-1]))
    assert y[0, 0, 4, 2] == 1 and y.sum() == 1  # down 2, left 1
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 1, 8, 1))
    z = translate(ramp, np.array([0]), np.array([3]))
    assert (z[0, 0, :, :3] == 0).all() and (z[0, 0, :, 3:] == ramp[0, 0, :, :5]).all()  # the left edge repeats


def test_camera_shift_is_recovered_and_stabilize_keeps_only_the_object_motion():
    scenes = _scenes(24, seed=0)
    obs = scenes.copy()
    nxt = scenes.copy()
    obs[:, :, 20:28, 20:28] = 1.0  # a white "hand" that moves 6 px right between o_t and o_t+k
    nxt[:, :, 20:28, 26:34] = 1.0
    o, n, d = camera_shift(obs, nxt, max_px=4, seed=1)
    assert np.abs(d).max() <= 4 and np.abs(d).mean() > 1  # the camera moved in most pairs
    est = global_shift(o, n, max_px=8)
    assert (est == d).all(1).mean() >= 0.9, np.c_[d, est]  # the background wins over the hand
    n_stable, _ = stabilize(o, n, max_px=8)
    # after stabilising, o_t+k differs from o_t where the hand moved (and at the borders),
    # about as much as without any camera motion; without stabilising, everywhere
    inner = (slice(None), slice(None), slice(8, 56), slice(8, 56))
    still = np.abs(nxt - obs)[inner].mean()
    assert np.abs(n_stable - o)[inner].mean() < 1.5 * still < np.abs(n - o)[inner].mean()
