"""Import the official GLIDE / PITI checkpoints into our modules (and export back to the official layout).

Official files (read with `torch.load(weights_only=True)` through `methods.common.loading.load_state_file`):
- GLIDE `base.pt` / `upsample.pt` (openaipublic dec-2021; HF `tfwang/PITI` mirrors base.pt/upsample.pt): the
  `Text2ImUNet` / `SuperResText2ImUNet` state dict. PITI `image_train.py` drops the text transformer when it loads
  them into `model.decoder` -- every key starting with `transformer` except `transformer_proj*`, and
  `padding_embedding*`, `positional_embedding*`, `token_embedding*`, `final_ln*` -- and loads the rest strictly
  (PITI `image_train.py`). We do the same; the encoder is then freshly initialised (as upstream: PITI trains it
  from scratch).
- PITI `base_mask.pt`, `upsample_mask.pt`, `base_edge.pt`, `upsample_edge.pt` (PITI README): the full `Text2ImModel`
  state dict, `encoder.*` (our encoder uses the official names, loaded as is) + `decoder.*` (GLIDE UNet names).

GLIDE UNet layout (glide_text2im/unet.py `UNetModel` + text2im_model.py; names only): `time_embed.{0,2}`,
`input_blocks.0.0` (conv in), `input_blocks.N.0` res block [+ `.1` attention], down-sampling res blocks as their
own `input_blocks.N.0`, `middle_block.{0,1,2}`, `output_blocks.N.0` res block [+ `.1` attention] [+ up-sampling res
block as the next index], `out.{0,2}` (GroupNorm, conv), `transformer_proj`. Res block: `in_layers.{0,2}`,
`emb_layers.1`, `out_layers.{0,3}`, `skip_connection`. Attention: `norm`, `qkv` (conv1d, rows (heads, 3, d)),
`encoder_kv` (conv1d, rows (heads, 2, d)), `proj_out`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..base import WeightsNotFoundError
from .model import COND_CHANNELS, PITIConfig, PITIModel, load_strict

#: PITI image_train.py: GLIDE text-side keys removed before loading base.pt / upsample.pt.
GLIDE_DROPPED_PREFIXES = ("padding_embedding", "positional_embedding", "token_embedding", "final_ln")
#: official file names per (condition kind, role) (PITI README / sample.sh / image_sample.py)
OFFICIAL_FILES = {("mask", "base"): "base_mask.pt", ("mask", "upsample"): "upsample_mask.pt",
                  ("sketch", "base"): "base_edge.pt", ("sketch", "upsample"): "upsample_edge.pt"}
GLIDE_FILES = {"base": "base.pt", "upsample": "upsample.pt"}

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def is_glide_text_key(key: str) -> bool:
    """True for the GLIDE text-transformer keys PITI drops (PITI `image_train.py`)."""
    if key.startswith("transformer") and not key.startswith("transformer_proj"):
        return True
    return key.startswith(GLIDE_DROPPED_PREFIXES)


def _blocks(cfg: PITIConfig) -> Iterator[tuple[str, str, str]]:
    """(our prefix, official prefix, kind) for every module of the UNet, in the official construction order."""
    yield "time_embedding.linear_1", "time_embed.0", "param"
    yield "time_embedding.linear_2", "time_embed.2", "param"
    yield "transformer_proj", "transformer_proj", "param"
    yield "conv_in", "input_blocks.0.0", "param"
    model = _skeleton(cfg)
    for i, block in enumerate(model["down"]):
        yield f"down_blocks.{i}.resnet", f"input_blocks.{i + 1}.0", "resnet"
        if block["attn"]:
            yield f"down_blocks.{i}.attn", f"input_blocks.{i + 1}.1", "attn"
    yield "mid_block.resnet_1", "middle_block.0", "resnet"
    yield "mid_block.attn", "middle_block.1", "attn"
    yield "mid_block.resnet_2", "middle_block.2", "resnet"
    for i, block in enumerate(model["up"]):
        yield f"up_blocks.{i}.resnet", f"output_blocks.{i}.0", "resnet"
        if block["attn"]:
            yield f"up_blocks.{i}.attn", f"output_blocks.{i}.1", "attn"
        if block["up"]:
            yield f"up_blocks.{i}.upsampler", f"output_blocks.{i}.{1 + block['attn']}", "resnet"
    yield "conv_norm_out", "out.0", "param"
    yield "conv_out", "out.2", "param"


def _skeleton(cfg: PITIConfig) -> dict[str, list[dict[str, bool]]]:
    """Which UNet blocks carry attention / up-sampling (GLIDE UNetModel's construction loop)."""
    attn_ds = cfg.attention_downsample_rates()
    down, up = [], []
    ds = 1
    for level, _ in enumerate(cfg.channel_mult):
        down += [{"attn": ds in attn_ds}] * cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            down.append({"attn": False})
            ds *= 2
    for level in reversed(range(len(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            is_up = bool(level) and i == cfg.num_res_blocks
            up.append({"attn": ds in attn_ds, "up": is_up})
            if is_up:
                ds //= 2
    return {"down": down, "up": up}


def _conv1d_to_linear(w: torch.Tensor) -> torch.Tensor:
    return w[..., 0] if w.ndim == 3 else w


def _split_heads(t: torch.Tensor, heads: int, parts: int) -> list[torch.Tensor]:
    """Rows ordered (heads, parts, d) -> `parts` tensors with rows (heads, d) (legacy per-head interleaved order)."""
    rest = t.shape[1:]
    t = t.reshape(heads, parts, -1, *rest)
    return [t[:, i].reshape(-1, *rest) for i in range(parts)]


def _join_heads(ts: list[torch.Tensor], heads: int) -> torch.Tensor:
    rest = ts[0].shape[1:]
    return torch.stack([t.reshape(heads, -1, *rest) for t in ts], dim=1).reshape(-1, *rest)


def unet_from_official(official: dict[str, torch.Tensor], cfg: PITIConfig, *, where: str = "checkpoint"
                       ) -> dict[str, torch.Tensor]:
    """Our decoder state dict from a GLIDE-layout UNet state dict. Every official key must be used and every one of
    our keys produced: a missing or unexpected key raises WeightsNotFoundError naming it."""
    src = dict(official)
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(key: str) -> torch.Tensor | None:
        if key not in src:
            missing.append(key)
            return None
        return src.pop(key)

    for ours, theirs, kind in _blocks(cfg):
        if kind == "param":
            for p in ("weight", "bias"):
                t = take(f"{theirs}.{p}")
                if t is not None:
                    out[f"{ours}.{p}"] = t
        elif kind == "resnet":
            for a, b in _RESNET:
                for p in ("weight", "bias"):
                    key = f"{theirs}.{b}.{p}"
                    if a == "conv_shortcut" and key not in src:
                        continue  # identity skip: no conv in either layout
                    t = take(key)
                    if t is not None:
                        out[f"{ours}.{a}.{p}"] = t
        else:  # joint attention
            for p in ("weight", "bias"):
                norm, qkv, ekv, proj = (take(f"{theirs}.{n}.{p}") for n in ("norm", "qkv", "encoder_kv", "proj_out"))
                if norm is not None:
                    out[f"{ours}.group_norm.{p}"] = norm
                if qkv is not None:
                    heads = qkv.shape[0] // 3 // cfg.num_head_channels
                    for name, t in zip(("to_q", "to_k", "to_v"), _split_heads(_conv1d_to_linear(qkv), heads, 3)):
                        out[f"{ours}.{name}.{p}"] = t.contiguous()
                if ekv is not None:
                    heads = ekv.shape[0] // 2 // cfg.num_head_channels
                    for name, t in zip(("add_k_proj", "add_v_proj"), _split_heads(_conv1d_to_linear(ekv), heads, 2)):
                        out[f"{ours}.{name}.{p}"] = t.contiguous()
                if proj is not None:
                    out[f"{ours}.to_out.0.{p}"] = _conv1d_to_linear(proj)
    if missing or src:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}" + (f" (+{len(missing) - 8} more)"
                                                                      if len(missing) > 8 else ""))
        if src:
            extra = sorted(src)
            parts.append(f"unexpected keys: {', '.join(extra[:8])}" + (f" (+{len(extra) - 8} more)"
                                                                       if len(extra) > 8 else ""))
        raise WeightsNotFoundError(f"{where} is not a GLIDE/PITI UNet of the expected {cfg.role} architecture; "
                                   + "; ".join(parts))
    return out


def unet_to_official(ours: dict[str, torch.Tensor], cfg: PITIConfig) -> dict[str, torch.Tensor]:
    """The inverse of `unet_from_official` (to run our weights in the authors' code)."""
    src = dict(ours)
    out: dict[str, torch.Tensor] = {}
    for mine, theirs, kind in _blocks(cfg):
        for p in ("weight", "bias"):
            if kind == "param":
                out[f"{theirs}.{p}"] = src.pop(f"{mine}.{p}")
            elif kind == "resnet":
                for a, b in _RESNET:
                    if f"{mine}.{a}.{p}" in src:
                        out[f"{theirs}.{b}.{p}"] = src.pop(f"{mine}.{a}.{p}")
            else:
                h = src[f"{mine}.to_q.{p}"].shape[0] // cfg.num_head_channels
                qkv = _join_heads([src.pop(f"{mine}.{n}.{p}") for n in ("to_q", "to_k", "to_v")], h)
                ekv = _join_heads([src.pop(f"{mine}.{n}.{p}") for n in ("add_k_proj", "add_v_proj")], h)
                out[f"{theirs}.norm.{p}"] = src.pop(f"{mine}.group_norm.{p}")
                out[f"{theirs}.qkv.{p}"] = qkv[..., None] if p == "weight" else qkv
                out[f"{theirs}.encoder_kv.{p}"] = ekv[..., None] if p == "weight" else ekv
                proj = src.pop(f"{mine}.to_out.0.{p}")
                out[f"{theirs}.proj_out.{p}"] = proj[..., None] if p == "weight" else proj
    if src:
        raise ValueError(f"unexported keys: {sorted(src)[:8]}")
    return out


# --- whole models --------------------------------------------------------------------------------------------
def infer_config(state: dict[str, torch.Tensor]) -> PITIConfig:
    """The preset of an official-layout state dict: base or upsampler (UNet input width 3 or 6), the released or
    the tiny architecture (UNet width), and the condition kind (encoder conv1 input channels: 3 mask, 1 sketch,
    6 depth)."""
    prefix = "decoder." if any(k.startswith("decoder.") for k in state) else ""
    conv_in = state.get(f"{prefix}input_blocks.0.0.weight")
    if conv_in is None:
        raise WeightsNotFoundError("not a GLIDE/PITI checkpoint: no input_blocks.0.0.weight (the UNet's first conv)")
    role = "upsample" if conv_in.shape[1] == 6 else "base"
    kw: dict[str, Any] = {}
    conv1 = state.get("encoder.cnn.conv1.weight")
    if conv1 is not None:
        kinds = {v: k for k, v in COND_CHANNELS.items()}
        if conv1.shape[1] not in kinds:
            raise WeightsNotFoundError(f"encoder input has {conv1.shape[1]} channels; PITI uses 3 (mask), 1 "
                                       "(sketch) or 6 (depth+normal)")
        kw["cond_kind"] = kinds[conv1.shape[1]]
    for name in (role, f"tiny-{role}"):
        cfg = PITIConfig.preset(name, **kw)
        if conv_in.shape[0] == cfg.model_channels * cfg.channel_mult[0]:
            return cfg
    raise WeightsNotFoundError(f"a UNet of width {conv_in.shape[0]} is neither the released PITI/GLIDE {role} model "
                               "nor the tiny preset")


def model_from_official(state: dict[str, torch.Tensor], cfg: PITIConfig | None = None, *, where: str = "checkpoint",
                        seed: int = 0) -> PITIModel:
    """A PITIModel from an official state dict: a PITI full model (encoder.* + decoder.*) or a GLIDE UNet (text
    keys dropped as PITI `image_train.py` does, the encoder freshly initialised with `seed`). Returned in eval mode."""
    cfg = cfg or infer_config(state)
    with torch.random.fork_rng(devices=[]):  # seeded encoder init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = PITIModel(cfg)
    if any(k.startswith("decoder.") for k in state):
        enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        dec = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
        other = sorted(k for k in state if not k.startswith(("encoder.", "decoder.")))
        if other:
            raise WeightsNotFoundError(f"{where}: unexpected keys outside encoder.*/decoder.*: {', '.join(other[:8])}")
        load_strict(model.encoder, enc, where=f"{where} (encoder.*)")
    else:
        dec = {k: v for k, v in state.items() if not is_glide_text_key(k)}
    load_strict(model.decoder, unet_from_official(dec, cfg, where=where), where=f"{where} (decoder.*)")
    return model.eval()  # inference mode (dropout off); training calls .train()


def model_to_official(model: PITIModel) -> dict[str, torch.Tensor]:
    """PITI's full-model layout (encoder.* + decoder.*) of our model."""
    out = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    out.update({f"decoder.{k}": v for k, v in unet_to_official(model.decoder.state_dict(), model.config).items()})
    return out


def load_official_file(path: str | os.PathLike, cfg: PITIConfig | None = None) -> PITIModel:
    """Load one official .pt file (weights_only) into a PITIModel (eval mode, no grad)."""
    from ..common.loading import load_state_file

    state = load_state_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"{path} is not a plain state dict of tensors")
    model = model_from_official(state, cfg, where=str(path))
    return model.requires_grad_(False).eval()


def find_official(root: str | os.PathLike, kind: str) -> dict[str, Path] | None:
    """{"base": path, "upsample": path} of the official PITI files for `kind` in `root`, or None."""
    root = Path(root)
    files = {role: root / OFFICIAL_FILES[(kind, role)] for role in ("base", "upsample")
             if (kind, role) in OFFICIAL_FILES}
    return files if files and all(p.is_file() for p in files.values()) else None


def convert_official_dir(src: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Convert every official PITI pair found in `src` into the project layout `dest/<kind>/{base,upsample}/`.
    Returns the kinds converted."""
    done = []
    for kind in ("mask", "sketch"):
        files = find_official(src, kind)
        if files is None:
            continue
        for role, path in files.items():
            model = load_official_file(path)
            model.save_pretrained(Path(dest) / kind / role, meta={"origin": f"official:{path.name}"})
        done.append(kind)
    if not done:
        raise WeightsNotFoundError(f"no official PITI checkpoints in {src} (expected "
                                   f"{', '.join(sorted(set(OFFICIAL_FILES.values())))})")
    return done


__all__ = ["GLIDE_DROPPED_PREFIXES", "OFFICIAL_FILES", "convert_official_dir", "find_official", "infer_config",
           "is_glide_text_key", "load_official_file", "model_from_official", "model_to_official",
           "unet_from_official", "unet_to_official"]
