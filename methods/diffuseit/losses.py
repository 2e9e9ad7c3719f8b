"""DiffuseIT's guidance losses on the shared encoders (eval.dino / eval.clip), as the authors'
optimization/image_editor.py computes them.

Every loss here is PER SAMPLE (a B-vector); the sampler sums them, so each sample's gradient is exactly what a
batch-of-1 run computes (upstream assumes batch 1 and sums/averages over the batch in places).

- DINO ViT-B/8, last block (model_vit/loss_vit.py): key self-similarity MSE (`lambda_ssim`), patch InfoNCE over all
  tokens with the source keys as positives/negatives (model_vit/contra_loss.py PatchLoss, tau 0.07), the [CLS]
  token of the last block's output for the semantic divergence (-MSE to the previous step's [CLS]) and the
  image-guided style loss (MSE to the reference's [CLS]). Inputs [-1,1] -> [0,1] -> Resize(224, max_size=480) ->
  ImageNet normalisation, the resize bilinear WITHOUT antialiasing as the authors' torchvision 0.10 resizes tensors
  (`dino_input`; encoder_resize="antialias" antialiases, a variant).
- CLIP (src/vqc_core.py CLIP.encode_image / encode_text): per model, `aug_num` views of the noise-mixed x0, each
  made as the authors' `train_prep`: RandomRotation(10) (nearest, zero fill) -> RandomResizedCrop(size, scale
  (0.8, 1), ratio (0.9, 1.1)) (bilinear, no antialias) -> RandomHorizontalFlip, with torchvision's parameter draws
  taken from the sample's own generator (`draw_views` / `authors_views`); each embedding L2-normalised, averaged
  (not re-normalised), dotted with the target direction normalize(E_T(tgt) - 0.4 E_T(src) + 0.2 E_I(source image));
  loss = -mean over models. E_I uses the authors' `test_prep`: Resize(size) (bilinear, no antialias) + CenterCrop.
  Text embeddings average the authors' 79 ImageNet templates (src/template.py: CLIP's 80 without
  'a photo of many {}.'). Variant encoder_resize="antialias": antialiased resizes and every view as one bilinear
  resampling (one `grid_sample` for all views of a model).
- MKL colour transfer (Pitie & Kokaram 2007, the `color-matcher` package's 'mkl' that DiffuseIT calls): x ->
  T (x - mu_x) + mu_ref with T = C_x^-1/2 (C_x^1/2 C_ref C_x^1/2)^1/2 C_x^-1/2, so T C_x T = C_ref.
  Written here (float64 eigen-decompositions): color-matcher is GPL-3.0 and pulls matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: model_vit/contra_loss.py: the masked diagonal's logit and the temperature.
CONTRA_DIAGONAL = -10.0


#: ImageNet statistics of DINO's input normalisation (model_vit/loss_vit.py imagenet_norm).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The ways this module resizes images for its loss encoders: the authors' (torchvision 0.10 tensor resizes, no
#: antialiasing; rotate -> crop -> flip views) or antialiased (PIL-like) resizes with one-resample views.
ENCODER_RESIZES = ("authors", "antialias")
#: DiffuseIT's own text templates (src/template.py): CLIP's 80 ImageNet templates without this one.
MISSING_TEMPLATE = "a photo of many {}."


def dino_input(images01: torch.Tensor, short_side: int = 224, max_size: int | None = 480, *,
               antialias: bool = False) -> torch.Tensor:
    """DiffuseIT's DINO input (model_vit/loss_vit.py global_transform): Resize(short_side, max_size=480) bilinear on
    the [0, 1] tensor, then ImageNet normalisation. The authors' torchvision 0.10 resizes tensors without
    antialiasing (`antialias=False`, the default here)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = TF.resize(images01, [short_side], interpolation=InterpolationMode.BILINEAR, max_size=max_size,
                  antialias=antialias)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


class DinoFeatures(nn.Module):
    """One DINO pass per image batch: last-block keys (B x T x D), their self-similarity (B x T x T) and the [CLS]
    token of the last block's output (B x D). Input: images in [0, 1]. A module, so `benchmark.py perf` counts it."""

    def __init__(self, extractor: Any, block: int = -1, short_side: int = 224, antialias: bool = False) -> None:
        super().__init__()
        self.extractor = extractor
        self.block = block % extractor.num_blocks
        self.short_side = short_side
        self.antialias = antialias
        self.trunk = DinoTrunk(extractor, self.block)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from eval.dino import self_similarity

        ex = self.extractor
        x = dino_input(images, self.short_side, antialias=self.antialias)
        p = ex.patch_size
        x = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
        qkv, out = self.trunk(x)
        b, t, _ = qkv.shape
        keys = qkv.reshape(b, t, 3, ex.num_heads, ex.embed_dim // ex.num_heads)[:, :, 1].reshape(b, t, ex.embed_dim)
        return keys, self_similarity(keys), out[:, 0]


class DinoTrunk(nn.Module):
    """The ViT itself up to `block` on normalised input: that block's qkv projection and output tokens. A module
    of its own so that `benchmark.py perf` times the network apart from the pre/post-processing around it."""

    def __init__(self, extractor: Any, block: int) -> None:
        super().__init__()
        self.vit = extractor.model
        self.block = block

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blk = self.vit.blocks[self.block]
        got: dict[str, torch.Tensor] = {}
        hooks = [blk.attn.qkv.register_forward_hook(lambda _m, _i, o: got.__setitem__("qkv", o)),
                 blk.register_forward_hook(lambda _m, _i, o: got.__setitem__("out", o))]
        try:
            self.vit.forward_intermediates(x, indices=[self.block], stop_early=True, intermediates_only=True)
        finally:
            for h in hooks:
                h.remove()
        return got["qkv"], got["out"]


def ssim_loss(sim: torch.Tensor, sim_src: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE between key self-similarity matrices (loss_vit.py calculate_global_ssim_loss)."""
    return (sim - sim_src).square().mean(dim=(1, 2))


def patch_nce_loss(keys: torch.Tensor, keys_src: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Per-sample patch InfoNCE over all tokens (contra_loss.py PatchLoss, averaged over tokens).

    Query i = output token i; positive = source token i; negatives = all source tokens, own position masked
    with a logit of -10 (before the division by tau). Cosine similarities throughout.
    """
    q = F.normalize(keys, dim=-1)
    k = F.normalize(keys_src.detach(), dim=-1)
    pos = (q * k).sum(-1, keepdim=True)  # B x T x 1
    neg = q @ k.transpose(1, 2)  # B x T x T
    eye = torch.eye(neg.shape[-1], dtype=torch.bool, device=neg.device)
    neg = neg.masked_fill(eye, CONTRA_DIAGONAL)
    logits = torch.cat([pos, neg], dim=-1) / tau
    return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean(dim=-1)


def cls_mse(cls: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE between [CLS] tokens (style loss; the semantic divergence is its negative)."""
    return (cls - ref.detach()).square().mean(dim=-1)


def range_loss(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance of x to [-1, 1] (optimization/losses.py range_loss)."""
    return (x - x.clamp(-1, 1)).square().mean(dim=(1, 2, 3))


def noise_mix(x_t: torch.Tensor, x0: torch.Tensor, sqrt_one_minus_abar: float) -> torch.Tensor:
    """image_editor.py noisy_aug: x0 * sqrt(1 - abar_t) + x_t * (1 - sqrt(1 - abar_t)) (respaced abar_t)."""
    return x0 * sqrt_one_minus_abar + x_t * (1 - sqrt_one_minus_abar)


# -- CLIP --------------------------------------------------------------------------------------------------------
def template_embeddings(text_tower: Any, prompts: Sequence[str]) -> torch.Tensor:
    """P x E: each prompt in the 79 templates, encoded, averaged, L2-normalised (vqc_core.py encode_text); all
    templates of all prompts in one text-tower call."""
    templates = imagenet_templates()
    emb = text_tower([t.format(p) for p in prompts for t in templates])
    return F.normalize(emb.view(len(prompts), len(templates), -1).mean(1), dim=-1)


def imagenet_templates() -> list[str]:
    """DiffuseIT's 79 prompt templates (src/template.py): CLIP's 80 ImageNet templates (open_clip
    OPENAI_IMAGENET_TEMPLATES, same order) without 'a photo of many {}.'."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES if t("{}") != MISSING_TEMPLATE]


class ClipViews(nn.Module):
    """The image tower of one CLIP model on [0, 1] size x size views -> L2-normalised embeddings (N x E): the CLIP
    normalisation, `encode_image`, L2 normalisation. A module so that `benchmark.py perf` times each model's calls."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, views01: torch.Tensor) -> torch.Tensor:
        c = self.clip
        return F.normalize(c.model.encode_image((views01 - c.mean) / c.std), dim=-1)


def clip_test_view(images01: torch.Tensor, size: int, *, antialias: bool = False) -> torch.Tensor:
    """The authors' CLIP `test_prep` before normalisation: Resize(size) (short side) + CenterCrop(size). Authors:
    bilinear without antialiasing (torchvision 0.10 on tensors); antialias=True: bicubic antialiased and clamped
    (the PIL-like preprocessing of CLIP's own transform)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if antialias:
        x = TF.resize(images01, [size], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    else:
        x = TF.resize(images01, [size], interpolation=InterpolationMode.BILINEAR, antialias=False)
    return TF.center_crop(x, [size, size])


def draw_views(n: int, generator: torch.Generator, height: int, width: int, *, max_angle: float = 10.0,
               scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (0.9, 1.1)
               ) -> list[tuple[float, int, int, int, int, bool]]:
    """n views' (angle, top, left, crop height, crop width, flip) drawn as torchvision's RandomRotation(10),
    RandomResizedCrop(scale, ratio) and RandomHorizontalFlip draw them (same calls in the same order: angle, up to
    10 crop tries, centre-crop fallback, flip), from `generator` instead of the global RNG. With a generator in the
    global RNG's state, the draws equal the torchvision transforms'."""
    out = []
    log_r = [float(v) for v in torch.log(torch.tensor(ratio))]  # float32, as torchvision computes it
    area = height * width
    for _ in range(n):
        angle = float(torch.empty(1).uniform_(-max_angle, max_angle, generator=generator).item())
        box = None
        for _ in range(10):
            target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_r[0], log_r[1], generator=generator)).item()
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                box = (i, j, h, w)
                break
        if box is None:  # torchvision's fallback: the whole image, cropped to the ratio range, centred
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            box = ((height - h) // 2, (width - w) // 2, h, w)
        flip = bool(torch.rand(1, generator=generator).item() < 0.5)
        out.append((angle, *box, flip))
    return out


def authors_views(image01: torch.Tensor, views: Sequence[tuple[float, int, int, int, int, bool]], size: int
                  ) -> torch.Tensor:
    """N x 3 x size x size views of one image (1 x 3 x H x W), each as the authors' train_prep makes it: rotate
    (nearest, zero fill, same size) -> crop -> bilinear resize to size x size without antialiasing -> flip."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    out = []
    for angle, top, left, h, w, flip in views:
        v = TF.rotate(image01, angle, interpolation=InterpolationMode.NEAREST)
        v = TF.resized_crop(v, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR,
                            antialias=False)
        out.append(TF.hflip(v) if flip else v)
    return torch.cat(out)


def draw_view_params(n: int, generator: torch.Generator, *, max_angle: float = 10.0,
                     scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (0.9, 1.1)
                     ) -> torch.Tensor:
    """n x 6 (angle, crop scale, log aspect ratio, centre x, centre y, flip) uniforms mapped to the torchvision
    RandomRotation(10) / RandomResizedCrop(scale=(0.8, 1), ratio=(0.9, 1.1)) / RandomHorizontalFlip ranges.

    Crops are placed uniformly where they fit (torchvision's rule); a crop that does not fit is shrunk to fit
    (torchvision retries 10 times, then centre-crops; with these ranges at most ~10% of draws need it)."""
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    angle = (2 * u[:, 0] - 1) * max_angle
    area = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 2]
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (u[:, 3] - 0.5)  # centre offset in [-1, 1] image units / 2
    cy = (1 - h) * (u[:, 4] - 0.5)
    flip = (u[:, 5] < 0.5).double()
    return torch.stack([angle, w, h, cx, cy, flip], dim=1)


def augment_views(image01: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """N views (N x 3 x size x size) of one image (1 x 3 x H x W) for the drawn parameters (one grid_sample)."""
    p = params.to(device=image01.device, dtype=image01.dtype)
    n = p.shape[0]
    ang = p[:, 0] * (math.pi / 180)
    cos, sin = torch.cos(ang), torch.sin(ang)
    sx = p[:, 1] * torch.where(p[:, 5] > 0, -1.0, 1.0)  # horizontal flip of the crop
    sy = p[:, 2]
    tx, ty = 2 * p[:, 3], 2 * p[:, 4]
    # output grid (normalised, align_corners=False) -> crop box -> rotated source coordinates
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, cos * tx - sin * ty], dim=1),
        torch.stack([sin * sx, cos * sy, sin * tx + cos * ty], dim=1),
    ], dim=1)  # n x 2 x 3
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(image01.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


class ClipDirection:
    """The text-guided CLIP loss of one translate call: targets encoded once, per-step loss on the views."""

    def __init__(self, towers: Sequence[ClipViews], prompt_embedders: Sequence[Any], src_prompts: Sequence[str],
                 tgt_prompts: Sequence[str], source01: torch.Tensor, *, lambda_src_text: float,
                 lambda_src_image: float, antialias: bool = False) -> None:
        """`prompt_embedders[m](prompts)`: model m's L2-normalised template-averaged embeddings (P x E).
        `antialias`: the encoder_resize="antialias" variant (antialiased test transform, one-resample views)."""
        self.towers = list(towers)
        self.antialias = antialias
        self.targets = []  # per model: B x E
        with torch.no_grad():
            for tower, embed in zip(self.towers, prompt_embedders):
                both = embed([*tgt_prompts, *src_prompts])  # one call: every new prompt's templates at once
                e_t, e_s = both[: len(tgt_prompts)], both[len(tgt_prompts):]
                e_i = self.test_embedding(tower, source01)
                self.targets.append(F.normalize(e_t - lambda_src_text * e_s + lambda_src_image * e_i, dim=-1))

    def test_embedding(self, tower: ClipViews, images01: torch.Tensor) -> torch.Tensor:
        size = tower.clip.image_size
        return tower(clip_test_view(images01, size, antialias=self.antialias))

    def draw(self, n: int, generator: torch.Generator, height: int, width: int) -> Any:
        """One sample's view parameters for one step (the same views serve every CLIP model, as upstream draws
        them per model: each model's views come from the generator in turn)."""
        if self.antialias:
            return [draw_view_params(n, generator) for _ in self.towers]
        return [draw_views(n, generator, height, width) for _ in self.towers]

    def loss(self, images01: torch.Tensor, params: Sequence[Any], index: Sequence[int]) -> torch.Tensor:
        """Per-sample -mean_models(mean_views(normalised view embeddings) . target). `params[j]`: sample j's view
        parameters from `draw` (one entry per model); `index[j]`: its row in the targets."""
        total = images01.new_zeros(images01.shape[0])
        for m, (tower, tgt) in enumerate(zip(self.towers, self.targets)):
            size = tower.clip.image_size
            make = augment_views if self.antialias else authors_views
            views = torch.cat([make(images01[j:j + 1], params[j][m], size) for j in range(images01.shape[0])])
            emb = tower(views).view(images01.shape[0], -1, tgt.shape[-1]).mean(1)
            total = total - (emb * tgt[list(index)]).sum(-1)
        return total / len(self.towers)

    def plain_loss(self, images01: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
        """The same loss on the un-augmented image (test transform): upstream's initial `loss_prev`."""
        total = images01.new_zeros(images01.shape[0])
        for tower, tgt in zip(self.towers, self.targets):
            emb = self.test_embedding(tower, images01)
            total = total - (emb * tgt[list(index)]).sum(-1)
        return total / len(self.towers)


# -- colour matching ---------------------------------------------------------------------------------------------
def _sqrtm(c: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    vals = vals.clamp(min=0)
    d = torch.where(vals > 1e-12, vals.rsqrt(), torch.zeros_like(vals)) if inverse else vals.sqrt()
    return vecs @ torch.diag(d) @ vecs.T


def mkl_transfer(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Monge-Kantorovitch linear colour transfer of `image` (3 x H x W) to `reference`'s colour statistics
    (3 x H' x W'); float64 inside, the input's dtype out, not clipped."""
    x = image.reshape(3, -1).double()
    r = reference.reshape(3, -1).double()
    mu_x, mu_r = x.mean(1, keepdim=True), r.mean(1, keepdim=True)
    cx = torch.cov(x, correction=0)
    cr = torch.cov(r, correction=0)
    a = _sqrtm(cx)
    a_inv = _sqrtm(cx, inverse=True)
    t = a_inv @ _sqrtm(a @ cr @ a) @ a_inv
    return (t @ (x - mu_x) + mu_r).reshape(image.shape).to(image.dtype)
