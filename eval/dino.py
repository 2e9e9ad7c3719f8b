"""DINO ViT key extractor: one implementation for the DINO-struct metric and for DiffuseIT's guidance losses.

Splice (and its copies in img2img-turbo, PnP-Inversion, DiffuseIT) reads the *keys* of a ViT block through a
forward hook on `block.attn.qkv`: the qkv output (B, T, 3*D) is viewed as (B, T, 3, heads, D/heads), the k part
is taken and the heads are concatenated back to (B, T, D), CLS token included (T = 1 + (H/8)(W/8)). The structure
descriptor is the cosine self-similarity of those keys (norms clamped at 1e-8); DINO-struct is the MSE between
the descriptors of the output and of the input. DiffuseIT also uses the [CLS] token of the last block (its output,
before the final LayerNorm). Weights load through timm (`vit_base_patch8_224.dino`, the same DINO ViT-B/8 weights
torch.hub's `dino_vitb8` serves) so no torch.hub call is needed. Gradients flow to the input (losses).

Input contract of `prepare`: float B x 3 x H x W in [0, 1]; the named preprocessing variant then scales, resizes
(aspect kept) and ImageNet-normalises. `keys`/`cls_token` take the prepared tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision.transforms.functional as TF
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms import InterpolationMode

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
from eval.store import atomic_path, atomic_write_json, read_json

DINO_PAPER_MODEL = "vit_base_patch8_224.dino"  # timm name of DINO ViT-B/8 (torch.hub dino_vitb8)
DINO_ARCH = "vit_base_patch8_224"
STRUCT_BLOCK = 11  # the last block of ViT-B, as in Splice / img2img-turbo / DiffuseIT
TINY_KWARGS = {"embed_dim": 48, "depth": 12, "num_heads": 3, "mlp_ratio": 2.0}  # 12 blocks: block 11 exists
RANDOM_SEED = 0


@dataclass(frozen=True)
class DinoModel:
    """A self-supervised ViT the extractor can read: timm name with its pretrained tag, architecture, tiny size."""

    key: str
    pretrained: str  # timm "<arch>.<tag>" of the real weights
    arch: str
    tiny_kwargs: dict
    label: str
    tiny_seed: int = RANDOM_SEED


DINO_MODELS: dict[str, DinoModel] = {
    # The structure encoder of Splice, img2img-turbo's DINO-Struct and DiffuseIT's losses.
    "dino-vitb8": DinoModel("dino-vitb8", DINO_PAPER_MODEL, DINO_ARCH, TINY_KWARGS, "DINO ViT-B/8"),
    # Held out: another self-supervised training (DINOv2, LVD-142M) and patch size, so a method that optimises
    # DINO ViT-B/8 keys (DiffuseIT) is also measured by an encoder it never saw. Its tiny stand-in differs from the
    # tiny ViT-B/8 (patch 14, another seed), so the two metrics differ in smoke runs too.
    "dinov2-vitb14": DinoModel("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2",
                               {**TINY_KWARGS, "img_size": 224}, "DINOv2 ViT-B/14", tiny_seed=1),
}
DEFAULT_DINO = "dino-vitb8"


def get_dino_model(model: str) -> DinoModel:
    """A known DINO model by key, with the known keys in the error."""
    if model not in DINO_MODELS:
        raise ValueError(f"unknown DINO model {model!r}; choose one of {sorted(DINO_MODELS)}")
    return DINO_MODELS[model]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DinoPreprocess:
    """A named DINO preprocessing variant: scale the [0,1] input, resize (short side, aspect kept), normalise.

    The published implementations differ here, which makes their numbers incomparable (specs §2.1):
    "splice" (default; Splice, DiffuseIT, img2img-turbo's range): [0,1], Resize(224, max_size=480);
    "img2img-turbo": [0,1], Resize(224) without max_size (it resizes PIL uint8 images; we resize the float tensor);
    "pnp-inversion": PnP-Inversion/PIE-Bench feed [0,255] floats into the ImageNet normalisation.
    Resizing is bilinear with antialiasing (torchvision's tensor default since 0.17; PIL's behaviour).
    """

    name: str
    short_side: int = 224
    max_size: int | None = 480
    input_scale: float = 1.0
    antialias: bool = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.input_scale
        x = TF.resize(x, [self.short_side], interpolation=InterpolationMode.BILINEAR, max_size=self.max_size,
                      antialias=self.antialias)
        return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    def describe(self) -> str:
        scale = "[0,1]" if self.input_scale == 1 else f"[0,1]*{self.input_scale:g}"
        return (f"{self.name}: {scale} -> Resize({self.short_side}, max_size={self.max_size}, bilinear, "
                f"antialias={self.antialias}) -> ImageNet normalise")


DINO_PREPROCESS = {
    "splice": DinoPreprocess("splice"),
    "img2img-turbo": DinoPreprocess("img2img-turbo", max_size=None),
    "pnp-inversion": DinoPreprocess("pnp-inversion", input_scale=255.0),
}


def get_preprocess(variant: str | DinoPreprocess) -> DinoPreprocess:
    """A preprocessing variant by name (or passed through), with the known names in the error."""
    if isinstance(variant, DinoPreprocess):
        return variant
    if variant not in DINO_PREPROCESS:
        raise ValueError(f"unknown DINO preprocessing {variant!r}; choose one of {sorted(DINO_PREPROCESS)}")
    return DINO_PREPROCESS[variant]


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine self-similarity B x T x T of B x T x D tokens (Splice's attn_cosine_sim, norms clamped at eps)."""
    norms = keys.norm(dim=-1, keepdim=True)
    factor = torch.clamp(norms @ norms.transpose(1, 2), min=eps)
    return (keys @ keys.transpose(1, 2)) / factor


class DinoExtractor(nn.Module):
    """A frozen timm ViT with key / [CLS] read-outs of any block (see the module docstring)."""

    def __init__(self, model: nn.Module, info: EncoderInfo):
        super().__init__()
        self.model = model
        self.info = info
        self.num_blocks = len(model.blocks)
        self.num_heads = model.blocks[0].attn.num_heads
        self.embed_dim = model.embed_dim
        self.patch_size = model.patch_embed.patch_size[0]

    def _block_index(self, block: int) -> int:
        if not -self.num_blocks <= block < self.num_blocks:
            raise ValueError(f"block {block} out of range for a {self.num_blocks}-block ViT")
        return block % self.num_blocks

    def prepare(self, images: torch.Tensor, variant: str | DinoPreprocess = "splice") -> torch.Tensor:
        """[0,1] images -> the network input of the named preprocessing variant (differentiable)."""
        return get_preprocess(variant)(images)

    def _capture(self, x: torch.Tensor, module: nn.Module, block: int) -> torch.Tensor:
        """Run the ViT up to `block` and return what `module` (a hooked sub-module) output on the way."""
        p = self.patch_size  # DINO's stride-p patch conv ignores the last H % p rows and W % p columns
        x = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model.forward_intermediates(x, indices=[block], stop_early=True, intermediates_only=True)
        finally:
            handle.remove()
        return captured[-1]

    def keys(self, x: torch.Tensor, block: int = STRUCT_BLOCK) -> torch.Tensor:
        """Keys of `block` for prepared input x: B x T x D (heads concatenated, CLS token first)."""
        block = self._block_index(block)
        qkv = self._capture(x, self.model.blocks[block].attn.qkv, block)
        b, t, _ = qkv.shape
        k = qkv.reshape(b, t, 3, self.num_heads, self.embed_dim // self.num_heads)[:, :, 1]  # B x T x heads x d
        return k.reshape(b, t, self.embed_dim)

    def cls_token(self, x: torch.Tensor, block: int = -1) -> torch.Tensor:
        """[CLS] token of `block`'s output (before the final LayerNorm), B x D: DiffuseIT's semantic feature."""
        block = self._block_index(block)
        return self._capture(x, self.model.blocks[block], block)[:, 0]

    def self_similarity(self, images: torch.Tensor, *, block: int = STRUCT_BLOCK,
                        variant: str | DinoPreprocess = "splice") -> torch.Tensor:
        """Key self-similarity B x T x T of [0,1] images: Splice's structure descriptor."""
        return self_similarity(self.keys(self.prepare(images, variant), block))

    def structure_distance(self, outputs: torch.Tensor, inputs: torch.Tensor, *, block: int = STRUCT_BLOCK,
                           variant: str | DinoPreprocess = "splice", detach_inputs: bool = True) -> torch.Tensor:
        """Per-image MSE between the key self-similarities of outputs and inputs ([0,1] batches): B values.

        The two batches may differ in size but must give the same token grid after preprocessing (same aspect).
        `detach_inputs` computes the input side without gradients (Splice/DiffuseIT do so for their loss).
        """
        s_out = self.self_similarity(outputs, block=block, variant=variant)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_inputs):
            s_in = self.self_similarity(inputs, block=block, variant=variant)
        if s_out.shape != s_in.shape:
            raise ValueError(
                f"DINO-struct compares token grids of the same size; output gives {tuple(s_out.shape[1:])} and "
                f"input {tuple(s_in.shape[1:])} self-similarities (different aspect ratios?)"
            )
        return ((s_out - s_in) ** 2).mean(dim=(1, 2))


def _hub_file(m: DinoModel) -> Path | None:
    """The weights file of `m` in the local Hugging Face cache (timm's hub layout), if there."""
    return hub_cached_file(f"timm/{m.pretrained}", ["model.safetensors", "pytorch_model.bin"])


def resolve_dino(preset: str = "paper", source: str | Path | None = None, model: str = DEFAULT_DINO
                 ) -> tuple[str, str, Path | None]:
    """Where the weights of DINO `model` would come from, without loading: (weights label, source, file or None)."""
    check_preset(preset)
    m = get_dino_model(model)
    if preset == "tiny":
        return "random", f"tiny {m.arch} {m.tiny_kwargs}, random init seed {m.tiny_seed}", None
    if source is not None:
        return "real", f"local file {source}", Path(source)
    hit = _hub_file(m)
    if hit is not None:
        return "real", f"hub timm/{m.pretrained} (cached)", hit
    if not is_offline():
        return "real", f"hub timm/{m.pretrained} (download on first use)", None
    return "random", f"hub timm/{m.pretrained} not cached and offline; random init seed {RANDOM_SEED}", None


def _create(arch: str, kwargs: dict, pretrained: bool = False) -> nn.Module:
    return timm.create_model(arch, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **kwargs)


def _read_state_dict(file: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    if str(file).endswith(".safetensors"):
        sd = load_file(str(file))
    else:
        sd = torch.load(str(file), map_location="cpu", weights_only=True)
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(sd, model)  # handles DINO's original .pth layout (e.g. 'teacher'-free ViT keys)


def _build_from_file(arch: str, kwargs: dict, file: Path) -> nn.Module:
    model = _create(arch, kwargs)
    missing, unexpected = model.load_state_dict(_read_state_dict(file, model), strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise ValueError(f"{file}: does not fit {arch} {kwargs}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def _tiny_dir(m: DinoModel) -> Path:
    """The tiny preset of `m`, written once as <dir>/config.json + model.safetensors (the layout a local model
    uses). The ViT-B/8 stand-in keeps its original folder name "dino" (existing caches stay valid)."""
    path = tiny_dir("dino" if m.key == DEFAULT_DINO else f"dino-{m.key}")
    if not (path / "model.safetensors").exists():
        model = seeded_init(m.tiny_seed, lambda: _create(m.arch, m.tiny_kwargs))
        atomic_write_json(path / "config.json", {"architecture": m.arch, "model_kwargs": m.tiny_kwargs,
                                                 "weights": "random", "seed": m.tiny_seed})
        with atomic_path(path / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return path


def load_dino(preset: str = "paper", device: str = "cpu", *, source: str | Path | None = None,
              strict: bool = False, model: str = DEFAULT_DINO) -> DinoExtractor:
    """A `DinoExtractor` of DINO `model` (a DINO_MODELS key), loaded once per (model, preset, device, source).

    paper: the model's real weights from `source` (a .pth/.safetensors file), else the hub (timm/<name>, cached
    or downloaded), else the same architecture with random weights (seed 0) labelled "random" (strict=True raises
    instead). tiny: a 12-block, 48-wide ViT of the same patch size, random, loaded from its cache dir.
    """
    check_preset(preset)
    get_dino_model(model)
    key = ("dino", model, preset, str(device), str(source) if source else None, strict)
    return cached_encoder(key, lambda: _load_dino(preset, device, source, strict, model))


def _load_dino(preset: str, device: str, source: str | Path | None, strict: bool, model_key: str) -> DinoExtractor:
    m = get_dino_model(model_key)
    weights, origin, file = resolve_dino(preset, source, model_key)
    arch = m.pretrained
    if preset == "tiny":
        cfg = read_json(_tiny_dir(m) / "config.json")
        file = _tiny_dir(m) / "model.safetensors"
        model = _build_from_file(cfg["architecture"], cfg["model_kwargs"], file)
        arch = f"{m.arch}-tiny"
    elif weights == "real" and file is not None and source is not None:
        model = _build_from_file(m.arch, {}, file)
    elif weights == "real":
        try:
            model = _create(m.pretrained, {}, pretrained=True)
            file = _hub_file(m) or file
        except Exception as exc:  # hub/network errors come in many types
            weights, origin = "random", f"hub timm/{m.pretrained} failed ({type(exc).__name__}); random init"
    if weights == "random" and preset == "paper":
        if strict:
            raise FileNotFoundError(f"No real {m.label} weights: {origin}. Pass source=<weights .pth or "
                                    ".safetensors>, run online once to fill the hub cache, or use preset='tiny'.")
        model = seeded_init(RANDOM_SEED, lambda: _create(m.arch, {}))
        file = None
    info = EncoderInfo("dino", arch, preset, weights, origin, str(file) if file else None,
                       "prepared input (see DinoPreprocess; default " + DINO_PREPROCESS["splice"].describe() + ")")
    if weights == "random" and preset == "paper":
        warn_random(info, origin)
    return freeze(DinoExtractor(model, info).to(device))
