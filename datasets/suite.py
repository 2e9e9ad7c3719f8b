"""The bundled `sample` suite: small real-photo tasks of every kind that need no download.

Built deterministically from the real photos that ship inside installed packages (scikit-image's `skimage.data`,
scikit-learn's sample images, matplotlib's sample data), prepared to a small square resolution (default 64 px, so
the default CPU run of every method stays fast) and written ONCE to
`<cache>/datasets/sample-v1/<resolution>px/` in the standard folder layouts, so the same layout loaders that read
users' data read the suite:

- `unpaired/`  img2img-turbo unpaired layout: A = colour photos, B = black-and-white photos, fixed prompts.
- `paired/`    pix2pix-Turbo paired layout: A = Canny edge map (white edges on black), B = photo, captions.
- `mask/`      paired layout: A = colour-coded coarse region mask, B = photo, captions.
- `sketch/`    paired layout: A = binary sketch (black strokes on white), B = photo, captions.
- `edit/`      folder layout: photos + prompts.json with source/target prompts (text edits such as cat -> dog).
- `guided/`    folder layout: content photos + references/ (appearance photos) + prompts.json.

The conditions are DERIVED from the photos by the functions below (edge detector, colour clustering), not drawn or
labelled by people; the captions and edit prompts were written for these photos. A build goes into a temporary
folder that is renamed into place, so concurrent builders are safe and a killed build leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .images import prepare

SUITE_VERSION = "sample-v1"
DEFAULT_RESOLUTION = 64
MANIFEST = "manifest.json"

#: img2img-turbo's Canny thresholds (`image_prep.canny_from_pil`, low 100 / high 200 on cv2's scale).
CANNY_LOW, CANNY_HIGH = 100, 200


@dataclass(frozen=True)
class Photo:
    """A real photo shipped inside an installed package, with a caption written for it."""

    key: str
    source: str  # where it comes from (package + function / file)
    caption: str
    license: str


_SKIMAGE_LICENSE = "scikit-image sample data; see the docstring of the skimage.data function for its licence"
_SKLEARN_LICENSE = "CC BY 2.0 (Flickr), shipped with scikit-learn (sklearn.datasets.load_sample_image)"

PHOTOS: dict[str, Photo] = {
    p.key: p
    for p in (
        Photo("astronaut", "skimage.data.astronaut",
              "a smiling woman astronaut in an orange spacesuit in front of an American flag", _SKIMAGE_LICENSE),
        Photo("chelsea", "skimage.data.chelsea", "a close-up photo of a tabby cat's face", _SKIMAGE_LICENSE),
        Photo("coffee", "skimage.data.coffee", "a cup of coffee on a red saucer on a wooden table", _SKIMAGE_LICENSE),
        Photo("rocket", "skimage.data.rocket", "a rocket on a launch pad at dusk", _SKIMAGE_LICENSE),
        Photo("motorcycle", "skimage.data.stereo_motorcycle (left view)", "a red motorcycle parked in a garage",
              _SKIMAGE_LICENSE),
        Photo("china", "sklearn.datasets.load_sample_image('china.jpg')",
              "a Chinese pagoda among trees above a lake", _SKLEARN_LICENSE),
        Photo("flower", "sklearn.datasets.load_sample_image('flower.jpg')",
              "an orange dahlia flower in front of dark green leaves", _SKLEARN_LICENSE),
        Photo("grace_hopper", "matplotlib.cbook.get_sample_data('grace_hopper.jpg')",
              "a portrait of an elderly woman in a navy uniform and cap in front of an American flag",
              "public domain (U.S. Navy photograph), shipped with matplotlib"),
        Photo("hubble", "skimage.data.hubble_deep_field",
              "a telescope image of many small distant galaxies on a black sky", _SKIMAGE_LICENSE),
        Photo("tissue", "skimage.data.immunohistochemistry",
              "a microscope image of tissue stained brown and blue", _SKIMAGE_LICENSE),
        Photo("retina", "skimage.data.retina",
              "a photograph of the back of a human eye showing the retina and its blood vessels", _SKIMAGE_LICENSE),
        Photo("camera", "skimage.data.camera", "a black and white photo of a man with a camera on a tripod",
              _SKIMAGE_LICENSE),
        Photo("moon", "skimage.data.moon", "a black and white photo of the surface of the moon", _SKIMAGE_LICENSE),
        Photo("coins", "skimage.data.coins", "a black and white photo of rows of ancient coins", _SKIMAGE_LICENSE),
        Photo("brick", "skimage.data.brick", "a black and white photo of a brick wall", _SKIMAGE_LICENSE),
        Photo("gravel", "skimage.data.gravel", "a black and white photo of gravel", _SKIMAGE_LICENSE),
        Photo("grass", "skimage.data.grass", "a black and white photo of grass", _SKIMAGE_LICENSE),
        Photo("page", "skimage.data.page", "a black and white photo of a printed page of text", _SKIMAGE_LICENSE),
        Photo("text", "skimage.data.text", "a black and white photo of handwritten notes on paper",
              _SKIMAGE_LICENSE),
        Photo("clock", "skimage.data.clock", "a black and white motion-blurred photo of a clock", _SKIMAGE_LICENSE),
        Photo("cell", "skimage.data.cell", "a black and white microscope image of a cell", _SKIMAGE_LICENSE),
    )
}

#: Colour photos used as inputs of the paired/mask/sketch tasks and as domain A of the unpaired task.
TEST_COLOR = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "china", "flower", "grace_hopper")
TRAIN_COLOR = ("hubble", "tissue", "retina")
#: Black-and-white photos: domain B of the unpaired task.
TEST_GRAY = ("camera", "moon", "coins", "brick", "gravel", "grass", "page", "text")
TRAIN_GRAY = ("clock", "cell")
UNPAIRED_PROMPTS = ("a color photograph", "a black and white photograph")

#: Text edits: photo -> (source prompt, target prompt). The source prompt describes the photo truthfully.
EDITS: dict[str, tuple[str, str]] = {
    "chelsea": ("a photo of a cat", "a photo of a dog"),
    "coffee": ("a photo of a cup of coffee", "a photo of a cup of tea"),
    "astronaut": ("a photo of an astronaut in an orange spacesuit", "a photo of an astronaut in a white spacesuit"),
    "rocket": ("a photo of a rocket at dusk", "a photo of a rocket in daylight"),
    "motorcycle": ("a photo of a red motorcycle", "a photo of a blue motorcycle"),
    "flower": ("a photo of an orange dahlia", "a photo of a sunflower"),
    "china": ("a photo of a pagoda in summer", "a photo of a pagoda in winter"),
    "grace_hopper": ("a photo of a woman in uniform", "a pencil drawing of a woman in uniform"),
}
#: Image-guided pairs: content photo -> reference (appearance) photo.
GUIDED: dict[str, str] = {
    "astronaut": "grace_hopper",
    "grace_hopper": "astronaut",
    "china": "rocket",
    "rocket": "china",
    "coffee": "flower",
    "flower": "coffee",
}


def _load_photo(key: str) -> Image.Image:
    """The full-size RGB photo `key` of `PHOTOS`, read from the installed package that ships it."""
    if key in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{key}.jpg")).convert("RGB")
    if key == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return Image.open(f).convert("RGB")
    import skimage.data

    if key == "motorcycle":
        arr = skimage.data.stereo_motorcycle()[0]
    else:
        fn = {"hubble": "hubble_deep_field", "tissue": "immunohistochemistry"}.get(key, key)
        arr = getattr(skimage.data, fn)()
    img = Image.fromarray(np.asarray(arr))
    return img.convert("RGB")


# ------------------------------------------------------------------------------------------ derived conditions
def canny_edges(img: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """img2img-turbo's Canny condition: white (255) edges on black, replicated to 3 channels (RGB).

    img2img-turbo calls `cv2.Canny(rgb, 100, 200)`: no Gaussian smoothing, 3x3 Sobel, L1 gradient magnitude
    |gx| + |gy| (per channel, the strongest channel wins) and thresholds on the 0-255 scale. We use
    `skimage.feature.canny` on the 8-bit luma with `sigma=0` (no smoothing, like cv2) and the thresholds divided
    by sqrt(2), because skimage's magnitude is the L2 norm, which is up to sqrt(2) smaller than the L1 norm.
    (skimage's default sigma=1 with 100/200 keeps only about half of cv2's edges.) Measured against
    opencv-python-headless 5.0 on 7 photos at 64, 128 and 512 px: F1 about 0.90 with a 1-pixel tolerance.
    """
    from skimage.feature import canny

    gray = np.asarray(img.convert("L"))
    edges = canny(gray, sigma=0.0, low_threshold=low / math.sqrt(2), high_threshold=high / math.sqrt(2))
    return Image.fromarray(np.where(edges, 255, 0).astype(np.uint8), mode="L").convert("RGB")


def sketch_from_photo(img: Image.Image) -> Image.Image:
    """A binary line sketch: BLACK strokes (0) on a WHITE background (255), RGB.

    The polarity of a pencil drawing, which is what pix2pix-Turbo's sketch model takes (`inference_paired.py`
    binarises with `F.to_tensor(img) < 0.5`, so dark strokes become 1). Methods wanting white edges on black
    (PITI's HED edge maps, before its distance transform) invert it.
    Strokes are smoothed Canny edges (sigma = 1.5 * sqrt(side / 64), skimage's default relative thresholds) with
    specks of at most side/16 pixels removed, so they read as a few contour lines rather than texture.
    """
    from skimage.feature import canny
    from skimage.morphology import remove_small_objects

    side = min(img.size)
    gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    edges = canny(gray, sigma=1.5 * math.sqrt(side / 64.0))
    speck = max(2, side // 16)
    try:
        edges = remove_small_objects(edges, max_size=speck, connectivity=2)
    except TypeError:  # scikit-image < 0.26 has only min_size (strictly smaller)
        edges = remove_small_objects(edges, min_size=speck + 1, connectivity=2)
    return Image.fromarray(np.where(edges, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def label_colormap(n: int) -> np.ndarray:
    """The bit-shift label colour map of PASCAL VOC / pix2pixHD / SPADE (`labelcolormap`): n x 3 uint8.

    Entry 0 is black. PITI's COCO-Stuff masks use this map shifted by one (class i gets entry i + 1; see
    datasets.piti_data.piti_label_colormap).
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def semantic_mask(img: Image.Image, n_classes: int = 5, n_segments: int = 48) -> Image.Image:
    """A coarse colour-coded region mask DERIVED from a photo (not a human label map), RGB.

    SLIC superpixels (`n_segments`, compactness 10) are grouped by their mean CIELAB colour with KMeans
    (`n_classes` clusters, random_state 0, so it is deterministic); clusters are numbered 1..n by increasing
    lightness and painted with entries 1..n of `label_colormap` (dark red, green, olive, navy, purple, ...). So
    a colour means "a region of similar colour, ranked by brightness", not an object class.
    """
    from skimage.color import rgb2lab
    from skimage.segmentation import slic
    from sklearn.cluster import KMeans

    rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    segments = slic(rgb, n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1)
    lab = rgb2lab(rgb)
    ids = np.unique(segments)
    feats = np.stack([lab[segments == i].mean(axis=0) for i in ids])
    k = min(n_classes, len(ids))
    km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(feats)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(km.cluster_centers_[:, 0], kind="stable")] = np.arange(k)
    seg_label = np.zeros(segments.max() + 1, dtype=np.int64)
    seg_label[ids] = rank[km.labels_] + 1
    palette = label_colormap(n_classes + 1)
    return Image.fromarray(palette[seg_label[segments]], mode="RGB")


# ---------------------------------------------------------------------------------------------------- building
def suite_root(resolution: int = DEFAULT_RESOLUTION) -> Path:
    """Where the suite at `resolution` lives: `<cache>/datasets/sample-v1/<resolution>px` (not created here)."""
    from eval.store import cache_dir

    return cache_dir() / "datasets" / SUITE_VERSION / f"{int(resolution)}px"


def ensure_suite(resolution: int = DEFAULT_RESOLUTION, *, progress: bool = False) -> Path:
    """Return the built suite folder at `resolution`, building it first if it is not in the cache yet."""
    root = suite_root(resolution)
    if (root / MANIFEST).is_file():
        return root
    if root.exists():
        raise DataError(f"the sample suite folder {root} exists but is incomplete (no {MANIFEST}); delete it and "
                        "run again to rebuild it.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        build_suite(tmp, resolution, progress=progress)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / MANIFEST).is_file():  # not a concurrent builder that won the race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _save_png(img: Image.Image, path: Path) -> None:
    from eval.store import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def build_suite(dest: str | os.PathLike, resolution: int = DEFAULT_RESOLUTION, *, progress: bool = False) -> Path:
    """Write the whole suite at `resolution` into the (empty or new) folder `dest`; return it.

    Deterministic: the same installed packages give byte-identical files (PNG has no timestamps; KMeans is
    seeded). `ensure_suite` is the cached entry point; this is the builder it runs in a temporary folder.
    """
    from tqdm.auto import tqdm

    from eval.store import atomic_write_json, atomic_write_text, sha256_file

    if resolution < 16:
        raise ValueError(f"the sample suite needs a resolution of at least 16 px, got {resolution}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    keys = sorted(set(TEST_COLOR + TRAIN_COLOR + TEST_GRAY + TRAIN_GRAY + tuple(GUIDED.values())))
    photos: dict[str, Image.Image] = {}
    for key in tqdm(keys, desc="sample suite: photos", disable=not progress):
        photos[key] = prepare(_load_photo(key), resolution, resample=Image.Resampling.LANCZOS)

    def caption(key: str) -> str:
        return PHOTOS[key].caption

    # (a) unpaired colour -> black-and-white, img2img-turbo layout
    u = dest / "unpaired"
    for split, color, gray in (("train", TRAIN_COLOR, TRAIN_GRAY), ("test", TEST_COLOR, TEST_GRAY)):
        for key in color:
            _save_png(photos[key], u / f"{split}_A" / f"{key}.png")
        for key in gray:
            _save_png(photos[key], u / f"{split}_B" / f"{key}.png")
    atomic_write_text(u / "fixed_prompt_a.txt", UNPAIRED_PROMPTS[0] + "\n")
    atomic_write_text(u / "fixed_prompt_b.txt", UNPAIRED_PROMPTS[1] + "\n")

    # (b, e, f) paired conditions -> photo, pix2pix-Turbo layout
    derive: dict[str, Callable[[Image.Image], Image.Image]] = {
        "paired": canny_edges,
        "mask": semantic_mask,
        "sketch": sketch_from_photo,
    }
    for folder, fn in derive.items():
        for split, keys_ in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
            for key in tqdm(keys_, desc=f"sample suite: {folder}/{split}", disable=not progress):
                _save_png(fn(photos[key]), dest / folder / f"{split}_A" / f"{key}.png")
                _save_png(photos[key], dest / folder / f"{split}_B" / f"{key}.png")
            atomic_write_json(dest / folder / f"{split}_prompts.json", {f"{k}.png": caption(k) for k in keys_})

    # (c) text edits, folder layout
    for key in EDITS:
        _save_png(photos[key], dest / "edit" / f"{key}.png")
    atomic_write_json(dest / "edit" / "prompts.json",
                      {f"{k}.png": {"src": s, "tgt": t} for k, (s, t) in EDITS.items()})

    # (d) image-guided: content + reference, folder layout
    for content, ref in GUIDED.items():
        _save_png(photos[content], dest / "guided" / f"{content}.png")
        _save_png(photos[ref], dest / "guided" / "references" / f"{ref}.png")
    atomic_write_json(dest / "guided" / "prompts.json", {
        f"{c}.png": {"src": caption(c), "tgt": caption(r), "reference": f"references/{r}.png"}
        for c, r in GUIDED.items()
    })

    atomic_write_text(dest / "README.md", _readme(resolution))
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != MANIFEST)
    atomic_write_json(dest / MANIFEST, {
        "version": SUITE_VERSION,
        "resolution": resolution,
        "sources": {k: {"source": PHOTOS[k].source, "caption": PHOTOS[k].caption, "license": PHOTOS[k].license}
                    for k in keys},
        "packages": _package_versions(),
        "files": {p.relative_to(dest).as_posix(): sha256_file(p) for p in files},
    })
    return dest


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("scikit-image", "scikit-learn", "matplotlib", "pillow", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def verify_suite(root: str | os.PathLike) -> list[str]:
    """Files of a built suite whose sha256 differs from its manifest (missing files included); [] when intact."""
    from eval.store import sha256_file

    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [MANIFEST]
    bad = []
    for rel, digest in manifest.get("files", {}).items():
        p = root / rel
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(rel)
    return bad


def _readme(resolution: int) -> str:
    lines = [
        f"# i2i-zoo sample suite ({SUITE_VERSION}, {resolution} px)",
        "",
        "Built by `datasets/suite.py` from real photos shipped in installed Python packages; no download.",
        f"Every photo is resized (shorter side to {resolution}, LANCZOS) and centre-cropped to a square.",
        "",
        "- unpaired/: A = colour photos, B = black-and-white photos (img2img-turbo unpaired layout).",
        "- paired/: A = Canny edges (white on black; skimage, sigma 0, thresholds 100/200 on cv2's L1 scale),",
        "  B = photo (pix2pix-Turbo paired layout, captions in *_prompts.json).",
        "- mask/: A = coarse colour-coded regions DERIVED from the photo (SLIC superpixels + KMeans colour clusters,",
        "  ranked by lightness, VOC/pix2pixHD colour map): not human labels.",
        "- sketch/: A = binary sketch, black strokes on white (smoothed Canny edges), B = photo.",
        "- edit/: photos + prompts.json with source/target prompts written for each photo.",
        "- guided/: content photos + references/ appearance photos + prompts.json.",
        "",
        "## Photos",
    ]
    for p in PHOTOS.values():
        lines.append(f"- {p.key}: {p.source}. \"{p.caption}\". Licence: {p.license}.")
    return "\n".join(lines) + "\n"
