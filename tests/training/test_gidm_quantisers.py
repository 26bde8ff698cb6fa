"""The GIDM's discrete bottlenecks (VQ, NSVQ, residual VQ, FSQ) on a tiny problem: each one is put
between a linear encoder and a linear decoder and trained to reconstruct 8-D points drawn around
a continuum (not clusters), so a quantiser that learns nothing, keeps few codes or blocks the
gradient shows up in the numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import GIDMConfig
from defi.training.gidm.modeling_gidm import build_bottleneck


def _points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, 2, generator=g) * 2 - 1  # a 2-D manifold embedded in 8-D, plus noise
    basis = torch.randn(2, 8, generator=torch.Generator().manual_seed(99))
    return torch.tanh(t @ basis) + 0.02 * torch.randn(n, 8, generator=g)


def _cfg(bottleneck: str, **kw) -> GIDMConfig:
    base = dict(model_dim=16, latent_dim=4, codebook_size=16, num_action_tokens=1, restart_interval=20, fsq_levels=(5, 5, 5))
    return GIDMConfig(bottleneck=bottleneck, **{**base, **kw})


def _fit(cfg: GIDMConfig, steps: int = 150, seed: int = 0):
    torch.manual_seed(seed)
    enc, bott, dec = nn.Linear(8, cfg.model_dim), build_bottleneck(cfg), nn.Linear(cfg.code_width, 8)
    params = [*enc.parameters(), *bott.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    x = _points(512, seed=1)
    hist, grads = [], {}
    bott.train()
    for step in range(steps):
        z, codes, extra = bott(enc(x).unsqueeze(1), True)
        recon = ((dec(z.squeeze(1)) - x) ** 2).mean()
        opt.zero_grad()
        (recon + extra["bottleneck_loss"]).backward()
        if step == 0:
            grads = {
                n: (p.grad is not None and float(p.grad.abs().sum()) > 0) for n, p in [("encoder", enc.weight), *bott.named_parameters()]
            }
        opt.step()
        hist.append(float(recon.detach()))
    bott.eval()
    with torch.no_grad():
        z, codes, _ = bott(enc(x).unsqueeze(1), False)
        test = float(((dec(z.squeeze(1)) - x) ** 2).mean())
    return hist, grads, codes, test


@pytest.mark.parametrize("bottleneck", ["vq", "nsvq", "rvq", "fsq"])
def test_quantiser_trains_gradients_flow_and_codes_are_used(bottleneck):
    cfg = _cfg(bottleneck)
    hist, grads, codes, test = _fit(cfg)
    # every parameter gets a gradient from the first step on: the encoder through the quantiser
    # (straight-through or noise substitution), the codebook through its loss or |z - q|
    assert grads and all(grads.values()), grads
    assert hist[-1] < 0.3 * hist[0], (hist[0], hist[-1])
    # the deterministic (eval) output reconstructs as well as training did, so what is learned
    # is the codes themselves, not the training-time noise or straight-through path
    assert test < 0.3 * hist[0], (hist[0], test)
    used = torch.unique(codes).numel()
    assert codes.shape == (512, 1) and 0 <= int(codes.min()) and int(codes.max()) < cfg.num_codes
    assert used >= (8 if bottleneck != "fsq" else 20), used  # no collapse onto a few codes


def test_residual_stages_reconstruct_finer_than_one_codebook():
    _, _, _, one = _fit(_cfg("vq"))
    _, _, _, four = _fit(_cfg("rvq", vq_stages=4))
    assert four < 0.6 * one, (one, four)


def test_gidm_with_each_new_bottleneck_runs_and_encodes_codes():
    torch.manual_seed(0)
    o, n = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    for b, stages in (("nsvq", 1), ("rvq", 3)):
        cfg = GIDMConfig(image_size=16, patch_size=4, model_dim=16, num_heads=2, enc_depth=1, dec_depth=1, bottleneck=b, vq_stages=stages,
                         num_action_tokens=2, codebook_size=8, latent_dim=4, keypoints=4)  # fmt: skip
        m = GIDM(cfg)
        out = m(o, n)
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and out["codes"].shape == (4, 2) and cfg.num_codes == 8
        enc = m.encode(o, n)
        assert enc["codes"].shape == (4, 2) and torch.equal(enc["z"], m.encode(o, n)["z"])  # eval: deterministic codes
        if b == "rvq":
            assert out["stage_codes"].shape == (4, 2, 3) and torch.equal(out["stage_codes"][..., 0], out["codes"])
            book = m.bottleneck.codebook  # the code vector is the sum of one code per stage
            z = sum(book[s][out["stage_codes"][..., s]] for s in range(3))
            assert torch.allclose(out["z"], z, atol=1e-5)
        else:
            assert torch.allclose(enc["z"][0, 0], m.bottleneck.codebook[enc["codes"][0, 0]], atol=1e-6)  # outside training: the code itself


def test_config_rejects_bad_stages():
    with pytest.raises(ValueError, match="vq_stages=0"):
        GIDMConfig(bottleneck="rvq", vq_stages=0)
