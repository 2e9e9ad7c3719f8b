"""The identity loss DiffuseIT adds on its FFHQ backbone: an ArcFace IR-SE50 face embedding (Deng et al. 2019,
"ArcFace"; the IR-SE ResNet of TreB1eN/InsightFace_Pytorch, whose `model_ir_se50.pth` pSp and DiffuseIT load).

Network (the official file's key layout, so it loads as is): `input_layer` = conv3x3(3->64, no bias) -> BN -> PReLU;
`body` = 24 bottleneck units in four stages (64 x 3, 128 x 4, 256 x 14, 512 x 3; the first unit of each stage
strides 2), each unit res = BN -> conv3x3 -> PReLU -> conv3x3 (stride) -> BN -> squeeze-excitation (reduction 16,
no biases, ReLU, sigmoid) plus a shortcut (a strided identity when the width stays, else conv1x1 + BN);
`output_layer` = BN -> dropout -> flatten -> linear(512 * 7 * 7 -> 512) -> BN1d; the embedding is L2-normalised.

Loss (DiffuseIT id_loss.py IDLoss): both images in [-1, 1] at 256 px are cropped to rows 35:223, columns 32:220,
average-pooled to 112 x 112, embedded; loss = 1 - <e(x), e(source)> (the source's embedding detached), per sample.
DiffuseIT weights it by `id_lambda` (100) and raises the range-restart threshold to 0.1 on this backbone.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..base import WeightsNotFoundError

#: (width, units) per stage of IR-SE50.
STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))
#: The face crop id_loss.py takes from a 256 px image, then pools to 112 px.
FACE_CROP = (35, 223, 32, 220)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * w


class BottleneckIRSE(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # a width-keeping unit's shortcut is a strided identity (a 1x1 max pool upstream: no weights)
        self.shortcut_layer = (nn.Identity() if cin == cout else
                               nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), SqueezeExcite(cout))
        self.same_width = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x[..., ::self.stride, ::self.stride] if self.same_width else self.shortcut_layer(x)
        return self.res_layer(x) + short


class IRSE50(nn.Module):
    """ArcFace IR-SE50 on 112 x 112 inputs -> L2-normalised 512-d embeddings (eval mode: BN running statistics)."""

    def __init__(self, drop_ratio: float = 0.6, stages: tuple[tuple[int, int], ...] = STAGES) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, cin = [], 64
        for width, n in stages:
            units += [BottleneckIRSE(cin, width, 2)] + [BottleneckIRSE(width, width, 1) for _ in range(n - 1)]
            cin = width
        self.body = nn.Sequential(*units)
        side = 112 // 2 ** len(stages)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(cin * side * side, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def load_irse50(path: str | os.PathLike, device: Any = "cpu") -> IRSE50:
    """The official `model_ir_se50.pth` (a plain state dict; read with weights_only) as an eval-mode IRSE50."""
    from ..common.loading import load_state_file

    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"ArcFace weights not found at {path}: DiffuseIT's FFHQ identity loss needs model_ir_se50.pth (the pSp / "
            "DiffuseIT README link); pass its path as id_weights=PATH, or id_lambda=0 to run without the loss")
    state = {k.removeprefix("module."): v for k, v in load_state_file(path).items()}
    net = IRSE50()
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    bad = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or bad:
        raise WeightsNotFoundError(
            f"{path} is not an IR-SE50 ArcFace state dict ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad)} mis-shaped keys; e.g. {(missing + unexpected + bad)[:3]})")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval().requires_grad_(False)


class IdentityLoss(nn.Module):
    """Per-sample 1 - cos(e(x), e(source)) on [-1, 1] 256 px images (DiffuseIT id_loss.py)."""

    def __init__(self, net: IRSE50) -> None:
        super().__init__()
        self.net = net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = FACE_CROP
        return self.net(F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], (112, 112)))

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            e_src = self.embed(source)
        return 1 - (self.embed(x) * e_src).sum(dim=1)
