"""Loaders for the standard folder layouts of image-to-image data; each returns samples sorted by id.

Layouts (a root folder holding):

- **unpaired** (CycleGAN-Turbo / img2img-turbo): ``train_A/ train_B/ test_A/ test_B/`` plus one-line
  ``fixed_prompt_a.txt`` and ``fixed_prompt_b.txt``. The CycleGAN naming ``trainA/ trainB/ testA/ testB/`` (no
  prompt files) is accepted too. Translating a->b uses the A images as input, prompt A as the source prompt and
  prompt B as the target prompt; b->a the reverse. The other domain's test images are the FID reference set.
- **paired** (pix2pix-Turbo): ``train_A/ train_B/ train_prompts.json test_A/ test_B/ test_prompts.json``. The
  input (A: edge map, sketch, colour-coded mask) and the target (B: photo) share a file name (the same stem with
  another extension is accepted); the JSON maps the file name (or stem) to the caption.
- **aligned** (pix2pix): ``train/ val/`` of side-by-side AB images, A on the left half, B on the right.
- **folder**: images directly in the root plus a prompts file (``prompts.json`` or ``prompts.csv``), for text
  edits and image-guided tasks. JSON maps a file name (or stem) to either a target prompt string or an object
  with the keys ``src``/``tgt`` (aliases ``src_prompt``/``tgt_prompt``, ``prompt`` = ``tgt``) and optional image
  paths relative to the root: ``reference`` (style/appearance image), ``mask`` (region mask), ``condition``,
  ``target``. CSV has a header row with a ``filename`` column and any of the same keys as columns; empty cells
  mean "not given".

Images are globbed by extension (eval.vocab.IMAGE_EXTENSIONS, case-insensitive); hidden files (leading ".")
and sub-folders are ignored. Sample ids are file stems and must be unique per folder. Structural problems
(missing folders, prompt mismatches, unpaired inputs) are raised as `DataError` when the loader is called;
pixels are read lazily when a sample is accessed, so a large folder can be sliced cheaply.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from PIL import Image

from eval.vocab import IMAGE_EXTENSIONS  # the shared vocabulary, re-exported

from .errors import DataError
from .images import load_image, prepare, safe_sample_id
from .sample import Sample

PROMPT_FILES = ("prompts.json", "prompts.csv")
_ENTRY_KEYS = {
    "src": "src",
    "src_prompt": "src",
    "tgt": "tgt",
    "tgt_prompt": "tgt",
    "prompt": "tgt",
    "reference": "reference",
    "mask": "mask",
    "condition": "condition",
    "target": "target",
}
_NAME_COLUMNS = ("filename", "file", "image")
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------------- helpers
class SampleList(Sequence[Sample]):
    """An ordered, sliceable list of samples whose images are read when an item is accessed.

    Built from (id, factory) pairs; slicing returns another `SampleList` without reading any pixels, so
    `task.load(max_samples)` on a large dataset reads only what it returns.
    """

    def __init__(self, items: Sequence[tuple[str, Callable[[], Sample]]]):
        self._items = list(items)

    @property
    def ids(self) -> list[str]:
        """The sample ids, in order, without reading any image."""
        return [i for i, _ in self._items]

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> SampleList: ...

    def __getitem__(self, index: int | slice) -> Sample | SampleList:
        if isinstance(index, slice):
            return SampleList(self._items[index])
        return self._items[index][1]()

    def __iter__(self) -> Iterator[Sample]:
        for _, make in self._items:
            yield make()

    def __repr__(self) -> str:
        return f"SampleList({len(self)} samples)"


    def map(self, fn: Callable[[Sample], Sample]) -> SampleList:
        """A new list whose items are `fn(sample)`, still read lazily."""
        return SampleList([(sid, (lambda make=make: fn(make()))) for sid, make in self._items])


def prepare_sample(
    sample: Sample,
    resolution: int | None,
    *,
    condition_resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Sample:
    """A copy of `sample` with every image prepared to `resolution` (masks NEAREST, condition as given)."""
    if not resolution:
        return sample
    from dataclasses import replace

    def prep(img: Image.Image | None, resample: Image.Resampling) -> Image.Image | None:
        return None if img is None else prepare(img, resolution, resample=resample)

    lanczos = Image.Resampling.LANCZOS
    condition = prep(sample.condition, condition_resample)
    image = condition if sample.image is sample.condition else prep(sample.image, lanczos)
    return replace(sample, image=image, condition=condition, target=prep(sample.target, lanczos),
                   reference=prep(sample.reference, lanczos), mask=prep(sample.mask, Image.Resampling.NEAREST))


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder`, sorted by file name (code-point order, deterministic).

    Matches the extensions in `IMAGE_EXTENSIONS` case-insensitively and skips hidden files and sub-folders.
    Raises DataError when the folder does not exist or two images share a stem (their ids would clash).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )
    # not only regular files: a dangling symlink or a FIFO named *.png is a sample whose reading fails, and is
    # recorded as such, rather than vanishing from the task without a word
    files = [p for p in files if not p.is_dir()]
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise DataError(
                f"{folder}: {stems[p.stem].name} and {p.name} have the same name stem, so their sample ids "
                "clash. Rename or remove one of them."
            )
        stems[p.stem] = p
    return files


def _nonempty_images(folder: Path, what: str) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise DataError(
            f"{what} folder {folder} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}; hidden files "
            "are ignored). Put the images there or point to the right folder."
        )
    return files


def _sample_id(path: Path) -> str:
    try:
        return safe_sample_id(path.stem)
    except DataError as e:
        raise DataError(f"{path}: {e}") from e


def _check_unique(ids: Sequence[str], where: Path) -> None:
    dups = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dups:
        raise DataError(f"{where}: several files map to the same sample id(s): {_listing(dups)}. Rename them.")


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file (a BOM is accepted); raise DataError naming the file if it is not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r}). Re-save it as UTF-8, "
            "e.g. `iconv -f latin1 -t utf-8 in > out`."
        ) from e


def _read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}. Fix the file (a JSON object: file name -> prompt).") from e
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to read; a prompts file is a flat JSON object "
                        "(file name -> prompt or {src, tgt, ...}).") from None


def _key_lookup(entries: dict[str, Any], files: Sequence[Path], where: Path) -> dict[str, Any]:
    """Match prompt-file keys (file name or stem) to image files; raise on missing or extra entries."""
    by_name = {p.name: p for p in files}
    by_stem = {p.stem: p for p in files}
    matched: dict[str, Any] = {}
    extra = []
    for key, value in entries.items():
        p = by_name.get(key) or by_stem.get(key)
        if p is None:
            extra.append(key)
            continue
        if p.name in matched:
            raise DataError(f"{where}: image {p.name} has two entries (by file name and by stem). Keep one.")
        matched[p.name] = value
    missing = [p.name for p in files if p.name not in matched]
    if missing:
        raise DataError(
            f"{where} has no entry for {len(missing)} image(s): {_listing(missing)}. Add an entry per image "
            "(keyed by file name) or remove those images."
        )
    if extra:
        raise DataError(
            f"{where} has {len(extra)} entry(ies) with no matching image: {_listing(sorted(extra))}. Remove those "
            "entries or add the images (keys are file names or stems)."
        )
    return matched


def _parse_entry(value: Any, key: str, where: Path) -> dict[str, str]:
    """One prompts-file value -> {"src"?, "tgt"?, "reference"?, ...} with canonical keys."""
    if isinstance(value, str):
        return {"tgt": value}
    if not isinstance(value, dict):
        raise DataError(f"{where}: entry {key!r} must be a prompt string or an object, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        canon = _ENTRY_KEYS.get(k)
        if canon is None:
            raise DataError(
                f"{where}: entry {key!r} has unknown key {k!r}; allowed keys: {', '.join(sorted(_ENTRY_KEYS))}"
            )
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            raise DataError(f"{where}: entry {key!r} key {k!r} must be a string, got {type(v).__name__}")
        out[canon] = v
    return out


def read_prompts(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read a prompts file (JSON object or CSV with a header; see the module docstring) -> key -> entry."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        try:
            return _read_csv_prompts(path)
        except csv.Error as e:  # e.g. a cell longer than the csv module's field limit (128 KiB)
            raise DataError(f"{path} is not a readable CSV file ({e}); prompts are short text cells.") from None
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path} must hold a JSON object mapping file name -> prompt, got {type(raw).__name__}")
    return {str(k): _parse_entry(v, str(k), path) for k, v in raw.items()}


def _read_csv_prompts(path: Path) -> dict[str, dict[str, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    fields = reader.fieldnames or []
    name_col = next((c for c in _NAME_COLUMNS if c in fields), None)
    if name_col is None:
        raise DataError(
            f"{path}: the CSV header must have a 'filename' column (and prompt columns such as 'src', 'tgt'); "
            f"found {fields}"
        )
    raw: dict[str, Any] = {}
    for row in reader:
        key = (row.pop(name_col) or "").strip()
        if not key:
            continue
        if key in raw:
            raise DataError(f"{path}: {key!r} appears in more than one row. Keep one.")
        raw[key] = {k: v for k, v in row.items() if k is not None}
    return {str(k): _parse_entry(v, str(k), path) for k, v in raw.items()}


def _maybe_prepare(img: Image.Image, resolution: int | None, resample: Image.Resampling) -> Image.Image:
    return prepare(img, resolution, resample=resample) if resolution else img


# ---------------------------------------------------------------------------------------------------- unpaired
def unpaired_dirs(root: str | os.PathLike, split: str = "test") -> tuple[Path, Path]:
    """The (A, B) folders of `split` in an unpaired root, img2img-turbo (`test_A`) or CycleGAN (`testA`) naming."""
    root = Path(root)
    for a, b in ((f"{split}_A", f"{split}_B"), (f"{split}A", f"{split}B")):
        if (root / a).is_dir() and (root / b).is_dir():
            return root / a, root / b
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise DataError(
        f"unpaired data root {root} lacks the {split!r} folders: expected {split}_A/ and {split}_B/ "
        f"(img2img-turbo) or {split}A/ and {split}B/ (CycleGAN); found folders: {present or 'none'}."
        + ("" if root.is_dir() else " The root itself does not exist.")
    )


def unpaired_prompts(root: str | os.PathLike, default: tuple[str, str] | None = None) -> tuple[str | None, str | None]:
    """The fixed (prompt A, prompt B) of an unpaired root: `fixed_prompt_a.txt`/`fixed_prompt_b.txt` or `default`."""
    root = Path(root)
    out: list[str | None] = []
    for i, name in enumerate(("fixed_prompt_a.txt", "fixed_prompt_b.txt")):
        f = root / name
        if f.is_file():
            text = read_text(f).strip()
            if not text:
                raise DataError(f"{f} is empty; write the domain's one-line caption into it.")
            out.append(text)
        else:
            out.append(default[i] if default else None)
    return out[0], out[1]


def load_unpaired(
    root: str | os.PathLike,
    *,
    split: str = "test",
    direction: str = "a2b",
    resolution: int | None = None,
    default_prompts: tuple[str, str] | None = None,
) -> SampleList:
    """Samples of the source domain of an unpaired root (A for "a2b", B for "b2a"), sorted by id.

    src_prompt is the source domain's fixed prompt and tgt_prompt the target domain's (img2img-turbo: the a->b
    generator is conditioned on prompt B). `default_prompts` (A, B) is used when the prompt files are absent
    (the CycleGAN layout has none).
    """
    if direction not in ("a2b", "b2a"):
        raise DataError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
    dir_a, dir_b = unpaired_dirs(root, split)
    prompt_a, prompt_b = unpaired_prompts(root, default_prompts)
    src_dir, domain = (dir_a, "A") if direction == "a2b" else (dir_b, "B")
    src_prompt, tgt_prompt = (prompt_a, prompt_b) if direction == "a2b" else (prompt_b, prompt_a)
    files = _nonempty_images(src_dir, f"unpaired domain {domain}")
    ids = [_sample_id(p) for p in files]
    _check_unique(ids, src_dir)

    def make(sid: str, path: Path) -> Callable[[], Sample]:
        def load() -> Sample:
            img = _maybe_prepare(load_image(path), resolution, Image.Resampling.LANCZOS)
            return Sample(id=sid, image=img, src_prompt=src_prompt, tgt_prompt=tgt_prompt, domain=domain,
                          path=str(path))
        return load

    return SampleList(sorted(((sid, make(sid, p)) for sid, p in zip(ids, files)), key=lambda t: t[0]))


def unpaired_reference_paths(root: str | os.PathLike, *, split: str = "test", direction: str = "a2b") -> list[str]:
    """The target-domain images of an unpaired root (B for "a2b", A for "b2a"): the FID/KID reference set."""
    dir_a, dir_b = unpaired_dirs(root, split)
    return [str(p) for p in _nonempty_images(dir_b if direction == "a2b" else dir_a, "reference domain")]


# ------------------------------------------------------------------------------------------------------ paired
def _paired_files(root: Path, split: str) -> tuple[list[tuple[Path, Path]], Path]:
    dir_a, dir_b = root / f"{split}_A", root / f"{split}_B"
    missing = [d.name + "/" for d in (dir_a, dir_b) if not d.is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DataError(
            f"paired data root {root} lacks {', '.join(missing)}: expected {split}_A/ (inputs), {split}_B/ "
            f"(targets, same file names) and {split}_prompts.json; found folders: {present or 'none'}."
            + ("" if root.is_dir() else " The root itself does not exist.")
        )
    files_a = _nonempty_images(dir_a, "paired input (A)")
    files_b = list_images(dir_b)
    b_by_name = {p.name: p for p in files_b}
    b_by_stem = {p.stem: p for p in files_b}
    pairs, unmatched = [], []
    for a in files_a:
        b = b_by_name.get(a.name) or b_by_stem.get(a.stem)
        if b is None:
            unmatched.append(a.name)
        else:
            pairs.append((a, b))
    if unmatched:
        raise DataError(
            f"{len(unmatched)} input(s) in {dir_a} have no target with the same file name in {dir_b}: "
            f"{_listing(unmatched)}. Add the targets or remove those inputs."
        )
    used = {b.name for _, b in pairs}
    orphans = [p.name for p in files_b if p.name not in used]
    if orphans:
        warnings.warn(
            f"{len(orphans)} target(s) in {dir_b} have no input in {dir_a} and are ignored: {_listing(orphans)}",
            stacklevel=3,
        )
    return pairs, root / f"{split}_prompts.json"


def load_paired(
    root: str | os.PathLike,
    *,
    split: str = "test",
    resolution: int | None = None,
    condition_resample: Image.Resampling = Image.Resampling.LANCZOS,
    default_prompt: str | None = None,
) -> SampleList:
    """Samples of a paired root: image = condition = the A file, target = the B file, tgt_prompt from the JSON.

    `condition_resample` resizes the A image when `resolution` is set (NEAREST for colour-coded masks).
    `default_prompt` is used for every sample when `<split>_prompts.json` is absent; without it the file is
    required (pix2pix-Turbo needs a caption per image).
    """
    root = Path(root)
    pairs, prompts_path = _paired_files(root, split)
    if prompts_path.is_file():
        entries = read_prompts(prompts_path)
        matched = _key_lookup(entries, [a for a, _ in pairs], prompts_path)
    elif default_prompt is not None:
        matched = {a.name: {"tgt": default_prompt} for a, _ in pairs}
    else:
        raise DataError(
            f"paired data root {root} has no {prompts_path.name}: write a JSON object mapping each {split}_A file "
            "name to its caption (the pix2pix-Turbo layout)."
        )
    ids = [_sample_id(a) for a, _ in pairs]
    _check_unique(ids, root / f"{split}_A")

    def make(sid: str, a: Path, b: Path, entry: dict[str, str]) -> Callable[[], Sample]:
        def load() -> Sample:
            cond = _maybe_prepare(load_image(a), resolution, condition_resample)
            tgt = _maybe_prepare(load_image(b), resolution, Image.Resampling.LANCZOS)
            return Sample(id=sid, image=cond, condition=cond, target=tgt, src_prompt=entry.get("src"),
                          tgt_prompt=entry.get("tgt"), path=str(a))
        return load

    items = [(sid, make(sid, a, b, matched[a.name])) for sid, (a, b) in zip(ids, pairs)]
    return SampleList(sorted(items, key=lambda t: t[0]))


def paired_reference_paths(root: str | os.PathLike, *, split: str = "test") -> list[str]:
    """The target (B) images of a paired root that have an input: the FID/KID reference set."""
    pairs, _ = _paired_files(Path(root), split)
    return [str(b) for _, b in pairs]


# ----------------------------------------------------------------------------------------------------- aligned
def split_ab(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Split a pix2pix side-by-side image into (A = left half, B = right half)."""
    w, h = img.size
    if w < 2 or w % 2:
        raise DataError(f"a side-by-side AB image must have an even width (A|B), got {w}x{h}")
    half = w // 2
    return img.crop((0, 0, half, h)), img.crop((half, 0, w, h))


def load_aligned(
    root: str | os.PathLike,
    *,
    split: str = "val",
    resolution: int | None = None,
    default_prompt: str | None = None,
) -> SampleList:
    """Samples from pix2pix's aligned layout (`<root>/<split>/*.jpg`, A|B side by side): image = A, target = B."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"aligned (pix2pix) data root {root} lacks {split}/ (expected folders train/ and val/ of AB "
                        "side-by-side images)")
    files = _nonempty_images(folder, "aligned AB")
    ids = [_sample_id(p) for p in files]

    def make(sid: str, path: Path) -> Callable[[], Sample]:
        def load() -> Sample:
            try:
                a, b = split_ab(load_image(path))
            except DataError as e:
                raise DataError(f"{path}: {e}") from e
            a = _maybe_prepare(a, resolution, Image.Resampling.LANCZOS)
            b = _maybe_prepare(b, resolution, Image.Resampling.LANCZOS)
            return Sample(id=sid, image=a, condition=a, target=b, tgt_prompt=default_prompt, path=str(path))
        return load

    return SampleList(sorted(((sid, make(sid, p)) for sid, p in zip(ids, files)), key=lambda t: t[0]))


def aligned_to_paired(
    root: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    split: str = "val",
    out_split: str = "test",
    prompt: str,
    progress: bool = True,
) -> Path:
    """Write an aligned split as the paired layout (`<out_split>_A/B` PNGs + prompts JSON) under `dest`.

    Used after downloading pix2pix datasets so evaluation reads the same paired layout as everything else and
    the B halves exist as files for the FID reference set. Every caption is `prompt` (the datasets have none).
    """
    from tqdm.auto import tqdm

    from eval.store import atomic_path, atomic_write_json

    files = _nonempty_images(Path(root) / split, "aligned AB")
    dest = Path(dest)
    (dest / f"{out_split}_A").mkdir(parents=True, exist_ok=True)
    (dest / f"{out_split}_B").mkdir(parents=True, exist_ok=True)
    prompts = {}
    for p in tqdm(files, desc=f"splitting {split} A|B", disable=not progress):
        try:
            a, b = split_ab(load_image(p))
        except DataError as e:
            raise DataError(f"{p}: {e}") from e
        name = p.stem + ".png"
        for img, side in ((a, "A"), (b, "B")):
            with atomic_path(dest / f"{out_split}_{side}" / name) as tmp:  # concurrent converters stay safe
                img.save(tmp, format="PNG")
        prompts[name] = prompt
    # Written last: its presence marks a complete conversion.
    atomic_write_json(dest / f"{out_split}_prompts.json", prompts)
    return dest


# ------------------------------------------------------------------------------------------------------ folder
def find_prompts_file(root: str | os.PathLike) -> Path | None:
    """The prompts file of a folder layout (`prompts.json` or `prompts.csv`), or None."""
    for name in PROMPT_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def load_folder(
    root: str | os.PathLike,
    prompts: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    require: Sequence[str] = (),
) -> SampleList:
    """Samples of a plain image folder with an optional prompts file (see the module docstring for formats).

    `prompts` defaults to `<root>/prompts.json` or `<root>/prompts.csv`. Every image needs an entry and every
    entry an image. `require` lists entry keys each image must have (e.g. ("src", "tgt") for text edits,
    ("reference",) for image-guided tasks).
    """
    root = Path(root)
    files = _nonempty_images(root, "image")
    prompts_path = Path(prompts) if prompts is not None else find_prompts_file(root)
    if prompts_path is not None and not prompts_path.is_file():
        raise DataError(f"prompts file not found: {prompts_path}")
    if prompts_path is not None:
        matched = _key_lookup(read_prompts(prompts_path), files, prompts_path)
    elif require:
        raise DataError(
            f"{root} has no prompts file; this task needs {', '.join(require)} per image. Write {root}/prompts.json "
            'mapping each file name to {"src": ..., "tgt": ...} (or a prompts.csv with a filename column).'
        )
    else:
        matched = {p.name: {} for p in files}
    lacking = {k: [n for n, e in matched.items() if k not in e] for k in require}
    for key, names in lacking.items():
        if names:
            raise DataError(f"{prompts_path}: {len(names)} entry(ies) lack {key!r}: {_listing(names)}. Add it.")
    for name, entry in matched.items():
        for key in ("reference", "mask", "condition", "target"):
            if key in entry and not (root / entry[key]).resolve().is_relative_to(root.resolve()):
                raise DataError(f"{prompts_path}: the {key} of {name!r} is {entry[key]!r}, outside {root}; a "
                                "reference path is relative to the folder and stays inside it")
            if key in entry and not (root / entry[key]).is_file():
                raise DataError(f"{prompts_path}: the {key} of {name!r} is {entry[key]!r} but {root / entry[key]} "
                                "does not exist. Fix the path (relative to the folder).")
    ids = [_sample_id(p) for p in files]
    _check_unique(ids, root)

    def make(sid: str, path: Path, entry: dict[str, str]) -> Callable[[], Sample]:
        def opt(key: str, mode: str = "RGB", resample=Image.Resampling.LANCZOS) -> Image.Image | None:
            if key not in entry:
                return None
            return _maybe_prepare(load_image(root / entry[key], mode=mode), resolution, resample)

        def load() -> Sample:
            img = _maybe_prepare(load_image(path), resolution, Image.Resampling.LANCZOS)
            return Sample(id=sid, image=img, src_prompt=entry.get("src"), tgt_prompt=entry.get("tgt"),
                          reference=opt("reference"), mask=opt("mask", "L", Image.Resampling.NEAREST),
                          condition=opt("condition"), target=opt("target"), path=str(path))
        return load

    items = [(sid, make(sid, p, matched[p.name])) for sid, p in zip(ids, files)]
    return SampleList(sorted(items, key=lambda t: t[0]))


# ------------------------------------------------------------------------------------------------- detection
LAYOUTS = ("unpaired", "paired", "aligned", "folder")


def detect_layout(root: str | os.PathLike) -> str:
    """Which layout a root folder holds: "unpaired", "paired", "aligned" or "folder" (see the module docstring).

    img2img-turbo's unpaired and paired layouts share `test_A/test_B`; the prompt files tell them apart
    (`fixed_prompt_*.txt` -> unpaired, `*_prompts.json` -> paired), else matching file names mean paired.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    dirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if {"trainA", "trainB"} <= dirs or {"testA", "testB"} <= dirs:
        return "unpaired"
    if {"train_A", "train_B"} <= dirs or {"test_A", "test_B"} <= dirs:
        if (root / "fixed_prompt_a.txt").is_file() or (root / "fixed_prompt_b.txt").is_file():
            return "unpaired"
        if any((root / f"{s}_prompts.json").is_file() for s in ("train", "test")):
            return "paired"
        split = "test" if {"test_A", "test_B"} <= dirs else "train"
        names_a = {p.name for p in list_images(root / f"{split}_A")}
        names_b = {p.name for p in list_images(root / f"{split}_B")}
        return "paired" if names_a and names_a <= names_b else "unpaired"
    if list_images(root):
        return "folder"
    if dirs & {"train", "val", "test"}:
        return "aligned"
    raise DataError(
        f"cannot tell the layout of {root}: expected one of\n"
        "  unpaired: test_A/ test_B/ (+ fixed_prompt_a.txt, fixed_prompt_b.txt) or CycleGAN testA/ testB/\n"
        "  paired:   test_A/ test_B/ test_prompts.json (input and target share file names)\n"
        "  aligned:  train/ val/ of side-by-side A|B images (pix2pix)\n"
        "  folder:   images directly in the folder + prompts.json or prompts.csv\n"
        f"found folders: {sorted(dirs) or 'none'}"
    )


def target_domain_paths(root: str | os.PathLike, *, split: str = "test", direction: str = "a2b") -> list[str]:
    """The FID/KID reference images of a root: the target domain (unpaired) or the targets (paired), else []."""
    layout = detect_layout(root)
    if layout == "unpaired":
        return unpaired_reference_paths(root, split=split, direction=direction)
    if layout == "paired":
        return paired_reference_paths(root, split=split)
    return []
