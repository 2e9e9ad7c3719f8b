"""Tiny presets: the real architectures at toy size, random init with a fixed seed, saved in the real layout.

Each preset is built once into the project cache (`<cache>/tiny/<name>-v<TINY_VERSION>/`) with the libraries'
own `save_pretrained`, then loaded through the same `from_pretrained` path as the real weights. The CLIP
tokenizer is the real 49408-token BPE (built from the vocabulary that ships inside open_clip), so prompts
tokenise exactly as with Stable Diffusion. Bump TINY_VERSION whenever a builder changes: the version is part of
every cache key, so outputs made with the old tiny weights are never reused.

Presets:
- sd-turbo: mirrors stabilityai/sd-turbo (SD 2.1): OpenCLIP-style text encoder (gelu, pad "!"), linear-projection
  UNet, 4-block x8 VAE, Euler scheduler with trailing spacing.
- sd-1.4: mirrors CompVis/stable-diffusion-v1-4: CLIP ViT-L-style text encoder (quick_gelu), conv-projection UNet,
  4-block x8 VAE, PNDM scheduler.
- adm-uncond: mirrors guided-diffusion 256x256 uncond: pixel-space UNet2DModel with scale-shift norm, resblock
  up/down-sampling, attention at the low resolutions, 6 output channels (learned variance), linear-beta DDPM.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

from eval.store import build_once, cache_dir

TINY_VERSION = 3  # 2: sd-turbo scheduler config carries clip_sample=false like the real file; 3: adm-uncond
#                   middle attention has its GroupNorm (attn_norm_num_groups), as ADM
SEED = 0

# SD-Turbo's scheduler config (HF stabilityai/sd-turbo/scheduler/scheduler_config.json, as img2img-turbo
# `src/model.py` make_1step_sched loads it).
SD_TURBO_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1, interpolation_type="linear",
    use_karras_sigmas=False, clip_sample=False,  # img2img-turbo loads this file as a DDPMScheduler
)
# SD 1.4's scheduler config (HF CompVis/stable-diffusion-v1-4/scheduler/scheduler_config.json).
SD14_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)
# guided-diffusion: linear betas 1e-4 -> 0.02 over 1000 steps, learned-range variance (learn_sigma=True).
ADM_SCHEDULER = dict(
    beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
    variance_type="learned_range", clip_sample=True, prediction_type="epsilon",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the BPE alphabet of CLIP's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(dest: Path, *, pad_token: str) -> None:
    """Write vocab.json + merges.txt + tokenizer configs for the 49408-token CLIP BPE.

    The vocabulary is rebuilt the way CLIP/open_clip build it from `bpe_simple_vocab_16e6.txt.gz`: 256 byte
    symbols, the same with `</w>`, the first 48894 merges, then `<|startoftext|>`, `<|endoftext|>`. SD 1.x pads
    with `<|endoftext|>`; SD 2.x / SD-Turbo (OpenCLIP) pad with `!`.
    """
    from open_clip.tokenizer import default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
         "errors": "replace", "add_prefix_space": False, **special}, indent=2))


def _text_encoder(hidden_act: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    # bos/eos/pad ids as in the real SD configs (legacy 0/2/1: pooled output = argmax of the ids = EOT position).
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
                         projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPTextModel(cfg)


def _vae():
    from diffusers import AutoencoderKL

    # 4 blocks like SD's VAE (x8 down-sampling); a 2-block tiny VAE only downsamples x2 and is 10-50x slower.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=32,
                         sample_size=64, scaling_factor=0.18215)


def _unet(sd2: bool):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32,
        # SD 2.x: per-block head dims and linear projections; SD 1.x: 8 heads, conv projections.
        attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2,
    )


def _build_sd(dest: Path, *, sd2: bool) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(SEED)
    tok_dir = dest / "_tok"
    write_clip_tokenizer(tok_dir, pad_token="!" if sd2 else "<|endoftext|>")
    # from_config, as diffusers reads the real files: it ignores keys a class does not take (clip_sample).
    sched_cls, sched_cfg = (EulerDiscreteScheduler, SD_TURBO_SCHEDULER) if sd2 else (PNDMScheduler, SD14_SCHEDULER)
    scheduler = sched_cls.from_config(sched_cfg)
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder("gelu" if sd2 else "quick_gelu"),
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir), unet=_unet(sd2), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(dest, safe_serialization=True)
    shutil.rmtree(tok_dir)


def _build_adm(dest: Path) -> None:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(SEED)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
        attention_head_dim=32, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        attn_norm_num_groups=32,  # diffusers drops the mid-block attention's GroupNorm under scale_shift; ADM has it
    )
    unet.save_pretrained(dest / "unet", safe_serialization=True)
    DDPMScheduler.from_config(ADM_SCHEDULER).save_pretrained(dest / "scheduler")


BUILDERS: dict[str, Callable[[Path], None]] = {
    "sd-turbo": lambda d: _build_sd(d, sd2=True),
    "sd-1.4": lambda d: _build_sd(d, sd2=False),
    "adm-uncond": _build_adm,
}


def tiny_dir(name: str) -> Path:
    return cache_dir() / "tiny" / f"{name}-v{TINY_VERSION}"


@cache
def build_tiny(name: str) -> Path:
    """The directory of tiny preset `name`, built on first use (atomic: concurrent builders are safe)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny preset {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return build_once(tiny_dir(name), BUILDERS[name], f"tiny preset {name} v{TINY_VERSION}, seed {SEED}")
