"""Policy training on two processes (gloo on CPU) matches one process on the same global batches:
each rank gets half of every batch, gradients are averaged, rank 0 alone writes checkpoints."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

S, H, A, D, STEPS, B = 32, 4, 4, 16, 3, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _policy():
    from defi.training.gfdm import gfdm_tiny
    from defi.training.gfdm.modeling_gfdm import GFDM
    from defi.training.gidm import gidm_tiny
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.policy import PolicyConfig
    from defi.training.policy.modeling_policy import DeFiPolicy

    torch.manual_seed(0)
    g = GFDM(gfdm_tiny(image_size=S, block_out_channels=(16, 32, 32), cross_attention_dim=32, text_dim=D, norm_num_groups=8))
    i = GIDM(gidm_tiny(image_size=S, model_dim=32))
    cfg = PolicyConfig(horizon=H, action_dim=A, image_size=S, text_dim=D, head_dim=32, gfdm=g.config.to_dict(), gidm=i.config.to_dict())
    return DeFiPolicy(cfg, gfdm=g, gidm=i)


def _batches(part: slice) -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(STEPS):
        b = {
            "obs": torch.rand(B, 3, S, S, generator=gen),
            "text_emb": torch.randn(B, D, generator=gen),
            "action_chunk": torch.randn(B, H, A, generator=gen),
            "action_mask": torch.ones(B, H, dtype=torch.bool),
        }
        out.append({k: v[part] for k, v in b.items()})
    return out


def _train(out: str, part: slice) -> None:
    from defi.training.recipes.policy import TrainConfig, train_policy

    cfg = TrainConfig(steps=STEPS, lr=1e-2, warmup_steps=0, batch_size=B, ckpt_every=STEPS, out_dir=out, device="cpu", progress=False)
    train_policy(_policy(), cfg, _batches(part))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    _train(out, slice(rank * B // 2, (rank + 1) * B // 2))
    dist.destroy_process_group()


@pytest.mark.slow  # two processes building GFDM + GIDM: ~20 s
def test_two_process_policy_training_matches_one_process(tmp_path):
    from defi.training.checkpoint import load_checkpoint

    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    _train(str(tmp_path / "one"), slice(0, B))
    ckpt = f"checkpoints/step-{STEPS:08d}"
    ddp, _, state = load_checkpoint(tmp_path / "ddp" / ckpt)
    one, _, _ = load_checkpoint(tmp_path / "one" / ckpt)
    assert state["extra"]["world_size"] == 2
    start = _policy().state_dict()
    a, b = ddp.state_dict(), one.state_dict()
    trained = [n for n in a if n.startswith(("head.", "project.", "gidm.encoder.")) and not torch.equal(b[n], start[n])]
    assert trained  # the steps trained something

    def gap(x):  # worst parameter difference to the one-process run, relative to how far it moved
        return max(float((x[n] - b[n]).abs().max()) / (float((b[n] - start[n]).abs().max()) + 1e-6) for n in trained)

    # AdamW divides by sqrt(v), so float-level differences in tiny gradients show up at ~1% of a
    # step; training on rank 0's half alone is a different run
    _train(str(tmp_path / "half"), slice(0, B // 2))
    half, _, _ = load_checkpoint(tmp_path / "half" / ckpt)
    assert gap(a) < 0.03 and gap(half.state_dict()) > 0.3, (gap(a), gap(half.state_dict()))
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) >= 1
