"""The DeFI policy from a tiny random GFDM and GIDM: every --init builds and steps; the frozen GFDM
gets no gradient and keeps its weights while projection, GIDM encoder and head change; the GIDM's
VQ codes neither restart nor count while finetuning; the policy overfits a few demos; optional
losses and the staged unfreeze; checkpoint round trip."""

import pytest
import torch

from defi.training.checkpoint import load_checkpoint, save_checkpoint
from defi.training.gfdm.modeling_gfdm import GFDM
from defi.training.gfdm import gfdm_tiny
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny
from defi.training.policy import INITS, PolicyConfig
from defi.training.policy.modeling_policy import DeFiPolicy

S, H, A, D = 32, 4, 4, 16


def parts(bottleneck="continuous", seed=0):
    torch.manual_seed(seed)
    g = gfdm_tiny(image_size=S, block_out_channels=(16, 32, 32), cross_attention_dim=32, text_dim=D, norm_num_groups=8)
    i = gidm_tiny(image_size=S, model_dim=32, bottleneck=bottleneck, codebook_size=8, restart_interval=2)
    return GFDM(g, load_pretrained=False), GIDM(i)


def policy(init="defi", bottleneck="continuous", **kw):
    gfdm, gidm = parts(bottleneck)
    cfg = PolicyConfig(
        init=init,
        horizon=H,
        action_dim=A,
        image_size=S,
        text_dim=D,
        head_dim=64,
        gfdm=gfdm.config.to_dict(),
        gidm=gidm.config.to_dict(),
        **kw,
    )
    keep = {"defi": (gfdm, gidm), "no-gfdm-pretrain": (None, gidm), "no-gidm-pretrain": (gfdm, None)}.get(init, (None, None))
    return DeFiPolicy(cfg, gfdm=keep[0], gidm=keep[1])


def demos(n=6, seed=1):
    """n observations whose action chunks depend on the image (the square's position)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.full((n, 3, S, S), 0.2)
    acts = torch.zeros(n, H, A)
    for k in range(n):
        x, y = torch.randint(0, S - 6, (2,), generator=g).tolist()
        obs[k, :, y : y + 6, x : x + 6] = 0.9
        acts[k] = torch.tensor([x / S - 0.5, y / S - 0.5, 0.3, -0.2]) * torch.linspace(1, 2, H)[:, None]
    return obs, torch.randn(n, D, generator=g), acts


def steps(p, n, lr=3e-3, **batch):
    opt = torch.optim.AdamW(p.parameters(), lr=lr, weight_decay=0.0)
    obs, text, acts = demos()
    out = []
    for _ in range(n):
        r = p(obs, text, acts, **batch)
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        out.append(float(r["action_l1"]))
    return out


@pytest.mark.parametrize("init", INITS)
def test_every_init_builds_and_steps(init):
    p = policy(init)
    l1 = steps(p, 3)
    assert len(l1) == 3 and all(x == x for x in l1)
    assert p.predict(demos()[0][:2], demos()[1][:2]).shape == (2, H, A)
    assert (p.gfdm is None) == (init == "bc")


def test_frozen_gfdm_has_no_grads_and_keeps_weights_trained_parts_change():
    p = policy("defi", bottleneck="vq")
    before = {n: t.detach().clone() for n, t in p.state_dict().items()}
    steps(p, 4)
    after = p.state_dict()
    gfdm = [n for n in before if n.startswith("gfdm.")]
    assert gfdm and all(torch.equal(before[n], after[n]) for n in gfdm)
    assert all(q.grad is None for q in p.gfdm.parameters())
    assert not p.gfdm.training  # frozen stays in eval mode while the policy trains
    for prefix in ("project.", "gidm.encoder.", "gidm.bottleneck.codebook", "head."):
        names = [n for n in before if n.startswith(prefix) and before[n].is_floating_point()]
        assert names and any(not torch.equal(before[n], after[n]) for n in names), prefix
    # the GIDM decoder is not in the policy's graph; VQ codes are neither restarted nor counted
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("gidm.decoder."))
    assert torch.equal(before["gidm.bottleneck.usage"], after["gidm.bottleneck.usage"])
    assert torch.equal(before["gidm.bottleneck.steps"], after["gidm.bottleneck.steps"])


def test_gidm_lr_scale_slows_or_freezes_the_gidm_only():
    """gidm_lr_scale: the GIDM's optimizer group runs at lr * scale; 0 keeps it where it started
    while projection and head still learn; 0.1 moves it less than 1 does."""
    from defi.training.recipes.policy import param_groups

    def moved(scale):
        p = policy("defi", gidm_lr_scale=scale)
        before = {n: t.detach().clone() for n, t in p.named_parameters()}
        opt = torch.optim.AdamW(param_groups(p, 3e-3), lr=3e-3, weight_decay=0.01)
        obs, text, acts = demos()
        for _ in range(3):
            r = p(obs, text, acts)
            opt.zero_grad()
            r["loss"].backward()
            opt.step()
        delta = {n: (t.detach() - before[n]).abs().sum().item() for n, t in p.named_parameters()}
        part = lambda prefix: sum(v for n, v in delta.items() if n.startswith(prefix))  # noqa: E731
        return part("gidm.encoder."), part("head.") + part("project.")

    gidm_1, rest_1 = moved(1.0)
    gidm_01, _ = moved(0.1)
    gidm_0, rest_0 = moved(0.0)
    assert gidm_1 > 0 and rest_1 > 0 and rest_0 > 0
    assert gidm_0 == 0.0 and 0 < gidm_01 < 0.5 * gidm_1


def test_gidm_encoder_takes_gradients_through_encode_tokens():
    _, gidm = parts("vq")
    gidm.train()
    x = torch.rand(2, 3, S, S)
    tok = gidm.tokens(x).requires_grad_(True)
    z, codes, extra = gidm.encode_tokens(gidm.tokens(x), tok)
    (z.sum() + extra["bottleneck_loss"]).backward()
    assert tok.grad is not None and tok.grad.abs().sum() > 0
    assert gidm.bottleneck.frozen_codes is False  # restored after the call


def test_policy_overfits_a_few_demos():
    p = policy("defi")
    l1 = steps(p, 40)  # 0.31 -> 0.013 measured
    assert l1[-1] < 0.25 * l1[0], (l1[0], l1[-1])


def test_bc_overfits_a_few_demos():
    p = policy("bc")
    l1 = steps(p, 150)
    assert l1[-1] < 0.25 * l1[0], (l1[0], l1[-1])


def test_consistency_and_forward_losses_and_staged_unfreeze():
    p = policy("defi", consistency_weight=1.0, forward_weight=0.5)
    obs, text, acts = demos()
    future = obs.roll(1, dims=-1)
    r = p(obs, text, acts, future=future)
    assert r["consistency"] >= 0 and r["forward"] > 0
    r["loss"].backward()
    assert all(q.grad is None for q in p.gfdm.parameters())  # still frozen: forward loss adds no GFDM grad
    p.zero_grad()
    p.set_gfdm_trainable(True)
    p.train()
    assert p.gfdm.training
    p(obs, text, acts, future=future)["loss"].backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.gfdm.parameters())


def test_action_mask_excludes_rows_past_the_end():
    p = policy("bc")
    obs, text, acts = demos()
    mask = torch.ones(len(obs), H, dtype=torch.bool)
    mask[:, 2:] = False
    a = p(obs, text, acts, mask)["action_mse"]
    b = p(obs, text, torch.where(mask[..., None], acts, acts + 100.0), mask)["action_mse"]
    assert torch.allclose(a, b)


def test_checkpoint_round_trip(tmp_path):
    p = policy("defi")
    p.action_mean.fill_(0.5)
    save_checkpoint(tmp_path / "ck", p, p.config, step=3)
    q, cfg, state = load_checkpoint(tmp_path / "ck")
    assert cfg == p.config and state["step"] == 3 and isinstance(q, DeFiPolicy)
    obs, text, _ = demos()
    assert torch.allclose(p.predict(obs, text), q.predict(obs, text))


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match="init='dagger'.*valid: defi"):
        PolicyConfig(init="dagger")
    with pytest.raises(ValueError, match="no future branch"):
        PolicyConfig(init="bc", consistency_weight=1.0)
    with pytest.raises(ValueError, match="gidm_lr_scale=-1"):
        PolicyConfig(gidm_lr_scale=-1)
    gfdm, gidm = parts()
    cfg = PolicyConfig(image_size=S, text_dim=D, gfdm=gfdm.config.to_dict(), gidm=gidm.config.to_dict())
    with pytest.raises(ValueError, match="image sizes differ"):
        DeFiPolicy(cfg, gfdm=gfdm, gidm=GIDM(gidm_tiny(image_size=64)))


# --- the release-shaped parts: diffusion head, Perceiver resampler, proprioception -------------
def sample_error(p, seed=0):
    obs, text, acts = demos()
    g = torch.Generator().manual_seed(seed)
    return float((p.predict(obs, text, generator=g) - acts).abs().mean())


def test_diffusion_head_overfits_a_few_demos():
    """Sampled chunks (DDIM, 10 steps) land closer to the demos' than predicting each step's mean
    action would, after training on the noise-prediction loss alone."""
    torch.manual_seed(0)
    p = policy("defi", head="diffusion", diffusion_train_steps=50, diffusion_infer_steps=10)
    _, _, acts = demos()
    p.action_mean.copy_(acts.mean((0, 1)))
    p.action_std.copy_(acts.std((0, 1)))
    mean_error = float((acts - acts.mean(0, keepdim=True)).abs().mean())
    before = sample_error(p)
    steps(p, 300)
    after = sample_error(p)
    assert after < 0.1 * before and after < 0.75 * mean_error, (before, after, mean_error)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_diffusion_sampling_is_deterministic_given_the_seed(sampler):
    p = policy("defi", head="diffusion", diffusion_sampler=sampler, diffusion_infer_steps=4)
    obs, text, _ = demos()
    a = p.predict(obs, text, generator=torch.Generator().manual_seed(7))
    b = p.predict(obs, text, generator=torch.Generator().manual_seed(7))
    c = p.predict(obs, text, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_resampler_output_shape_does_not_depend_on_the_feature_map_size():
    from defi.training.policy.modeling_policy import PerceiverResampler

    r = PerceiverResampler([16, 32], dim=24, num_queries=5)
    for side in (4, 7, 16):
        feats = [torch.randn(2, 3, 16, side, side), torch.randn(2, 3, 32, 2 * side, side)]
        assert r(feats).shape == (2, 5, 24)


@pytest.mark.parametrize("head", ["mlp", "transformer", "diffusion"])
def test_resampled_latent_tokens_and_state_feed_every_head(head):
    p = policy("defi", head=head, resampler_queries=6, latent_tokens=True, state_dim=3, diffusion_infer_steps=2)
    obs, text, acts = demos()
    state = torch.randn(len(obs), 3)
    n_latent = p.gidm.config.num_action_tokens
    assert p.features(obs, text, state)["cond"].shape == (len(obs), n_latent + 6 + 2, 64)
    r = p(obs, text, acts, state=state)
    r["loss"].backward()
    for name in ("resampler.", "state.", "latent.", "head."):
        grads = [q.grad for n, q in p.named_parameters() if n.startswith(name)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    with pytest.raises(ValueError, match="takes proprioception"):
        p.predict(obs, text)


def test_proprio_policy_round_trips_through_a_checkpoint(tmp_path):
    p = policy("defi", state_dim=3)
    p.state_mean.fill_(0.25)
    p.state_std.fill_(2.0)
    save_checkpoint(tmp_path / "ck", p, p.config, step=1)
    q, cfg, _ = load_checkpoint(tmp_path / "ck")
    assert cfg.state_dim == 3 and torch.equal(q.state_mean, p.state_mean) and torch.equal(q.state_std, p.state_std)
    obs, text, _ = demos()
    state = torch.randn(len(obs), 3)
    assert torch.allclose(p.predict(obs, text, state), q.predict(obs, text, state))
    assert not torch.allclose(q.predict(obs, text, state), q.predict(obs, text, state + 1.0))


def test_bad_head_configs_name_the_value():
    with pytest.raises(ValueError, match="diffusion_infer_steps=0: a diffusion head needs >= 1"):
        PolicyConfig(head="diffusion", diffusion_infer_steps=0)
    with pytest.raises(ValueError, match="diffusion_sampler='euler'.*valid: ddim, ddpm"):
        PolicyConfig(diffusion_sampler="euler")
    with pytest.raises(ValueError, match="preset='huge'.*valid: release"):
        PolicyConfig(preset="huge")
    with pytest.raises(ValueError, match="init='bc' has no GFDM features"):
        PolicyConfig(init="bc", resampler_queries=4)
