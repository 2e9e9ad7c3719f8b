"""Full-random presets: the real architectures at their real size, random init with a fixed seed, built in memory.

A `full-random:<name>` weights source resolves to a small directory in the project cache that holds the real
snapshot's *config files only* (the values below, copied from the published configs; no weight files, so nothing
multi-GB is written) plus a `random_init.json` marker. The loaders read it through the libraries' own config
loaders (`ConfigMixin.load_config`, `PretrainedConfig.from_pretrained`, the tokenizer's `from_pretrained`), exactly
as for real weights; the one step that differs is the last: instead of reading a state dict, the module is built
from that config with `from_config` under a fixed seed (`random_part`). Everything after (dtype cast, freezing,
device move, the methods' own post-load code) is the real path. The CLIP tokenizer is the real 49408-token BPE
(`tiny.write_clip_tokenizer`).

Numbers made with these weights measure speed and memory at real scale; they are labelled "random" like the tiny
presets' and say nothing about the methods' quality.

Presets:
- sd-turbo: stabilityai/sd-turbo (SD 2.1 UNet, OpenCLIP ViT-H/14 text encoder, SD VAE, Euler trailing).
- sd-1.4: CompVis/stable-diffusion-v1-4 (SD 1.x UNet, CLIP ViT-L/14 text encoder, SD VAE, PNDM).
- adm-uncond: openai/guided-diffusion 256x256_diffusion_uncond.pt (converted to diffusers' UNet2DModel).
- piti: PITI's base 64 px + 256 px upsampler with their task encoders (mask and sketch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

FULL_RANDOM_VERSION = 1
SEED = 0
MARKER = "random_init.json"
PREFIX = "full-random:"

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

# CompVis/stable-diffusion-v1-4 unet/config.json (859.52 M parameters).
SD14_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, down_block_types=_SD_DOWN, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
    out_channels=4, sample_size=64, up_block_types=_SD_UP,
)
# stabilityai/sd-turbo unet/config.json (= stabilityai/stable-diffusion-2-1-base's UNet, 865.91 M parameters):
# per-block head dims 5/10/20/20 (64-channel heads), 1024-wide cross-attention, linear projections.
SD_TURBO_UNET = {**SD14_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                 "use_linear_projection": True, "dual_cross_attention": False, "only_cross_attention": False,
                 "upcast_attention": False}
# CompVis/stable-diffusion-v1-4 vae/config.json and stabilityai/sd-turbo vae/config.json (the same KL-f8
# autoencoder, 83.65 M parameters).
SD_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215,
)
# CompVis/stable-diffusion-v1-4 text_encoder/config.json (openai/clip-vit-large-patch14's text tower, 123.06 M).
SD14_TEXT = dict(
    architectures=["CLIPTextModel"], model_type="clip_text_model", vocab_size=49408, hidden_size=768,
    intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# stabilityai/sd-turbo text_encoder/config.json (OpenCLIP ViT-H/14 text tower without its last layer, as SD 2.x
# uses the penultimate layer: 23 layers, 1024 wide, gelu; 340.39 M).
SD_TURBO_TEXT = {**SD14_TEXT, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                 "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512}

#: Published parameter counts (millions) of the networks above, as the tests hold the builds to them.
PUBLISHED_PARAMS_M = {
    "sd-1.4/unet": 859.52, "sd-turbo/unet": 865.91, "sd-1.4/vae": 83.65, "sd-turbo/vae": 83.65,
    "sd-1.4/text_encoder": 123.06, "sd-turbo/text_encoder": 340.39, "adm-uncond/unet": 552.81,
}


def _sd_files(sd2: bool) -> dict[str, Any]:
    from .tiny import SD14_SCHEDULER, SD_TURBO_SCHEDULER

    sched = {"_class_name": "EulerDiscreteScheduler", **SD_TURBO_SCHEDULER} if sd2 else \
        {"_class_name": "PNDMScheduler", **SD14_SCHEDULER}
    return {
        "model_index.json": {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", sched["_class_name"]],
                             "text_encoder": ["transformers", "CLIPTextModel"],
                             "tokenizer": ["transformers", "CLIPTokenizer"],
                             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **(SD_TURBO_UNET if sd2 else SD14_UNET)},
        "vae/config.json": {"_class_name": "AutoencoderKL", **SD_VAE},
        "text_encoder/config.json": SD_TURBO_TEXT if sd2 else SD14_TEXT,
        "scheduler/scheduler_config.json": sched,
    }


def _adm_files() -> dict[str, Any]:
    # openai/guided-diffusion 256x256_diffusion_uncond.pt: the create_model arguments of DiffuseIT
    # (optimization/image_editor.py) in diffusers' UNet2DModel form (methods.diffuseit.convert.unet_config).
    from ..diffuseit.convert import BACKBONES, unet_config
    from .tiny import ADM_SCHEDULER

    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in unet_config(BACKBONES["imagenet-256"]).items()}
    return {"unet/config.json": {"_class_name": "UNet2DModel", **cfg},
            "scheduler/scheduler_config.json": {"_class_name": "DDPMScheduler", **ADM_SCHEDULER},
            "conversion.json": {"backbone": "imagenet-256"}}


def _piti_files() -> dict[str, Any]:
    # PITI pretrained_diffusion/script_util.py defaults (base) and mask_finetune_upsample.sh (upsampler); see
    # methods.piti.model.PRESETS.
    from ..piti.model import FORMAT, FORMAT_VERSION, PITIConfig

    out = {}
    for kind in ("mask", "sketch"):
        for role in ("base", "upsample"):
            cfg = PITIConfig.preset(role, cond_kind=kind).to_dict()
            out[f"{kind}/{role}/config.json"] = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg,
                                                 "origin": f"full-random:piti v{FULL_RANDOM_VERSION}"}
    return out


FILES: dict[str, Callable[[], dict[str, Any]]] = {
    "sd-turbo": lambda: _sd_files(True),
    "sd-1.4": lambda: _sd_files(False),
    "adm-uncond": _adm_files,
    "piti": _piti_files,
}


def is_full_random(source: Any) -> bool:
    return str(source).startswith(PREFIX)


def full_random_dir(name: str) -> Path:
    from eval.store import cache_dir

    return cache_dir() / "full-random" / f"{name}-v{FULL_RANDOM_VERSION}"


@cache
def build_full_random(name: str) -> Path:
    """The config-only snapshot of preset `name` (kilobytes), written once (atomic, like the tiny presets)."""
    from eval.store import build_once

    from .tiny import write_clip_tokenizer

    if name not in FILES:
        raise KeyError(f"unknown full-random preset {name!r}; known: {', '.join(sorted(FILES))}")

    def build(dest: Path) -> None:
        for rel, content in FILES[name]().items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_text(json.dumps(content, indent=2))
        if name.startswith("sd-"):
            write_clip_tokenizer(dest / "tokenizer", pad_token="!" if name == "sd-turbo" else "<|endoftext|>")
        (dest / MARKER).write_text(json.dumps({"preset": name, "version": FULL_RANDOM_VERSION, "seed": SEED}))

    return build_once(full_random_dir(name), build, f"full-random preset {name} v{FULL_RANDOM_VERSION}, seed {SEED}")


def is_random_init(path: Path) -> bool:
    """Whether `path` (or a parent, up to 3 levels) is a full-random snapshot: build its modules with `random_part`."""
    path = Path(path)
    return any((p / MARKER).is_file() for p in [path, *list(path.parents)[:3]])


def seed_for(sub: str) -> int:
    """A fixed seed per component (stable across Python runs, unlike hash())."""
    import zlib

    return SEED + zlib.crc32(sub.encode()) % 10_000


def random_part(cls: Any, path: Path, sub: str, dtype: Any = None, device: Any = None) -> Any:
    """`cls` built from `<path>/<sub>`'s config with seeded random weights: the `from_pretrained` of a full-random
    snapshot. diffusers models via `from_config(load_config(...))`, transformers models via their config class.
    `device`: build (and initialise) there directly (a GPU initialises 866 M parameters in well under a second;
    the weights then come from that device's generator, seeded the same)."""
    import contextlib

    import torch

    dev = torch.device(device) if device is not None else None
    cuda = [dev.index or 0] if dev is not None and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), (dev if dev is not None else contextlib.nullcontext()):
        torch.manual_seed(seed_for(sub))
        if hasattr(cls, "config_class") and hasattr(cls.config_class, "from_pretrained"):  # transformers
            model = cls(cls.config_class.from_pretrained(path, subfolder=sub))
        else:  # diffusers ConfigMixin
            model = cls.from_config(cls.load_config(path, subfolder=sub))
    return model if dtype is None or dtype == torch.float32 else model.to(dtype=dtype)


def weights_id(name: str) -> str:
    return f"{PREFIX}{name}@v{FULL_RANDOM_VERSION}"


__all__ = ["FULL_RANDOM_VERSION", "PREFIX", "PUBLISHED_PARAMS_M", "SEED", "build_full_random", "is_full_random",
           "is_random_init", "random_part", "weights_id"]
