"""The dtype matrix on the tiny presets: every method's inference in bfloat16 and float16 (both run on this CPU
build: convolution, matmul, group norm, SDPA) gives finite outputs within a stated distance of float32, and one
training step of each trainable method under bf16 / fp16 mixed precision gives finite losses.

Tolerances (outputs in [0, 1], one 64 px image): mean |x - x_fp32| <= 0.03 (bf16, 8 mantissa bits) / 0.005 (fp16,
11 bits), max <= 0.3 / 0.06. Iterative methods amplify the rounding (DiffuseIT's x1000-scaled guidance gradients,
pix2pix-zero's inversion + guided sampling): measured maxima 0.26 / 0.04 (DiffuseIT), 0.16 / 0.02 (pix2pix-zero);
single-pass methods stay near 0.02 / 0.004."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import methods
from eval.harness.perf import _perf_batch

TOL = {"bfloat16": (0.03, 0.3), "float16": (0.005, 0.06)}


@cache
def _output(name: str, dtype: str) -> torch.Tensor:
    model = methods.create(name, preset="tiny", dtype=dtype)
    batch = _perf_batch(64, 1, methods.TranslationInput, seed=0)
    return model.translate(batch, generator=[torch.Generator().manual_seed(0)]).images.float()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", methods.list())
def test_inference_in_half_precision_is_finite_and_close_to_float32(name, dtype):
    ref, out = _output(name, "float32"), _output(name, dtype)
    assert out.dtype == torch.float32 and out.shape == ref.shape  # outputs come back as float32 [0, 1]
    assert torch.isfinite(out).all()
    mean_tol, max_tol = TOL[dtype]
    diff = (out - ref).abs()
    assert diff.mean() <= mean_tol and diff.max() <= max_tol, (float(diff.mean()), float(diff.max()))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name, task, opts", [
    ("pix2pix-turbo", "sample-paired", {"resolution": 32, "validation_steps": 0, "viz_freq": 0,
                                        "checkpointing_steps": 0, "max_train_steps": 1}),
    ("cyclegan-turbo", "sample-unpaired", {"resolution": 32, "validation_steps": 0, "viz_freq": 0,
                                           "checkpointing_steps": 0, "max_train_steps": 1}),
    ("piti", "sample-mask", {"checkpointing_steps": 0, "max_steps": 1}),
])
@pytest.mark.filterwarnings("ignore:.*collapse to identity")  # CycleGAN-Turbo's mixed-precision caveat (tested
#                                                               in test_img2img_turbo_training.py)
def test_one_mixed_precision_training_step_gives_finite_losses(name, task, opts, precision):
    from datasets import get_task

    model = methods.create(name, preset="tiny")
    model.fit(get_task(task), {**opts, "quiet": True, "mixed_precision": precision})
    losses = {k: v for rec in model.history for k, v in rec.items() if k != "step" and isinstance(v, float)}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert all(torch.isfinite(p).all() for p in model.networks()["unet" if name != "piti" else "mask.base.unet"]
               .parameters())
