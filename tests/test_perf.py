"""`perf`: every mode a method declares is a row, latency from torch.utils.benchmark, network time counted on the
declared networks only (each once when nested), overhead ratio >= 1."""

from __future__ import annotations

import time

import pytest
import torch

import methods
from eval.harness import perf
from eval.harness.perf import perf_table
from eval.timing import bench, count_network_calls


class _Sleep(torch.nn.Module):
    def __init__(self, seconds: float, inner: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.seconds, self.inner = seconds, inner

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x) if self.inner is not None else x


def test_network_time_counts_nested_calls_once():
    inner = _Sleep(0.02)
    outer = _Sleep(0.02, inner)
    with count_network_calls({"outer": outer, "inner": inner}) as census:
        outer(torch.zeros(1))
        inner(torch.zeros(1))
    assert census["outer"].calls == 1 and census["inner"].calls == 2
    assert census["outer"].seconds >= 0.04 and census["inner"].seconds >= 0.04
    # outer (0.04 s, with inner inside it) + inner alone (0.02 s): 0.06 s, not the 0.08 s of the two rows
    assert 0.06 <= census.seconds < census["outer"].seconds + census["inner"].seconds
    assert not outer._forward_hooks and not inner._forward_pre_hooks  # hooks removed on exit


def test_bench_uses_blocked_autorange_with_at_least_repeats_blocks():
    stats = bench(lambda: time.sleep(0.005), warmup=1, repeats=4)
    assert stats["repeats"] >= 4 and stats["calls_per_repeat"] >= 1
    assert 0.005 <= stats["latency_median_s"] < 0.05 and stats["latency_iqr_s"] >= 0
    fast = bench(lambda: None, warmup=0, repeats=3)
    assert fast["calls_per_repeat"] > 1  # a fast call is timed in blocks, so the timer's overhead is negligible


def test_methods_declare_their_perf_modes():
    modes = {name: list(methods.get(name).perf_modes()) for name in methods.list()}
    assert modes["diffuseit"] == ["text", "image"]
    assert modes["pix2pix-turbo"] == ["deterministic", "stochastic"]
    assert modes["pix2pix-zero"] == ["real", "synthetic"]
    assert modes["cyclegan-turbo"] == ["a2b", "b2a"]
    assert modes["sdedit"] == ["default"]
    text, image = methods.get("diffuseit").perf_modes().values()
    assert text.input(64, 2).reference is None and image.input(64, 2).reference is not None
    b2a = methods.get("cyclegan-turbo").perf_modes()["b2a"]
    assert b2a.input(64, 1).direction == "b2a"


def test_declared_networks_are_networks_only():
    """Hooks sit on the networks, not on the processing around them: pix2pix-zero's noise regularizer (no network)
    is overhead; DiffuseIT's DINO row is the ViT trunk, not the resize/normalise/similarity wrapper."""
    from methods.diffuseit.losses import DinoTrunk

    p2p0 = methods.create("pix2pix-zero", preset="tiny").networks()
    assert "noise_regularizer" not in p2p0 and {"unet", "unet.backward", "vae.encoder"} <= set(p2p0)
    dit = methods.create("diffuseit", preset="tiny").networks()
    assert isinstance(dit["dino"], DinoTrunk)
    assert all(type(m).__name__ != "ClipViews" for k, m in dit.items() if k.endswith(".image"))


@pytest.mark.slow
def test_perf_has_a_row_per_mode_with_network_time_below_total(tmp_path):
    df = perf(["diffuseit", "pix2pix-turbo", "identity"], registry=methods, warmup=0, repeats=1, out=tmp_path,
              overrides={"diffuseit": {"skip_timesteps": 8}})
    rows = {(r["method"].split("[")[0], r["mode"]): r for r in df.to_dict("records")}
    assert set(rows) == {("diffuseit", "text"), ("diffuseit", "image"), ("pix2pix-turbo", "deterministic"),
                         ("pix2pix-turbo", "stochastic"), ("identity", "default")}
    for (name, _), r in rows.items():
        assert r["latency_median_s"] > 0 and r["latency_iqr_s"] >= 0 and r["repeats"] >= 1
        if name != "identity":
            assert 0 < r["network_time_s"] < r["hooked_time_s"] and r["overhead"] >= 1
    text, image = rows["diffuseit", "text"], rows["diffuseit", "image"]
    assert "clip[" in text["network_calls"] and "dino" in image["network_calls"]
    assert (tmp_path / "perf" / "perf.csv").is_file()
    table = perf_table(df)
    assert "stochastic" in table and "network_time_s" in table


def test_encoders_are_built_once_and_shared_by_metrics_and_methods(monkeypatch):
    """One CLIP per (model, preset, device) per process: the CLIP metrics share it, and so does DiffuseIT's CLIP
    guidance with the same model id."""
    import eval.clip
    from eval.encoders import clear_encoder_cache
    from eval.metrics import get_metric

    built = []
    real = eval.clip._load_clip

    def counting(model_id, *args, **kw):
        built.append(model_id)
        return real(model_id, *args, **kw)

    monkeypatch.setattr(eval.clip, "_load_clip", counting)
    clear_encoder_cache()
    score, direction = get_metric("clip_score", preset="tiny"), get_metric("clip_directional", preset="tiny")
    assert score.encoder() is direction.encoder() and len(built) == 1
    mid = score.options["model"]
    dit = methods.create("diffuseit", preset="tiny", clip_models=mid)
    dit.networks()  # builds the guidance encoders
    assert built.count(mid) == 1

