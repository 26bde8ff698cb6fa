"""GFDM model: config validation, the policy-facing interface (extract_features shapes, with and
without gradients, null text), the checkpoint round trip and the type refusal, overfitting a few
generated clips (changed-pixel error below copying o_t), the svd shape (slow)."""

from __future__ import annotations

import pytest
import torch

from defi.training.checkpoint import CheckpointError, load_model, save_checkpoint
from defi.training.gfdm.modeling_gfdm import GFDM, GFDMFeatures, changed_mask
from defi.training.gfdm import GFDMConfig, gfdm_config, gfdm_svd, gfdm_tiny
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny


def small(**kw) -> GFDMConfig:
    """A tinier tiny for tests: 32 px, 4-px blocks (8x8 grid), 2 levels."""
    base = dict(
        image_size=32,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        text_dim=16,
    )
    return gfdm_tiny(**{**base, **kw})


def test_config_validates_and_names_bad_values():
    with pytest.raises(ValueError) as e:
        GFDMConfig(objective="magic", image_size=60, lang_dropout=2.0)
    msg = str(e.value)
    assert "objective='magic'" in msg and "diffusion, regression" in msg
    assert "image_size=60" in msg and "lang_dropout=2.0" in msg
    with pytest.raises(ValueError, match="unknown GFDM preset 'huge'; valid: tiny, svd"):
        gfdm_config("huge")
    with pytest.raises(ValueError, match="context_frames"):
        gfdm_svd(context_frames=2)
    assert GFDMConfig.from_json(gfdm_tiny().to_json()) == gfdm_tiny()


@pytest.mark.parametrize("objective", ["regression", "diffusion"])
def test_extract_features_shapes_and_gradients(objective):
    torch.manual_seed(0)
    cfg = small(objective=objective, context_frames=2)
    model = GFDM(cfg).eval()
    obs = torch.rand(3, 6, 32, 32)
    text = torch.randn(3, cfg.text_dim)
    with torch.no_grad():
        out = model.extract_features(obs, text, num_steps=2, generator=torch.Generator().manual_seed(1))
    assert isinstance(out, GFDMFeatures)
    assert out.prediction.shape == (3, 1, 3, 32, 32)
    assert 0 <= float(out.prediction.min()) and float(out.prediction.max()) <= 1
    assert [f.shape[2] for f in out.features] == model.feature_channels == [32, 16]
    assert [tuple(f.shape[3:]) for f in out.features] == [(s, s) for s in cfg.feature_sizes]
    assert all(f.shape[:2] == (3, 1) for f in out.features)
    # null text differs from a real instruction, and the call is differentiable
    with torch.no_grad():
        null = model.extract_features(obs, None, num_steps=2, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(null.features[0], out.features[0])
    obs.requires_grad_(True)
    feats = model.extract_features(obs, text, num_steps=1)
    sum(f.sum() for f in feats.features).backward()
    assert obs.grad is not None and float(obs.grad.abs().sum()) > 0
    assert model.text_proj.weight.grad is not None


def test_checkpoint_round_trip_and_type_refusal(tmp_path):
    torch.manual_seed(0)
    cfg = small()
    model = GFDM(cfg)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000001", model, cfg, step=1)
    loaded, loaded_cfg, _ = load_model(tmp_path / "run", expect="gfdm")
    assert loaded_cfg == cfg
    obs, text = torch.rand(2, 3, 32, 32), torch.randn(2, cfg.text_dim)
    with torch.no_grad():
        a = model.eval().extract_features(obs, text).prediction
        b = loaded.extract_features(obs, text).prediction
    assert torch.equal(a, b)
    gcfg = gidm_tiny(image_size=32)
    save_checkpoint(tmp_path / "gidm", GIDM(gcfg), gcfg)
    with pytest.raises(CheckpointError, match="a 'gidm' checkpoint where a 'gfdm' checkpoint is expected"):
        load_model(tmp_path / "gidm", expect="gfdm")


def square_clips(n: int, size: int = 32, seed: int = 0):
    """o_t: a white square on grey at a random place; o_t+k: the square moved right by 4 px when
    the instruction is 0 ("right"), down by 4 px when it is 1 ("down")."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.full((n, 3, size, size), 0.3)
    fut = obs.clone()
    which = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        x, y = (int(v) for v in torch.randint(4, size - 14, (2,), generator=g))
        obs[i, :, y : y + 6, x : x + 6] = 1.0
        dx, dy = (4, 0) if which[i] == 0 else (0, 4)
        fut[i, :, y + dy : y + dy + 6, x + dx : x + dx + 6] = 1.0
    return obs, fut.unsqueeze(1), which


@pytest.mark.slow  # ~40 s on the shared 2-core box
def test_tiny_overfits_generated_clips_beyond_copying():
    torch.manual_seed(0)
    cfg = small(objective="regression", lang_dropout=0.0)
    model = GFDM(cfg)
    obs, fut, which = square_clips(16)
    text = torch.nn.functional.one_hot(which, cfg.text_dim).float()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        loss = model(obs, fut, text)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.predict(obs, text)
    mask = changed_mask(obs, fut).expand_as(fut)
    err_model = float(((pred - fut) ** 2)[mask].mean())
    err_copy = float(((obs.unsqueeze(1) - fut) ** 2)[mask].mean())
    assert err_model < 0.5 * err_copy, (err_model, err_copy)


@pytest.mark.slow
def test_svd_builds_with_random_weights_and_steps(capsys):
    from defi.training.gfdm.modeling_gfdm import num_parameters

    cfg = gfdm_svd(image_size=64, future_frames=2)  # the released U-Net, reduced inputs: 2 frames at 64 px
    torch.manual_seed(0)
    model = GFDM(cfg)
    n = num_parameters(model.unet)
    print(f"svd U-Net parameters: {n:,}")
    assert n > 1_400_000_000  # SVD img2vid's U-Net is ~1.52 B
    assert "svd U-Net parameters" in capsys.readouterr().out
    obs, fut = torch.rand(1, 3, 64, 64), torch.rand(1, 2, 3, 64, 64)
    params = model.trainable_parameters()
    assert all(not p.requires_grad for p in model.vae.parameters())
    opt = torch.optim.SGD(params, lr=1e-4)
    before = model.text_proj.weight.detach().clone()
    loss = model(obs, fut, torch.randn(1, cfg.text_dim))["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.text_proj.weight)
    with torch.no_grad():
        out = model.extract_features(obs, None, num_steps=1)
    assert out.prediction.shape == (1, 2, 3, 64, 64)
    assert [f.shape[2] for f in out.features] == model.feature_channels
    assert all(f.shape[1] == 2 for f in out.features)


def test_svd_missing_weights_path_is_named(tmp_path):
    missing = tmp_path / "no-svd-here"
    with pytest.raises(FileNotFoundError, match=f"pretrained SVD weights not found: {missing}"):
        GFDM(
            gfdm_svd(
                image_size=64,
                block_out_channels=(32, 32, 32, 32),
                attention_head_dim=8,
                vae_block_out_channels=(32, 32, 32, 32),
                norm_num_groups=32,
                cross_attention_dim=32,
                pretrained_path=str(missing),
            )
        )


def reduced_svd(**kw) -> GFDMConfig:
    """The svd family (spatio-temporal U-Net over SVD-VAE latents) at a CPU-test size."""
    base = dict(
        image_size=64,
        future_frames=2,
        block_out_channels=(32, 32, 32, 32),
        attention_head_dim=8,
        vae_block_out_channels=(32, 32, 32, 32),
        cross_attention_dim=32,
        text_dim=16,
    )
    return gfdm_svd(**{**base, **kw})


@pytest.mark.slow  # ~50 s on the shared box
def test_reduced_svd_steps_and_returns_per_frame_features():
    torch.manual_seed(0)
    cfg = reduced_svd()
    model = GFDM(cfg)
    obs, fut = torch.rand(2, 3, 64, 64), torch.rand(2, 2, 3, 64, 64)
    loss = model(obs, fut, torch.randn(2, cfg.text_dim))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE is frozen
    assert model.unet.conv_in.weight.grad is not None and model.text_proj.weight.grad is not None
    with torch.no_grad():
        out = model.extract_features(obs, None, num_steps=2)
    assert out.prediction.shape == (2, 2, 3, 64, 64)
    assert [tuple(f.shape) for f in out.features] == [
        (2, 2, c, s, s) for c, s in zip(model.feature_channels, cfg.feature_sizes, strict=True)
    ]


def test_svd_loads_weights_from_a_local_diffusers_folder(tmp_path):
    torch.manual_seed(0)
    source = GFDM(reduced_svd())
    source.unet.save_pretrained(tmp_path / "svd" / "unet")
    source.vae.save_pretrained(tmp_path / "svd" / "vae")
    torch.manual_seed(1)
    fresh = GFDM(reduced_svd())
    assert not torch.equal(fresh.unet.conv_in.weight, source.unet.conv_in.weight)
    torch.manual_seed(1)
    loaded = GFDM(reduced_svd(pretrained_path=str(tmp_path / "svd")))
    for a, b in zip(source.unet.state_dict().values(), loaded.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(source.vae.encoder.conv_in.weight, loaded.vae.encoder.conv_in.weight)
