"""DINO ViT key extractor: one implementation for the DINO-struct metric and for DiffuseIT's guidance losses.

Splice (and its copies in img2img-turbo, PnP-Inversion, DiffuseIT) reads the *keys* of a ViT block through a
forward hook on `block.attn.qkv`: the qkv output (B, T, 3*D) is viewed as (B, T, 3, heads, D/heads), the k part
is taken and the heads are concatenated back to (B, T, D), CLS token included (T = 1 + (H/8)(W/8)). The structure
descriptor is the cosine self-similarity of those keys (norms clamped at 1e-8); DINO-struct is the MSE between
the descriptors of the output and of the input. DiffuseIT also uses the [CLS] token of the last block (its output,
before the final LayerNorm). Weights load through timm (`vit_base_patch8_224.dino`, the same DINO ViT-B/8 weights
torch.hub's `dino_vitb8` serves) so no torch.hub call is needed. Gradients flow to the input (losses).

Input contract of `prepare`: float B x 3 x H x W in [0, 1]; the named variant (DinoPreprocess: "splice" default,
"img2img-turbo", "pie-bench", "antialiased") then scales, resizes (aspect kept) and ImageNet-normalises, and names
the position-embedding interpolation `self_similarity` uses (DINO hub's own or timm's). `keys`/`cls_token` take the
prepared tensor.
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
from eval.store import atomic_write_json, read_json

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


POS_INTERPOLATIONS = ("dino", "timm")


@dataclass(frozen=True)
class DinoPreprocess:
    """A named DINO-struct variant: how the [0,1] input reaches the ViT, and how its position embeddings are resized.

    The published implementations differ here, which makes their numbers incomparable:
    "splice" (default; Splice `util/losses.py` LossG.global_transform, as the seed papers report DINO-struct): the
        [0,1] tensor, torchvision `Resize(224, max_size=480)` on the tensor (bilinear, no antialiasing: the tensor
        behaviour of the torchvision releases Splice ran on, before 0.17), ImageNet normalise; DINO's own
        `vision_transformer.py::VisionTransformer.interpolate_pos_encoding` (torch.hub dino_vitb8);
    "img2img-turbo" (`src/my_utils/dino_struct.py`): the image as uint8 PIL, `Resize(224)` on PIL (bilinear,
        antialiased by PIL, no max_size), `ToTensor`, ImageNet normalise; DINO's interpolation. Not differentiable;
    "pie-bench" (alias "pnp-inversion"; PnPInversion `evaluation/matrics_calculator.py`
        calculate_structure_distance): Splice's transform fed [0,255] floats (no /255);
    "antialiased" (earlier default of this project, kept for DiffuseIT's losses): Splice's geometry with an
        antialiased tensor resize and timm's position-embedding resampling (`dynamic_img_size`).
    On a square input whose side is the model's 224 (a 28 x 28 patch grid) no position embedding is resized, so the
    interpolation choice only matters on other sizes.
    """

    name: str
    short_side: int = 224
    max_size: int | None = 480
    input_scale: float = 1.0
    antialias: bool = False
    backend: str = "tensor"  # "tensor" (differentiable) or "pil" (uint8 PIL resize, as the image files are read)
    pos_interpolation: str = "dino"  # "dino": DINO hub interpolate_pos_encoding; "timm": timm dynamic_img_size

    def __post_init__(self) -> None:
        if self.backend not in ("tensor", "pil"):
            raise ValueError(f"DinoPreprocess backend must be 'tensor' or 'pil', got {self.backend!r}")
        if self.pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be one of {POS_INTERPOLATIONS}, got {self.pos_interpolation!r}")

    @property
    def differentiable(self) -> bool:
        return self.backend == "tensor"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.backend == "pil":
            return self._pil(images)
        x = images * self.input_scale
        x = TF.resize(x, [self.short_side], interpolation=InterpolationMode.BILINEAR, max_size=self.max_size,
                      antialias=self.antialias)
        return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    def _pil(self, images: torch.Tensor) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        u8 = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for im in u8:
            pil = TF.resize(Image.fromarray(np.ascontiguousarray(im)), [self.short_side],
                            interpolation=InterpolationMode.BILINEAR, max_size=self.max_size)
            out.append(TF.to_tensor(pil) * self.input_scale)
        x = torch.stack(out).to(device=images.device, dtype=images.dtype)
        return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    def describe(self) -> str:
        scale = "[0,1]" if self.input_scale == 1 else f"[0,1]*{self.input_scale:g}"
        if self.backend == "pil":
            resize = (f"uint8 PIL Resize({self.short_side}, max_size={self.max_size}, bilinear, PIL antialias), "
                      "ToTensor")
        else:
            resize = (f"tensor Resize({self.short_side}, max_size={self.max_size}, bilinear, "
                      f"antialias={self.antialias})")
        pos = ("DINO interpolate_pos_encoding (bicubic, +0.1 offset)" if self.pos_interpolation == "dino"
               else "timm resample_abs_pos_embed")
        return f"{self.name}: {scale} -> {resize} -> ImageNet normalise; position embeddings: {pos}"


DINO_PREPROCESS = {
    "splice": DinoPreprocess("splice"),
    "img2img-turbo": DinoPreprocess("img2img-turbo", max_size=None, backend="pil"),
    "pie-bench": DinoPreprocess("pie-bench", input_scale=255.0),
    "pnp-inversion": DinoPreprocess("pnp-inversion", input_scale=255.0),
    "antialiased": DinoPreprocess("antialiased", antialias=True, pos_interpolation="timm"),
}
DEFAULT_VARIANT = "splice"


def get_preprocess(variant: str | DinoPreprocess) -> DinoPreprocess:
    """A preprocessing variant by name (or passed through), with the known names in the error."""
    if isinstance(variant, DinoPreprocess):
        return variant
    if variant not in DINO_PREPROCESS:
        raise ValueError(f"unknown DINO preprocessing {variant!r}; choose one of {sorted(DINO_PREPROCESS)}")
    return DINO_PREPROCESS[variant]


def dino_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], pixels: tuple[int, int],
                   num_prefix: int = 1) -> torch.Tensor:
    """DINO's `VisionTransformer.interpolate_pos_encoding` (facebookresearch/dino vision_transformer.py).

    `pos_embed` 1 x (prefix + N) x D of a square sqrt(N) grid; `grid` the (rows, cols) of patch tokens of the input,
    `pixels` its (H, W). Unchanged when the token count equals N and H == W; else the patch part is resized bicubically
    with scale_factor ((rows + 0.1) / sqrt(N), (cols + 0.1) / sqrt(N)) (facebookresearch/dino issue 8: the 0.1
    avoids a floor error).
    """
    import math

    from torch.nn import functional as F

    n = pos_embed.shape[1] - num_prefix
    rows, cols = grid
    if rows * cols == n and pixels[0] == pixels[1]:
        return pos_embed
    side = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    r0, c0 = rows + 0.1, cols + 0.1
    patch = F.interpolate(patch.reshape(1, side, side, dim).permute(0, 3, 1, 2),
                          scale_factor=(r0 / math.sqrt(n), c0 / math.sqrt(n)), mode="bicubic")
    if tuple(patch.shape[-2:]) != (rows, cols):
        raise RuntimeError(f"position embedding resized to {tuple(patch.shape[-2:])}, expected {(rows, cols)}")
    return torch.cat((prefix, patch.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


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

    def prepare(self, images: torch.Tensor, variant: str | DinoPreprocess = DEFAULT_VARIANT) -> torch.Tensor:
        """[0,1] images -> the network input of the named preprocessing variant (differentiable unless the variant
        resizes PIL images, as "img2img-turbo" does)."""
        return get_preprocess(variant)(images)

    def _capture(self, x: torch.Tensor, module: nn.Module, block: int, pos_interpolation: str = "timm"
                 ) -> torch.Tensor:
        """Run the ViT up to `block` and return what `module` (a hooked sub-module) output on the way.

        pos_interpolation "timm": timm's forward (dynamic_img_size resampling); "dino": patch embedding, [CLS],
        DINO's `interpolate_pos_encoding`, then the blocks, as torch.hub's DINO `prepare_tokens` does."""
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be one of {POS_INTERPOLATIONS}, got {pos_interpolation!r}")
        pixels = tuple(x.shape[-2:])
        p = self.patch_size  # DINO's stride-p patch conv ignores the last H % p rows and W % p columns
        x = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            if pos_interpolation == "timm":
                self.model.forward_intermediates(x, indices=[block], stop_early=True, intermediates_only=True)
            else:
                m = self.model
                if getattr(m, "reg_token", None) is not None or getattr(m, "no_embed_class", False):
                    raise ValueError("DINO's position interpolation needs a ViT with only a [CLS] prefix token")
                t = m.patch_embed(x)  # B x rows x cols x D (dynamic_img_size)
                b, rows, cols, d = t.shape
                t = torch.cat((m.cls_token.expand(b, -1, -1), t.reshape(b, rows * cols, d)), dim=1)
                t = m.pos_drop(t + dino_pos_embed(m.pos_embed, (rows, cols), pixels, m.num_prefix_tokens))
                t = m.norm_pre(m.patch_drop(t))
                for blk in m.blocks[: block + 1]:
                    t = blk(t)
        finally:
            handle.remove()
        return captured[-1]

    def keys(self, x: torch.Tensor, block: int = STRUCT_BLOCK, pos_interpolation: str = "timm") -> torch.Tensor:
        """Keys of `block` for prepared input x: B x T x D (heads concatenated, CLS token first)."""
        block = self._block_index(block)
        qkv = self._capture(x, self.model.blocks[block].attn.qkv, block, pos_interpolation)
        b, t, _ = qkv.shape
        k = qkv.reshape(b, t, 3, self.num_heads, self.embed_dim // self.num_heads)[:, :, 1]  # B x T x heads x d
        return k.reshape(b, t, self.embed_dim)

    def cls_token(self, x: torch.Tensor, block: int = -1) -> torch.Tensor:
        """[CLS] token of `block`'s output (before the final LayerNorm), B x D: DiffuseIT's semantic feature."""
        block = self._block_index(block)
        return self._capture(x, self.model.blocks[block], block)[:, 0]

    def self_similarity(self, images: torch.Tensor, *, block: int = STRUCT_BLOCK,
                        variant: str | DinoPreprocess = DEFAULT_VARIANT) -> torch.Tensor:
        """Key self-similarity B x T x T of [0,1] images: Splice's structure descriptor (the variant's
        preprocessing and position-embedding interpolation)."""
        v = get_preprocess(variant)
        return self_similarity(self.keys(self.prepare(images, v), block, v.pos_interpolation))

    def structure_distance(self, outputs: torch.Tensor, inputs: torch.Tensor, *, block: int = STRUCT_BLOCK,
                           variant: str | DinoPreprocess = DEFAULT_VARIANT, detach_inputs: bool = True
                           ) -> torch.Tensor:
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
    if preset == "full-random":
        return "random", f"{m.arch} at full size, random init seed {RANDOM_SEED} (full-random preset)", None
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
    uses)."""

    def build(folder: Path) -> None:
        model = seeded_init(m.tiny_seed, lambda: _create(m.arch, m.tiny_kwargs))
        atomic_write_json(folder / "config.json", {"architecture": m.arch, "model_kwargs": m.tiny_kwargs,
                                                   "weights": "random", "seed": m.tiny_seed})
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))

    return tiny_dir("dino" if m.key == DEFAULT_DINO else f"dino-{m.key}", build, f"tiny {m.label}")


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
        folder = _tiny_dir(m)  # built or verified once
        cfg = read_json(folder / "config.json")
        file = folder / "model.safetensors"
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
    if weights == "random" and preset in ("paper", "full-random"):
        if strict and preset == "paper":
            raise FileNotFoundError(f"No real {m.label} weights: {origin}. Pass source=<weights .pth or "
                                    ".safetensors>, run online once to fill the hub cache, or use preset='tiny'.")
        model = seeded_init(RANDOM_SEED, lambda: _create(m.arch, {}))
        file = None
    info = EncoderInfo("dino", arch, preset, weights, origin, str(file) if file else None,
                       "prepared input (see DinoPreprocess; default " + DINO_PREPROCESS["splice"].describe() + ")")
    if weights == "random" and preset == "paper":
        warn_random(info, origin)
    return freeze(DinoExtractor(model, info).to(device))
