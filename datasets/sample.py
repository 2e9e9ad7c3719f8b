"""The data model: a Sample (one translation problem) and a Task (a dataset split + kind + prompts + metrics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


@dataclass
class Sample:
    """One translation problem. Images are RGB PIL images (already EXIF-rotated and converted by the loader).

    `image` is the input to translate; `condition` drives conditional methods (edge map, sketch, colour-coded
    semantic mask); `target` is the ground truth of paired tasks; `reference` is the style image of image-guided
    tasks; `mask` an optional region mask (L; for editing benchmarks 255 = the region to edit); `domain` the source
    domain ("A"/"B") of unpaired data.
    """

    id: str
    image: Image.Image
    src_prompt: str | None = None
    tgt_prompt: str | None = None
    condition: Image.Image | None = None
    target: Image.Image | None = None
    reference: Image.Image | None = None
    mask: Image.Image | None = None
    domain: str | None = None
    path: str | None = None  # where `image` was read from (provenance, error messages)
    edit_type: str | None = None  # the edit category of an editing benchmark (PIE-Bench's editing_type_id)


@dataclass(frozen=True)
class Task:
    """A benchmark task: which samples, which kind of translation, which metrics apply.

    `load(max_samples)` returns the samples (prepared to `resolution` when set); `reference_images()` returns
    the target-domain image paths a distribution metric (FID/KID) compares against, or an empty list.
    """

    name: str
    kind: str  # "unpaired" | "paired" | "text-edit" | "image-guided" | "mask-to-image" | "sketch-to-image"
    description: str
    loader: Callable[[], Sequence[Sample]] = field(repr=False, compare=False)
    metrics: tuple[str, ...] = ()
    direction: str = "a2b"
    resolution: int | None = None
    reference_loader: Callable[[], Sequence[str]] | None = field(default=None, repr=False, compare=False)
    dataset: str = ""
    split: str = "test"
    bundled: bool = False  # True: needs no download (the sample suite)

    def load(self, max_samples: int | None = None,
             on_error: Callable[[str, Exception], None] | None = None) -> list[Sample]:
        """The samples (at most `max_samples`). With `on_error`, a sample whose files cannot be read or prepared
        (any Exception: DataError, a decoder's ValueError or OSError, a RecursionError) is reported through
        `on_error(sample_id, error)` and skipped, so one broken file does not stop a run."""
        # Slice before materialising: the layout loaders return lazy sequences that read pixels on access.
        samples = self.loader()
        if max_samples:
            samples = samples[:max_samples]
        if on_error is None:
            return list(samples)
        ids = getattr(samples, "ids", None)
        out = []
        for i in range(len(samples)):
            try:
                out.append(samples[i])
            except Exception as err:  # noqa: BLE001 - one item's failure is recorded, the others go on
                on_error(ids[i] if ids else f"#{i}", err)
        return out

    def reference_images(self) -> list[str]:
        return list(self.reference_loader()) if self.reference_loader else []
