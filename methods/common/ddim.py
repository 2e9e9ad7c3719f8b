"""Deterministic DDIM math shared by the inversion-based methods (pix2pix-zero, null-text-style inversions).

DDIM (Song et al., ICLR 2021, eq. 12 with eta = 0) moves a latent between two noise levels given a noise estimate:
    x_to = sqrt(a_to) * (x - sqrt(1 - a_from) * eps) / sqrt(a_from) + sqrt(1 - a_to) * eps
where a = alphas_cumprod. Sampling runs it towards less noise (diffusers `DDIMScheduler.step`), inversion towards
more noise with the noise predicted at the less noisy point. Denoising uses diffusers' own `DDIMScheduler`; this
module holds what diffusers has no public function for: prediction-type conversion, the level-to-level transfer,
and the inversion timestep schedules (the exact mirror of a `DDIMScheduler` run, and the pix2pix-zero authors'
variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INVERSION_SCHEDULES = ("mirror", "authors")


def to_epsilon(model_output: Any, sample: Any, alpha_prod: Any, prediction_type: str) -> Any:
    """The noise estimate implied by a model output of any prediction type (epsilon / v_prediction / sample).

    `alpha_prod` is alphas_cumprod at the timestep the model was called with (the noise level it assumes for
    `sample`); the formulas are the ones diffusers' DDIM schedulers use to get `pred_epsilon`.
    """
    if prediction_type == "epsilon":
        return model_output
    a = alpha_prod
    if prediction_type == "v_prediction":
        return a**0.5 * model_output + (1 - a) ** 0.5 * sample
    if prediction_type == "sample":
        return (sample - a**0.5 * model_output) / (1 - a) ** 0.5
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample")


def ddim_transfer(eps: Any, sample: Any, alpha_from: Any, alpha_to: Any) -> Any:
    """Move `sample` from noise level `alpha_from` to `alpha_to` along the DDIM (eta = 0) trajectory of `eps`."""
    pred_x0 = (sample - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * pred_x0 + (1 - alpha_to) ** 0.5 * eps


@dataclass(frozen=True)
class InversionStep:
    """One inversion step: call the model at `timestep`, then move from level `alpha_from` up to `alpha_to`."""

    timestep: int
    alpha_from: float
    alpha_to: float


def inversion_schedule(scheduler: Any, num_steps: int, kind: str = "mirror") -> list[InversionStep]:
    """The inversion steps (least noisy first) for a diffusers DDIM-family `scheduler` config.

    - "mirror": the exact reverse of `DDIMScheduler.set_timesteps(num_steps)` + `step`: for each sampling step
      t -> t - T/n (levels a[t] -> a[t - T/n], or `final_alpha_cumprod` below 0) the inversion goes a[t - T/n] -> a[t]
      calling the model at t, as diffusers' `DDIMInverseScheduler` does. Inverting then sampling with the same
      prompt reconstructs the input up to the usual eps(x_{t-1}, t) ~ eps(x_t, t) approximation.
    - "authors": pix2pix-zero's `src/utils/ddim_inv.py` loop with its `src/utils/scheduler.py` reverse step:
      timesteps (0..n-1) * T/n + steps_offset, ascending, the first and last skipped (48 steps for n = 50), the model
      called at t and the latent moved from a[t - 1] to a[t + T/n - 1]. It starts from the clean latent as if it were
      at level a[T/n] and stops one index short of the first sampling level, so it does not mirror the sampler.
    """
    import torch

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    cfg = scheduler.config
    T = int(cfg.num_train_timesteps)
    ratio = T // num_steps
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    if kind == "mirror":
        from diffusers import DDIMScheduler

        ddim = DDIMScheduler.from_config(cfg)
        ddim.set_timesteps(num_steps)
        final = float(ddim.final_alpha_cumprod)
        steps = []
        for t in reversed(ddim.timesteps.tolist()):
            prev = t - ratio  # DDIMScheduler.step: prev_timestep = timestep - T // num_inference_steps
            steps.append(InversionStep(int(t), float(alphas[prev]) if prev >= 0 else final, float(alphas[t])))
        return steps
    if kind == "authors":
        offset = int(getattr(cfg, "steps_offset", 0) or 0)
        ts = [i * ratio + offset for i in range(num_steps)][1:-1]
        return [InversionStep(t, float(alphas[t - 1]), float(alphas[min(t + ratio, T) - 1])) for t in ts]
    raise ValueError(f"unknown inversion schedule {kind!r}; expected one of {', '.join(INVERSION_SCHEDULES)}")
