"""img2img-turbo (pix2pix-turbo, CycleGAN-Turbo) on the tiny preset: architecture properties, the stochastic mode
and its state reset, checkpoints, the official-format importer checked against a re-enactment of the authors' code.

The "authors' code" helpers below rebuild the upstream objects the way GaParmar/img2img-turbo does (forwards bound
to the diffusers instances, skip convs hung on the decoder, PEFT adapters, `torch.save` of their dicts): that is the
reference our implementation must match, so these test helpers deliberately do what the product code must not.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

import methods
from methods import TranslationInput
from methods.common.loading import load_sd
from methods.img2img_turbo import official
from methods.img2img_turbo.generator import SKIP_INIT, UNET_TARGETS_PAIRED, VAE_TARGETS, unpaired_unet_targets

SIZE = 32
TINY = "tiny:sd-turbo"


def _gens(n: int, seed: int = 7) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _batch(n: int = 2, size: int = SIZE, direction: str = "a2b") -> TranslationInput:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, size, size, generator=g)
    return TranslationInput(images=x, condition=x, tgt_prompts=["a photo of a cat", "a red car", "a tree"][:n],
                            src_prompts=["x"] * n, direction=direction)


def _perturb(gen: nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Give every trainable tensor (LoRA, skip convs, conv_in) a non-trivial value, as training would."""
    from methods.img2img_turbo.generator import is_trainable_name

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if is_trainable_name(name) and "conv_in_pretrained" not in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def p2p():
    return methods.create("pix2pix-turbo", preset="tiny")


@pytest.fixture(scope="module")
def p2p_trained_like():
    m = methods.create("pix2pix-turbo", preset="tiny")
    _perturb(m.gen)
    return m


# --- architecture ----------------------------------------------------------------------------------------------------
def test_skip_convs_at_init_stay_close_to_the_plain_vae_round_trip(p2p):
    """1x1 skip convs at 1e-5 (the authors' zero-conv init): < 1e-3 relative change of the VAE round trip."""
    gen = p2p.gen
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z, skips = gen.encode(x * 2 - 1, generator=_gens(2))
        with_skips = gen.decode(z, skips)
        plain = gen.decode(z, None)
        # our plain path is exactly the library's decoder (skips off = the authors' ignore_skip=True)
        lib = load_sd(TINY)
        ref = lib.vae.decode(z / gen.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(plain, ref, atol=1e-6), (plain - ref).abs().max()
    rel = ((with_skips - plain).norm() / plain.norm()).item()
    print(f"skip convs at init: relative change of the VAE round trip = {rel:.2e}")
    assert 0 < rel < 1e-3
    # the skips are really wired in: at weight 1e-2 (1000x the init) they change the output a lot
    convs = gen.vae.decoder.skip_convs
    saved = [c.base_layer.weight.detach().clone() for c in convs]
    try:
        with torch.no_grad():
            for c in convs:
                c.base_layer.weight.fill_(1e-2)
            louder = gen.decode(z, skips)
        assert ((louder - plain).norm() / plain.norm()).item() > 30 * rel
    finally:
        with torch.no_grad():
            for c, w in zip(convs, saved):
                c.base_layer.weight.copy_(w)


def test_skip_conv_shapes_follow_the_vae_blocks(p2p):
    dec = p2p.gen.vae.decoder
    # tiny VAE (32, 32, 64, 64): down-block inputs 32, 32, 32, 64 -> reversed 64, 32, 32, 32 into up blocks taking
    # 64, 64, 64, 32 (SD's VAE gives the spec's 512->512, 256->512, 128->512, 128->256 by the same rule)
    shapes = [tuple(c.base_layer.weight.shape[:2]) for c in dec.skip_convs]  # (out, in)
    assert shapes == [(64, 64), (64, 32), (64, 32), (32, 32)]
    assert all(c.base_layer.bias is None for c in dec.skip_convs)
    fresh = methods.create("pix2pix-turbo", preset="tiny").gen.vae.decoder
    assert all(torch.all(c.base_layer.weight == SKIP_INIT) for c in fresh.skip_convs)


def test_lora_targets_and_trainable_parameters(p2p):
    from methods.img2img_turbo.generator import set_trainable

    gen = copy.deepcopy(p2p.gen)
    cfg = gen.unet.peft_config["default"]
    assert set(cfg.target_modules) == set(UNET_TARGETS_PAIRED) and cfg.r == 8 and cfg.lora_alpha == 8
    vcfg = gen.vae.peft_config["vae_skip"]
    assert set(vcfg.target_modules) == set(VAE_TARGETS) and vcfg.r == 4
    names = {n for n, _ in gen.named_parameters()}
    assert "vae.decoder.skip_conv_1.lora_A.vae_skip.weight" in names  # LoRA on the skip convs (img2img-turbo model.py)
    assert not any("quant_conv" in n and "lora" in n for n in names)
    params = set_trainable(gen)
    trainable = {n for n, p in gen.named_parameters() if p.requires_grad}
    assert len(params) == len(trainable)
    assert "unet.conv_in.conv_in_curr.weight" in trainable and "unet.conv_in.conv_in_pretrained.weight" not in trainable
    assert "vae.decoder.skip_conv_2.base_layer.weight" in trainable
    assert not any(n.startswith("unet.") and "lora" not in n and "conv_in" not in n for n in trainable)
    assert not any("text" in n for n in trainable)


def test_unpaired_unet_lora_split_matches_the_authors_grep():
    comps = load_sd(TINY)
    t = unpaired_unet_targets(comps.unet)
    assert "conv_in" in t["default_encoder"] and all("up_blocks" not in n for n in t["default_encoder"])
    assert all("up_blocks" in n for n in t["default_decoder"])
    assert "conv_out" in t["default_others"] and any("mid_block" in n for n in t["default_others"])
    m = methods.create("cyclegan-turbo", preset="tiny")
    assert set(m.gen.unet.peft_config) == {"default_encoder", "default_decoder", "default_others"}
    assert all(c.r == c.lora_alpha == 8 for c in m.gen.unet.peft_config.values())  # tiny: rank 8 (paper 128)
    assert m.gen.vae is not m.gen.vae_b2a  # one VAE per direction, one shared UNet


# --- stochastic mode -------------------------------------------------------------------------------------------------
def test_r0_reproduces_the_base_models_one_step_output(p2p_trained_like):
    """r = 0: LoRA weight 0, pretrained conv_in, pure noise input, gamma 0 -> SD-Turbo's own one-step text-to-image
    from the same noise (diffusers' StableDiffusionPipeline on the untouched base snapshot), even with trained-like
    LoRA/skip/conv_in weights."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.utils.torch_utils import randn_tensor

    m = p2p_trained_like
    m.config.update(mode="stochastic", r=0.0)
    try:
        batch = _batch(2)
        ours = m.translate(batch, generator=_gens(2)).images
    finally:
        m.config.update(mode="deterministic", r=0.4)
    base = load_sd(TINY)
    pipe = StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        scheduler=DDPMScheduler.from_pretrained(base.path, subfolder="scheduler"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = randn_tensor((2, 4, SIZE // 8, SIZE // 8), generator=_gens(2))  # the noise map our call drew first
    ref = pipe(prompt=list(batch.tgt_prompts), latents=noise, num_inference_steps=1, guidance_scale=0.0,
               height=SIZE, width=SIZE, output_type="pt").images
    err = (ours - ref).abs().max().item()
    print(f"r=0 vs SD-Turbo one-step pipeline: max abs diff {err:.2e}")
    assert err < 1e-4
    # and the trained weights do matter at r > 0
    m.config.update(mode="stochastic", r=0.4)
    try:
        assert (m.translate(batch, generator=_gens(2)).images - ref).abs().max() > 1e-2
    finally:
        m.config.update(mode="deterministic", r=0.4)


def test_deterministic_call_after_a_stochastic_one_equals_a_fresh_deterministic_call(p2p_trained_like):
    m = p2p_trained_like
    batch = _batch(2)
    first = m.translate(batch, generator=_gens(2)).images
    m.config.update(mode="stochastic", r=0.3)
    try:
        stoch = m.translate(batch, generator=_gens(2)).images
    finally:
        m.config.update(mode="deterministic")
    after = m.translate(batch, generator=_gens(2)).images
    assert not torch.allclose(stoch, first, atol=1e-3)
    assert torch.equal(after, first)
    # the state behind it is back: LoRA scales at 1 (alpha / r), conv_in blend off
    from peft.tuners.lora import LoraLayer

    for model, adapter in ((m.gen.unet, "default"), (m.gen.vae, "vae_skip")):
        for mod in model.modules():
            if isinstance(mod, LoraLayer) and adapter in mod.scaling:
                assert mod.scaling[adapter] == pytest.approx(mod.lora_alpha[adapter] / mod.r[adapter])
    assert m.gen.unet.conv_in.r is None


def test_stochastic_mode_is_per_sample_and_batch_independent(p2p_trained_like):
    m = p2p_trained_like
    m.config.update(mode="stochastic", r=0.4)
    try:
        batch = _batch(3)
        together = m.translate(batch, generator=_gens(3)).images
        alone = torch.cat([m.translate(batch.select([i]), generator=[_gens(3)[i]]).images for i in range(3)])
        other_seed = m.translate(batch, generator=_gens(3, seed=99)).images
    finally:
        m.config.update(mode="deterministic")
    assert torch.allclose(together, alone, atol=1e-4), (together - alone).abs().max()
    assert (other_seed - together).abs().max() > 1e-3  # the noise map is drawn from each sample's generator


def test_sketch_and_canny_condition_preparation(p2p):
    x = torch.ones(1, 3, 16, 16)
    x[..., 4:6, :] = 0.0  # a dark stroke on white
    m = copy.copy(p2p)
    m.config = dict(p2p.config, condition_prep="sketch")
    c = m.prepare_condition(TranslationInput(images=x, condition=x))
    assert c[0, 0, 5, 3] == 1 and c[0, 0, 10, 3] == 0  # inference_paired.py polarity: strokes -> 1
    m.config = dict(p2p.config, condition_prep="canny")
    img = torch.zeros(1, 3, 32, 32)
    img[..., :, 16:] = 1.0
    e = m.prepare_condition(TranslationInput(images=img))
    assert set(e.unique().tolist()) <= {0.0, 1.0} and e[0, 0, :, 14:18].sum() > 0 and e[0, 0, :, :8].sum() == 0


def test_options_are_validated():
    with pytest.raises(methods.InputError, match="mode"):
        methods.create("pix2pix-turbo", preset="tiny", mode="fast")
    with pytest.raises(methods.InputError, match="multiple of 8"):
        methods.create("cyclegan-turbo", preset="tiny", resolution=100)
    m = methods.create("cyclegan-turbo", preset="tiny")
    with pytest.raises(methods.InputError, match="tgt_prompts"):
        m.translate(TranslationInput(images=torch.rand(1, 3, 32, 32)))


def test_unpaired_directions_use_their_own_vae_and_prompt():
    m = methods.create("cyclegan-turbo", preset="tiny")
    _perturb(m.gen, seed=5)
    x = _batch(1)
    a2b = m.translate(x, generator=_gens(1)).images
    b2a = m.translate(TranslationInput(images=x.images, tgt_prompts=x.tgt_prompts, direction="b2a"),
                      generator=_gens(1)).images
    assert (a2b - b2a).abs().max() > 1e-3
    m.loaded.fixed_prompts = {"a2b": "a black and white photograph"}
    out = m.translate(x, generator=_gens(1))
    assert out.extras[0]["prompt"] == "a black and white photograph"  # the fixed caption wins (issue #81)
    m.config = dict(m.config, prompt="input")
    assert m.translate(x, generator=_gens(1)).extras[0]["prompt"] == x.tgt_prompts[0]


def test_networks_and_prompt_cache(p2p):
    from eval.timing import count_network_calls

    batch = _batch(1)
    p2p.translate(batch, generator=_gens(1))
    with count_network_calls(p2p.networks()) as calls:
        p2p.translate(batch, generator=_gens(1))
    assert {k: c.calls for k, c in calls.items()} == {"text_encoder": 0, "vae.encoder": 1, "unet": 1,
                                                      "vae.decoder": 1}


# --- checkpoints ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pix2pix-turbo", "cyclegan-turbo"])
def test_save_then_load_gives_identical_outputs(tmp_path, name):
    m = methods.create(name, preset="tiny")
    _perturb(m.gen, seed=11)
    m.loaded.fixed_prompts = {"a2b": "a black and white photograph", "b2a": "a color photograph"} \
        if name == "cyclegan-turbo" else {}
    m.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.json").is_file() and (tmp_path / "ckpt" / "model.safetensors").is_file()
    again = methods.create(name, source=str(tmp_path / "ckpt"), preset="tiny")
    assert again.loaded.fixed_prompts == m.loaded.fixed_prompts and again.weights_id.startswith("local:")
    for d in (["a2b", "b2a"] if name == "cyclegan-turbo" else ["a2b"]):
        b = _batch(2, direction=d)
        assert torch.equal(m.translate(b, generator=_gens(2)).images, again.translate(b, generator=_gens(2)).images)
    # only the trainable tensors are stored; the frozen rest comes from the base snapshot
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert all("lora_" in k or k.startswith("unet.conv_in.") or ".skip_conv_" in k for k in keys)


# --- the authors' code, re-enacted (reference for the importer) -----------------------------------------------------
def _authors_encoder_fwd(self, sample):  # src/model.py my_vae_encoder_fwd
    sample = self.conv_in(sample)
    blocks = []
    for down_block in self.down_blocks:
        blocks.append(sample)
        sample = down_block(sample)
    sample = self.mid_block(sample)
    sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
    self.current_down_blocks = blocks
    return sample


def _authors_decoder_fwd(self, sample, latent_embeds=None):  # src/model.py my_vae_decoder_fwd
    sample = self.conv_in(sample)
    upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
    sample = self.mid_block(sample, latent_embeds).to(upscale_dtype)
    skip_convs = [self.skip_conv_1, self.skip_conv_2, self.skip_conv_3, self.skip_conv_4]
    for idx, up_block in enumerate(self.up_blocks):
        sample = sample + skip_convs[idx](self.incoming_skip_acts[::-1][idx] * self.gamma)
        sample = up_block(sample, latent_embeds)
    return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class _AuthorsTwinConv(nn.Module):  # src/pix2pix_turbo.py TwinConv
    def __init__(self, pre, curr):
        super().__init__()
        self.conv_in_pretrained, self.conv_in_curr, self.r = copy.deepcopy(pre), copy.deepcopy(curr), None

    def forward(self, x):
        return self.conv_in_pretrained(x).detach() * (1 - self.r) + self.conv_in_curr(x) * self.r


def _authors_vae(vae):
    vae.encoder.forward = types.MethodType(_authors_encoder_fwd, vae.encoder)
    vae.decoder.forward = types.MethodType(_authors_decoder_fwd, vae.decoder)
    ins = [b.resnets[0].in_channels for b in vae.encoder.down_blocks][::-1]
    outs = [b.resnets[0].in_channels for b in vae.decoder.up_blocks]
    for i in range(4):
        setattr(vae.decoder, f"skip_conv_{i + 1}", nn.Conv2d(ins[i], outs[i], kernel_size=1, bias=False))
    vae.decoder.gamma = 1
    return vae


def _rand_(tensors, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.add_(torch.randn(t.shape, generator=g) * scale)


def _authors_paired(stochastic: bool, seed: int):
    """Pix2Pix_Turbo as its constructor builds it, with random 'trained' values; returns (vae, unet, pkl dict)."""
    from peft import LoraConfig

    comps = load_sd(TINY)
    vae, unet = _authors_vae(comps.vae), comps.unet
    if stochastic:
        unet.conv_in = _AuthorsTwinConv(copy.deepcopy(unet.conv_in), unet.conv_in)
    vae.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=list(VAE_TARGETS)),
                    adapter_name="vae_skip")
    unet.add_adapter(LoraConfig(r=8, init_lora_weights="gaussian", target_modules=list(UNET_TARGETS_PAIRED)))
    _rand_([p for n, p in vae.named_parameters() if "lora" in n or "skip" in n], seed)
    _rand_([p for n, p in unet.named_parameters() if "lora" in n or "conv_in_curr" in n
            or (n.startswith("conv_in.") and not stochastic)], seed + 1)
    sd = {"unet_lora_target_modules": list(UNET_TARGETS_PAIRED), "vae_lora_target_modules": list(VAE_TARGETS),
          "rank_unet": 8, "rank_vae": 4,
          "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
          "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k or "skip" in k}}
    return comps, vae, unet, sd


def _authors_paired_forward(comps, vae, unet, c_t, prompt, seed, r=None):
    """Pix2Pix_Turbo.forward (deterministic, or stochastic with the inference_paired.py noise draw)."""
    from diffusers import DDPMScheduler
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    # stabilityai/sd-turbo's scheduler_config.json says clip_sample: false (the tiny preset's file does not say)
    sched = DDPMScheduler.from_pretrained(comps.path, subfolder="scheduler", clip_sample=False)
    sched.set_timesteps(1)
    t = torch.tensor([999]).long()
    ids = comps.tokenizer(prompt, max_length=comps.tokenizer.model_max_length, padding="max_length",
                          truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        enc = comps.text_encoder(ids)[0]
        torch.manual_seed(seed)
        if r is None:
            z = vae.encode(c_t).latent_dist.sample() * vae.config.scaling_factor
            pred = unet(z, t, encoder_hidden_states=enc).sample
            x0 = sched.step(pred, t, z, return_dict=True).prev_sample
            vae.decoder.incoming_skip_acts = vae.encoder.current_down_blocks
            return vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
        noise = torch.randn((1, 4, c_t.shape[2] // 8, c_t.shape[3] // 8))
        unet.set_adapters(["default"], weights=[r])
        set_weights_and_activate_adapters(vae, ["vae_skip"], [r])
        z = vae.encode(c_t).latent_dist.sample() * vae.config.scaling_factor
        unet_input = z * r + noise * (1 - r)
        unet.conv_in.r = r
        out = unet(unet_input, t, encoder_hidden_states=enc).sample
        unet.conv_in.r = None
        x0 = sched.step(out, t, unet_input, return_dict=True).prev_sample
        vae.decoder.incoming_skip_acts = vae.encoder.current_down_blocks
        vae.decoder.gamma = r
        return vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)


@pytest.mark.parametrize("stochastic", [False, True], ids=["edge-format", "sketch-stochastic-format"])
def test_importer_matches_the_authors_model_on_a_synthetic_paired_checkpoint(tmp_path, stochastic):
    comps, vae, unet, sd = _authors_paired(stochastic, seed=21)
    pkl = tmp_path / ("sketch_to_image_stochastic_lora.pkl" if stochastic else "my_model.pkl")
    torch.save(sd, pkl)
    m = methods.create("pix2pix-turbo", source=str(pkl), base=TINY, preset="tiny")
    assert m.trained and "base=tiny:sd-turbo" in m.weights_id
    if stochastic:  # the official sketch file name selects the official caption-free stochastic entry
        assert m.loaded.extra.get("official") == "sketch_to_image_stochastic"
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    prompt = "a photo of a cat"
    ref = _authors_paired_forward(comps, vae, unet, x, prompt, seed=5, r=0.4 if stochastic else None)
    if stochastic:
        m.config.update(mode="stochastic", r=0.4)
    ours = m.translate(TranslationInput(images=x, condition=x, tgt_prompts=[prompt]),
                       generator=[torch.Generator().manual_seed(5)]).images
    err = (ours - (ref * 0.5 + 0.5).clamp(0, 1)).abs().max().item()
    print(f"importer vs authors' forward ({'stochastic' if stochastic else 'deterministic'}): max abs diff {err:.2e}")
    assert err < 1e-5
    assert ((ours > 0.02) & (ours < 0.98)).float().mean() > 0.5  # a real comparison, not two saturated images
    untrained = methods.create("pix2pix-turbo", preset="tiny", **({"mode": "stochastic"} if stochastic else {}))
    plain = untrained.translate(TranslationInput(images=x, condition=x, tgt_prompts=[prompt]),
                                generator=[torch.Generator().manual_seed(5)]).images
    assert (plain - ours).abs().max() > 1e-2  # the imported weights are in use
    # and exporting gives back the same official dict (keys, shapes, values)
    m.export_official(tmp_path / "back.pkl", twin_conv=stochastic)
    back = torch.load(tmp_path / "back.pkl", weights_only=True)
    for key in ("state_dict_unet", "state_dict_vae"):
        assert set(back[key]) == set(sd[key])
        for k, v in sd[key].items():
            assert torch.equal(back[key][k], v), k
    assert back["rank_unet"] == 8 and sorted(back["unet_lora_target_modules"]) == sorted(UNET_TARGETS_PAIRED)


def _authors_unpaired(seed: int, rank: int = 8):
    """initialize_unet / initialize_vae + the training loop's save dict, with random 'trained' values."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    comps = load_sd(TINY)
    unet = comps.unet
    grep = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
            "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    enc, dec, oth = [], [], []
    for n, _ in unet.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in grep:
            if pattern in n and ("down_blocks" in n or "conv_in" in n):
                enc.append(n.replace(".weight", ""))
                break
            elif pattern in n and "up_blocks" in n:
                dec.append(n.replace(".weight", ""))
                break
            elif pattern in n:
                oth.append(n.replace(".weight", ""))
                break
    for name, targets in (("default_encoder", enc), ("default_decoder", dec), ("default_others", oth)):
        unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=targets, lora_alpha=rank),
                         adapter_name=name)
    unet.set_adapters(["default_encoder", "default_decoder", "default_others"])
    vae = _authors_vae(comps.vae)
    for i in range(4):
        nn.init.constant_(getattr(vae.decoder, f"skip_conv_{i + 1}").weight, 1e-5)
    vae.add_adapter(LoraConfig(r=4, init_lora_weights="gaussian", target_modules=list(VAE_TARGETS)),
                    adapter_name="vae_skip")
    vae_b2a = copy.deepcopy(vae)
    _rand_([p for n, p in unet.named_parameters() if "lora" in n or "conv_in.base_layer" in n], seed)
    _rand_([p for n, p in vae.named_parameters() if "lora" in n or "skip" in n], seed + 1)
    _rand_([p for n, p in vae_b2a.named_parameters() if "lora" in n or "skip" in n], seed + 2)

    class VAEPair(nn.Module):  # cyclegan_turbo.py VAE_encode / VAE_decode hold the same two VAEs
        def __init__(self, a, b):
            super().__init__()
            self.vae, self.vae_b2a = a, b

    pair = VAEPair(vae, vae_b2a)
    sd = {"l_target_modules_encoder": enc, "l_target_modules_decoder": dec, "l_modules_others": oth,
          "rank_unet": rank, "sd_encoder": get_peft_model_state_dict(unet, adapter_name="default_encoder"),
          "sd_decoder": get_peft_model_state_dict(unet, adapter_name="default_decoder"),
          "sd_other": get_peft_model_state_dict(unet, adapter_name="default_others"), "rank_vae": 4,
          "vae_lora_target_modules": list(VAE_TARGETS), "sd_vae_enc": pair.state_dict(),
          "sd_vae_dec": pair.state_dict()}
    return comps, unet, vae, vae_b2a, sd


def _authors_unpaired_forward(comps, unet, vae, x, caption, seed):
    """CycleGAN_Turbo.forward after load_ckpt_from_url (which keeps the pretrained conv_in base weights)."""
    from diffusers import DDPMScheduler

    # stabilityai/sd-turbo's scheduler_config.json says clip_sample: false (the tiny preset's file does not say)
    sched = DDPMScheduler.from_pretrained(comps.path, subfolder="scheduler", clip_sample=False)
    sched.set_timesteps(1)
    t = torch.tensor([999]).long()
    ids = comps.tokenizer(caption, max_length=comps.tokenizer.model_max_length, padding="max_length",
                          truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        enc = comps.text_encoder(ids)[0]
        torch.manual_seed(seed)
        z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        pred = unet(z, t, encoder_hidden_states=enc).sample
        x0 = sched.step(pred, t, z, return_dict=True).prev_sample
        vae.decoder.incoming_skip_acts = vae.encoder.current_down_blocks
        return vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_importer_matches_the_authors_model_on_a_synthetic_unpaired_checkpoint(tmp_path):
    comps, unet, vae, vae_b2a, sd = _authors_unpaired(seed=31)
    pkl = tmp_path / "day2night.pkl"  # an official file name: caption and direction come from the registry
    torch.save(sd, pkl)
    m = methods.create("cyclegan-turbo", source=str(pkl), base=TINY, preset="tiny")
    assert m.fixed_prompts == {"a2b": "driving in the night"}
    # the authors' loader leaves conv_in's base at the pretrained weights (its trained value is not in the file)
    pretrained = load_sd(TINY).unet.conv_in.weight
    assert torch.equal(m.gen.unet.conv_in.base_layer.weight, pretrained)
    with torch.no_grad():
        unet.conv_in.base_layer.weight.copy_(pretrained)
        unet.conv_in.base_layer.bias.copy_(load_sd(TINY).unet.conv_in.bias)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    for direction, v in (("a2b", vae), ("b2a", vae_b2a)):
        ref = _authors_unpaired_forward(comps, unet, v, x * 2 - 1, "driving in the night", seed=9)
        m.config["prompt"] = "input"
        ours = m.translate(TranslationInput(images=x, tgt_prompts=["driving in the night"], direction=direction),
                           generator=[torch.Generator().manual_seed(9)]).images
        err = (ours - (ref * 0.5 + 0.5).clamp(0, 1)).abs().max().item()
        print(f"unpaired importer vs authors' forward ({direction}): max abs diff {err:.2e}")
        assert err < 1e-5
        assert ((ours > 0.02) & (ours < 0.98)).float().mean() > 0.5
    back = m.gen.state_dict()
    for k, t in sd["sd_vae_enc"].items():
        assert torch.equal(back[k], t), k


def test_importer_rejects_foreign_or_mismatched_files(tmp_path):
    bad = tmp_path / "x.pkl"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(methods.WeightsNotFoundError, match="unknown checkpoint layout"):
        methods.create("pix2pix-turbo", source=str(bad), base=TINY, preset="tiny")
    _, _, _, sd = _authors_paired(False, seed=1)
    torch.save(sd, tmp_path / "p.pkl")
    with pytest.raises(methods.InputError, match="pix2pix-turbo"):
        methods.create("cyclegan-turbo", source=str(tmp_path / "p.pkl"), base=TINY, preset="tiny")

    class Evil:  # a pickle that would run code must be refused by weights_only loading
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict_unet": Evil()}, tmp_path / "evil.pkl")
    with pytest.raises(methods.WeightsNotFoundError, match="weights only"):
        methods.create("pix2pix-turbo", source=str(tmp_path / "evil.pkl"), base=TINY, preset="tiny")


def test_official_checkpoints_are_registered_with_url_caption_direction(monkeypatch):
    ckpts = official.OFFICIAL
    assert len(ckpts) == 6
    assert {c.method for c in ckpts.values()} == {"pix2pix-turbo", "cyclegan-turbo"}
    for c in ckpts.values():
        assert c.url.startswith("https://www.cs.cmu.edu/~img2img-turbo/models/") and c.url.endswith(".pkl")
        assert c.direction in ("a2b", "b2a")
        assert methods.get(c.method).card.weights[c.name] == c.url
    assert ckpts["day_to_night"].caption == "driving in the night" and ckpts["night_to_day"].direction == "b2a"
    assert ckpts["clear_to_rainy"].caption == "driving in heavy rain"
    assert methods.get("pix2pix-turbo").resolve_config("sketch_to_image_stochastic")["mode"] == "stochastic"
    assert methods.get("cyclegan-turbo").resolve_config("day_to_night")["resolution"] == 512
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("I2I_ZOO_OFFLINE", "1")
    with pytest.raises(methods.WeightsNotFoundError, match="--weights"):
        methods.create("cyclegan-turbo", preset="day_to_night")


def test_official_resolution_resizes_like_inference_unpaired():
    """inference_unpaired.py at --image_prep resize_512x512: the 8-bit PIL input resized with LANCZOS, the output
    taken to 8 bits by ToPILImage (truncating) and resized back with LANCZOS. At resolution = input size only the
    8-bit steps remain; resize_filter="bicubic" (a listed variant) keeps floats."""
    from methods.img2img_turbo import _pil_resize

    x = (torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).round() / 255  # an 8-bit image
    b = TranslationInput(images=x, src_prompts=["a"], tgt_prompts=["b"])
    lz = methods.create("cyclegan-turbo", preset="tiny", resolution=64).translate(
        b, generator=[torch.Generator().manual_seed(0)]).images
    bc = methods.create("cyclegan-turbo", preset="tiny", resolution=64, resize_filter="bicubic").translate(
        b, generator=[torch.Generator().manual_seed(0)]).images
    assert torch.equal(lz * 255, (lz * 255).round())  # 8-bit output
    assert (lz - bc).abs().max() <= 1 / 255 + 1e-5 and (bc - lz).min() >= -1e-5  # truncated, not rounded
    y = torch.rand(1, 3, 48, 80)
    assert torch.equal(_pil_resize(y, (48, 80), truncate=True), (y * 255).to(torch.uint8).float() / 255)
    card = methods.get("cyclegan-turbo").card
    assert card.active_variants({**card.default_config(), "resize_filter": "bicubic"}) == ["resize_filter=bicubic"]


# --- reference values from the authors' code -------------------------------------------------------------------------
# Produced by running GaParmar/img2img-turbo 86f5414 (src/pix2pix_turbo.py Pix2Pix_Turbo.forward, src/cyclegan_turbo.py
# CycleGAN_Turbo.forward with src/model.py's forwards and make_1step_sched), diffusers 0.42.1 / peft / torch 2.14 on
# CPU, with only these edits to their files: "stabilityai/sd-turbo" -> the tiny SD-Turbo preset's folder, `.cuda()`
# and "cuda" -> CPU, and the four hard-coded skip-conv widths (512/256/128) -> the tiny VAE's (64/32). Their models
# were built from official .pkl files that `export_official` wrote from the models below (tiny preset, `_perturb`
# seed 11 / 12): Pix2Pix_Turbo(pretrained_path=...) for the deterministic model, Pix2Pix_Turbo(pretrained_name=
# "sketch_to_image_stochastic") on the file in its ckpt_folder for the TwinConv model, CycleGAN_Turbo(pretrained_path=
# ...) for the unpaired one. Input: torch.rand(1, 3, 32, 32) (seed 4), caption "a photo of a cat"; their global seed
# 5 (stochastic: inference_paired.py's noise map drawn first) and 9 (unpaired, input x * 2 - 1, caption "driving in
# the night"). Outputs * 0.5 + 0.5 clamped; recorded: image[0, :, 10, 12:16], mean, std. Ours was bit-identical.
AUTHORS_TURBO = {
    "deterministic": ([[0.54248416, 0.70084232, 0.7531693, 0.81714231],
                       [0.53909504, 0.73281687, 0.84023368, 0.79692882],
                       [0.2066519, 0.13546968, 0, 0]], 0.4722515, 0.24845585),
    "stochastic": ([[0.25601569, 0.39833474, 0.6680541, 0.71514815], [0.36371285, 0.32623559, 0.34971076, 0.43339014],
                    [0.75727761, 0.58525133, 0.38072723, 0.24465171]], 0.48404443, 0.20869569),
    "a2b": ([[0.26382267, 0.19643605, 0.19333869, 0.09143436], [0, 0, 0.16760236, 0.1874094],
             [0.47742543, 0.97954828, 0.6132251, 0.2405014]], 0.52666217, 0.26723266),
    "b2a": ([[0.64396465, 0.64942169, 0.75738645, 0.66024798], [0.61900663, 0.46562517, 0.21428731, 0.33997601],
             [0.40806523, 0.26221329, 0.32425666, 0.24212623]], 0.50425994, 0.27187678),
}


def _assert_authors_turbo(key: str, img: torch.Tensor) -> None:
    want, mean, std = AUTHORS_TURBO[key]
    assert torch.allclose(img[0, :, 10, 12:16], torch.tensor(want), atol=1e-6), key
    assert img.mean().item() == pytest.approx(mean, abs=1e-6) and img.std().item() == pytest.approx(std, abs=1e-6)


@pytest.mark.parametrize("mode", ["deterministic", "stochastic"])
def test_pix2pix_turbo_reproduces_the_authors_pix2pix_turbo(mode):
    """Pinned to the authors' Pix2Pix_Turbo.forward on the same weights, input and seed (see AUTHORS_TURBO)."""
    m = methods.create("pix2pix-turbo", preset="tiny", mode=mode)
    _perturb(m.gen, seed=11)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    out = m.translate(TranslationInput(images=x, condition=x, tgt_prompts=["a photo of a cat"]),
                      generator=[torch.Generator().manual_seed(5)]).images
    _assert_authors_turbo(mode, out)


def test_cyclegan_turbo_reproduces_the_authors_cyclegan_turbo():
    """Pinned to the authors' CycleGAN_Turbo.forward, both directions (see AUTHORS_TURBO for how)."""
    m = methods.create("cyclegan-turbo", preset="tiny", prompt="input")
    _perturb(m.gen, seed=12)
    base = load_sd(TINY).unet.conv_in
    with torch.no_grad():  # the authors' loader keeps conv_in's base at the pretrained weights (not in their file)
        m.gen.unet.conv_in.base_layer.weight.copy_(base.weight)
        m.gen.unet.conv_in.base_layer.bias.copy_(base.bias)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    for direction in ("a2b", "b2a"):
        out = m.translate(TranslationInput(images=x, tgt_prompts=["driving in the night"], direction=direction),
                          generator=[torch.Generator().manual_seed(9)]).images
        _assert_authors_turbo(direction, out)
