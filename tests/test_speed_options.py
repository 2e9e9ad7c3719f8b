"""Speed options (off by default) on the tiny presets: what each does to the output (max abs difference from the
default, float32, CPU). Layout, attention kernel and compilation only change float rounding; the fp16 VAE fallback
and CPU offload change nothing unless they act (an overflow; a GPU)."""

from __future__ import annotations

import pytest
import torch

import methods
from eval.harness.perf import _perf_batch


def _translate(model):
    batch = _perf_batch(64, 1, methods.TranslationInput, seed=0)
    return model.translate(batch, generator=[torch.Generator().manual_seed(0)]).images


@pytest.fixture(scope="module")
def default_out():
    return _translate(methods.create("pix2pix-turbo", preset="tiny"))


@pytest.mark.parametrize("options, bound", [
    ({"channels_last": True}, 1e-5),  # measured 1.8e-6
    ({"attention": "classic"}, 1e-5),  # measured 1.4e-6
    ({"attention": "sdpa"}, 0.0),  # already diffusers' default processor
    ({"vae_fp16_fallback": True}, 0.0),  # float32: never triggers
    ({"cpu_offload": True}, 0.0),  # execution device = CPU: weights only move between hooks
])
def test_speed_option_effect_on_the_output(default_out, options, bound):
    model = methods.create("pix2pix-turbo", preset="tiny")
    done = model.apply_speed_options(**options)
    assert set(done) == set(options) and all(done.values())
    assert (_translate(model) - default_out).abs().max() <= bound


@pytest.mark.slow
def test_compiled_denoiser_matches_the_default(default_out):
    model = methods.create("pix2pix-turbo", preset="tiny")
    assert "unet" in model.apply_speed_options(compile=True)["compile"]
    try:
        assert (_translate(model) - default_out).abs().max() <= 1e-5  # measured 1.4e-6
    finally:
        torch._dynamo.reset()


def test_attention_choice_keeps_a_methods_own_processors():
    model = methods.create("pix2pix-zero", preset="tiny")
    before = {k: type(p) for k, p in model.engine.unet.attn_processors.items()}
    done = model.apply_speed_options(attention="classic")
    after = {k: type(p) for k, p in model.engine.unet.attn_processors.items()}
    if any(c.__module__.startswith("methods") for c in before.values()):
        assert before == after and "kept" in done["attention"]


def test_fp16_vae_fallback_reruns_an_overflowing_decode_in_float32():
    from methods.common.speed import apply_speed_options

    model = methods.create("sdedit", preset="tiny", dtype="float16")
    dec = model.pipe.vae.decoder
    with torch.no_grad():  # activations past float16's 65504 (as in SD 1.x's VAE on some inputs): inf, then NaN
        dec.conv_in.weight.mul_(1e5)  # after the next GroupNorm; float32 normalises them away
    z = torch.randn(1, 4, 8, 8, dtype=torch.float16)
    assert not torch.isfinite(dec(z)).all()
    apply_speed_options(model, vae_fp16_fallback=True)
    out = dec(z)
    assert out.dtype == torch.float16 and next(dec.parameters()).dtype == torch.float16
    assert torch.isfinite(out).all()
    ref = dec.float()(z.float())  # the same decode in float32
    dec.half()
    assert (out.float() - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_unknown_attention_kind_is_refused():
    model = methods.create("identity", preset="tiny")
    with pytest.raises(methods.InputError, match="attention must be one of"):
        model.apply_speed_options(attention="flash3")
