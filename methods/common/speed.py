"""Speed options a GPU user expects, all off by default, applied to a loaded method's networks in place.

They change how the networks run, not the algorithm; each can move the output by float rounding (the tests and
`benchmark.py gpucheck` record the max abs difference from the default):

- `channels_last`: NHWC memory format for every network (faster convolutions on tensor-core GPUs).
- `attention`: "sdpa" (diffusers' `AttnProcessor2_0`, torch's scaled_dot_product_attention: flash / memory-efficient
  kernels on CUDA; the default of recent diffusers) or "classic" (`AttnProcessor`: explicit softmax(QK^T)V). Only
  applied to networks whose processors are diffusers' defaults: methods that install their own processors (pix2pix-
  zero's cross-attention capture) keep them, and the report says so.
- `compile`: `torch.compile` of the denoiser (the network named "unet"), in place (`nn.Module.compile`); the first
  call compiles (tens of seconds to minutes).
- `vae_fp16_fallback`: the SD 1.x VAE overflows in float16 on some inputs (diffusers sets `force_upcast` in its
  config and upcasts the VAE for decoding). With this option the decoder runs in the run's half dtype and, only
  when its output holds NaN/inf, reruns that call in float32 (diffusers' `upcast_vae` fallback, per call).
- `cpu_offload`: accelerate's `cpu_offload_with_hook` chain over the networks (diffusers'
  `enable_model_cpu_offload`): each network lives on the CPU and moves to the device for its forward call, the
  previous one going back; for GPUs too small for all of a method's networks at once.
"""

from __future__ import annotations

from typing import Any

ATTENTION = ("sdpa", "classic")
SPEED_OPTIONS = ("channels_last", "attention", "compile", "vae_fp16_fallback", "cpu_offload")


def _modules(translator: Any) -> dict[str, Any]:
    import torch

    return {k: m for k, m in translator.networks().items() if isinstance(m, torch.nn.Module)}


def apply_speed_options(translator: Any, *, channels_last: bool = False, attention: str | None = None,
                        compile: bool = False, vae_fp16_fallback: bool = False, cpu_offload: bool = False,
                        device: Any = None) -> dict[str, str]:
    """Apply the chosen options to `translator`'s networks (`Translator.networks()`); returns option -> what was
    done (or why it was not), for the run's record."""
    import torch

    from ..base import InputError

    done: dict[str, str] = {}
    nets = _modules(translator)
    if channels_last:
        for m in nets.values():
            m.to(memory_format=torch.channels_last)
        done["channels_last"] = f"{len(nets)} networks"
    if attention is not None:
        if attention not in ATTENTION:
            raise InputError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        done["attention"] = set_attention(nets, attention)
    if vae_fp16_fallback:
        dec = [(k, m) for k, m in nets.items() if k.endswith("decoder") and "vae" in k]
        for _k, m in dec:
            _install_fp16_fallback(m)
        done["vae_fp16_fallback"] = ", ".join(k for k, _ in dec) or "no VAE decoder"
    if cpu_offload:
        done["cpu_offload"] = _cpu_offload(nets, device if device is not None else getattr(translator, "device",
                                                                                            "cpu"))
    if compile:
        unet = nets.get("unet")
        if unet is None:
            done["compile"] = "no network named unet"
        else:
            unet.compile()
            done["compile"] = "unet (torch.compile, default mode)"
    return done


def set_attention(nets: dict[str, Any], kind: str) -> str:
    """Set diffusers' default processor of `kind` on every network whose processors are all diffusers' defaults."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    applied, kept = [], []
    for name, m in nets.items():
        procs = getattr(m, "attn_processors", None)
        if not procs or not hasattr(m, "set_attn_processor"):
            continue
        if all(type(p) in (AttnProcessor, AttnProcessor2_0) for p in procs.values()):
            m.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())
            applied.append(name)
        else:
            kept.append(name)
    out = f"{kind} on {', '.join(applied) or 'none'}"
    return out + (f"; kept the method's own processors on {', '.join(kept)}" if kept else "")


def _install_fp16_fallback(decoder: Any) -> None:
    import torch

    if getattr(decoder, "_fp16_fallback", False):
        return
    orig = decoder.forward

    def forward(z: Any, *args: Any, **kw: Any) -> Any:
        out = orig(z, *args, **kw)
        half = next(decoder.parameters()).dtype in (torch.float16, torch.bfloat16)
        if half and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
            dtype = next(decoder.parameters()).dtype
            decoder.to(torch.float32)
            try:
                out = orig(z.float(), *args, **kw).to(dtype)
            finally:
                decoder.to(dtype)
        return out

    decoder.forward = forward
    decoder._fp16_fallback = True


def _cpu_offload(nets: dict[str, Any], device: Any) -> str:
    from accelerate import cpu_offload_with_hook

    hook, seen, names = None, set(), []
    for name, m in nets.items():
        params = {id(p) for p in m.parameters()}
        if not params or params & seen:  # a pseudo-module over another network's weights (a backward pass)
            continue
        seen |= params
        _, hook = cpu_offload_with_hook(m, execution_device=device, prev_module_hook=hook)
        names.append(name)
    return f"{', '.join(names)} (accelerate cpu_offload_with_hook chain)"


__all__ = ["ATTENTION", "SPEED_OPTIONS", "apply_speed_options", "set_attention"]
