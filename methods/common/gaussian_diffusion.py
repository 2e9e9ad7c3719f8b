"""guided-diffusion's Gaussian-diffusion math (ADM, GLIDE, PITI, DiffuseIT), applied to model outputs.

Why by hand: diffusers' DDPMScheduler steps learned-range DDPM, but it has neither ADM's timestep respacing rule
(`space_timesteps`, incl. "ddimN" and section strings such as PITI's fast27), nor the variational-bound training
term of learned-sigma models (KL + discretised Gaussian NLL, Nichol & Dhariwal 2021), nor the importance
("loss-second-moment") timestep sampler, nor the classifier-guidance hooks ADM samplers use (`condition_mean`,
`condition_score`). Those are written here once, for every ADM-family method, after the published formulas
(Ho et al. 2020; Nichol & Dhariwal 2021 §3.1 and appendix; Dhariwal & Nichol 2021 algorithm 1/2) and
guided-diffusion's conventions:

- schedules are float64 numpy arrays; per-step values are gathered to tensors of the input's dtype (at least fp32);
- a respaced diffusion keeps `timestep_map` (respaced index -> original timestep); models are fed the ORIGINAL
  timestep value (`model_timesteps`, ADM's `rescale_timesteps=True` convention, t * 1000 / original_steps);
- learned-range variance: the model's second C channels v in [-1, 1] interpolate the log variance between the
  clipped posterior log variance and log beta_t;
- `p_sample` adds no noise at index 0.

The networks are called by the methods (so guidance, CFG batching and gradients stay under their control); this
module only does arithmetic on their outputs. Tests: tests/test_gaussian_diffusion.py (diffusers' DDPMScheduler as
an independent reference for the sampling step, closed forms for the losses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

FAST27_SECTIONS = "10,10,3,2,2"


def space_timesteps(num_timesteps: int, section_counts: str | Iterable[int]) -> set[int]:
    """The original timesteps a respaced process keeps (guided-diffusion's rule).

    `section_counts` is "ddimN" (the stride-k range of exactly N steps, as DDIM's paper), a comma list such as
    "100" or "10,10,3,2,2" (the process is cut into equal sections and each section's count is spread evenly over
    it, first and last step of a section included, positions accumulated then rounded), or a list of ints.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {want} steps with an integer stride over {num_timesteps}")
        counts = [int(c) for c in section_counts.split(",")]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"section counts must be non-negative integers, got {section_counts!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    steps: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # positions accumulate in floating point and are rounded after each addition (guided-diffusion
        # respace.py space_timesteps: `cur_idx += frac_stride`); rounding j * stride instead picks a different
        # step for some counts (e.g. "21": 499 here, 500 with j * stride), so the accumulation is kept
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


def fast27_timesteps() -> set[int]:
    """PITI's upsampler respacing "fast27": space_timesteps(1000, "10,10,3,2,2") with 999 replaced by 997
    (the 27-step schedule PITI's sampler requests by that name for its upsampler)."""
    steps = space_timesteps(1000, FAST27_SECTIONS)
    steps.discard(999)
    steps.add(997)
    return steps


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """'linear' (Ho et al., scaled so any T matches the 1000-step range) or 'squaredcos_cap_v2' (Nichol & Dhariwal
    cosine alpha-bar with s = 0.008, betas capped at 0.999)."""
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    if name in ("cosine", "squaredcos_cap_v2"):
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                         for i in range(num_timesteps)], dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; choose 'linear' or 'squaredcos_cap_v2'")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
                                        ) -> torch.Tensor:
    """Log-likelihood of 8-bit data x in [-1, 1] (bins of width 2/255, open-ended edge bins) under N(means, scale)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


class GaussianDiffusion:
    """A (possibly respaced) DDPM with learned-range variance: schedule arrays plus the per-step formulas."""

    def __init__(self, betas: np.ndarray, *, timestep_map: Iterable[int] | None = None, original_num_steps: int | None
                 = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        tmap = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        if len(tmap) != self.num_timesteps:
            raise ValueError(f"timestep_map has {len(tmap)} entries for {self.num_timesteps} steps")
        self.timestep_map = torch.tensor(tmap, dtype=torch.long)
        self.original_num_steps = original_num_steps or self.num_timesteps
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = ac_prev
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # the posterior variance is 0 at t = 0: its log is clipped to the value at t = 1 (guided-diffusion)
        pv1 = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(pv1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        self.log_betas = np.log(betas)

    @classmethod
    def from_config(cls, schedule: str = "linear", num_timesteps: int = 1000,
                    respacing: str | Iterable[int] | None = None) -> GaussianDiffusion:
        """The base process of `schedule`, respaced when `respacing` is given (a section string, "ddimN", "fast27",
        or an explicit set of original timesteps)."""
        base = cls(get_named_beta_schedule(schedule, num_timesteps))
        if respacing is None or respacing == "":
            return base
        if isinstance(respacing, str):
            use = fast27_timesteps() if respacing == "fast27" else space_timesteps(num_timesteps, respacing)
        else:
            use = set(int(t) for t in respacing)
        return base.respace(use)

    def respace(self, use_timesteps: Iterable[int]) -> GaussianDiffusion:
        """Keep only `use_timesteps` (original indices): new betas 1 - abar_t / abar_prev_kept (guided-diffusion)."""
        use = sorted(set(int(t) for t in use_timesteps))
        if not use or use[0] < 0 or use[-1] >= self.num_timesteps:
            raise ValueError(f"respaced timesteps must lie in [0, {self.num_timesteps}), got {use[:3]}...{use[-3:]}")
        last, betas = 1.0, []
        for t in use:
            betas.append(1.0 - self.alphas_cumprod[t] / last)
            last = self.alphas_cumprod[t]
        tmap = [int(self.timestep_map[t]) for t in use]
        return GaussianDiffusion(np.array(betas), timestep_map=tmap, original_num_steps=self.original_num_steps)

    # -- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(like.dtype, torch.float32)
        out = torch.as_tensor(arr, device=like.device)[t.to(like.device)].to(dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep values to feed the network for respaced indices t (original steps, scaled to 1000)."""
        return self.timestep_map.to(t.device)[t].float() * (1000.0 / self.original_num_steps)

    # -- forward process ------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def undo(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step with beta_t: sqrt(1 - beta_t) x + sqrt(beta_t) noise (RePaint-style resampling)."""
        beta = self._extract(self.betas, t, x)
        return torch.sqrt(1.0 - beta) * x + torch.sqrt(beta) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._extract(self.posterior_mean_coef1, t, x_t) * x0 + \
            self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        return (mean, self._extract(self.posterior_variance, t, x_t),
                self._extract(self.posterior_log_variance_clipped, t, x_t))

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - \
            self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / \
            self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    # -- reverse process ------------------------------------------------------------------------------------
    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                        clip_denoised: bool = True, denoised_fn=None) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a learned-range model output B x 2C x H x W (eps, v).

        Returns mean, variance, log_variance, pred_xstart (after `denoised_fn`, then clipped to [-1, 1] when
        `clip_denoised`) and eps (the model's noise prediction).
        """
        c = x_t.shape[1]
        if model_output.shape[1] != 2 * c:
            raise ValueError(f"a learned-variance model outputs {2 * c} channels for {c}-channel x_t, "
                             f"got {model_output.shape[1]}")
        eps, v = model_output[:, :c], model_output[:, c:]
        frac = (v + 1) / 2
        log_variance = frac * self._extract(self.log_betas, t, x_t) + \
            (1 - frac) * self._extract(self.posterior_log_variance_clipped, t, x_t)
        x0 = self.predict_xstart_from_eps(x_t, t, eps)
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance,
                "pred_xstart": x0, "eps": eps}

    @staticmethod
    def condition_mean(out: dict[str, torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
        """Classifier / MCG guidance on the mean: mean + variance * grad, grad = grad log p(y | x_t) (ADM)."""
        return out["mean"] + out["variance"] * grad

    def condition_score(self, out: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                        grad: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score-side guidance for DDIM (Song et al. 2021 / ADM): eps - sqrt(1 - abar_t) grad; x0 and mean redone."""
        eps = out["eps"] - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * grad
        x0 = self.predict_xstart_from_eps(x_t, t, eps)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        return {**out, "eps": eps, "pred_xstart": x0, "mean": mean}

    @staticmethod
    def _nonzero(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (t != 0).to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def p_sample(self, out: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 mean: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t-1} = mean + exp(log_variance / 2) noise (no noise at t = 0); `mean` overrides out['mean']."""
        mean = out["mean"] if mean is None else mean
        return mean + self._nonzero(t, x_t) * torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_sample(self, out: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor | None = None, eta: float = 0.0) -> torch.Tensor:
        """A DDIM step from out['pred_xstart'] (eps re-derived from it, as ADM does after clipping)."""
        x0 = out["pred_xstart"]
        eps = self.predict_eps_from_xstart(x_t, t, x0)
        ac = self._extract(self.alphas_cumprod, t, x_t)
        ac_prev = self._extract(self.alphas_cumprod_prev, t, x_t)
        sigma = eta * torch.sqrt((1 - ac_prev) / (1 - ac)) * torch.sqrt(1 - ac / ac_prev)
        mean = x0 * torch.sqrt(ac_prev) + torch.sqrt(1 - ac_prev - sigma**2) * eps
        if eta == 0 or noise is None:
            return mean
        return mean + self._nonzero(t, x_t) * sigma * noise

    # -- training -------------------------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                     ) -> torch.Tensor:
        """Per-sample variational-bound term in bits per dim: KL(q || p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        ll = discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = -mean_flat(ll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, *, rescaled: bool = False) -> dict[str, torch.Tensor]:
        """Per-sample hybrid loss of a learned-sigma model (Nichol & Dhariwal): eps MSE + VB.

        The VB term sees the eps prediction detached, so it trains only the variance channels; `rescaled`
        (RESCALED_MSE, guided-diffusion's rescale_learned_sigmas) multiplies it by num_timesteps / 1000.
        """
        c = x_t.shape[1]
        eps = model_output[:, :c]
        frozen = torch.cat([eps.detach(), model_output[:, c:]], dim=1)
        vb = self.vb_terms_bpd(frozen, x0, x_t, t)
        if rescaled:
            vb = vb * self.num_timesteps / 1000.0
        mse = mean_flat((noise - eps) ** 2)
        return {"mse": mse, "vb": vb, "loss": mse + vb}


class UniformSampler:
    """Timesteps drawn uniformly; importance weights all 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps, dtype=np.float64)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weights): t ~ p = w / sum(w) (seeded), weights = 1 / (T p_t) so the loss estimate stays unbiased."""
        w = self.weights()
        p = torch.as_tensor(w / w.sum())
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)

    def update_with_local_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses (only the importance sampler uses them)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentResampler(UniformSampler):
    """guided-diffusion's importance sampler: p_t proportional to sqrt(E[loss_t^2]) over the last
    `history_per_term` losses of each t, mixed with `uniform_prob` of uniform; uniform until every t has a full
    history. (Single process: with several processes, gather t and losses before updating, as upstream does.)"""

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w = w / w.sum() * (1 - self.uniform_prob)
        return w + self.uniform_prob / len(w)

    def update_with_local_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for ti, loss in zip(t.tolist(), losses.detach().float().cpu().tolist()):
            if self.loss_counts[ti] == self.history_per_term:
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:]
                self.loss_history[ti, -1] = loss
            else:
                self.loss_history[ti, self.loss_counts[ti]] = loss
                self.loss_counts[ti] += 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = np.asarray(state["loss_history"], dtype=np.float64).copy()
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()
