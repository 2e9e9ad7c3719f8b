"""`sdedit`: SDEdit (Meng et al., ICLR 2022) on Stable Diffusion: noise the input to strength s, then denoise it
with the target prompt and classifier-free guidance.

This is exactly what diffusers' `StableDiffusionImg2ImgPipeline` does (encode, add noise at the timestep
`strength * T`, run the last `strength * steps` scheduler steps), so we use it instead of re-writing the loop.
The safety checker never runs (it blacks out images in a benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .base import HParam, InputError, MethodCard, TranslationInput, TranslationOutput, Translator
from .registry import register

#: Presets built on SD-Turbo take its own img2img recipe instead of the SD 1.x defaults.
TURBO_PRESETS = frozenset({"sd-turbo", "tiny-turbo"})
TURBO_DEFAULTS = {
    # diffusers SD-Turbo docs, image-to-image: "num_inference_steps * strength >= 1", guidance_scale=0.0
    # (SD-Turbo was distilled without classifier-free guidance), 2 steps at strength 0.5.
    "strength": 0.5,
    "num_inference_steps": 2,
    "guidance_scale": 0.0,
}
#: The tiny preset's schedule: the same SDEdit (strength 0.5, CFG 7.5), 10 scheduler steps instead of 50 (5 run at
#: strength 0.5), like every other method's tiny preset; the random tiny UNet gains nothing from 50.
TINY_DEFAULTS = {"num_inference_steps": 10}


@register
class SDEdit(Translator):
    card: ClassVar[MethodCard] = MethodCard(
        name="sdedit",
        paper="SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations",
        year=2022,
        url="https://arxiv.org/abs/2108.01073",
        kinds=frozenset({"unpaired", "paired", "text-edit", "sketch-to-image", "mask-to-image"}),
        needs_training=False,
        weights={
            "paper": "CompVis/stable-diffusion-v1-4",
            "sd-turbo": "stabilityai/sd-turbo",
            "tiny": "tiny:sd-1.4",
            "tiny-turbo": "tiny:sd-turbo",
            "full-random": "full-random:sd-1.4",
        },
        defaults={
            "strength": HParam(0.5, "SDEdit §4/§5: t0 in [0.3, 0.6] trades realism for faithfulness; 0.5 mid-range"),
            "num_inference_steps": HParam(50, "SD 1.x sampling default (CompVis/diffusers): 50 scheduler steps"),
            "guidance_scale": HParam(7.5, "Stable Diffusion's classifier-free guidance default (diffusers)"),
            "negative_prompt": HParam("", "unconditional branch of CFG: the empty prompt"),
        },
        license="CreativeML OpenRAIL-M (SD weights); MIT (this code)",
        size_multiple=8,
        min_size=8,
    )
    tiny_defaults: ClassVar[Mapping[str, Any]] = TINY_DEFAULTS

    @classmethod
    def preset_defaults(cls, preset: str) -> Mapping[str, Any]:
        return TURBO_DEFAULTS if preset in TURBO_PRESETS else super().preset_defaults(preset)

    @classmethod
    def validate_config(cls, config: Any) -> None:
        if not 0.0 < config["strength"] <= 1.0:
            raise InputError(f"sdedit: strength must be in (0, 1], got {config['strength']}")
        if config["num_inference_steps"] < 1:
            raise InputError(f"sdedit: num_inference_steps must be >= 1, got {config['num_inference_steps']}")
        if config["num_inference_steps"] * config["strength"] < 1:
            raise InputError("sdedit: num_inference_steps * strength must be >= 1 (otherwise no denoising step runs)")

    def __init__(self, pipe: Any, config: dict[str, Any], weights_id: str) -> None:
        self.pipe = pipe
        self.config = config
        self.weights_id = weights_id

    @classmethod
    def from_pretrained(cls, source=None, *, preset="paper", device="cpu", dtype=None, **overrides: Any) -> SDEdit:
        from diffusers import StableDiffusionImg2ImgPipeline

        from .common.loading import load_sd, parse_dtype

        card = cls.card
        config = cls.resolve_config(preset, overrides)
        comps = load_sd(source or card.weights_for(preset), device=device, dtype=parse_dtype(dtype))
        pipe = StableDiffusionImg2ImgPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
            scheduler=comps.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, config, comps.weights_id)

    def networks(self) -> dict[str, Any]:
        p = self.pipe
        return {"text_encoder": p.text_encoder, "vae.encoder": p.vae.encoder, "unet": p.unet,
                "vae.decoder": p.vae.decoder}

    def translate(
        self, batch: TranslationInput, *, generator: Any | Sequence[Any] | None = None
    ) -> TranslationOutput:
        import torch

        self.check_input(batch)
        prompts = batch.tgt_prompts
        if prompts is None or any(p is None for p in prompts):
            missing = [i for i, p in zip(batch.ids, prompts or [None] * len(batch)) if p is None]
            raise InputError(
                f"sdedit needs a target prompt for every sample (missing for {', '.join(missing)}); "
                "add it to the task's prompts file or pass tgt_prompts"
            )
        cfg = self.config
        device = self.pipe.unet.device
        dtype = self.pipe.unet.dtype
        out = self.pipe(
            prompt=list(prompts),
            negative_prompt=[cfg["negative_prompt"]] * len(batch) if cfg["guidance_scale"] > 1 else None,
            image=batch.images.to(device=device, dtype=dtype),  # [0, 1]: the image processor maps to [-1, 1]
            strength=float(cfg["strength"]),
            num_inference_steps=int(cfg["num_inference_steps"]),
            guidance_scale=float(cfg["guidance_scale"]),
            generator=list(generator) if isinstance(generator, (list, tuple)) else generator,
            output_type="pt",
        ).images
        return TranslationOutput(images=out.float().clamp(0, 1).cpu().to(torch.float32))
