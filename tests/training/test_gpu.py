"""On a CUDA device (skipped without one; ``bench/gpu_check.sh`` runs them with ``-m gpu``): the
policy's parts give the CPU's answer on the GPU, and a bf16-autocast training step of the
release-shaped parts (Perceiver resampler, diffusion head) runs and moves them."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

S, H, A, D = 32, 4, 4, 16


def _policy(**kw):
    from defi.training.gfdm import gfdm_tiny
    from defi.training.gfdm.modeling_gfdm import GFDM
    from defi.training.gidm import gidm_tiny
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.policy import PolicyConfig
    from defi.training.policy.modeling_policy import DeFiPolicy

    torch.manual_seed(0)
    g = GFDM(gfdm_tiny(image_size=S, block_out_channels=(16, 32, 32), cross_attention_dim=32, text_dim=D, norm_num_groups=8))
    i = GIDM(gidm_tiny(image_size=S, model_dim=32))
    cfg = PolicyConfig(
        horizon=H, action_dim=A, image_size=S, text_dim=D, head_dim=64, gfdm=g.config.to_dict(), gidm=i.config.to_dict(), **kw
    )
    return DeFiPolicy(cfg, gfdm=g, gidm=i)


def test_policy_gives_the_cpu_answer_on_the_gpu():
    p = _policy(resampler_queries=4, latent_tokens=True)
    obs, text = torch.rand(3, 3, S, S), torch.randn(3, D)
    cpu = p.predict(obs, text)
    gpu = p.to("cuda").predict(obs.cuda(), text.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)


def test_bf16_training_step_of_the_release_parts_on_the_gpu():
    p = _policy(head="diffusion", resampler_queries=4, latent_tokens=True, diffusion_infer_steps=2).cuda().train()
    before = {n: t.detach().clone() for n, t in p.named_parameters() if n.startswith(("head.", "resampler."))}
    opt = torch.optim.AdamW(p.trainable_parameters(), lr=1e-3)
    obs, text, acts = torch.rand(4, 3, S, S, device="cuda"), torch.randn(4, D, device="cuda"), torch.randn(4, H, A, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = p(obs, text, acts)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[n], t) for n, t in p.named_parameters() if n in before and n.endswith("weight"))
    chunk = p.predict(obs, text, generator=torch.Generator("cuda").manual_seed(0))
    assert chunk.shape == (4, H, A) and torch.isfinite(chunk).all()
