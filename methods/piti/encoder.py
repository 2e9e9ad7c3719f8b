"""PITI's task-specific encoder: condition image (256 px) -> 256 context tokens + one pooled token (PITI `Encoder`).

CNN (PITI `text2im_model.py` `CNN`): conv7x7 s1 -> c0, four conv3x3 s2 -> c1..c4 (256 -> 16 px), conv3x3 s1 -> c5;
every conv but the last is followed by InstanceNorm2d(affine=True) and LeakyReLU(0.2). Real widths
(32, 64, 128, 256, 512, 512). The 16 x 16 map is flattened into 256 tokens, the learned positional embedding
(slots 1..256) added, and the learned `cls_token` + positional slot 0 APPENDED at the end (257 tokens). Then a
pre-LN transformer (GLIDE `xf.py`: width 512, 8 layers, 8 heads, GELU MLP x4, bidirectional) and a final LayerNorm.
The last token is the pooled output (into the UNet's time embedding), the first 256 the attention context.

Module and parameter names are the official ones (`cnn.conv1..6`, `cnn.norm1..5`, `transformer.resblocks.N.{ln_1,
attn.c_qkv, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `final_ln`, `cls_token`, `positional_embedding`), and `c_qkv`
keeps GLIDE's per-head interleaved row order (heads, 3, d), so PITI's `encoder.*` tensors load as they are.

Fixed upstream bug: PITI creates `cls_token` and `positional_embedding` with `th.empty` and never initialises them
(whatever memory held); here every parameter is initialised explicitly (`init_weights`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .model import PITIConfig

#: The CNN's total stride: 256 px condition -> 16 x 16 tokens.
CNN_STRIDE = 16


class ConditionCNN(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"the PITI CNN has 6 convs; got {len(widths)} widths {widths}")
        c = [in_channels, *widths]
        self.conv1 = nn.Conv2d(c[0], c[1], 7, stride=1, padding=3)
        for i in range(2, 6):
            setattr(self, f"conv{i}", nn.Conv2d(c[i - 1], c[i], 3, stride=2, padding=1))
        self.conv6 = nn.Conv2d(c[5], c[6], 3, stride=1, padding=1)
        for i in range(1, 6):
            setattr(self, f"norm{i}", nn.InstanceNorm2d(c[i], affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = F.leaky_relu(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)), 0.2)
        return self.conv6(x)


class _SelfAttention(nn.Module):
    """GLIDE `xf.MultiheadAttention`: one c_qkv linear in per-head interleaved order (heads, 3, d), c_proj."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.c_qkv(x).view(b, n, self.heads, 3, w // self.heads)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # B x heads x N x d
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(b, n, w))


class _MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = _SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _MLP(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"encoder width {width} is not divisible by {heads} heads")
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class TaskEncoder(nn.Module):
    """`forward(cond) -> (pooled B x W, tokens B x L x W)`; cond is the B x cond_channels x 256 x 256 condition in
    [-1, 1] (the unconditional input of classifier-free guidance is all ones, as PITI's
    `glide_util.py` and `image_datasets_*.py` use it)."""

    def __init__(self, cfg: PITIConfig) -> None:
        super().__init__()
        self.config = cfg
        w = cfg.encoder_width
        if cfg.encoder_channels[-1] != w:
            raise ValueError(f"the CNN's last width {cfg.encoder_channels[-1]} must equal encoder_width {w}")
        if cfg.cond_size % CNN_STRIDE:
            raise ValueError(f"cond_size {cfg.cond_size} must be a multiple of {CNN_STRIDE}")
        self.num_tokens = (cfg.cond_size // CNN_STRIDE) ** 2
        self.transformer = Transformer(w, cfg.encoder_layers, cfg.encoder_heads)
        self.cnn = ConditionCNN(cfg.cond_channels, tuple(cfg.encoder_channels))
        self.final_ln = nn.LayerNorm(w)
        self.cls_token = nn.Parameter(torch.empty(1, 1, w))
        self.positional_embedding = nn.Parameter(torch.empty(1, self.num_tokens + 1, w))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Explicit init of every parameter (ours: upstream leaves cls_token / positional_embedding as torch.empty).
        Convs: kaiming-normal for LeakyReLU(0.2), zero bias; linears: N(0, 0.02), zero bias (GPT/CLIP-style
        transformer init); norms: 1 / 0; cls token N(0, 0.02); positional embedding N(0, 0.01) (CLIP)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_out", nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.InstanceNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if cond.ndim != 4 or cond.shape[1] != cfg.cond_channels or cond.shape[-1] != cfg.cond_size \
                or cond.shape[-2] != cfg.cond_size:
            raise ValueError(f"the encoder takes B x {cfg.cond_channels} x {cfg.cond_size} x {cfg.cond_size} "
                             f"conditions, got {tuple(cond.shape)}")
        x = self.cnn(cond).flatten(2).transpose(1, 2)  # B x 256 x W
        x = x + self.positional_embedding[:, 1:]
        cls = (self.cls_token + self.positional_embedding[:, :1]).expand(x.shape[0], -1, -1)
        x = self.final_ln(self.transformer(torch.cat([x, cls.to(x.dtype)], dim=1)))
        return x[:, -1], x[:, :-1]


def tokens_for(cond_size: int) -> int:
    return (cond_size // CNN_STRIDE) ** 2


__all__ = ["TaskEncoder", "ConditionCNN", "Transformer", "CNN_STRIDE", "tokens_for"]
