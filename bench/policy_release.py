"""The release-shaped DeFI policy (``--model.preset release``) at full model size: build it with the
SVD img2vid GFDM (random weights, no download), print its parameters by part, run one training
step and one closed-loop Meta-World step on this machine, and print the memory it took beside an
estimate of what 256 px training needs on one GPU.

    python bench/policy_release.py                      # 64 px (CPU-sized frames), batch 1
    python bench/policy_release.py --image-size 128 --batch 2 --device cuda

The model is the release's at every size (SVD U-Net 320-640-1280-1280, 16 frames, CLIP ViT-B/32
text width, a diffusion-transformer head over 10-step chunks); only the frames are smaller, so the
parameter counts are the real ones and the step times are not.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Any

GIB = 1024**3


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def build(image_size: int, gidm_preset: str = "keypoint", num_frames: int = 16):
    """(policy, config) of the release preset: SVD GFDM and the GIDM preset at ``image_size``."""
    import torch

    from defi.training.gfdm import gfdm_svd
    from defi.training.gfdm.modeling_gfdm import GFDM
    from defi.training.gidm import gidm_config
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.policy import PRESETS, PolicyConfig
    from defi.training.policy.modeling_policy import DeFiPolicy

    torch.manual_seed(0)
    gfdm = GFDM(gfdm_svd(image_size=image_size, num_frames=num_frames, future_frames=num_frames), load_pretrained=False)
    gidm = GIDM(gidm_config(gidm_preset, image_size=image_size), load_feature_weights=False)
    cfg = PolicyConfig(
        **PRESETS["release"],
        preset="release",
        image_size=image_size,
        text_dim=gfdm.config.text_dim,
        gfdm=gfdm.config.to_dict(),
        gidm=gidm.config.to_dict(),
    )
    return DeFiPolicy(cfg, gfdm=gfdm, gidm=gidm), cfg


def train_step(policy, batch: int, device: str) -> dict[str, float]:
    """One AdamW step on random frames and chunks; seconds and the loss."""
    import torch

    c = policy.config
    policy.to(device).train()
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    obs = torch.rand(batch, 3 * c.context_frames, c.image_size, c.image_size, device=device)
    text = torch.randn(batch, c.text_dim, device=device)
    acts = torch.randn(batch, c.horizon, c.action_dim, device=device)
    t = time.perf_counter()
    out = policy(obs, text, acts)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"train_step_s": time.perf_counter() - t, "loss": float(out["loss"].detach())}


def eval_step(policy, device: str, task: str = "reach-v3") -> dict[str, Any]:
    """Render a Meta-World frame at the policy's size, sample a chunk (seeded), take its first
    action in the env: the per-step path of ``defi eval`` on an in-memory policy."""
    import numpy as np
    import torch

    c = policy.config
    policy.to(device)
    try:
        from defi.training.sim.metaworld_env import MetaWorldEnv

        env = MetaWorldEnv(task, "corner", c.image_size, seed=0)
        obs = env.reset(0)
        frame = obs["image"]
    except ImportError:  # no simulator installed: a random frame, no env step
        env, frame = None, np.random.default_rng(0).integers(0, 255, (c.image_size, c.image_size, 3), np.uint8)
    x = torch.from_numpy(frame.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(device)
    t = time.perf_counter()
    chunk = policy.predict(x, torch.zeros(1, c.text_dim, device=device), generator=torch.Generator(device).manual_seed(0))
    sample_s = time.perf_counter() - t
    stepped = False
    if env is not None:
        env.step(chunk[0, 0].cpu().numpy(), render=False)
        stepped = True
    return {"sample_s": sample_s, "chunk_shape": tuple(chunk.shape), "env_stepped": stepped}


def memory_estimate_gib(counts: dict[str, tuple[int, int]], frozen_bytes: int = 2) -> dict[str, float]:
    """Static training memory: frozen weights at ``frozen_bytes`` per parameter (bf16), trainable
    weights, gradients and AdamW moments at 4 bytes each (16 bytes per trainable parameter).
    Activations are not included (they depend on the frames, batch and attention kernels)."""
    total = sum(n for n, _ in counts.values())
    trainable = sum(t for _, t in counts.values())
    frozen = total - trainable
    return {"frozen_weights": frozen * frozen_bytes / GIB, "trainable_with_adam": trainable * 16 / GIB}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=64, help="frame side in pixels (a multiple of 64; the release trains at 256)")
    ap.add_argument("--frames", type=int, default=16, help="frames the SVD GFDM predicts (the release: 16)")
    ap.add_argument("--gidm", default="keypoint", help="GIDM preset (defi train gidm --model)")
    ap.add_argument("--batch", type=int, default=1, help="items in the training step")
    ap.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    ap.add_argument("--no-eval-step", action="store_true", help="skip the Meta-World step")
    a = ap.parse_args(argv)
    from defi.training.policy.modeling_policy import parameter_counts

    t = time.perf_counter()
    policy, cfg = build(a.image_size, a.gidm, a.frames)
    build_s = time.perf_counter() - t
    counts = parameter_counts(policy)
    print(f"release preset at {a.image_size} px, {a.frames} frames, GIDM {a.gidm}: built in {build_s:.1f} s")
    print(f"{'part':<14}{'parameters':>16}{'trainable':>16}")
    for part, (n, tr) in counts.items():
        print(f"{part:<14}{n:>16,}{tr:>16,}")
    total = sum(n for n, _ in counts.values())
    trainable = sum(tr for _, tr in counts.values())
    print(f"{'total':<14}{total:>16,}{trainable:>16,}")
    res: dict[str, Any] = {"counts": counts, "build_s": build_s, "total": total, "trainable": trainable}
    res.update(train_step(policy, a.batch, a.device))
    print(f"one training step (batch {a.batch}, {a.device}): {res['train_step_s']:.1f} s, loss {res['loss']:.3f}")
    if not a.no_eval_step:
        res.update(eval_step(policy, a.device))
        print(f"one eval step: sampled a {list(res['chunk_shape'])} chunk in {res['sample_s']:.1f} s; env stepped: {res['env_stepped']}")
    res["peak_rss_gib"] = peak_rss_gib()
    est = memory_estimate_gib(counts)
    print(f"peak RSS here: {res['peak_rss_gib']:.1f} GiB")
    print(
        f"static GPU memory for training at any frame size: frozen weights (bf16) {est['frozen_weights']:.1f} GiB + "
        f"trainable weights, grads and AdamW (fp32) {est['trainable_with_adam']:.2f} GiB; activations come on top "
        "(not measured without a GPU: bench/gpu_check.sh prints torch.cuda.max_memory_allocated at 256 px)"
    )
    res["estimate_gib"] = est
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
