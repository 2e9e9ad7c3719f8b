"""PITI's datasets: COCO-Stuff and ADE20K semantic masks, sketch (edge-map) folders, and their conditions.

What PITI trains and evaluates on (PITI `preprocess/preprocess_mask.py`, `image_datasets_mask.py`,
`image_datasets_sketch.py`):

- **COCO-Stuff** (mask-to-image): photos in ``<split>_img/*.jpg`` and RGB colour-coded label maps in
  ``<split>_label_color/<stem>.png``, written by PITI's preprocessing from the raw 182-class label PNGs. Raw label
  PNGs (pixel = class id 0..181, 255 = unlabelled; ``<split>_label/`` or COCO's ``stuffthingmaps`` folders
  ``<split>2017/``) are colourised on load the same way (`colorize_labels`).
- **ADE20K** (mask-to-image): ``<image>.jpg`` next to its colour segmentation ``<image>_seg.png`` (the full ADE20K
  format), in any sub-folder of the root.
- **sketch** (sketch-to-image): photos plus binary edge maps of the same stem (PITI: HED edges > 0.6 in
  ``*_sketch`` folders). The model's input is `edge_distance_transform` of the edges.

Transforms as the paper's loaders: images and labels are squashed to 256 x 256 (aspect ratio NOT kept; labels
NEAREST, images BICUBIC); `keep_aspect=True` resizes the short side and centre-crops instead. Horizontal flips
are a training augmentation (methods/piti/training.py), not done here.

Samples follow the paired-kind convention of the rest of the project (`image = condition`, `target` = photo), so
the runner and metrics treat these tasks like any mask-to-image / sketch-to-image task. Sketch conditions are
stored with the polarity of the bundled suite (black strokes on white); PITI's white-on-black HED maps are inverted
on load (polarity detected from the border, or given).

Downloads are a user action (`datasets.piti_data.download_piti("coco_stuff")`; ADE20K's full release needs a
registered manual download); offline they fail with a message that says where to unpack the data by hand. Tasks:
`coco-stuff-mask`, `ade20k-mask` (registered by datasets/tasks.py). Importing this module is cheap (numpy, PIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from eval.vocab import IMAGE_EXTENSIONS as IMAGE_EXTS  # the shared vocabulary

from .errors import DataError
from .sample import Sample

PITI_RESOLUTION = 256  # image_datasets_*.py: resize_size = crop_size = 256
COCO_STUFF_CLASSES = 182  # preprocess_mask.py: Colorize(182)


# --- conditions -----------------------------------------------------------------------------------------------------
def edge_distance_transform(edges: np.ndarray) -> np.ndarray:
    """PITI's sketch input: the city-block (L1) distance of every pixel to the nearest edge pixel, clipped to
    [0, 255] and scaled to float32 [0, 1] (0 on the edges).

    Equals `cv2.distanceTransform(255 - edge, cv2.DIST_L1, 3)` (image_datasets_sketch.py; the 3x3 L1 mask is exact
    for the L1 metric) followed by `np.clip(d, 0, 255) / 255`; PITI then maps it to [-1, 1]. `edges`: a boolean
    (or 0/1) H x W array, True on edges. An image without edges is 1 everywhere (cv2 returns a huge distance there,
    clipped to 255).
    """
    from scipy import ndimage

    e = np.asarray(edges)
    if e.ndim != 2:
        raise ValueError(f"edge_distance_transform expects an H x W edge map, got shape {e.shape}")
    e = e.astype(bool)
    if not e.any():
        return np.ones(e.shape, dtype=np.float32)
    d = ndimage.distance_transform_cdt(~e, metric="taxicab").astype(np.float32)
    return np.clip(d, 0, 255) / 255.0


def sketch_edges(img: Image.Image, polarity: str = "auto") -> np.ndarray:
    """The boolean edge map of a sketch image: 'black' = dark strokes on a light background (the bundled suite,
    pencil drawings), 'white' = light edges on black (PITI's HED maps), 'auto' = decided by the border's mean
    (a mostly light border means dark strokes)."""
    g = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if polarity == "auto":
        border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
        polarity = "black" if border.mean() > 0.5 else "white"
    if polarity == "black":
        return g < 0.5
    if polarity == "white":
        return g > 0.5
    raise ValueError(f"sketch polarity must be 'auto', 'black' or 'white', got {polarity!r}")


def piti_label_colormap(n: int = COCO_STUFF_CLASSES) -> np.ndarray:
    """PITI's colours for class ids 0..n-1 (n x 3 uint8): the bit-shift map of SPADE/pix2pixHD taken at id + 1
    ("let's give 0 a color", preprocess_mask.py), i.e. `label_colormap(n + 1)[1:]` of the bundled suite."""
    from .suite import label_colormap

    return label_colormap(n + 1)[1:]


def colorize_labels(labels: np.ndarray, n: int = COCO_STUFF_CLASSES) -> Image.Image:
    """An RGB colour-coded label map from class ids (preprocess_mask.py `Colorize(182)`): id i < n gets
    `piti_label_colormap(n)[i]`; ids >= n (255 = COCO-Stuff's unlabelled) stay black."""
    lab = np.asarray(labels)
    if lab.ndim == 3:
        lab = lab[..., 0]
    lab = lab.astype(np.int64)
    cmap = np.zeros((max(n, int(lab.max()) + 1), 3), dtype=np.uint8)
    cmap[:n] = piti_label_colormap(n)
    return Image.fromarray(cmap[lab], mode="RGB")


# --- resizing ---------------------------------------------------------------------------------------------------------
def resize_pair(image: Image.Image, condition: Image.Image, size: int = PITI_RESOLUTION, *,
                keep_aspect: bool = False, condition_resample: Image.Resampling = Image.Resampling.NEAREST
                ) -> tuple[Image.Image, Image.Image]:
    """PITI's resize: both squashed to size x size (image BICUBIC, label NEAREST; `__scale` in image_datasets_*.py).
    `keep_aspect=True`: short side to `size` and a centre crop instead (no distortion)."""
    from .images import prepare

    if keep_aspect:
        return (prepare(image, size, resample=Image.Resampling.BICUBIC),
                prepare(condition, size, resample=condition_resample))
    return (image.resize((size, size), Image.Resampling.BICUBIC),
            condition.resize((size, size), condition_resample))


# --- loaders ----------------------------------------------------------------------------------------------------------
def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _samples(pairs: Sequence[tuple[str, Path, Path]], read_condition: Callable[[Path], Image.Image],
             size: int | None, keep_aspect: bool, condition_resample: Image.Resampling) -> list[Sample]:
    from .images import load_image
    from .layouts import SampleList

    def make(sid: str, img_path: Path, cond_path: Path) -> Callable[[], Sample]:
        def load() -> Sample:
            photo, cond = load_image(img_path), read_condition(cond_path)
            if size:
                photo, cond = resize_pair(photo, cond, size, keep_aspect=keep_aspect,
                                          condition_resample=condition_resample)
            return Sample(id=sid, image=cond, condition=cond, target=photo, path=str(cond_path))
        return load

    return SampleList([(sid, make(sid, a, b)) for sid, a, b in sorted(pairs)])


def _read_rgb(path: Path) -> Image.Image:
    from .images import load_image

    return load_image(path)


def _read_raw_labels(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            lab = np.asarray(im.convert("L") if im.mode not in ("L", "P", "I", "I;16") else im)
    except OSError as e:
        raise DataError(f"cannot read label map {path}: {e}") from e
    return colorize_labels(lab)


def _coco_stuff_pairs(root: Path, split: str) -> tuple[list[tuple[str, Path, Path]], bool]:
    """(id, photo, label) triples of a COCO-Stuff root, and whether the labels are colour maps (else raw ids)."""
    img_dir = _first_dir(root, (f"{split}_img", f"{split}2017", f"images/{split}2017"))
    if img_dir is None:
        raise DataError(f"COCO-Stuff root {root} has no {split}_img/ (PITI layout) or {split}2017/ photo folder; "
                        f"expected layout: {COCO_STUFF_LAYOUT}")
    color_dir = _first_dir(root, (f"{split}_label_color",))
    raw_dir = _first_dir(root, (f"{split}_label", f"stuffthingmaps/{split}2017",
                                f"stuffthingmaps_trainval2017/{split}2017", f"labels/{split}2017"))
    label_dir = color_dir or raw_dir
    if label_dir is None:
        raise DataError(f"COCO-Stuff root {root} has no {split}_label_color/ (colour maps) nor raw label folder "
                        f"({split}_label/ or stuffthingmaps/{split}2017/); expected layout: {COCO_STUFF_LAYOUT}")
    labels = {p.stem: p for p in _images_in(label_dir) if p.suffix.lower() == ".png"}
    pairs, missing = [], []
    for img in _images_in(img_dir):
        lab = labels.get(img.stem)
        if lab is None:
            missing.append(img.name)
        else:
            pairs.append((img.stem, img, lab))
    if not pairs:
        raise DataError(f"COCO-Stuff: no photo in {img_dir} has a label map of the same stem in {label_dir}")
    if missing:
        import warnings

        warnings.warn(f"COCO-Stuff: {len(missing)} photos in {img_dir} have no label map and are skipped",
                      stacklevel=3)
    return pairs, color_dir is not None


def load_coco_stuff(root: str | os.PathLike, split: str = "val", *, size: int | None = PITI_RESOLUTION,
                    keep_aspect: bool = False) -> Sequence[Sample]:
    """COCO-Stuff pairs of `split` ('train' / 'val'): `<split>_img/` photos with `<split>_label_color/` colour maps
    (PITI's layout), else raw class-id PNGs from `<split>_label/` or `stuffthingmaps/<split>2017/`, colourised."""
    pairs, colour = _coco_stuff_pairs(Path(root), split)
    return _samples(pairs, _read_rgb if colour else _read_raw_labels, size, keep_aspect, Image.Resampling.NEAREST)


def _ade20k_pairs(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    base = _first_dir(root, (split, f"images/{split}", f"images/ADE/{split}")) or root
    if not base.is_dir():
        raise DataError(f"ADE20K root {root} does not exist; expected layout: {ADE20K_LAYOUT}")
    pairs = []
    for img in _images_in(base, recursive=True):
        if img.stem.endswith("_seg") or img.suffix.lower() not in (".jpg", ".jpeg"):
            continue
        seg = img.with_name(img.stem + "_seg.png")
        if seg.is_file():
            pairs.append((img.stem, img, seg))
    if not pairs:
        raise DataError(f"ADE20K: no <name>.jpg with a <name>_seg.png beside it under {base}; expected layout: "
                        f"{ADE20K_LAYOUT}")
    return pairs


def load_ade20k(root: str | os.PathLike, split: str = "validation", *, size: int | None = PITI_RESOLUTION,
                keep_aspect: bool = False) -> Sequence[Sample]:
    """ADE20K pairs: every `<name>.jpg` under `root/<split>` (or `root/images/<split>`, or `root` itself) with its
    colour segmentation `<name>_seg.png` beside it (image_datasets_mask.py mode 'ade20k')."""
    return _samples(_ade20k_pairs(Path(root), split), _read_rgb, size, keep_aspect, Image.Resampling.NEAREST)


def load_sketch_folder(root: str | os.PathLike, split: str = "val", *, size: int | None = PITI_RESOLUTION,
                       keep_aspect: bool = False, polarity: str = "auto") -> Sequence[Sample]:
    """Photo + edge-map pairs: `<split>_img/` with `<split>_sketch/` (PITI's COCO-Sketch naming) or `img256/`
    with `sketch256/` (its flickr-edge mode), matched by stem. Conditions come back black-on-white."""
    root = Path(root)
    img_dir = _first_dir(root, (f"{split}_img", "img256", f"{split}2017"))
    sk_dir = _first_dir(root, (f"{split}_sketch", "sketch256"))
    if img_dir is None or sk_dir is None:
        raise DataError(f"sketch root {root} needs {split}_img/ and {split}_sketch/ (or img256/ and sketch256/); "
                        f"found {sorted(p.name for p in root.iterdir()) if root.is_dir() else 'no folder'}")
    sketches = {p.stem: p for p in _images_in(sk_dir)}
    pairs = [(p.stem, p, sketches[p.stem]) for p in _images_in(img_dir) if p.stem in sketches]
    if not pairs:
        raise DataError(f"no photo in {img_dir} has an edge map of the same stem in {sk_dir}")

    def read(path: Path) -> Image.Image:
        from .images import load_image

        edges = sketch_edges(load_image(path), polarity)
        return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8), mode="L").convert("RGB")

    # edge maps are resized like labels (NEAREST keeps them binary)
    return _samples(pairs, read, size, keep_aspect, Image.Resampling.NEAREST)


# --- recipes and tasks ------------------------------------------------------------------------------------------------
COCO_STUFF_LAYOUT = ("val_img/*.jpg + val_label_color/*.png (PITI), or val2017/*.jpg + stuffthingmaps/val2017/*.png "
                     "(COCO images + COCO-Stuff stuffthingmaps_trainval2017.zip); the same for train")
ADE20K_LAYOUT = ("<split>/**/<name>.jpg with <name>_seg.png beside it (the full ADE20K release, e.g. "
                 "ADE20K_2021_17_01/images/ADE/validation)")

#: name -> (urls, licence, layout, notes). Downloads go through `download_piti` (several archives, or manual).
PITI_DATASETS: dict[str, dict[str, object]] = {
    "coco_stuff": {
        "urls": ("http://images.cocodataset.org/zips/val2017.zip",
                 "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip"),
        "license": "COCO images: Flickr terms of use; COCO-Stuff annotations: CC BY 4.0 (cite Caesar et al. 2018)",
        "layout": COCO_STUFF_LAYOUT,
        "notes": "val2017 (5000 images, PITI's dataset/COCOSTUFF_val.txt) plus the stuff+thing label maps; about "
                 "1 GB + 650 MB. Training needs train2017.zip (18 GB) unpacked beside it by hand.",
    },
    "ade20k": {
        "urls": (),
        "license": "ADE20K terms of use (registration at https://ade20k.csail.mit.edu/, research only)",
        "layout": ADE20K_LAYOUT,
        "notes": "The full ADE20K release with colour <name>_seg.png maps needs a registered download; unpack it by "
                 "hand.",
    },
}


def piti_dataset_dir(name: str) -> Path:
    from .recipes import data_root

    if name not in PITI_DATASETS:
        raise DataError(f"unknown PITI dataset {name!r}; known: {', '.join(PITI_DATASETS)}")
    return data_root() / name


def _missing(name: str, path: Path) -> DataError:
    info = PITI_DATASETS[name]
    how = (f"`datasets.piti_data.download_piti({name!r})` (needs network), or unpack it by hand"
           if info["urls"] else "download it by hand (registration needed) and unpack it")
    return DataError(f"the {name} dataset is not at {path}: {how} with the layout: {info['layout']}. Licence: "
                     f"{info['license']}. Set I2I_ZOO_DATA to use another data root.")


def download_piti(name: str, dest: str | os.PathLike | None = None, *, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Download and unpack a PITI dataset into `dest` (default `<data root>/<name>`), atomically; offline or
    without a public URL it raises DataError saying how to set it up by hand."""
    import shutil
    import tempfile

    from .recipes import MARKER, Recipe, _extract, _fetch

    path = Path(dest) if dest is not None else piti_dataset_dir(name)
    info = PITI_DATASETS.get(name)
    if info is None:
        raise DataError(f"unknown PITI dataset {name!r}; known: {', '.join(PITI_DATASETS)}")
    if (path / MARKER).is_file():
        return path
    if not info["urls"]:
        raise _missing(name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=path.parent))
    try:
        content = work / "content"
        content.mkdir()
        for url in info["urls"]:  # type: ignore[union-attr]
            recipe = Recipe(name, str(url), "paired", "", str(info["license"]))
            archive = work / str(url).rsplit("/", 1)[-1]
            try:
                _fetch(recipe, archive, path, progress=progress, timeout=timeout)
            except DataError as e:
                raise _missing(name, path) from e
            _extract(archive, content)
            archive.unlink()
        load_coco_stuff(content, "val")  # layout check
        from eval.store import atomic_write_json

        atomic_write_json(content / MARKER, {"name": name, "urls": list(info["urls"])})  # type: ignore[arg-type]
        if path.exists():
            shutil.rmtree(path)
        os.replace(content, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _task_factory(name: str, dataset: str, kind: str, description: str):
    from .sample import Task
    from .tasks import DEFAULT_METRICS

    def factory(resolution: int | None) -> Task:
        res = int(resolution or PITI_RESOLUTION)

        def root() -> Path:
            path = piti_dataset_dir(dataset)
            if not path.is_dir() or not any(path.iterdir()):
                raise _missing(dataset, path)
            return path

        if dataset == "coco_stuff":
            loader = lambda: load_coco_stuff(root(), "val", size=res)  # noqa: E731
            refs = lambda: [str(p) for _, p, _ in _coco_stuff_pairs(root(), "val")[0]]  # noqa: E731
        else:
            loader = lambda: load_ade20k(root(), "validation", size=res)  # noqa: E731
            refs = lambda: [str(p) for _, p, _ in _ade20k_pairs(root(), "validation")]  # noqa: E731
        return Task(name=name, kind=kind, description=description + f" {res} px (squashed, as PITI).", loader=loader,
                    metrics=DEFAULT_METRICS[kind], direction="a2b", resolution=res, reference_loader=refs,
                    dataset=dataset, split="val", bundled=False)

    return factory


PITI_TASKS = (
    ("coco-stuff-mask", "coco_stuff", "mask-to-image",
     "COCO-Stuff val2017 colour-coded 182-class label map -> photo (PITI's mask benchmark)."),
    ("ade20k-mask", "ade20k", "mask-to-image", "ADE20K validation colour segmentation -> photo (PITI)."),
)


def register_piti_tasks() -> None:
    """Add the PITI benchmark tasks to the task registry (datasets/tasks.py calls this at import)."""
    from .tasks import register_task

    for name, dataset, kind, desc in PITI_TASKS:
        register_task(_task_factory(name, dataset, kind, desc), name=name)


def training_samples(data: object, split: str = "train") -> Sequence[Sample]:
    """Training pairs for a Task or a folder: a PITI dataset task's `split`; a paired-layout root's `split`
    (`train_A/` conditions, `train_B/` photos, no captions needed); a COCO-Stuff / ADE20K / sketch folder; else the
    task's own samples."""
    from .layouts import load_paired
    from .sample import Task

    if isinstance(data, Task):
        if data.dataset in PITI_DATASETS:
            root = piti_dataset_dir(data.dataset)
            return (load_coco_stuff(root, split) if data.dataset == "coco_stuff"
                    else load_ade20k(root, "training" if split == "train" else split))
        samples = data.loader()
        first = samples[0] if len(samples) else None
        root = Path(first.path).resolve().parent.parent if first is not None and first.path else None
        if root is not None and (root / f"{split}_A").is_dir():
            return load_paired(root, split=split, default_prompt="")
        return samples
    root = Path(os.fspath(data)).expanduser()  # type: ignore[arg-type]
    if not root.is_dir():
        raise DataError(f"training data folder {root} does not exist")
    if (root / f"{split}_A").is_dir():
        return load_paired(root, split=split, default_prompt="")
    if (root / f"{split}_sketch").is_dir() or (root / "sketch256").is_dir():
        return load_sketch_folder(root, split)
    if (root / f"{split}_img").is_dir() or (root / f"{split}2017").is_dir():
        return load_coco_stuff(root, split)
    return load_ade20k(root, "training" if split == "train" else split)
