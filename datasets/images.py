"""Reading user images robustly, preparing them to a square resolution, and turning them into tensors.

Every image that enters the benchmark goes through `load_image`, so a bad file fails here with a message that
names it and says what to do, instead of deep inside a model. Conversions are explicit and documented because
they change pixel values and therefore metrics:

- EXIF orientation is applied (`ImageOps.exif_transpose`), so phone photos are upright as viewers show them.
- Transparency (LA, PA, P with a transparent index, RGBA) is composited on WHITE, the usual page background of
  logos and sketches; a black background would turn transparent strokes into solid black regions.
- 16-bit and 32-bit integer (I;16, I) and float (F) images are scaled to 8 bits by their real range: the maximum
  value becomes 255 and 0 stays black (the minimum becomes black when the data has negative values). PIL's own
  conversion clips to 0..255, which turns a 16-bit photo almost entirely white; dividing by 257 would show a
  12-bit sensor image nearly black. Non-finite floats become the range ends (NaN -> black).
- CMYK is converted to sRGB through the embedded ICC profile when there is one (ImageCms), else by PIL's standard
  formula; Adobe's inverted CMYK JPEGs are un-inverted by PIL's decoder.
- 1-bit images become black/white; grayscale is replicated to three channels.
- Embedded ICC profiles of RGB images are ignored, as the loaders of the reference implementations (PIL /
  torchvision) ignore them; converting would make our inputs differ from theirs.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Largest image accepted, in pixels: PIL's own default bomb limit (about 9459 x 9459), raised as a DataError.
MAX_PIXELS = 89_478_485
#: Smallest side accepted, in pixels: below it an image has almost no content, and an x8 latent encoder turns it
#: into a single latent pixel.
MIN_SIDE = 8
#: Longest sample id accepted (ids become output file names).
MAX_ID_LENGTH = 200

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def load_image(
    path: str | os.PathLike,
    *,
    mode: str = "RGB",
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """Read an image file as a fully loaded PIL image in `mode` ("RGB" for photos, "L" for masks).

    Applies EXIF orientation and the conversions listed in the module docstring. Raises `DataError` naming the
    file and the fix for a missing, empty, unreadable, corrupt or truncated file, a decompression bomb (more than
    `max_pixels` pixels) and an image whose smaller side is below `min_side`.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"load_image: mode must be 'RGB' or 'L', got {mode!r}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"image file not found: {p}. Check the path (and that the folder layout is the expected one).")
    if p.is_dir():
        raise DataError(f"expected an image file but {p} is a folder.")
    if not p.is_file():  # a FIFO, socket or device named *.png: opening it could block forever
        raise DataError(f"{p} is not a regular file (a pipe, socket or device); replace it with an image file.")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read image {p}: {e}. Check the file's permissions.") from e
    if size == 0:
        raise DataError(
            f"image file {p} is empty (0 bytes), probably an interrupted download or copy. Copy it again or delete it."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"image {p} is too large to open safely ({e}). If it is genuine, downscale it first "
            f"(e.g. `mogrify -resize 4096x4096 {p.name}`)."
        ) from e
    except UnidentifiedImageError as e:
        raise DataError(
            f"{p} is not a readable image (unknown format or corrupt header). Re-export it as PNG or JPEG, or "
            "remove it from the folder."
        ) from e
    except OSError as e:
        raise DataError(f"cannot read image {p}: {e}. Check the file's permissions.") from e
    except Exception as e:  # e.g. ValueError: a text or ICC chunk that decompresses past Pillow's safety limit
        raise DataError(
            f"image {p} cannot be opened safely ({type(e).__name__}: {e}). Re-export it as a plain PNG or JPEG, "
            "or remove it from the folder."
        ) from e
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise DataError(
                f"image {p} has {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} (a possible "
                f"decompression bomb). If it is genuine, downscale it first (e.g. `mogrify -resize 4096x4096 "
                f"{p.name}`)."
            )
        if min(w, h) < min_side:
            raise DataError(
                f"image {p} is {w}x{h} pixels; the smallest side must be at least {min_side} px. Remove it or "
                "replace it with a larger image."
            )
        try:
            im.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError for broken data
            raise DataError(
                f"image {p} is corrupt or truncated ({type(e).__name__}: {e}). Re-download or re-export it, or "
                "remove it from the folder."
            ) from e
        try:
            out = _convert(_exif_upright(im), mode)
        except DataError:
            raise
        except Exception as e:
            raise DataError(
                f"cannot convert image {p} (mode {im.mode}) to {mode}: {type(e).__name__}: {e}. Re-export it as an "
                "8-bit RGB PNG."
            ) from e
    out.info.pop("exif", None)
    return out


def _exif_upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block is ignored (the pixels are still valid)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not make a valid image unusable
        return im


def _convert(im: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB or L following the rules of the module docstring."""
    src = im.mode
    if src == "1":
        gray = im.convert("L")
    elif src in _HIGH_DEPTH_MODES:
        gray = _scale_to_uint8(im)
    elif src == "L":
        gray = im.copy()
    else:
        gray = None
    if gray is not None:
        return gray if mode == "L" else gray.convert("RGB")
    if src == "CMYK":
        rgb = _cmyk_to_rgb(im)
    elif src in _ALPHA_MODES or (src == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    elif src == "RGB":
        rgb = im.copy()
    else:  # P, YCbCr, HSV, LAB, ...
        rgb = im.convert("RGB")
    return rgb if mode == "RGB" else rgb.convert("L")


def _scale_to_uint8(im: Image.Image) -> Image.Image:
    """Scale a 16/32-bit or float single-channel image to 8 bits by its real value range (see module docstring)."""
    arr = np.asarray(im).astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return Image.new("L", im.size, 0)
    lo = min(0.0, float(arr[finite].min()))
    hi = float(arr[finite].max())
    arr = np.where(np.isnan(arr), lo, arr)
    arr = np.clip(arr, lo, hi)  # +-inf -> range ends
    if hi <= lo:
        return Image.new("L", im.size, 0)
    out = np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK -> sRGB through the embedded ICC profile when present (what print software does), else PIL's formula."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:  # an unusable profile falls back to the plain formula
            pass
    return im.convert("RGB")


def prepare(
    img: Image.Image,
    resolution: int | None,
    *,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """Resize the shorter side to `resolution` and centre-crop to `resolution` x `resolution`.

    This keeps the aspect ratio (no stretching) and the image centre, the usual evaluation preprocessing of
    image-to-image papers. `ImageOps.fit` computes the centred crop in source pixels and resizes it in one
    resampling step (LANCZOS by default; pass NEAREST for label/colour-coded masks so no new colours appear).
    `resolution=None` returns the image unchanged.
    """
    if resolution is None:
        return img
    if resolution < 1:
        raise ValueError(f"prepare: resolution must be a positive number of pixels, got {resolution}")
    if img.size == (resolution, resolution):
        return img.copy()
    return ImageOps.fit(img, (resolution, resolution), method=resample, centering=(0.5, 0.5))


def to_tensor(img: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """An RGB image as a float32 tensor 1 x 3 x H x W in [0, 1]; an L/1 image (a mask) as 1 x 1 x H x W.

    A sequence of same-size images gives a batch B x C x H x W. This is the input contract of
    `TranslationInput`.
    """
    import torch

    if isinstance(img, Image.Image):
        if img.mode == "1":
            img = img.convert("L")
        if img.mode not in ("RGB", "L"):
            raise DataError(
                f"to_tensor expects an RGB or L image, got mode {img.mode}; read files with load_image() first."
            )
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C")).to(torch.float32).div_(255.0)  # a copy
        return t.unsqueeze(0)
    images = list(img)
    if not images:
        raise ValueError("to_tensor: got an empty sequence of images")
    sizes = {(im.size, "L" if im.mode in ("L", "1") else im.mode) for im in images}
    if len(sizes) > 1:
        raise DataError(f"to_tensor: images in a batch must share size and mode, got {sorted(sizes)}")
    return torch.cat([to_tensor(im) for im in images], dim=0)


_RESERVED = str.maketrans({c: "_" for c in '<>:"|?*'})


def safe_sample_id(name: str) -> str:
    """Check that `name` can be used as a sample id, which becomes an output file name.

    Rejects (DataError) empty ids, ids with path separators (/ or \\), NUL or other control characters, ids that
    are "." or "..", start with "." (hidden files) or are longer than 200 characters: any of them could write
    outside the output folder or clash with it. Characters that Windows forbids in file names (<>:"|?*) are
    replaced by "_" so run directories stay portable; callers check the resulting ids for duplicates.
    """
    if not isinstance(name, str):
        raise DataError(f"sample id must be a string, got {type(name).__name__}: {name!r}")
    if not name or not name.strip():
        raise DataError("sample id is empty; give every image a non-empty file name / id.")
    if "/" in name or "\\" in name:
        raise DataError(f"sample id {name!r} contains a path separator; ids become file names. Rename it.")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DataError(f"sample id {name!r} contains NUL or control characters; rename it.")
    if name.startswith("."):
        raise DataError(f"sample id {name!r} starts with '.' (a hidden or parent-folder name); rename it.")
    if len(name) > MAX_ID_LENGTH:
        raise DataError(f"sample id {name[:40]!r}... is {len(name)} characters long; the limit is {MAX_ID_LENGTH}.")
    return name.translate(_RESERVED)
