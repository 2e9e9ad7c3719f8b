"""FID and KID in clean-fid's "clean" mode with our Inception, seeded KID, counts reported, features cached.

Features come from clean-fid's own pipeline (`get_files_features`: PIL RGB -> uint8 -> PIL bicubic resize of each
float32 channel to 299 -> our `InceptionFeatures`), so they are what `cleanfid.fid.compute_fid(mode="clean")`
would use. FID is clean-fid's `frechet_distance` formula (eval.frechet: the same steps, without the
`sqrtm(..., disp=False)` call SciPy 1.18 removed) on (mean, np.cov) of the features. KID is clean-fid's
`kernel_distance`, which draws its subsets from numpy's global RNG with no seed: we seed it and restore the
caller's RNG state afterwards, so the same seed gives the same KID. In-memory image tensors in [0, 1] are first
quantised to uint8 (round), exactly as saving them to PNG would, then take the same path.

Features are cached on disk by (the content hashes of the images, the Inception identity), so a reference set is
embedded once across methods and runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.images import check_images, list_image_files
from eval.inception import load_inception
from eval.store import atomic_path, atomic_write_text, cache_dir, drop_cache_entry, hash_array, hash_obj, sha256_file

ImageSet = str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray | torch.Tensor
"""A folder, a list of image files, an N x D feature array (used as is), or an N x 3 x H x W [0,1] tensor."""


def _features_cache_file(key: str) -> Path:
    return cache_dir() / "features" / key[:2] / f"{key}.npy"


def _tensor_features(images: torch.Tensor, model: Any, batch_size: int, device: str) -> np.ndarray:
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    images = check_images(images, "images", "inception features")
    u8 = (images.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    feats = []
    for i in range(0, len(u8), batch_size):
        # contiguous N x 3 x 299 x 299 like clean-fid's DataLoader batches (memory layout changes conv rounding)
        batch = np.ascontiguousarray(np.stack([resize(img) for img in u8[i:i + batch_size]]).transpose(0, 3, 1, 2))
        with torch.no_grad():
            feats.append(model(torch.from_numpy(batch).to(device)).cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def inception_features(images: ImageSet, *, preset: str = "paper", device: str = "cpu", batch_size: int = 32,
                       cache: bool = True, verbose: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """N x D Inception features of an image set, plus a description (n, encoder info, cache hit)."""
    if isinstance(images, np.ndarray):
        if images.ndim != 2:
            raise ValueError(f"a feature array must be N x D, got shape {images.shape}")
        return images.astype(np.float64), {"n": len(images), "source": "precomputed features"}
    model = load_inception(preset, device)
    if isinstance(images, torch.Tensor):
        content = hash_array((images.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8))
        files = None
    else:
        files = list_image_files(images)
        content = hash_obj([sha256_file(f) for f in files])
    key = hash_obj("inception-features", "clean", model.info.identity(), content)
    path = _features_cache_file(key)
    desc = {"n": None, "encoder": model.info.as_dict(), "cache_hit": False, "mode": "clean"}
    sums = path.with_suffix(".sha256")
    if cache and path.exists():
        if sums.exists() and sums.read_text().strip() == sha256_file(path):
            feats = np.load(path)
            desc.update(n=len(feats), cache_hit=True)
            return feats, desc
        drop_cache_entry(path, "its content does not match its recorded sha256")
    if files is None:
        feats = _tensor_features(images, model, batch_size, device)
    else:
        from cleanfid.fid import get_files_features

        feats = get_files_features([str(f) for f in files], model=model, num_workers=0, batch_size=batch_size,
                                   device=torch.device(device), mode="clean", verbose=verbose).astype(np.float64)
    if cache:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, feats)
        atomic_write_text(sums, sha256_file(path) + "\n")
    desc["n"] = len(feats)
    return feats, desc


def fid_from_features(gen: np.ndarray, ref: np.ndarray) -> float:
    """clean-fid's FID of two feature sets: frechet_distance(mean, np.cov) (the numbers clean-fid reports)."""
    from eval.frechet import frechet_distance

    if len(gen) < 2 or len(ref) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got n_gen={len(gen)}, n_ref={len(ref)}")
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature sizes differ: {gen.shape[1]} vs {ref.shape[1]} (features of different encoders?)")
    mu1, sigma1 = np.mean(gen, axis=0), np.cov(gen, rowvar=False)
    mu2, sigma2 = np.mean(ref, axis=0), np.cov(ref, rowvar=False)
    return frechet_distance(mu1, sigma1, mu2, sigma2)  # n < D: singular covariances; results carry a note


def kid_from_features(gen: np.ndarray, ref: np.ndarray, *, seed: int = 0, num_subsets: int = 100,
                      max_subset_size: int = 1000) -> float:
    """clean-fid's KID (polynomial-kernel unbiased MMD^2 over random subsets) with numpy's RNG seeded by `seed`."""
    from cleanfid.fid import kernel_distance

    if min(len(gen), len(ref), max_subset_size) < 2:
        raise ValueError(f"KID needs subsets of at least 2 images, got n_gen={len(gen)}, n_ref={len(ref)}")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(gen, ref, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def distribution_result(metric: str, value: float, gen_desc: dict, ref_desc: dict, n_gen: int, n_ref: int,
                        **extra: Any) -> dict[str, Any]:
    """The row a distribution metric returns: value, counts, mode, and which Inception weights produced it."""
    enc = gen_desc.get("encoder") or ref_desc.get("encoder") or {}
    out = {"metric": metric, "value": value, "n_gen": n_gen, "n_ref": n_ref, "mode": "clean",
           "weights": enc.get("weights", "unknown"), "encoder": enc.get("arch"), "encoder_source": enc.get("source")}
    if n_gen < 2048 or n_ref < 2048:
        out["note"] = "fewer than 2048 images: the covariance is rank-deficient; compare only at equal n"
    out.update(extra)
    return out
