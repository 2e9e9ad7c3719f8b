"""Per-image metrics and their encoders (tiny presets, CPU): definitions checked against hand computations and
reference implementations (scikit-image, the lpips package, open_clip's own transform), batching, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from eval.clip import load_clip
from eval.dino import DINO_PREPROCESS, load_dino, self_similarity
from eval.lpips_net import load_lpips, new_lpips_model
from eval.metrics import get_metric, ssim

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))


def rand_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def smooth_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Images with structure (upsampled noise) rather than white noise."""
    small = rand_images(b, max(2, h // 16), max(2, w // 16), seed)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def u8_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """`smooth_images` on the uint8 grid (what an 8-bit image file holds): the CLIP metrics read uint8 images."""
    return (smooth_images(b, h, w, seed) * 255).round() / 255


# --- pixel metrics --------------------------------------------------------------------------------------------------


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = smooth_images(3, 40, 52, 0), smooth_images(3, 40, 52, 1)
    y = (0.7 * x + 0.3 * y).clamp(0, 1)
    got_psnr = get_metric("psnr")(x, targets=y)
    got_ssim = get_metric("ssim")(x, targets=y)
    for i in range(3):
        a, b = x[i].permute(1, 2, 0).double().numpy(), y[i].permute(1, 2, 0).double().numpy()
        assert got_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1.0), abs=1e-4)
        ref = structural_similarity(a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert got_ssim[i].item() == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.isinf(get_metric("psnr")(x, targets=x)).all()


# --- LPIPS ----------------------------------------------------------------------------------------------------------

# torchvision `features` index -> lpips slice, written out independently of eval.lpips_net's key mapping
ALEX_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def test_lpips_wrapper_equals_lpips_package_with_same_backbone():
    from safetensors.torch import load_file

    wrapper = load_lpips("alex", "tiny")
    features = load_file(wrapper.info.file)
    ref = new_lpips_model("alex")
    sd = ref.state_dict()
    for idx, k in ALEX_SLICES.items():
        for p in ("weight", "bias"):
            sd[f"net.slice{k}.{idx}.{p}"] = features[f"{idx}.{p}"]
    ref.load_state_dict(sd)
    a, b = smooth_images(2, 64, 64, 0), smooth_images(2, 64, 64, 1)
    expected = ref(a * 2 - 1, b * 2 - 1).flatten()
    assert torch.allclose(wrapper(a, b), expected, atol=1e-5, rtol=0)
    assert torch.allclose(get_metric("lpips", preset="tiny")(a, inputs=b), expected, atol=1e-5, rtol=0)
    assert wrapper.info.weights == "random"


def test_lpips_against_and_gradients():
    a, b, c = smooth_images(2, 48, 48, 0), smooth_images(2, 48, 48, 1), smooth_images(2, 48, 48, 2)
    auto = get_metric("lpips", preset="tiny")
    # auto: the target when there is one (paired task), else the input
    to_target = get_metric("lpips", preset="tiny", against="target")(a, targets=c)
    assert torch.allclose(auto(a, inputs=b, targets=c), to_target)
    assert torch.allclose(auto(a, inputs=b), get_metric("lpips", preset="tiny", against="input")(a, inputs=b))
    assert torch.allclose(auto(a, inputs=a), torch.zeros(2), atol=1e-6)
    x = a.clone().requires_grad_(True)
    load_lpips("alex", "tiny")(x, b).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- CLIP -----------------------------------------------------------------------------------------------------------

PROMPTS = ["a photo of a cat", "a photo of a dog", "a zebra", "a horse in a field", "winter", "summer", "night", "day"]


def _manual_embeddings(clip, images224: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings computed directly with the open_clip model: CLIP normalisation by hand, open_clip's tokenizer."""
    import open_clip

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        e_i = clip.model.encode_image((images224 - mean) / std)
        e_t = clip.model.encode_text(open_clip.get_tokenizer("ViT-B-32")(prompts))
    return e_i, e_t


def test_clip_score_follows_torchmetrics_definition():
    clip = load_clip("ViT-B-32/openai", "tiny")
    metric = get_metric("clip_score", preset="tiny", model="ViT-B-32/openai")
    images = u8_images(len(PROMPTS), 224, 224, 3)
    signs, negated = [], False
    try:
        for flip in (False, True):  # the second pass negates the text projection: every cosine changes sign
            if flip:
                with torch.no_grad():
                    clip.model.text_projection.neg_()
                negated = True
            e_i, e_t = _manual_embeddings(clip, images, PROMPTS)
            cos = F.cosine_similarity(e_i, e_t, dim=-1)
            got = metric(images, tgt_prompts=PROMPTS)
            assert torch.allclose(got, 100 * cos.clamp(min=0), atol=1e-3)
            signs.append(cos > 0)
    finally:
        if negated:  # the encoder is shared: give it its weights back
            with torch.no_grad():
                clip.model.text_projection.neg_()
    assert torch.equal(signs[0], ~signs[1]) and signs[1].any(), "both sides of the clamp at 0 are exercised"


def test_clip_encode_image_equals_open_clip_transform():
    import open_clip
    from PIL import Image

    clip = load_clip("ViT-B-32/openai", "tiny")
    u8 = (smooth_images(1, 224, 224, 4)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    transform = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    with torch.no_grad():
        ref = F.normalize(clip.model.encode_image(transform(Image.fromarray(u8))[None]), dim=-1)
        got = clip.encode_image(torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255)
        assert torch.allclose(got, ref, atol=1e-5)
        # a non-square, larger image: the differentiable path (torch's antialiased bicubic) vs PIL's bicubic, close
        # but not equal (the metrics use the reference path, tested against open_clip in test_eval_reference.py)
        u8 = (smooth_images(1, 300, 410, 5)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        ref = F.normalize(clip.model.encode_image(transform(Image.fromarray(u8))[None]), dim=-1)
        got = clip.encode_image(torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255)
        assert F.cosine_similarity(got, ref).item() > 0.99


def test_clip_directional_and_accuracy_definitions():
    clip = load_clip("ViT-B-32/openai", "tiny")
    out, inp = u8_images(4, 224, 224, 6), u8_images(4, 224, 224, 7)
    src, tgt = PROMPTS[:4], PROMPTS[4:]
    opts = {"preset": "tiny", "model": "ViT-B-32/openai"}
    e_out, e_t_tgt = _manual_embeddings(clip, out, tgt)
    e_in, e_t_src = _manual_embeddings(clip, inp, src)
    n = lambda t: F.normalize(t, dim=-1)  # noqa: E731
    expected_dir = F.cosine_similarity(n(e_out) - n(e_in), n(e_t_tgt) - n(e_t_src), dim=-1)
    directional = get_metric("clip_directional", **opts)
    assert torch.allclose(directional(out, inputs=inp, src_prompts=src, tgt_prompts=tgt), expected_dir, atol=1e-4)
    assert torch.allclose(directional(out, inputs=out, src_prompts=src, tgt_prompts=tgt), torch.zeros(4))
    expected_acc = ((n(e_out) * n(e_t_tgt)).sum(-1) > (n(e_out) * n(e_t_src)).sum(-1)).float()
    acc = get_metric("clip_accuracy", **opts)(out, src_prompts=src, tgt_prompts=tgt)
    assert torch.equal(acc, expected_acc)
    swapped = get_metric("clip_accuracy", **opts)(out, src_prompts=tgt, tgt_prompts=src)
    assert torch.equal(acc + swapped, torch.ones(4))  # no ties with random embeddings


def test_clip_gradients_flow_to_images():
    clip = load_clip("ViT-B-32/openai", "tiny")
    x = smooth_images(2, 256, 200, 8).requires_grad_(True)
    loss = 1 - (clip.encode_image(x) * clip.encode_text(["a cat", "a dog"])).sum(-1).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x.grad = None
    clip.encode_image(x, resize="squash").sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in clip.parameters())


# --- DINO -----------------------------------------------------------------------------------------------------------


def test_dino_hook_keys_equal_manual_qkv_of_that_block():
    dino = load_dino("tiny")
    m = dino.model
    x = dino.prepare(smooth_images(2, 224, 240, 9))
    for block in (5, 11):
        with torch.no_grad():
            h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
            for blk in m.blocks[:block]:
                h = blk(h)
            qkv = m.blocks[block].attn.qkv(m.blocks[block].norm1(h))
            b, t, three_d = qkv.shape
            heads, d = dino.num_heads, three_d // 3 // dino.num_heads
            k = qkv.reshape(b, t, 3, heads, d).permute(2, 0, 3, 1, 4)[1]  # Splice: (qkv, B, heads, T, d)[1]
            manual = k.transpose(1, 2).reshape(b, t, heads * d)  # concatenate the heads
            got = dino.keys(x, block)
        assert got.shape == (2, 1 + (224 // 8) * (240 // 8), dino.embed_dim)
        assert torch.allclose(got, manual, atol=1e-6)
    with torch.no_grad():
        h = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for blk in m.blocks:
            h = blk(h)
        assert torch.allclose(dino.cls_token(x), h[:, 0], atol=1e-6)


def test_dino_struct_zero_for_identity_and_batched_equals_loop():
    metric = get_metric("dino_struct", preset="tiny")
    x, y = smooth_images(3, 96, 128, 10), smooth_images(3, 96, 128, 11)
    assert torch.equal(metric(x, inputs=x), torch.zeros(3))
    batched = metric(x, inputs=y)
    loop = torch.cat([metric(x[i:i + 1], inputs=y[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, loop, atol=1e-6, rtol=0)
    assert (batched > 0).all() and (batched <= 4).all()
    # the metric is Splice's definition on the shared extractor
    dino = load_dino("tiny")
    with torch.no_grad():
        s_x = self_similarity(dino.keys(dino.prepare(x), 11, pos_interpolation="dino"))
        s_y = self_similarity(dino.keys(dino.prepare(y), 11, pos_interpolation="dino"))
    assert torch.allclose(batched, ((s_x - s_y) ** 2).mean(dim=(1, 2)), atol=1e-7)
    assert torch.allclose(torch.diagonal(s_x, dim1=1, dim2=2), torch.ones(3, s_x.shape[1]), atol=1e-5)


def test_dino_preprocessing_variants_and_aspect_error():
    wide = smooth_images(1, 224, 600, 12)
    assert tuple(DINO_PREPROCESS["splice"](wide).shape[-2:]) == (179, 480)  # long side capped at 480
    assert tuple(DINO_PREPROCESS["img2img-turbo"](wide).shape[-2:]) == (224, 600)
    mean, std = IMAGENET
    sq = smooth_images(1, 224, 224, 13)
    assert torch.allclose(DINO_PREPROCESS["splice"](sq), (sq - mean) / std, atol=1e-5)
    assert torch.allclose(DINO_PREPROCESS["pnp-inversion"](sq), (sq * 255 - mean) / std, atol=1e-3)
    with pytest.raises(ValueError, match="aspect"):
        get_metric("dino_struct", preset="tiny")(smooth_images(1, 64, 64), inputs=smooth_images(1, 64, 128))
    with pytest.raises(ValueError, match="unknown DINO preprocessing"):
        get_metric("dino_struct", preset="tiny", variant="pie")


def test_dino_gradients_flow_as_a_loss():
    dino = load_dino("tiny")
    x = smooth_images(1, 64, 64, 14).requires_grad_(True)
    dino.keys(dino.prepare(x)).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x.grad = None
    src = smooth_images(1, 64, 64, 15)
    dino.structure_distance(x, src).sum().backward()  # DiffuseIT's L_ssim: source side without gradients
    assert x.grad.abs().sum() > 0
    x.grad = None
    dino.cls_token(dino.prepare(x)).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in dino.parameters())


def test_tiny_presets_are_cached_files_loaded_through_the_real_path():
    from pathlib import Path

    for enc in (load_dino("tiny"), load_clip("ViT-B-32/openai", "tiny"), load_lpips("vgg", "tiny")):
        assert enc.info.weights == "random" and enc.info.preset == "tiny"
        assert enc.info.file and Path(enc.info.file).is_file()
    assert load_dino("tiny") is load_dino("tiny")  # loaded once per (encoder, preset, device)
    assert np.isfinite(load_dino("tiny").keys(load_dino("tiny").prepare(rand_images(1, 32, 32))).detach()).all()


def test_held_out_dino_struct_reads_another_encoder():
    from eval.metrics import get_metric, metric_specs

    x = rand_images(2, 48, 48)
    y = rand_images(2, 48, 48, seed=1)
    a = get_metric("dino_struct", preset="tiny")
    b = get_metric("dino_struct_v2", preset="tiny")
    assert metric_specs()["dino_struct"].reads == "dino-vitb8/block11/keys"
    assert metric_specs()["dino_struct_v2"].reads == "dinov2-vitb14/block11/keys"
    assert b.encoder().info.arch != a.encoder().info.arch and b.encoder().patch_size == 14
    assert torch.allclose(b(x, inputs=x), torch.zeros(2), atol=1e-6)
    vb, va = b(x, inputs=y), a(x, inputs=y)
    assert (vb > 0).all() and not torch.allclose(va, vb)
    with pytest.raises(ValueError, match="unknown DINO model"):
        get_metric("dino_struct", preset="tiny", model="dino-vitz")
