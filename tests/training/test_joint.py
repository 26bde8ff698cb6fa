"""The entangled model (GFDM + projection + GIDM, one summed loss): the inverse loss reaches the
GFDM through its prediction, the forward loss reaches the GFDM only; the summed loss trains every
part and falls on a fixed batch; a checkpoint round-trips through the registry and a policy built
from it holds its weights."""

import pytest
import torch

from defi.training.checkpoint import load_model, save_checkpoint
from defi.training.gfdm import gfdm_tiny
from defi.training.gidm import gidm_keypoint, gidm_tiny
from defi.training.joint import JointConfig
from defi.training.joint.modeling_joint import JointModel
from defi.training.policy import PolicyConfig
from defi.training.policy.modeling_policy import DeFiPolicy

S, D = 32, 16


def joint(gidm="tiny", objective="regression", **kw):
    torch.manual_seed(0)
    g = gfdm_tiny(image_size=S, block_out_channels=(16, 32, 32), cross_attention_dim=32, text_dim=D, norm_num_groups=8, objective=objective)
    if gidm == "tiny":
        i = gidm_tiny(image_size=S, model_dim=32)
    else:  # the ablation's GIDM: keypoint encoder, 4-px patches, changed-patch weighting
        i = gidm_keypoint(image_size=S, model_dim=32, keypoints=8, patch_size=4, changed_weight=30.0)
    return JointModel(JointConfig(gfdm=g.to_dict(), gidm=i.to_dict(), **kw))


def batch(n=4, seed=1):
    """o_t with a bright square, o_t+k with the square moved: a change both losses can see."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.full((n, 3, S, S), 0.2)
    fut = torch.full((n, 1, 3, S, S), 0.2)
    for k in range(n):
        x, y = torch.randint(4, S - 12, (2,), generator=g).tolist()
        obs[k, :, y : y + 6, x : x + 6] = 0.9
        fut[k, 0, :, y + 3 : y + 9, x + 2 : x + 8] = 0.9
    return obs, fut, torch.randn(n, D, generator=g)


def grad_mass(module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("gidm", ["tiny", "keypoint"])
def test_the_inverse_loss_reaches_the_gfdm_and_the_gidm(gidm):
    m = joint(gidm, forward_weight=0.0)
    m(*batch())["loss"].backward()
    assert grad_mass(m.gfdm.unet) > 0  # through the predicted frame the GIDM encodes
    assert grad_mass(m.project.out) > 0
    encoder = m.gidm.keypoint_encoder if gidm == "keypoint" else m.gidm.encoder
    assert grad_mass(encoder) > 0 and grad_mass(m.gidm.head) > 0  # (the decoder's output layer starts at zero)


def test_the_forward_loss_reaches_the_gfdm_only():
    m = joint(inverse_weight=0.0)
    m(*batch())["loss"].backward()
    assert grad_mass(m.gfdm.unet) > 0
    assert grad_mass(m.gidm) == 0 and grad_mass(m.project) == 0


@pytest.mark.parametrize("objective", ["regression", "diffusion"])
def test_the_summed_loss_falls_and_trains_every_part(objective):
    m = joint("keypoint", objective=objective)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
    obs, fut, text = batch()
    torch.manual_seed(0)
    losses = []
    for _ in range(25):
        r = m(obs, fut, text)
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        losses.append((float(r["forward_loss"]), float(r["inverse_loss"])))
    fwd0, inv0 = losses[0]
    fwd1, inv1 = (sum(x) / 5 for x in zip(*losses[-5:], strict=True))
    assert inv1 < 0.8 * inv0
    if objective == "regression":  # a diffusion loss at random noise levels is too noisy to compare in 25 steps
        assert fwd1 < 0.8 * fwd0
    after = m.state_dict()
    for part in ("gfdm.unet.", "project.out.", "gidm.keypoint_encoder.", "gidm.decoder."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part


def test_a_joint_checkpoint_round_trips_and_a_policy_takes_its_parts(tmp_path):
    m = joint()
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000003", m, m.config, step=3)
    loaded, cfg, state = load_model(tmp_path / "run", expect="joint")
    assert cfg == m.config and state["step"] == 3
    obs, fut, text = batch()
    m.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(obs, fut, text)["loss"], m(obs, fut, text)["loss"])
    pc = PolicyConfig(init="entangled", horizon=4, action_dim=4, image_size=S, text_dim=D, gfdm=cfg.gfdm, gidm=cfg.gidm)
    policy = DeFiPolicy(pc, gfdm=loaded.gfdm, gidm=loaded.gidm)
    policy.project.load_state_dict(loaded.project.state_dict())
    for name in ("gfdm", "gidm", "project"):
        mine, theirs = getattr(policy, name).state_dict(), getattr(m, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    with pytest.raises(Exception, match="joint"):
        load_model(tmp_path / "run", expect="gfdm")


def test_bad_joint_configs_name_the_problem():
    g = gfdm_tiny(image_size=S).to_dict()
    with pytest.raises(ValueError, match="image_size"):
        JointConfig(gfdm=g, gidm=gidm_tiny(image_size=64).to_dict())
    with pytest.raises(ValueError, match="nothing would train"):
        JointConfig(gfdm=g, gidm=gidm_tiny(image_size=S).to_dict(), forward_weight=0.0, inverse_weight=0.0)
