"""Condition input adapters: a task's condition image (B x C x H x W in [0, 1]) -> PITI's encoder input.

PITI's loaders (`image_datasets_*.py`) feed the encoder a 256 x 256 condition mapped to [-1, 1]:
- mask (3 ch): the RGB colour-coded label map, resized NEAREST (labels must not be blended; PIL picks pixel
  centres, which torch calls "nearest-exact"), ToTensor +
  Normalize(0.5, 0.5) -> [-1, 1] (image_datasets_mask.py);
- sketch (1 ch): a binary edge map -> `cv2.distanceTransform(255 - edge, DIST_L1, 3)` clipped to [0, 255], /255,
  -> [-1, 1] (image_datasets_sketch.py). We reuse `datasets.piti_data.edge_distance_transform` (one
  implementation). Edges are taken at the input's own resolution and then brought to 256 px: max-pooled when
  shrinking (thin strokes survive), nearest when enlarging; the bundled suite draws BLACK strokes on WHITE
  (`datasets.suite.sketch_from_photo`), PITI's HED maps are white on black: polarity "auto" decides per sample from
  the border (mostly light border -> dark strokes);
- depth (6 ch): normal RGB + colour-mapped depth RGB (image_datasets_depth.py), resized NEAREST, -> [-1, 1].
The unconditional input of classifier-free guidance is all ones (PITI image_datasets_*.py / glide_util.py
`th.ones_like(ref)`), an all-white condition in [-1, 1] space (`unconditional`).

Resizing: squash to 256 x 256 (aspect ratio not kept, as upstream) or, with keep_aspect, fit the long side and
pad: mask/depth with black (0 -> -1), sketch with "no edge" (distance 1 -> +1 after the transform).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import InputError

KINDS = ("mask", "sketch", "depth")
POLARITIES = ("auto", "black", "white")
#: a grey condition: every pixel's channels agree within this (8-bit rounding of a grey PNG is exact)
GREY_TOL = 2.0 / 255.0


def is_grey(cond: torch.Tensor) -> torch.Tensor:
    """Per sample: True when the condition is a black/white/grey image (1 channel, or 3 equal channels)."""
    if cond.shape[1] == 1:
        return torch.ones(cond.shape[0], dtype=torch.bool)
    if cond.shape[1] != 3:
        return torch.zeros(cond.shape[0], dtype=torch.bool)
    spread = (cond.amax(dim=1) - cond.amin(dim=1)).flatten(1).amax(dim=1)
    return (spread <= GREY_TOL).cpu()


def detect_kind(cond: torch.Tensor) -> list[str]:
    """mode "auto": sketch for grey conditions, depth for 6-channel ones, mask otherwise (per sample)."""
    if cond.shape[1] == 6:
        return ["depth"] * cond.shape[0]
    return ["sketch" if g else "mask" for g in is_grey(cond).tolist()]


def content_box(h: int, w: int, size: int, keep_aspect: bool) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an h x w input inside the size x size encoder input (squash: the whole)."""
    if not keep_aspect:
        return 0, 0, size, size
    s = size / max(h, w)
    th, tw = max(1, round(h * s)), max(1, round(w * s))
    return (size - th) // 2, (size - tw) // 2, th, tw


def _fit(x: torch.Tensor, size: int, keep_aspect: bool, pad_value: float, shrink: str) -> torch.Tensor:
    """Resize B x C x H x W to size x size: squash, or (keep_aspect) fit the long side and pad centred."""
    h, w = x.shape[-2:]
    _, _, th, tw = content_box(h, w, size, keep_aspect)
    if (th, tw) != (h, w):
        if shrink == "max" and (th < h or tw < w):
            x = F.adaptive_max_pool2d(x, (th, tw))
            if th > h or tw > w:
                x = F.interpolate(x, size=(th, tw), mode="nearest-exact")
        else:
            x = F.interpolate(x, size=(th, tw), mode="nearest-exact")
    if (th, tw) != (size, size):
        top, left = (size - th) // 2, (size - tw) // 2
        x = F.pad(x, (left, size - tw - left, top, size - th - top), value=pad_value)
    return x


def sketch_edges(cond: torch.Tensor, polarity: str = "auto") -> torch.Tensor:
    """B x 1 x H x W boolean edge maps of sketches (mean over channels, threshold 0.5)."""
    if polarity not in POLARITIES:
        raise InputError(f"piti: sketch_polarity must be one of {POLARITIES}, got {polarity!r}")
    g = cond.float().mean(dim=1, keepdim=True)
    if polarity == "auto":
        border = torch.cat([g[..., 0, :], g[..., -1, :], g[..., :, 0], g[..., :, -1]], dim=-1)
        dark_strokes = border.mean(dim=(1, 2)) > 0.5
    else:
        dark_strokes = torch.full((g.shape[0],), polarity == "black")
    dark = dark_strokes.view(-1, 1, 1, 1).to(g.device)
    return torch.where(dark, g < 0.5, g > 0.5)


def sketch_input(cond: torch.Tensor, size: int = 256, *, keep_aspect: bool = False, polarity: str = "auto"
                 ) -> torch.Tensor:
    """B x 1 x size x size distance-transform input in [-1, 1] (0 -> -1 on the strokes, +1 far from them)."""
    from datasets.piti_data import edge_distance_transform

    edges = sketch_edges(cond, polarity).float()
    edges = _fit(edges, size, keep_aspect, 0.0, shrink="max") > 0.5
    dt = [torch.from_numpy(edge_distance_transform(e[0].cpu().numpy())) for e in edges]
    return (torch.stack(dt)[:, None] * 2 - 1).to(device=cond.device, dtype=torch.float32)


def mask_input(cond: torch.Tensor, size: int = 256, *, keep_aspect: bool = False) -> torch.Tensor:
    """B x 3 x size x size colour mask in [-1, 1] (NEAREST resize)."""
    if cond.shape[1] != 3:
        raise InputError(f"piti: a semantic mask condition must be an RGB colour map (3 channels), got "
                         f"{cond.shape[1]} channels")
    return _fit(cond.float(), size, keep_aspect, 0.0, shrink="nearest") * 2 - 1


def depth_input(cond: torch.Tensor, size: int = 256, *, keep_aspect: bool = False) -> torch.Tensor:
    """B x 6 x size x size (normal RGB + depth colour map RGB) in [-1, 1] (NEAREST resize)."""
    if cond.shape[1] != 6:
        raise InputError(f"piti: a depth+normal condition has 6 channels (normal RGB, colour-mapped depth RGB), "
                         f"got {cond.shape[1]}")
    return _fit(cond.float(), size, keep_aspect, 0.0, shrink="nearest") * 2 - 1


def prepare_condition(cond: torch.Tensor, kind: str, size: int = 256, *, keep_aspect: bool = False,
                      polarity: str = "auto") -> torch.Tensor:
    """The encoder input of `kind` for a [0, 1] condition batch."""
    if kind == "mask":
        return mask_input(cond, size, keep_aspect=keep_aspect)
    if kind == "sketch":
        return sketch_input(cond, size, keep_aspect=keep_aspect, polarity=polarity)
    if kind == "depth":
        return depth_input(cond, size, keep_aspect=keep_aspect)
    raise InputError(f"piti: unknown condition kind {kind!r}; choose one of {KINDS}")


def unconditional(like: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """The classifier-free-guidance null condition: all ones (PITI glide_util.py `th.ones_like(cond_ref)`)."""
    return torch.ones((batch, *like.shape[1:]), dtype=like.dtype, device=like.device)


__all__ = ["KINDS", "POLARITIES", "content_box", "detect_kind", "depth_input", "is_grey", "mask_input",
                      "prepare_condition", "sketch_edges", "sketch_input", "unconditional"]
