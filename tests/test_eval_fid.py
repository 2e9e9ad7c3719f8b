"""FID and KID: equality with clean-fid (same features, same pipeline), seeded KID, feature caching, input handling.
Tiny Inception (random, channels / 16) so everything runs offline on a CPU in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.encoders import clear_encoder_cache
from eval.fid import fid_from_features, inception_features, kid_from_features
from eval.inception import load_inception
from eval.metrics import compute_fid, compute_kid


def _clean_fid_frechet_runs() -> bool:
    from cleanfid.fid import frechet_distance

    try:
        frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))
    except TypeError:  # SciPy >= 1.18: clean-fid 0.1.35 passes sqrtm(..., disp=False), which no longer exists
        return False
    return True


#: comparisons against clean-fid's own FID need its frechet_distance to run; tests/test_eval_frechet.py checks the
#: project's FID on SciPy 1.18's signature against clean-fid values recorded on an earlier SciPy
needs_clean_fid_fid = pytest.mark.skipif(not _clean_fid_frechet_runs(),
                                         reason="clean-fid's frechet_distance does not run on this SciPy")


def _features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + shift


@needs_clean_fid_fid
def test_fid_equals_clean_fid_frechet_distance_on_same_features():
    from cleanfid.fid import fid_from_feats, frechet_distance

    a, b = _features(80, 24, 0.0, 0), _features(60, 24, 0.5, 1)
    expected = frechet_distance(np.mean(a, axis=0), np.cov(a, rowvar=False), np.mean(b, axis=0),
                                np.cov(b, rowvar=False))
    assert fid_from_features(a, b) == pytest.approx(expected, abs=1e-6)
    assert fid_from_features(a, b) == pytest.approx(fid_from_feats(a, b), abs=1e-6)
    row = compute_fid(a, b, preset="tiny")  # N x D arrays are used as features
    assert row["value"] == pytest.approx(expected, abs=1e-6)
    assert (row["n_gen"], row["n_ref"], row["metric"]) == (80, 60, "fid")
    assert abs(fid_from_features(a, a)) < 1e-6


def test_kid_is_seeded_and_leaves_the_global_rng_alone():
    from cleanfid.fid import kernel_distance

    a, b = _features(50, 16, 0.0, 2), _features(40, 16, 0.3, 3)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    k1 = kid_from_features(a, b, seed=0, num_subsets=20, max_subset_size=30)
    k2 = kid_from_features(a, b, seed=0, num_subsets=20, max_subset_size=30)
    k3 = kid_from_features(a, b, seed=1, num_subsets=20, max_subset_size=30)
    assert k1 == k2 and k1 != k3
    assert np.array_equal(np.random.get_state()[1], before)  # caller's RNG untouched
    np.random.seed(0)
    assert k1 == kernel_distance(a, b, num_subsets=20, max_subset_size=30)  # clean-fid's estimator, seeded
    row = compute_kid(a, b, seed=0, preset="tiny", num_subsets=20, max_subset_size=30)
    assert row["value"] == k1 and row["seed"] == 0 and row["subset_size"] == 30
    assert (row["n_gen"], row["n_ref"]) == (50, 40)


def _write_set(folder: Path, n: int, seed: int, bright: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 6, 8, generator=g)
    images = (torch.nn.functional.interpolate(small, size=(48, 64), mode="bilinear") + bright).clamp(0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        u8 = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(u8).save(folder / f"{i:03d}.png")
    return images


@needs_clean_fid_fid
def test_folder_fid_equals_clean_fid_compute_fid_with_our_extractor(tmp_path):
    from cleanfid import fid as cleanfid

    a, b = tmp_path / "a", tmp_path / "b"
    _write_set(a, 6, 0)
    _write_set(b, 5, 1, bright=0.3)
    ours = compute_fid(a, b, preset="tiny", cache=False)["value"]
    theirs = cleanfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=load_inception("tiny"),
                                  device=torch.device("cpu"), num_workers=0, verbose=False)
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert ours > 1.0
    assert abs(compute_fid(a, a, preset="tiny", cache=False)["value"]) < 1e-4


def test_tensor_sets_equal_their_png_round_trip_and_features_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_CACHE", str(tmp_path / "cache"))
    images = _write_set(tmp_path / "a", 4, 2)
    from_files, d1 = inception_features(tmp_path / "a", preset="tiny")
    from_tensor, _ = inception_features(images, preset="tiny")
    assert np.array_equal(from_files, from_tensor)  # tensors are quantised to uint8 exactly like a saved PNG
    again, d2 = inception_features(tmp_path / "a", preset="tiny")
    assert not d1["cache_hit"] and d2["cache_hit"] and np.array_equal(again, from_files)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "a" / "000.png")  # content changed
    changed, d3 = inception_features(tmp_path / "a", preset="tiny")
    assert not d3["cache_hit"] and not np.array_equal(changed, from_files)
    assert from_files.shape == (4, load_inception("tiny").num_features)


def test_fid_input_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        compute_fid(tmp_path / "empty", tmp_path / "empty", preset="tiny")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception_features(torch.full((2, 3, 32, 32), 2.0), preset="tiny", cache=False)
    with pytest.raises(ValueError, match="299"):
        load_inception("tiny")(torch.zeros(1, 3, 224, 224))


def test_paper_inception_without_asset_offline_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_ASSETS", str(tmp_path / "no-assets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_encoder_cache()
    with pytest.raises(FileNotFoundError, match="assets fetch"):
        load_inception("paper")
