"""DDIM inversion with pix2pix-zero's noise regularizer (Parmar et al., SIGGRAPH 2023, §3.1 "noise regularization").

At every inversion step the predicted noise e is pushed towards white Gaussian noise by plain gradient descent on
two losses (authors' `src/utils/ddim_inv.py`, `DDIMInversion.__call__` / `auto_corr_loss` / `kl_divergence`):

    for _ in range(num_reg_steps):                     # 5
        for _ in range(num_ac_rolls):                   # 5, each with fresh random shifts
            e = e - lambda_ac * dL_ac(e)/de / num_ac_rolls
        e = e - lambda_kl * dL_kl(e)/de

- L_ac, per channel of one sample: over a pyramid (the map, then 2x2 average-pooled until the side is <= 8),
  mean(n * roll(n, d, H))**2 + mean(n * roll(n, d, W))**2 with one random shift d per level and channel drawn
  uniformly from [1, S//2) (S = the level's height). Shift >= 1 is the authors' fix of 2024-09-05 (commit ec33392:
  a shift of 0 meant "the random roll would sometimes not get applied"); diffusers' deprecated pipeline still draws
  from [0, S//2).
- L_kl = var(e) + mean(e)**2 - 1 - log(var(e) + 1e-7) over all of one sample's elements (unbiased variance).

Deliberate differences from the authors' code, none of which changes the math for a batch of one:
- batches: upstream asserts batch size 1; here every sample has its own losses (a sum over samples has exactly the
  per-sample gradients) and draws its shifts from its own generator, so results do not depend on batching;
- gradients in closed form instead of autograd (25 + 5 backward passes per step were most of the regularizer's
  cost); `tests/test_pix2pix_zero.py` checks them against autograd of the loss written the upstream way;
- shifts come from the sample's torch.Generator, not Python's unseeded global `random`;
- latents whose side is < 4 (no valid shift range) use shift 1 instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .ddim import InversionStep, ddim_transfer

KL_EPS = 1e-7  # `kl_divergence` in src/utils/ddim_inv.py


def pyramid_sizes(height: int) -> list[int]:
    """Heights of the autocorrelation pyramid levels: halve (avg-pool 2x2) until the height is <= 8."""
    sizes = [height]
    while sizes[-1] > 8:
        sizes.append(sizes[-1] // 2)
    return sizes


def draw_shifts(generator: Any, n: int, channels: int, height: int, device: Any = None) -> Any:
    """n sets of random roll shifts, shape (n, channels, levels), d ~ U{1, ..., S//2 - 1} per level of height S.

    One `torch.rand` call on the sample's own generator (on the generator's device), so a sample's shifts do not
    depend on which other samples share its batch.
    """
    sizes = pyramid_sizes(height)
    gdev = generator.device if generator is not None else "cpu"
    u = torch.rand((n, channels, len(sizes)), generator=generator, device=gdev, dtype=torch.float64)
    span = torch.tensor([max(s // 2 - 1, 1) for s in sizes], dtype=torch.float64, device=gdev)
    return (1 + torch.floor(u * span).clamp_max(span - 1)).to(device=device or gdev, dtype=torch.long)


def autocorr_loss(x: Any, shifts: Any | None = None) -> Any:
    """The authors' autocorrelation loss per sample, written their way (channel loop, torch.roll, avg_pool2d).

    x: B x C x H x W. shifts: B x C x levels integer shifts, or None for shift 1 everywhere (upstream's
    `random_shift=False`, a deterministic measure of neighbour correlation). Returns a tensor of B losses.
    """

    b, c, h, _ = x.shape
    out = []
    for i in range(b):
        loss = x.new_zeros(())
        for ch in range(c):
            noise = x[i, ch][None, None]
            level = 0
            while True:
                d = 1 if shifts is None else int(shifts[i, ch, level])
                loss = loss + (noise * torch.roll(noise, shifts=d, dims=2)).mean() ** 2
                loss = loss + (noise * torch.roll(noise, shifts=d, dims=3)).mean() ** 2
                if noise.shape[2] <= 8:
                    break
                noise = F.avg_pool2d(noise, kernel_size=2)
                level += 1
        out.append(loss)
    return torch.stack(out)


def kl_loss(x: Any) -> Any:
    """The authors' KL-to-N(0, 1) term per sample: var + mean^2 - 1 - log(var + 1e-7) (unbiased var)."""
    flat = x.flatten(1)
    var = flat.var(dim=1)
    return var + flat.mean(dim=1) ** 2 - 1 - torch.log(var + KL_EPS)


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of each autocorrelation pyramid level (avg_pool2d(2) floors odd sizes)."""
    shapes = [(height, width)]
    while shapes[-1][0] > 8:
        h, w = shapes[-1]
        shapes.append((h // 2, w // 2))
    return shapes


def roll_indices(shifts: Any, height: int, width: int) -> list[tuple[Any, Any]]:
    """Gather indices of the +d and -d rolls for every level: per level (H index, W index), each (..., 2 x size)
    holding [(i - d) % size, (i + d) % size], so that one gather gives roll(x, d) and roll(x, -d) together."""
    out = []
    for level, (h, w) in enumerate(level_shapes(height, width)):
        d = shifts[..., level, None]
        per = []
        for size in (h, w):
            if per and size == h:  # square level: the W index equals the H index
                per.append(per[0])
                continue
            ar = torch.arange(size, device=shifts.device)
            per.append(torch.cat([(ar - d) % size, (ar + d) % size], dim=-1))
        out.append((per[0], per[1]))
    return out


def autocorr_grad(x: Any, shifts: Any, indices: list[tuple[Any, Any]] | None = None) -> Any:
    """d autocorr_loss(x, shifts).sum() / dx in closed form, vectorised over samples and channels.

    For m = mean(n * roll(n, d)) over N elements, d(m^2)/dn = 2 m (roll(n, d) + roll(n, -d)) / N; the pyramid's
    2x2 average pooling passes gradients back as g/4 on each input of a block (the rows/columns that odd sizes drop
    get none). `indices` (from `roll_indices(shifts, H, W)`) may be precomputed; shifts is then unused.
    """

    b, c, h, w = x.shape
    r = b * c
    if indices is None:
        indices = roll_indices(shifts, h, w)
    eta = x.reshape(r, h, w)
    grads: list[Any] = []
    for level, (ih, iw) in enumerate(indices):
        hh, ww = eta.shape[-2:]
        ih, iw = ih.reshape(r, 2 * hh), iw.reshape(r, 2 * ww)
        rh = eta.gather(1, ih[:, :, None].expand(r, 2 * hh, ww))  # [roll(+d); roll(-d)] along H
        rw = eta.gather(2, iw[:, None, :].expand(r, hh, 2 * ww))  # [roll(+d), roll(-d)] along W
        n = hh * ww
        # sums instead of .mean(dim=(1, 2)), which costs ~20x a sum on small CPU tensors (a dtype round trip)
        s_h = (eta * rh[:, :hh]).sum(dim=(1, 2), keepdim=True)
        s_w = (eta * rw[:, :, :ww]).sum(dim=(1, 2), keepdim=True)
        g = (rh[:, :hh] + rh[:, hh:]) * s_h + (rw[:, :, :ww] + rw[:, :, ww:]) * s_w
        grads.append(g * (2.0 / (n * n)))
        if level + 1 < len(indices):
            eta = F.avg_pool2d(eta[:, None], kernel_size=2)[:, 0]
    total = grads[-1]  # back through the pooling levels, coarsest first
    for g in reversed(grads[:-1]):
        hh, ww = g.shape[-2:]
        up = total.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) * 0.25
        total = g + torch.nn.functional.pad(up, (0, ww - up.shape[2], 0, hh - up.shape[1]))
    return total.reshape(b, c, h, w)


def kl_grad(x: Any) -> Any:
    """d kl_loss(x).sum() / dx in closed form (per sample; unbiased variance as torch.var)."""
    flat = x.flatten(1)
    n = flat.shape[1]
    mu = flat.sum(dim=1, keepdim=True) / n  # sums: .mean/.var cost ~20x more on small CPU tensors
    dev = flat - mu
    var = dev.square().sum(dim=1, keepdim=True) / (n - 1)
    g = dev * ((2.0 / (n - 1)) * (1 - 1 / (var + KL_EPS))) + mu * (2.0 / n)
    return g.reshape(x.shape)


class NoiseRegularizer(torch.nn.Module):
    """pix2pix-zero's noise regularization, as a parameter-free module (so a perf census times it as required work).

    Defaults from `DDIMInversion.__call__` (src/utils/ddim_inv.py): lambda_ac = lambda_kl = 20, 5 rounds x 5 rolls.
    forward(eps, indices): `indices` are the `roll_indices` of this step's shifts, shaped
    (B, num_reg_steps, num_ac_rolls, C, 2 x size) per level. Computes in float32, returns eps's dtype.
    """

    def __init__(self, lambda_ac: float = 20.0, lambda_kl: float = 20.0, num_reg_steps: int = 5,
                 num_ac_rolls: int = 5) -> None:
        super().__init__()
        self.lambda_ac, self.lambda_kl = float(lambda_ac), float(lambda_kl)
        self.num_reg_steps, self.num_ac_rolls = int(num_reg_steps), int(num_ac_rolls)

    @property
    def active(self) -> bool:
        return self.num_reg_steps > 0 and (self.lambda_ac > 0 or self.lambda_kl > 0)

    @property
    def needs_shifts(self) -> bool:
        return self.active and self.lambda_ac > 0 and self.num_ac_rolls > 0

    def extra_repr(self) -> str:
        return (f"lambda_ac={self.lambda_ac}, lambda_kl={self.lambda_kl}, num_reg_steps={self.num_reg_steps}, "
                f"num_ac_rolls={self.num_ac_rolls}")

    def forward(self, eps: Any, indices: Any | None = None) -> Any:
        if not self.active:
            return eps
        e = eps.detach().to(torch.float32)
        step_ac = self.lambda_ac / max(self.num_ac_rolls, 1)
        for outer in range(self.num_reg_steps):
            if self.needs_shifts:
                for roll in range(self.num_ac_rolls):
                    idx = [(ih[:, outer, roll], iw[:, outer, roll]) for ih, iw in indices]
                    e = e.sub(autocorr_grad(e, None, idx), alpha=step_ac)
            if self.lambda_kl > 0:
                e = e.sub(kl_grad(e), alpha=self.lambda_kl)
        return e.to(eps.dtype)


def step_indices(reg: NoiseRegularizer, generators: Sequence[Any], n_steps: int, shape: Sequence[int],
                 device: Any) -> list[tuple[Any, Any]] | None:
    """Roll indices for a whole inversion: per level (H index, W index) shaped
    (B, n_steps, num_reg_steps, num_ac_rolls, C, 2 x size). All shifts of a sample come from its own generator in
    one draw."""
    if not reg.needs_shifts or n_steps == 0:  # (the authors' schedule has no step for n <= 2)
        return None
    b, c, h, w = shape
    if generators is None or len(generators) != b:
        raise ValueError("regularized inversion needs one generator per sample")
    per_step = reg.num_reg_steps * reg.num_ac_rolls
    drawn = [draw_shifts(g, n_steps * per_step, c, h, device=device) for g in generators]
    shifts = torch.stack(drawn).reshape(b, n_steps, reg.num_reg_steps, reg.num_ac_rolls, c, -1)
    return roll_indices(shifts, h, w)


def regularize_noise(eps: Any, reg: NoiseRegularizer, shifts: Any | None) -> Any:
    """`reg` applied to eps with explicit shifts (B, num_reg_steps, num_ac_rolls, C, levels)."""
    idx = roll_indices(shifts, eps.shape[2], eps.shape[3]) if reg.needs_shifts else None
    return reg(eps, idx)


def ddim_invert(
    predict_eps: Callable[[Any, int], Any],
    latents: Any,
    steps: Sequence[InversionStep],
    *,
    reg: NoiseRegularizer | None = None,
    generators: Sequence[Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """DDIM inversion of `latents` (B x C x H x W, clean) along `steps`, optionally regularizing the noise.

    predict_eps(x, t) returns the model's noise estimate (already converted to epsilon and guided as wanted).
    With `reg` active, `generators` (one per sample) supply the random shifts.
    """
    x = latents
    indices = None
    if reg is not None:
        indices = step_indices(reg, generators, len(steps), x.shape, x.device)
    for i, st in enumerate(steps):
        eps = predict_eps(x, st.timestep)
        if reg is not None and reg.active:
            eps = reg(eps, None if indices is None else [(ih[:, i], iw[:, i]) for ih, iw in indices])
        x = ddim_transfer(eps, x, st.alpha_from, st.alpha_to)
        if progress is not None:
            progress(i)
    return x
