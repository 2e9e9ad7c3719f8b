"""guided-diffusion (ADM) UNet checkpoints -> diffusers `UNet2DModel` (DiffuseIT `optimization/image_editor.py`;
key mapping as in diffusers `scripts/convert_consistency_to_diffusers.py`).

DiffuseIT runs OpenAI's unconditional ImageNet 256x256 model (`256x256_diffusion_uncond.pt`) or, with `--use_ffhq`,
a 256x256 FFHQ model (`ffhq_10m.pt`). Both are ADM UNets with scale-shift norm, resblock up/down-sampling, head
width 64, learned variance (6 output channels) and the *legacy* attention (`QKVAttentionLegacy`, qkv rows ordered
(heads, 3, head_dim)). They map onto a stock diffusers `UNet2DModel` with:

- `resnet_time_scale_shift="scale_shift"`; `out_channels=6`; `downsample_type/upsample_type="resnet"`
  (`ResnetBlock2D(down/up=True)` = ADM's ResBlock(down/up), avg-pool / nearest x2 on both branches);
- `AttnDownBlock2D`/`AttnUpBlock2D` at the levels whose resolution is in `attention_resolutions`,
  `ResnetDownsampleBlock2D`/`ResnetUpsampleBlock2D` elsewhere; the mid block is ResBlock-Attention-ResBlock;
- `attn_norm_num_groups=32`: without it diffusers builds the mid-block attention WITHOUT a GroupNorm whenever
  `resnet_time_scale_shift != "default"`, while ADM's middle AttentionBlock has one;
- `norm_eps=1e-5`: ADM's GroupNorm32 is `nn.GroupNorm(32, ch)` (torch's default eps); a community config uses 1e-6
  (HF lukasz-staniszewski/adm-imagenet-256x256-unconditional `unet/config.json`); tests/test_diffuseit.py shows
  the 1e-5 model matches the reference math and 1e-6 does not;
- `flip_sin_to_cos=True, freq_shift=0`: ADM's timestep embedding is [cos, sin] with frequencies
  exp(-ln(10000) i / half), which is diffusers' `Timesteps` with those settings (checked in the tests);
- qkv: ADM's fused conv1d rows (heads, 3, head_dim) are reordered to (3, heads, head_dim) and split into
  to_q/to_k/to_v. ADM scales q and k by ch^-1/4 each: the same as diffusers' 1/sqrt(head_dim) on q.k.

`convert_adm_state_dict` is strict: every checkpoint key must be used and every model weight filled (with equal
shapes), else `CheckpointMismatchError` lists the differences (and names the matching named backbone, if any).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import WeightsNotFoundError

#: The official checkpoint of the paper preset (guided-diffusion README, "256x256 diffusion (not class
#: conditional)"; DiffuseIT README links a Google Drive copy of the same file).
ADM_256_UNCOND_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"


@dataclass(frozen=True)
class ADMConfig:
    """The guided-diffusion `create_model` arguments that shape the UNet (others do not change the weights)."""

    image_size: int
    num_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    num_head_channels: int = 64
    learn_sigma: bool = True
    in_channels: int = 3

    def attention_at(self, level: int) -> bool:
        return self.image_size // 2**level in self.attention_resolutions


#: DiffuseIT's two backbones (optimization/image_editor.py). channel_mult is guided-diffusion's default for
#: image_size 256; attention_resolutions "32,16,8" / "16".
BACKBONES: dict[str, ADMConfig] = {
    "imagenet-256": ADMConfig(256, 256, 2, (1, 1, 2, 2, 4, 4), (32, 16, 8)),
    "ffhq-256": ADMConfig(256, 128, 1, (1, 1, 2, 2, 4, 4), (16,)),
}


class CheckpointMismatchError(WeightsNotFoundError):
    """A checkpoint whose keys or shapes do not fit the ADM UNet it is loaded as."""


def unet_config(cfg: ADMConfig) -> dict[str, Any]:
    """`UNet2DModel` keyword arguments of the ADM UNet `cfg` (see the module docstring)."""
    levels = range(len(cfg.channel_mult))
    down = tuple("AttnDownBlock2D" if cfg.attention_at(lv) else "ResnetDownsampleBlock2D" for lv in levels)
    up = tuple("AttnUpBlock2D" if cfg.attention_at(lv) else "ResnetUpsampleBlock2D" for lv in reversed(levels))
    return dict(
        sample_size=cfg.image_size, in_channels=cfg.in_channels,
        out_channels=2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels,
        layers_per_block=cfg.num_res_blocks, block_out_channels=tuple(cfg.num_channels * m for m in cfg.channel_mult),
        down_block_types=down, up_block_types=up, downsample_type="resnet", upsample_type="resnet",
        resnet_time_scale_shift="scale_shift", attention_head_dim=cfg.num_head_channels, norm_num_groups=32,
        attn_norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu", dropout=0.0,
    )


def _res(adm: str, ours: str, skip: bool) -> list[tuple[str, str, str]]:
    pairs = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
             ("out_layers.0", "norm2"), ("out_layers.3", "conv2")] + ([("skip_connection", "conv_shortcut")]
                                                                     if skip else [])
    return [("plain", f"{adm}.{a}", f"{ours}.{b}") for a, b in pairs]


def _attn(adm: str, ours: str) -> list[tuple[str, str, str]]:
    return [("plain", f"{adm}.norm", f"{ours}.group_norm"), ("qkv", f"{adm}.qkv", ours),
            ("squeeze", f"{adm}.proj_out", f"{ours}.to_out.0")]


def module_map(cfg: ADMConfig) -> list[tuple[str, str, str]]:
    """(kind, ADM module prefix, diffusers module prefix) for every weight-carrying module of the ADM UNet.

    Walks guided-diffusion's UNetModel layout: input_blocks (conv, then per level num_res_blocks x [ResBlock,
    (Attention)], then a down ResBlock except at the last level), middle_block (ResBlock, Attention, ResBlock),
    output_blocks (per level, deepest first, num_res_blocks + 1 x [ResBlock, (Attention), (up ResBlock at the end of
    every level but the top)]), out (GroupNorm, SiLU, conv).
    """
    ch = cfg.num_channels
    maps = [("plain", "time_embed.0", "time_embedding.linear_1"), ("plain", "time_embed.2", "time_embedding.linear_2"),
            ("plain", "input_blocks.0.0", "conv_in")]
    skip_chs = [ch]
    cur, idx = ch, 1
    last = len(cfg.channel_mult) - 1
    for level, mult in enumerate(cfg.channel_mult):
        for j in range(cfg.num_res_blocks):
            out = ch * mult
            maps += _res(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", skip=cur != out)
            if cfg.attention_at(level):
                maps += _attn(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}")
            cur = out
            skip_chs.append(cur)
            idx += 1
        if level != last:
            maps += _res(f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0", skip=False)
            skip_chs.append(cur)
            idx += 1
    maps += _res("middle_block.0", "mid_block.resnets.0", skip=False)
    maps += _attn("middle_block.1", "mid_block.attentions.0")
    maps += _res("middle_block.2", "mid_block.resnets.1", skip=False)
    idx = 0
    for k, level in enumerate(reversed(range(len(cfg.channel_mult)))):
        for j in range(cfg.num_res_blocks + 1):
            out = ch * cfg.channel_mult[level]
            maps += _res(f"output_blocks.{idx}.0", f"up_blocks.{k}.resnets.{j}", skip=cur + skip_chs.pop() != out)
            cur, sub = out, 1
            if cfg.attention_at(level):
                maps += _attn(f"output_blocks.{idx}.1", f"up_blocks.{k}.attentions.{j}")
                sub = 2
            if level and j == cfg.num_res_blocks:
                maps += _res(f"output_blocks.{idx}.{sub}", f"up_blocks.{k}.upsamplers.0", skip=False)
            idx += 1
    maps += [("plain", "out.0", "conv_norm_out"), ("plain", "out.2", "conv_out")]
    return maps


def expected_adm_keys(cfg: ADMConfig) -> set[str]:
    """The parameter names of guided-diffusion's UNetModel for `cfg` (weights and biases of every module)."""
    return {f"{adm}.{p}" for _kind, adm, _ours in module_map(cfg) for p in ("weight", "bias")}


def detect_backbone(state: dict[str, Any]) -> str | None:
    """The named backbone whose ADM key set and channel width fit `state`, or None."""
    keys = set(state)
    for name, cfg in BACKBONES.items():
        w = state.get("input_blocks.0.0.weight")
        if keys == expected_adm_keys(cfg) and w is not None and int(w.shape[0]) == cfg.num_channels:
            return name
    return None


def convert_adm_state_dict(state: dict[str, Any], cfg: ADMConfig, *, target: dict[str, Any] | None = None,
                           source: str = "checkpoint") -> dict[str, Any]:
    """ADM UNet weights -> `UNet2DModel` weights (strict; `target` = the model's state dict for the shape check)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    heads_of: dict[str, int] = {}
    for kind, adm, ours in module_map(cfg):
        for p in ("weight", "bias"):
            key = f"{adm}.{p}"
            if key not in state:
                missing.append(key)
                continue
            used.add(key)
            t = state[key]
            if kind == "plain":
                out[f"{ours}.{p}"] = t
            elif kind == "squeeze":  # conv1d (C, C, 1) -> linear (C, C)
                out[f"{ours}.{p}"] = t.reshape(t.shape[0], -1) if p == "weight" else t
            else:  # legacy fused qkv: rows (heads, 3, head_dim) -> (3, heads, head_dim) -> q, k, v
                c3 = t.shape[0]
                c = c3 // 3
                heads = heads_of.setdefault(adm, max(1, c // cfg.num_head_channels))
                d = c // heads
                rows = t.reshape(heads, 3, d, -1).permute(1, 0, 2, 3).reshape(3, c, -1)
                for name, part in zip(("to_q", "to_k", "to_v"), rows):
                    out[f"{ours}.{name}.{p}"] = part if p == "weight" else part.reshape(c)
    unexpected = sorted(set(state) - used)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
    if target is not None and not problems:
        absent = sorted(set(target) - set(out))
        bad = [f"{k}: {tuple(out[k].shape)} vs {tuple(target[k].shape)}" for k in out
               if k in target and tuple(out[k].shape) != tuple(target[k].shape)]
        if absent:
            problems.append(f"model weights left unfilled: {', '.join(absent[:4])}")
        if bad:
            problems.append(f"{len(bad)} shape mismatches (e.g. {'; '.join(bad[:3])})")
    if problems:
        fits = detect_backbone(state)
        hint = (f" The checkpoint fits the {fits!r} backbone: pass backbone={fits!r}." if fits else
                f" Known backbones: {', '.join(BACKBONES)} (guided-diffusion 256x256_diffusion_uncond.pt, "
                "DiffuseIT's ffhq_10m.pt).")
        raise CheckpointMismatchError(f"{source} does not fit the ADM UNet {cfg}: {'; '.join(problems)}.{hint}")
    return out


def _unwrap(state: Any, source: str) -> dict[str, Any]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{source} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_adm_checkpoint(path: str | os.PathLike, backbone: str = "auto", *, dtype: Any = None) -> tuple[Any, str]:
    """An official ADM `.pt`/`.safetensors` checkpoint as a `UNet2DModel` (converted on the fly) and its backbone."""
    import torch
    from diffusers import UNet2DModel

    from ..common.loading import load_state_file

    state = _unwrap(load_state_file(path), str(path))
    name = detect_backbone(state) if backbone == "auto" else backbone
    if name is None:
        raise CheckpointMismatchError(
            f"{path} fits none of the known ADM backbones ({', '.join(BACKBONES)}); it is not a guided-diffusion "
            "256x256 UNet checkpoint (pass the official 256x256_diffusion_uncond.pt or a converted diffusers dir)")
    if name not in BACKBONES:
        raise CheckpointMismatchError(f"unknown backbone {name!r}; choose 'auto' or one of {', '.join(BACKBONES)}")
    cfg = BACKBONES[name]
    with torch.device("meta"):
        model = UNet2DModel(**unet_config(cfg))
    weights = convert_adm_state_dict(state, cfg, target=model.state_dict(), source=str(path))
    dtype = dtype or torch.float32
    model.load_state_dict({k: v.to(dtype).contiguous() for k, v in weights.items()}, strict=True, assign=True)
    return model, name


def write_converted(path: str | os.PathLike, dest: str | os.PathLike, backbone: str = "auto") -> Path:
    """Convert an official ADM checkpoint into a diffusers dir (`unet/` safetensors + `scheduler/`) at `dest`.

    The dir then loads directly (`DiffuseIT.from_pretrained(dest)`), without the conversion.
    """
    from diffusers import DDPMScheduler

    from ..common.tiny import ADM_SCHEDULER

    model, name = load_adm_checkpoint(path, backbone)
    dest = Path(dest)
    model.save_pretrained(dest / "unet", safe_serialization=True)
    DDPMScheduler.from_config(ADM_SCHEDULER).save_pretrained(dest / "scheduler")
    (dest / "conversion.json").write_text(json.dumps({"source": str(path), "backbone": name,
                                                      "converter": "methods.diffuseit.convert"}, indent=2))
    return dest
