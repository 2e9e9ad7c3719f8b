"""The vision-aided CLIP discriminator of img2img-turbo, on open_clip through `eval.clip` (imports torch).

Reference: `vision_aided_loss.Discriminator(cv_type='clip', output_type='conv_multi_level', diffaug=True)`
(nupurkmr9/vision-aided-gan, `vision_aided_loss/cvmodel.py`, `cv_discriminator.py`, `cv_losses.py`), used by
img2img-turbo's training scripts with `loss_type='multilevel_sigmoid_s'` (paired) / `'multilevel_sigmoid'`
(unpaired).

- Backbone: the frozen CLIP ViT-B/32 visual tower (`eval.clip.IMG2IMG_TURBO_CLIP`; the tiny preset uses the tiny
  open_clip ViT). Input x in [-1, 1] -> DiffAugment('color,translation,cutout') -> x*0.5+0.5 ->
  F.interpolate(224, mode='area') -> CLIP mean/std. Features: the patch tokens after transformer blocks 4 and 8
  (B x width x 7 x 7) and the projected CLS embedding (B x embed_dim), i.e. `feat_points = [0, 4, 8, L]`. A ViT
  with another depth L uses blocks max(1, L//3) and max(2, 2L//3) (the tiny 2-block ViT: blocks 1 and 2).
- Trainable heads (`MultiLevelDViT(level=3, in_ch1=768, in_ch2=512, out_ch=256)`): per spatial level
  SN-Conv3x3(width->256) -> LeakyReLU(0.2) -> BlurPool(4-tap, stride 1, zero pad) -> SN-Conv1x1(256->1, stride 2);
  for the CLS level SN-Linear(embed->256) -> LeakyReLU(0.2) -> SN-Linear(256->1). SN = spectral norm, the hook
  version vision_aided_loss uses (`torch.nn.utils.spectral_norm`: no power iteration at init, one per training
  forward). `torch.nn.utils.parametrizations.spectral_norm` (15 iterations at init, u then v) on the same weights
  and seed puts the heads' train-mode logits rel 0.15 apart at the first forward, 0.049 after 5, 0.020 after 10,
  0.006 after 20 (real widths 768/512; the tiny preset's 64/32: 0.23, 0.061, 0.029, 0.013).
- Loss (`multilevel_loss`): per level BCE-with-logits against 1 (real, and the generator's target) or 0 (fake),
  averaged over the spatial map, summed over levels -> B x 1. The `_s` variant uses the one-sided smoothed real
  target 0.8 (alpha=0.8).

One frozen backbone may be shared by several discriminators (CycleGAN-Turbo has two; upstream loads CLIP twice).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm  # the hook version vision_aided_loss uses (not parametrizations)

LOSS_TYPES = {"multilevel_sigmoid": 1.0, "multilevel_sigmoid_s": 0.8}
DIFFAUG_POLICY = "color,translation,cutout"  # CVBackbone(diffaug=True)


# --- DiffAugment (Zhao et al. 2020), as vision_aided_loss/DiffAugment_pytorch.py -------------------------------------
def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: Any) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu" if generator is not None else x.device,
                      dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def _randint(low: int, high: int, shape: tuple[int, ...], x: torch.Tensor, generator: Any) -> torch.Tensor:
    dev = "cpu" if generator is not None else x.device
    return torch.randint(low, high, shape, generator=generator, device=dev).to(x.device)


def rand_brightness(x: torch.Tensor, g: Any = None) -> torch.Tensor:
    return x + (_rand((x.size(0), 1, 1, 1), x, g) - 0.5)


def rand_saturation(x: torch.Tensor, g: Any = None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.size(0), 1, 1, 1), x, g) * 2) + mean


def rand_contrast(x: torch.Tensor, g: Any = None) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand((x.size(0), 1, 1, 1), x, g) + 0.5) + mean


def rand_translation(x: torch.Tensor, g: Any = None, ratio: float = 0.125) -> torch.Tensor:
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    tx = _randint(-shift_x, shift_x + 1, (x.size(0), 1, 1), x, g)
    ty = _randint(-shift_y, shift_y + 1, (x.size(0), 1, 1), x, g)
    gb, gx, gy = torch.meshgrid(torch.arange(x.size(0), device=x.device), torch.arange(x.size(2), device=x.device),
                                torch.arange(x.size(3), device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
    gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, g: Any = None, ratio: float = 0.5) -> torch.Tensor:
    cut = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    ox = _randint(0, x.size(2) + (1 - cut[0] % 2), (x.size(0), 1, 1), x, g)
    oy = _randint(0, x.size(3) + (1 - cut[1] % 2), (x.size(0), 1, 1), x, g)
    gb, gx, gy = torch.meshgrid(torch.arange(x.size(0), device=x.device), torch.arange(cut[0], device=x.device),
                                torch.arange(cut[1], device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - cut[0] // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy - cut[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS = {"color": (rand_brightness, rand_saturation, rand_contrast), "translation": (rand_translation,),
               "cutout": (rand_cutout,)}


def diff_augment(x: torch.Tensor, policy: str = DIFFAUG_POLICY, generator: Any = None) -> torch.Tensor:
    """Differentiable augmentation of a B x C x H x W batch (same transforms for real and fake)."""
    for p in filter(None, policy.split(",")):
        for fn in AUGMENT_FNS[p]:
            x = fn(x, generator)
    return x.contiguous()


# --- heads ------------------------------------------------------------------------------------------------------------
class BlurPool(nn.Module):
    """antialiased-cnns BlurPool as vision-aided-gan uses it: [1,3,3,1] x [1,3,3,1] / 64, depthwise, zero pad."""

    def __init__(self, channels: int, filt_size: int = 4, stride: int = 1, pad_off: int = 0):
        super().__init__()
        a = torch.tensor({3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}[filt_size])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))
        p = int((filt_size - 1) / 2) + pad_off
        self.pad = nn.ZeroPad2d([p, p, p, p])
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])


class MultiLevelHeads(nn.Module):
    """`MultiLevelDViT(level=3, in_ch1=width, in_ch2=embed_dim, out_ch=256)` with down=1."""

    def __init__(self, width: int, embed_dim: int, out_ch: int = 256, levels: int = 3):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.decoder = nn.ModuleList([
            nn.Sequential(spectral_norm(nn.Conv2d(width, out_ch, kernel_size=3, stride=1, padding=1)), act,
                          BlurPool(out_ch, stride=1), spectral_norm(nn.Conv2d(out_ch, 1, kernel_size=1, stride=2)))
            for _ in range(levels - 1)
        ])
        self.decoder.append(nn.Sequential(spectral_norm(nn.Linear(embed_dim, out_ch)), act))
        self.out = spectral_norm(nn.Linear(out_ch, 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        preds = [self.decoder[i](f).squeeze(1) for i, f in enumerate(feats[:-1])]
        preds.append(self.out(self.decoder[-1](feats[-1].float())))
        return preds


def multilevel_sigmoid_loss(preds: list[torch.Tensor], target: float) -> torch.Tensor:
    """`multilevel_loss`: sum over levels of BCE-with-logits (spatial maps averaged) -> B x 1."""
    loss = 0
    for p in preds:
        each = F.binary_cross_entropy_with_logits(p, torch.full_like(p, target), reduction="none")
        if each.ndim > 2:
            each = each.mean([1, 2]).reshape(-1, 1)
        loss = loss + each
    return loss


# --- backbone + discriminator -----------------------------------------------------------------------------------------
def feature_blocks(depth: int) -> tuple[int, int]:
    """Transformer blocks (1-based count) whose outputs feed the spatial heads: (4, 8) for a 12-block ViT."""
    return max(1, depth // 3), max(min(depth, 2), 2 * depth // 3)


class ClipFeatures(nn.Module):
    """Frozen multi-level CLIP ViT features of [-1, 1] images (`vision_aided_loss.cvmodel.CLIP`)."""

    def __init__(self, clip: Any):
        super().__init__()
        self.clip = clip  # eval.clip.ClipModel (frozen, shared)
        visual = clip.model.visual
        depth = len(visual.transformer.resblocks)
        self.blocks = feature_blocks(depth)
        self.width = int(visual.transformer.width)
        self.embed_dim = int(visual.output_dim)
        self.size = int(clip.image_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        visual = self.clip.model.visual
        x = F.interpolate(x * 0.5 + 0.5, size=(self.size, self.size), mode="area")
        x = (x - self.clip.mean) / self.clip.std
        dtype = visual.conv1.weight.dtype
        out = visual.forward_intermediates(x.to(dtype), indices=[b - 1 for b in self.blocks], output_fmt="NCHW")
        return [*(f.float() for f in out["image_intermediates"]), out["image_features"].float()]


class VisionAidedDiscriminator(nn.Module):
    """CLIP-feature multi-level discriminator: frozen `ClipFeatures` + trainable `MultiLevelHeads`.

    `forward(x, for_real=..., for_G=...)` returns the per-sample loss (B x 1) like the vision_aided_loss object;
    `logits(x)` returns the raw per-level predictions.
    """

    def __init__(self, features: ClipFeatures, loss_type: str = "multilevel_sigmoid", diffaug: bool = True):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown GAN loss {loss_type!r}; choose one of {sorted(LOSS_TYPES)}")
        self.cv_ensemble = features  # the authors' attribute name for the frozen part
        self.heads = MultiLevelHeads(features.width, features.embed_dim)
        self.loss_type = loss_type
        self.alpha = LOSS_TYPES[loss_type]
        self.policy = DIFFAUG_POLICY if diffaug else ""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def train(self, mode: bool = True) -> VisionAidedDiscriminator:
        super().train(mode)
        self.cv_ensemble.eval()  # the backbone always stays in eval mode (vision_aided Discriminator.train)
        return self

    def logits(self, x: torch.Tensor, generator: Any = None) -> list[torch.Tensor]:
        if self.policy:
            x = diff_augment(x, self.policy, generator)
        return self.heads(self.cv_ensemble(x))

    def forward(self, x: torch.Tensor, for_real: bool = True, for_G: bool = False,
                generator: Any = None) -> torch.Tensor:
        target = self.alpha if (for_real or for_G) else 0.0
        return multilevel_sigmoid_loss(self.logits(x, generator), target)


def build_discriminator(preset: str, device: Any, loss_type: str, *, features: ClipFeatures | None = None,
                        model_id: str | None = None, seed: int = 0) -> VisionAidedDiscriminator:
    """A discriminator on the shared frozen CLIP (`eval.clip.load_clip(IMG2IMG_TURBO_CLIP, preset)`); heads are
    initialised under `seed` (PyTorch's default init, as vision_aided_loss)."""
    from eval.clip import IMG2IMG_TURBO_CLIP, load_clip

    from .generator import seeded

    if features is None:
        features = ClipFeatures(load_clip(model_id or IMG2IMG_TURBO_CLIP, preset, str(device)))
    with seeded(seed):
        disc = VisionAidedDiscriminator(features, loss_type)
    return disc.to(device)
