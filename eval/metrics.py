"""The metric registry: each metric declares what it measures, its direction, range, task kinds, inputs and version.

Each metric's card (`MetricSpec`: `definition` names window, reduction, resize kernel, model id and pretrained tag;
`reference` names the implementation its numbers equal) is written into every run's metric_info.json and report:
  fid, kid          clean-fid 0.1.35 "clean" mode with the TF-FID Inception; clean-fid's folder discovery; KID seeded.
                    Distribution metrics (per_image=False): `compute_fid` / `compute_kid` (eval.fid) against a
                    reference set; n_gen and n_ref reported (FID is biased at small N: compare only at equal N).
  dino_struct       Splice: MSE between the cosine self-similarities of DINO ViT-B/8 block-11 keys (CLS included)
                    of the output and of the input; the preprocessing variant is named ("splice" default, see
                    eval.dino.DinoPreprocess for "img2img-turbo" and "pie-bench").
  dino_struct_v2    The same on DINOv2 ViT-B/14 block-11 keys: a held-out structure encoder, since DiffuseIT
                    optimises exactly the DINO ViT-B/8 keys dino_struct reads (report both).
  clip_score        torchmetrics CLIPScore per image: 100 * max(cos(E_I(out), E_T(tgt_prompt)), 0). (torchmetrics
                    clamps the batch mean instead; CLIP cosines are positive in practice, so the means agree.)
  clip_directional  diffusers doc / StyleGAN-NADA: cos(E_I(out) - E_I(in), E_T(tgt) - E_T(src)), L2-normalised
                    embeddings (0 when either difference is zero, as F.cosine_similarity gives).
  clip_accuracy     pix2pix-zero: 1 if cos(E_I(out), E_T(tgt)) > cos(E_I(out), E_T(src)) else 0; the mean is the
                    share of successful edits.
                    The CLIP metrics embed images with open_clip's own eval preprocessing (eval.clip, reference path).
  lpips             LPIPS-alex (default) v0.1 to the input (unpaired/edit) or to the target (paired): `against`.
  psnr              10 log10(1 / MSE) per image, data range 1 (inf for identical images).
  ssim              Wang et al. 2004 with a Gaussian window: 11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1,
                    population covariances, per channel, mean over the valid region (the pixels whose whole window
                    lies inside the image) and the channels: scikit-image's structural_similarity(
                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1). Not scikit-image's
                    default (7 x 7 uniform window, sample covariances) and not torchmetrics' SSIM (which also
                    averages the border, where its window reaches into padding).

Per-image metrics are called as `metric(images, *, inputs=None, targets=None, src_prompts=None, tgt_prompts=None,
references=None, masks=None) -> Tensor[B]` on float B x 3 x H x W tensors in [0, 1] and reject anything outside that
contract.
This module imports no torch until a metric is built or called (listing metrics stays cheap).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from eval.encoders import check_preset
from eval.store import hash_obj
from eval.vocab import KINDS as TASK_KINDS

if TYPE_CHECKING:
    import torch

KINDS = TASK_KINDS  # the shared vocabulary (eval.vocab)
NEEDS = ("input", "target", "src_prompt", "tgt_prompt", "reference", "reference_set", "mask")
"""What a metric reads besides the output: the translated image's input, its ground-truth target, the source and
target prompts, the style reference image, (distribution metrics) a reference set of target-domain images, or an
edit mask (white = the region to edit; PIE-Bench's region metrics, eval.region_metrics)."""
DIRECTIONS = ("lower", "higher")
INF = math.inf


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is (the registry validates every field)."""

    name: str
    direction: str  # which way is better
    range: tuple[float, float]
    kinds: frozenset[str]  # task kinds it applies to
    needs: tuple[str, ...]
    version: str  # bump when the numbers can change: it keys the caches
    preprocessing: str  # default preprocessing (instances report theirs, options included)
    per_image: bool
    encoder: str | None  # "inception" | "dino" | "clip" | "lpips" | None
    description: str
    reads: str = ""  # the learned features it compares, e.g. "dino-vitb8/block11/keys" (see MethodCard.optimises)
    definition: str = ""  # the exact definition: window, reduction, resize kernel, model id, pretrained tag
    reference: str = ""  # the reference implementation its numbers equal (and how closely)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = sorted(self.kinds)
        return d


_REGISTRY: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator adding a metric to the registry after validating its spec."""
    spec = getattr(cls, "spec", None)
    if not isinstance(spec, MetricSpec):
        raise TypeError(f"{cls.__name__} needs a `spec: MetricSpec` class attribute")
    problems = []
    if not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name):
        problems.append(f"name {spec.name!r} must be lowercase letters, digits and underscores")
    if spec.name in _REGISTRY:
        problems.append(f"name {spec.name!r} is already registered")
    if spec.direction not in DIRECTIONS:
        problems.append(f"direction {spec.direction!r} not in {DIRECTIONS}")
    lo, hi = spec.range
    if not lo < hi:
        problems.append(f"range {spec.range} is empty")
    if not spec.kinds or not spec.kinds <= set(KINDS):
        problems.append(f"kinds {sorted(spec.kinds)} must be a non-empty subset of {KINDS}")
    if not set(spec.needs) <= set(NEEDS):
        problems.append(f"needs {spec.needs} must be a subset of {NEEDS}")
    if not spec.version or not spec.preprocessing:
        problems.append("version and preprocessing must be non-empty")
    if problems:
        raise ValueError(f"cannot register metric {cls.__name__}: " + "; ".join(problems))
    _REGISTRY[spec.name] = cls
    return cls


def list_metrics() -> list[str]:
    """Registered metric names."""
    return list(_REGISTRY)


def metric_specs() -> dict[str, MetricSpec]:
    """name -> MetricSpec of every registered metric."""
    return {name: cls.spec for name, cls in _REGISTRY.items()}


def metrics_for_kind(kind: str) -> list[str]:
    """Names of the metrics that apply to a task kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known kinds: {KINDS}")
    return [name for name, cls in _REGISTRY.items() if kind in cls.spec.kinds]


def get_metric(name: str, *, preset: str = "paper", device: str = "cpu", **options: Any) -> Metric:
    """Build a metric by name; `options` override its defaults (e.g. model=..., net=..., against=...)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; known metrics: {list_metrics()}")
    return _REGISTRY[name](preset=preset, device=device, **options)


class Metric:
    """Base of all metrics: options, provenance (`info`), cache identity and the input guards."""

    spec: ClassVar[MetricSpec]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, preset: str = "paper", device: str = "cpu", **options: Any):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise TypeError(f"{self.spec.name}: unknown options {unknown}; known: {sorted(self.defaults)}")
        self.preset = check_preset(preset)
        self.device = device
        self.options = {**self.defaults, **options}
        self._validate_options()

    def _validate_options(self) -> None:
        """Check option values early (subclasses)."""

    # --- provenance ---------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def direction(self) -> str:
        return self.spec.direction

    @property
    def needs(self) -> tuple[str, ...]:
        return self.spec.needs

    @property
    def preprocessing(self) -> str:
        return self.spec.preprocessing

    def encoder_info(self) -> Any:
        """The EncoderInfo of the encoder this metric runs on (loads it), or None for pixel metrics."""
        return None

    @property
    def weights(self) -> str:
        """The encoder's weights label ("real" / "random"), or "none" for metrics without learned weights."""
        info = self.encoder_info()
        return info.weights if info is not None else "none"

    def info(self) -> dict[str, Any]:
        """Everything a table needs next to the number: spec, options, preprocessing, encoder provenance."""
        enc = self.encoder_info()
        return {**self.spec.as_dict(), "options": dict(self.options), "preprocessing": self.preprocessing,
                "preset": self.preset, "weights": self.weights, "encoder_info": enc.as_dict() if enc else None}

    def identity(self) -> str:
        """Cache key part: changes whenever this metric's numbers could change."""
        enc = self.encoder_info()
        return hash_obj(self.spec.name, self.spec.version, self.preprocessing, self.options,
                        enc.identity() if enc else None)


class PerImageMetric(Metric):
    """A metric with one value per image, computed on [0,1] tensors (see the module docstring)."""

    def __call__(self, images: torch.Tensor, *, inputs: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None, src_prompts: list[str] | str | None = None,
                 tgt_prompts: list[str] | str | None = None, references: torch.Tensor | None = None,
                 masks: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        from eval.images import check_images, check_prompts

        images = check_images(images, "images", self.name)
        b = images.shape[0]
        if masks is not None and masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks.expand(-1, 3, -1, -1)  # a one-channel mask is fine
        given = {"input": inputs, "target": targets, "src_prompt": src_prompts, "tgt_prompt": tgt_prompts,
                 "reference": references, "mask": masks}
        args: dict[str, Any] = {}
        for need in self.required(given):
            value = given[need]
            if value is None:
                raise ValueError(f"{self.name} needs `{need}s` (it compares the output with them)")
            if need.endswith("prompt"):
                args[need] = check_prompts(value, b, f"{need}s", self.name)
            else:
                args[need] = check_images(value, f"{need}s", self.name, batch=b).to(self.device)
        with torch.no_grad():
            out = self.compute(images.to(self.device), **args)
        return out.detach().float().cpu()

    def required(self, given: dict[str, Any]) -> tuple[str, ...]:
        """The needs for this call (LPIPS picks input or target)."""
        return self.needs

    def compute(self, images: torch.Tensor, **args: Any) -> torch.Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# distribution metrics
# ---------------------------------------------------------------------------------------------------------------

_FID_KINDS = frozenset({"unpaired", "paired", "mask-to-image", "sketch-to-image"})
_INCEPTION_PRE = "clean-fid 'clean': PNG/uint8 -> PIL bicubic float resize to 299 -> (x-128)/128 -> pool_3 features"
_FOLDERS = ("folders: clean-fid's discovery (recursive, extensions bmp jpg jpeg pgm png ppm tif tiff webp npy JPEG JPG "
            "PNG matched case-sensitively, hidden files and folders skipped, sorted by path)")
_INCEPTION_DEF = ("Inception-v3 of TF-FID (2015-12-05 graph, TorchScript port), pool_3 2048-d; images quantised to "
                  "uint8, PIL bicubic resize of each float32 channel to 299 x 299")
_CLIP_PRE = "open_clip eval preprocess (PIL bicubic shorter side, centre crop) on uint8 images; open_clip tokenizer"
_CLIP_DEF = ("model id ViT-L-14/openai (open_clip arch ViT-L-14, pretrained tag 'openai': OpenAI's released weights, "
             "= HF openai/clip-vit-large-patch14) unless `model` says otherwise; image: uint8 -> PIL bicubic resize "
             "of the shorter side to 224 (long side truncated) -> centre crop 224 (offset rounded) -> ToTensor -> "
             "Normalize(OpenAI mean/std); text: open_clip BPE, 77 tokens; embeddings L2-normalised")
_CLIP_REF = ("open_clip 3.3.0 `create_model_and_transforms(...)[2]` (preprocess) + encode_image/encode_text on the "
             "same files: equal (max |diff| 0 in the preprocessed pixels)")


class DistributionMetric(Metric):
    """A metric of a set of outputs against a reference set: `metric(gen, ref) -> dict(value, n_gen, n_ref, ...)`.

    `gen` / `ref`: a folder, a list of image files, an N x D Inception feature array, or an N x 3 x H x W [0,1]
    tensor (see eval.fid). Features are computed once per set and cached on disk.
    """

    defaults: ClassVar[dict[str, Any]] = {"batch_size": 32}

    def encoder_info(self) -> Any:
        from eval.inception import load_inception

        return load_inception(self.preset, self.device).info

    def features(self, images: Any, *, cache: bool = True) -> tuple[Any, dict[str, Any]]:
        from eval.fid import inception_features

        return inception_features(images, preset=self.preset, device=self.device,
                                  batch_size=self.options["batch_size"], cache=cache)

    def __call__(self, gen: Any, ref: Any, *, cache: bool = True) -> dict[str, Any]:
        g, gd = self.features(gen, cache=cache)
        r, rd = self.features(ref, cache=cache)
        return self.from_features(g, r, gd, rd)

    def from_features(self, gen: Any, ref: Any, gen_desc: dict | None = None,
                      ref_desc: dict | None = None) -> dict[str, Any]:
        raise NotImplementedError


@register_metric
class FID(DistributionMetric):
    """FID of outputs vs a reference set (clean-fid clean mode)."""

    spec = MetricSpec(
        "fid", "lower", (0.0, INF), _FID_KINDS, ("reference_set",), "2", f"{_INCEPTION_PRE}; {_FOLDERS}", False,
        "inception", "Frechet distance of Inception pool_3 features (clean-fid clean mode)",
        definition=f"{_INCEPTION_DEF}; |mu1-mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), np.cov (N-1); biased at small N "
                   "(N < 2048 gives a rank-deficient covariance): compare only at equal N",
        reference="clean-fid 0.1.35 compute_fid(mode='clean') / frechet_distance: equal to float noise "
                  "(SciPy-1.18-safe matrix square root)")

    def from_features(self, gen: Any, ref: Any, gen_desc: dict | None = None,
                      ref_desc: dict | None = None) -> dict[str, Any]:
        from eval.fid import distribution_result, fid_from_features

        return distribution_result("fid", fid_from_features(gen, ref), gen_desc or {}, ref_desc or {}, len(gen),
                                   len(ref), version=self.spec.version)


@register_metric
class KID(DistributionMetric):
    """KID of outputs vs a reference set, subsets drawn with a fixed seed."""

    spec = MetricSpec(
        "kid", "lower", (-INF, INF), _FID_KINDS, ("reference_set",), "2", f"{_INCEPTION_PRE}; {_FOLDERS}", False,
        "inception", "Kernel Inception distance (unbiased MMD^2, cubic kernel), seeded subsets",
        definition=f"{_INCEPTION_DEF}; unbiased MMD^2 with k(x,y) = (x.y/2048 + 1)^3, mean over 100 subsets of "
                   "min(n_gen, n_ref, 1000) images drawn with numpy seeded by `seed` (0)",
        reference="clean-fid 0.1.35 kernel_distance with np.random.seed(seed): equal")
    defaults: ClassVar[dict[str, Any]] = {"batch_size": 32, "seed": 0, "num_subsets": 100, "max_subset_size": 1000}

    def from_features(self, gen: Any, ref: Any, gen_desc: dict | None = None,
                      ref_desc: dict | None = None) -> dict[str, Any]:
        from eval.fid import distribution_result, kid_from_features

        o = self.options
        value = kid_from_features(gen, ref, seed=o["seed"], num_subsets=o["num_subsets"],
                                  max_subset_size=o["max_subset_size"])
        return distribution_result("kid", value, gen_desc or {}, ref_desc or {}, len(gen), len(ref),
                                   version=self.spec.version, seed=o["seed"], num_subsets=o["num_subsets"],
                                   subset_size=min(len(gen), len(ref), o["max_subset_size"]))


def compute_fid(gen: Any, ref: Any, *, preset: str = "paper", device: str = "cpu", cache: bool = True,
                **options: Any) -> dict[str, Any]:
    """FID of `gen` against `ref` (folders, file lists, N x D features or [0,1] tensors): dict(value, n_gen, n_ref,
    weights, ...). Equals clean-fid's frechet_distance on the same features."""
    return get_metric("fid", preset=preset, device=device, **options)(gen, ref, cache=cache)


def compute_kid(gen: Any, ref: Any, *, seed: int = 0, preset: str = "paper", device: str = "cpu", cache: bool = True,
                **options: Any) -> dict[str, Any]:
    """Seeded KID of `gen` against `ref`: dict(value, n_gen, n_ref, seed, subset_size, weights, ...)."""
    return get_metric("kid", preset=preset, device=device, seed=seed, **options)(gen, ref, cache=cache)


# ---------------------------------------------------------------------------------------------------------------
# per-image metrics
# ---------------------------------------------------------------------------------------------------------------


@register_metric
class DinoStruct(PerImageMetric):
    """Splice/img2img-turbo DINO structure distance to the input."""

    spec = MetricSpec(
        "dino_struct", "lower", (0.0, 4.0), frozenset({"unpaired", "text-edit", "image-guided"}), ("input",), "2",
        "variant splice: [0,1] tensor -> Resize(224, max_size=480, bilinear, no antialias) -> ImageNet normalise; "
        "DINO interpolate_pos_encoding; DINO ViT-B/8 block 11 keys",
        True, "dino", "Splice structure distance: MSE of DINO key self-similarities, output vs input",
        "dino-vitb8/block11/keys",
        definition="DINO ViT-B/8 (torch.hub dino_vitb8 = timm vit_base_patch8_224.dino), block 11 attn.qkv keys, "
                   "heads concatenated, CLS included; cosine self-similarity (norms clamped 1e-8); MSE over all "
                   "T x T entries per image; variant named by `variant` (splice | img2img-turbo | pie-bench)",
        reference="Splice util/losses.py calculate_global_ssim_loss + models/extractor.py (DINO hub "
                  "interpolate_pos_encoding), transcribed: equal to float noise",
    )
    defaults: ClassVar[dict[str, Any]] = {"block": 11, "variant": "splice", "model": "dino-vitb8"}

    def _validate_options(self) -> None:
        from eval.dino import get_dino_model, get_preprocess

        get_preprocess(self.options["variant"])
        get_dino_model(self.options["model"])

    def encoder(self) -> Any:
        """The (cached) encoder this metric runs on."""
        from eval.dino import load_dino

        return load_dino(self.preset, self.device, model=self.options["model"])

    def encoder_info(self) -> Any:
        return self.encoder().info

    @property
    def preprocessing(self) -> str:
        from eval.dino import get_preprocess

        return f"{get_preprocess(self.options['variant']).describe()}; {self.encoder().info.arch} " \
               f"block {self.options['block']} keys (CLS included), cosine self-similarity, MSE"

    def compute(self, images: torch.Tensor, *, input: torch.Tensor) -> torch.Tensor:
        return self.encoder().structure_distance(images, input, block=self.options["block"],
                                                 variant=self.options["variant"])


@register_metric
class DinoStructV2(DinoStruct):
    """The structure distance on a held-out encoder (DINOv2 ViT-B/14), for methods that optimise DINO ViT-B/8."""

    spec = MetricSpec(
        "dino_struct_v2", "lower", (0.0, 4.0), frozenset({"unpaired", "text-edit", "image-guided"}), ("input",),
        "2", "variant splice: [0,1] tensor -> Resize(224, max_size=480, bilinear, no antialias) -> ImageNet "
        "normalise; DINO interpolate_pos_encoding; DINOv2 ViT-B/14 block 11 keys",
        True, "dino", "Held-out structure distance: as dino_struct, on DINOv2 ViT-B/14 keys (no method optimises "
        "them)", "dinov2-vitb14/block11/keys",
        definition="DINOv2 ViT-B/14 (timm vit_base_patch14_dinov2.lvd142m), block 11 keys, otherwise as dino_struct",
        reference="no published reference: dino_struct's definition on another encoder",
    )
    defaults: ClassVar[dict[str, Any]] = {"block": 11, "variant": "splice", "model": "dinov2-vitb14"}


class _ClipMetric(PerImageMetric):
    """Shared CLIP plumbing: the model option (default DEFAULT_METRIC_CLIP), the encoder, prompt embeddings."""

    defaults: ClassVar[dict[str, Any]] = {"model": None}

    def _validate_options(self) -> None:
        from eval.clip import DEFAULT_METRIC_CLIP, parse_model_id

        self.options["model"] = self.options["model"] or DEFAULT_METRIC_CLIP
        parse_model_id(self.options["model"])

    def encoder(self) -> Any:
        """The (cached) encoder this metric runs on."""
        from eval.clip import load_clip

        return load_clip(self.options["model"], self.preset, self.device)

    def encoder_info(self) -> Any:
        return self.encoder().info

    @property
    def preprocessing(self) -> str:
        return f"CLIP {self.options['model']} ({self.encoder().info.arch}): {self.encoder().info.preprocessing}"

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised embeddings of `prompts`, each distinct prompt encoded once."""
        import torch

        unique = list(dict.fromkeys(prompts))
        emb = self.encoder().encode_text(unique)
        return emb[torch.tensor([unique.index(p) for p in prompts], device=emb.device)]


@register_metric
class ClipScore(_ClipMetric):
    """CLIP score of the output against the target prompt (0-100)."""

    spec = MetricSpec(
        "clip_score", "higher", (0.0, 100.0),
        frozenset({"unpaired", "paired", "text-edit", "mask-to-image", "sketch-to-image"}), ("tgt_prompt",), "2",
        _CLIP_PRE, True, "clip",
        "torchmetrics CLIPScore: 100 * max(cos(image, target prompt), 0); scale 0-100, model id reported",
        "clip:ViT-L-14/openai", definition=f"100 * max(cos(E_I(out), E_T(tgt_prompt)), 0) per image; {_CLIP_DEF}",
        reference=_CLIP_REF,
    )

    def compute(self, images: torch.Tensor, *, tgt_prompt: list[str]) -> torch.Tensor:
        e_i = self.encoder().encode_image_reference(images)
        e_t = self.text_embeddings(tgt_prompt)
        return 100.0 * (e_i * e_t).sum(-1).clamp(min=0)


@register_metric
class ClipDirectional(_ClipMetric):
    """Agreement of the image edit direction with the prompt edit direction."""

    spec = MetricSpec(
        "clip_directional", "higher", (-1.0, 1.0), frozenset({"unpaired", "text-edit"}),
        ("input", "src_prompt", "tgt_prompt"), "2",
        _CLIP_PRE, True, "clip",
        "CLIP directional similarity: cos(E_I(out) - E_I(in), E_T(tgt) - E_T(src)), normalised embeddings",
        "clip:ViT-L-14/openai", definition=f"cos(E_I(out) - E_I(in), E_T(tgt) - E_T(src)) per image; {_CLIP_DEF}",
        reference=_CLIP_REF,
    )

    def compute(self, images: torch.Tensor, *, input: torch.Tensor, src_prompt: list[str],
                tgt_prompt: list[str]) -> torch.Tensor:
        from torch.nn import functional as F

        clip = self.encoder()
        d_img = clip.encode_image_reference(images) - clip.encode_image_reference(input)
        d_txt = self.text_embeddings(tgt_prompt) - self.text_embeddings(src_prompt)
        return F.cosine_similarity(d_img, d_txt, dim=-1)


@register_metric
class ClipAccuracy(_ClipMetric):
    """pix2pix-zero's per-image edit success (1/0)."""

    spec = MetricSpec(
        "clip_accuracy", "higher", (0.0, 1.0), frozenset({"unpaired", "text-edit"}), ("src_prompt", "tgt_prompt"),
        "2", _CLIP_PRE, True, "clip",
        "pix2pix-zero CLIP accuracy: 1 if the output is closer (cosine) to the target than to the source prompt",
        "clip:ViT-L-14/openai",
        definition=f"1 if cos(E_I(out), E_T(tgt)) > cos(E_I(out), E_T(src)) else 0, per image; {_CLIP_DEF}",
        reference=_CLIP_REF,
    )

    def compute(self, images: torch.Tensor, *, src_prompt: list[str], tgt_prompt: list[str]) -> torch.Tensor:
        e_i = self.encoder().encode_image_reference(images)
        to_tgt = (e_i * self.text_embeddings(tgt_prompt)).sum(-1)
        to_src = (e_i * self.text_embeddings(src_prompt)).sum(-1)
        return (to_tgt > to_src).float()


@register_metric
class LPIPSMetric(PerImageMetric):
    """LPIPS distance to the input or the target (`against`)."""

    spec = MetricSpec(
        "lpips", "lower", (0.0, INF), frozenset(KINDS), ("input",), "1",
        "[0,1] -> [-1,1], no resize (same size required); LPIPS v0.1 linear heads", True, "lpips",
        "LPIPS distance to the input (unpaired/edit tasks) or to the target (paired tasks): option `against`",
        definition="LPIPS v0.1 (Zhang et al. 2018), `net` alex (default) or vgg with the learned linear heads: "
                   "unit-normalised features, squared differences weighted per channel, spatial mean, sum over "
                   "layers; inputs [0,1] -> [-1,1], no resize",
        reference="lpips 0.1.4 LPIPS(net=..., version='0.1')(x*2-1, y*2-1): equal (0 diff)",
    )
    defaults: ClassVar[dict[str, Any]] = {"net": "alex", "against": "auto"}
    AGAINST = ("auto", "input", "target")

    def _validate_options(self) -> None:
        if self.options["against"] not in self.AGAINST:
            raise ValueError(f"lpips: against={self.options['against']!r}; choose one of {self.AGAINST}")
        if self.options["net"] not in ("alex", "vgg"):
            raise ValueError(f"lpips: net={self.options['net']!r}; choose 'alex' or 'vgg'")

    @property
    def needs(self) -> tuple[str, ...]:
        return {"input": ("input",), "target": ("target",)}.get(self.options["against"], ("input",))

    def required(self, given: dict[str, Any]) -> tuple[str, ...]:
        """against='auto': the target when one is given (paired task), else the input."""
        if self.options["against"] == "auto":
            return ("target",) if given.get("target") is not None else ("input",)
        return self.needs

    def encoder(self) -> Any:
        """The (cached) encoder this metric runs on."""
        from eval.lpips_net import load_lpips

        return load_lpips(self.options["net"], self.preset, self.device)

    def encoder_info(self) -> Any:
        return self.encoder().info

    @property
    def preprocessing(self) -> str:
        o = self.options
        return f"LPIPS-{o['net']} v0.1 against {o['against']}: {self.encoder().info.preprocessing}"

    def compute(self, images: torch.Tensor, *, input: torch.Tensor | None = None,
                target: torch.Tensor | None = None) -> torch.Tensor:
        from eval.images import check_same_size

        other, what = (target, "targets") if target is not None else (input, "inputs")
        check_same_size(images, other, "images", what, self.name)
        return self.encoder()(images, other)


_PAIRED = frozenset({"paired", "mask-to-image", "sketch-to-image"})


@register_metric
class PSNR(PerImageMetric):
    """PSNR to the target (paired tasks)."""

    spec = MetricSpec("psnr", "higher", (0.0, INF), _PAIRED, ("target",), "1",
                      "[0,1] float, no resize, data_range 1, mean over channels and pixels", True, None,
                      "peak signal-to-noise ratio to the target: 10 log10(1 / MSE) in dB",
                      definition="10 log10(1 / MSE) in dB per image, MSE over the 3 channels and all pixels (float64), "
                                 "data range 1, no resize",
                      reference="skimage 0.26.0 peak_signal_noise_ratio(data_range=1): equal to float noise")

    def compute(self, images: torch.Tensor, *, target: torch.Tensor) -> torch.Tensor:
        import torch

        from eval.images import check_same_size

        check_same_size(images, target, "images", "targets", self.name)
        mse = ((images.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
        return 10.0 * torch.log10(1.0 / mse)


@register_metric
class SSIM(PerImageMetric):
    """SSIM to the target (paired tasks)."""

    spec = MetricSpec("ssim", "higher", (-1.0, 1.0), _PAIRED, ("target",), "1",
                      "[0,1] float, no resize, Gaussian window 11 sigma 1.5, K=(0.01,0.03), data_range 1, valid region",
                      True, None, "structural similarity to the target: Wang et al. 2004, Gaussian 11x11 sigma 1.5, "
                      "valid region",
                      definition="SSIM of Wang et al. 2004: normalised Gaussian window 11 x 11, sigma 1.5 (separable), "
                                 "K1 0.01, K2 0.03, data range 1, population covariances, per channel; mean over the "
                                 "valid region (window fully inside: a 5-pixel border excluded) and the 3 channels; "
                                 "not skimage's default (7 x 7 uniform, sample covariances), not torchmetrics' "
                                 "default reduction (includes the padded border)",
                      reference="skimage 0.26.0 structural_similarity(gaussian_weights=True, sigma=1.5, "
                                "use_sample_covariance=False, data_range=1, channel_axis=0): equal to float noise")

    def compute(self, images: torch.Tensor, *, target: torch.Tensor) -> torch.Tensor:
        from eval.images import check_same_size

        check_same_size(images, target, "images", "targets", self.name)
        return ssim(images, target)


def ssim(x: torch.Tensor, y: torch.Tensor, *, sigma: float = 1.5, win: int = 11, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0, border: str = "valid") -> torch.Tensor:
    """Per-image Gaussian SSIM of B x C x H x W tensors (differentiable), averaged over channels and pixels.

    Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5). `border="valid"` (the `ssim` metric) averages
    only where the whole window fits: equals skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0). `border="reflect"` (PIE-Bench's
    `bg_ssim`) is torchmetrics 1.9's StructuralSimilarityIndexMeasure default: reflect-padded by half a window,
    variances clamped at 0, every pixel averaged, so its numbers differ from the valid ones.
    """
    import torch
    from torch.nn import functional as F

    if border not in ("valid", "reflect"):
        raise ValueError(f"ssim border must be 'valid' or 'reflect', got {border!r}")
    x, y = x.double(), y.double()
    if border == "reflect":
        pad = (win - 1) // 2
        x, y = F.pad(x, (pad,) * 4, mode="reflect"), F.pad(y, (pad,) * 4, mode="reflect")
    elif min(x.shape[-2:]) < win:
        raise ValueError(f"ssim needs images of at least {win} x {win} pixels, got {tuple(x.shape[-2:])}")
    coords = torch.arange(win, dtype=torch.float64, device=x.device) - (win - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    gh = g.view(1, 1, 1, win).repeat(c, 1, 1, 1)
    gv = g.view(1, 1, win, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    if border == "reflect":
        sxx, syy = sxx.clamp(min=0), syy.clamp(min=0)
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


from eval import region_metrics as _region_metrics  # noqa: E402,F401  (registers PIE-Bench's region metrics)
