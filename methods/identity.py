"""`identity`: returns the input unchanged. The sanity floor of every metric (zero LPIPS to the input, the
structure distance of a perfect content keeper, the CLIP score of doing nothing)."""

from __future__ import annotations

from typing import Any, ClassVar

from .base import MethodCard, TranslationInput, TranslationOutput, Translator
from .registry import register


@register
class Identity(Translator):
    card: ClassVar[MethodCard] = MethodCard(
        name="identity",
        paper="Baseline: copy the input",
        year=0,
        url="",
        kinds=frozenset({"unpaired", "paired", "text-edit", "image-guided", "mask-to-image", "sketch-to-image"}),
        needs_training=False,
        weights={"paper": "none", "tiny": "none", "full-random": "none"},
        defaults={},
        license="MIT",
        reference=True,
    )

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.config = {}
        self.weights_id = "none"

    @classmethod
    def from_pretrained(cls, source=None, *, preset="paper", device="cpu", dtype=None, **overrides: Any) -> Identity:
        cls.resolve_config(preset, overrides)  # rejects unknown options like every method
        return cls(device=device)

    def translate(self, batch: TranslationInput, *, generator=None) -> TranslationOutput:
        self.check_input(batch)
        return TranslationOutput(images=batch.images.clone())
