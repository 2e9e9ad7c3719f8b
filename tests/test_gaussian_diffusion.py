"""The shared ADM diffusion math: respacing rule, sampling step (diffusers' DDPMScheduler as an independent
reference), guidance hooks, training losses (closed forms) and the importance timestep sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.common.gaussian_diffusion import (
    GaussianDiffusion,
    LossSecondMomentResampler,
    UniformSampler,
    discretized_gaussian_log_likelihood,
    fast27_timesteps,
    get_named_beta_schedule,
    normal_kl,
    space_timesteps,
)


def test_space_timesteps_rules():
    s100 = sorted(space_timesteps(1000, "100"))
    assert len(s100) == 100 and s100[0] == 0 and s100[-1] == 999
    assert s100[:4] == [0, 10, 20, 30] and s100[50] == round(50 * 999 / 99)  # stride (1000-1)/(100-1)
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "1000") == set(range(1000))
    f = sorted(fast27_timesteps())
    assert len(f) == 27 and 997 in f and 999 not in f
    # sections of 200 steps: 10, 10, 3, 2, 2 steps, each starting at its section start
    assert f[:10] == [round(i * 199 / 9) for i in range(10)]
    assert [t for t in f if 400 <= t < 600] == [400, 500, 599] and [t for t in f if t >= 800] == [800, 997]
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, "11")
    with pytest.raises(ValueError, match="exactly"):
        space_timesteps(1000, "ddim999")


# Reference values: guided-diffusion `guided_diffusion/respace.py` space_timesteps, run unmodified
# (openai/guided-diffusion 22e0df8183507e13a7813f8d38d51b072ca1e67c; DiffuseIT and PITI vendor the same function)
# on num_timesteps=1000; (count, sum, full sorted list or first/last five).
UPSTREAM_SPACINGS = {
    "21": (21, 10489, [0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 499, 549, 599, 649, 699, 749, 799, 849, 899,
                       949, 999]),
    "7": (7, 3496, [0, 166, 333, 500, 666, 832, 999]),
    "10,10,3,2,2": (27, 8687, [0, 22, 44, 66, 88, 111, 133, 155, 177, 199, 200, 222, 244, 266, 288, 311, 333, 355,
                               377, 399, 400, 500, 599, 600, 799, 800, 999]),
    "7,13": (20, 11491, [0, 83, 166, 250, 333, 416, 499, 500, 542, 583, 625, 666, 708, 750, 791, 833, 874, 916, 957,
                         999]),
    "3,5,9": (17, 10496, [0, 166, 333, 334, 417, 500, 583, 666, 667, 709, 750, 791, 833, 875, 916, 957, 999]),
    "100": (100, 49950, [0, 10, 20, 30, 40, 959, 969, 979, 989, 999]),
    "250": (250, 124875, [0, 4, 8, 12, 16, 983, 987, 991, 995, 999]),
    "999": (999, 499000, [0, 1, 2, 3, 4, 995, 996, 997, 998, 999]),
}


@pytest.mark.parametrize("spacing", sorted(UPSTREAM_SPACINGS))
def test_space_timesteps_matches_guided_diffusion(spacing):
    """Odd counts round the ACCUMULATED position (`cur_idx += frac_stride`), not j * stride: for "21" upstream keeps
    499 where j * stride rounds to 500 (278 of the 1000 single-section strings differ between the two rules)."""
    n, total, listed = UPSTREAM_SPACINGS[spacing]
    got = sorted(space_timesteps(1000, spacing))
    assert len(got) == n and sum(got) == total
    assert got == listed or got[:5] + got[-5:] == listed


def test_fast27_matches_pitis_respace():
    """PITI's own pretrained_diffusion/respace.py space_timesteps(1000, "fast27") (PITI-Synthesis/PITI d9f7481,
    run unmodified): "10,10,3,2,2" with 999 replaced by 997."""
    assert sorted(fast27_timesteps()) == [0, 22, 44, 66, 88, 111, 133, 155, 177, 199, 200, 222, 244, 266, 288, 311,
                                          333, 355, 377, 399, 400, 500, 599, 600, 799, 800, 997]
    assert sorted(space_timesteps(1000, "27")) == [0, 38, 77, 115, 154, 192, 231, 269, 307, 346, 384, 423, 461, 499,
                                                   538, 576, 615, 653, 692, 730, 768, 807, 845, 884, 922, 961, 999]


def test_beta_schedules():
    lin = get_named_beta_schedule("linear", 1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    cos = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    ab = np.cumprod(1 - cos)
    f = np.cos((np.arange(0, 1001) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    target = f[1:] / f[0]
    assert np.allclose(ab[:-1], target[:-1], atol=1e-6) and cos.max() <= 0.999
    with pytest.raises(ValueError, match="unknown beta schedule"):
        get_named_beta_schedule("quad", 10)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    base = GaussianDiffusion.from_config("linear", 1000)
    sp = GaussianDiffusion.from_config("linear", 1000, respacing="100")
    kept = sorted(space_timesteps(1000, "100"))
    assert sp.num_timesteps == 100 and sp.timestep_map.tolist() == kept
    assert np.allclose(sp.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    t = torch.tensor([0, 5, 99])
    assert sp.model_timesteps(t).tolist() == [0.0, float(kept[5]), 999.0]
    full = base.respace(range(1000))
    assert np.allclose(full.betas, base.betas)


def test_p_sample_equals_diffusers_learned_range_ddpm_step():
    from diffusers import DDPMScheduler

    sp = GaussianDiffusion.from_config("linear", 1000, respacing="50")
    sched = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                          variance_type="learned_range", clip_sample=True)
    sched.set_timesteps(timesteps=sorted(sp.timestep_map.tolist(), reverse=True))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    for i in (49, 30, 1):
        model_out = torch.cat([torch.randn(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g) * 2 - 1], 1)
        t = torch.full((2,), i)
        out = sp.p_mean_variance(model_out, x, t, clip_denoised=True)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        ours = sp.p_sample(out, x, t, noise)
        ref = sched.step(model_out, int(sp.timestep_map[i]), x, generator=torch.Generator().manual_seed(i)).prev_sample
        # diffusers keeps its schedule in float32 (alphas_cumprod as a float32 cumprod), ADM in float64: the
        # reference itself carries ~1e-6 relative schedule error (observed max 5.5e-6 on values up to ~4)
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4), (i, (ours - ref).abs().max())
    # index 0: the mean, no noise
    out = sp.p_mean_variance(model_out, x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(sp.p_sample(out, x, torch.zeros(2, dtype=torch.long), torch.randn(x.shape)), out["mean"])


def test_guidance_hooks_and_ddim():
    sp = GaussianDiffusion.from_config("linear", 1000, respacing="20")
    x = torch.randn(1, 3, 4, 4)
    t = torch.tensor([10])
    out = sp.p_mean_variance(torch.cat([torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)], 1), x, t,
                             clip_denoised=False)
    grad = torch.randn_like(x)
    assert torch.allclose(sp.condition_mean(out, grad), out["mean"] + out["variance"] * grad)
    assert torch.equal(sp.condition_mean(out, torch.zeros_like(x)), out["mean"])
    # v = 0 puts the log variance halfway between the clipped posterior log variance and log beta
    mid = 0.5 * (math.log(sp.betas[10]) + sp.posterior_log_variance_clipped[10])
    assert torch.allclose(out["log_variance"], torch.full_like(x, mid))
    same = sp.condition_score(out, x, t, torch.zeros_like(x))
    assert torch.allclose(same["pred_xstart"], out["pred_xstart"], atol=1e-6)
    # deterministic DDIM from the exact x0 and eps lands on the forward-process mean of the previous step
    x0, eps = torch.randn(1, 3, 4, 4).clamp(-1, 1), torch.randn(1, 3, 4, 4)
    xt = sp.q_sample(x0, t, eps)
    prev = sp.ddim_sample({"pred_xstart": x0}, xt, t)
    ac_prev = sp.alphas_cumprod_prev[10]
    assert torch.allclose(prev, math.sqrt(ac_prev) * x0 + math.sqrt(1 - ac_prev) * eps, atol=1e-5)
    und = sp.undo(x, t, torch.zeros_like(x))
    assert torch.allclose(und, math.sqrt(1 - sp.betas[10]) * x)


def test_training_losses():
    d = GaussianDiffusion.from_config("squaredcos_cap_v2", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 40, 99])
    xt = d.q_sample(x0, t, noise)
    v = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    exact = d.training_losses(torch.cat([noise, v], 1), x0, xt, t, noise)
    assert torch.allclose(exact["mse"], torch.zeros(3))
    # VB with the exact eps: KL between two Gaussians with the same mean -> only the variance mismatch remains
    post_lv = d.posterior_log_variance_clipped[40]
    out = d.p_mean_variance(torch.cat([noise, v], 1), xt, t, clip_denoised=False)
    kl_var = 0.5 * (-1 + out["log_variance"][1] - post_lv + torch.exp(post_lv - out["log_variance"][1]))
    assert exact["vb"][1] == pytest.approx(float(kl_var.mean() / math.log(2)), rel=1e-4)
    rescaled = d.training_losses(torch.cat([noise, v], 1), x0, xt, t, noise, rescaled=True)
    assert torch.allclose(rescaled["vb"], exact["vb"] * 100 / 1000)
    # the VB term does not train the eps channels
    out_p = torch.cat([noise + 0.1, v], 1).requires_grad_(True)
    d.training_losses(out_p, x0, xt, t, noise)["vb"].sum().backward()
    assert out_p.grad[:, :3].abs().max() == 0 and out_p.grad[:, 3:].abs().max() > 0
    assert torch.equal(normal_kl(x0, x0 * 0, x0, x0 * 0), torch.zeros_like(x0))
    # discretised likelihood: a sharp Gaussian at the data point has likelihood ~1
    ll = discretized_gaussian_log_likelihood(x0, x0, torch.full_like(x0, -10.0))
    assert ll.exp().min() > 0.999


def test_timestep_samplers():
    g = torch.Generator().manual_seed(0)
    t, w = UniformSampler(10).sample(1000, g)
    assert t.min() >= 0 and t.max() <= 9 and torch.allclose(w, torch.ones(1000))
    s = LossSecondMomentResampler(4, history_per_term=2, uniform_prob=0.0)
    assert not s.warmed_up() and np.allclose(s.weights(), 1)
    for _ in range(2):
        s.update_with_local_losses(torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 3.0]))
    assert s.warmed_up()
    assert np.allclose(s.weights(), np.array([1, 1, 1, 3]) / 6)
    t, w = s.sample(6000, torch.Generator().manual_seed(1))
    assert abs(float((t == 3).float().mean()) - 0.5) < 0.03
    assert torch.allclose(w[t == 3], torch.full_like(w[t == 3], 1 / (4 * 0.5)))
    s.update_with_local_losses(torch.tensor([0]), torch.tensor([5.0]))  # history rolls: [1, 5]
    assert s.loss_history[0].tolist() == [1.0, 5.0]
    s2 = LossSecondMomentResampler(4, history_per_term=2)
    s2.load_state_dict(s.state_dict())
    assert np.array_equal(s2.loss_history, s.loss_history) and np.array_equal(s2.loss_counts, s.loss_counts)
