"""PIE-Bench: the prompt-driven image editing benchmark of Ju et al., "PnP Inversion: Boosting diffusion-based editing
with 3 lines of code" (ICLR 2024; github.com/cure-lab/PnPInversion).

700 images (512 x 512) in 10 edit types, each with a source and a target prompt and a human-drawn edit mask. The
unpacked dataset (`<data root>/pie-bench`) looks like:

    mapping_file.json                          {"<12-digit id>": {image_path, original_prompt, editing_prompt,
                                                 editing_instruction, editing_type_id, blended_word, mask}, ...}
    annotation_images/0_random_140/000000000000.jpg
    annotation_images/1_change_object_80/1_artificial/1_animal/111000000000.jpg  ...

`image_path` is relative to annotation_images/. The prompts mark the words that differ with brackets
("a [rusty] bicycle"); the authors' evaluation (`evaluation/evaluate.py`) removes the brackets before CLIP reads the
prompts, and so does this loader. Each sample carries its `edit_type` (the `editing_type_id`, "0" .. "9") and its
mask as an L image, 255 on the region to edit (PIE-Bench's 1) and 0 on the background to preserve.

Distribution: the authors hand out the archive through a Google Form (no direct URL, no published checksum), so
`download_pie_bench(archive)` unpacks a file (or URL) you obtained: it streams it with a progress bar, records its
sha256 in the dataset folder (and checks it against a checksum you pass, or the one recorded by an earlier
download), checks the layout and moves the folder into place atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .sample import Sample

NAME = "pie-bench"
TASK = "pie-bench"
FORM_URL = "https://forms.gle/hVMkTABb4uvZVjme9"
MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
MASK_SHAPE = (512, 512)
LAYOUT = f"{MAPPING_FILE} and {IMAGES_DIR}/<edit type folder>/.../<id>.jpg (PIE-Bench as the authors' archive unpacks)"
EDIT_TYPES = {
    "0": "random editing", "1": "change object", "2": "add object", "3": "delete object",
    "4": "change content", "5": "change pose", "6": "change color", "7": "change material",
    "8": "change background", "9": "change style",
}
"""The 10 edit types (`editing_type_id`), named as in the PnPInversion README's table."""
LICENSE = "research use; cite Ju et al., ICLR 2024 (terms: github.com/cure-lab/PnPInversion)"
METRICS = ("dino_struct_pie", "bg_psnr", "bg_lpips", "bg_mse", "bg_ssim", "clip_score", "clip_edited")
"""PIE-Bench's table (Ju et al., Table 1): structure distance, background PSNR / LPIPS / MSE / SSIM, CLIP similarity
of the whole image and of the edited region (see eval.region_metrics)."""
FIELDS = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


# ------------------------------------------------------------------------------------------------------ the masks
def mask_decode(rle: Sequence[int], shape: tuple[int, int] = MASK_SHAPE, *, border: bool = True) -> np.ndarray:
    """PIE-Bench's run-length encoded edit mask -> H x W uint8 array, 1 = region to edit, 0 = background.

    The format (PnPInversion `evaluation/evaluate.py` mask_decode): a flat list `[start_0, length_0, start_1,
    length_1, ...]` of runs of 1s over the mask flattened in row-major (C) order, i.e. pixel (row r, column c) has
    index r * W + c, for W = H = 512; indices are 0-based, a run covers [start, start + length) and is clipped at
    the end of the image; everything else is 0. Then, "to avoid annotation errors in boundary", the authors set the
    first and last row and column to 1 (edit region), so the background never includes the image border:
    `border=True` (the default) does the same; `border=False` gives the raw annotation.
    """
    h, w = shape
    flat = np.zeros(h * w, dtype=np.uint8)
    values = [int(v) for v in rle]
    if len(values) % 2:
        raise DataError(f"a PIE-Bench mask needs (start, length) pairs; got {len(values)} numbers")
    for start, length in zip(values[0::2], values[1::2]):
        if start < 0 or length < 0:
            raise DataError(f"a PIE-Bench mask run has a negative start or length: ({start}, {length})")
        flat[start : start + length] = 1  # numpy clips the slice at the end, as the authors' min(...) does
    mask = flat.reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = 1
        mask[:, 0] = mask[:, -1] = 1
    return mask


def mask_encode(mask: np.ndarray) -> list[int]:
    """The inverse of `mask_decode(..., border=False)`: an H x W 0/1 array -> [start, length, ...] runs of 1s in
    row-major order (for fixtures and tests; PIE-Bench ships its masks encoded)."""
    flat = np.asarray(mask).reshape(-1).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flat, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    out: list[int] = []
    for s, e in zip(starts, ends):
        out += [int(s), int(e - s)]
    return out


def strip_brackets(prompt: str) -> str:
    """PIE-Bench marks edited words with brackets; its evaluation removes them (evaluate.py, `.replace`)."""
    return prompt.replace("[", "").replace("]", "")


# ------------------------------------------------------------------------------------------------------ the loader
def read_mapping(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The checked mapping file of a PIE-Bench folder (DataError naming what is missing)."""
    import json

    root = Path(root)
    path = root / MAPPING_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a PIE-Bench folder: {MAPPING_FILE} is missing (expected layout: {LAYOUT})")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); download PIE-Bench again") from e
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path} must hold a non-empty JSON object of id -> annotation")
    for key, entry in mapping.items():
        missing = [f for f in FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise DataError(f"{path}: entry {key!r} lacks {', '.join(missing)}")
    return mapping


def load_pie_bench(root: str | os.PathLike, *, resolution: int | None = None,
                   edit_types: Sequence[str] | None = None) -> Sequence[Sample]:
    """PIE-Bench's samples (lazily read, sorted by id), optionally only some `edit_types` ("0" .. "9").

    Each Sample: `image` the source photo, `src_prompt` / `tgt_prompt` the original / editing prompt without
    brackets, `mask` the decoded edit mask (L, 255 = edit region, border included as the authors do),
    `edit_type` the editing_type_id. `resolution`: prepared like every task (mask resized NEAREST).
    """
    from PIL import Image

    from .images import load_image
    from .layouts import SampleList, prepare_sample

    root = Path(root)
    mapping = read_mapping(root)
    images = root / IMAGES_DIR
    if not images.is_dir():
        raise DataError(f"{root} is not a PIE-Bench folder: {IMAGES_DIR}/ is missing (expected layout: {LAYOUT})")
    wanted = None if edit_types is None else {str(t) for t in edit_types}

    def make(key: str, entry: dict[str, Any]) -> Sample:
        path = images / entry["image_path"]
        image = load_image(path)
        mask = Image.fromarray(mask_decode(entry["mask"], (image.height, image.width)) * 255, mode="L")
        sample = Sample(id=key, image=image, src_prompt=strip_brackets(entry["original_prompt"]),
                        tgt_prompt=strip_brackets(entry["editing_prompt"]), mask=mask,
                        edit_type=str(entry["editing_type_id"]), path=str(path))
        return prepare_sample(sample, resolution)

    items = [(key, (lambda key=key, entry=entry: make(key, entry))) for key, entry in sorted(mapping.items())
             if wanted is None or str(entry["editing_type_id"]) in wanted]
    return SampleList(items)


# -------------------------------------------------------------------------------------------------- the download
def data_dir() -> Path:
    """Where PIE-Bench lives: `<data root>/pie-bench`."""
    from .recipes import data_root

    return data_root() / NAME


def missing_error(path: Path) -> DataError:
    """What to download and where to put it (no network, or not downloaded yet)."""
    return DataError(
        f"PIE-Bench is not at {path}. The authors distribute it through a Google Form ({FORM_URL}, linked from "
        "github.com/cure-lab/PnPInversion): fill it in, download its archive, then run "
        "`python benchmark.py data download pie-bench --from PATH/TO/ARCHIVE.zip` (checks and records its "
        f"sha256), or unpack it to {path} by hand with the layout: {LAYOUT}. Set I2I_ZOO_DATA to use another data "
        "root."
    )


def download_pie_bench(source: str | os.PathLike | None = None, dest: str | os.PathLike | None = None, *,
                       sha256: str | None = None, progress: bool = True, force: bool = False,
                       timeout: float = 60.0) -> Path:
    """Unpack PIE-Bench from `source` (the archive you downloaded through the authors' form, or its URL) into
    `dest` (default `data_dir()`), atomically; returns `dest`.

    No checksum is published: the archive's sha256 is recorded in `dest/.i2i-zoo-download.json`; it must equal
    `sha256` when given, and, on a forced re-download, the one recorded before. Without `source` (or when it
    cannot be read) DataError says what to download and where to put it.
    """
    import shutil
    import tempfile

    from eval.store import atomic_write_json, read_json

    from .recipes import MARKER, Recipe, _content_root, _extract, _fetch

    path = Path(dest) if dest is not None else data_dir()
    if (path / MARKER).is_file() and not force:
        return path
    if source is None:
        raise missing_error(path)
    previous = (read_json(path / MARKER, {}) or {}).get("sha256")
    expected = (sha256 or previous or "").lower() or None
    url = str(source) if "://" in str(source) else Path(source).resolve().as_uri()
    recipe = Recipe(NAME, url, "paired", "PIE-Bench archive", LICENSE)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}.download-", dir=path.parent))
    try:
        archive = work / (url.rstrip("/").rsplit("/", 1)[-1] or "archive")
        try:
            digest, nbytes = _fetch(recipe, archive, path, progress=progress, timeout=timeout)
        except DataError as e:
            raise DataError(f"cannot read {source}: {e.__cause__ or e}. {missing_error(path)}") from e
        if expected and digest != expected:
            raise DataError(f"checksum mismatch for {source}: sha256 {digest}, expected {expected} "
                            f"({'given' if sha256 else 'recorded at the first download'}); the archive is corrupt "
                            "or another version: download it again")
        unpacked = work / "unpacked"
        _extract(archive, unpacked)
        archive.unlink()
        content = _content_root(unpacked)
        if not (content / MAPPING_FILE).is_file() and (content / "data" / MAPPING_FILE).is_file():
            content = content / "data"  # the repository's data/ folder zipped as is
        load_pie_bench(content)  # layout check: mapping file, images folder
        atomic_write_json(content / MARKER, {"name": NAME, "source": str(source), "sha256": digest, "bytes": nbytes,
                                             "verified": bool(expected), "checksum_published": False})
        if path.exists():
            os.replace(path, work / "old")
        os.replace(content, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(f"PIE-Bench: sha256 {digest} ({'verified' if expected else 'recorded; no published checksum'})")
    return path


def register_pie_bench_task() -> None:
    """Add the `pie-bench` task to the registry (datasets/tasks.py calls this at import)."""
    from .sample import Task
    from .tasks import register_task

    def factory(resolution: int | None) -> Task:
        res = int(resolution or MASK_SHAPE[0])

        def loader() -> Sequence[Sample]:
            path = data_dir()
            if not path.is_dir() or not any(path.iterdir()):
                raise missing_error(path)
            return load_pie_bench(path, resolution=None if res == MASK_SHAPE[0] else res)

        return Task(name=TASK, kind="text-edit", loader=loader, metrics=METRICS,
                    description="PIE-Bench (Ju et al., ICLR 2024): 700 images, 10 edit types, source/target prompts "
                                f"and edit masks; background preservation and edited-region CLIP. {res} px.",
                    direction="a2b", resolution=res, dataset=NAME, split="test", bundled=False)

    register_task(factory, name=TASK)
