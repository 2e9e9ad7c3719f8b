"""DiffuseIT (issue 6): ADM -> diffusers converter against independent reference math, the MCG-guided respaced DDPM
sampler against diffusers' DDPMScheduler, the guidance losses' defining properties, inputs, seeding, restarts.

CPU, offline, tiny presets (random weights). Numbers measured when written (2-core CPU shared with other jobs) are
quoted next to the thresholds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from methods import InputError, TranslationInput, WeightsNotFoundError
from methods.diffuseit import TINY_DEFAULTS, convert
from methods.diffuseit.convert import ADMConfig, CheckpointMismatchError
from methods.diffuseit.losses import (
    augment_views,
    cls_mse,
    draw_view_params,
    mkl_transfer,
    noise_mix,
    patch_nce_loss,
    range_loss,
    ssim_loss,
)

ALL_WEIGHTS_OFF = dict(clip_guidance_lambda=0, lambda_ssim=0, lambda_contra_ssim=0, lambda_dir_cls=0, lambda_trg=0,
                       l2_trg_lambda=0, range_lambda=0)


# ================================================================================================================
# An independent, minimal implementation of guided-diffusion's UNetModel forward on a state dict in the official
# key layout (guided_diffusion/unet.py + nn.py: GroupNorm32 = nn.GroupNorm(32, ch), default eps; ResBlock with
# use_scale_shift_norm and resblock_updown; AttentionBlock with QKVAttentionLegacy; timestep_embedding [cos, sin]).
# ================================================================================================================
def adm_timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RefADM:
    def __init__(self, cfg: ADMConfig, sd: dict[str, torch.Tensor], eps: float = 1e-5):
        self.cfg, self.sd, self.eps = cfg, sd, eps

    def gn(self, p: str, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), 32, self.sd[p + ".weight"], self.sd[p + ".bias"], eps=self.eps)

    def conv(self, p: str, x: torch.Tensor) -> torch.Tensor:
        w = self.sd[p + ".weight"]
        return F.conv2d(x, w, self.sd[p + ".bias"], padding=w.shape[-1] // 2)

    def lin(self, p: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sd[p + ".weight"], self.sd[p + ".bias"])

    def res(self, p: str, x: torch.Tensor, emb: torch.Tensor, updown: str | None = None) -> torch.Tensor:
        h = F.silu(self.gn(p + ".in_layers.0", x))
        if updown == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        elif updown == "up":
            h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv(p + ".in_layers.2", h)
        scale, shift = self.lin(p + ".emb_layers.1", F.silu(emb))[..., None, None].chunk(2, dim=1)
        h = self.gn(p + ".out_layers.0", h) * (1 + scale) + shift
        h = self.conv(p + ".out_layers.3", F.silu(h))
        skip = self.conv(p + ".skip_connection", x) if p + ".skip_connection.weight" in self.sd else x
        return skip + h

    def attn(self, p: str, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        xs = x.reshape(b, c, -1)
        qkv = F.conv1d(self.gn(p + ".norm", xs), self.sd[p + ".qkv.weight"], self.sd[p + ".qkv.bias"])
        heads = c // self.cfg.num_head_channels
        ch = c // heads
        q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)  # QKVAttentionLegacy
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        h = F.conv1d(a, self.sd[p + ".proj_out.weight"], self.sd[p + ".proj_out.bias"])
        return (xs + h).reshape(b, c, hh, ww)

    def blocks(self) -> tuple[list[list[tuple[str, str]]], list[list[tuple[str, str]]]]:
        """(input_blocks, output_blocks): per block the list of (layer kind, key prefix), as UNetModel.__init__."""
        cfg, inp, outp = self.cfg, [[("conv", "input_blocks.0.0")]], []
        n = len(cfg.channel_mult)
        for level in range(n):
            for _ in range(cfg.num_res_blocks):
                i = len(inp)
                layers = [("res", f"input_blocks.{i}.0")]
                if cfg.attention_at(level):
                    layers.append(("attn", f"input_blocks.{i}.1"))
                inp.append(layers)
            if level != n - 1:
                inp.append([("down", f"input_blocks.{len(inp)}.0")])
        for level in reversed(range(n)):
            for j in range(cfg.num_res_blocks + 1):
                i = len(outp)
                layers = [("res", f"output_blocks.{i}.0")]
                if cfg.attention_at(level):
                    layers.append(("attn", f"output_blocks.{i}.1"))
                if level and j == cfg.num_res_blocks:
                    layers.append(("up", f"output_blocks.{i}.{len(layers)}"))
                outp.append(layers)
        return inp, outp

    def run(self, layers, h, emb):
        for kind, p in layers:
            if kind == "conv":
                h = self.conv(p, h)
            elif kind == "attn":
                h = self.attn(p, h)
            else:
                h = self.res(p, h, emb, {"res": None, "down": "down", "up": "up"}[kind])
        return h

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = adm_timestep_embedding(t, self.cfg.num_channels)
        emb = self.lin("time_embed.2", F.silu(self.lin("time_embed.0", emb)))
        inp, outp = self.blocks()
        hs, h = [], x
        for layers in inp:
            h = self.run(layers, h, emb)
            hs.append(h)
        h = self.run([("res", "middle_block.0"), ("attn", "middle_block.1"), ("res", "middle_block.2")], h, emb)
        for layers in outp:
            h = self.run(layers, torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv("out.2", F.silu(self.gn("out.0", h)))


def random_adm_state_dict(cfg: ADMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in guided-diffusion's key layout and shapes (built by walking the reference's blocks)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(p: str, *shape: int, scale: float = 0.2, bias_shape: tuple[int, ...] | None = None) -> None:
        sd[p + ".weight"] = torch.randn(*shape, generator=g) * scale
        sd[p + ".bias"] = torch.randn(*(bias_shape or shape[:1]), generator=g) * 0.1

    def norm(p: str, c: int) -> None:
        sd[p + ".weight"] = 1 + 0.2 * torch.randn(c, generator=g)
        sd[p + ".bias"] = 0.2 * torch.randn(c, generator=g)

    ch, emb = cfg.num_channels, 4 * cfg.num_channels

    def res(p: str, cin: int, cout: int) -> None:
        norm(p + ".in_layers.0", cin)
        put(p + ".in_layers.2", cout, cin, 3, 3, scale=1 / math.sqrt(9 * cin))
        put(p + ".emb_layers.1", 2 * cout, emb, scale=1 / math.sqrt(emb))
        norm(p + ".out_layers.0", cout)
        put(p + ".out_layers.3", cout, cout, 3, 3, scale=1 / math.sqrt(9 * cout))
        if cin != cout:
            put(p + ".skip_connection", cout, cin, 1, 1, scale=1 / math.sqrt(cin))

    def attn(p: str, c: int) -> None:
        norm(p + ".norm", c)
        put(p + ".qkv", 3 * c, c, 1, scale=1 / math.sqrt(c))
        put(p + ".proj_out", c, c, 1, scale=1 / math.sqrt(c))

    put("time_embed.0", emb, ch, scale=1 / math.sqrt(ch))
    put("time_embed.2", emb, emb, scale=1 / math.sqrt(emb))
    inp, outp = RefADM(cfg, {}).blocks()
    chans, cur = [], ch
    level_of = []
    for level in range(len(cfg.channel_mult)):
        level_of += [level] * (cfg.num_res_blocks + (level != len(cfg.channel_mult) - 1))
    for layers, level in zip(inp, [0, *level_of]):
        for kind, p in layers:
            if kind == "conv":
                put(p, ch, 3, 3, 3, scale=0.3)
            elif kind == "res":
                res(p, cur, ch * cfg.channel_mult[level])
                cur = ch * cfg.channel_mult[level]
            elif kind == "down":
                res(p, cur, cur)
            else:
                attn(p, cur)
        chans.append(cur)
    res("middle_block.0", cur, cur)
    attn("middle_block.1", cur)
    res("middle_block.2", cur, cur)
    out_levels = [lv for lv in reversed(range(len(cfg.channel_mult))) for _ in range(cfg.num_res_blocks + 1)]
    for layers, level in zip(outp, out_levels):
        for kind, p in layers:
            if kind == "res":
                res(p, cur + chans.pop(), ch * cfg.channel_mult[level])
                cur = ch * cfg.channel_mult[level]
            elif kind == "up":
                res(p, cur, cur)
            else:
                attn(p, cur)
    norm("out.0", cur)
    put("out.2", 6, cur, 3, 3, scale=1 / math.sqrt(9 * cur))
    return sd


# Toy ADMs: ImageNet-like (attention at the two deepest levels, 2 res blocks, 2 heads of 16) and FFHQ-like
# (attention at an inner level only, a plain level below it, 1 res block, 2-4 heads).
TOY = {
    "imagenet-like": ADMConfig(32, 32, 2, (1, 2, 2), (16, 8), num_head_channels=16),
    "ffhq-like": ADMConfig(32, 32, 1, (1, 2, 2, 2), (8,), num_head_channels=16),
}


def diffusers_unet(cfg: ADMConfig, sd: dict[str, torch.Tensor], **over):
    from diffusers import UNet2DModel

    model = UNet2DModel(**{**convert.unet_config(cfg), **over}).eval()
    model.load_state_dict(convert.convert_adm_state_dict(sd, cfg, target=model.state_dict()), strict=True)
    return model


@pytest.mark.parametrize("name", sorted(TOY))
def test_converter_equals_reference_adm_math(name):
    cfg = TOY[name]
    sd = random_adm_state_dict(cfg, seed=1)
    model = diffusers_unet(cfg, sd)
    ref = RefADM(cfg, sd)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for t in ([0.0, 999.0], [17.0, 503.5]):
        tt = torch.tensor(t)
        with torch.no_grad():
            got, want = model(x, tt).sample, ref(x, tt)
        assert got.shape == (2, 6, 32, 32)
        assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()  # measured ~2e-6 (outputs of size ~1)
        assert want.abs().mean() > 0.1  # the comparison is not between two near-zero tensors


def test_groupnorm_eps_is_torch_default_not_community_1e6():
    """guided-diffusion nn.py: ADM's GroupNorm32 = nn.GroupNorm(32, ch), eps 1e-5. On a low-variance input the eps
    matters: the converted model (norm_eps=1e-5) matches the reference, a 1e-6 config does not."""
    cfg = TOY["imagenet-like"]
    sd = random_adm_state_dict(cfg, seed=3)
    sd["input_blocks.0.0.bias"] = torch.zeros_like(sd["input_blocks.0.0.bias"])
    x = 1e-3 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([250.0])
    with torch.no_grad():
        want = RefADM(cfg, sd, eps=1e-5)(x, t)
        ok = diffusers_unet(cfg, sd)(x, t).sample
        bad = diffusers_unet(cfg, sd, norm_eps=1e-6)(x, t).sample
    assert convert.unet_config(cfg)["norm_eps"] == 1e-5
    err_ok, err_bad = (ok - want).abs().max(), (bad - want).abs().max()
    assert err_ok <= 1e-5 and err_bad > 100 * err_ok, (err_ok, err_bad)  # measured ~1e-6 vs ~0.3


def test_timestep_embedding_equals_diffusers_timesteps():
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([0.0, 1.0, 17.5, 590.0, 999.0])
    for dim in (32, 256):
        ours = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
        assert torch.allclose(ours, adm_timestep_embedding(t, dim), atol=1e-5)


def test_converter_is_strict_and_names_the_problem():
    cfg = TOY["imagenet-like"]
    sd = random_adm_state_dict(cfg)
    from diffusers import UNet2DModel

    target = UNet2DModel(**convert.unet_config(cfg)).state_dict()
    missing = {k: v for k, v in sd.items() if k != "middle_block.1.qkv.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(e\.g\. middle_block\.1\.qkv\.weight"):
        convert.convert_adm_state_dict(missing, cfg, target=target)
    extra = {**sd, "label_emb.weight": torch.zeros(1000, 128)}
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*label_emb.weight"):
        convert.convert_adm_state_dict(extra, cfg, target=target)
    wrong = {**sd, "out.2.weight": torch.zeros(3, 32, 3, 3), "out.2.bias": torch.zeros(3)}
    with pytest.raises(CheckpointMismatchError, match="shape mismatches.*conv_out"):
        convert.convert_adm_state_dict(wrong, cfg, target=target)


def test_named_backbones_key_layout_and_detection():
    # the expected key sets of the two real backbones (no weights needed: detection reads keys + the stem width)
    for name, cfg in convert.BACKBONES.items():
        keys = convert.expected_adm_keys(cfg)
        fake = {k: torch.zeros(1) for k in keys}
        fake["input_blocks.0.0.weight"] = torch.zeros(cfg.num_channels, 3, 1, 1)
        assert convert.detect_backbone(fake) == name
    imagenet = convert.expected_adm_keys(convert.BACKBONES["imagenet-256"])
    # 256x256_diffusion_uncond.pt: 18 input blocks, 18 output blocks, attention at 32/16/8 (levels 3-5)
    assert "input_blocks.17.0.out_layers.3.weight" in imagenet
    assert "input_blocks.18.0.in_layers.0.weight" not in imagenet
    assert "output_blocks.17.0.skip_connection.weight" in imagenet
    assert "input_blocks.10.1.qkv.weight" in imagenet and "input_blocks.8.1.qkv.weight" not in imagenet
    assert "output_blocks.2.2.in_layers.0.weight" in imagenet  # attention + upsample ResBlock at the deepest level
    ffhq = convert.BACKBONES["ffhq-256"]
    cfg = convert.unet_config(ffhq)
    assert cfg["down_block_types"][4] == "AttnDownBlock2D" and cfg["down_block_types"].count("AttnDownBlock2D") == 1
    assert cfg["attn_norm_num_groups"] == 32 and cfg["resnet_time_scale_shift"] == "scale_shift"


def test_official_checkpoint_import_and_converted_dir_give_the_same_model(tmp_path, monkeypatch):
    cfg = TOY["imagenet-like"]
    monkeypatch.setitem(convert.BACKBONES, "toy", cfg)
    sd = random_adm_state_dict(cfg, seed=5)
    pt = tmp_path / "toy_diffusion_uncond.pt"
    torch.save(sd, pt)
    a = methods.create("diffuseit", source=str(pt), preset="tiny", model_output_size=32, backbone="toy")
    assert a.engine.backbone == "toy"
    out_dir = convert.write_converted(pt, tmp_path / "converted", backbone="toy")
    assert (out_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    b = methods.create("diffuseit", source=str(out_dir), preset="tiny", model_output_size=32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ya, yb = a.engine.unet(x, torch.tensor([100.0])).sample, b.engine.unet(x, torch.tensor([100.0])).sample
        want = RefADM(cfg, sd)(x, torch.tensor([100.0]))
    assert (ya - yb).abs().max() <= 1e-5 and (ya - want).abs().max() <= 1e-5
    # a checkpoint of another architecture: strict error that names the fix
    torch.save({k: v for k, v in sd.items() if not k.startswith("out.")}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        methods.create("diffuseit", source=str(tmp_path / "broken.pt"), preset="tiny", backbone="toy")
    with pytest.raises(CheckpointMismatchError, match="fits none of the known ADM backbones"):
        methods.create("diffuseit", source=str(tmp_path / "broken.pt"), preset="tiny")


def test_paper_preset_offline_names_the_download_and_the_fixes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("I2I_ZOO_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as e:
        methods.create("diffuseit", preset="paper")
    msg = str(e.value)
    assert "256x256_diffusion_uncond.pt" in msg and "--weights FILE" in msg and "--preset tiny" in msg


# ================================================================================================================
# Sampler
# ================================================================================================================
def photos(size: int) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    out = []
    for name in ("astronaut", "chelsea", "coffee"):
        im = Image.fromarray(np.array(getattr(skimage.data, name)())).convert("RGB").resize((size, size), Image.LANCZOS)
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def gens(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + offset + i) for i in range(n)]


def text_batch(x: torch.Tensor, src="a photo of a cat", tgt="a photo of a dog") -> TranslationInput:
    n = x.shape[0]
    return TranslationInput(images=x, src_prompts=[src] * n, tgt_prompts=[tgt] * n, ids=[f"s{i}" for i in range(n)])


@pytest.fixture(scope="module")
def tiny():
    return methods.create("diffuseit", preset="tiny")


@pytest.mark.parametrize("undo_beta", ["prev", "current"])
def test_unguided_sampler_equals_respaced_ddpm_reference(tiny, undo_beta):
    """All guidance weights 0: the sampler is plain respaced learned-range DDPM from the noised input, stepped here by
    diffusers' DDPMScheduler over the ADM-respaced timesteps (resampling's forward step written by hand, with the
    authors' beta of respaced index t-1 by default, beta_t with undo_beta="current")."""
    from diffusers import DDPMScheduler

    from methods.common.tiny import ADM_SCHEDULER

    model = methods.create("diffuseit", preset="tiny", resample_num=3, mode="text", undo_beta=undo_beta,
                           **ALL_WEIGHTS_OFF)
    x = (photos(64)[:1] * 255).round() / 255  # the input goes in as an 8-bit image, as the authors read files
    got = model.translate(text_batch(x), generator=[torch.Generator().manual_seed(7)]).images

    unet = tiny.engine.unet
    sched = DDPMScheduler.from_config({**ADM_SCHEDULER, "clip_sample": False})
    kept = [round(i * 999 / 9) for i in range(10)]  # ADM respacing "10": one section, stride 999 / 9
    steps = kept[: 10 - TINY_DEFAULTS["skip_timesteps"]][::-1]  # skip 4: start at the 6th kept step
    sched.set_timesteps(timesteps=steps)
    g = torch.Generator().manual_seed(7)
    x0 = x * 2 - 1
    xt = sched.add_noise(x0, torch.randn(x0.shape, generator=g), torch.tensor([steps[0]]))
    ac = sched.alphas_cumprod
    with torch.no_grad():
        for k, t in enumerate(steps):
            for r in range(3 if k == 0 else 1):
                res = sched.step(unet(xt, torch.tensor([float(t)])).sample, t, xt, generator=g)
                xt = res.prev_sample
                if k == 0 and r < 2:  # one forward step with the respaced beta_{t-1} (or beta_t)
                    beta = 1 - ac[steps[1]] / ac[steps[2]] if undo_beta == "prev" else 1 - ac[t] / ac[steps[1]]
                    xt = torch.sqrt(1 - beta) * xt + torch.sqrt(beta) * torch.randn(xt.shape, generator=g)
    want = ((res.pred_original_sample + 1) / 2).clamp(0, 1)
    # measured ~9e-6: diffusers keeps the schedule in float32, guided-diffusion (and ours) in float64, and the random
    # tiny UNet's x0 predictions are large; a wrong resampling beta (tried) gives an error of 1.0
    assert (got - want).abs().max() <= 5e-5, (got - want).abs().max()


def _context(model, x, ref=None, prompts=None):
    from methods.diffuseit.pipeline import _Context

    cfg = model.config
    x0 = x * 2 - 1
    src, tgt = prompts or (None, None)
    return _Context(model.engine, cfg, x0, ref, src, tgt)


@pytest.mark.parametrize("mode", ["image", "text"])
def test_mcg_step_lowers_the_guidance_loss(mode):
    """One guided step's mean shift (variance x -grad) lowers the total guidance loss at that step (same t, same
    CLIP views) compared with the unguided x_t; with all weights 0 there is no gradient.

    The random tiny UNet's x0 predictions are far outside [-1, 1] (losses ~2e4 at the paper's weights, where the
    step overshoots); the weights are scaled by 1e-3 so that the step stays in the regime where a gradient step
    must descend (the paper's trained UNet gives losses of order 1)."""
    paper = methods.get("diffuseit").resolve_config("paper")
    model = methods.create("diffuseit", preset="tiny", mode=mode, **{k: paper[k] * 1e-3 for k in ALL_WEIGHTS_OFF})
    x = photos(64)[:2]
    ref = photos(64)[[2, 0]] if mode == "image" else None
    ctx = _context(model, x, ref, (["a cat"] * 2, ["a dog"] * 2) if mode == "text" else None)
    diff = ctx.diff
    i = ctx.steps[1]
    z = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    xt = diff.q_sample(x * 2 - 1, torch.full((2,), i), z)

    def loss_at(z):
        g = [torch.Generator().manual_seed(11 + j) for j in range(2)]
        ctx.prev_cls = ctx.feat_src[2].clone()
        return ctx.guide(z, i, [0, 1], g)

    out, grad, _, before = loss_at(xt)
    shifted = diff.condition_mean(out, grad) - out["mean"]
    after = loss_at(xt + shifted)[3]
    assert (after < before).all(), (before, after)
    off = _context(methods.create("diffuseit", preset="tiny", mode=mode, **ALL_WEIGHTS_OFF), x, ref,
                   (["a cat"] * 2, ["a dog"] * 2) if mode == "text" else None)
    assert off.guide(xt, i, [0, 1], gens(2))[1] is None


@pytest.fixture(scope="module")
def tiny_text():
    """Text-guided tiny model with two CLIP models (the five-model ensemble is covered by the census test)."""
    return methods.create("diffuseit", preset="tiny", clip_models="ViT-B-32/openai,RN50/openai")


@pytest.mark.slow
def test_same_seed_same_output_and_batch_equals_singles_text_mode(tiny_text):
    """Every random draw of a sample (noise, resampling noise, CLIP views) comes from its generator: a batch of 2
    equals two batches of 1, and a rerun with the same generators is bit-identical."""
    x = photos(64)[:2]
    a = tiny_text.translate(text_batch(x), generator=gens(2)).images
    singles = [tiny_text.translate(text_batch(x[i:i + 1]), generator=[gens(2)[i]]).images for i in range(2)]
    # the declared "float-guided" contract: guidance gradients amplify batched-kernel rounding (measured ~2e-5)
    assert tiny_text.batch_equivalence == "float-guided" and (a - torch.cat(singles)).abs().max() <= 1e-3
    again = tiny_text.translate(text_batch(x[1:]), generator=[gens(2)[1]]).images
    assert torch.equal(again, singles[1])
    assert (singles[0] - tiny_text.translate(text_batch(x[:1]), generator=gens(1, offset=5)).images).abs().mean() \
        > 1e-3  # another seed, another result


def image_batch(x: torch.Tensor, ref: torch.Tensor) -> TranslationInput:
    return TranslationInput(images=x, reference=ref, ids=[f"s{i}" for i in range(x.shape[0])])


def test_n_outputs_and_resizing(tiny):
    model = methods.create("diffuseit", preset="tiny", n_outputs=2)
    x, ref = photos(48)[:1], photos(48)[1:2]  # the tiny model runs at 64: resized in and back out
    out = model.translate(image_batch(x, ref), generator=gens(1))
    assert out.images.shape == (1, 3, 48, 48)
    ex = out.extras[0]
    assert ex["resized"] and ex["model_output_size"] == 64 and ex["mode"] == "image"
    assert len(ex["outputs"]) == 1 and ex["outputs"][0].shape == (3, 48, 48)
    assert (ex["outputs"][0] - out.images[0]).abs().mean() > 1e-3
    # the first output is what n_outputs=1 gives from the same generator
    one = tiny.translate(image_batch(x, ref), generator=gens(1)).images
    assert torch.equal(one, out.images)


def test_missing_inputs_are_input_errors(tiny):
    x = photos(64)[:2]
    with pytest.raises(InputError, match="source prompt.*missing for s1"):
        tiny.translate(TranslationInput(images=x, src_prompts=["a cat", None], tgt_prompts=["a dog"] * 2,
                                        ids=["s0", "s1"]), generator=gens(2))
    with pytest.raises(InputError, match="target prompt"):
        tiny.translate(TranslationInput(images=x, src_prompts=["a cat"] * 2), generator=gens(2))
    image_mode = methods.create("diffuseit", preset="tiny", mode="image")
    with pytest.raises(InputError, match="needs a reference"):
        image_mode.translate(text_batch(x), generator=gens(2))
    with pytest.raises(InputError, match="mode must be one of"):
        methods.create("diffuseit", preset="tiny", mode="style")
    with pytest.raises(InputError, match="n_outputs must be >= 1"):
        methods.create("diffuseit", preset="tiny", n_outputs=0)
    with pytest.raises(InputError, match="clip_models.*unknown open_clip architecture"):
        methods.create("diffuseit", preset="tiny", clip_models="ViT-B/32")
    with pytest.raises(InputError, match="skip_timesteps must lie in"):
        methods.create("diffuseit", preset="tiny", skip_timesteps=10).translate(text_batch(x[:1]), generator=gens(1))


@pytest.mark.slow
def test_range_restart_is_capped_per_sample_with_a_warning(tiny):
    """A random UNet's x0 prediction always leaves [-1, 1]: with a threshold of 0 every pass restarts, so the cap
    decides; with a huge threshold nothing restarts. Each pass calls the UNet; the census bounds the work."""
    x, ref = photos(64)[:2], photos(64)[[2, 0]]
    model = methods.create("diffuseit", preset="tiny", use_range_restart=True, range_restart_threshold=0.0,
                           max_restarts=2)
    calls = []
    h = model.engine.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.warns(UserWarning, match="after 2 restarts"):
            out = model.translate(image_batch(x, ref), generator=gens(2))
    finally:
        h.remove()
    assert [e["restarts"] for e in out.extras] == [2, 2]
    assert all(e["range_restart_cap_hit"] for e in out.extras)
    # per pass one UNet call per step (batched over the samples still running): two aborted passes (the first
    # step's 2 resamples + the second step, where the check fires) and one full pass of 7 steps
    assert len(calls) == 2 * 3 + 7
    relaxed = methods.create("diffuseit", preset="tiny", use_range_restart=True, range_restart_threshold=1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = relaxed.translate(image_batch(x[:1], ref[:1]), generator=gens(1))
    assert out.extras[0]["restarts"] == 0 and not out.extras[0]["range_restart_cap_hit"]


def test_networks_cover_every_network_call(tiny):
    from eval.timing import count_network_calls

    x = photos(64)[:1]
    nets = tiny.networks()
    assert {"unet", "unet.backward", "dino"} <= set(nets)
    ids = tiny.config["clip_models"].split(",")
    assert len(ids) == 5 and all(f"clip[{m}].image" in nets for m in ids)
    with count_network_calls(nets) as calls:
        tiny.translate(text_batch(x, src="a photo of a horse", tgt="a photo of a zebra"), generator=gens(1))
    steps = 10 - TINY_DEFAULTS["skip_timesteps"] + TINY_DEFAULTS["resample_num"] - 1  # 7 guided steps
    assert calls["unet"].calls == calls["unet.backward"].calls == steps
    assert calls["dino"].calls == steps + 1  # + the source image, once
    # + E_I(source) for the target direction and the source's loss (upstream's initial loss_prev), as upstream
    assert all(calls[f"clip[{m}].image"].calls == steps + 2 for m in ids)
    assert all(calls[f"clip[{m}].text"].calls == 1 for m in ids)  # both new prompts, all templates, in one call


def test_card_defaults_and_tiny_preset():
    cls = methods.get("diffuseit")
    paper = cls.resolve_config("paper")
    assert (paper["timestep_respacing"], paper["skip_timesteps"], paper["resample_num"]) == ("100", 40, 10)
    assert (paper["clip_guidance_lambda"], paper["lambda_ssim"], paper["lambda_contra_ssim"]) == (2000, 1000, 200)
    assert (paper["lambda_dir_cls"], paper["lambda_trg"], paper["l2_trg_lambda"], paper["range_lambda"]) == \
        (100, 2000, 3000, 200)
    assert (paper["lambda_src_text"], paper["lambda_src_image"], paper["aug_num"], paper["diff_iter"]) == \
        (0.4, 0.2, 8, 50)
    assert paper["clip_models"].split(",") == ["RN50/openai", "RN50x4/openai", "ViT-B-32/openai", "RN50x16/openai",
                                               "ViT-B-16/openai"]
    tiny_cfg = cls.resolve_config("tiny")
    assert {k for k in paper if paper[k] != tiny_cfg[k]} == set(TINY_DEFAULTS)
    assert cls.card.kinds == {"text-edit", "unpaired", "image-guided"}
    assert cls.card.weights["paper"].endswith("jul-2021/256x256_diffusion_uncond.pt")
    assert cls.resolve_config("paper", {"use_colormatch": "false", "aug_num": "4"})["use_colormatch"] is False


# ================================================================================================================
# Losses
# ================================================================================================================
def perturbations(x: torch.Tensor, levels=(0.0, 0.05, 0.2, 0.5)) -> list[torch.Tensor]:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    return [(x + s * noise).clamp(0, 1) for s in levels]


def test_dino_losses_zero_for_identical_and_growing_with_perturbation(tiny):
    dino = tiny.engine.dino(64)
    x = photos(64)[:2]
    with torch.no_grad():
        k0, s0, c0 = dino(x)
        feats = [dino(p) for p in perturbations(x)]
    ss = [ssim_loss(s, s0) for _, s, _ in feats]
    cl = [cls_mse(c, c0) for _, _, c in feats]
    nce = [patch_nce_loss(k, k0) for k, _, _ in feats]
    assert torch.equal(ss[0], torch.zeros(2)) and torch.equal(cl[0], torch.zeros(2))
    for seq in (ss, cl, nce):
        vals = torch.stack(seq)  # levels x B
        assert (vals[1:] > vals[:-1]).all(), vals


def test_patch_nce_closed_form_and_minimum():
    """Orthonormal keys, identical inputs: positive logit 1/tau, the other T-1 negatives 0, own position -10/tau."""
    t, tau = 6, 0.07
    keys = torch.eye(t, dtype=torch.float64)[None] * 3.0
    want = math.log(math.exp(1 / tau) + (t - 1) + math.exp(-10 / tau)) - 1 / tau
    assert patch_nce_loss(keys, keys, tau).item() == pytest.approx(want, rel=1e-9)
    rot = torch.roll(keys, 1, dims=1)  # every query now matches another token's source key
    assert patch_nce_loss(rot, keys, tau).item() > 10


def test_range_loss_and_noise_mix():
    x = torch.zeros(2, 3, 4, 4)
    x[1] = 1.5
    assert range_loss(x).tolist() == [0.0, 0.25]
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    assert torch.equal(noise_mix(a, b, 0.0), a) and torch.equal(noise_mix(a, b, 1.0), b)


def test_clip_views_identity_and_flip():
    x = photos(64)[:1]
    ident = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(augment_views(x, ident, 64), x, atol=1e-5)
    flip = ident.clone()
    flip[0, 5] = 1.0
    assert torch.allclose(augment_views(x, flip, 64), x.flip(-1), atol=1e-5)
    p = draw_view_params(200, torch.Generator().manual_seed(0))
    assert p[:, 0].abs().max() <= 10 and (p[:, 1] * p[:, 2]).min() >= 0.8 - 1e-9 and (p[:, 1] <= 1).all()
    assert torch.equal(p, draw_view_params(200, torch.Generator().manual_seed(0)))


def test_clip_directional_loss_is_minimal_when_the_views_embed_at_the_target(tiny):
    from methods.diffuseit.losses import ClipDirection

    towers = tiny.engine.clip(["ViT-B-32/openai", "RN50/openai"])
    x = photos(224)[:1]
    d = ClipDirection([v for v, _ in towers], [tiny.engine.prompt_embedder(m, t) for m, (_, t) in
                                               zip(["ViT-B-32/openai", "RN50/openai"], towers)],
                      ["a cat"], ["a dog"], x, lambda_src_text=0.4, lambda_src_image=0.2)
    ident = [(0.0, 0, 0, 224, 224, False)]  # no rotation, the whole image, no flip
    with torch.no_grad():
        d.targets = [d.test_embedding(v, x) for v, _ in towers]  # target = the image itself
        at_min = d.loss(x, [[ident, ident]], [0])
        moved = [d.loss(p, [[ident, ident]], [0]) for p in perturbations(x)[1:]]
    assert at_min.item() == pytest.approx(-1.0, abs=1e-5)
    assert all(m.item() > at_min.item() + 1e-6 for m in moved)


def test_mkl_colour_transfer_matches_the_reference_statistics():
    src = photos(64)[0]
    ref = photos(64)[1]
    out = mkl_transfer(src, ref)
    o, r = out.reshape(3, -1).double(), ref.reshape(3, -1).double()
    assert torch.allclose(o.mean(1), r.mean(1), atol=1e-6)
    assert torch.allclose(torch.cov(o, correction=0), torch.cov(r, correction=0), atol=1e-6)
    # MKL is the transport map of least displacement among those matching the covariance: it moves less than
    # the (equally valid) whitening-recolouring map that goes through the identity covariance
    c_s, c_r = torch.cov(src.reshape(3, -1).double(), correction=0), torch.cov(r, correction=0)
    ev_s, v_s = torch.linalg.eigh(c_s)
    ev_r, v_r = torch.linalg.eigh(c_r)
    white = v_r @ torch.diag(ev_r.sqrt()) @ v_r.T @ v_s @ torch.diag(ev_s.rsqrt()) @ v_s.T
    s = src.reshape(3, -1).double()
    alt = white @ (s - s.mean(1, keepdim=True)) + r.mean(1, keepdim=True)
    # (agreed with the color-matcher package's "mkl" to 1e-4 when checked by hand; the package is GPL-3.0 and
    # installs a top-level `tests` package, so it is not a dependency)
    assert (o - s).square().mean() < (alt - s).square().mean()


# -- the authors' preprocessing, templates and loop details ------------------------------------------------------
def test_templates_are_the_authors_79():
    """DiffuseIT src/template.py (cyclomon/DiffuseIT 8386b9a): CLIP's 80 ImageNet templates, same order, without
    'a photo of many {}.'; 79 entries, sha256 of the newline-joined list 9cf11dc6bfc24c77... (computed on the file)."""
    import hashlib

    from methods.diffuseit.losses import imagenet_templates

    t = imagenet_templates()
    assert len(t) == 79 and "a photo of many {}." not in t
    assert t[0] == "a bad photo of a {}." and t[-1] == "a tattoo of the {}."
    assert hashlib.sha256("\n".join(t).encode()).hexdigest()[:16] == "9cf11dc6bfc24c77"


@pytest.mark.parametrize("hw", [(64, 64), (80, 64)])
def test_clip_views_equal_torchvision_train_prep(hw):
    """The authors' view = torchvision RandomRotation(10) -> RandomResizedCrop(size, (0.8, 1), (0.9, 1.1)) ->
    RandomHorizontalFlip on the tensor (0.10: no antialiasing). Our draws from a generator seeded like the global
    RNG give the same parameters, and the same pixels."""
    from torchvision import transforms as T

    from methods.diffuseit.losses import authors_views, draw_views

    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(3))
    prep = torch.nn.Sequential(T.RandomRotation(10), T.RandomResizedCrop(48, scale=(0.8, 1), ratio=(0.9, 1.1),
                                                                         antialias=False), T.RandomHorizontalFlip())
    torch.manual_seed(5)
    want = torch.cat([prep(x[0])[None] for _ in range(6)])
    views = draw_views(6, torch.Generator().manual_seed(5), *hw)
    got = authors_views(x, views, 48)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert len({v[5] for v in views}) == 2 or len(views) < 4  # both flips occur in 6 draws at this seed


def test_dino_and_clip_inputs_resize_without_antialiasing_as_the_authors():
    from torchvision import transforms as T

    from methods.diffuseit.losses import clip_test_view, dino_input

    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    # model_vit/loss_vit.py global_transform on torchvision 0.10 tensors: Resize(224, max_size=480), no antialias
    ref = T.Compose([T.Resize(224, max_size=480, antialias=False),
                     T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert torch.allclose(dino_input(x), torch.stack([ref(i) for i in x]), atol=1e-6)
    assert (dino_input(x) - dino_input(x, antialias=True)).abs().max() > 0.1  # white noise: aliasing matters
    # src/vqc_core.py test_prep (before the CLIP normalisation): Resize(224) + CenterCrop(224)
    tp = T.Compose([T.Resize(224, antialias=False), T.CenterCrop(224)])
    assert torch.allclose(clip_test_view(x, 224), torch.stack([tp(i) for i in x]), atol=1e-6)


def test_inputs_are_read_as_8bit_lanczos_like_the_authors_files():
    from PIL import Image

    from methods.diffuseit.pipeline import load_like_authors

    x = photos(96)[:2]
    x8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    want = np.stack([np.asarray(Image.fromarray(a).resize((64, 64), Image.LANCZOS)) for a in x8])
    got = load_like_authors(x, 64)
    assert torch.equal((got * 255).round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(want))
    assert torch.equal(load_like_authors(x, 96), torch.from_numpy(x8).permute(0, 3, 1, 2).float() / 255)


def test_range_check_at_the_last_step_keeps_the_sample():
    """The authors' progressive loop breaks out at i == 0 and keeps that sample (`if i == 0: break`); with only
    steps 1 -> 0 left after the first, a check that fires every step (random UNet) restarts nothing."""
    x = photos(64)[:1]
    ref = photos(64)[1:2]
    m = methods.create("diffuseit", preset="tiny", use_range_restart=True, range_restart_threshold=0.0,
                       skip_timesteps=8, max_restarts=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m.translate(image_batch(x, ref), generator=gens(1))
    assert out.extras[0]["restarts"] == 0 and not out.extras[0]["range_restart_cap_hit"]
    # one step earlier (steps 2 -> 1 -> 0) the check at step 1 restarts, up to the cap
    m2 = methods.create("diffuseit", preset="tiny", use_range_restart=True, range_restart_threshold=0.0,
                        skip_timesteps=7, max_restarts=2)
    with pytest.warns(UserWarning, match="after 2 restarts"):
        assert m2.translate(image_batch(x, ref), generator=gens(1)).extras[0]["restarts"] == 2


def test_ddim_path_does_not_resample():
    """guided-diffusion's ddim_sample_loop_progressive in DiffuseIT has no resampling at the first step."""
    from eval.timing import count_network_calls

    m = methods.create("diffuseit", preset="tiny", ddim=True, resample_num=5)
    with count_network_calls(m.networks()) as calls:
        m.translate(image_batch(photos(64)[:1], photos(64)[1:2]), generator=gens(1))
    assert calls["unet"].calls == 10 - TINY_DEFAULTS["skip_timesteps"]


def test_prev_cls_persists_over_outputs_and_prog_contrast_changes_text_guidance():
    x, ref = photos(64)[:1], photos(64)[1:2]
    kw = dict(n_outputs=2, lambda_dir_cls=1e4)
    a = methods.create("diffuseit", preset="tiny", **kw).translate(image_batch(x, ref), generator=gens(1))
    b = methods.create("diffuseit", preset="tiny", prev_cls="reset", **kw).translate(image_batch(x, ref),
                                                                                   generator=gens(1))
    assert torch.equal(a.images, b.images)  # the first output starts from the source's [CLS] either way
    assert not torch.equal(a.extras[0]["outputs"][0], b.extras[0]["outputs"][0])  # the second carries the first's
    t0 = methods.create("diffuseit", preset="tiny").translate(text_batch(x), generator=gens(1)).images
    t1 = methods.create("diffuseit", preset="tiny", use_prog_contrast=True).translate(text_batch(x),
                                                                                       generator=gens(1)).images
    assert not torch.equal(t0, t1)  # random CLIP: loss ~0 > -0.5, so the contrastive weight is halved
    assert methods.get("diffuseit").card.active_variants(
        methods.get("diffuseit").resolve_config("paper", {"prev_cls": "reset"})) == ["prev_cls=reset"]


# -- reference values from the authors' code ------------------------------------------------------------------------
# Produced by running DiffuseIT's own guided_diffusion package (cyclomon/DiffuseIT 8386b9a, guided_diffusion/
# guided_diffusion: create_model_and_diffusion, SpacedDiffusion.p_sample_loop_progressive /
# ddim_sample_loop_progressive)
# unmodified, with a cond_fn written as optimization/image_editor.py's for an image-guided edit whose DINO weights are 0
# (noise-mixed x0, range loss x 0.2, pixel MSE to the reference x 3.0, no restart), on the tiny preset's ADM UNet
# exported to the official key layout (UNetModel(64 px, 32 ch, mult 1,2,2, 1 res block, attention at 32,16, head 32);
# the export round-trips through convert_adm_state_dict exactly), respacing "10", skip 4, 10 resamples, inputs
# skimage astronaut / coffee resized to 64 px with PIL LANCZOS, global seed 1234 (the same draws as one generator
# seeded 1234 here). Recorded: the last step's x0 prediction, channel c, row 30, columns 20-23, and its std.
AUTHORS_LOOP = {
    "ddpm": ([[1.1096407, 27.751511, -6.8490567, -23.639116], [-27.182053, -7.8787155, -29.848110, 4.8946342],
              [-67.619835, 12.103746, -30.944756, -39.400600]], 35.252934),
    "ddim": ([[-9.5461140, -1.3985672, 2.0614343, -10.021834], [0.74632162, 1.3203926, 0.69702858, -1.5253543],
              [-5.2722220, -3.2727067, -8.4122486, -6.9855070]], 5.2125797),
}


@pytest.mark.parametrize("loop", ["ddpm", "ddim"])
def test_sampler_reproduces_the_authors_guided_loop(loop):
    """Our default loop (undo with beta_{t-1}, 10 resamples in DDPM, none in DDIM, MCG on the noise-mixed x0) gives
    the authors' numbers to float rounding (measured: rel 9e-7 on the DDPM slice). With the pre-alignment resampling
    (undo_beta="current") the DDPM x0 is rel 0.53 away (0.61 on the slice)."""
    import skimage.data as skd
    from PIL import Image

    from methods.diffuseit.pipeline import _Context

    def load(a):
        img = Image.fromarray(a).resize((64, 64), Image.LANCZOS)
        return torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 255

    x, ref = load(skd.astronaut()), load(skd.coffee())
    want, want_std = AUTHORS_LOOP[loop]
    want = torch.tensor(want)
    got = {}
    for undo in ("prev", "current"):
        m = methods.create("diffuseit", preset="tiny", mode="image", resample_num=10, lambda_ssim=0,
                           lambda_contra_ssim=0, lambda_dir_cls=0, lambda_trg=0, l2_trg_lambda=3.0, range_lambda=0.2,
                           use_colormatch=False, use_range_restart=False, ddim=loop == "ddim", undo_beta=undo)
        ctx = _Context(m.engine, m.config, x * 2 - 1, ref, None, None)
        got[undo] = ctx.sample([0], [torch.Generator().manual_seed(1234)], [False]).images
    sl = got["prev"][0, :, 30, 20:24]
    assert torch.allclose(sl, want, rtol=1e-4, atol=1e-4 * want.abs().max()), (sl, want)
    assert got["prev"].std().item() == pytest.approx(want_std, rel=1e-5)
    if loop == "ddpm":
        rel = ((got["current"] - got["prev"]).norm() / got["prev"].norm()).item()
        assert rel > 0.3, rel
    else:  # no resampling in DDIM: the undo rule does not matter
        assert torch.equal(got["current"], got["prev"])


# -- the FFHQ backbone's ArcFace identity loss -------------------------------------------------------------------
def test_arcface_irse50_imports_the_official_layout_and_gives_an_identity_loss(tmp_path):
    """Synthetic weights in the official model_ir_se50.pth layout (a plain state dict, 'module.' prefixes
    tolerated) load strictly; the embedding is unit-norm, the loss is 0 for the source itself and > 0 otherwise,
    differentiable; a wrong file is a clear error."""
    from methods.diffuseit.arcface import IRSE50, IdentityLoss, load_irse50

    torch.manual_seed(0)
    net = IRSE50().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for mod in net.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    keys = list(net.state_dict())
    assert "body.3.shortcut_layer.0.weight" in keys and "body.1.res_layer.5.fc1.weight" in keys
    assert "body.0.shortcut_layer.0.weight" not in keys  # width-keeping units: a parameter-free strided identity
    assert sum(1 for k in keys if k.endswith("res_layer.5.fc2.weight")) == 24
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "model_ir_se50.pth")
    loaded = load_irse50(tmp_path / "model_ir_se50.pth")
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = IdentityLoss(loaded)
    with torch.no_grad():
        e = loss.embed(x)
        assert torch.allclose(e, IdentityLoss(net).embed(x)) and torch.allclose(e.norm(dim=1), torch.ones(2))
        assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-5)
    y = x.flip(-1).clone().requires_grad_()
    val = loss(y, x)
    assert (val > 1e-4).all()
    (g,) = torch.autograd.grad(val.sum(), y)
    assert g.abs().sum() > 0 and g[:, :, :35].abs().sum() == 0  # only the face crop matters
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsNotFoundError, match="not an IR-SE50"):
        load_irse50(tmp_path / "bad.pth")
    with pytest.raises(WeightsNotFoundError, match="id_weights=PATH"):
        load_irse50(tmp_path / "missing.pth")


def test_ffhq_backbone_adds_the_identity_loss_and_the_0_1_restart_threshold(tmp_path):
    from methods.diffuseit.arcface import IRSE50
    from methods.diffuseit.pipeline import _Context

    torch.manual_seed(0)
    torch.save(IRSE50().eval().state_dict(), tmp_path / "ir.pth")
    x, ref = photos(64)[:1], photos(64)[1:2]
    m = methods.create("diffuseit", preset="tiny", id_weights=str(tmp_path / "ir.pth"))
    plain = _Context(m.engine, m.config, x * 2 - 1, ref, None, None)
    assert plain.idloss is None and plain.restart_threshold == 0.01
    m.engine.backbone = "ffhq-256"  # the tiny UNet standing in for ffhq_10m.pt
    ctx = _Context(m.engine, m.config, x * 2 - 1, ref, None, None)
    assert ctx.idloss is not None and ctx.restart_threshold == 0.1
    i = ctx.steps[1]
    xt = ctx.diff.q_sample(x * 2 - 1, torch.full((1,), i), torch.randn(1, 3, 64, 64))
    with_id = ctx.guide(xt, i, [0], gens(1))[3]
    without = plain.guide(xt, i, [0], gens(1))[3]
    assert not torch.allclose(with_id, without)
    off = methods.create("diffuseit", preset="tiny", id_lambda=0)
    off.engine.backbone = "ffhq-256"
    assert _Context(off.engine, off.config, x * 2 - 1, ref, None, None).idloss is None
    m2 = methods.create("diffuseit", preset="tiny")
    m2.engine.backbone = "ffhq-256"
    with pytest.raises(WeightsNotFoundError, match="id_lambda=0"):
        _Context(m2.engine, m2.config, x * 2 - 1, ref, None, None)


# Produced by running DiffuseIT's own loss code, cyclomon/DiffuseIT 8386b9a, unmodified: model_vit/loss_vit.py
# Loss_vit (cfg dino_model_name "dino_vitb8", dino_global_patch_size 224; calculate_global_ssim_loss,
# calculate_contra_ssim_loss with contra_loss.py PatchLoss, calculate_dir_cls_loss, calculate_target_loss) over
# model_vit/extractor.py VitExtractor, whose torch.hub.load('facebookresearch/dino:main', ...) was answered with
# facebookresearch/dino 7c446df vision_transformer.VisionTransformer(patch 8, width 48, depth 12, 3 heads, mlp 2)
# holding the tiny DINO's weights (its hard-coded head count / width, 12 / 768, set to 3 / 48); and src/vqc_core.py
# CLIPS(["ViT-B/32"]) with its clip.load answered by the tiny open_clip model (the vendored CLIP's tokenizer), the
# target and loss lines of optimization/image_editor.py (tgt = (E_T - 0.4 E_S + 0.2 E_I0).normalize(); loss_prev on
# the source with ncuts=0; the guided loss with ncuts=8 after torch.manual_seed(11)). torch 2.14 / torchvision 0.29
# on CPU: every resize here upsamples 64 px to 224, where torchvision 0.10 and 0.29 agree (antialiasing only acts
# when downsampling). Inputs: skimage astronaut (source) and coffee (reference) at 64 px (PIL LANCZOS) in [-1, 1];
# output = source + 0.3 N(0, 1), prev = source + 0.2 N(0, 1) (one generator seeded 3, in that order), clamped.
# Recorded: each loss, the norm of its gradient w.r.t. the output, gradient[0, :, 30, 20:24], CLIP target[0, :6].
AUTHORS_LOSSES = {
    "ssim": {
        "loss": 0.032846119,
        "grad_norm": 0.0089490768,
        "grad": [5.1712883e-05, 6.8395559e-05, -5.6074573e-06, -1.0551354e-05, 9.9774319e-05, 0.00018887557,
               1.4032586e-05, -4.0139697e-05, 2.2682063e-05, 3.7986647e-05, 3.6826521e-05, -3.3238814e-07],
    },
    "contra": {
        "loss": 4.1072826,
        "grad_norm": 0.092788875,
        "grad": [-0.00063641166, -0.00086500309, 0.0010383563, 0.00067487627, -0.0014433224, -0.0034203043,
               -0.0033192905, -0.0038825609, -0.00095356506, -0.0012943684, -0.00085728616, -0.0003900108],
    },
    "dir_cls": {
        "loss": -9.2269975e-06,
        "grad_norm": 1.5923415e-05,
        "grad": [2.6385138e-07, 1.8534374e-07, 4.9751907e-08, 2.9766673e-07, -2.5229332e-07, -2.8716141e-07,
               -3.4482281e-07, -2.3312683e-07, 1.0013291e-07, -6.8596556e-08, 3.4747135e-08, 1.9386144e-08],
    },
    "trg": {
        "loss": 0.0018625133,
        "grad_norm": 0.00013799331,
        "grad": [-1.7539037e-06, -1.4874703e-06, -1.6058359e-06, -1.8934237e-06, 8.1904011e-07, 1.6832948e-06,
               4.8544905e-07, 6.4284825e-07, 1.3016064e-06, 1.8050605e-06, 2.1030255e-06, 1.343259e-06],
    },
    "clip": {
        "loss_prev": -0.039995097,
        "loss": -0.033202872,
        "grad_norm": 0.008996103,
        "grad": [1.9622476e-05, -3.2477623e-05, 1.5958112e-05, 2.532106e-05, -2.8246501e-05, 7.5481454e-05,
               -2.6250824e-05, -7.32603e-05, -3.5888039e-05, 2.9894814e-05, 8.4461448e-05, 4.1067175e-05],
        "tgt": [0.0032406622, 0.25770304, 0.15946163, 0.026992489, 0.18408912, -0.00014040875],
    },
}


@pytest.mark.slow
def test_dino_and_clip_losses_reproduce_the_authors_loss_code():
    """Our DINO losses (per sample, one batched pass) and the CLIP directional loss with the authors' view draws give
    the authors' loss values and gradients to float rounding (measured: losses rel <= 6e-6, gradient slices rel
    <= 3e-6, CLIP target rel 1e-7; see AUTHORS_LOSSES for how they were produced)."""
    import skimage.data as skd
    from PIL import Image

    from methods.diffuseit.losses import ClipDirection, DinoFeatures

    def load(a):
        img = Image.fromarray(a).resize((64, 64), Image.LANCZOS)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1

    src, ref = load(skd.astronaut()), load(skd.coffee())
    g = torch.Generator().manual_seed(3)
    out = (src + 0.3 * torch.randn(src.shape, generator=g)).clamp(-1, 1)
    prev = (src + 0.2 * torch.randn(src.shape, generator=g)).clamp(-1, 1)
    eng = methods.create("diffuseit", preset="tiny").engine
    dino = eng.dino(224)
    assert isinstance(dino, DinoFeatures)
    with torch.no_grad():
        k_src, s_src, _ = dino((src + 1) / 2)
        c_prev, c_ref = dino((prev + 1) / 2)[2], dino((ref + 1) / 2)[2]

    def check(name, loss, x):
        want = AUTHORS_LOSSES[name]
        assert loss.item() == pytest.approx(want["loss"], rel=5e-5), name
        assert x.grad.norm().item() == pytest.approx(want["grad_norm"], rel=5e-5), name
        w = torch.tensor(want["grad"])
        assert torch.allclose(x.grad[0, :, 30, 20:24].flatten(), w, rtol=1e-4, atol=1e-4 * w.abs().max()), name

    for name in ("ssim", "contra", "dir_cls", "trg"):
        x = out.clone().requires_grad_(True)
        keys, sim, cls = dino((x + 1) / 2)
        if name == "ssim":
            loss = ssim_loss(sim, s_src)
        elif name == "contra":
            loss = patch_nce_loss(keys, k_src)
        elif name == "dir_cls":  # the semantic divergence term: minus the MSE to the previous step's [CLS]
            loss = -cls_mse(cls, c_prev)
        else:
            loss = cls_mse(cls, c_ref)
        loss.sum().backward()
        check(name, loss, x)
    mid = "ViT-B-32/openai"
    ((views, text),) = eng.clip([mid])
    cd = ClipDirection([views], [eng.prompt_embedder(mid, text)], ["a photo of an astronaut"], ["a photo of a robot"],
                       (src + 1) / 2, lambda_src_text=0.4, lambda_src_image=0.2)
    want = AUTHORS_LOSSES["clip"]
    assert torch.allclose(cd.targets[0][0, :6], torch.tensor(want["tgt"]), atol=1e-6)
    assert cd.plain_loss((src + 1) / 2, [0]).item() == pytest.approx(want["loss_prev"], rel=5e-5)
    x = out.clone().requires_grad_(True)
    loss = cd.loss((x + 1) / 2, [cd.draw(8, torch.Generator().manual_seed(11), 64, 64)], [0])
    loss.sum().backward()
    check("clip", loss, x)
