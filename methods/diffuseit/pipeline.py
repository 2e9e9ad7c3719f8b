"""The DiffuseIT sampler (imported lazily by `methods.diffuseit`): MCG-guided respaced DDPM from the noised input.

Algorithm (authors' optimization/image_editor.py + their modified guided_diffusion p_sample_loop_progressive
in guided_diffusion/gaussian_diffusion.py):
1. x_T' = q_sample(x0, T' = num_steps - skip - 1) (respacing "100", skip 40: 60 reverse steps from index 59).
2. Every reverse step t: one UNet pass on x_t WITH gradients gives the learned-range p(x_{t-1} | x_t) (mean,
   variance, x0 prediction, clip_denoised=False); the guidance loss is computed on the x0 prediction and on the
   noise-mixed x0 (x0 sqrt(1 - abar_t) + x_t (1 - sqrt(1 - abar_t))); grad = -d loss / d x_t through the UNet
   (MCG); mean <- mean + variance * grad (`condition_mean`); x_{t-1} = mean + sigma_t z (no noise at t = 0).
3. DDPM only (the authors' DDIM loop has no resampling): at the first step the step is repeated `resample_num` (10)
   times, each repeat but the last followed by one forward step x = sqrt(1 - beta) x + sqrt(beta) z (`undo`) with
   beta at the respaced index t - 1, as the authors' loop passes `t=t-1` (undo_beta="current": beta_t, RePaint's
   q(x_t | x_{t-1}), a variant).
4. Range restart: a sample whose weighted range loss exceeds the threshold at a step after the first and before the
   last starts over from a freshly noised input (at the last step the authors' loop keeps the sample: `if i == 0:
   break`), at most `max_restarts` times (upstream: unbounded); the last try runs to the end and a warning says the
   cap was hit.
5. The output is the last step's x0 prediction; image-guided outputs are MKL colour-matched to the reference.

On the FFHQ backbone (--use_ffhq upstream) the loss adds `id_lambda` x the ArcFace identity loss of the guided
image against the source (`arcface.py`), and the range-restart threshold defaults to 0.1.

Inputs and references are brought to `model_output_size` as the authors load their files: PIL LANCZOS on the
8-bit image (optimization/image_editor.py `Image.resize(..., LANCZOS)`).

State that persists, as upstream's `self.prev` / `self.loss_prev` do: the previous step's [CLS] (semantic
divergence) and the previous step's CLIP loss (use_prog_contrast / regularize_content) carry over restarts and
outputs of a translate call (prev_cls="reset" starts every pass from the source's [CLS], a variant).

Deliberate differences from the authors' code (results equal up to float rounding unless noted):
- One UNet forward per step instead of two: upstream's p_sample runs the model without gradients for the mean,
  then `cond_fn` runs it again on the same x_t with gradients; both give the same output, so we keep the second.
- The [CLS] of the previous step's image (semantic divergence) is the one computed at that step, not recomputed;
  the source's keys / self-similarity / [CLS] and the reference's [CLS] are computed once per translate.
- Batches > 1 (upstream: batch 1): every loss is per sample and the sum is differentiated, so each sample gets its
  own batch-of-1 gradient; every random draw of a sample (noise, resampling, CLIP views) comes from its generator.
- Range restart is per sample and capped; DDIM (option) guides through `condition_score` (ADM's DDIM guidance).
- Colour matching works on the float [0, 1] output (upstream: on its 8-bit PNG; the difference is below one 8-bit
  step, and rounding first would make outputs depend on float noise, e.g. between batch sizes).
- Upstream skips the remaining outputs (iterations) once the range check fired at a last step (its flag is never
  reset); every output is produced here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ..base import InputError
from ..common.gaussian_diffusion import GaussianDiffusion
from .losses import (
    ClipDirection,
    ClipViews,
    DinoFeatures,
    cls_mse,
    mkl_transfer,
    noise_mix,
    patch_nce_loss,
    range_loss,
    ssim_loss,
    template_embeddings,
)


class GuidanceBackward(torch.nn.Module):
    """The backward pass through the UNet (and the loss encoders) that MCG guidance needs once per step.

    Parameter-free; a module only so that `benchmark.py perf` counts this required network work."""

    def forward(self, loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(loss, x)
        return grad


class ClipText(torch.nn.Module):
    """One CLIP model's text tower on a list of prompts (a module so that perf counts it)."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.clip.encode_text(texts, normalize=False)


@dataclass
class Pass:
    """What one sampling pass returns for the samples it ran."""

    images: torch.Tensor  # x0 predictions of the last step, [-1, 1]
    aborted: list[bool]
    cap_hit: list[bool]


class DiffuseITEngine:
    """The loaded UNet + diffusion + loss encoders; `DiffuseIT.translate` drives it."""

    def __init__(self, unet: Any, scheduler_config: dict[str, Any], *, device: Any, dtype: Any, preset: str,
                 backbone: str) -> None:
        self.unet = unet.requires_grad_(False).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.preset = preset
        self.backbone = backbone
        self.scheduler_config = dict(scheduler_config)
        self.backward_pass = GuidanceBackward()
        self._dino: dict[tuple[int, bool], DinoFeatures] = {}
        self._clip: dict[str, tuple[ClipViews, ClipText]] = {}
        self._diffusion: dict[str, GaussianDiffusion] = {}
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._identity: dict[str, Any] = {}

    def prompt_embedder(self, model_id: str, text: ClipText) -> Any:
        """Template-averaged prompt embeddings of one CLIP model, each prompt encoded once per engine (cached)."""
        def embed(prompts: list[str]) -> torch.Tensor:
            todo = list(dict.fromkeys(p for p in prompts if (model_id, p) not in self._text_cache))
            if todo:
                with torch.no_grad():
                    for p, e in zip(todo, template_embeddings(text, todo)):
                        self._text_cache[(model_id, p)] = e
            return torch.stack([self._text_cache[(model_id, p)] for p in prompts])

        return embed

    # -- components ------------------------------------------------------------------------------------------
    def diffusion(self, respacing: str) -> GaussianDiffusion:
        if respacing not in self._diffusion:
            cfg = self.scheduler_config
            schedule = cfg.get("beta_schedule", "linear")
            if schedule not in ("linear", "squaredcos_cap_v2"):
                raise InputError(f"diffuseit: unsupported beta schedule {schedule!r} in the scheduler config")
            try:
                self._diffusion[respacing] = GaussianDiffusion.from_config(
                    schedule, int(cfg.get("num_train_timesteps", 1000)), respacing=respacing)
            except ValueError as e:
                raise InputError(f"diffuseit: timestep_respacing={respacing!r} is invalid ({e}); use e.g. '100', "
                                 "'200' or 'ddim50'") from None
        return self._diffusion[respacing]

    def dino(self, short_side: int, antialias: bool = False) -> DinoFeatures:
        """DINO ViT-B/8 (tiny preset: the tiny ViT) features at input short side `short_side` (paper: 224)."""
        key = (short_side, antialias)
        if key not in self._dino:
            from eval.dino import load_dino

            extractor = next((d.extractor for d in self._dino.values()), None) or load_dino(self.preset,
                                                                                               str(self.device))
            self._dino[key] = DinoFeatures(extractor, short_side=short_side, antialias=antialias)
        return self._dino[key]

    def clip(self, model_ids: Sequence[str]) -> list[tuple[ClipViews, ClipText]]:
        from eval.clip import load_clip

        out = []
        for mid in model_ids:
            if mid not in self._clip:
                try:
                    clip = load_clip(mid, self.preset, str(self.device))
                except ValueError as e:
                    raise InputError(f"diffuseit: clip_models entry {mid!r}: {e}") from None
                self._clip[mid] = (ClipViews(clip), ClipText(clip))
            out.append(self._clip[mid])
        return out

    def identity(self, path: str) -> Any:
        """The FFHQ backbone's ArcFace identity loss (IR-SE50 from the official model_ir_se50.pth at `path`)."""
        if path not in self._identity:
            from .arcface import IdentityLoss, load_irse50

            self._identity[path] = IdentityLoss(load_irse50(path, self.device))
        return self._identity[path]

    def networks(self, clip_ids: Sequence[str], dino_size: int) -> dict[str, Any]:
        # the ViTs themselves, not the resizing/normalisation and key/similarity arithmetic around them
        nets: dict[str, Any] = {"unet": self.unet, "unet.backward": self.backward_pass,
                                "dino": self.dino(dino_size).trunk}
        for mid, (views, text) in zip(clip_ids, self.clip(clip_ids)):
            nets[f"clip[{mid}].image"] = getattr(getattr(views.clip, "model", None), "visual", views)
            nets[f"clip[{mid}].text"] = text
        return nets

    def unet_out(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        # Only the UNet runs in the run's dtype. Kept float32: the sampler's posterior math and the MCG / resampling
        # updates (differences of nearly equal values over 1000 steps), and the DINO / CLIP guidance losses with their
        # encoders (loaded in float32): their x1000-x3000 weighted gradients overflow float16 and lose the small
        # key-similarity differences in bfloat16.
        return self.unet(x.to(self.dtype), t_model.to(self.device)).sample.float()

    # -- one translate call ------------------------------------------------------------------------------------
    def run(self, images01: torch.Tensor, reference01: torch.Tensor | None, src_prompts: Sequence[str] | None,
            tgt_prompts: Sequence[str] | None, gens: Sequence[torch.Generator], cfg: dict[str, Any],
            ids: Sequence[str] | None = None) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """n_outputs edits per sample: a list (one per output) of B x 3 x S x S [0,1] tensors, and per-sample info."""
        b = images01.shape[0]
        ids = list(ids) if ids is not None else [str(i) for i in range(b)]
        size = int(cfg["model_output_size"])
        x0 = load_like_authors(images01, size).to(self.device) * 2 - 1
        text = reference01 is None
        ref = None if text else load_like_authors(reference01, size).to(self.device)
        ctx = _Context(self, cfg, x0, ref, src_prompts, tgt_prompts)
        outs, info = [], [{"restarts": 0, "range_restart_cap_hit": False} for _ in range(b)]
        for _ in range(int(cfg["n_outputs"])):
            result = [None] * b
            restarts = [0] * b
            pending = list(range(b))
            while pending:
                can = [restarts[i] < int(cfg["max_restarts"]) for i in pending]
                res = ctx.sample(pending, [gens[i] for i in pending], can)
                again = []
                for j, i in enumerate(pending):
                    if res.aborted[j]:
                        restarts[i] += 1
                        again.append(i)
                    else:
                        result[i] = res.images[j:j + 1]
                        if res.cap_hit[j]:
                            info[i]["range_restart_cap_hit"] = True
                            warnings.warn(f"diffuseit: sample {ids[i]} still exceeded the range-loss threshold after "
                                          f"{cfg['max_restarts']} restarts (max_restarts); its last try is kept",
                                          stacklevel=3)
                pending = again
            for i in range(b):
                info[i]["restarts"] += restarts[i]
            img = (torch.cat(result) + 1) / 2
            if not text and cfg["use_colormatch"]:
                img = torch.stack([mkl_transfer(img[i].clamp(0, 1), ref[i]) for i in range(b)])
            outs.append(img.clamp(0, 1))
        return outs, info


class _Context:
    """Per-translate state: the source/reference features and text targets (computed once) and the loop."""

    def __init__(self, eng: DiffuseITEngine, cfg: dict[str, Any], x0: torch.Tensor, ref01: torch.Tensor | None,
                 src_prompts: Sequence[str] | None, tgt_prompts: Sequence[str] | None) -> None:
        self.eng, self.cfg, self.x0 = eng, cfg, x0
        self.text = ref01 is None
        self.diff = eng.diffusion(str(cfg["timestep_respacing"]))
        skip = int(cfg["skip_timesteps"])
        if not 0 <= skip < self.diff.num_timesteps:
            raise InputError(f"diffuseit: skip_timesteps must lie in [0, {self.diff.num_timesteps}) for "
                             f"timestep_respacing={cfg['timestep_respacing']!r}, got {skip}")
        self.steps = list(range(self.diff.num_timesteps - skip))[::-1]
        w = {k: float(cfg[k]) for k in ("clip_guidance_lambda", "lambda_ssim", "lambda_contra_ssim",
                                         "lambda_dir_cls", "lambda_trg", "l2_trg_lambda", "range_lambda")}
        if self.text:
            w["lambda_trg"] = w["l2_trg_lambda"] = 0.0
        else:
            w["clip_guidance_lambda"] = 0.0
        self.ffhq = eng.backbone == "ffhq-256"
        thr = cfg["range_restart_threshold"]
        self.restart_threshold = float(thr) if thr is not None else (0.1 if self.ffhq else 0.01)
        # image_editor.py: with --use_ffhq, + id_lambda x IDLoss(x_in, init image) (ArcFace IR-SE50)
        w["id_lambda"] = float(cfg["id_lambda"]) if self.ffhq else 0.0
        self.idloss = eng.identity(str(cfg["id_weights"])) if w["id_lambda"] != 0 else None
        self.w = w
        self.use_dino = any(w[k] != 0 for k in ("lambda_ssim", "lambda_contra_ssim", "lambda_dir_cls", "lambda_trg"))
        self.guided = self.use_dino or any(w[k] != 0 for k in ("clip_guidance_lambda", "l2_trg_lambda",
                                                                "range_lambda", "id_lambda"))
        self.antialias = str(cfg["encoder_resize"]) == "antialias"
        self.dino = eng.dino(int(cfg["dino_size"]), self.antialias)
        src01 = (x0 + 1) / 2
        self.feat_src = self.cls_trg = self.ref = None
        with torch.no_grad():
            if self.use_dino:
                self.feat_src = self.dino(src01)
            if not self.text:
                self.ref = ref01 * 2 - 1
                if w["lambda_trg"] != 0:
                    self.cls_trg = self.dino(ref01)[2]
        self.clipdir = None
        self.loss_prev = torch.zeros(x0.shape[0], device=x0.device)
        if self.text and w["clip_guidance_lambda"] != 0:
            ids = [s.strip() for s in str(cfg["clip_models"]).split(",") if s.strip()]
            towers = eng.clip(ids)
            with torch.no_grad():
                embedders = [eng.prompt_embedder(mid, t) for mid, (_, t) in zip(ids, towers)]
                self.clipdir = ClipDirection([v for v, _ in towers], embedders, list(src_prompts or []),
                                             list(tgt_prompts or []), src01,
                                             lambda_src_text=float(cfg["lambda_src_text"]),
                                             lambda_src_image=float(cfg["lambda_src_image"]),
                                             antialias=self.antialias)
                # upstream's initial loss_prev: the loss of the source image, test transform
                self.loss_prev = self.clipdir.plain_loss(src01, list(range(x0.shape[0])))
        # the previous step's [CLS] per sample (upstream self.prev starts as the source image)
        self.prev_cls = None if self.feat_src is None else self.feat_src[2].clone()

    # -- the guidance loss at one step ------------------------------------------------------------------------
    def guide(self, x: torch.Tensor, i: int, idx: list[int], gens: Sequence[torch.Generator]
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """p(x_{t-1} | x_t) at respaced index i, -grad of the guidance loss (None when unguided), the per-sample
        weighted range loss (the restart criterion) and the per-sample total guidance loss."""
        eng, cfg, w, diff = self.eng, self.cfg, self.w, self.diff
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        with torch.set_grad_enabled(self.guided):
            x_req = x.detach().requires_grad_(self.guided)
            out = diff.p_mean_variance(eng.unet_out(x_req, diff.model_timesteps(t)), x_req, t, clip_denoised=False)
            x0p = out["pred_xstart"]
            r_w = range_loss(x0p) * w["range_lambda"]
            if not self.guided:
                return out, None, r_w.detach(), r_w.detach()
            fac = float(diff.sqrt_one_minus_alphas_cumprod[i])
            mixed = noise_mix(x_req, x0p, fac)
            total = r_w
            frac = torch.ones_like(r_w)
            if self.text and self.clipdir is not None:
                # image_editor.py cond_fn: frac_cont from the previous step's CLIP loss. use_prog_contrast halves
                # the contrastive weight while the loss is > -0.5 (its `elif > -0.4: 0.25` branch can never run);
                # regularize_content doubles it once the loss is < -0.5
                prev_loss = self.loss_prev[idx]
                if cfg["use_prog_contrast"]:
                    frac = torch.where(prev_loss > -0.5, 0.5, frac)
                if cfg["regularize_content"]:
                    frac = torch.where(prev_loss < -0.5, 2.0, frac)
            if self.clipdir is not None:
                n = int(cfg["aug_num"])
                params = [self.clipdir.draw(n, g, x.shape[-2], x.shape[-1]) for g in gens]
                c = self.clipdir.loss((mixed + 1) / 2, params, idx)
                total = total + w["clip_guidance_lambda"] * c
                self.loss_prev[idx] = c.detach()
            x_in = mixed if cfg["use_noise_aug_all"] else x0p
            if self.use_dino:
                keys, sim, cls = self.dino((x_in + 1) / 2)
                k_src, s_src, c_src = (f[idx] for f in self.feat_src)
                total = total + w["lambda_ssim"] * ssim_loss(sim, s_src)
                total = total + w["lambda_contra_ssim"] * frac * patch_nce_loss(keys, k_src,
                                                                                float(cfg["contra_tau"]))
                if i > int(cfg["diff_iter"]) and w["lambda_dir_cls"] != 0:
                    total = total - w["lambda_dir_cls"] * cls_mse(cls, self.prev_cls[idx])
                if self.cls_trg is not None:
                    total = total + w["lambda_trg"] * cls_mse(cls, self.cls_trg[idx])
                self.prev_cls[idx] = cls.detach()
            if self.idloss is not None:
                total = total + w["id_lambda"] * self.idloss(x_in, self.x0[idx])
            if not self.text and w["l2_trg_lambda"] != 0:
                total = total + w["l2_trg_lambda"] * (x_in - self.ref[idx]).square().mean(dim=(1, 2, 3))
            grad = -eng.backward_pass(total.sum(), x_req)
        return {k: v.detach() for k, v in out.items()}, grad, r_w.detach(), total.detach()

    # -- one pass over a sub-batch ------------------------------------------------------------------------------
    def sample(self, idx: list[int], gens: Sequence[torch.Generator], can_restart: list[bool]) -> Pass:
        cfg, diff = self.cfg, self.diff
        dev = self.x0.device

        def noise(active: list[int]) -> torch.Tensor:
            return torch.cat([torch.randn((1, *self.x0.shape[1:]), generator=gens[j], device=gens[j].device)
                              for j in active]).to(dev)

        n = len(idx)
        first = self.steps[0]
        alive = list(range(n))  # positions (into idx) still sampling
        aborted, cap_hit = [False] * n, [False] * n
        finals: list[torch.Tensor | None] = [None] * n
        x = diff.q_sample(self.x0[idx], torch.full((n,), first, dtype=torch.long, device=dev), noise(alive))
        if self.prev_cls is not None and cfg["prev_cls"] == "reset":
            self.prev_cls[idx] = self.feat_src[2][idx]
        ddim = bool(cfg["ddim"])
        eta = float(cfg["ddim_eta"])
        undo_prev = cfg["undo_beta"] == "prev"
        out: dict[str, torch.Tensor] = {}
        for i in self.steps:
            reps = max(1, int(cfg["resample_num"])) if i == first and not ddim else 1
            for r in range(reps):
                sub = [idx[j] for j in alive]
                g_sub = [gens[j] for j in alive]
                t = torch.full((len(alive),), i, dtype=torch.long, device=dev)
                out, grad, r_w, _ = self.guide(x, i, sub, g_sub)
                if ddim:
                    if grad is not None:
                        out = diff.condition_score(out, x, t, grad)
                    z = noise(alive) if eta > 0 else None
                    x_new = diff.ddim_sample(out, x, t, z, eta=eta)
                else:
                    mean = out["mean"] if grad is None else diff.condition_mean(out, grad)
                    x_new = diff.p_sample(out, x, t, noise(alive), mean=mean)
                if r != reps - 1:  # the authors pass t - 1 (at index 0 that wraps to the last beta, as upstream)
                    x_new = diff.undo(x_new, t - 1 if undo_prev else t, noise(alive))
                x = x_new
                # range restart: checked after every step but the first (image_editor.py: t < total_steps) and
                # acted on before the last (the progressive loop keeps the sample at i == 0)
                if cfg["use_range_restart"] and 0 < i < first:
                    over = (r_w > self.restart_threshold).tolist()
                    keep = []
                    for k, j in enumerate(alive):
                        if over[k] and can_restart[j]:
                            aborted[j] = True
                        else:
                            cap_hit[j] = cap_hit[j] or over[k]
                            keep.append(k)
                    if len(keep) != len(alive):
                        x, out = x[keep], {key: v[keep] for key, v in out.items()}
                        alive = [alive[k] for k in keep]
                if not alive:
                    break
            if not alive:
                break
        for k, j in enumerate(alive):
            finals[j] = out["pred_xstart"][k:k + 1]
        images = torch.cat([f if f is not None else torch.zeros_like(self.x0[:1]) for f in finals])
        return Pass(images=images, aborted=aborted, cap_hit=cap_hit)


def load_like_authors(images01: torch.Tensor, size: int) -> torch.Tensor:
    """B x 3 x size x size float32 [0, 1] on the CPU: each image as the authors read their input files, the 8-bit
    image resized with PIL LANCZOS (image_editor.py `Image.open(...).resize(image_size, Image.LANCZOS)`,
    `TF.to_tensor`). A same-size image only goes through the 8-bit quantisation (PIL returns a copy)."""
    import numpy as np
    from PIL import Image

    x8 = (images01.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((size, size), Image.LANCZOS)) for a in x8]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def resize_back(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def now() -> float:
    return time.perf_counter()


def load_backbone(source: str, backbone: str, dtype: Any) -> tuple[Any, dict[str, Any], str, str]:
    """(UNet2DModel, scheduler config, weights id, backbone name) from an official ADM checkpoint file, a converted
    diffusers dir (unet/ + scheduler/), a URL or a tiny preset."""
    import json

    from diffusers import UNet2DModel

    from ..base import WeightsNotFoundError
    from ..common.loading import resolve, weights_id
    from ..common.tiny import ADM_SCHEDULER
    from .convert import load_adm_checkpoint

    try:
        path = resolve(source)
    except WeightsNotFoundError as e:
        if source.startswith(("http://", "https://")):
            raise WeightsNotFoundError(
                f"{e}. DiffuseIT's paper preset is the guided-diffusion checkpoint {source} (2.2 GB): download it on "
                "a machine with internet and pass it with `--weights FILE` (converted on the fly; or convert once "
                "with methods.diffuseit.convert.write_converted), or run the random-init tiny model with "
                "`--preset tiny`") from None
        raise
    wid = weights_id(source, path)
    if path.is_file():
        unet, name = load_adm_checkpoint(path, backbone, dtype=dtype)
        return unet.requires_grad_(False).eval(), dict(ADM_SCHEDULER), wid, name
    if not (path / "unet" / "config.json").is_file():
        raise WeightsNotFoundError(
            f"{path} is neither an ADM checkpoint file nor a converted diffusers dir (unet/config.json missing); pass "
            "256x256_diffusion_uncond.pt or a dir written by methods.diffuseit.convert.write_converted")
    from ..common.full_random import is_random_init, random_part

    try:
        unet = random_part(UNet2DModel, path, "unet", dtype) if is_random_init(path) else \
            UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise WeightsNotFoundError(f"{path}/unet could not be loaded ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:300]}); re-convert or re-download it") from None
    if unet.config.out_channels != 2 * unet.config.in_channels:
        raise WeightsNotFoundError(f"{path}/unet predicts {unet.config.out_channels} channels; DiffuseIT needs a "
                                   "learned-variance ADM UNet (2 x in_channels outputs)")
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else dict(ADM_SCHEDULER)
    conv = path / "conversion.json"
    name = json.loads(conv.read_text()).get("backbone", "converted") if conv.is_file() else "diffusers-dir"
    return unet.requires_grad_(False).eval(), sched, wid, name
