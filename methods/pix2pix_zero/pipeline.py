"""The pix2pix-zero algorithm on diffusers components (imported lazily by `methods.pix2pix_zero`).

1. Source latent: VAE encode (a sample of the posterior, one generator per sample) x scaling factor.
2. Regularized DDIM inversion with the source caption, guidance scale 1 (`methods.common.inversion`), cached on disk.
3. Editing (authors' `src/utils/edit_pipeline.py`, `EditingPipeline.__call__`), 50 DDIM steps, eta 0:
   - reference pass from x_inv with the caption: it gives the reconstruction and, at every step, the softmax maps
     of every cross-attention (`attn2`) layer;
   - edit pass from the same x_inv with the caption + edit direction on the conditional half and the caption as the
     negative prompt (real images; "" for synthetic ones), CFG scale 5; at every step one SGD step of size
     `xa_guidance` on the CFG-doubled latent against sum_layers ||M_edit - M_ref||^2 (summed over queries and tokens,
     averaged over heads and both CFG halves), then the noise is recomputed at the updated latent, the
     unconditional half's latent is kept, and the DDIM step taken.

Deliberate differences from the authors' code (results equal theirs up to float rounding unless noted):
- The reference pass runs in lockstep with the edit pass: at step t it runs just before the edit step and its maps
  are dropped right after, so only one step's maps (on the device, model dtype) are alive instead of all 50 steps'
  maps on the host. Upstream keeps them on the CPU in fp32: at 512 px, SD 1.4's 16 attn2 layers have 26,944
  queries in all, x 8 heads x 77 tokens x 2 CFG halves x 4 bytes = 133 MB per step, 6.6 GB per image over 50
  steps (plus a 133 MB host-to-device copy per edit step). Here: 33 MB per sample (one half, fp16) on the device,
  freed at the next step. The reference trajectory does not depend on the edit, so the maps are the same.
- Real-image mode: the reference pass uses the caption for both CFG halves, so CFG collapses to eps(caption) and
  both halves' maps are equal; we run that half once (half the reference cost) and compare both edit halves to it.
- xa_guidance = 0 skips the guided forward/backward (an SGD step of size 0 does nothing).
- The guidance gradient is taken w.r.t. the latent only: upstream also sets requires_grad on every `attn2`
  parameter (`prep_unet`), computing parameter gradients nobody uses.
- Batches > 1: the loss is averaged per sample (upstream's mean over batch x heads would scale each sample's step
  by 1/B); latents are kept in float32 between UNet calls (upstream: the model dtype); the map loss is computed in
  float32.
- The inversion schedule is the authors' loop by default ("authors"); "mirror", the exact reverse of the editing
  schedule, is an option (see `methods.common.ddim.inversion_schedule`).
- The SD safety checker never runs (it blacks out images in a benchmark).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from eval.store import atomic_path, cache_dir, hash_array, hash_obj

from ..base import InputError
from ..common.attention import install_attention_capture
from ..common.ddim import inversion_schedule, to_epsilon
from ..common.inversion import NoiseRegularizer, ddim_invert
from .directions import DirectionBuilder, concepts_from_prompts

CACHE_VERSION = 1


class GuidanceBackward(torch.nn.Module):
    """The backward pass through the UNet that cross-attention guidance needs once per edit step.

    A parameter-free module only so that `benchmark.py perf` (which times the forward calls of `networks()`) counts
    this required network work; it runs nothing but `torch.autograd.grad(loss, latent)`.
    """

    def forward(self, loss: Any, latent: Any) -> Any:
        (grad,) = torch.autograd.grad(loss, latent)
        return grad


@dataclass
class EditResult:
    latents: Any
    reconstruction: Any | None
    xa_loss: Any | None  # (steps, B) cross-attention loss of the maps each edit step used, when logged
    timings: dict[str, float] = field(default_factory=dict)


class Pix2PixZeroEngine:
    """The loaded networks plus the algorithm's phases; `Pix2PixZero.translate` drives it."""

    def __init__(self, comps: Any, device: Any, dtype: Any) -> None:
        from diffusers import DDIMScheduler

        self.tokenizer = comps.tokenizer
        self.text_encoder = comps.text_encoder
        self.vae = comps.vae
        self.unet = comps.unet
        self.weights_id = comps.weights_id
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.device = torch.device(device)
        self.dtype = dtype
        # The editing scheduler: DDIM from the model's scheduler config (src/edit_real.py:
        # `DDIMScheduler.from_config(pipe.scheduler.config)`), eta 0.
        self.scheduler_config = DDIMScheduler.from_config(comps.scheduler.config).config
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self.alphas_cumprod = DDIMScheduler.from_config(self.scheduler_config).alphas_cumprod
        self.hub = install_attention_capture(self.unet)
        self.regularizer = NoiseRegularizer()
        self.backward_pass = GuidanceBackward()
        self.directions = DirectionBuilder(self.tokenizer, self.text_encoder, self.weights_id)
        self._captioner: Any = None
        self._captioner_source: str | None = None

    # -- small pieces ---------------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str]) -> Any:
        tok = self.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids, attention_mask=None)[0].to(self.dtype)

    def encode_images(self, images: Any, generators: Sequence[Any]) -> Any:
        """Posterior samples of the VAE (authors: `latent_dist.sample()`), one generator per sample, in float32."""
        x = images.to(device=self.device, dtype=self.vae.dtype) * 2 - 1
        with torch.no_grad():
            lat = self.vae.encode(x).latent_dist.sample(generator=list(generators))
        # contiguous: the VAE may hand back a channels-last layout, and the UNet's kernels (hence the last bits of
        # the result) differ by layout; a cached inversion (contiguous) must give exactly what a fresh one gives
        return (lat.float() * self.vae.config.scaling_factor).contiguous()

    def decode_latents(self, latents: Any) -> Any:
        with torch.no_grad():
            img = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return ((img.float() + 1) / 2).clamp(0, 1).cpu()

    def unet_out(self, x: Any, t: int, emb: Any) -> Any:
        return self.unet(x.to(self.dtype), t, encoder_hidden_states=emb).sample.float()

    def captioner(self, source: str) -> Any:
        if self._captioner is None or self._captioner_source != source:
            from .captions import BlipCaptioner

            self._captioner = BlipCaptioner(source, device=self.device, dtype=self.dtype)
            self._captioner_source = source
        return self._captioner

    # -- captions and directions -------------------------------------------------------------------
    def captions(self, batch: Any, cfg: dict[str, Any]) -> list[str]:
        mode = cfg["caption"]
        if mode == "blip":
            return self.captioner(cfg["captioner"])(batch.images)
        if mode != "prompt":
            raise InputError(f"pix2pix-zero: caption must be 'prompt' or 'blip', got {mode!r}")
        prompts = list(batch.src_prompts or [None] * len(batch))
        missing = [sid for sid, p in zip(batch.ids, prompts) if not p]
        if missing:
            raise InputError(
                f"pix2pix-zero needs a source caption for every sample (missing for {', '.join(missing)}): give the "
                "task's source prompts, or caption the images with BLIP (--set pix2pix-zero.caption=blip, model "
                f"{cfg['captioner']})"
            )
        return [str(p) for p in prompts]

    def edit_directions(self, batch: Any, captions: Sequence[str], cfg: dict[str, Any]) -> tuple[Any, list]:
        """Per-sample directions (B x 77 x D, float32) x edit_mul, and the (source, target) concepts used."""
        source = str(cfg["directions"])
        tgts = list(batch.tgt_prompts or [None] * len(batch))
        srcs = list(batch.src_prompts or [None] * len(batch))
        dirs, concepts = [], []
        for sid, src, tgt, cap in zip(batch.ids, srcs, tgts, captions):
            src_text = src or cap
            if source == "prompts":
                if not tgt:
                    raise InputError(f"pix2pix-zero: sample {sid} has no target prompt (directions='prompts')")
                dirs.append(self.directions.prompt_direction(src_text, tgt))
                concepts.append((src_text, tgt))
                continue
            s_c, t_c = cfg["source_concept"], cfg["target_concept"]
            if not (s_c and t_c):
                if not tgt:
                    raise InputError(
                        f"pix2pix-zero: sample {sid} has no target prompt; give the task's target prompts or set "
                        "source_concept and target_concept (e.g. --set pix2pix-zero.target_concept=dog)"
                    )
                d_s, d_t = concepts_from_prompts(src_text, tgt)
                s_c, t_c = s_c or d_s, t_c or d_t
            dirs.append(self.directions.direction(s_c, t_c, source, lm_bank_size=int(cfg["lm_bank_size"]),
                                                  template_bank_size=int(cfg["template_bank_size"]),
                                                  device=self.device))
            concepts.append((s_c, t_c))
        return torch.cat(dirs) * float(cfg["edit_mul"]), concepts

    # -- inversion ----------------------------------------------------------------------------------
    def _inversion_key(self, image: Any, caption: str, gen: Any, cfg: dict[str, Any]) -> str:
        settings = {k: cfg[k] for k in ("num_inversion_steps", "inversion_schedule", "inversion_guidance_scale",
                                        "lambda_ac", "lambda_kl", "num_reg_steps", "num_ac_rolls")}
        return hash_obj("p2pz-inversion", CACHE_VERSION, self.weights_id, str(self.dtype), self.device.type,
                        hash_array(image), caption, settings, hash_array(gen.get_state()))

    def invert(self, images: Any, captions: Sequence[str], cond: Any, generators: Sequence[Any],
               cfg: dict[str, Any]) -> tuple[Any, list[str]]:
        """x_inv (B x 4 x h x w, float32) and per-sample 'hit'/'miss'/'off' cache status."""
        from safetensors.torch import load_file, save_file

        b = images.shape[0]
        use_cache = bool(cfg["cache_inversions"])
        root = cache_dir() / "pix2pix-zero" / "inversions"
        keys = [self._inversion_key(images[i], captions[i], generators[i], cfg) for i in range(b)] if use_cache \
            else [None] * b
        result: list[Any] = [None] * b
        status = ["off"] * b
        for i, k in enumerate(keys):
            if k is None:
                continue
            path = root / k[:2] / f"{k}.safetensors"
            status[i] = "miss"
            if path.is_file():
                try:
                    data = load_file(str(path))
                except Exception:  # a foreign or damaged file is a miss, not a crash
                    continue
                result[i] = data["latent"].to(self.device)
                generators[i].set_state(data["generator_state"])  # as if the inversion had run (same draws)
                status[i] = "hit"
        todo = [i for i in range(b) if result[i] is None]
        if todo:
            gens = [generators[i] for i in todo]
            x0 = self.encode_images(images[todo], gens)
            x_inv = self._invert_latents(x0, cond[todo], gens, cfg).contiguous()
            for j, i in enumerate(todo):
                result[i] = x_inv[j:j + 1]
                if keys[i] is not None:
                    with atomic_path(root / keys[i][:2] / f"{keys[i]}.safetensors") as tmp:
                        save_file({"latent": x_inv[j:j + 1].detach().cpu().contiguous(),
                                   "generator_state": generators[i].get_state()}, str(tmp),
                                  metadata={"caption": captions[i], "weights": self.weights_id})
        return torch.cat(result), status

    def _invert_latents(self, x0: Any, cond: Any, gens: Sequence[Any], cfg: dict[str, Any]) -> Any:
        scale = float(cfg["inversion_guidance_scale"])
        # guidance_scale = 1 during inversion (src/inversion.py); > 1 uses the empty negative prompt as upstream's
        # `_encode_prompt` does when no negative prompt is given.
        emb = torch.cat([self.encode_text([""] * cond.shape[0]), cond]) if scale > 1 else cond
        alphas = self.alphas_cumprod

        def predict_eps(x: Any, t: int) -> Any:
            with torch.no_grad():
                if scale > 1:
                    u, c = self.unet_out(torch.cat([x, x]), t, emb).chunk(2)
                    out = u + scale * (c - u)
                else:
                    out = self.unet_out(x, t, emb)
            # regularize the noise whatever the model predicts (diffusers' pipeline `get_epsilon`)
            return to_epsilon(out, x, float(alphas[t]), self.prediction_type)

        reg = self.regularizer
        reg.lambda_ac, reg.lambda_kl = float(cfg["lambda_ac"]), float(cfg["lambda_kl"])
        reg.num_reg_steps, reg.num_ac_rolls = int(cfg["num_reg_steps"]), int(cfg["num_ac_rolls"])
        steps = inversion_schedule(self.scheduler_config_obj(), int(cfg["num_inversion_steps"]),
                                   str(cfg["inversion_schedule"]))
        return ddim_invert(predict_eps, x0, steps, reg=reg, generators=gens)

    def scheduler_config_obj(self) -> Any:
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    # -- editing --------------------------------------------------------------------------------------
    def edit(self, x_t: Any, cond: Any, neg: Any | None, delta: Any, cfg: dict[str, Any], *,
             reconstruction: bool = False, log_loss: bool = False) -> EditResult:
        """Reference + guided edit passes in lockstep from x_t (B x 4 x h x w, float32).

        cond: caption embeddings (B x 77 x D); neg: negative-prompt embeddings, or None for real images (the
        caption is the negative prompt); delta: B x 77 x D direction added to the conditional half.
        """
        b = x_t.shape[0]
        sched = self.scheduler_config_obj()
        sched.set_timesteps(int(cfg["num_inference_steps"]), device=self.device)
        s = float(cfg["guidance_scale"])
        lr = float(cfg["xa_guidance"])
        real = neg is None
        neg_emb = cond if real else neg
        emb_ref = cond if real else torch.cat([neg_emb, cond])
        emb_edit = torch.cat([neg_emb, cond + delta.to(cond.dtype)])  # [negative; caption + edit], index 0 negative
        x_ref = x_t.clone()
        x = x_t.clone()
        losses = []
        t_ref = t_guide = 0.0
        for t in sched.timesteps:
            t = int(t)
            # reference pass (the maps of this step only)
            t0 = time.perf_counter()
            ref: dict[str, Any] = {}
            with torch.no_grad(), self.hub.capture(ref.__setitem__):
                out = self.unet_out(x_ref if real else torch.cat([x_ref, x_ref]), t, emb_ref)
            if not real:
                u, c = out.chunk(2)
                out = u + s * (c - u)
            x_ref = sched.step(out, t, x_ref).prev_sample
            t1 = time.perf_counter()
            t_ref += t1 - t0

            x_in = torch.cat([x, x])
            if lr != 0:
                with torch.enable_grad():
                    x_in = x_in.detach().requires_grad_(True)
                    loss = self._map_loss(ref, b, real)
                    with self.hub.capture(loss):
                        self.unet(x_in.to(self.dtype), t, encoder_hidden_states=emb_edit)
                    grad = self.backward_pass(loss.total.sum(), x_in)
                # torch.optim.SGD([x_in], lr=xa_guidance).step() on the CFG-doubled latent
                x_in = (x_in - lr * grad).detach()
            if log_loss:
                logger = self._map_loss(ref, b, real)
                with torch.no_grad(), self.hub.capture(logger):
                    out = self.unet_out(x_in, t, emb_edit)
                losses.append(logger.total.detach().cpu())
            else:
                with torch.no_grad():
                    out = self.unet_out(x_in, t, emb_edit)
            x = x_in.chunk(2)[0]  # upstream keeps the unconditional half's (guided) latent
            u, c = out.chunk(2)
            x = sched.step(u + s * (c - u), t, x).prev_sample
            t_guide += time.perf_counter() - t1
        return EditResult(
            latents=x, reconstruction=x_ref if reconstruction else None,
            xa_loss=torch.stack(losses) if losses else None,
            timings={"time_reference_s": t_ref, "time_edit_s": t_guide},
        )

    @staticmethod
    def _map_loss(ref: dict[str, Any], b: int, real: bool) -> Any:
        return _MapLoss(ref, b, real)


class _MapLoss:
    """Sink accumulating, per sample, sum_layers ((M - M_ref)^2).sum(queries, tokens).mean(CFG halves, heads)."""

    def __init__(self, ref: dict[str, Any], b: int, real: bool) -> None:
        self.ref, self.b, self.real = ref, b, real
        self.total: Any = 0.0

    def __call__(self, name: str, probs: Any) -> None:
        r = self.ref[name].float()  # (B or 2B, heads, queries, keys)
        p = probs.float().view(2, self.b, *probs.shape[1:])
        r = r.view(1 if self.real else 2, self.b, *r.shape[1:])
        self.total = self.total + (p - r).square().sum(dim=(-1, -2)).mean(dim=(0, 2))
