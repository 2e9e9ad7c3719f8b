"""PIE-Bench's metrics (Ju et al., "PnP Inversion", ICLR 2024): background preservation outside the edit mask, CLIP
similarity of the edited region, and its DINO structure distance.

Written from the definitions in PnPInversion `evaluation/evaluate.py` (calculate_metric) and
`evaluation/matrics_calculator.py` (MetricsCalculator). There the images are the source photo and the edited
output as [0,1] floats (uint8 / 255), `m` the decoded edit mask (1 = edit region, the 1-pixel image border included,
see datasets.pie_bench.mask_decode) and `b = 1 - m` the background. A "masked" metric multiplies BOTH images by the
mask and then computes the ordinary whole-image metric, so the zeroed pixels count in every mean:

  bg_mse    mean over 3 x H x W of (out * b - in * b)^2                      (torchmetrics MeanSquaredError)
  bg_psnr   10 log10(1 / bg_mse), data range 1                               (torchmetrics PeakSignalNoiseRatio)
  bg_ssim   Gaussian SSIM (11 x 11, sigma 1.5, K 0.01 / 0.03, data range 1) of out * b and in * b, both
            reflect-padded by 5 px, population variances clamped at 0, mean over all H x W pixels and channels
            (torchmetrics StructuralSimilarityIndexMeasure 1.9's default; it differs from the `ssim` metric,
            which averages the valid region only)
  bg_lpips  LPIPS v0.1 SqueezeNet (torchmetrics LearnedPerceptualImagePatchSimilarity(net_type='squeeze')) of
            out * b and in * b mapped to [-1, 1]
  clip_edited  100 * max(cos(E_I(uint8(out * m)), E_T(tgt_prompt)), 0): torchmetrics CLIPScore (ViT-L/14) of the
            output with the background blacked out ("CLIP similarity, edited"); the whole-image CLIP similarity is
            the `clip_score` metric
  dino_struct_pie  the `dino_struct` distance with PIE-Bench's preprocessing (variant "pie-bench": [0,255] floats
            into Splice's transform), output vs source, whole image

Undefined values are NaN, as PIE-Bench writes "nan": the background metrics when the mask covers the whole image,
clip_edited when it is empty. PIE-Bench reports each per edit type and over all 700 images; the per-image CSV of a
run carries the sample's `edit_type` for that grouping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from eval.metrics import INF, ClipScore, DinoStruct, MetricSpec, PerImageMetric, register_metric, ssim

if TYPE_CHECKING:
    import torch

_TEXT_EDIT = frozenset({"text-edit"})
_SOURCE = "PnPInversion evaluation/evaluate.py calculate_metric + evaluation/matrics_calculator.py"
_MASKING = ("both images multiplied by the background (1 - edit mask; the mask's 1-px border counts as edit region) "
            "before the whole-image metric, so zeroed pixels count in the mean; NaN when no background is left")


def region(masks: torch.Tensor) -> torch.Tensor:
    """The edit region as a B x 1 x H x W float 0/1 tensor from mask images (any channel count, >= 0.5 is in)."""
    return (masks[:, :1] >= 0.5).to(masks.dtype)


def background_mse(images: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image PIE-Bench background MSE (see the module docstring), float64."""
    keep = 1.0 - region(masks).double()
    return ((images.double() * keep - inputs.double() * keep) ** 2).mean(dim=(1, 2, 3))


class _Background(PerImageMetric):
    """Shared: compare output and source on the background only; NaN where the mask leaves none."""

    def compute(self, images: torch.Tensor, *, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        from eval.images import check_same_size

        check_same_size(images, input, "images", "inputs", self.name)
        check_same_size(images, mask, "images", "masks", self.name)
        keep = 1.0 - region(mask)
        value = self.masked(images * keep, input * keep).double()
        empty = keep.sum(dim=(1, 2, 3)) == 0
        return torch.where(empty.to(value.device), torch.full_like(value, float("nan")), value)

    def masked(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _bg_spec(name: str, direction: str, rng: tuple[float, float], what: str, definition: str, ref: str) -> MetricSpec:
    return MetricSpec(name, direction, rng, _TEXT_EDIT, ("input", "mask"), "1",
                      "[0,1] float, no resize; edit mask >= 0.5 is the edit region", True,
                      "lpips" if "lpips" in name else None,
                      f"PIE-Bench background preservation: {what} outside the edit mask",
                      definition=f"{definition}; {_MASKING}", reference=f"{_SOURCE}: {ref}")


@register_metric
class BackgroundMSE(_Background):
    """PIE-Bench: MSE between output and source on the background (lower = better preserved)."""

    spec = _bg_spec("bg_mse", "lower", (0.0, 1.0), "MSE", "mean over 3 x H x W of (out*b - in*b)^2, [0,1] floats",
                    "mse_unedit_part (torchmetrics MeanSquaredError)")

    def masked(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))


@register_metric
class BackgroundPSNR(_Background):
    """PIE-Bench: PSNR between output and source on the background (dB; higher = better preserved)."""

    spec = _bg_spec("bg_psnr", "higher", (0.0, INF), "PSNR (dB)", "10 log10(1 / bg_mse), data range 1",
                    "psnr_unedit_part (torchmetrics PeakSignalNoiseRatio(data_range=1.0))")

    def masked(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        import torch

        return 10.0 * torch.log10(1.0 / ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)))


@register_metric
class BackgroundSSIM(_Background):
    """PIE-Bench: SSIM between output and source on the background (higher = better preserved)."""

    spec = _bg_spec("bg_ssim", "higher", (-1.0, 1.0), "SSIM",
                    "Gaussian SSIM 11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, both images reflect-padded "
                    "by 5 px, population variances clamped at 0, mean over all H x W pixels and the channels",
                    "ssim_unedit_part (torchmetrics StructuralSimilarityIndexMeasure(data_range=1.0), 1.9 default "
                    "reduction)")

    def masked(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ssim(a, b, border="reflect")


@register_metric
class BackgroundLPIPS(_Background):
    """PIE-Bench: LPIPS (SqueezeNet) between output and source on the background (lower = better preserved)."""

    spec = _bg_spec("bg_lpips", "lower", (0.0, INF), "LPIPS-squeeze",
                    "LPIPS v0.1 with the SqueezeNet 1.1 trunk and its learned linear heads on out*b and in*b, "
                    "[0,1] -> [-1,1], no resize",
                    "lpips_unedit_part (torchmetrics LearnedPerceptualImagePatchSimilarity(net_type='squeeze'))")
    defaults: ClassVar[dict[str, Any]] = {"net": "squeeze"}

    def encoder(self) -> Any:
        from eval.lpips_net import load_lpips

        return load_lpips(self.options["net"], self.preset, self.device)

    def encoder_info(self) -> Any:
        return self.encoder().info

    def masked(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.encoder()(a, b)


@register_metric
class ClipEdited(ClipScore):
    """PIE-Bench: CLIP score of the edited region (output with the background blacked out) vs the target prompt."""

    spec = MetricSpec(
        "clip_edited", "higher", (0.0, 100.0), _TEXT_EDIT, ("tgt_prompt", "mask"), "1",
        "output * edit mask, quantised to uint8 as PIE-Bench does; then clip_score's preprocessing", True, "clip",
        "PIE-Bench CLIP similarity of the edited region: clip_score of the output with the background set to black",
        "clip:ViT-L-14/openai",
        definition="100 * max(cos(E_I(floor(255 * out * m) / 255), E_T(tgt_prompt)), 0) per image, m the edit mask; "
                   "NaN for an empty mask; encoders as clip_score",
        reference=f"{_SOURCE}: clip_similarity_target_image_edit_part (torchmetrics CLIPScore, "
                  "openai/clip-vit-large-patch14, img * mask cast with np.uint8)",
    )

    def compute(self, images: torch.Tensor, *, tgt_prompt: list[str], mask: torch.Tensor) -> torch.Tensor:
        import torch

        m = region(mask)
        cut = torch.floor(images * m * 255.0 + 1e-4) / 255.0  # np.uint8(img * mask): img is uint8, so exact
        value = super().compute(cut, tgt_prompt=tgt_prompt).double()
        empty = m.sum(dim=(1, 2, 3)) == 0
        return torch.where(empty, torch.full_like(value, float("nan")), value)


@register_metric
class DinoStructPie(DinoStruct):
    """PIE-Bench's structure distance: dino_struct with its "pie-bench" preprocessing."""

    spec = MetricSpec(
        "dino_struct_pie", "lower", (0.0, 4.0), _TEXT_EDIT, ("input",), "1",
        "variant pie-bench: [0,1] tensor * 255 -> Resize(224, max_size=480, bilinear, no antialias) -> ImageNet "
        "normalise; DINO interpolate_pos_encoding; DINO ViT-B/8 block 11 keys",
        True, "dino", "PIE-Bench structure distance: dino_struct on [0,255] inputs, as the authors compute it",
        "dino-vitb8/block11/keys",
        definition="dino_struct's definition with variant pie-bench (the image fed as 0-255 floats to Splice's "
                   "transform), output vs source, whole image",
        reference=f"{_SOURCE}: structure_distance (LossG.calculate_global_ssim_loss)",
    )
    defaults: ClassVar[dict[str, Any]] = {"block": 11, "variant": "pie-bench", "model": "dino-vitb8"}


def edit_type_means(per_image: Any) -> Any:
    """Mean, N and NaN count of every (method, task, edit_type, metric) of a per-image table that has an
    `edit_type` column (PIE-Bench's per-edit-type table), with an "all" row per (method, task, metric)."""
    import pandas as pd

    df = per_image[per_image["edit_type"].notna() & (per_image["edit_type"].astype(str) != "")].copy()
    cols = ["method", "task", "edit_type", "metric", "mean", "n", "n_nan"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["edit_type"] = df["edit_type"].astype(str)
    both = pd.concat([df, df.assign(edit_type="all")], ignore_index=True)
    out = both.groupby(["method", "task", "edit_type", "metric"], sort=True)["value"].agg(
        mean="mean", n="count", n_nan=lambda v: int(v.isna().sum())).reset_index()
    return out[cols]
