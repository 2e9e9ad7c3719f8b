"""Full-random presets: every method's and every perceptual encoder's real architecture at its real size, built on
the meta device (names and shapes, no memory) from the config files the preset writes, held to the published
parameter counts; the checkpoint importers take the full-size key sets."""

from __future__ import annotations

import json
import math

import pytest
import torch

import methods
from methods.common.full_random import PUBLISHED_PARAMS_M, build_full_random, is_random_init, random_part


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _sd_parts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return (UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder")


@pytest.mark.parametrize("name", ["sd-1.4", "sd-turbo"])
def test_sd_full_random_builds_on_meta_at_the_published_sizes(name):
    path = build_full_random(name)
    assert is_random_init(path) and is_random_init(path / "unet")
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 5_000_000  # configs + BPE only
    for cls, sub in _sd_parts():
        with torch.device("meta"):
            m = random_part(cls, path, sub)
        assert next(m.parameters()).device.type == "meta"
        assert n_params(m) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[f"{name}/{sub}"], abs=0.005), sub
    unet_cfg = json.loads((path / "unet" / "config.json").read_text())
    assert unet_cfg["cross_attention_dim"] == (1024 if name == "sd-turbo" else 768)


def test_sd_full_random_tokenizer_and_scheduler_load_like_a_snapshot():
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    path = build_full_random("sd-turbo")
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    assert tok.vocab_size == 49408 and tok.pad_token == "!"
    sched = EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    assert sched.config.timestep_spacing == "trailing"


def test_random_part_is_seeded_and_leaves_the_global_rng_alone():
    from diffusers import AutoencoderKL

    path = build_full_random("sd-1.4")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    # the encoder's first conv is enough to compare: build only the small VAE (84 M) twice
    a = random_part(AutoencoderKL, path, "vae").encoder.conv_in.weight
    after = torch.rand(1)
    b = random_part(AutoencoderKL, path, "vae").encoder.conv_in.weight
    assert torch.equal(a, b) and torch.equal(before, after)


def test_adm_full_random_is_the_guided_diffusion_256_uncond_unet_and_the_importer_takes_its_keys():
    from diffusers import UNet2DModel

    from methods.diffuseit import convert

    path = build_full_random("adm-uncond")
    with torch.device("meta"):
        unet = random_part(UNet2DModel, path, "unet")
    assert n_params(unet) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M["adm-uncond/unet"], abs=0.005)
    cfg = convert.BACKBONES["imagenet-256"]
    target = unet.state_dict()
    # the official checkpoint's names with their shapes (conv1d attention, fused legacy qkv), on meta
    official = {}
    for kind, adm, ours in convert.module_map(cfg):
        for p in ("weight", "bias"):
            if kind == "plain":
                shape = tuple(target[f"{ours}.{p}"].shape)
            elif kind == "squeeze":
                shape = tuple(target[f"{ours}.{p}"].shape) + ((1,) if p == "weight" else ())
            else:
                q = tuple(target[f"{ours}.to_q.{p}"].shape)
                shape = (3 * q[0],) + q[1:] + ((1,) if p == "weight" else ())
            official[f"{adm}.{p}"] = torch.empty(shape, device="meta")
    assert set(official) == convert.expected_adm_keys(cfg)
    official["input_blocks.0.0.weight"] = torch.empty(256, 3, 3, 3, device="meta")
    assert convert.detect_backbone(official) == "imagenet-256"
    out = convert.convert_adm_state_dict(official, cfg, target=target)
    assert set(out) == set(target) and all(tuple(out[k].shape) == tuple(target[k].shape) for k in target)


def test_piti_full_random_is_the_released_base_and_upsampler():
    from methods.piti.convert import unet_from_official, unet_to_official
    from methods.piti.model import PITIConfig, PITIModel, read_meta

    path = build_full_random("piti")
    for kind in ("mask", "sketch"):
        for role in ("base", "upsample"):
            cfg = PITIConfig.from_dict(read_meta(path / kind / role)["config"])
            assert cfg == PITIConfig.preset(role, cond_kind=kind)
            with torch.device("meta"):
                model = PITIModel(cfg)
            own = model.decoder.state_dict()
            back = unet_from_official(unet_to_official(own, cfg), cfg)  # the importer on the full-size key set
            assert set(back) == set(own) and all(back[k].shape == own[k].shape for k in own)
    # GLIDE base 64 px decoder + PITI's task encoder (measured on this build; the decoder is GLIDE's without its
    # text transformer)
    with torch.device("meta"):
        assert n_params(PITIModel(PITIConfig.preset("base"))) == 338_015_302
        assert n_params(PITIModel(PITIConfig.preset("upsample"))) == 351_345_862


@pytest.mark.parametrize("kind", ["paired", "unpaired"])
def test_img2img_turbo_full_size_generator_round_trips_through_the_official_format(kind):
    from methods.common.loading import SDComponents
    from methods.img2img_turbo.convert import (
        build_from_arch,
        default_arch,
        load_tensors,
        official_arch,
        official_to_project,
        project_to_official,
    )
    from methods.img2img_turbo.defaults import init_ranks

    path = build_full_random("sd-turbo")

    def gen():
        with torch.device("meta"):
            unet, vae = (random_part(cls, path, sub) for cls, sub in _sd_parts()[:2])
        comps = SDComponents(None, None, vae, unet, None, path, "full-random")
        ranks = init_ranks("pix2pix-turbo" if kind == "paired" else "cyclegan-turbo", "paper")
        return build_from_arch(kind, comps, default_arch(kind, *ranks))

    def ranks_of(k):
        return init_ranks("pix2pix-turbo" if k == "paired" else "cyclegan-turbo", "paper")

    a, b = gen(), gen()
    official = project_to_official(a, kind, twin_conv=kind == "paired")
    arch = official_arch(official)
    assert {a["r"] for a in arch["unet"].values()} == {ranks_of(kind)[0]} and arch["vae"]["vae_skip"]["r"] == \
        ranks_of(kind)[1]
    tensors = official_to_project(official)
    load_tensors(b, tensors, where="full-size official dict", require=False)  # as load_model imports .pkl files
    from methods.img2img_turbo.generator import trainable_state_dict

    missing = {k for k in trainable_state_dict(b) if k not in tensors}
    # the authors' unpaired format stores no conv_in (trained in full, but left out of the .pkl upstream)
    conv_in = {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"}
    assert missing == (set() if kind == "paired" else conv_in)
    assert len(tensors) > 100


def test_every_method_has_a_full_random_preset_labelled_random():
    for name in methods.list():
        card = methods.get(name).card
        src = card.weights_for("full-random")
        prov = methods.get(name).weights_provenance(src)
        assert prov.kind == ("none" if src == "none" else "random"), name
        if src != "none":
            assert src.startswith("full-random:") and "full-random" in prov.id


@pytest.mark.parametrize("model_id, millions", [("ViT-B-32/openai", 151.28), ("ViT-B-16/openai", 149.62),
                                                ("ViT-L-14/openai", 427.62), ("RN50/openai", 102.01),
                                                ("RN50x4/openai", 178.30), ("RN50x16/openai", 290.98)])
def test_clip_full_random_is_the_real_architecture(model_id, millions):
    import open_clip

    from eval.clip import parse_model_id, resolve_clip

    weights, origin, file = resolve_clip(model_id, "full-random")
    assert weights == "random" and file is None and "full size" in origin
    name, tag = parse_model_id(model_id)
    m = open_clip.create_model(name, device="meta", force_quick_gelu=tag == "openai")
    assert n_params(m) / 1e6 == pytest.approx(millions, abs=0.01)


def test_dino_inception_lpips_full_random_resolve_to_random_real_architectures():
    import timm

    from eval.dino import get_dino_model, resolve_dino
    from eval.inception import FIDInceptionV3, resolve_inception
    from eval.lpips_net import resolve_lpips

    assert resolve_dino("full-random")[0] == "random" and "full size" in resolve_dino("full-random")[1]
    with torch.device("meta"):
        vit = timm.create_model(get_dino_model("dino-vitb8").arch, num_classes=0)
    assert n_params(vit) / 1e6 == pytest.approx(85.81, abs=0.01)  # DINO ViT-B/8
    assert resolve_inception("full-random")[0] == "random"
    sd = FIDInceptionV3(1).state_dict()
    # the TF-FID 2015-12-05 graph up to pool3: 376 tensors (convs + batch-norm beta/mean/var), 21.8 M values
    assert len(sd) == 376 and math.isclose(sum(v.numel() for v in sd.values()) / 1e6, 21.80, abs_tol=0.01)
    assert resolve_lpips("alex", "full-random")[0] == "random"
