"""Does a latent action carry the action? Linear probes where true actions exist.

Used by ``bench/gidm_quality.py`` and the demo report. No Ray here.

``probe_pairs(root, select, k, size)`` reads every ``stride``-th pair (o_t, o_t+k) of the selected
clips that have actions and proprioception (units: frames of the encoded clip), with two targets:
``cmd`` the commanded translation (sum of action dx, dy, dz over t..t+k-1) and ``disp`` the
end-effector displacement (proprio xyz at t+k minus at t). ``probe(pairs, enc, num_codes)`` fits
closed-form ridge probes on half of the episodes (split by episode, so a probe never sees the test
episode) and reports R^2 (mean over x, y, z) on the other half for the latent and for controls of
the same size: ``pca_diff`` (PCA of o_t+k - o_t) and ``pca_obs`` (PCA of o_t alone: what the scene
predicts without any transition); ``*_wide`` are the same controls with 64 dims; ``obs+latent``
(``pca_obs`` and the latent side by side) against ``obs+diff`` (``pca_obs`` and ``pca_diff``) says
what the latent adds to what the scene already predicts.
"""

from __future__ import annotations

import math

import numpy as np


def probe_pairs(root: str, select: str, k: int, size: int, stride: int = 1) -> dict[str, np.ndarray]:
    """Pairs (t, t+k) of the selected clips with actions and proprio: frames [N, 3, size, size]
    float32 in [0, 1], targets ``cmd``/``disp`` [N, 3], ``episode`` (source id), ``task`` (language)
    and ``pos_next`` [N, 3] (end-effector xyz at t+k, proprio units: metres).
    Raises ValueError when no selected clip has actions, proprio and more than k frames."""
    from defi.schemas.corpus import Corpus
    from defi.schemas.selection import resolve_selection
    from defi.schemas.shards import ShardReader
    from defi.training.data import decode_frames, to_chw_float

    corpus = Corpus.open(root)
    sel = resolve_selection(corpus, select)
    urls = [corpus.shard_url(s) for s in sorted(set(sel.column("shard").to_pylist()))]
    obs, nxt, cmd, disp, episode, task, pos = [], [], [], [], [], [], []
    for sample in ShardReader(urls, keys=sel.column("key").to_pylist()):
        n = int(sample.meta.num_frames)
        if sample.actions is None or sample.proprio is None or n <= k:
            continue
        frames = to_chw_float(decode_frames(sample.mp4, None, (size, size)))
        ts = np.arange(0, n - k, stride)
        obs.append(frames[ts])
        nxt.append(frames[ts + k])
        cmd.append(np.stack([sample.actions[t : t + k, :3].sum(0) for t in ts]))
        disp.append(sample.proprio[ts + k, :3] - sample.proprio[ts, :3])
        pos.append(sample.proprio[ts + k, :3])
        episode += [sample.meta.source_id] * len(ts)  # one source per episode
        task += [sample.lang or ""] * len(ts)
    if not obs:
        raise ValueError("no selected clip has actions, proprio and more than k frames")
    return {
        "obs": np.concatenate(obs),
        "next_obs": np.concatenate(nxt),
        "cmd": np.concatenate(cmd).astype(np.float64),
        "disp": np.concatenate(disp).astype(np.float64),
        "episode": np.array(episode),
        "task": np.array(task),
        "pos_next": np.concatenate(pos).astype(np.float64),
    }


def ridge_r2(x_tr, y_tr, x_te, y_te, lam: float = 1.0, per_dim: bool = False):
    """Closed-form ridge on standardised features (bias unpenalised); R^2 on the test split,
    averaged uniformly over the target dims (``per_dim``: the list of each dim's R^2)."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    xa, xb = (x_tr - mu) / sd, (x_te - mu) / sd
    ym = y_tr.mean(0)
    w = np.linalg.solve(xa.T @ xa + lam * np.eye(xa.shape[1]), xa.T @ (y_tr - ym))
    pred = xb @ w + ym
    ss_res = ((y_te - pred) ** 2).sum(0)
    ss_tot = ((y_te - y_te.mean(0)) ** 2).sum(0)
    r2 = 1 - ss_res / ss_tot
    return [float(v) for v in r2] if per_dim else float(np.mean(r2))


def random_features(x: np.ndarray, fit_rows: np.ndarray, num: int = 1024, seed: int = 0) -> np.ndarray:
    """Random Fourier features of ``x`` [N, D] (standardised on ``fit_rows``): ridge on them is a
    kernel (RBF-like) regression, i.e. a nonlinear probe with the same closed-form fit."""
    rng = np.random.default_rng(seed)
    mu, sd = x[fit_rows].mean(0), x[fit_rows].std(0) + 1e-8
    w = rng.normal(size=(x.shape[1], num)) / math.sqrt(x.shape[1])
    return np.cos(((x - mu) / sd) @ w + rng.uniform(0, 2 * math.pi, num))


def pca_fit(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal directions (rows) of ``x`` [N, D]."""
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    return mu, vt[:dims]


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies) of two labelings."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / (pa[:, None] * pb[None, :])[nz])).sum()
    h = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()  # noqa: E731
    denom = 0.5 * (h(pa) + h(pb))
    return float(mi / denom) if denom > 0 else 0.0


def encode_all(model, obs: np.ndarray, nxt: np.ndarray, device, batch: int = 256) -> dict[str, np.ndarray]:
    """The model's latent ``z`` [N, Q*W] (and ``codes``) of every pair, and the decoder's o_t+k
    MSE with the pair's own latent vs. another pair's latent (for ΔPSNR)."""
    import torch

    zs, codes, recon = [], [], []
    rng = np.random.default_rng(0)
    model.eval()
    for i in range(0, len(obs), batch):
        o = torch.from_numpy(obs[i : i + batch]).to(device)
        n = torch.from_numpy(nxt[i : i + batch]).to(device)
        with torch.no_grad():
            enc = model.encode(o, n)
        zs.append(enc["z"].flatten(1).cpu().numpy())
        if enc["codes"] is not None:
            codes.append(enc["codes"].cpu().numpy())
        # ΔPSNR: forward decodes with z and with z rolled by one across the batch; the batch is
        # randomly permuted so the neighbour is another clip's transition
        perm = torch.from_numpy(rng.permutation(len(o))).to(device)
        with torch.no_grad():
            out = model(o[perm], n[perm])
        r = float(out["recon_loss"])
        recon.append((r, r + float(out["delta_recon"]), len(o)))
    w = np.array([c for *_, c in recon], np.float64)
    mse_true = float(np.average([r for r, _, _ in recon], weights=w))
    mse_shuf = float(np.average([s for _, s, _ in recon], weights=w))
    return {
        "z": np.concatenate(zs).astype(np.float64),
        "codes": np.concatenate(codes) if codes else None,
        "mse_true": mse_true,
        "mse_shuffled": mse_shuf,
    }


def psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def probe(pairs: dict[str, np.ndarray], enc: dict, num_codes: int, wide: int = 64, nonlinear: bool = False) -> dict:
    """R^2 of ``disp`` and ``cmd`` from the latent and from the controls (see the module doc),
    ΔPSNR, and for VQ/FSQ latents code usage, perplexity and NMI(codes; binned displacement).
    ``nonlinear``: also ``rff_latent``, ``rff_obs``, ``rff_diff``: the same ridge on 1024 random
    Fourier features of the latent and of the two same-size controls (a kernel probe: is the
    information there at all, not only linearly)."""
    episodes = np.unique(pairs["episode"])
    if len(episodes) < 2:
        raise ValueError(f"a probe needs at least 2 episodes to split by episode, got {len(episodes)}")
    rng = np.random.default_rng(0)
    test_eps = set(rng.permutation(episodes)[: len(episodes) // 2])
    te = np.array([e in test_eps for e in pairs["episode"]])
    tr = ~te
    n = len(te)
    diff = (pairs["next_obs"] - pairs["obs"]).reshape(n, -1).astype(np.float64)
    obs = pairs["obs"].reshape(n, -1).astype(np.float64)
    dims = enc["z"].shape[1]
    feats = {"latent": enc["z"]}
    if enc["codes"] is not None:
        codes = enc["codes"].reshape(n, -1)
        feats["onehot"] = np.concatenate([np.eye(num_codes)[codes[:, q]] for q in range(codes.shape[1])], axis=1)
    for name, x in (("pca_diff", diff), ("pca_obs", obs)):
        for suffix, d in (("", dims), ("_wide", wide)):
            mu, comps = pca_fit(x[tr], min(d, int(tr.sum()) - 1))
            feats[name + suffix] = (x - mu) @ comps.T
    # what the latent adds to the scene: o_t's PCA with the latent beside it, vs. with the frame
    # difference's PCA of the same size beside it (the experts act from state, so o_t alone
    # already predicts much of the motion)
    feats["obs+latent"] = np.concatenate([feats["pca_obs"], enc["z"]], axis=1)
    feats["obs+diff"] = np.concatenate([feats["pca_obs"], feats["pca_diff"]], axis=1)
    if nonlinear:
        for name, src in (("rff_latent", "latent"), ("rff_obs", "pca_obs"), ("rff_diff", "pca_diff")):
            feats[name] = random_features(feats[src], tr)
    r2, per_axis = {}, {}
    for target in ("disp", "cmd"):
        y = pairs[target]
        per_axis[target] = {name: ridge_r2(x[tr], y[tr], x[te], y[te], per_dim=True) for name, x in feats.items()}
        r2[target] = {name: float(np.mean(v)) for name, v in per_axis[target].items()}
    # per axis (x, y, z) of the displacement, for the latent and the two same-size controls
    r2_axes = {name: per_axis["disp"][name] for name in ("latent", "pca_diff", "pca_obs")}
    # ceiling of the commanded-action target: the true hand displacement as the feature
    r2["cmd"]["true_disp"] = ridge_r2(pairs["disp"][tr], pairs["cmd"][tr], pairs["disp"][te], pairs["cmd"][te])
    res = {
        "r2": r2,
        "r2_disp_xyz": r2_axes,
        "pairs": n,
        "probe_train_pairs": int(tr.sum()),
        "probe_test_pairs": int(te.sum()),
        "episodes": len(episodes),
        "latent_dims": dims,
        "psnr_true": psnr(enc["mse_true"]),
        "psnr_shuffled": psnr(enc["mse_shuffled"]),
        "delta_psnr": psnr(enc["mse_true"]) - psnr(enc["mse_shuffled"]),
        "psnr_copy": psnr(float(np.mean(diff**2))),
    }
    if enc["codes"] is not None:
        flat = enc["codes"].reshape(n, -1)
        ids = np.unique(flat, axis=0, return_inverse=True)[1].reshape(-1)
        counts = np.bincount(flat.reshape(-1), minlength=num_codes)
        p = counts / counts.sum()
        # displacement binned into terciles per axis -> 27 classes
        d = pairs["disp"]
        bins = np.stack([np.digitize(d[:, j], np.quantile(d[:, j], [1 / 3, 2 / 3])) for j in range(3)], 1)
        res.update(
            code_usage=float((counts > 0).mean()),
            perplexity=float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())),
            nmi_codes_vs_binned_disp=nmi(ids, bins @ np.array([9, 3, 1])),
        )
    return res
