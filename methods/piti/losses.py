"""The upsampler's extra losses in PITI: VGG19 perceptual loss and a WGAN-GP PatchGAN (imports torch).

As PITI computes them (`pretrained_diffusion/vgg.py`, `adv.py`, `gaussian_diffusion.py::training_losses`): for the
64->256 upsampler only, and only once the first 100 steps are done, the hybrid diffusion loss gets

    perceptual = 0.004 * mean_flat((VGG(x0hat.clamp(-1, 1)) - VGG(x0))^2)       VGG = vgg19.features[:8] (conv2_2,
                                                                                 before its ReLU), [0,1] + ImageNet
                                                                                 normalisation, target under no_grad
    adv        = 0.01 * mean_flat(-D(x0hat.clamp(-1, 1)))                       D = PatchGAN NLayerDiscriminator

where x0hat is predicted from the eps output at the sampled t (every t). D is trained with WGAN-GP,
`mean(D(fake) - D(real)) + 10 * (||grad D(interp)||_2 - 1)^2`, one Adam(lr 1e-5) step per generator step, before the
generator term is computed (upstream steps D inside the loss call).

Deviation (a fix): upstream's generator term backpropagates into D's parameters too (they are only cleared at
D's next zero_grad); here D is frozen while the generator term is computed, so no generator gradient is ever left
in it. The interpolation weights of the gradient penalty come from a seeded generator (upstream: global RNG).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base import InputError

PERCEPTUAL_WEIGHT = 0.004  # gaussian_diffusion.py training_losses: vgg(...) * 0.004
ADV_WEIGHT = 0.01  # gaussian_diffusion.py training_losses: adv(...) * 0.01
GP_WEIGHT = 10.0  # adv.py: 10 * (||grad|| - 1)^2
D_LR = 1e-5  # adv.py AdversarialLoss(lr_dis=1e-5), Adam default betas
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"  # torchvision VGG19_Weights.IMAGENET1K_V1
#: the tiny preset's VGG: the layer structure of vgg19.features[:8] at toy widths (conv1_x, conv2_x)
TINY_VGG_WIDTHS = (4, 8)
VGG_WIDTHS = (64, 128)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


# --- VGG perceptual loss ----------------------------------------------------------------------------------------------
def vgg19_head(widths: tuple[int, int] = VGG_WIDTHS) -> nn.Sequential:
    """torchvision's `vgg19().features[:8]` layer structure: conv-relu-conv-relu-pool-conv-relu-conv (conv2_2)."""
    a, b = widths
    return nn.Sequential(
        nn.Conv2d(3, a, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(a, a, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2), nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(b, b, 3, padding=1),
    )


@dataclass(frozen=True)
class VGGInfo:
    weights: str  # "real" | "random"
    source: str


def _torch_hub_vgg19() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_URL.rsplit("/", 1)[1]


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `features.0..7` tensors of a torchvision VGG19 state dict (or a features-only dict), keyed "0.weight"."""
    out = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    out = out or dict(state)
    return {k: v for k, v in out.items() if int(k.split(".", 1)[0]) < 8}


def load_vgg_head(preset: str = "paper", *, vgg_weights: str | Path | None = None, strict: bool = False
                  ) -> tuple[nn.Sequential, VGGInfo]:
    """vgg19.features[:8] with its ImageNet weights (PITI vgg.py: `models.vgg19(pretrained=True)`), frozen.

    Order: an explicit `vgg_weights` file (torchvision state dict, .pth or .safetensors); preset "tiny": a random
    head with toy widths (seed 0); else torchvision's VGG19 file in the torch hub cache; else (online) torchvision's
    download; else a random head (seed 0) with a warning, labelled weights="random" (`strict=True` raises instead).
    """
    from eval.encoders import is_offline, seeded_init

    if vgg_weights is not None:
        from ..common.loading import load_state_file

        path = Path(vgg_weights).expanduser()
        if not path.is_file():
            raise InputError(f"vgg_weights: {path} is not a file; pass torchvision's vgg19-dcbb9e9d.pth (or a "
                             "safetensors copy of its state dict)")
        head = vgg19_head()
        head.load_state_dict(_features_only(load_state_file(path)))
        info = VGGInfo("real", f"file {path}")
    elif preset == "tiny":
        head = seeded_init(0, lambda: vgg19_head(TINY_VGG_WIDTHS))
        info = VGGInfo("random", f"tiny preset: vgg19.features[:8] structure at widths {TINY_VGG_WIDTHS}, seed 0")
    else:
        cached = _torch_hub_vgg19()
        head, info, reason = None, None, ""
        if cached.is_file():
            head = vgg19_head()
            head.load_state_dict(_features_only(torch.load(str(cached), map_location="cpu", weights_only=True)))
            info = VGGInfo("real", f"torchvision VGG19_Weights.IMAGENET1K_V1 ({cached})")
        elif not is_offline():
            try:
                state = torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", progress=False,
                                                           weights_only=True)
                head = vgg19_head()
                head.load_state_dict(_features_only(state))
                info = VGGInfo("real", f"torchvision download {VGG19_URL}")
            except Exception as exc:  # network errors come in many types
                reason = f"download of {VGG19_URL} failed ({type(exc).__name__})"
        else:
            reason = f"offline and {cached} is not there"
        if head is None:
            msg = (f"piti perceptual loss: no VGG19 ImageNet weights ({reason}); put torchvision's {cached.name} in "
                   f"{cached.parent} or pass vgg_weights=<file>")
            if strict:
                raise InputError(msg)
            warnings.warn(msg + ". Training goes on with a RANDOM VGG (labelled weights='random').", stacklevel=2)
            head = seeded_init(0, vgg19_head)
            info = VGGInfo("random", "random init seed 0 (no VGG19 weights available)")
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head, info


class PerceptualLoss(nn.Module):
    """Per-sample MSE between VGG19 conv2_2 features of a prediction and a target, both in [-1, 1] (PITI vgg.py)."""

    def __init__(self, head: nn.Module, info: VGGInfo | None = None):
        super().__init__()
        self.head = head
        self.info = info
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(((x + 1) / 2 - self.mean) / self.std)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp = self.features(pred)
        with torch.no_grad():
            ft = self.features(target.detach())
        return mean_flat((fp - ft) ** 2)


# --- PatchGAN discriminator + WGAN-GP --------------------------------------------------------------------------------
class NLayerDiscriminator(nn.Module):
    """pix2pix's PatchGAN (PITI adv.py, `NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)`): 4x4 convs, stride 2
    for the first n_layers, InstanceNorm without affine (so the convs before it keep their bias), LeakyReLU 0.2, a
    1-channel patch map out."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1),
                       nn.InstanceNorm2d(ndf * mult, affine=False), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1),
                   nn.InstanceNorm2d(ndf * mult, affine=False), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def gradient_penalty(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """WGAN-GP term `mean((||grad_x D(x)||_2 - 1)^2)` at x = fake (1 - e) + real e, e ~ U(0, 1) per sample (adv.py;
    the norm over all of a sample's pixels and channels, D's output summed)."""
    e = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device="cpu").to(real.device, real.dtype)
    hat = (fake.detach() * (1 - e) + real.detach() * e).requires_grad_(True)
    grad = torch.autograd.grad(disc(hat).sum(), hat, create_graph=True)[0]
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP critic loss `mean(D(fake) - D(real)) + 10 * GP` (adv.py, gan_type 'WGAN_GP')."""
    fake = fake.detach()
    loss = (disc(fake) - disc(real)).mean()
    return loss + GP_WEIGHT * gradient_penalty(disc, real, fake, generator)


def generator_adversarial_loss(disc: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Per-sample `mean_flat(-D(fake))` with D frozen: the gradient reaches `fake` (and the diffusion model), none
    is left in D (upstream leaves it there until D's next zero_grad)."""
    flags = [(p, p.requires_grad) for p in disc.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        return mean_flat(-disc(fake))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AdversarialLoss(nn.Module):
    """PITI's `AdversarialLoss` (WGAN-GP, gan_k = 1): `forward(fake, real)` takes one critic step on the detached
    fake, then returns the per-sample generator term computed with the updated critic (frozen)."""

    def __init__(self, disc: nn.Module | None = None, lr: float = D_LR, gan_k: int = 1, seed: int = 0):
        super().__init__()
        self.disc = disc if disc is not None else NLayerDiscriminator()
        self.gan_k = int(gan_k)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_d_loss = float("nan")
        self.sync: Any = None  # called with the critic after its backward (multi-process gradient averaging)

    def critic_step(self, fake: torch.Tensor, real: torch.Tensor) -> float:
        for _ in range(self.gan_k):
            self.opt.zero_grad(set_to_none=True)
            loss = discriminator_loss(self.disc, real, fake, self.generator)
            loss.backward()
            if self.sync is not None:
                self.sync(self.disc)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.last_d_loss = float(loss.detach())
        return self.last_d_loss

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        self.critic_step(fake, real)
        return generator_adversarial_loss(self.disc, fake)

    # resume support: the critic, its optimizer and its RNG
    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "last_d_loss": self.last_d_loss}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.last_d_loss = float(state.get("last_d_loss", float("nan")))


def upsampler_extra_losses(x0hat: torch.Tensor, x0: torch.Tensor, *, perceptual: PerceptualLoss | None,
                           adversarial: AdversarialLoss | None) -> dict[str, torch.Tensor]:
    """The perceptual and adversarial terms (already weighted 0.004 / 0.01) of a predicted x0 (PITI
    `gaussian_diffusion.py::training_losses`); zero
    tensors for the terms that are off."""
    x0hat = x0hat.clamp(-1, 1)
    zero = torch.zeros(x0.shape[0], device=x0.device, dtype=x0hat.dtype)
    out = {"perceptual": zero, "adv": zero}
    if perceptual is not None:
        out["perceptual"] = perceptual(x0hat, x0) * PERCEPTUAL_WEIGHT
    if adversarial is not None:
        out["adv"] = adversarial(x0hat, x0) * ADV_WEIGHT
    return out


__all__ = ["AdversarialLoss", "NLayerDiscriminator", "PerceptualLoss", "discriminator_loss", "gradient_penalty",
           "generator_adversarial_loss", "load_vgg_head", "upsampler_extra_losses"]
