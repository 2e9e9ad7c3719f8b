"""PITI's network: a task encoder + a GLIDE decoder UNet, its configuration, and the project checkpoint format.

`PITIModel(config)` = `.encoder` (TaskEncoder) + `.decoder` (GlideUNet); `forward(x_t, timesteps, cond, low_res=None)`
returns B x 6 x H x W (eps and the learned-variance interpolation v, ADM learn_sigma). The base model works at
64 px, the upsampler at 256 px with the base output as `low_res`; both encoders read the 256 px condition.

Project format of one model (what `save_pretrained` writes and `PITIModel.from_pretrained` reads):
  <dir>/config.json        {"format": "i2i-zoo/piti", "version": 1, "config": PITIConfig.to_dict(), ...meta}
  <dir>/model.safetensors  the state dict (keys encoder.* and decoder.*, our module names), float32
A PITI weights directory holds one pair per condition kind: `<root>/<kind>/{base,upsample}/` (kind = mask, sketch,
depth), or a single pair `<root>/{base,upsample}/` (the kind is read from the config).

Presets (`PITIConfig.preset(name, **overrides)`): "base" and "upsample" are the released architectures
(PITI `script_util.py`); "tiny-base" / "tiny-upsample" keep every block kind (residual up/down-sampling,
joint attention with encoder tokens, pooled-token projection, the 6-conv CNN on a 256 px condition -> 256 tokens,
the pre-LN transformer) at toy width for tests and CI.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoder import TaskEncoder
from .unet import GlideUNet

FORMAT = "i2i-zoo/piti"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: condition kind -> encoder input channels (PITI script_util.create_model: n_class 3 for coco/ade20k colour masks,
#: 1 for coco-edge/flickr-edge sketch distance transforms, 6 for depth-normal)
COND_CHANNELS = {"mask": 3, "sketch": 1, "depth": 6}


@dataclass(frozen=True)
class PITIConfig:
    """Architecture + diffusion schedule of one PITI model (base or upsampler). Defaults: the released base model
    (PITI `pretrained_diffusion/script_util.py::model_and_diffusion_defaults`, GLIDE base 64 px)."""

    image_size: int = 64
    super_res: bool = False  # upsampler: x_t is concatenated with the bilinearly upsampled low-res image
    low_res_size: int | None = None  # upsampler: the base model's output size (64)
    in_channels: int = 3
    out_channels: int = 6  # learn_sigma=True: eps + variance interpolation
    model_channels: int = 192  # num_channels
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # channel_mult "" -> (1, 2, 3, 4) at 64 px
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_head_channels: int = 64
    dropout: float = 0.1
    norm_groups: int = 32  # GroupNorm32
    cond_kind: str = "mask"
    cond_channels: int = 3  # n_class
    cond_size: int = 256  # the encoder always reads the 256 px condition
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 512)  # CNN conv1..conv6
    encoder_width: int = 512  # xf_width
    encoder_layers: int = 8  # Text2ImModel: Encoder(xf_layers=8)
    encoder_heads: int = 8  # xf_heads
    noise_schedule: str = "squaredcos_cap_v2"
    diffusion_steps: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "encoder_channels", tuple(int(c) for c in self.encoder_channels))
        if self.cond_kind not in COND_CHANNELS:
            raise ValueError(f"cond_kind must be one of {sorted(COND_CHANNELS)}, got {self.cond_kind!r}")
        if self.super_res and not self.low_res_size:
            raise ValueError("an upsampler (super_res=True) needs low_res_size")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(levels-1)")

    # -- presets -----------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PITIConfig:
        """A named preset ("base", "upsample", "tiny-base", "tiny-upsample"), with field overrides. `cond_kind`
        also sets `cond_channels` unless that is given too."""
        if name not in PRESETS:
            raise KeyError(f"unknown PITI preset {name!r}; known: {', '.join(PRESETS)}")
        kw = dict(PRESETS[name])
        if "cond_kind" in overrides and "cond_channels" not in overrides:
            overrides["cond_channels"] = COND_CHANNELS[overrides["cond_kind"]]
        kw.update(overrides)
        return cls(**kw)

    def with_kind(self, kind: str) -> PITIConfig:
        return replace(self, cond_kind=kind, cond_channels=COND_CHANNELS[kind])

    # -- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PITIConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PITI config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    # -- derived -------------------------------------------------------------------------------------------
    def attention_downsample_rates(self) -> set[int]:
        """GLIDE script_util: attention at downsample rate image_size // res for each res in attention_resolutions."""
        return {self.image_size // r for r in self.attention_resolutions}

    @property
    def role(self) -> str:
        return "upsample" if self.super_res else "base"


PRESETS: dict[str, dict[str, Any]] = {
    # PITI script_util.model_and_diffusion_defaults (GLIDE base.pt): 64 px, 192 ch, (1,2,3,4), 3 res blocks,
    # attention 32/16/8, head 64, dropout 0.1, cosine schedule (squaredcos_cap_v2), 1000 steps.
    "base": {},
    # mask_finetune_upsample.sh / GLIDE upsample.pt: 256 px, --super_res 64, --num_res_blocks 2, channel_mult
    # (1,1,2,2,4,4), --noise_schedule linear; in_channels doubled by SuperResText2ImModel.
    "upsample": dict(image_size=256, super_res=True, low_res_size=64, num_res_blocks=2,
                     channel_mult=(1, 1, 2, 2, 4, 4), noise_schedule="linear"),
    # ours: toy widths with every block kind kept. Base 16 px (attention at 8 px = downsample 2), upsampler
    # 16 -> 64 px (the real x4 ratio), encoder CNN 8..32 wide on the 256 px condition -> 256 tokens of width 32.
    "tiny-base": dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(8,), num_head_channels=32, norm_groups=8,
                      encoder_channels=(8, 8, 16, 16, 32, 32), encoder_width=32, encoder_layers=2, encoder_heads=2),
    "tiny-upsample": dict(image_size=64, super_res=True, low_res_size=16, model_channels=16, channel_mult=(1, 2, 2),
                          num_res_blocks=1, attention_resolutions=(16,), num_head_channels=16, norm_groups=8,
                          encoder_channels=(8, 8, 16, 16, 32, 32), encoder_width=32, encoder_layers=2,
                          encoder_heads=2, noise_schedule="linear"),
}


class PITIModel(nn.Module):
    """Task encoder + GLIDE decoder (PITI `Text2ImModel` / `SuperResText2ImModel`)."""

    def __init__(self, config: PITIConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TaskEncoder(config)
        self.decoder = GlideUNet(config)

    def encode(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled B x W, tokens B x 256 x W) of a condition in [-1, 1] (B x cond_channels x 256 x 256)."""
        return self.encoder(cond)

    def decode(self, x_t: torch.Tensor, timesteps: torch.Tensor, pooled: torch.Tensor, tokens: torch.Tensor,
               low_res: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(x_t, timesteps, pooled, tokens, low_res)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                low_res: torch.Tensor | None = None) -> torch.Tensor:
        pooled, tokens = self.encoder(cond)
        return self.decoder(x_t, timesteps, pooled, tokens, low_res)

    # -- project checkpoint format ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, *, meta: dict[str, Any] | None = None) -> Path:
        """Write config.json + model.safetensors (float32) into `path` (atomic per file)."""
        from safetensors.torch import save_file

        from eval.store import atomic_path, atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        atomic_write_json(path / CONFIG_FILE, {"format": FORMAT, "version": FORMAT_VERSION,
                                               "config": self.config.to_dict(), **(meta or {})})
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: Any = "cpu", dtype: Any = None) -> PITIModel:
        """Load a project-format model directory (see module docstring)."""
        from ..base import WeightsNotFoundError
        from ..common.full_random import is_random_init, seed_for
        from ..common.loading import load_state_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if cfg_file.is_file() and is_random_init(path):  # full-random preset: the config, seeded random weights
            model = build_model(PITIConfig.from_dict(read_meta(path)["config"]), seed=seed_for(path.parent.name + "/"
                                                                                               + path.name))
            model.requires_grad_(False).eval()
            return model.to(device=device, dtype=dtype or torch.float32)
        if not cfg_file.is_file() or not weights.is_file():
            raise WeightsNotFoundError(f"{path} is not a PITI model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = read_meta(path)
        model = cls(PITIConfig.from_dict(meta["config"]))
        load_strict(model, load_state_file(weights), where=str(weights))
        model.requires_grad_(False).eval()
        return model.to(device=device, dtype=dtype or torch.float32)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    from ..base import WeightsNotFoundError

    cfg_file = Path(path) / CONFIG_FILE
    try:
        meta = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsNotFoundError(f"{cfg_file} is unreadable ({e}); re-create or re-download the weights") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsNotFoundError(f"{cfg_file} is not a PITI config (format {meta.get('format')!r}, "
                                   f"expected {FORMAT!r})")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise WeightsNotFoundError(f"{cfg_file} has format version {meta['version']}; this code reads <= "
                                   f"{FORMAT_VERSION}: update i2i-zoo")
    return meta


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    """`load_state_dict(strict=True)` with an error that names the missing / unexpected / mis-shaped keys."""
    from ..base import WeightsNotFoundError

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = ([f"missing keys: {head(missing)}"] if missing else []) + \
                ([f"unexpected keys: {head(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatches: {head(shapes)}"] if shapes else [])
        raise WeightsNotFoundError(f"{where} does not match the PITI architecture of its config; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def build_model(config: PITIConfig | str, *, seed: int | None = None, glide_init: bool = False,
                **overrides: Any) -> PITIModel:
    """A freshly initialised model from a config or preset name. `glide_init` zeroes the layers GLIDE zero-inits
    (for training from scratch); the default keeps every layer random (tiny presets must give non-trivial outputs)."""
    cfg = PITIConfig.preset(config, **overrides) if isinstance(config, str) else replace(config, **overrides)
    if seed is None:
        model = PITIModel(cfg)
    else:
        with torch.random.fork_rng(devices=[]):  # a seeded build leaves the caller's global RNG alone
            torch.manual_seed(seed)
            model = PITIModel(cfg)
    if glide_init:
        model.decoder.zero_init_()
    return model


def find_pairs(root: str | os.PathLike) -> dict[str, Path]:
    """kind -> pair directory (holding base/ and upsample/) under a PITI weights directory."""
    root = Path(root)
    out: dict[str, Path] = {}
    candidates = [root] + [root / k for k in COND_CHANNELS]
    for d in candidates:
        if (d / "base" / CONFIG_FILE).is_file():
            kind = read_meta(d / "base")["config"].get("cond_kind", "mask")
            out.setdefault(kind, d)
    return out


__all__ = ["COND_CHANNELS", "PITIConfig", "PITIModel", "PRESETS", "build_model", "find_pairs", "load_strict",
           "read_meta"]
