"""PITI training on the tiny preset (CPU): the BSR-light degradation, the upsampler's perceptual / WGAN-GP losses, the
stage rules (stage 1 trains only the encoder), the adversarial warm-up, loss decrease, exact resume, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from datasets import get_task
from methods.piti import degradation as dg
from methods.piti import losses, training

FAST = {"quiet": True, "checkpointing_steps": 0}


# --- helpers --------------------------------------------------------------------------------------------------------
def tiny_piti():
    """The tiny translator (both condition kinds, random toy-width models)."""
    import methods

    return methods.create("piti", preset="tiny")


def _photo(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth photo-like image: gradients plus a few flat shapes, float [0, 1]."""
    yy, xx = np.mgrid[:size, :size] / size
    img = np.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.3 * np.sin(6 * xx + seed)], -1)
    img[size // 4: size // 2, size // 4: size // 2] = (0.9, 0.1, 0.2)
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)


# --- degradation ------------------------------------------------------------------------------------------------------
def test_degradation_gives_64_px_in_range_deterministic_per_seed():
    img = _photo()
    outs = [dg.degradation_bsrgan_variant(img, 4, np.random.default_rng(s)) for s in range(12)]
    for o in outs:
        assert o.shape == (64, 64, 3) and o.dtype == np.float32
        assert o.min() >= 0 and o.max() <= 1
        np.testing.assert_allclose(o * 255, np.round(o * 255), atol=1e-3)  # 8-bit steps, like upstream's uint8
        assert abs(o.mean() - img.mean()) < 0.03  # light degradation: brightness kept
    again = dg.degradation_bsrgan_variant(img, 4, np.random.default_rng(3))
    assert np.array_equal(again, outs[3])
    assert not np.array_equal(outs[0], outs[1])
    # closer to the 64 px version of the photo than to a constant image: the content survives
    ref = dg.resize(img, (64, 64), "area")
    assert all(np.abs(o - ref).mean() < 0.05 for o in outs)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dg.degradation_bsrgan_variant(img * 2 - 1, 4, np.random.default_rng(0))


def test_degradation_keeps_downsample2_before_downsample3():
    orders = [dg.shuffled_ops(np.random.default_rng(s)) for s in range(40)]
    raw = [list(np.random.default_rng(s).permutation(7)) for s in range(40)]
    assert all(sorted(o) == list(range(7)) and o.index(2) < o.index(3) for o in orders)
    assert sum(r.index(2) > r.index(3) for r in raw) > 5  # those draws were swapped, the rest kept as drawn
    assert all(o == r for o, r in zip(orders, raw) if r.index(2) < r.index(3))
    for s in range(8):  # whatever the order (and the optional first x2 downsample): exactly size / 4 out
        assert dg.degradation_bsrgan_variant(_photo(64, s), 4, np.random.default_rng(s)).shape == (16, 16, 3)


def test_degrade_batch_maps_minus_one_one_per_sample():
    x = torch.from_numpy(np.stack([_photo(64, 0), _photo(64, 1)])).permute(0, 3, 1, 2) * 2 - 1
    y = dg.degrade_batch(x, 7)
    assert y.shape == (2, 3, 16, 16) and y.min() >= -1 and y.max() <= 1
    alone = dg.degrade_batch(x[1:], [np.random.default_rng([7, 1])])
    assert torch.equal(alone[0], y[1])  # a sample's result does not depend on its batch


def test_l0_smoothing_keeps_brightness_and_flattens_gradients():
    rng = np.random.default_rng(0)
    clean = np.full((64, 64, 3), 0.5, np.float32)
    clean[:, 32:] = 0.8
    noisy = np.clip(clean + rng.normal(0, 0.02, clean.shape), 0, 1).astype(np.float32)

    def edge_fraction(a):  # share of pixels with a noticeable horizontal or vertical step
        g = np.abs(np.diff(a, axis=1)).sum(-1)[:-1] + np.abs(np.diff(a, axis=0)).sum(-1)[:, :-1]
        return (g > 1e-2).mean()

    for lam in (2e-2, 4e-3):  # strong, and the top of PITI's U(1.2, 4.0) x 1e-3 range
        out = dg.l0_smooth(noisy, lam)
        assert out.dtype == np.float32 and out.shape == noisy.shape
        # upstream's scaling bug (S = img / 256 ... (S * 256).astype(uint8)) returned a black image: not here
        assert abs(out.mean() - noisy.mean()) < 2e-3 and out.mean() > 0.6
        assert abs(out[:, 40:].mean() - out[:, :24].mean() - 0.3) < 0.01  # the real edge is kept
        print(f"L0 lambda {lam}: flat-region std {noisy[:, :24].std():.4f} -> {out[:, :24].std():.4f}, "
              f"pixels with a gradient {edge_fraction(noisy):.3f} -> {edge_fraction(out):.3f}")
        assert out[:, :24].std() < 0.2 * noisy[:, :24].std()
        assert edge_fraction(out) < 0.2 * edge_fraction(noisy)


# --- losses -----------------------------------------------------------------------------------------------------------
def test_gradient_penalty_of_a_linear_critic():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
    real, fake = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    w = lin[1].weight.detach()
    gp = losses.gradient_penalty(lin, real, fake, torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)  # grad of a linear D is w everywhere
    d = losses.discriminator_loss(lin, real, fake, torch.Generator().manual_seed(0))
    expected = (lin(fake) - lin(real)).mean() + 10 * (w.norm() - 1) ** 2
    assert d.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        lin[1].weight.mul_(1 / w.norm())  # unit-norm weights: no penalty
    assert losses.gradient_penalty(lin, real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_patchgan_structure_and_frozen_generator_term():
    d = losses.NLayerDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in d.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and all(c.kernel_size == (4, 4) for c in convs)
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1] and all(c.bias is not None for c in convs)
    assert len(norms) == 3 and not any(n.affine for n in norms)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # the 70x70 PatchGAN map
    small = losses.NLayerDiscriminator(ndf=8)
    fake = torch.rand(2, 3, 32, 32, requires_grad=True)
    g = losses.generator_adversarial_loss(small, fake)
    assert g.shape == (2,)
    g.sum().backward()
    assert fake.grad.abs().sum() > 0 and all(p.grad is None for p in small.parameters())
    assert all(p.requires_grad for p in small.parameters())


def test_adversarial_loss_steps_the_critic_once_then_scores_with_it():
    torch.manual_seed(0)
    adv = losses.AdversarialLoss(losses.NLayerDiscriminator(ndf=8), seed=0)
    before = [p.detach().clone() for p in adv.disc.parameters()]
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    g = adv(fake, real)
    assert any(not torch.equal(a, p) for a, p in zip(before, adv.disc.parameters()))  # one Adam step taken
    assert adv.opt.param_groups[0]["lr"] == 1e-5 and np.isfinite(adv.last_d_loss)
    g.mean().backward()
    assert all(p.grad is None for p in adv.disc.parameters())


def test_perceptual_loss_is_zero_on_equal_images_and_trains_only_the_prediction(tmp_path):
    head, info = losses.load_vgg_head("tiny")
    assert info.weights == "random" and [type(m).__name__ for m in head] == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Conv2d"]  # vgg19.features[:8]
    loss = losses.PerceptualLoss(head)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(3), atol=1e-12)
    pred = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    target = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    out = loss(pred, target)
    assert out.shape == (3,) and (out > 0).all()
    out.sum().backward()
    assert pred.grad is not None and target.grad is None
    # an explicit weights file (torchvision's vgg19 state-dict keys; only features.0-7 are read) is loaded as is
    feats = losses.vgg19_head()
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "vgg19.pth")
    real, info = losses.load_vgg_head(vgg_weights=tmp_path / "vgg19.pth")
    assert info.weights == "real" and torch.equal(real[7].weight, feats[7].weight)
    assert not any(p.requires_grad for p in real.parameters())


def test_perceptual_loss_offline_without_weights_warns_and_labels_random(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="RANDOM VGG"):
        _, info = losses.load_vgg_head("paper")
    assert info.weights == "random"
    with pytest.raises(training.InputError, match="vgg_weights"):
        losses.load_vgg_head("paper", strict=True)


# --- training ---------------------------------------------------------------------------------------------------------
def test_training_config_rules():
    cfg = training.resolve_train_config({"stage": "stage1-cont"})
    assert (cfg["learning_rate"], cfg["uncond_p"], cfg["max_steps"], cfg["train_decoder"]) == (2e-5, 0.2, 60000, False)
    assert cfg["global_batch_size"] == 128 and cfg["schedule_sampler"] == "loss-second-moment"
    up = training.resolve_train_config({"stage": "upsampler", "max_steps": 5})
    assert (up["learning_rate"], up["global_batch_size"], up["use_perceptual"], up["schedule_sampler"]) == (
        1e-5, 4, True, "uniform")
    assert training.accumulation_steps(128, 16, 1) == 8 and training.accumulation_steps(128, 16, 8) == 1
    with pytest.raises(training.InputError, match="multiple of batch_size"):
        training.accumulation_steps(128, 24, 1)
    with pytest.raises(training.InputError, match="until stopped"):
        training.resolve_train_config({"stage": "stage2"})
    with pytest.raises(training.InputError, match="unknown option 'lr'"):
        training.resolve_train_config({"lr": 1})
    with pytest.raises(training.InputError, match="stage must be"):
        training.resolve_train_config({"stage": "stage3"})


@pytest.mark.slow
def test_stage1_updates_only_the_encoder():
    t = tiny_piti()
    base = t.models["mask"]["base"]
    dec = {k: v.clone() for k, v in base.decoder.state_dict().items()}
    enc = {k: v.clone() for k, v in base.encoder.state_dict().items()}
    sketch = {k: v.clone() for k, v in t.models["sketch"]["base"].state_dict().items()}
    t.fit(get_task("sample-mask"), {**FAST, "max_steps": 2, "learning_rate": 1e-3})
    base = t.models["mask"]["base"]
    assert all(torch.equal(dec[k], v) for k, v in base.decoder.state_dict().items())
    changed = [k for k, v in base.encoder.state_dict().items() if not torch.equal(enc[k], v)]
    assert len(changed) > 0.8 * len(enc)
    assert all(torch.equal(sketch[k], v) for k, v in t.models["sketch"]["base"].state_dict().items())
    assert [r["step"] for r in t.history] == [1, 2] and "+trained:mask/base:stage1@step2" in t.weights_id


def test_stage1_can_start_from_a_glide_unet_with_a_fresh_encoder(tmp_path):
    from methods.piti.convert import model_to_official

    t = tiny_piti()
    donor = tiny_piti().models["sketch"]["base"]  # same architecture, other weights: stands in for GLIDE's base.pt
    glide = {k.removeprefix("decoder."): v for k, v in model_to_official(donor).items() if k.startswith("decoder.")}
    torch.save(glide, tmp_path / "base.pt")
    old_encoder = {k: v.clone() for k, v in t.models["mask"]["base"].encoder.state_dict().items()}
    t.fit(get_task("sample-mask"), {**FAST, "max_steps": 1, "init_glide": str(tmp_path / "base.pt")})
    base = t.models["mask"]["base"]
    assert all(torch.equal(v, donor.decoder.state_dict()[k]) for k, v in base.decoder.state_dict().items())
    new_encoder = base.encoder.state_dict()
    assert not any(torch.equal(new_encoder[k], v) for k, v in old_encoder.items() if v.ndim >= 2)  # fresh init
    # stage 2 restarts the decoder from GLIDE but keeps the stage-1 encoder (lr 0: nothing moves in the step)
    with torch.no_grad():
        base.decoder.conv_in.weight.add_(1.0)
    stage1_encoder = {k: v.clone() for k, v in base.encoder.state_dict().items()}
    t.fit(get_task("sample-mask"), {**FAST, "stage": "stage2", "max_steps": 1, "learning_rate": 0.0, "ema_rate": 0.0,
                                    "init_glide": str(tmp_path / "base.pt")})
    base = t.models["mask"]["base"]
    assert all(torch.equal(v, donor.decoder.state_dict()[k]) for k, v in base.decoder.state_dict().items())
    assert all(torch.equal(v, stage1_encoder[k]) for k, v in base.encoder.state_dict().items())


def test_training_data_of_both_condition_kinds():
    t = tiny_piti()
    cfg = training.resolve_train_config({"stage": "stage2", "max_steps": 1}, "tiny")
    sk = training.PITIData(get_task("sample-sketch"), cfg, t.models["sketch"]["base"].config)
    b = sk.batch([0, 1])
    assert b["x0"].shape == (2, 3, 16, 16) and b["cond"].shape == (2, 1, 256, 256)  # photo at 16, sketch at 256
    assert b["cond"].min() == -1 and b["cond"].max() <= 1 and (b["cond"] > -1).float().mean() > 0.5  # distances
    assert torch.equal(sk.batch([0, 1])["cond"], b["cond"])  # keyed by the sample counter: deterministic
    up = training.PITIData(get_task("sample-mask"), {**cfg, "uncond_p": 1.0}, t.models["mask"]["upsample"].config)
    u = up.batch([0, 1, 2])
    assert u["x0"].shape == (3, 3, 64, 64) and u["low_res"].shape == (3, 3, 16, 16)
    assert (u["cond"] == 1).all()  # uncond_p 1: the all-ones null condition
    threaded = training.PITIData(get_task("sample-mask"), {**cfg, "uncond_p": 1.0, "dataloader_num_workers": 2},
                                 t.models["mask"]["upsample"].config).batch([0, 1, 2])
    assert all(torch.equal(threaded[k], u[k]) for k in u)  # worker threads give the same batches
    mcfg = t.models["mask"]["base"].config
    flip = training.PITIData(get_task("sample-mask"), cfg, mcfg)
    plain = training.PITIData(get_task("sample-mask"), {**cfg, "hflip": False}, mcfg)
    mirrored = []
    for i in range(8):  # each sample is either kept or mirrored, photo and condition together
        a, b = flip.item(i), plain.item(i)
        same = torch.equal(a["x0"], b["x0"]) and torch.equal(a["cond"], b["cond"])
        # (the photo is flipped at 256 px before its bicubic resize: equal up to 8-bit rounding)
        mirror = torch.allclose(a["x0"], b["x0"].flip(-1), atol=2.1 / 127.5) and torch.equal(a["cond"],
                                                                                          b["cond"].flip(-1))
        assert same or mirror
        mirrored.append(mirror and not same)
    assert 0 < sum(mirrored) < 8
    with pytest.raises(training.InputError, match="no sketch models|kind"):
        training.fit(type("T", (), {"models": {"mask": {}}, "weights_id": "tiny:piti"})(), get_task("sample-sketch"),
                     {"max_steps": 1})


def _fixed_batch_loss(model, diffusion, batch, seed=0) -> float:
    """The hybrid loss at fixed timesteps and noise on a fixed batch (no dropout)."""
    g = torch.Generator().manual_seed(seed)
    x0 = batch["x0"]
    t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    model.eval()
    with torch.no_grad():
        out = model(x_t, diffusion.model_timesteps(t), batch["cond"])
    return float(diffusion.training_losses(out, x0, x_t, t, noise, rescaled=True)["loss"].mean())


@pytest.mark.slow
def test_a_few_steps_lower_the_diffusion_loss():
    from methods.common.gaussian_diffusion import GaussianDiffusion

    t = tiny_piti()
    cfg = training.resolve_train_config({"stage": "stage2", "max_steps": 1, "hflip": False}, "tiny")
    data = training.PITIData(get_task("sample-mask"), cfg, t.models['mask']['base'].config)
    batch = data.batch(list(range(len(data))))
    diffusion = GaussianDiffusion.from_config(t.models['mask']['base'].config.noise_schedule)
    before = np.mean([_fixed_batch_loss(t.models["mask"]["base"], diffusion, batch, s) for s in range(4)])
    training.fit(t, get_task("sample-mask"), {**FAST, "stage": "stage2", "max_steps": 15, "learning_rate": 2e-3,
                                              "ema_rate": 0.0, "hflip": False})
    after = np.mean([_fixed_batch_loss(t.models["mask"]["base"], diffusion, batch, s) for s in range(4)])
    print(f"tiny base stage2, 15 steps at lr 2e-3: fixed-batch hybrid loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before


@pytest.mark.slow
def test_upsampler_extra_losses_start_after_the_warmup_and_leave_no_gradient_in_the_critic(monkeypatch):
    t = tiny_piti()
    seen = []
    original = losses.AdversarialLoss.critic_step

    def spy(self, fake, real):
        seen.append(all(p.grad is None for p in self.disc.parameters()))
        return original(self, fake, real)

    monkeypatch.setattr(losses.AdversarialLoss, "critic_step", spy)
    training.fit(t, get_task("sample-mask"), {**FAST, "stage": "upsampler", "max_steps": 4, "adv_warmup_steps": 2})
    h = t.history
    assert [r["step"] for r in h] == [1, 2, 3, 4]
    assert all("perceptual" not in r and "adv" not in r for r in h[:2])  # steps 0 and 1 (0-based): off
    assert all(r["perceptual"] > 0 and r["adv"] != 0 and np.isfinite(r["loss_d"]) for r in h[2:])
    assert len(seen) == 2 and all(seen)  # one critic step per generator step, never with generator gradients
    assert training.resolve_train_config({"stage": "upsampler", "max_steps": 1})["adv_warmup_steps"] == 100


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage2", "upsampler"])
def test_resumed_training_equals_uninterrupted_training(tmp_path, stage):
    cfg = {**FAST, "stage": stage, "checkpointing_steps": 2, "learning_rate": 1e-3, "adv_warmup_steps": 1,
           "global_batch_size": 2, "batch_size": 1}  # 2 micro-batches per step: accumulation is resumed too
    straight = tiny_piti()
    training.fit(straight, get_task("sample-mask"), {**cfg, "max_steps": 4, "output_dir": str(tmp_path / "a")})
    first = tiny_piti()
    training.fit(first, get_task("sample-mask"), {**cfg, "max_steps": 2, "output_dir": str(tmp_path / "b")})
    resumed = tiny_piti()
    training.fit(resumed, get_task("sample-mask"), {**cfg, "max_steps": 4, "output_dir": str(tmp_path / "b")})
    role = "upsample" if stage == "upsampler" else "base"
    a, b = straight.models["mask"][role].state_dict(), resumed.models["mask"][role].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]
    ckpt = tmp_path / "b" / "checkpoints" / "step-000004"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "ema.safetensors", "state.pt",
                                                 "trainer_state.json"}
    assert not list((tmp_path / "b" / "checkpoints").glob(".*tmp"))
    log = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


@pytest.mark.slow
def test_train_command_trains_saves_and_resumes_on_the_tiny_preset(tmp_path, capsys):
    import benchmark
    import methods

    out = tmp_path / "run"
    args = ["train", "piti", "--task", "sample-mask", "--out", str(out), "--set", "piti.max_steps=2",
            "piti.quiet=True", "piti.stage=stage2", "piti.checkpointing_steps=1"]
    assert benchmark.main(args) == 0
    assert "saved:" in capsys.readouterr().out
    meta = json.loads((out / "mask" / "base" / "config.json").read_text())
    assert meta["trained"] and meta["training"]["steps"] == 2 and meta["training"]["stage"] == "stage2"
    assert not json.loads((out / "sketch" / "base" / "config.json").read_text())["trained"]
    model = methods.create("piti", source=str(out), preset="tiny")
    assert set(model.models) == {"mask", "sketch"}
    trained = model.models["mask"]["base"].state_dict()
    from safetensors.torch import load_file

    ema = load_file(str(out / "checkpoints" / "step-000002" / "ema.safetensors"))
    assert all(torch.equal(trained[k], v) for k, v in ema.items())  # the saved model holds the EMA weights
    args[args.index("piti.max_steps=2")] = "piti.max_steps=3"
    assert benchmark.main(args) == 0  # resumes from step 2
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert json.loads((out / "mask" / "base" / "config.json").read_text())["training"]["steps"] == 3
    model = methods.create("piti", source=str(out), preset="tiny")
    model.save_pretrained(tmp_path / "copy")  # re-saving a loaded trained model keeps its training record
    assert json.loads((tmp_path / "copy" / "mask" / "base" / "config.json").read_text())["training"]["steps"] == 3
