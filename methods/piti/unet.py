"""The GLIDE/PITI decoder UNet, assembled from diffusers blocks that compute exactly GLIDE's math.

Architecture (GLIDE `Text2ImUNet` as used by PITI `Text2ImModel.decoder`, `text2im_model.py`, `unet.py`): ADM UNet with
scale-shift norm and residual up/down-sampling blocks, self-attention at the configured resolutions in which the
image queries attend to the task encoder's 256 tokens AND the image positions (encoder k/v concatenated in front of
the image k/v), and the encoder's pooled token projected (`transformer_proj`, width -> 4 ch) and added to the
timestep embedding. The upsampler variant concatenates the bilinearly upsampled low-res image to x_t (6 channels in).

Which diffusers pieces match GLIDE exactly (each checked numerically against a minimal GLIDE reference written in
tests/test_piti.py):
- `ResnetBlock2D(time_embedding_norm="scale_shift", eps=1e-5, up/down)` == GLIDE `ResBlock(use_scale_shift_norm,
  up/down)`: GroupNorm32(32, eps 1e-5) -> SiLU -> [nearest x2 / avg-pool /2 of both paths] -> conv -> GN * (1 +
  scale) + shift -> SiLU -> dropout -> conv, 1x1 skip conv when the width changes.
- `Attention(added_kv_proj_dim=..., norm_num_groups=...)` + `AttnAddedKVProcessor2_0` == GLIDE `AttentionBlock`
  with `encoder_kv`: GroupNorm, q/k/v from the image, extra k/v from the encoder tokens concatenated IN FRONT,
  softmax(q k^T / sqrt(d)) (GLIDE scales q and k by d^-1/4 each: the same), output projection, residual.
  GLIDE stores q/k/v and the encoder k/v as one 1x1 conv each in the legacy per-head interleaved row order
  (heads, 3, d) / (heads, 2, d); `convert.py` splits them into to_q/to_k/to_v and add_k_proj/add_v_proj.
- `Timesteps(ch, flip_sin_to_cos=True, downscale_freq_shift=0)` + `TimestepEmbedding` == GLIDE's
  `timestep_embedding` (cos first, exponent / half) + `time_embed` (linear, SiLU, linear).

Module names follow diffusers (conv_in, down_blocks[i].resnet/.attn, mid_block, up_blocks[i].resnet/.attn/
.upsampler, conv_norm_out, conv_out); `convert.official_unet_key_map` maps them to GLIDE's
input_blocks/middle_block/output_blocks/out names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .model import PITIConfig

#: GLIDE's GroupNorm32 uses torch's default eps (glide_text2im/nn.py GroupNorm32(eps=1e-5)), not diffusers' 1e-6.
GROUP_NORM_EPS = 1e-5


def _resnet(cfg: PITIConfig, cin: int, cout: int, *, up: bool = False, down: bool = False) -> nn.Module:
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=4 * cfg.model_channels,
                         dropout=cfg.dropout, groups=cfg.norm_groups, eps=GROUP_NORM_EPS,
                         time_embedding_norm="scale_shift", non_linearity="swish", up=up, down=down)


def _attention(cfg: PITIConfig, ch: int) -> nn.Module:
    from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor2_0

    if ch % cfg.num_head_channels:
        raise ValueError(f"attention width {ch} is not a multiple of num_head_channels={cfg.num_head_channels}")
    return Attention(query_dim=ch, cross_attention_dim=ch, heads=ch // cfg.num_head_channels,
                     dim_head=cfg.num_head_channels, added_kv_proj_dim=cfg.encoder_width,
                     norm_num_groups=cfg.norm_groups, eps=GROUP_NORM_EPS, bias=True, out_bias=True,
                     upcast_softmax=True, only_cross_attention=False, processor=AttnAddedKVProcessor2_0())


class UNetBlock(nn.Module):
    """One GLIDE `TimestepEmbedSequential` of the UNet: a res block, optional joint attention, optional
    up-sampling res block (decoder side) -- or a lone down-sampling res block (encoder side)."""

    def __init__(self, resnet: nn.Module, attn: nn.Module | None = None, upsampler: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.resnet = resnet
        self.attn = attn
        self.upsampler = upsampler

    def forward(self, h: torch.Tensor, temb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.resnet(h, temb)
        if self.attn is not None:
            h = self.attn(h, encoder_hidden_states=tokens)
        if self.upsampler is not None:
            h = self.upsampler(h, temb)
        return h


class MidBlock(nn.Module):
    def __init__(self, cfg: PITIConfig, ch: int) -> None:
        super().__init__()
        self.resnet_1 = _resnet(cfg, ch, ch)
        self.attn = _attention(cfg, ch)
        self.resnet_2 = _resnet(cfg, ch, ch)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.resnet_1(h, temb)
        h = self.attn(h, encoder_hidden_states=tokens)
        return self.resnet_2(h, temb)


class GlideUNet(nn.Module):
    """The decoder: `forward(x_t, timesteps, pooled, tokens, low_res=None) -> B x out_channels x H x W`.

    `pooled` (B x W) is the encoder's appended token, `tokens` (B x L x W) its 256 context tokens; `timesteps` are
    the values fed to the network (ADM rescale_timesteps: the original 0..999 timestep, float). `low_res` (upsampler
    only) is the base model's 64 px output in [-1, 1], upsampled bilinearly here (SuperResText2ImModel.forward).
    """

    def __init__(self, cfg: PITIConfig) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.config = cfg
        ch = cfg.model_channels
        temb = 4 * ch
        self.time_proj = Timesteps(ch, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch, temb)
        self.transformer_proj = nn.Linear(cfg.encoder_width, temb)  # GLIDE/PITI name and role
        in_ch = cfg.in_channels * (2 if cfg.super_res else 1)
        self.conv_in = nn.Conv2d(in_ch, ch * cfg.channel_mult[0], 3, padding=1)
        attn_ds = cfg.attention_downsample_rates()

        skips = [ch * cfg.channel_mult[0]]
        cur = skips[0]
        ds = 1
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                self.down_blocks.append(UNetBlock(_resnet(cfg, cur, out),
                                                  _attention(cfg, out) if ds in attn_ds else None))
                cur = out
                skips.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down_blocks.append(UNetBlock(_resnet(cfg, cur, cur, down=True)))
                skips.append(cur)
                ds *= 2
        self.mid_block = MidBlock(cfg, cur)
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = ch * mult
                resnet = _resnet(cfg, cur + skips.pop(), out)
                cur = out
                attn = _attention(cfg, cur) if ds in attn_ds else None
                up = None
                if level and i == cfg.num_res_blocks:
                    up = _resnet(cfg, cur, cur, up=True)
                    ds //= 2
                self.up_blocks.append(UNetBlock(resnet, attn, up))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, cur, eps=GROUP_NORM_EPS)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)

    def zero_init_(self) -> GlideUNet:
        """Zero the layers GLIDE zero-initialises (`zero_module`: each res block's last conv, each attention's
        output projection, the output conv), so that a freshly built UNet starts as GLIDE's initialisation."""
        for m in self.modules():
            if hasattr(m, "conv2") and hasattr(m, "time_emb_proj"):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)
            if hasattr(m, "to_out") and hasattr(m, "add_k_proj"):
                nn.init.zeros_(m.to_out[0].weight)
                nn.init.zeros_(m.to_out[0].bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, pooled: torch.Tensor, tokens: torch.Tensor,
                low_res: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if cfg.super_res:
            if low_res is None:
                raise ValueError("the upsampler UNet needs low_res (the base model's output, B x 3 x h x w)")
            up = F.interpolate(low_res.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, up], dim=1)
        elif low_res is not None:
            raise ValueError("low_res is only taken by the upsampler (super_res) UNet")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        t_emb = self.time_proj(timesteps).to(dtype=x.dtype)
        temb = self.time_embedding(t_emb) + self.transformer_proj(pooled.to(x.dtype))
        tokens = tokens.to(x.dtype)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down_blocks:
            h = block(h, temb, tokens)
            hs.append(h)
        h = self.mid_block(h, temb, tokens)
        for block in self.up_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), temb, tokens)
        h = F.silu(self.conv_norm_out(h))
        return self.conv_out(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["GROUP_NORM_EPS", "GlideUNet", "MidBlock", "UNetBlock", "count_parameters"]
