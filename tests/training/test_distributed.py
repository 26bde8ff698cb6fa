"""Gradient averaging and broadcasts over a real two-process gloo group."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from defi.training.distributed import broadcast_module, sync_gradients


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different init per rank: broadcast must make them equal
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    broadcast_module(model)
    x = torch.full((5, 3), float(rank + 1))  # different data per rank
    model(x).sum().backward()
    local = [p.grad.clone() for p in model.parameters()]
    sync_gradients(list(model.parameters()))
    torch.save(
        {
            "local": local,
            "synced": [p.grad.clone() for p in model.parameters()],
            "params": [p.detach().clone() for p in model.parameters()],
        },
        os.path.join(out_dir, f"r{rank}.pt"),
    )
    dist.destroy_process_group()


def test_gradients_are_averaged_and_replicas_equal(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{i}.pt", weights_only=True) for i in range(2))
    for a, b in zip(r0["params"], r1["params"], strict=False):
        assert torch.equal(a, b)
    # the ranks saw different data (weight gradients differ; bias gradients here do not depend on x)
    assert any(not torch.allclose(l0, l1) for l0, l1 in zip(r0["local"], r1["local"], strict=False))
    for l0, l1, s0, s1 in zip(r0["local"], r1["local"], r0["synced"], r1["synced"], strict=False):
        assert torch.allclose(s0, (l0 + l1) / 2) and torch.equal(s0, s1)
