"""`piti`: Pretraining is All You Need for Image-to-Image Translation (Wang et al., 2022; arXiv 2205.12952).

A pretrained GLIDE diffusion model (base 64 px + upsampler 64 -> 256 px) is adapted to a task (semantic masks,
sketches, depth) by a task-specific encoder that maps the condition into GLIDE's text-token space: 256 context
tokens for the UNet's joint attention + a pooled token added to the time embedding. Sampling: base model with
classifier-free guidance against the all-ones null condition, 8-bit quantisation, upsampler with its own encoder
of the same condition (arXiv 2205.12952 sec. 3; authors' code PITI-Synthesis/PITI).

Call: `translate(TranslationInput(images, condition=cond), generator=[g1, ..., gB])` with `cond` B x 3 x H x W in
[0, 1] (or B x 1 / B x 6); without a condition the images are the condition (the paired layout's convention).
mode "auto": grey conditions (black/white sketches) go to the sketch models, others to the mask models. Conditions
are squashed to 256 x 256 (as upstream; keep_aspect=True pads instead); the output (256 px, tiny preset 64 px) is
resized back to the input size (bicubic, antialiased). Extras per sample: kind, guidance, step counts, timings and
(return_low_res) the quantised base sample.

Weights: preset "paper" = the official checkpoints (mask: HF `tfwang/PITI` base_mask.pt + upsample_mask.pt; sketch:
base_edge.pt + upsample_edge.pt, SharePoint links in the PITI README), or `--weights DIR` with those files or with
our converted layout (`convert.convert_official_dir`); preset "tiny" = random toy-width models of both kinds.
This module imports no torch: the networks live in model.py / unet.py / encoder.py, imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

from ..base import (
    HParam,
    InputError,
    MethodCard,
    TranslationInput,
    TranslationOutput,
    Translator,
    WeightsNotFoundError,
    per_sample_generators,
)
from ..registry import register

_SRC = "PITI-Synthesis/PITI"
PAPER_HUB = "tfwang/PITI"
MODES = ("auto", "mask", "sketch", "depth")
#: the tiny preset's step counts: 250 guided base steps + 27 upsampler steps cost ~5 s per 64 px sample on a 2-core
#: CPU even with toy networks; CI runs 10 + 10 (same algorithm, fewer steps; pix2pix-zero does the same).
TINY_DEFAULTS = {"base_respacing": "10", "upsample_respacing": "10"}
OFFICIAL_HELP = (
    "PITI's official checkpoints are not on this machine. Download them on a machine with internet: the mask "
    f"(COCO-Stuff) models from the Hugging Face repo {PAPER_HUB} (`hf download {PAPER_HUB} base_mask.pt "
    "upsample_mask.pt --local-dir DIR`), the sketch models base_edge.pt + upsample_edge.pt from the SharePoint links "
    "in the PITI README (github.com/PITI-Synthesis/PITI); copy DIR here and pass --weights DIR (or run the random "
    "tiny models with --preset tiny)."
)


@register
class PITI(Translator):
    card: ClassVar[MethodCard] = MethodCard(
        name="piti",
        paper="Pretraining is All You Need for Image-to-Image Translation",
        year=2022,
        url="https://arxiv.org/abs/2205.12952",
        kinds=frozenset({"mask-to-image", "sketch-to-image"}),
        needs_training=True,
        weights={"paper": PAPER_HUB, "tiny": "tiny:piti", "full-random": "full-random:piti"},
        defaults={
            "mode": HParam("auto", "ours: 'auto' = sketch models for grey (black/white) conditions, mask models "
                                   "otherwise; 'mask' / 'sketch' / 'depth' force one (PITI: one model pair per task)"),
            "base_respacing": HParam("250", f"{_SRC} image_sample.py prediction_respacing='250' (ADM section "
                                            "string; 'ddimN' with sampler='ddim')"),
            "sampler": HParam("ddpm", f"{_SRC} image_sample.py p_sample_loop (ancestral DDPM, learned variance); "
                                      "'ddim' is ours"),
            "ddim_eta": HParam(0.0, "DDIM (Song et al. 2021) eta; used only with sampler='ddim'"),
            "guidance_scale": HParam(1.3, f"{_SRC} sample.sh --sample_c 1.3"),
            "guidance": HParam("plain", f"{_SRC} glide_util.py: plain CFG eps_u + s (eps_c - eps_u) as released; "
                                        "'normalized' = the paper's normalized guidance (sec. 3; see sampling.py)"),
            "upsample_respacing": HParam("fast27", f"{_SRC} image_sample.py sr prediction_respacing='fast27'"),
            "upsample_temp": HParam(0.997, f"{_SRC} image_sample.py upsample_temp=0.997 (initial noise scale)"),
            "keep_aspect": HParam(False, f"{_SRC} image_datasets_*.py squash to 256 x 256; True = fit and pad"),
            "sketch_polarity": HParam("auto", "ours: 'black' strokes on white (bundled suite), 'white' on black "
                                              "(PITI HED maps), 'auto' = from the border"),
            "return_low_res": HParam(False, "ours: put the quantised 64 px base sample in the extras"),
        },
        license="MIT (authors' code and this implementation); GLIDE weights: MIT (openai/glide-text2im)",
        fixes=(
            "L0 smoothing of the upsampler's degradation works on [0, 1] floats (upstream degradation/l0smooth.py "
            "divides by 256 and casts to uint8, which turns the image black)",
            "the task encoder's cls_token and positional_embedding are initialised (upstream text2im_model.py "
            "creates them with th.empty and never initialises them)",
            "degradation kernel widths drawn as exactly 0 are floored at 1e-6 (a singular kernel, NaN, upstream)",
        ),
        variants={
            "guidance=normalized": (
                "the paper's normalized classifier-free guidance, reconstructed from the paper (sec. 3): the guided "
                "eps is rescaled to the conditional prediction's mean/std; the released code (glide_util.py) has "
                "plain CFG only. Not measured against the paper (no reference code exists)"),
            "sampler=ddim": "DDIM sampling of the base model (the released image_sample.py samples ancestral DDPM)",
            "keep_aspect": (
                "fit the condition's long side into 256 and pad (upstream squashes to 256 x 256, changing the "
                "aspect ratio of non-square inputs)"),
        },
        size_multiple=1,
        min_size=8,
    )

    tiny_defaults: ClassVar[Mapping[str, Any]] = TINY_DEFAULTS
    # image_sample.py truncates the base sample to 8 bits before the upsampler reads it (sampling.quantize_8bit)
    batch_equivalence: ClassVar[str] = "8bit-handoff"

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        _validate(config)

    def __init__(self, models: dict[str, dict[str, Any]], config: dict[str, Any], weights_id: str, device: Any,
                 dtype: Any, source: str = "") -> None:
        self.models = models  # kind -> {"base": PITIModel, "upsample": PITIModel}
        self.config = config
        self.weights_id = weights_id
        self.device = device
        self.dtype = dtype
        self.source = source
        self.history: list[dict[str, Any]] = []  # training log records of the last fit()

    @classmethod
    def from_pretrained(cls, source: str | PathLike | None = None, *, preset: str = "paper", device: str = "cpu",
                        dtype: Any = None, **overrides: Any) -> PITI:
        """`source`: "tiny:piti", a hub id holding the official files, or a local directory with the official .pt
        files or our layout (`<dir>/<kind>/{base,upsample}/`)."""
        from ..common.loading import parse_dtype

        config = cls.resolve_config(preset, overrides)
        src = str(source if source is not None else cls.card.weights_for(preset))
        torch_dtype = parse_dtype(dtype)
        want = None if config["mode"] == "auto" else [config["mode"]]
        models, wid = load_models(src, kinds=want, device=device, dtype=torch_dtype)
        return cls(models, config, wid, device, torch_dtype, src)

    def networks(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, pair in self.models.items():
            for role in ("base", "upsample"):
                out[f"{kind}.{role}.encoder"] = pair[role].encoder
                out[f"{kind}.{role}.unet"] = pair[role].decoder
        return out

    def kinds_for(self, cond: Any) -> list[str]:
        from .adapters import detect_kind

        mode = self.config["mode"]
        kinds = detect_kind(cond) if mode == "auto" else [mode] * int(cond.shape[0])
        missing = sorted(set(kinds) - set(self.models))
        if missing:
            have = ", ".join(sorted(self.models)) or "none"
            raise WeightsNotFoundError(
                f"piti: the condition needs the {'/'.join(missing)} models, but {self.source} holds only {have}. "
                + (OFFICIAL_HELP if "sketch" in missing or "mask" in missing else
                   "Train them with `benchmark.py train piti` (no official depth checkpoints exist).")
                + " Or force a kind with mode=mask|sketch.")
        return kinds

    def translate(self, batch: TranslationInput, *, generator: Any | Sequence[Any] | None = None
                  ) -> TranslationOutput:
        import torch
        import torch.nn.functional as F

        from .adapters import content_box, prepare_condition
        from .sampling import sample

        self.check_input(batch)
        cfg = self.config
        cond = batch.condition if batch.condition is not None else batch.images
        if cond.shape[1] not in (1, 3, 6):
            raise InputError(f"piti: a condition has 1 (sketch), 3 (mask / RGB sketch) or 6 (depth+normal) "
                             f"channels, got {cond.shape[1]}")
        b = len(batch)
        gens = per_sample_generators(generator, b)
        kinds = self.kinds_for(cond)
        h, w = cond.shape[-2:]
        images: list[Any] = [None] * b
        extras: list[dict[str, Any]] = [{} for _ in range(b)]
        with torch.inference_mode(False), torch.no_grad():
            for kind in dict.fromkeys(kinds):
                idx = [i for i, k in enumerate(kinds) if k == kind]
                pair = self.models[kind]
                size = pair["base"].config.cond_size
                enc_in = prepare_condition(cond[idx].float(), kind, size, keep_aspect=bool(cfg["keep_aspect"]),
                                           polarity=cfg["sketch_polarity"]).to(self.device)
                res = sample(pair["base"], pair["upsample"], enc_in, [gens[i] for i in idx],
                             base_respacing=cfg["base_respacing"], guidance_scale=float(cfg["guidance_scale"]),
                             guidance=cfg["guidance"], sampler=cfg["sampler"], eta=float(cfg["ddim_eta"]),
                             upsample_respacing=cfg["upsample_respacing"], upsample_temp=float(cfg["upsample_temp"]))
                y = (res.images.float() + 1) / 2
                if cfg["keep_aspect"]:  # drop the padding: the input's box, scaled to the output size
                    top, left, bh, bw = (round(v * y.shape[-1] / size) for v in content_box(h, w, size, True))
                    y = y[..., top:top + max(1, bh), left:left + max(1, bw)]
                if y.shape[-2:] != (h, w):  # back to the input size (the model's output is square, 256 / tiny 64)
                    y = F.interpolate(y, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
                y = y.clamp(0, 1).cpu()
                for j, i in enumerate(idx):
                    images[i] = y[j]
                    ex: dict[str, Any] = {"kind": kind, "guidance": cfg["guidance"],
                                          "guidance_scale": float(cfg["guidance_scale"]),
                                          "output_size": int(res.images.shape[-1]), **res.timings}
                    if cfg["return_low_res"]:
                        ex["low_res"] = ((res.low_res[j].float() + 1) / 2).cpu()
                    extras[i] = ex
        return TranslationOutput(images=torch.stack(images).to(torch.float32), extras=extras)

    # -- training (methods/piti/training.py) ---------------------------------------------------------------
    @classmethod
    def resolve_train_config(cls, preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The options `fit` will use on `preset` (checked, without loading anything)."""
        from .training import resolve_train_config

        return resolve_train_config(overrides, "tiny" if preset == "tiny" else "paper")

    def fit(self, data: Any, config: Mapping[str, Any], *, callback: Any = None) -> None:
        """Two-stage finetuning of the encoder / decoder (PITI `mask_finetune_base.sh`); see `training.py`."""
        from .training import fit

        fit(self, data, dict(config or {}), callback=callback)

    def save_pretrained(self, path: str | PathLike) -> None:
        """Write `<path>/<kind>/{base,upsample}/` (config.json + model.safetensors); `from_pretrained(path)` reads
        it back."""
        from .training import save_pretrained

        save_pretrained(self, path)


def load_models(src: str, *, kinds: Sequence[str] | None = None, device: Any = "cpu", dtype: Any = None
                ) -> tuple[dict[str, dict[str, Any]], str]:
    """kind -> {"base", "upsample"} PITIModels from a weights source, and the weights id."""
    from ..common.loading import resolve, weights_id
    from .convert import find_official, load_official_file
    from .model import PITIModel, find_pairs
    from .tiny import TINY_NAME, TINY_VERSION, build_tiny

    if src.startswith("tiny:"):
        if src != f"tiny:{TINY_NAME}":
            raise WeightsNotFoundError(f"unknown PITI tiny preset {src!r}; use tiny:{TINY_NAME}")
        path, wid = build_tiny(), f"{src}@v{TINY_VERSION}"
    elif src.startswith("full-random:"):
        path, wid = resolve(src), weights_id(src, Path(src))
    else:
        local = Path(src).expanduser()
        if not local.exists() and src.startswith(("/", ".", "~")):
            raise WeightsNotFoundError(f"piti: weights path {src} does not exist. {OFFICIAL_HELP}")
        try:
            path = local.resolve() if local.exists() else resolve(
                src, allow_patterns=["base_mask.pt", "upsample_mask.pt", "base_edge.pt", "upsample_edge.pt", "*.json",
                                     "*.safetensors"])
        except WeightsNotFoundError as e:
            raise WeightsNotFoundError(f"piti: {e}\n{OFFICIAL_HELP}") from None
        wid = weights_id(src, path)
    if path.is_file():
        raise WeightsNotFoundError(f"piti: {path} is a file; pass the directory holding base_*.pt and upsample_*.pt "
                                   "(the two stages are separate checkpoints)")
    pairs = find_pairs(path)
    models: dict[str, dict[str, Any]] = {}
    for kind in kinds or ("mask", "sketch", "depth"):
        if kind in pairs:
            models[kind] = {role: PITIModel.from_pretrained(pairs[kind] / role, device=device, dtype=dtype)
                            for role in ("base", "upsample")}
        elif (files := find_official(path, kind)) is not None:
            models[kind] = {role: load_official_file(p).to(device=device, dtype=dtype) for role, p in files.items()}
        elif kinds:
            raise WeightsNotFoundError(f"piti: no {kind} models in {path} (expected {kind}/base + {kind}/upsample "
                                       f"in our layout, or the official files). {OFFICIAL_HELP}")
    if not models:
        raise WeightsNotFoundError(f"piti: no PITI models in {path}. {OFFICIAL_HELP}")
    return models, wid


def _validate(cfg: Mapping[str, Any]) -> None:
    if cfg["mode"] not in MODES:
        raise InputError(f"piti: mode must be one of {MODES}, got {cfg['mode']!r}")
    if cfg["guidance"] not in ("plain", "normalized"):
        raise InputError(f"piti: guidance must be 'plain' or 'normalized', got {cfg['guidance']!r}")
    if cfg["sampler"] not in ("ddpm", "ddim"):
        raise InputError(f"piti: sampler must be 'ddpm' or 'ddim', got {cfg['sampler']!r}")
    if cfg["sketch_polarity"] not in ("auto", "black", "white"):
        raise InputError(f"piti: sketch_polarity must be auto, black or white, got {cfg['sketch_polarity']!r}")
    if float(cfg["guidance_scale"]) < 0:
        raise InputError(f"piti: guidance_scale must be >= 0, got {cfg['guidance_scale']}")
    if not 0 < float(cfg["upsample_temp"]) <= 2:
        raise InputError(f"piti: upsample_temp must be in (0, 2], got {cfg['upsample_temp']}")
    if float(cfg["ddim_eta"]) < 0:
        raise InputError(f"piti: ddim_eta must be >= 0, got {cfg['ddim_eta']}")
    for key in ("base_respacing", "upsample_respacing"):
        _check_respacing(key, cfg[key])


def _check_respacing(key: str, value: str) -> None:
    """A respacing string as ADM takes it: "250", "10,10,3,2,2", "ddim50", or "fast27" (over 1000 steps)."""
    import re

    if value == "fast27":
        return
    if re.fullmatch(r"ddim\d+", value) or re.fullmatch(r"\d+(,\d+)*", value):
        from ..common.gaussian_diffusion import space_timesteps

        try:
            if space_timesteps(1000, value):
                return
        except ValueError as e:
            raise InputError(f"piti: {key}={value!r} does not fit the 1000-step process ({e})") from None
        raise InputError(f"piti: {key}={value!r} gives no steps")
    raise InputError(f"piti: {key}={value!r} is not a respacing: use a step count ('250'), section counts "
                     "('10,10,3,2,2'), 'ddimN' or 'fast27'")


__all__ = ["MODES", "PAPER_HUB", "PITI", "TINY_DEFAULTS", "load_models"]
