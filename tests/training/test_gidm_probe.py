"""Linear probes of true actions from latents (defi.training.gidm.latent_probe) on synthetic pairs whose
answer is known: a latent that is the displacement plus noise, and one that is noise."""

from __future__ import annotations

import numpy as np
import pytest

from defi.training.gidm.latent_probe import nmi, probe, ridge_r2


def _pairs(n_episodes: int = 10, per: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_episodes * per
    disp = rng.normal(size=(n, 3))
    obs = rng.random((n, 3, 8, 8)).astype(np.float32)  # a scene unrelated to the motion
    nxt = np.clip(obs + 0.01 * rng.normal(size=obs.shape), 0, 1).astype(np.float32)
    return {
        "obs": obs,
        "next_obs": nxt,
        "disp": disp,
        "cmd": disp + 0.1 * rng.normal(size=disp.shape),
        "episode": np.repeat([f"ep{i}" for i in range(n_episodes)], per),
        "task": np.array(["t"] * n),
    }, rng


def _enc(z):
    return {"z": z, "codes": None, "mse_true": 0.01, "mse_shuffled": 0.02}


def test_a_latent_that_carries_the_displacement_scores_high_and_noise_scores_zero():
    pairs, rng = _pairs()
    informative = np.concatenate([pairs["disp"] @ rng.normal(size=(3, 3)), rng.normal(size=(len(pairs["disp"]), 5))], 1)
    res = probe(pairs, _enc(informative + 0.05 * rng.normal(size=informative.shape)), num_codes=0)
    r2 = res["r2"]["disp"]
    assert r2["latent"] > 0.95 and r2["obs+latent"] > 0.9
    assert r2["pca_obs"] < 0.1 and r2["pca_diff"] < 0.1  # the scene says nothing about this motion
    assert 0.8 < res["r2"]["cmd"]["true_disp"] <= 1.0
    assert res["delta_psnr"] == pytest.approx(10 * np.log10(2), abs=1e-6)  # MSE halves with the true latent
    noise = probe(pairs, _enc(rng.normal(size=informative.shape)), num_codes=0)["r2"]["disp"]
    assert noise["latent"] < 0.05
    assert min(res["r2_disp_xyz"]["latent"]) > 0.95
    # per axis: a latent that holds only the x displacement explains x and nothing else
    only_x = pairs["disp"][:, :1] + 0.05 * rng.normal(size=(len(pairs["disp"]), 1))
    x, y, z = probe(pairs, _enc(only_x), num_codes=0)["r2_disp_xyz"]["latent"]
    assert x > 0.9 and y < 0.05 and z < 0.05, (x, y, z)
    # split by episode: both halves have whole episodes
    assert res["probe_train_pairs"] % 40 == 0 and res["probe_test_pairs"] % 40 == 0


def test_probe_needs_two_episodes():
    pairs, _ = _pairs(n_episodes=1)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        probe(pairs, _enc(np.zeros((40, 4))), num_codes=0)


def test_ridge_and_nmi_on_known_cases():
    x = np.arange(100, dtype=float)[:, None]
    assert ridge_r2(x[:50], 2 * x[:50] + 1, x[50:], 2 * x[50:] + 1, lam=1e-6) == pytest.approx(1.0, abs=1e-6)
    a = np.repeat([0, 1, 2, 3], 25)
    assert nmi(a, a) == pytest.approx(1.0) and nmi(a, (a + 1) % 4) == pytest.approx(1.0)
    assert nmi(np.repeat([0, 1], 50), np.tile([0, 1], 50)) == pytest.approx(0.0, abs=1e-9)  # independent


def test_nonlinear_probe_finds_what_a_linear_one_cannot():
    """Targets that are products of the latent's coordinates (dx*dy, dy*dz, dx*dz of independent
    zero-mean axes) have no linear readout; the random-feature probe finds them."""
    pairs, rng = _pairs(n_episodes=12, per=60)
    d = pairs["disp"]
    pairs["disp"] = np.stack([d[:, 0] * d[:, 1], d[:, 1] * d[:, 2], d[:, 0] * d[:, 2]], 1)
    res = probe(pairs, _enc(d + 0.01 * rng.normal(size=d.shape)), num_codes=0, nonlinear=True)
    r2 = res["r2"]["disp"]
    assert r2["latent"] < 0.1 and r2["rff_latent"] > 0.5, r2
    assert r2["rff_obs"] < 0.1  # controls get the same treatment: the scene still says nothing
    assert "rff_latent" not in probe(pairs, _enc(d), num_codes=0)["r2"]["disp"]


def test_report_names_the_axis_where_the_latent_is_short_of_the_scene():
    """A latent with the x and y displacement but not z, beside a scene whose brightness gives z:
    the demo report's per-axis line shows the three axes and names z as where the latent falls short."""
    from defi.pipelines.views.report import _per_axis

    pairs, rng = _pairs()
    disp = pairs["disp"]
    pairs["obs"] = np.clip(0.5 + 0.1 * disp[:, 2, None, None, None] + 0.01 * rng.random(pairs["obs"].shape), 0, 1).astype(np.float32)
    pairs["next_obs"] = pairs["obs"].copy()
    res = probe(pairs, _enc(disp[:, :2] + 0.05 * rng.normal(size=(len(disp), 2))), num_codes=0)
    line = _per_axis(res["r2_disp_xyz"])
    lat = res["r2_disp_xyz"]["latent"]
    assert lat[0] > 0.9 and lat[1] > 0.9 and lat[2] < 0.05 and res["r2_disp_xyz"]["pca_obs"][2] > 0.9
    assert line.count(" / ") == 2 + 6 and f"latent {lat[0]:.2f} / {lat[1]:.2f} / {lat[2]:.2f}" in line
    assert "furthest below its controls on z" in line
    assert _per_axis(None) == "" and _per_axis({"latent": [0.5]}) == ""
