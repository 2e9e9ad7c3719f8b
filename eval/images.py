"""Image inputs of the metrics: loading (path / PIL / array / tensor -> float 3 x H x W in [0, 1]) and input guards.

Every metric takes float B x 3 x H x W tensors in [0, 1] and rejects anything else with a message naming the fix
(a uint8 tensor silently treated as [0, 1] floats, or [-1, 1] model outputs, are the classic ways metrics go wrong).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.vocab import CLEAN_FID_EXTENSIONS, IMAGE_EXTENSIONS  # the shared vocabulary, re-exported

if TYPE_CHECKING:
    import torch

RANGE_TOL = 1e-6


def load_image(x: Any) -> torch.Tensor:
    """A path, PIL image, HxWx3 uint8 array or (1x)3xHxW float tensor in [0,1] -> float32 3 x H x W in [0, 1]."""
    import numpy as np
    import torch

    if isinstance(x, (str, os.PathLike)):
        from PIL import Image

        path = Path(x)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.suffix.lower() == ".npy":  # an H x W x 3 uint8 array, as clean-fid reads .npy "images"
            x = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                x = im.convert("RGB")
    if hasattr(x, "convert") and hasattr(x, "size"):  # PIL image
        x = np.array(x.convert("RGB"))
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"numpy images must be H x W x 3 uint8, got {x.dtype} {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float() / 255.0
    if isinstance(x, torch.Tensor):
        t = x[0] if x.ndim == 4 and x.shape[0] == 1 else x
        return check_images(t[None], "image", "load_image")[0]
    raise TypeError(f"cannot load an image from {type(x).__name__}; pass a path, PIL image, uint8 array or tensor")


def check_images(x: Any, what: str, metric: str, *, batch: int | None = None) -> torch.Tensor:
    """Validate float B x 3 x H x W in [0, 1] (optionally of batch size `batch`); returns it as float32."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{metric}: `{what}` must be a float torch.Tensor B x 3 x H x W in [0, 1], "
                        f"got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{metric}: `{what}` must be a float tensor in [0, 1], got dtype {x.dtype}; "
                        "convert uint8 images with x.float() / 255")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{metric}: `{what}` must have shape B x 3 x H x W, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{metric}: `{what}` is an empty batch")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{metric}: `{what}` has batch size {x.shape[0]} but the images have {batch}")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if not (lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL):  # also catches NaN
        hint = " (looks like [-1, 1]: use (x + 1) / 2)" if lo < -RANGE_TOL and lo >= -1 - RANGE_TOL else ""
        hint = hint or (" (looks like [0, 255]: divide by 255)" if hi > 1 + RANGE_TOL else "")
        raise ValueError(f"{metric}: `{what}` values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    return x.float()


def check_same_size(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str, metric: str) -> None:
    """Raise unless two batches share H x W (pixel and LPIPS metrics compare aligned images)."""
    if tuple(a.shape[2:]) != tuple(b.shape[2:]):
        raise ValueError(f"{metric}: `{what_a}` ({tuple(a.shape[2:])}) and `{what_b}` ({tuple(b.shape[2:])}) must "
                         "have the same H x W; resize one of them first")


def check_prompts(p: Any, n: int, what: str, metric: str) -> list[str]:
    """A list of n strings (a single string is repeated n times)."""
    if isinstance(p, str):
        return [p] * n
    if not isinstance(p, Sequence) or not all(isinstance(s, str) for s in p):
        raise TypeError(f"{metric}: `{what}` must be a string or a list of {n} strings, got {type(p).__name__}")
    if len(p) != n:
        raise ValueError(f"{metric}: `{what}` has {len(p)} prompts but the images have batch size {n}")
    return list(p)


def _clean_fid_glob(root: str) -> list[str]:
    """clean-fid 0.1.35 `get_folder_features`: sorted(glob(root/**/*.<ext>, recursive=True) for ext in EXTENSIONS).

    glob skips names starting with "." (hidden files, macOS `._x.png` metadata) and does not enter hidden folders;
    matching is case-sensitive on POSIX. Duplicates (the same file matched by `*.png` and `*.PNG` where names
    compare case-insensitively, e.g. Windows) are kept once; entries that are not files (a folder named `a.png`) are
    dropped."""
    from glob import glob

    found = {f for ext in CLEAN_FID_EXTENSIONS for f in glob(os.path.join(root, f"**/*.{ext}"), recursive=True)}
    return sorted(f for f in found if os.path.isfile(f))


def _not_counted(root: str, counted: set[str]) -> list[str]:
    """Files under `root` that look like images (extension in any case) but clean-fid's discovery does not count:
    other-case extensions (`u.BMP`, `z.Png`), hidden files and `._*` metadata, files in hidden folders."""
    lower = {"." + e.lower() for e in CLEAN_FID_EXTENSIONS}
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.splitext(name)[1].lower() in lower and path not in counted:
                out.append(os.path.relpath(path, root))
    return sorted(out)


def list_image_files(src: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files of a folder, found exactly as clean-fid finds them (same extensions and case rules, hidden and
    `._*` files skipped, same order), or of an explicit list (checked: existing image files, no hidden/metadata).

    A folder's image-like files that clean-fid would not count are never read; a warning lists them (rename them to
    a counted extension, e.g. lower case, to include them), so N is what clean-fid reports on the same folder.
    """
    import warnings

    if isinstance(src, (str, os.PathLike)):
        root = os.fspath(src)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        files = _clean_fid_glob(root)
        skipped = _not_counted(root, set(files))
        if skipped:
            shown = ", ".join(skipped[:10]) + (f", ... ({len(skipped)} in all)" if len(skipped) > 10 else "")
            warnings.warn(f"{root}: {len(skipped)} image-like file(s) not counted, as clean-fid does not count them "
                          f"(extensions {', '.join(CLEAN_FID_EXTENSIONS)} case-sensitively; hidden and ._* files "
                          f"skipped): {shown}. Rename them (e.g. lower-case extension) to include them.", stacklevel=2)
        if not files:
            exts = ",".join(CLEAN_FID_EXTENSIONS)
            raise FileNotFoundError(f"no images in {root} (clean-fid's discovery: *.{{{exts}}}, searched "
                                    "recursively, case-sensitive, hidden files skipped)")
        return [Path(f) for f in files]
    files = [Path(p) for p in src]
    hidden = [str(p) for p in files if p.name.startswith(".")]
    if hidden:
        raise ValueError(f"hidden or macOS metadata files (._*) are not images: {hidden[:3]}; remove them from "
                         "the list")
    accepted = (*IMAGE_EXTENSIONS, ".npy")
    odd = [str(p) for p in files if p.suffix.lower() not in accepted]
    if odd:
        raise ValueError(f"not image files (extensions {', '.join(accepted)}): {odd[:3]}")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image files not found: {missing[:3]}")
    return files
