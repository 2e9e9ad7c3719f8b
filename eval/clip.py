"""One CLIP wrapper (open_clip) for the CLIP metrics and for the CLIP losses of img2img-turbo and DiffuseIT.

Model ids are "<open_clip arch>/<pretrained tag>" (e.g. "ViT-B-32/openai"), or open_clip's "hf-hub:org/repo" /
"local-dir:/path" schemas. `encode_text` tokenises with open_clip's tokenizer (the real 49408-token BPE, also for the
tiny preset; prompts longer than the context are truncated). Images go in as float B x 3 x H x W in [0, 1] through
one of two paths, kept apart on purpose:

Reference path (the CLIP metrics): `encode_image_reference` / `preprocess_reference`. Each image is quantised to
uint8 (round(x * 255), what saving it as PNG does; images read from 8-bit files come back bit-exact) and passed
through open_clip's own eval transform built from the model's preprocess config (`open_clip.image_transform`, the
`preprocess` that `open_clip.create_model_and_transforms` returns). For OpenAI/open_clip weights that is OpenAI CLIP's
`_transform`: PIL bicubic resize of the shorter side to 224 with the long side truncated
(torchvision `_compute_resized_output_size`: int(224 * long / short)), centre crop 224 with the offset rounded
(torchvision `center_crop`: int(round((h - 224) / 2))), RGB, ToTensor (/255), Normalize(mean, std). The same
numbers as CLIPScore / the OpenAI and open_clip preprocessing give on the saved files, at any image size. Not
differentiable.

Differentiable path (the losses): `encode_image(images, resize=...)` / `preprocess(images, resize)`, tensor ops:
  "shortest": bicubic antialiased tensor resize of the short side (long side rounded), centre crop (offset floored),
      clamp to [0, 1], normalise. Close to the reference path (equal on squares up to uint8 quantisation) but not
      equal on non-square images: use it for gradients (DiffuseIT's CLIP losses), not for reported numbers;
  "squash": bilinear resize straight to size x size without antialiasing (img2img-turbo's CLIP-similarity loss);
  "none": the input must already be size x size (e.g. DiffuseIT's random crops); only normalised.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from eval.encoders import (
    EncoderInfo,
    cached_encoder,
    check_preset,
    freeze,
    hub_cached_file,
    is_offline,
    seeded_init,
    tiny_dir,
    warn_random,
)
from eval.store import atomic_write_json

DEFAULT_METRIC_CLIP = "ViT-L-14/openai"
"""CLIP for the metrics: torchmetrics' CLIPScore default and the diffusers directional-similarity doc
(openai/clip-vit-large-patch14); also held out from the ViT-B/32 and B/16 that DiffuseIT/img2img-turbo optimise."""
IMG2IMG_TURBO_CLIP = "ViT-B-32/openai"
DIFFUSEIT_CLIP_ENSEMBLE = ("RN50/openai", "RN50x4/openai", "ViT-B-32/openai", "RN50x16/openai", "ViT-B-16/openai")
"""DiffuseIT's `--clip_models` default ['RN50', 'RN50x4', 'ViT-B/32', 'RN50x16', 'ViT-B/16'] (OpenAI CLIP)."""

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
RANDOM_SEED = 0
RESIZE_MODES = ("shortest", "squash", "none")


def parse_model_id(model_id: str) -> tuple[str, str | None]:
    """'ViT-B-32/openai' -> ('ViT-B-32', 'openai'); schema ids and bare archs -> (id, None)."""
    if model_id.startswith(("hf-hub:", "local-dir:")):
        return model_id, None
    arch, _, tag = model_id.partition("/")
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r} in {model_id!r}; e.g. 'ViT-B-32/openai', "
                         f"'ViT-L-14/openai', 'RN50/openai', or 'hf-hub:org/repo' / 'local-dir:/path'")
    return arch, tag or None


def _hub_file(arch: str, tag: str) -> Path | None:
    """The weights of (arch, tag) in the local Hugging Face cache, if there (no network)."""
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "")
    if not hub:
        return None
    parts = hub.strip("/").split("/")  # "org/repo/" or "org/repo/file"
    named = ["/".join(parts[2:])] if len(parts) > 2 else []
    return hub_cached_file("/".join(parts[:2]), named + ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])


def resolve_clip(model_id: str = DEFAULT_METRIC_CLIP, preset: str = "paper",
                 source: str | Path | None = None) -> tuple[str, str, Path | None]:
    """Where the CLIP weights would come from, without loading: (weights label, source, file or None)."""
    check_preset(preset)
    if preset == "tiny":
        return "random", f"tiny open_clip ViT (stands in for {model_id}), random init seed {RANDOM_SEED}", None
    name, tag = parse_model_id(model_id)
    if preset == "full-random":
        return "random", f"open_clip {name} at full size, random init seed {RANDOM_SEED} (full-random preset)", None
    if source is not None:
        return "real", f"local file {source}", Path(source)
    if name.startswith("local-dir:"):
        return "real", model_id, Path(name.split(":", 1)[1])
    if name.startswith("hf-hub:"):
        return "real", f"{model_id} (hub or its cache)", None
    if tag is None:
        return "random", f"{model_id}: no pretrained tag; random init seed {RANDOM_SEED}", None
    hit = _hub_file(name, tag)
    if hit is not None:
        return "real", f"open_clip {name}/{tag} (hub cache)", hit
    if not is_offline():
        return "real", f"open_clip {name}/{tag} (download on first use)", None
    return "random", f"open_clip {name}/{tag} not cached and offline; random init seed {RANDOM_SEED}", None


class ClipModel(nn.Module):
    """A frozen open_clip model with differentiable [0,1]-image and text encoders (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer, info: EncoderInfo, model_id: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.model_id = model_id
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", model.visual.image_size)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.register_buffer("mean", torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1))
        self.preprocess_cfg = {"size": self.image_size, "mean": tuple(self.mean.flatten().tolist()),
                               "std": tuple(self.std.flatten().tolist()),
                               "interpolation": cfg.get("interpolation", "bicubic"),
                               "resize_mode": cfg.get("resize_mode", "shortest"),
                               "fill_color": cfg.get("fill_color", 0)}
        # open_clip's eval transform for this model: the `preprocess` of open_clip.create_model_and_transforms
        self.reference_transform = open_clip.image_transform(
            self.image_size, is_train=False, mean=self.preprocess_cfg["mean"], std=self.preprocess_cfg["std"],
            resize_mode=self.preprocess_cfg["resize_mode"], interpolation=self.preprocess_cfg["interpolation"],
            fill_color=self.preprocess_cfg["fill_color"])

    def describe_reference(self) -> str:
        """The reference preprocessing in words (metric cards and reports)."""
        c = self.preprocess_cfg
        mean = tuple(round(v, 4) for v in c["mean"])
        std = tuple(round(v, 4) for v in c["std"])
        if c["resize_mode"] == "shortest":
            geometry = (f"PIL {c['interpolation']} resize of the shorter side to {c['size']} (long side truncated), "
                        f"centre crop {c['size']} (offset rounded)")
        else:
            geometry = f"open_clip resize_mode={c['resize_mode']!r} to {c['size']} ({c['interpolation']})"
        return (f"open_clip eval preprocess on uint8 images (float [0,1] rounded to uint8 first): {geometry}, "
                f"ToTensor, Normalize(mean={mean}, std={std})")

    def preprocess_reference(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] B x 3 x H x W -> open_clip's own eval preprocessing of the uint8 images (not differentiable)."""
        import numpy as np
        from PIL import Image

        u8 = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = [self.reference_transform(Image.fromarray(np.ascontiguousarray(im))) for im in u8]
        return torch.stack(out).to(device=self.mean.device, dtype=self.mean.dtype)

    def encode_image_reference(self, images: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Image embeddings B x E with the reference preprocessing (the CLIP metrics); no gradients."""
        with torch.no_grad():
            emb = self.model.encode_image(self.preprocess_reference(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def preprocess(self, images: torch.Tensor, resize: str = "shortest") -> torch.Tensor:
        """[0,1] B x 3 x H x W -> the model's normalised size x size input (differentiable; the losses' path,
        see the module docstring; the metrics use `preprocess_reference`)."""
        s = self.image_size
        if resize == "shortest":
            h, w = images.shape[-2:]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top:top + s, left:left + s].clamp(0, 1)
        elif resize == "squash":
            x = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
        elif resize == "none":
            if tuple(images.shape[-2:]) != (s, s):
                raise ValueError(f"resize='none' needs {s} x {s} images, got {tuple(images.shape[-2:])}")
            x = images
        else:
            raise ValueError(f"unknown resize mode {resize!r}; choose one of {RESIZE_MODES}")
        return (x - self.mean) / self.std

    def encode_image(self, images: torch.Tensor, *, normalize: bool = True, resize: str = "shortest") -> torch.Tensor:
        """Image embeddings B x E of [0,1] images (L2-normalised unless normalize=False); differentiable (losses)."""
        emb = self.model.encode_image(self.preprocess(images, resize))
        return F.normalize(emb, dim=-1) if normalize else emb

    def tokenize(self, texts: list[str] | str) -> torch.Tensor:
        """Token ids B x context (open_clip BPE; long prompts truncated), on the model's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts).to(self.mean.device)

    def encode_text(self, texts: list[str] | str, *, normalize: bool = True) -> torch.Tensor:
        """Text embeddings B x E (L2-normalised unless normalize=False)."""
        emb = self.model.encode_text(self.tokenize(texts))
        return F.normalize(emb, dim=-1) if normalize else emb


def _tiny_dir() -> Path:
    """The tiny preset as an open_clip local dir (open_clip_config.json + open_clip_model.safetensors)."""

    def build(folder: Path) -> None:
        preprocess = {"size": 224, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                      "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic", "resize_mode": "shortest"}
        atomic_write_json(folder / "open_clip_config.json", {"model_cfg": TINY_CONFIG, "preprocess_cfg": preprocess})
        model = seeded_init(RANDOM_SEED, lambda: open_clip.create_model("local-dir:" + str(folder), load_weights=False))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "open_clip_model.safetensors"))

    return tiny_dir("clip", build, "tiny CLIP")


def load_clip(model_id: str = DEFAULT_METRIC_CLIP, preset: str = "paper", device: str = "cpu", *,
              source: str | Path | None = None, strict: bool = False) -> ClipModel:
    """A `ClipModel`, loaded once per (model id, preset, device, source).

    paper: the model id's weights (`source` file/dir, the hub cache, or a download when online), else the same
    architecture randomly initialised (seed 0) and labelled "random" (strict=True raises instead). tiny: a 2-layer
    32-wide open_clip ViT (random, seed 0, real tokenizer) loaded from its local dir, whatever the model id.
    """
    check_preset(preset)
    key = ("clip", model_id, preset, str(device), str(source) if source else None, strict)
    return cached_encoder(key, lambda: _load_clip(model_id, preset, device, source, strict))


def _load_clip(model_id: str, preset: str, device: str, source: str | Path | None, strict: bool) -> ClipModel:
    weights, origin, file = resolve_clip(model_id, preset, source)
    if preset == "tiny":
        folder = _tiny_dir()  # built or verified once
        name = "local-dir:" + str(folder)
        model = open_clip.create_model(name)
        file = folder / "open_clip_model.safetensors"
        info = EncoderInfo("clip", f"tiny-clip({model_id})", preset, weights, origin, str(file), "")
        return _finish(model, open_clip.get_tokenizer(name), info, model_id, device)
    name, tag = parse_model_id(model_id)
    quick_gelu = tag == "openai"  # OpenAI's weights use QuickGELU; keep the architecture identical when random
    model = None
    if weights == "real":
        try:
            if source is not None and Path(source).is_dir():
                model = open_clip.create_model("local-dir:" + str(source))
            elif source is not None:
                model = open_clip.create_model(name, pretrained=str(source), force_quick_gelu=quick_gelu)
            else:
                model = open_clip.create_model(name, pretrained=tag, require_pretrained=True)
                file = _hub_file(name, tag) if tag else file
        except Exception as exc:  # hub/network errors come in many types
            if source is not None or tag is None:  # an explicit file/dir/hub repo must load: no silent fallback
                raise
            weights, origin = "random", f"open_clip {model_id} weights unavailable ({type(exc).__name__}); random init"
    if model is None:
        if strict and preset == "paper":
            raise FileNotFoundError(f"No real CLIP weights for {model_id}: {origin}. Pass source=<weights file or "
                                    "open_clip dir>, run online once to fill the hub cache, or use preset='tiny'.")
        model = seeded_init(RANDOM_SEED, lambda: open_clip.create_model(name, force_quick_gelu=quick_gelu))
        file = None
    info = EncoderInfo("clip", model_id, preset, weights, origin, str(file) if file else None, "")
    if weights == "random" and preset == "paper":
        warn_random(info, origin)
    return _finish(model, open_clip.get_tokenizer(name), info, model_id, device)


def _finish(model: nn.Module, tokenizer, info: EncoderInfo, model_id: str, device: str) -> ClipModel:
    clip = ClipModel(model, tokenizer, info, model_id)
    desc = (f"{clip.describe_reference()}; text: open_clip BPE tokenizer, "
            f"context {getattr(tokenizer, 'context_length', 77)}")
    clip.info = EncoderInfo(**{**info.as_dict(), "preprocessing": desc})
    return freeze(clip.to(device))
