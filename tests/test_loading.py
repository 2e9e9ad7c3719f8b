"""The component loader and the tiny presets: real layouts, real from_pretrained path, actionable errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from methods import WeightsNotFoundError
from methods.common import loading, tiny


def test_hub_id_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as e:
        loading.resolve("stabilityai/sd-turbo")
    msg = str(e.value)
    assert "stabilityai/sd-turbo" in msg and "--weights DIR" in msg and "hf download" in msg


def test_missing_local_path_error():
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        loading.resolve("./no/such/dir")


def test_unknown_tiny_preset():
    with pytest.raises(KeyError, match="known: adm-uncond, sd-1.4, sd-turbo"):
        loading.resolve("tiny:sd-9")


@pytest.mark.parametrize("name, sched, pad", [("sd-turbo", "EulerDiscreteScheduler", "!"),
                                              ("sd-1.4", "PNDMScheduler", "<|endoftext|>")])
def test_tiny_sd_presets_load_through_the_real_layout(name, sched, pad):
    path = loading.resolve(f"tiny:{name}")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        assert (path / sub).is_dir()
    assert list((path / "unet").glob("*.safetensors"))
    comps = loading.load_sd(f"tiny:{name}")
    assert type(comps.scheduler).__name__ == sched
    assert comps.tokenizer.vocab_size == 49408 and comps.tokenizer.pad_token == pad
    assert comps.vae.config.block_out_channels == (32, 32, 64, 64) or list(comps.vae.config.block_out_channels) == [
        32, 32, 64, 64]
    assert comps.weights_id == f"tiny:{name}@v{tiny.TINY_VERSION}"
    # the x8 VAE: a 64 px image gives an 8 x 8 latent that the UNet maps to the same shape
    z = comps.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)
    ids = comps.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    emb = comps.text_encoder(ids)[0]
    assert comps.unet(z, 999, encoder_hidden_states=emb).sample.shape == z.shape
    if name == "sd-turbo":
        comps.scheduler.set_timesteps(1)
        assert comps.scheduler.timesteps.tolist() == [999]  # trailing spacing: the one-step turbo timestep


def test_tiny_tokenizer_matches_open_clip_ids():
    import open_clip

    comps = loading.load_sd("tiny:sd-1.4")
    texts = ["a photo of a cat, sitting on grass!", "Astronaut in space — café", "zebra"]
    ref = open_clip.get_tokenizer("ViT-B-32")(texts)
    ours = comps.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    for a, b in zip(ref, ours):
        n = int((a != 0).sum())  # open_clip pads with 0, SD 1.x with <|endoftext|>: compare up to EOT
        assert torch.equal(a[:n], b[:n])


def test_tiny_pixel_unet_is_guided_diffusion_like():
    from diffusers import DDPMScheduler, UNet2DModel

    path = loading.resolve("tiny:adm-uncond")
    unet = UNet2DModel.from_pretrained(path / "unet")
    sched = DDPMScheduler.from_pretrained(path / "scheduler")
    assert unet.config.out_channels == 6 and unet.config.resnet_time_scale_shift == "scale_shift"
    assert sched.config.variance_type == "learned_range"
    assert unet(torch.zeros(1, 3, 32, 32), 10).sample.shape == (1, 6, 32, 32)


def test_tiny_build_is_deterministic(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    first = loading.resolve("tiny:sd-1.4")
    monkeypatch.setenv("I2I_ZOO_CACHE", str(tmp_path))
    tiny.build_tiny.cache_clear()
    try:
        second = tiny.build_tiny("sd-1.4")
        assert second != first
        for sub in ("unet", "vae", "text_encoder"):
            a = load_file(next((first / sub).glob("*.safetensors")))
            b = load_file(next((second / sub).glob("*.safetensors")))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        tiny.build_tiny.cache_clear()


def test_empty_tokenizer_dir_is_refused(tmp_path):
    src = loading.resolve("tiny:sd-1.4")
    broken = tmp_path / "sd"
    shutil.copytree(src, broken)
    for f in (broken / "tokenizer").iterdir():
        f.unlink()
    with pytest.raises(WeightsNotFoundError, match="vocab_size"):
        loading.load_sd(broken)


def test_snapshot_missing_a_folder_is_refused(tmp_path):
    src = loading.resolve("tiny:sd-1.4")
    broken = tmp_path / "sd"
    shutil.copytree(src, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(WeightsNotFoundError, match="missing the vae/ folder"):
        loading.load_sd(broken)


def test_weights_identity_changes_when_local_weights_change(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "a.safetensors").write_bytes(b"1234")
    first = loading.weights_identity(d)
    (d / "a.safetensors").write_bytes(b"123456")
    assert loading.weights_identity(d) != first
    assert loading.weights_identity("tiny:sd-1.4") == f"tiny:sd-1.4@v{tiny.TINY_VERSION}"


def test_local_snapshot_dir_loads_and_a_missing_weight_file_is_named(tmp_path):
    src = loading.resolve("tiny:sd-1.4")
    local = tmp_path / "sd"
    shutil.copytree(src, local)
    comps = loading.load_sd(local)
    assert comps.weights_id.startswith(f"local:{local}") and comps.tokenizer.vocab_size == 49408
    for f in (local / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(WeightsNotFoundError, match=r"sd/unet could not be loaded.*re-download"):
        loading.load_sd(local)


def test_tokenizer_is_built_once_per_snapshot(monkeypatch, tmp_path):
    """Methods on the same snapshot (pix2pix-turbo and cyclegan-turbo; sdedit and pix2pix-zero) share one CLIP
    tokenizer per process; a rewritten tokenizer folder is loaded again."""
    import transformers

    import methods

    built = []
    real = transformers.CLIPTokenizer.from_pretrained.__func__

    def counting(cls, *args, **kw):
        built.append(args[0] if args else kw)
        return real(cls, *args, **kw)

    monkeypatch.setattr(transformers.CLIPTokenizer, "from_pretrained", classmethod(counting))
    loading._clip_tokenizer.cache_clear()
    a = methods.create("pix2pix-turbo", preset="tiny")
    b = methods.create("cyclegan-turbo", preset="tiny")
    assert a.prompt_encoder.tokenizer is b.prompt_encoder.tokenizer and len(built) == 1
    folder = loading.resolve("tiny:sd-turbo") / "tokenizer"
    assert loading.clip_tokenizer(folder) is a.prompt_encoder.tokenizer and len(built) == 1
    copy = shutil.copytree(folder, tmp_path / "tokenizer")
    first = loading.clip_tokenizer(copy)
    assert loading.clip_tokenizer(copy) is first and len(built) == 2
    (copy / "tokenizer.json").write_bytes((copy / "tokenizer.json").read_bytes())  # rewritten: loaded again
    assert loading.clip_tokenizer(copy) is not first and len(built) == 3
