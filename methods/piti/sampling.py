"""PITI's two-stage sampler: guided base model (64 px) -> 8-bit quantisation -> upsampler (256 px).

As released (PITI `image_sample.py`, `pretrained_diffusion/glide_util.py`, `sample.sh`):
1. Base: ancestral DDPM with learned variance over the respaced process (`prediction_respacing="250"`),
   `clip_denoised=True`, classifier-free guidance on the condition vs the all-ones null condition, both halves fed
   the same x_t. Guided eps only; the variance channels of the CONDITIONAL half are used ("plain" guidance:
   eps_u + s (eps_c - eps_u), s = sample_c = 1.3). DDIM (eta 0 by default) is an option.
2. The base sample is clamped and quantised to 8 bit, `(127.5 (x + 1)).int() / 127.5 - 1` (truncation), and is the
   upsampler's `low_res`.
3. Upsampler: its own encoder of the same condition, no guidance, respacing "fast27", initial noise x 0.997
   (`upsample_temp`), ancestral DDPM, clip_denoised.

"normalized" guidance (the paper's normalized classifier-free guidance, arXiv 2205.12952 sec. 3): plain CFG shifts
the mean and inflates the spread of the guided noise estimate; the guided estimate is re-standardised to the
conditional prediction's statistics:
    eps_hat = eps_u + s (eps_c - eps_u)
    eps_tilde = (eps_hat - mean(eps_hat)) / std(eps_hat) * std(eps_c) + mean(eps_c)
with mean/std PER SAMPLE over all C x H x W eps values (per_channel=True: per sample and channel). I could not read
the paper's section 3 text here (only its abstract is reachable offline); secondary notes on the paper reconstruct it
as eps_tilde = (eps_hat - mu_hat) / sigma_hat * sigma + mu with mu_hat = (1+w) mu - w mu_u (w = s - 1; equal to
mean(eps_hat) exactly, by linearity) and sigma_hat^2 = (1+w)^2 sigma^2 + w^2 sigma_u^2, which assumes eps_c and eps_u
independent. We use the EMPIRICAL std of eps_hat instead of that independence formula, so the output has exactly the
conditional prediction's mean and std (the property the method is after; the two differ when eps_c and eps_u are
correlated, which they are). At s = 1 both modes return eps_c.

Seeding: one generator per sample; each sample's initial noise and per-step noise are drawn from its own generator,
so a batch equals the same samples run one by one (up to batched-kernel rounding).

Deliberate differences: the encoders run once per sample (their output does not depend on t; upstream re-encodes the
condition at every step), the null condition is encoded once and broadcast, and at guidance scale 1 the
unconditional half is skipped (CFG at s = 1 is the conditional prediction).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..common.gaussian_diffusion import GaussianDiffusion
from .adapters import unconditional
from .model import PITIModel

GUIDANCE_MODES = ("plain", "normalized")
SAMPLERS = ("ddpm", "ddim")


def plain_guidance(eps_c: torch.Tensor, eps_u: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as released (glide_util.py): eps_u + s (eps_c - eps_u)."""
    return eps_u + scale * (eps_c - eps_u)


def normalized_guidance(eps_c: torch.Tensor, eps_u: torch.Tensor, scale: float, *, per_channel: bool = False,
                        eps: float = 1e-12) -> torch.Tensor:
    """Plain CFG re-standardised to the conditional prediction's mean and std (per sample, or per sample and
    channel); statistics in float64 so the match is exact to float rounding."""
    guided = plain_guidance(eps_c, eps_u, scale)
    if scale == 1.0:
        return guided
    dims = tuple(range(2, eps_c.ndim)) if per_channel else tuple(range(1, eps_c.ndim))
    g, c = guided.double(), eps_c.double()
    mu_g, sd_g = g.mean(dim=dims, keepdim=True), g.std(dim=dims, keepdim=True, unbiased=False)
    mu_c, sd_c = c.mean(dim=dims, keepdim=True), c.std(dim=dims, keepdim=True, unbiased=False)
    return ((g - mu_g) / sd_g.clamp_min(eps) * sd_c + mu_c).to(eps_c.dtype)


def guide(eps_c: torch.Tensor, eps_u: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    if mode == "plain":
        return plain_guidance(eps_c, eps_u, scale)
    if mode == "normalized":
        return normalized_guidance(eps_c, eps_u, scale)
    raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {mode!r}")


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """image_sample.py: clamp to [-1, 1], (127.5 (x + 1)).int() / 127.5 - 1 (int() truncates)."""
    return (127.5 * (x.clamp(-1, 1) + 1)).to(torch.int32).to(x.dtype) / 127.5 - 1


def _randn(gens: Sequence[torch.Generator], shape: tuple[int, ...], device: Any, dtype: Any) -> torch.Tensor:
    return torch.cat([torch.randn((1, *shape), generator=g, device=g.device, dtype=torch.float32)
                      for g in gens]).to(device=device, dtype=dtype)


@dataclass
class SampleResult:
    images: torch.Tensor  # B x 3 x H x W in [-1, 1] (upsampler resolution)
    low_res: torch.Tensor  # B x 3 x h x w quantised base output in [-1, 1]
    timings: dict[str, float] = field(default_factory=dict)


def sample_base(model: PITIModel, cond: torch.Tensor, gens: Sequence[torch.Generator], *, respacing: str = "250",
                guidance_scale: float = 1.3, guidance: str = "plain", sampler: str = "ddpm", eta: float = 0.0,
                clip_denoised: bool = True, progress: Any = None) -> torch.Tensor:
    """The base model's 64 px sample (float, [-1, 1] after clip, not yet quantised) for conditions in [-1, 1]."""
    cfg = model.config
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {guidance!r}")
    gd = GaussianDiffusion.from_config(cfg.noise_schedule, cfg.diffusion_steps, respacing)
    b = cond.shape[0]
    dtype = next(model.parameters()).dtype
    device = cond.device
    pooled, tokens = model.encode(cond.to(dtype))
    guided = float(guidance_scale) != 1.0
    if guided:  # the null condition is the same for every sample: encode once, broadcast
        pu, tu = model.encode(unconditional(cond.to(dtype)))
        pooled = torch.cat([pooled, pu.expand(b, -1)])
        tokens = torch.cat([tokens, tu.expand(b, -1, -1)])
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    # x_t, the guidance combination and the p_sample math stay float32 whatever the model dtype: 250 steps of
    # posterior means from nearly equal terms drift in half precision; only the networks run in `dtype`
    x = _randn(gens, shape, device, torch.float32)
    for i in reversed(range(gd.num_timesteps)):
        t = torch.full((b,), i, dtype=torch.long, device=device)
        ts = gd.model_timesteps(t)
        if guided:
            out = model.decode(torch.cat([x, x]).to(dtype), torch.cat([ts, ts]), pooled, tokens).float()
            c = cfg.in_channels
            cond_out, uncond_out = out[:b], out[b:]
            eps = guide(cond_out[:, :c], uncond_out[:, :c], float(guidance_scale), guidance)
            out = torch.cat([eps, cond_out[:, c:]], dim=1)  # the conditional half's variance (glide_util.py)
        else:
            out = model.decode(x.to(dtype), ts, pooled, tokens).float()
        o = gd.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
        if sampler == "ddpm":
            x = gd.p_sample(o, x, t, _randn(gens, shape, device, torch.float32) if i > 0 else torch.zeros_like(x))
        else:
            noise = _randn(gens, shape, device, torch.float32) if (eta > 0 and i > 0) else None
            x = gd.ddim_sample(o, x, t, noise, eta=eta)
        if progress is not None:
            progress.update(1)
    return x


def sample_upsample(model: PITIModel, cond: torch.Tensor, low_res: torch.Tensor, gens: Sequence[torch.Generator], *,
                    respacing: str = "fast27", temperature: float = 0.997, clip_denoised: bool = True,
                    progress: Any = None) -> torch.Tensor:
    """The upsampler's sample (no guidance; image_sample.py) conditioned on `low_res` and its own encoding of cond."""
    cfg = model.config
    gd = GaussianDiffusion.from_config(cfg.noise_schedule, cfg.diffusion_steps, respacing)
    b = cond.shape[0]
    dtype = next(model.parameters()).dtype
    device = cond.device
    pooled, tokens = model.encode(cond.to(dtype))
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    x = _randn(gens, shape, device, torch.float32) * float(temperature)
    lr = low_res.to(dtype)
    for i in reversed(range(gd.num_timesteps)):
        t = torch.full((b,), i, dtype=torch.long, device=device)
        out = model.decode(x.to(dtype), gd.model_timesteps(t), pooled, tokens, lr).float()
        o = gd.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
        x = gd.p_sample(o, x, t, _randn(gens, shape, device, torch.float32) if i > 0 else torch.zeros_like(x))
        if progress is not None:
            progress.update(1)
    return x


def sample(base: PITIModel, upsampler: PITIModel, cond: torch.Tensor, gens: Sequence[torch.Generator], *,
           base_respacing: str = "250", guidance_scale: float = 1.3, guidance: str = "plain", sampler: str = "ddpm",
           eta: float = 0.0, upsample_respacing: str = "fast27", upsample_temp: float = 0.997,
           progress: Any = None) -> SampleResult:
    """Both stages for encoder inputs `cond` (B x C x 256 x 256 in [-1, 1]) with one generator per sample."""
    if len(gens) != cond.shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {cond.shape[0]}")
    if upsampler.config.low_res_size != base.config.image_size:
        raise ValueError(f"the upsampler expects {upsampler.config.low_res_size} px inputs, the base model makes "
                         f"{base.config.image_size} px")
    t0 = time.perf_counter()
    x = sample_base(base, cond, gens, respacing=base_respacing, guidance_scale=guidance_scale, guidance=guidance,
                    sampler=sampler, eta=eta, progress=progress)
    low = quantize_8bit(x)
    t1 = time.perf_counter()
    y = sample_upsample(upsampler, cond, low, gens, respacing=upsample_respacing, temperature=upsample_temp,
                        progress=progress)
    t2 = time.perf_counter()
    return SampleResult(images=y.clamp(-1, 1), low_res=low,
                        timings={"time_base_s": t1 - t0, "time_upsample_s": t2 - t1})


def num_steps(respacing: str, diffusion_steps: int = 1000) -> int:
    """How many steps a respacing string gives (for progress bars and validation)."""
    return GaussianDiffusion.from_config("linear", diffusion_steps, respacing).num_timesteps


__all__ = ["GUIDANCE_MODES", "SAMPLERS", "SampleResult", "guide", "normalized_guidance", "num_steps",
           "plain_guidance", "quantize_8bit", "sample", "sample_base", "sample_upsample"]
