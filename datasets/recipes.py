"""Known public datasets: where to download them, what layout they unpack to, and a safe `download`.

Downloading is always a user action (`python benchmark.py data download <name>`), never a side effect of
listing or loading a task. A download is atomic: the archive goes to a temporary folder next to the
destination, its sha256 is checked when known (and recorded in `.i2i-zoo-download.json` either way), it is
unpacked and post-processed there (fixed prompt files for unpaired sets, the pix2pix A|B split for aligned sets),
its layout is validated, and only then is it renamed to `<data root>/<name>`. An interrupted download leaves no
half-written dataset behind. Only the standard library (urllib) is used.

The data root is `$I2I_ZOO_DATA`, else `<i2i-zoo cache>/datasets`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

MARKER = ".i2i-zoo-download.json"

_UNPAIRED_LAYOUT = "trainA/ trainB/ testA/ testB/ (CycleGAN) or train_A/ train_B/ test_A/ test_B/ (img2img-turbo)"
_ALIGNED_LAYOUT = "train/ val/ holding side-by-side A|B .jpg images (pix2pix); test_A/ test_B/ are written from val/"
_PAIRED_LAYOUT = "train_A/ train_B/ train_prompts.json test_A/ test_B/ test_prompts.json (pix2pix-Turbo)"


@dataclass(frozen=True)
class Recipe:
    """How to obtain one public dataset and what it looks like on disk."""

    name: str
    url: str
    layout: str  # "unpaired" | "aligned" | "paired": the layout after unpacking
    description: str
    license: str
    sha256: str | None = None  # of the archive; None when not published/verified
    prompts: tuple[str, str] | None = None  # fixed (A, B) prompts written for unpaired sets that have none
    caption: str | None = None  # the caption of every pair of an aligned set (they have none)
    notes: str = ""

    @property
    def expected_layout(self) -> str:
        """Human-readable description of the unpacked folder, for error messages and docs."""
        return {"unpaired": _UNPAIRED_LAYOUT, "aligned": _ALIGNED_LAYOUT, "paired": _PAIRED_LAYOUT}[self.layout]


_CYCLEGAN = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{}.zip"
_PIX2PIX = "https://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{}.tar.gz"

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "horse2zebra", _CYCLEGAN.format("horse2zebra"), "unpaired",
            "CycleGAN horse <-> zebra (ImageNet photos, 256x256; testA holds 120 horses).",
            "ImageNet images: non-commercial research and education only (ImageNet terms); cite CycleGAN.",
            prompts=("picture of a horse", "picture of a zebra"),
            notes="Prompts follow img2img-turbo's example ('picture of a zebra'); they are ours, not the dataset's.",
        ),
        Recipe(
            "summer2winter_yosemite", _CYCLEGAN.format("summer2winter_yosemite"), "unpaired",
            "CycleGAN summer <-> winter Yosemite (Flickr photos, 256x256).",
            "Flickr photos collected by the CycleGAN authors: research use; cite CycleGAN.",
            prompts=("a photo of Yosemite in summer", "a photo of Yosemite in winter"),
            notes="Prompts are ours (the dataset has none).",
        ),
        Recipe(
            "edges2shoes", _PIX2PIX.format("edges2shoes"), "aligned",
            "pix2pix edges -> shoes (UT Zappos50K, 256x256 A|B pairs, HED edges): train/ and val/.",
            "UT Zappos50K: research use; cite Yu & Grauman (CVPR 2014) and pix2pix.",
            caption="a photo of a shoe",
            notes="The caption is ours (pix2pix data has none); a large download (about 2 GB).",
        ),
        Recipe(
            "edges2handbags", _PIX2PIX.format("edges2handbags"), "aligned",
            "pix2pix edges -> handbags (iGAN Amazon handbags, 256x256 A|B pairs): train/ and val/.",
            "Amazon product photos collected for iGAN: research use; cite Zhu et al. (ECCV 2016) and pix2pix.",
            caption="a photo of a handbag",
            notes="The caption is ours (pix2pix data has none); a very large download (about 8 GB).",
        ),
        Recipe(
            "my_horse2zebra", "https://www.cs.cmu.edu/~img2img-turbo/data/my_horse2zebra.zip", "unpaired",
            "img2img-turbo's repack of horse2zebra with fixed_prompt_a.txt / fixed_prompt_b.txt.",
            "Derived from CycleGAN's horse2zebra (ImageNet terms: non-commercial research).",
            prompts=("picture of a horse", "picture of a zebra"),
            notes="The zip's own fixed prompt files take precedence; ours only fill in if they are missing.",
        ),
        Recipe(
            "my_fill50k", "https://www.cs.cmu.edu/~img2img-turbo/data/my_fill50k.zip", "paired",
            "img2img-turbo's paired example: ControlNet's fill50k (circle outlines -> filled circles) with captions.",
            "Synthetic data from ControlNet's training tutorial (Apache-2.0 repository).",
        ),
    )
}

#: Task names and short names that refer to a recipe.
ALIASES = {
    "zebra2horse": "horse2zebra",
    "summer2winter": "summer2winter_yosemite",
    "winter2summer": "summer2winter_yosemite",
    "fill50k": "my_fill50k",
}


def data_root() -> Path:
    """Where downloaded datasets live: `$I2I_ZOO_DATA`, else `<i2i-zoo cache>/datasets` (not created here)."""
    env = os.environ.get("I2I_ZOO_DATA")
    if env:
        return Path(env).expanduser()
    from eval.store import cache_dir

    return cache_dir() / "datasets"


def get_recipe(name: str) -> Recipe:
    """The recipe called `name` (or an alias such as a task name); unknown names list the known ones."""
    key = ALIASES.get(name, name)
    if key not in RECIPES:
        import difflib

        close = difflib.get_close_matches(name, list(RECIPES) + list(ALIASES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(sorted(RECIPES))}.")
    return RECIPES[key]


def dataset_path(name: str) -> Path:
    """The folder a recipe's dataset is (or would be) unpacked to: `<data root>/<recipe name>`."""
    return data_root() / get_recipe(name).name


def is_downloaded(name: str) -> bool:
    """Whether the dataset folder exists (downloaded here, or unpacked there by hand)."""
    path = dataset_path(name)
    return path.is_dir() and any(path.iterdir())


def download(
    name: str | Recipe,
    dest: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and unpack a dataset into `dest` (default `<data root>/<name>`); return `dest`.

    An existing complete download is returned as is (pass `force=True` to replace it). Raises DataError with the
    manual-download instructions when the URL cannot be reached, and when the checksum or layout is wrong.
    """
    from eval.store import atomic_write_json

    recipe = name if isinstance(name, Recipe) else get_recipe(name)
    dest = Path(dest) if dest is not None else data_root() / recipe.name
    if dest.exists() and not force:
        if (dest / MARKER).is_file():
            return dest
        raise DataError(
            f"{dest} already exists but was not completed by a download (no {MARKER}). If you unpacked it "
            f"yourself, use it as is; otherwise delete it and download again (or pass force=True)."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.download-", dir=dest.parent))
    try:
        archive = work / (recipe.url.rstrip("/").rsplit("/", 1)[-1] or "archive")
        digest, nbytes = _fetch(recipe, archive, dest, progress=progress, timeout=timeout)
        if recipe.sha256 and digest != recipe.sha256.lower():
            raise DataError(
                f"checksum mismatch for {recipe.url}: got sha256 {digest}, expected {recipe.sha256}. The download is "
                "corrupt or the file changed upstream; try again, or verify the file by hand."
            )
        unpacked = work / "unpacked"
        _extract(archive, unpacked)
        archive.unlink()
        content = _content_root(unpacked)
        _postprocess(recipe, content, progress=progress)
        atomic_write_json(content / MARKER, {
            "name": recipe.name,
            "url": recipe.url,
            "sha256": digest,
            "bytes": nbytes,
            "verified": bool(recipe.sha256),
            "downloaded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        })
        if dest.exists():  # force=True: swap out the old copy only now that the new one is complete
            old = work / "old"
            os.replace(dest, old)
        os.replace(content, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _fetch(recipe: Recipe, archive: Path, dest: Path, *, progress: bool, timeout: float) -> tuple[str, int]:
    """Stream the URL to `archive` with a progress bar; return (sha256, bytes)."""
    from tqdm.auto import tqdm

    url = recipe.url
    h = hashlib.sha256()
    n = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "i2i-zoo"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(archive, "wb") as out:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"downloading {recipe.name}", disable=not progress) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    n += len(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        raise DataError(
            f"cannot reach {url}: {reason}. No network? Download it elsewhere and unpack it to {dest} with the "
            f"layout: {recipe.expected_layout}"
            + (f". Then write fixed_prompt_a.txt / fixed_prompt_b.txt ({recipe.prompts[0]!r} / "
               f"{recipe.prompts[1]!r}) if they are missing" if recipe.prompts else "")
            + ". Set I2I_ZOO_DATA to use another data root."
        ) from e
    return h.hexdigest(), n


def _extract(archive: Path, out: Path) -> None:
    """Unpack a zip or tar(.gz) archive into `out`, refusing members that would land outside it."""
    out.mkdir(parents=True)
    root = out.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = (root / member).resolve()
                    if not target.is_relative_to(root):
                        raise DataError(f"{archive.name}: member {member!r} would be written outside the folder")
                zf.extractall(out)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(out, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    for m in tf.getmembers():
                        target = (root / m.name).resolve()
                        if not target.is_relative_to(root) or m.issym() or m.islnk():
                            raise DataError(f"{archive.name}: unsafe member {m.name!r}")
                    tf.extractall(out)
        else:
            raise DataError(f"{archive.name} is neither a zip nor a tar archive (a web page instead of the data?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DataError(f"{archive.name} is a corrupt archive ({e}); download it again.") from e


def _content_root(unpacked: Path) -> Path:
    """The dataset folder inside an unpacked archive: the single top-level folder, if that is all there is."""
    entries = [p for p in unpacked.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked


def _postprocess(recipe: Recipe, content: Path, *, progress: bool) -> None:
    """Make the unpacked folder self-describing and check its layout."""
    from eval.store import atomic_write_text

    from .layouts import aligned_to_paired, detect_layout

    if recipe.layout == "unpaired" and recipe.prompts:
        for fname, text in zip(("fixed_prompt_a.txt", "fixed_prompt_b.txt"), recipe.prompts):
            if not (content / fname).exists():
                atomic_write_text(content / fname, text + "\n")
    if recipe.layout == "aligned":
        if not (content / "val").is_dir():
            raise DataError(f"{recipe.url} did not unpack to the expected layout ({recipe.expected_layout}); "
                            f"found {sorted(p.name for p in content.iterdir())}")
        aligned_to_paired(content, content, split="val", out_split="test", prompt=recipe.caption or "",
                          progress=progress)
        return
    found = detect_layout(content)
    if found != recipe.layout:
        raise DataError(
            f"{recipe.url} unpacked to a {found!r} layout, expected {recipe.layout!r} ({recipe.expected_layout}); "
            f"found {sorted(p.name for p in content.iterdir())}"
        )
