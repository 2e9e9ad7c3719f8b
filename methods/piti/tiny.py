"""The tiny PITI preset: both condition kinds' base + upsampler pairs at toy width, written once to the cache.

Same pattern as `methods.common.tiny` (which holds the diffusers presets): built into a temporary directory next to
the destination, marked `.complete`, renamed atomically (concurrent builders are safe), then loaded through the
same `PITIModel.from_pretrained` path as converted official weights. Layout:
`<cache>/tiny/piti-v<TINY_VERSION>/{mask,sketch}/{base,upsample}/{config.json, model.safetensors}`.
Bump TINY_VERSION whenever the builder or the presets change (it is part of every cache key).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

TINY_NAME = "piti"
TINY_VERSION = 1
SEED = 0
TINY_KINDS = ("mask", "sketch")


def tiny_dir() -> Path:
    from eval.store import cache_dir

    return cache_dir() / "tiny" / f"{TINY_NAME}-v{TINY_VERSION}"


def _build(dest: Path) -> None:
    from .model import PITIConfig, build_model

    for k, kind in enumerate(TINY_KINDS):
        for r, role in enumerate(("base", "upsample")):
            cfg = PITIConfig.preset(f"tiny-{role}", cond_kind=kind)
            model = build_model(cfg, seed=SEED + 10 * k + r)
            model.save_pretrained(dest / kind / role, meta={"origin": f"tiny:{TINY_NAME} v{TINY_VERSION} (random "
                                                                      f"init, seed {SEED + 10 * k + r})"})


@cache
def build_tiny() -> Path:
    """The tiny preset's directory, built on first use."""
    from eval.store import build_once

    return build_once(tiny_dir(), _build, f"tiny preset {TINY_NAME} v{TINY_VERSION}, seed {SEED}")


__all__ = ["SEED", "TINY_KINDS", "TINY_NAME", "TINY_VERSION", "build_tiny", "tiny_dir"]
