"""The project's shared words, defined once: task kinds, metric names, image file extensions, and where a
method's weights come from. `methods`, `datasets`, `eval` and `reports` all import these (this module imports
nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: What a task asks of a method (a MethodCard lists the kinds it can run; a Task has one).
KINDS = ("unpaired", "paired", "text-edit", "image-guided", "mask-to-image", "sketch-to-image")

#: The registered metrics' names, in table order.
METRICS = ("fid", "kid", "dino_struct", "dino_struct_v2", "clip_score", "clip_directional", "clip_accuracy", "lpips",
           "psnr", "ssim", "dino_struct_pie", "bg_psnr", "bg_lpips", "bg_mse", "bg_ssim", "clip_edited")

#: clean-fid 0.1.35's folder discovery (cleanfid/utils.py EXTENSIONS), matched case-sensitively by glob: `x.PNG`
#: counts, `x.Png` / `x.BMP` do not. `.npy` files are H x W x 3 uint8 arrays that clean-fid reads as images.
CLEAN_FID_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp", "npy", "JPEG", "JPG", "PNG")
#: Image files the dataset loaders read: clean-fid's image types, matched case-insensitively (no .npy arrays).
IMAGE_EXTENSIONS = tuple(sorted({"." + e.lower() for e in CLEAN_FID_EXTENSIONS} - {".npy"}))

#: Formats a run can write its figures in. PNG is always among them: the report pages show the PNGs; PDF (vector,
#: for papers) is written on request.
FIGURE_FORMATS = ("png", "pdf")
DEFAULT_FIGURE_FORMATS = ("png",)


def parse_figure_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"png,pdf"` or `["png", "pdf"]` -> ("png", "pdf") (lower case, duplicates dropped); None -> the default.
    Raises ValueError naming the fix for an unknown format or a list without PNG."""
    if value is None:
        return DEFAULT_FIGURE_FORMATS
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    formats = tuple(dict.fromkeys(v.strip().lower().lstrip(".") for v in items if v.strip()))
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise ValueError(f"unknown figure format(s) {', '.join(unknown)}; known: {', '.join(FIGURE_FORMATS)} "
                         "(e.g. --figures png,pdf)")
    if "png" not in formats:
        raise ValueError(f"figure formats {','.join(formats) or '(none)'} lack png, which the report pages show; "
                         "use --figures png or --figures png,pdf")
    return formats


#: Where a method's weights come from.
#:   real                trained weights (the authors' release in the project's format, or a `train` checkpoint)
#:   converted-official  the authors' checkpoint file in its own format, converted on load (.pkl / .pt)
#:   untrained           the method's initialisation on real base weights (e.g. img2img-turbo's LoRA before
#:                       training): runs, but not the method
#:   random              tiny presets' random networks: a smoke test of the pipeline, not comparable to papers
#:   none                the method has no weights (identity)
WEIGHTS_KINDS = ("real", "converted-official", "untrained", "random", "none")


@dataclass(frozen=True)
class WeightsProvenance:
    """Where one method's weights come from: a `WEIGHTS_KINDS` value and the weights id (hub id + revision,
    file hash, tiny preset version) that the output cache keys on."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTS_KINDS:
            raise ValueError(f"weights kind {self.kind!r} is not one of {', '.join(WEIGHTS_KINDS)}")

    @property
    def comparable(self) -> bool:
        """Whether numbers made with these weights can stand next to a paper's."""
        return self.kind in ("real", "converted-official", "none")
