"""img2img-turbo (Parmar, Park, Narasimhan, Zhu, "One-Step Image Translation with Text-to-Image Models", 2024):
pix2pix-turbo (paired; deterministic and stochastic sketch mode) and CycleGAN-Turbo (unpaired, two directions).

One SD-Turbo step turned into an image-to-image network: VAE encoder -> UNet at t=999 with a text prompt ->
one-step scheduler -> VAE decoder, with encoder-to-decoder skip convs (1x1, init 1e-5) and LoRA on UNet and VAE
(authors' code GaParmar/img2img-turbo).
Both methods need trained weights: `benchmark.py train <method> --task ...` (or `fit`), an official checkpoint
preset (`official.OFFICIAL`), or, for smoke tests, the untrained initialisation of the tiny preset, which is
labelled "untrained" in `weights_id`.

This module imports no torch: the networks live in `generator.py`, `discriminator.py`, `training.py`,
`convert.py`, imported inside the methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any, ClassVar

from ..base import InputError, MethodCard, TranslationInput, TranslationOutput, Translator
from ..registry import register
from .defaults import PAIRED_INFERENCE, UNPAIRED_INFERENCE, init_ranks
from .official import BASE_MODEL, OFFICIAL, official_for

PAPER = "One-Step Image Translation with Text-to-Image Models"
URL = "https://arxiv.org/abs/2403.12036"
LICENSE = "MIT (authors' code); SD-Turbo weights: Stability AI Non-Commercial Research Community License"
CONDITION_PREPS = ("none", "canny", "sketch")
MODES = ("deterministic", "stochastic")


def _weights(method: str) -> dict[str, str]:
    out = {"paper": BASE_MODEL, "tiny": "tiny:sd-turbo"}
    out.update({name: c.url for name, c in official_for(method).items()})
    out["full-random"] = "full-random:sd-turbo"  # SD-Turbo at full size, random (speed and memory checks)
    return out


def _generators(generator: Any, n: int) -> Any:
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise InputError(f"got {len(generator)} generators for a batch of {n}")
        return list(generator)
    return generator


class _TurboBase(Translator):
    """What both methods share: loading, the network census, saving, training entry point."""

    kind: ClassVar[str]

    def __init__(self, loaded: Any, config: dict[str, Any], preset: str, device: Any, dtype: Any) -> None:
        self.loaded = loaded
        self.gen = loaded.gen
        self.prompt_encoder = loaded.prompts
        self.config = config
        self.preset = preset
        self.device = device
        self.dtype = dtype
        self.weights_id = loaded.weights_id
        self.history: list[dict[str, Any]] = []  # training log records of the last fit()

    @classmethod
    def preset_defaults(cls, preset: str) -> dict[str, Any]:
        official = OFFICIAL.get(preset)  # an official checkpoint brings the inference options it was released with
        return dict(official.defaults) if official is not None else {}

    @classmethod
    def weights_provenance(cls, source: str) -> Any:
        """The base SD-Turbo snapshot alone is the untrained initialisation (LoRA and skip convs not learned)."""
        prov = super().weights_provenance(source)
        if str(source) == BASE_MODEL:
            return type(prov)("untrained", prov.id)
        return prov

    @classmethod
    def resolve_train_config(cls, preset: str, overrides: Any = None) -> dict[str, Any]:
        """The options `fit` will use on `preset` (checked, without loading anything)."""
        from .defaults import resolve_train_config

        return resolve_train_config(cls.card.name, "tiny" if preset == "tiny" else "paper", overrides)

    @classmethod
    def from_pretrained(cls, source: str | PathLike | None = None, *, preset: str = "paper", device: str = "cpu",
                        dtype: Any = None, base: str | None = None, **overrides: Any) -> _TurboBase:
        """`source`: a project checkpoint dir, an official .pkl (path/URL), or a base SD-Turbo snapshot (untrained
        init). `base` overrides the SD-Turbo snapshot an official .pkl or a checkpoint is applied to."""
        from ..common.loading import parse_dtype
        from .convert import load_model

        config = cls.resolve_config(preset, overrides)
        src = source if source is not None else cls.card.weights_for(preset)
        ranks = init_ranks(cls.card.name, "tiny" if str(src).startswith("tiny:") else "paper")
        loaded = load_model(cls.card.name, src, base=base, device=device, dtype=dtype, init_ranks=ranks)
        return cls(loaded, config, preset, device, parse_dtype(dtype))


    @property
    def trained(self) -> bool:
        return bool(self.loaded.trained)

    def _prompts(self, prompts: Sequence[str]) -> Any:
        return self.prompt_encoder(list(prompts)).to(dtype=self.dtype)

    def fit(self, data: Any, config: Any, *, callback: Any = None) -> None:
        """Train on a paired/unpaired task (a `datasets.Task` or a dataset root folder); see `training.py`.
        `config` keys: `defaults.PAIRED_TRAIN` / `UNPAIRED_TRAIN` (tiny preset: `TINY_TRAIN`)."""
        from .training import fit

        fit(self, data, dict(config or {}), callback=callback)

    def save_pretrained(self, path: str | PathLike) -> None:
        """Write the project checkpoint (safetensors + config.json); `from_pretrained(path)` loads it."""
        from .convert import save_project

        ld = self.loaded
        save_project(path, method=self.card.name, kind=self.kind, gen=self.gen, base=ld.base,
                     base_weights_id=str(ld.extra.get("base_weights_id", "")), fixed_prompts=ld.fixed_prompts,
                     config=self.config, trained_steps=ld.trained_steps, origin=ld.origin)

    def export_official(self, path: str | PathLike, *, twin_conv: bool = False) -> None:
        """Write the authors' .pkl format (to run this model in GaParmar/img2img-turbo's scripts)."""
        from .convert import export_official

        export_official(self.gen, self.kind, path, twin_conv=twin_conv)


@register
class Pix2PixTurbo(_TurboBase):
    """pix2pix-turbo: paired image-to-image (edges/sketches -> photos) with a caption per image."""

    kind = "paired"
    card: ClassVar[MethodCard] = MethodCard(
        name="pix2pix-turbo", paper=f"{PAPER} (pix2pix-turbo)", year=2024, url=URL,
        kinds=frozenset({"paired", "sketch-to-image"}), needs_training=True, weights=_weights("pix2pix-turbo"),
        defaults=PAIRED_INFERENCE, license=LICENSE, size_multiple=8, min_size=8,
        fixes=(
            "stochastic mode restores the LoRA scales, conv_in blend and skip gamma after each call (upstream "
            "leaves vae.decoder.gamma and the adapter weights at r, so a later deterministic call runs with them)",
            "training: the generator's adversarial backward leaves no gradient in the discriminator (upstream "
            "train_pix2pix_turbo.py steps D with it; GaParmar/img2img-turbo issue #56, PR #62)",
        ),
    )

    @classmethod
    def validate_config(cls, config: Any) -> None:
        if config["mode"] not in MODES:
            raise InputError(f"pix2pix-turbo: mode must be one of {MODES}, got {config['mode']!r}")
        if config["condition_prep"] not in CONDITION_PREPS:
            raise InputError(f"pix2pix-turbo: condition_prep must be one of {CONDITION_PREPS}")
        if not 0.0 <= float(config["r"]) <= 1.0:
            raise InputError(f"pix2pix-turbo: r must be in [0, 1], got {config['r']}")

    def networks(self) -> dict[str, Any]:
        g = self.gen
        return {"text_encoder": self.prompt_encoder.text_encoder, "vae.encoder": g.vae.encoder, "unet": g.unet,
                "vae.decoder": g.vae.decoder}

    @classmethod
    def perf_modes(cls) -> dict[str, Any]:
        """Deterministic and stochastic (noise map blended with strength r, the card's default r)."""
        from ..base import PerfMode

        return {"deterministic": PerfMode({"mode": "deterministic"}), "stochastic": PerfMode({"mode": "stochastic"})}

    def prepare_condition(self, batch: TranslationInput) -> Any:
        """The [0, 1] condition the generator encodes (paired inputs are NOT mapped to [-1, 1]: PairedDataset)."""
        import torch

        x = batch.condition if batch.condition is not None else batch.images
        prep = self.config["condition_prep"]
        if prep == "sketch":  # inference_paired.py: F.to_tensor(img) < 0.5 -> dark strokes are 1
            x = (x < 0.5).float()
        elif prep == "canny":  # image_prep.canny_from_pil -> 3-channel {0, 1}
            from PIL import Image

            from datasets.suite import canny_edges

            u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            edges = [canny_edges(Image.fromarray(a), self.config["canny_low"], self.config["canny_high"]) for a in u8]
            import numpy as np

            x = torch.from_numpy(np.stack([np.asarray(e) for e in edges])).permute(0, 3, 1, 2).float() / 255.0
        return x

    def translate(self, batch: TranslationInput, *, generator: Any | Sequence[Any] | None = None
                  ) -> TranslationOutput:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        self.check_input(batch)
        prompts = batch.tgt_prompts
        if prompts is None or any(p is None for p in prompts):
            raise InputError("pix2pix-turbo needs a caption (tgt_prompts) for every sample: the paired layout's "
                             "<split>_prompts.json")
        gens = _generators(generator, len(batch))
        x = self.prepare_condition(batch).to(device=self.device, dtype=self.dtype)
        emb = self._prompts(prompts)
        cfg = self.config
        with torch.no_grad():
            if cfg["mode"] == "deterministic":
                y = self.gen(x, emb, generator=gens)
            else:
                r = float(cfg["r"])
                f = self.gen.vae_scale_factor
                shape = (len(batch), self.gen.unet.config.in_channels, x.shape[2] // f, x.shape[3] // f)
                # inference_paired.py draws the noise map before the forward, then the VAE posterior is sampled
                noise = randn_tensor(shape, generator=gens, device=x.device, dtype=self.dtype)
                with self.gen.stochastic(r):
                    y = self.gen(x, emb, generator=gens, r=r, noise=noise)
        images = (y.float() * 0.5 + 0.5).clamp(0, 1).cpu()
        extras = [{"mode": cfg["mode"], "trained": self.trained} for _ in range(len(batch))]
        return TranslationOutput(images=images, extras=extras)


@register
class CycleGANTurbo(_TurboBase):
    """CycleGAN-Turbo: unpaired translation both ways with one UNet (shared LoRA) and a VAE per direction."""

    kind = "unpaired"
    card: ClassVar[MethodCard] = MethodCard(
        name="cyclegan-turbo", paper=f"{PAPER} (CycleGAN-Turbo)", year=2024, url=URL, kinds=frozenset({"unpaired"}),
        needs_training=True, weights=_weights("cyclegan-turbo"), defaults=UNPAIRED_INFERENCE, license=LICENSE,
        size_multiple=8, min_size=8,
        fixes=(
            "our checkpoints store the trained UNet conv_in (upstream's save keeps only its LoRA; official files "
            "load as the authors' loader runs them)",
            "training: the skip convs' base weights train (PEFT froze them upstream) and the discriminator gets no "
            "gradient from the generator's adversarial step (upstream zeroes it after the fact, PR #62)",
        ),
        variants={
            "resize_filter=bicubic": (
                "at a set resolution (official 512-px models) resize in float with antialiased bicubic instead of "
                "the authors' PIL LANCZOS on 8-bit images: a 640x480 photo at 512 px is rel 6.3e-3 (max 0.078) "
                "apart before the network; the tiny random model's outputs (48x80 at 64 px) rel 0.016, max 0.045"),
        },
    )

    @classmethod
    def validate_config(cls, config: Any) -> None:
        if config["prompt"] not in ("fixed", "input"):
            raise InputError(f"cyclegan-turbo: prompt must be 'fixed' or 'input', got {config['prompt']!r}")
        res = config["resolution"]
        if res is not None and (int(res) <= 0 or int(res) % 8):
            raise InputError(f"cyclegan-turbo: resolution must be None or a positive multiple of 8, got {res}")

    @classmethod
    def perf_modes(cls) -> dict[str, Any]:
        """a2b and b2a: the same UNet, each direction its own VAE."""
        from functools import partial

        from ..base import PerfMode, perf_input

        return {d: PerfMode({}, partial(perf_input, direction=d)) for d in ("a2b", "b2a")}

    def networks(self) -> dict[str, Any]:
        g = self.gen
        return {"text_encoder": self.prompt_encoder.text_encoder, "vae.encoder": g.vae.encoder,
                "vae_b2a.encoder": g.vae_b2a.encoder, "unet": g.unet, "vae.decoder": g.vae.decoder,
                "vae_b2a.decoder": g.vae_b2a.decoder}

    @property
    def fixed_prompts(self) -> dict[str, str]:
        """direction -> the fixed caption it was trained with (a2b: domain B's caption)."""
        return dict(self.loaded.fixed_prompts)

    def prompts_for(self, batch: TranslationInput) -> list[str]:
        fixed = self.loaded.fixed_prompts.get(batch.direction)
        if self.config["prompt"] == "fixed" and fixed:
            return [fixed] * len(batch)
        prompts = batch.tgt_prompts
        if prompts is None or any(p is None for p in prompts):
            raise InputError(f"cyclegan-turbo: this model has no fixed caption for {batch.direction}; give the target "
                             "domain's caption as tgt_prompts (the unpaired layout's fixed_prompt_a/b.txt)")
        return list(prompts)

    def translate(self, batch: TranslationInput, *, generator: Any | Sequence[Any] | None = None
                  ) -> TranslationOutput:
        import torch
        import torch.nn.functional as F

        self.check_input(batch)
        gens = _generators(generator, len(batch))
        prompts = self.prompts_for(batch)
        images01 = batch.images
        h, w = images01.shape[2:]
        res = self.config["resolution"]
        lanczos = self.config["resize_filter"] == "lanczos"
        if res and lanczos:  # inference_unpaired.py: build_transform('resize_512x512') on the 8-bit PIL image
            images01 = _pil_resize(images01, (res, res), truncate=False)
        x = images01.to(device=self.device, dtype=self.dtype) * 2 - 1  # UnpairedDataset: Normalize([.5], [.5])
        if res and not lanczos:
            x = F.interpolate(x.float(), size=(res, res), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(-1, 1).to(self.dtype)
        emb = self._prompts(prompts)
        with torch.no_grad():
            y = self.gen(x, emb, direction=batch.direction, generator=gens)
        y = y.float()
        if res and lanczos:  # ToPILImage (8 bits, truncated as `.byte()` does), LANCZOS back to the input size
            images = _pil_resize((y * 0.5 + 0.5).clamp(0, 1).cpu(), (h, w), truncate=True)
        else:
            if res and (h, w) != (res, res):  # inference_unpaired.py resizes the output back to the input size
                y = F.interpolate(y, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
            images = (y * 0.5 + 0.5).clamp(0, 1).cpu()
        extras = [{"direction": batch.direction, "prompt": p, "trained": self.trained} for p in prompts]
        return TranslationOutput(images=images, extras=extras)


def _pil_resize(images01: Any, hw: tuple[int, int], *, truncate: bool) -> Any:
    """Each [0, 1] image as an 8-bit PIL image (rounded, as a file loads; `truncate`: torchvision ToPILImage's
    `mul(255).byte()`), resized to hw with PIL LANCZOS (a same-size image is only quantised), back to [0, 1] floats."""
    import numpy as np
    import torch
    from PIL import Image

    x = images01.detach().float().cpu().clamp(0, 1) * 255
    x8 = (x if truncate else x.round()).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((hw[1], hw[0]), Image.LANCZOS)) for a in x8]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


__all__ = ["OFFICIAL", "CycleGANTurbo", "Pix2PixTurbo"]
