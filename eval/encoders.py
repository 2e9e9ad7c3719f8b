"""What every perceptual encoder shares: its provenance record, the preset names, the load-once cache, offline rules.

The encoders (Inception for FID, DINO keys, CLIP, LPIPS backbones) serve both the metrics and the guidance losses
of some methods, so each is loaded once per (encoder, options, preset, device) and reused. Each carries an
`EncoderInfo` saying which weights it runs on ("real" or "random"), where they came from and its input contract,
because numbers computed with random weights must be flagged in every table.

This module imports nothing heavy: `status()` and the registry can describe encoders without loading torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from eval.store import build_once, cache_dir

PRESETS = ("paper", "tiny", "full-random")
"""`paper`: the paper's architecture with its real weights when they can be had (asset cache, local file, hub, or
canonical download), otherwise the same architecture randomly initialised and labelled "random" (the FID Inception
has no random fallback: it raises). `tiny`: toy-size architectures, random init with a fixed seed, written once to
the cache in the on-disk layout of the real weights and loaded through the same code path (tests, CI, default run).
`full-random`: the paper's architecture at full size, always random (seed 0), built in memory and labelled "random"
(speed and memory at real scale without any download; numbers say nothing about quality)."""

WEIGHTS_LABELS = ("real", "random")

T = TypeVar("T")
_CACHE: dict[tuple, Any] = {}
_WARNED: set[tuple] = set()


@dataclass(frozen=True)
class EncoderInfo:
    """Provenance and input contract of a loaded encoder (what a report needs to say next to a number)."""

    encoder: str  # "inception" | "dino" | "clip" | "lpips"
    arch: str  # architecture id, e.g. "vit_base_patch8_224", "ViT-L-14", "alex"
    preset: str  # "paper" | "tiny"
    weights: str  # "real" | "random"
    source: str  # where the weights came from (hub id, PyPI package, file, "random init seed 0")
    file: str | None  # the weights file actually read, if any
    preprocessing: str  # the input contract: range, resize, normalisation

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> str:
        """A string that changes whenever the numbers this encoder produces could change (for cache keys)."""
        return f"{self.encoder}|{self.arch}|{self.preset}|{self.weights}|{self.source}|{self.preprocessing}"


def check_preset(preset: str) -> str:
    """Return `preset` if it is a known preset name, else raise naming the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    return preset


def assets_dir() -> Path:
    """Where converted real weights live (filled by `eval.assets.fetch()`): $I2I_ZOO_ASSETS or <cache>/assets.

    The override lets several caches (e.g. per-session test caches) share one fetched copy.
    """
    path = Path(os.environ["I2I_ZOO_ASSETS"]) if os.environ.get("I2I_ZOO_ASSETS") else cache_dir() / "assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tiny_dir(name: str, builder: Callable[[Path], None], label: str) -> Path:
    """The folder of the tiny / random-weight encoder `name`: generated once by `builder(folder)`, checked against
    the sha256 of its files on every use and rebuilt with a message when they were edited (`eval.store.build_once`)."""
    return build_once(cache_dir() / "tiny" / name, builder, label)


def is_offline() -> bool:
    """True when the user said not to try downloads (HF_HUB_OFFLINE or I2I_ZOO_OFFLINE set to a true value)."""
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "I2I_ZOO_OFFLINE"))
    return any(flag in {"1", "true", "yes", "on"} for flag in flags)


def hub_cached_file(repo_id: str, filenames: list[str]) -> Path | None:
    """The first of `filenames` present in the local Hugging Face cache for `repo_id` (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def cached_encoder(key: tuple, factory: Callable[[], T]) -> T:
    """Return the encoder stored under `key`, building it with `factory` the first time."""
    if key not in _CACHE:
        _CACHE[key] = factory()
    return _CACHE[key]


def loaded_encoders() -> list[EncoderInfo]:
    """Infos of the encoders loaded so far in this process."""
    return [enc.info for enc in _CACHE.values() if hasattr(enc, "info")]


def clear_encoder_cache() -> None:
    """Forget the loaded encoders (tests that change weights sources; freeing memory)."""
    _CACHE.clear()


def warn_random(info: EncoderInfo, reason: str) -> None:
    """Warn once per encoder that it runs on random weights, so nobody mistakes its numbers for real ones."""
    key = (info.encoder, info.arch, info.preset)
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"{info.encoder} ({info.arch}, preset={info.preset}) runs on RANDOM weights: {reason}. "
        "Its numbers are labelled weights='random'.",
        stacklevel=3,
    )


def seeded_init(seed: int, build: Callable[[], T]) -> T:
    """Run `build` (a random initialisation) under a fixed torch seed without touching the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def freeze(module: Any) -> Any:
    """Eval mode and no parameter gradients: encoders are fixed; gradients still flow to their inputs."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
