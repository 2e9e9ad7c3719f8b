"""`pix2pix-zero`: zero-shot image-to-image translation (Parmar et al., SIGGRAPH 2023) on Stable Diffusion 1.4.

Regularized DDIM inversion of the input with its caption, an edit direction from sentence banks added to the
caption embedding, and cross-attention guidance that keeps the edited image's text-attention maps close to the
reconstruction's. Implemented after the authors' diffusers reimplementation (github.com/pix2pixzero/pix2pix-zero,
`src/`); the pieces and every deliberate difference are documented in `pipeline.py`, `methods/common/inversion.py`,
`methods/common/ddim.py` and `directions.py`. This module imports no torch: the card is readable by the registry.

Call: `translate(TranslationInput(images, src_prompts=captions, tgt_prompts=targets), generator=[g1, ..., gB])`.
The source caption is the task's source prompt (or a BLIP caption with caption="blip"); the edit concepts are the
words where the source and target prompts differ ("a photo of a cat" -> "a photo of a dog": cat -> dog) unless
source_concept / target_concept are set. Extras per sample: caption, concepts, inversion cache status, the inverted
noise `x_inv`, phase timings, and optionally the reconstruction and the cross-attention loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..base import (
    HParam,
    InputError,
    MethodCard,
    TranslationInput,
    TranslationOutput,
    Translator,
    per_sample_generators,
)
from ..registry import register

_SRC = "pix2pixzero/pix2pix-zero"
#: The tiny preset's step counts: 50 inversion + 50 guided edit steps cost ~4 s per 64 px image on a 2-core CPU
#: with the random tiny UNet, so CI runs 10 + 10 (the algorithm is the same; only the step count changes).
#: Its template banks are a seeded 32-sentence subset per concept: encoding 2 x 2000 sentences was the largest
#: fixed cost of a fresh cache; the paper preset keeps the full banks.
TINY_DEFAULTS = {"num_inversion_steps": 10, "num_inference_steps": 10, "template_bank_size": 32}
#: edit_synthetic.py's guidance default differs from edit_real.py's.
SYNTHETIC_XA_GUIDANCE = 0.15


@register
class Pix2PixZero(Translator):
    card: ClassVar[MethodCard] = MethodCard(
        name="pix2pix-zero",
        paper="Zero-shot Image-to-Image Translation",
        year=2023,
        url="https://arxiv.org/abs/2302.03027",
        kinds=frozenset({"text-edit", "unpaired"}),
        needs_training=False,
        weights={"paper": "CompVis/stable-diffusion-v1-4", "tiny": "tiny:sd-1.4",
                 "full-random": "full-random:sd-1.4"},
        defaults={
            "num_inversion_steps": HParam(50, f"{_SRC} src/inversion.py --num_ddim_steps 50"),
            "inversion_schedule": HParam(
                "authors", f"{_SRC} src/utils/ddim_inv.py DDIMInversion loop + src/utils/scheduler.py reverse step "
                "(first/last step skipped: 48 steps for 50, levels a[t-1] -> a[t+T/n-1]); 'mirror' = the exact "
                "reverse of the editing DDIM schedule (diffusers' DDIMInverseScheduler)"),
            "inversion_guidance_scale": HParam(1.0, f"{_SRC} src/inversion.py: guidance_scale=1 (no CFG)"),
            "lambda_ac": HParam(20.0, f"{_SRC} src/utils/ddim_inv.py DDIMInversion.__call__ lambda_ac=20.0"),
            "lambda_kl": HParam(20.0, f"{_SRC} src/utils/ddim_inv.py DDIMInversion.__call__ lambda_kl=20.0"),
            "num_reg_steps": HParam(5, f"{_SRC} src/utils/ddim_inv.py DDIMInversion.__call__ num_reg_steps=5"),
            "num_ac_rolls": HParam(5, f"{_SRC} src/utils/ddim_inv.py DDIMInversion.__call__ num_ac_rolls=5"),
            "num_inference_steps": HParam(50, f"{_SRC} src/edit_real.py --num_ddim_steps 50 (DDIM, eta 0)"),
            "xa_guidance": HParam(0.1, f"{_SRC} src/edit_real.py --xa_guidance 0.1 (mode='synthetic': 0.15, "
                                       "src/edit_synthetic.py)"),
            "guidance_scale": HParam(5.0, f"{_SRC} src/edit_real.py --negative_guidance_scale 5.0"),
            "edit_mul": HParam(1.0, f"{_SRC} app_gradio.py 'Edit multiplier' slider default 1.0"),
            "directions": HParam(
                "templates", "ours (offline): sentence banks from the authors' template construction "
                "(src/utils/gradio_utils.py: 20 adjectives x 10 verbs x 10 backgrounds); or 'prompts', a folder "
                "of <concept>.txt/.pt/.safetensors banks (official assets/embeddings_sd_1.4), or 'lm:<hub id>'"),
            "source_concept": HParam(None, "ours: None = the source-prompt words that differ from the target's"),
            "target_concept": HParam(None, "ours: None = the target-prompt words that differ from the source's"),
            "template_bank_size": HParam(2000, f"{_SRC} src/utils/gradio_utils.py: 20 x 10 x 10 = 2000 template "
                                               "sentences per concept (smaller: a seeded subset)"),
            "lm_bank_size": HParam(1000, f"{_SRC} README (~1000 sentences) and gradio_utils.py num=1000"),
            "caption": HParam("prompt", "ours: the task's source prompt; 'blip' captions the image as "
                                        f"{_SRC} src/inversion.py does (BLIP)"),
            "captioner": HParam("Salesforce/blip-image-captioning-base",
                                "diffusers StableDiffusionPix2PixZeroPipeline docs (authors: LAVIS blip base_coco)"),
            "mode": HParam("real", f"{_SRC} src/edit_real.py (caption as negative prompt); 'synthetic' = "
                                   "src/edit_synthetic.py (x_T ~ N(0, I), empty negative prompt)"),
            "cache_inversions": HParam(True, "ours: inversions cached per (image, caption, model, settings, seed)"),
            "log_xa_loss": HParam(False, "ours: record the cross-attention loss of each edit step in the extras"),
            "return_reconstruction": HParam(False, "ours: also decode the reference pass (the reconstruction)"),
        },
        license="MIT (authors' code and this implementation); CreativeML OpenRAIL-M (SD 1.4 weights)",
        fixes=(
            "auto-correlation roll shift drawn from [1, S/2), never 0 (the authors' own fix, commit ec33392 of "
            "2024-09-05; diffusers' StableDiffusionPix2PixZeroPipeline still draws 0)",
            "batches > 1: the cross-attention loss is averaged per sample (upstream asserts batch 1; its mean over "
            "batch x heads would scale each sample's guidance step by 1/B)",
            "language-model sentence banks drop lines that cleaning leaves empty (upstream's flan-t5 branch "
            "averages the empty prompt's embedding into the bank)",
        ),
        variants={
            "inversion_schedule=mirror": (
                "inversion timesteps mirror the 50-step editing DDIM schedule exactly (50 steps, a[t-T/n] -> a[t]) "
                "instead of the authors' 48-step loop: on the tiny SD-1.4 preset at 50 steps x_inv is rel 0.5-0.7 "
                "away from the authors' DDIMInversion and the edited latent rel 0.45 from their EditingPipeline"),
        },
        size_multiple=8,
        min_size=32,  # latents of side >= 4 give the autocorrelation loss a non-trivial shift range
    )

    tiny_defaults: ClassVar[Mapping[str, Any]] = TINY_DEFAULTS
    batch_equivalence: ClassVar[str] = "float-guided"  # cross-attention guidance gradients amplify rounding

    @classmethod
    def resolve_config(cls, preset: str = "paper", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        overrides = dict(overrides or {})
        if overrides.get("mode") == "synthetic" and overrides.get("xa_guidance") is None:
            overrides["xa_guidance"] = SYNTHETIC_XA_GUIDANCE
        return super().resolve_config(preset, overrides)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        _validate(config)

    def __init__(self, engine: Any, config: dict[str, Any], weights_id: str) -> None:
        self.engine = engine
        self.config = config
        self.weights_id = weights_id

    @classmethod
    def from_pretrained(cls, source=None, *, preset="paper", device="cpu", dtype=None, **overrides: Any
                        ) -> Pix2PixZero:
        from ..common.loading import load_sd, parse_dtype
        from .pipeline import Pix2PixZeroEngine

        config = cls.resolve_config(preset, overrides)
        torch_dtype = parse_dtype(dtype)
        comps = load_sd(source or cls.card.weights_for(preset), device=device, dtype=torch_dtype)
        return cls(Pix2PixZeroEngine(comps, device, torch_dtype), config, comps.weights_id)

    def networks(self) -> dict[str, Any]:
        e = self.engine
        # The backward pass through the UNet (one per guided edit step) is network work of the algorithm (its
        # cross-attention guidance); the noise regularizer's gradient steps act on the noise map alone (no network)
        # and count as overhead.
        return {"text_encoder": e.text_encoder, "vae.encoder": e.vae.encoder, "unet": e.unet,
                "unet.backward": e.backward_pass, "vae.decoder": e.vae.decoder}

    @classmethod
    def perf_modes(cls) -> dict[str, Any]:
        """Real-image editing (inversion + edit; the inversion cache off, so each call inverts) and synthetic
        generation from noise (no inversion)."""
        from ..base import PerfMode

        return {"real": PerfMode({"mode": "real", "cache_inversions": False}),
                "synthetic": PerfMode({"mode": "synthetic"})}

    def translate(self, batch: TranslationInput, *, generator: Any | Sequence[Any] | None = None
                  ) -> TranslationOutput:
        import time

        import torch

        self.check_input(batch)
        cfg = self.config
        e = self.engine
        b = len(batch)
        gens = per_sample_generators(generator, b)
        t0 = time.perf_counter()
        with torch.inference_mode(False):
            captions = e.captions(batch, cfg)
            delta, concepts = e.edit_directions(batch, captions, cfg)
            cond = e.encode_text(captions)
            t1 = time.perf_counter()
            if cfg["mode"] == "synthetic":
                h, w = batch.size
                shape = (1, e.unet.config.in_channels, h // e.vae_scale, w // e.vae_scale)
                x_t = torch.cat([torch.randn(shape, generator=g, device=g.device).to(e.device) for g in gens])
                neg, status = e.encode_text([""] * b), ["synthetic"] * b
            else:
                x_t, status = e.invert(batch.images, captions, cond, gens, cfg)
                neg = None
            t2 = time.perf_counter()
            res = e.edit(x_t, cond, neg, delta.to(e.device), cfg, reconstruction=bool(cfg["return_reconstruction"]),
                         log_loss=bool(cfg["log_xa_loss"]))
            images = e.decode_latents(res.latents)
            recon = e.decode_latents(res.reconstruction) if res.reconstruction is not None else None
        t3 = time.perf_counter()
        extras = []
        for i in range(b):
            ex: dict[str, Any] = {
                "caption": captions[i], "source_concept": concepts[i][0], "target_concept": concepts[i][1],
                "inversion_cache": status[i], "x_inv": x_t[i].detach().float().cpu(),
                "time_prepare_s": t1 - t0, "time_inversion_s": t2 - t1, "time_total_s": t3 - t0, **res.timings,
            }
            if recon is not None:
                ex["reconstruction"] = recon[i]
            if res.xa_loss is not None:
                ex["xa_loss"] = float(res.xa_loss[:, i].mean())
                ex["xa_loss_per_step"] = res.xa_loss[:, i].tolist()
            extras.append(ex)
        return TranslationOutput(images=images.to(torch.float32), extras=extras)


def _validate(cfg: Mapping[str, Any]) -> None:
    from ..common.ddim import INVERSION_SCHEDULES

    for key in ("num_inversion_steps", "num_inference_steps"):
        if int(cfg[key]) < 1:
            raise InputError(f"pix2pix-zero: {key} must be >= 1, got {cfg[key]}")
    for key in ("num_reg_steps", "num_ac_rolls", "lm_bank_size"):
        if int(cfg[key]) < (1 if key == "lm_bank_size" else 0):
            raise InputError(f"pix2pix-zero: {key} must be a non-negative integer, got {cfg[key]}")
    if not 1 <= int(cfg["template_bank_size"]) <= 2000:
        raise InputError(f"pix2pix-zero: template_bank_size must be in 1..2000, got {cfg['template_bank_size']}")
    if cfg["inversion_schedule"] not in INVERSION_SCHEDULES:
        raise InputError(f"pix2pix-zero: inversion_schedule must be one of {INVERSION_SCHEDULES}, "
                         f"got {cfg['inversion_schedule']!r}")
    if cfg["mode"] not in ("real", "synthetic"):
        raise InputError(f"pix2pix-zero: mode must be 'real' or 'synthetic', got {cfg['mode']!r}")
    if cfg["caption"] not in ("prompt", "blip"):
        raise InputError(f"pix2pix-zero: caption must be 'prompt' or 'blip', got {cfg['caption']!r}")
    if float(cfg["xa_guidance"]) < 0 or float(cfg["guidance_scale"]) < 0:
        raise InputError("pix2pix-zero: xa_guidance and guidance_scale must be >= 0")


