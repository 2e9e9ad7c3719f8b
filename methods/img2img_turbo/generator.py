"""The one-step generator of img2img-turbo, built from diffusers modules (imports torch: load lazily).

Authors' code GaParmar/img2img-turbo
(`src/model.py`, `src/pix2pix_turbo.py`, `src/cyclegan_turbo.py`).

    x --VAE encoder (+ the input activation of each down block)--> z = posterior sample * scaling_factor
      --UNet(z, t=999, text)--> eps --one DDPM step from t=999--> z0
      --VAE decoder (skip_i(act_i * gamma) added before up block i, deepest first)--> y, clamped to [-1, 1]

The authors monkey-patch `vae.encoder.forward` / `vae.decoder.forward` and hang the skip convs and the skip
activations on the library objects (`incoming_skip_acts`, `gamma`, `ignore_skip` as mutable attributes). Here the
encoder and decoder are replaced by modules of our own (`SkipEncoder`, `SkipDecoder`) that adopt the pretrained
blocks under the same attribute names, so state-dict keys equal the authors' (`encoder.down_blocks...`,
`decoder.skip_conv_1...`) and PEFT's name matching targets the same layers; the skip activations and gamma are
call arguments instead of object state (nothing to reset after a stochastic call).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

# --- LoRA targets -----------------------------------------------------------------------------------------------
#: pix2pix_turbo.py, fresh model: `target_modules_unet` (adapter "default", r = --lora_rank_unet 8, PEFT alpha 8).
UNET_TARGETS_PAIRED = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                       "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj")
#: pix2pix_turbo.py `target_modules_vae` / cyclegan_turbo.py `l_vae_target_modules` (adapter "vae_skip", r 4,
#: PEFT's default alpha 8). LoRA is put on the skip convs too.
VAE_TARGETS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "skip_conv_1", "skip_conv_2",
               "skip_conv_3", "skip_conv_4", "to_k", "to_q", "to_v", "to_out.0")
#: cyclegan_turbo.py `initialize_unet`: `l_grep`, substring-matched against weight names (bias/norm skipped).
UNET_GREP_UNPAIRED = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                      "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj")
UNPAIRED_ADAPTERS = ("default_encoder", "default_decoder", "default_others")
PAIRED_UNET_ADAPTER = "default"
VAE_ADAPTER = "vae_skip"
SKIP_INIT = 1e-5  # torch.nn.init.constant_(skip_conv_i.weight, 1e-5) (pix2pix_turbo.py, cyclegan_turbo.py)
PEFT_DEFAULT_ALPHA = 8  # LoraConfig.lora_alpha default (peft >= 0.6; read in peft 0.21.2 lora/config.py)


# --- VAE with skip connections ----------------------------------------------------------------------------------
class SkipEncoder(nn.Module):
    """A diffusers VAE `Encoder` that also returns the input activation of each down block (`my_vae_encoder_fwd`).

    The activations are: the output of `conv_in` and the outputs of down blocks 0 .. n-2.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        for name in ("conv_in", "down_blocks", "mid_block", "conv_norm_out", "conv_act", "conv_out"):
            setattr(self, name, getattr(encoder, name))
        self.gradient_checkpointing = False  # diffusers' enable_gradient_checkpointing() flips this

    def _run(self, block: nn.Module, *args: Any) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def forward(self, sample: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sample = self.conv_in(sample)
        skips = []
        for block in self.down_blocks:
            skips.append(sample)
            sample = self._run(block, sample)
        sample = self._run(self.mid_block, sample)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return sample, skips


class SkipDecoder(nn.Module):
    """A diffusers VAE `Decoder` with the img2img-turbo skip convs (`my_vae_decoder_fwd`).

    Before up block i the decoder adds `skip_conv_{i+1}(skips[::-1][i] * gamma)` (1x1, no bias): deepest encoder
    activation first. SD's VAE gives 512->512, 256->512, 128->512, 128->256; the channel counts are
    read from the blocks, so smaller VAEs (the tiny preset) work the same way.
    """

    def __init__(self, decoder: nn.Module, skip_channels: Sequence[int]):
        super().__init__()
        for name in ("conv_in", "up_blocks", "mid_block", "conv_norm_out", "conv_act", "conv_out"):
            setattr(self, name, getattr(decoder, name))
        src = list(reversed(skip_channels))
        if len(src) != len(self.up_blocks):
            raise ValueError(f"{len(src)} encoder activations for {len(self.up_blocks)} decoder up blocks")
        dtype = self.conv_in.weight.dtype
        for i, block in enumerate(self.up_blocks):
            conv = nn.Conv2d(src[i], block.resnets[0].in_channels, kernel_size=1, stride=1, bias=False)
            nn.init.constant_(conv.weight, SKIP_INIT)
            self.add_module(f"skip_conv_{i + 1}", conv.to(device=self.conv_in.weight.device, dtype=dtype))
        self.gradient_checkpointing = False

    @property
    def skip_convs(self) -> list[nn.Module]:
        return [getattr(self, f"skip_conv_{i + 1}") for i in range(len(self.up_blocks))]

    def _run(self, block: nn.Module, *args: Any) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def forward(self, sample: torch.Tensor, skips: Sequence[torch.Tensor] | None = None,
                gamma: float = 1.0) -> torch.Tensor:
        """`skips=None` is the authors' `ignore_skip=True` (the plain VAE decoder)."""
        sample = self.conv_in(sample)
        upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self._run(self.mid_block, sample, None).to(upscale_dtype)
        rev = list(skips)[::-1] if skips is not None else None
        for i, block in enumerate(self.up_blocks):
            if rev is not None:
                sample = sample + self.skip_convs[i](rev[i] * gamma)
            sample = self._run(block, sample, None)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


def install_skips(vae: nn.Module) -> nn.Module:
    """Replace `vae.encoder` / `vae.decoder` by the skip-connected modules (in place; returns the VAE).

    The skip convs start at 1e-5 (the authors' "zero-conv" init): at init the output stays within ~1e-3 of the
    plain VAE round trip (tests/test_img2img_turbo.py measures it).
    """
    if isinstance(vae.encoder, SkipEncoder):
        return vae
    channels = [block.resnets[0].in_channels for block in vae.encoder.down_blocks]
    vae.encoder = SkipEncoder(vae.encoder)
    vae.decoder = SkipDecoder(vae.decoder, channels)
    return vae


class TwinConv(nn.Module):
    """The stochastic model's UNet `conv_in` (pix2pix_turbo.py `TwinConv`): the pretrained conv (detached) blended
    with the trained one, `pre(x).detach() * (1 - r) + curr(x) * r`. r=None (deterministic mode) runs `curr` only
    (the authors' code would fail on None there)."""

    def __init__(self, pretrained: nn.Conv2d, current: nn.Conv2d):
        super().__init__()
        self.conv_in_pretrained = copy.deepcopy(pretrained).requires_grad_(False)
        self.conv_in_curr = current
        self.r: float | None = None

    # UNet2DConditionModel reads these from its conv_in in a few code paths
    @property
    def in_channels(self) -> int:
        return self.conv_in_curr.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv_in_curr.out_channels

    @property
    def weight(self) -> torch.Tensor:
        return self.conv_in_curr.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r is None:
            return self.conv_in_curr(x)
        return self.conv_in_pretrained(x).detach() * (1 - self.r) + self.conv_in_curr(x) * self.r


# --- LoRA -------------------------------------------------------------------------------------------------------
def lora_config(rank: int, targets: Sequence[str], alpha: int | None = None) -> Any:
    from peft import LoraConfig

    kw = {} if alpha is None else {"lora_alpha": alpha}
    return LoraConfig(r=int(rank), init_lora_weights="gaussian", target_modules=list(targets), **kw)


def unpaired_unet_targets(unet: nn.Module) -> dict[str, list[str]]:
    """cyclegan_turbo.py `initialize_unet`: weight names (minus `.weight`, bias/norm skipped) holding a `l_grep`
    pattern, split into down blocks + conv_in ("default_encoder"), up blocks ("default_decoder") and the rest."""
    out: dict[str, list[str]] = {name: [] for name in UNPAIRED_ADAPTERS}
    for n, _ in unet.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in UNET_GREP_UNPAIRED:
            if pattern in n:
                key = ("default_encoder" if ("down_blocks" in n or "conv_in" in n) else
                       "default_decoder" if "up_blocks" in n else "default_others")
                out[key].append(n.replace(".weight", ""))
                break
    return out


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch seed without disturbing the caller's RNG (deterministic LoRA init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- scheduler ---------------------------------------------------------------------------------------------------
class OneStepScheduler:
    """`make_1step_sched()`: the snapshot's scheduler config read as a `DDPMScheduler`, one step from t = T-1.

    At t=999 the previous timestep is -1, so alpha_prev = 1 and the step returns the predicted x0. We
    compute that x0 in closed form, honouring the config's prediction type and `clip_sample`, and drop the DDPM
    variance term, whose std at this step is clamp(0, 1e-20) ** 0.5 = 1e-10: a deliberate deviation that makes the
    output deterministic (upstream draws that negligible noise from the global RNG).
    """

    def __init__(self, scheduler: Any):
        cfg = scheduler.config
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.timestep = self.num_train_timesteps - 1  # `torch.tensor([999])` / `num_train_timesteps - 1`
        alphas_cumprod = scheduler.alphas_cumprod.double()
        self.alpha_prod = float(alphas_cumprod[self.timestep])
        self.prediction_type = cfg.prediction_type
        self.clip_sample = bool(getattr(cfg, "clip_sample", False))
        self.clip_range = float(getattr(cfg, "clip_sample_range", 1.0))
        if getattr(cfg, "thresholding", False):
            raise NotImplementedError("dynamic thresholding is not used by SD-Turbo's scheduler config")

    @classmethod
    def from_snapshot(cls, path: Any) -> OneStepScheduler:
        """`DDPMScheduler.from_pretrained(path, subfolder="scheduler")`. SD-Turbo's file says clip_sample: false;
        a file that does not say (the tiny preset's Euler config) gets False too, as diffusers' SD pipelines force
        it, instead of DDPMScheduler's class default True, which would clamp the latent x0 to [-1, 1]."""
        import json
        from pathlib import Path

        from diffusers import DDPMScheduler

        sched = cls(DDPMScheduler.from_pretrained(path, subfolder="scheduler"))
        raw = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
        if "clip_sample" not in raw:
            sched.clip_sample = False
        return sched

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        a = self.alpha_prod
        out, x = model_output.float(), sample.float()
        if self.prediction_type == "epsilon":
            x0 = (x - math.sqrt(1 - a) * out) / math.sqrt(a)
        elif self.prediction_type == "v_prediction":
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
        elif self.prediction_type == "sample":
            x0 = out
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0.to(model_output.dtype)  # the fp16 fix of the authors (cast after sched.step)


# --- text --------------------------------------------------------------------------------------------------------
class PromptEncoder:
    """Tokenizer + frozen CLIP text encoder with a cache: the fixed prompts are encoded once, not per call."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, max_cache: int = 64):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_cache = max_cache
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """B x 77 x D hidden states (`text_encoder(tokens)[0]`, padding to model_max_length as the authors do)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            ids = self.tokenizer(missing, max_length=self.tokenizer.model_max_length, padding="max_length",
                                 truncation=True, return_tensors="pt").input_ids
            with torch.no_grad():
                emb = self.text_encoder(ids.to(self.text_encoder.device))[0]
            if len(self._cache) + len(missing) > self.max_cache:
                self._cache.clear()
            for p, e in zip(missing, emb):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])

    def clear(self) -> None:
        self._cache.clear()


# --- the generator ------------------------------------------------------------------------------------------------
class TurboGenerator(nn.Module):
    """UNet + one (paired) or two (unpaired: `vae` for a2b, `vae_b2a`) skip-connected VAEs + the 1-step scheduler.

    Module names mirror the authors' objects: `unet`, `vae`, `vae_b2a` (their `VAE_encode.vae` / `.vae_b2a`).
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, scheduler: OneStepScheduler, vae_b2a: nn.Module | None = None):
        super().__init__()
        self.unet = unet
        self.vae = vae
        if vae_b2a is not None:
            self.vae_b2a = vae_b2a
        self.scheduler = scheduler
        self.scaling_factor = float(vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def directions(self) -> tuple[str, ...]:
        return ("a2b", "b2a") if hasattr(self, "vae_b2a") else ("a2b",)

    def vae_for(self, direction: str) -> nn.Module:
        if direction == "b2a":
            if not hasattr(self, "vae_b2a"):
                raise ValueError("this generator has one VAE (paired model): direction must be 'a2b'")
            return self.vae_b2a
        return self.vae

    def encode(self, x: torch.Tensor, direction: str = "a2b", generator: Any = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`vae.encode(x).latent_dist.sample() * scaling_factor` (upstream samples the posterior) + skip acts."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        vae = self.vae_for(direction)
        h, skips = vae.encoder(x)
        if vae.quant_conv is not None:
            h = vae.quant_conv(h)
        z = DiagonalGaussianDistribution(h).sample(generator=generator)
        return z * self.scaling_factor, skips

    def decode(self, z0: torch.Tensor, skips: Sequence[torch.Tensor] | None, direction: str = "a2b",
               gamma: float = 1.0) -> torch.Tensor:
        vae = self.vae_for(direction)
        z = z0 / self.scaling_factor
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return vae.decoder(z, skips, gamma).clamp(-1, 1)

    def timesteps(self, batch: int, device: Any) -> torch.Tensor:
        return torch.full((batch,), self.scheduler.timestep, device=device, dtype=torch.long)

    def denoise(self, z_in: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        eps = self.unet(z_in, self.timesteps(z_in.shape[0], z_in.device), encoder_hidden_states=text_emb).sample
        return self.scheduler.step(eps, z_in)

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor, direction: str = "a2b", generator: Any = None,
                r: float | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x in the model's input range (paired: [0, 1]; unpaired: [-1, 1]) -> y in [-1, 1].

        With `r` (stochastic sketch mode, pix2pix_turbo.py `deterministic=False`) the UNet input is
        `z * r + noise * (1 - r)` and the skips are scaled by gamma = r; the LoRA/conv_in scaling is set by
        `stochastic(r)` around this call.
        """
        z, skips = self.encode(x, direction, generator)
        z_in = z if r is None else z * r + noise.to(z.dtype) * (1 - r)
        z0 = self.denoise(z_in, text_emb)
        return self.decode(z0, skips, direction, gamma=1.0 if r is None else r)

    @contextlib.contextmanager
    def stochastic(self, r: float) -> Iterator[None]:
        """Scale the UNet LoRA and the VAE LoRA by r and blend conv_in with r (pix2pix_turbo.py forward,
        deterministic=False); everything is restored afterwards, also on error (upstream leaves gamma and the
        adapter weights at r, so a later deterministic call silently ran with them: an upstream quirk)."""
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        conv_in = self.unet.conv_in
        if not isinstance(conv_in, TwinConv):
            raise ValueError("stochastic mode needs the TwinConv conv_in of a pix2pix-turbo generator")
        try:
            self.unet.set_adapters([PAIRED_UNET_ADAPTER], weights=[r])
            set_weights_and_activate_adapters(self.vae, [VAE_ADAPTER], [r])
            conv_in.r = r
            yield
        finally:
            conv_in.r = None
            self.unet.set_adapters([PAIRED_UNET_ADAPTER], weights=[1.0])
            set_weights_and_activate_adapters(self.vae, [VAE_ADAPTER], [1.0])


# --- building -------------------------------------------------------------------------------------------------------
def add_vae_lora(vae: nn.Module, rank: int, targets: Sequence[str] = VAE_TARGETS, alpha: int | None = None) -> None:
    vae.add_adapter(lora_config(rank, targets, alpha), adapter_name=VAE_ADAPTER)


def build_paired(comps: Any, *, rank_unet: int = 8, rank_vae: int = 4, unet_targets: Sequence[str] =
                 UNET_TARGETS_PAIRED, vae_targets: Sequence[str] = VAE_TARGETS, unet_alpha: int | None = None,
                 vae_alpha: int | None = None, seed: int = 0) -> TurboGenerator:
    """pix2pix-turbo on SD components: skip convs (1e-5), VAE LoRA "vae_skip", TwinConv conv_in, UNet LoRA
    "default" (pix2pix_turbo.py, fresh-model branch + the stochastic model's TwinConv). Gaussian LoRA init under
    a fixed seed (B = 0, so LoRA starts as the identity)."""
    with seeded(seed):
        vae = install_skips(comps.vae)
        add_vae_lora(vae, rank_vae, vae_targets, vae_alpha)
        unet = comps.unet
        unet.conv_in = TwinConv(unet.conv_in, unet.conv_in)
        unet.add_adapter(lora_config(rank_unet, unet_targets, unet_alpha), adapter_name=PAIRED_UNET_ADAPTER)
    gen = TurboGenerator(unet, vae, OneStepScheduler.from_snapshot(comps.path))
    gen.requires_grad_(False).eval()
    return gen


def build_unpaired(comps: Any, *, rank_unet: int = 128, rank_vae: int = 4,
                   unet_targets: dict[str, Sequence[str]] | None = None, vae_targets: Sequence[str] = VAE_TARGETS,
                   vae_alpha: int | None = None, seed: int = 0) -> TurboGenerator:
    """CycleGAN-Turbo: UNet LoRA in three adapters (r = alpha = rank), shared by both directions; one VAE with
    skips + LoRA, deep-copied for b->a (cyclegan_turbo.py `initialize_unet`, `initialize_vae`)."""
    unet = comps.unet
    targets = unet_targets or unpaired_unet_targets(unet)
    with seeded(seed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # three adapters, on purpose
        for name in UNPAIRED_ADAPTERS:
            unet.add_adapter(lora_config(rank_unet, targets[name], alpha=rank_unet), adapter_name=name)
        unet.set_adapters(list(UNPAIRED_ADAPTERS))
        vae = install_skips(comps.vae)
        add_vae_lora(vae, rank_vae, vae_targets, vae_alpha)
    vae_b2a = copy.deepcopy(vae)
    gen = TurboGenerator(unet, vae, OneStepScheduler.from_snapshot(comps.path), vae_b2a=vae_b2a)
    gen.requires_grad_(False).eval()
    return gen


def is_trainable_name(name: str) -> bool:
    """Parameters that train (and that a checkpoint stores): UNet LoRA and conv_in (full), VAE LoRA, skip convs
    (full). Paired: `set_train` + the optimizer list of train_pix2pix_turbo.py; unpaired: `get_traininable_params`.
    The stochastic model's frozen pretrained conv_in copy is stored too (the official sketch checkpoint has it).

    Deliberate deviation (unpaired): upstream lists the skip-conv base weights in the optimizer, but PEFT's
    `add_adapter` had already set requires_grad=False on every non-LoRA weight, so they probably never trained
    (read from the code, not run). We train them, as the optimizer list (and the paired model) intends.
    """
    return ("lora_" in name or name.startswith("unet.conv_in.") or ".skip_conv_" in name)


def set_trainable(gen: TurboGenerator) -> list[nn.Parameter]:
    """requires_grad on the trainable parameters (see `is_trainable_name`); returns them, deduplicated (upstream's
    unpaired list holds conv_in's LoRA twice)."""
    gen.requires_grad_(False)
    params = []
    for name, p in gen.named_parameters():
        if is_trainable_name(name) and "conv_in_pretrained" not in name:
            p.requires_grad_(True)
            params.append(p)
    return params


def trainable_state_dict(gen: TurboGenerator) -> dict[str, torch.Tensor]:
    return {k: v for k, v in gen.state_dict().items() if is_trainable_name(k)}
