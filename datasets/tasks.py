"""The task registry: named benchmark tasks (bundled sample suite, known public datasets) and user folders.

A registry entry is a factory `resolution -> Task`, so `get_task(name, resolution=128)` gives the same task
prepared at another size. Listing and getting tasks only builds small Task objects: no file is read and torch is
not imported; data is touched when `task.load()` runs. A task whose dataset is missing fails at load time with
the command that downloads it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from eval.vocab import KINDS, METRICS  # the shared vocabulary, re-exported

from . import layouts
from .errors import DataError
from .recipes import Recipe, get_recipe
from .sample import Sample, Task
from .suite import DEFAULT_RESOLUTION, SUITE_VERSION, ensure_suite

#: Which metrics apply to each kind (what the papers of that kind report and the data supports).
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    # CycleGAN-Turbo: FID (vs target domain) + DINO structure (vs input); CLIP score vs the target prompt;
    # pix2pix-zero's CLIP accuracy (the fixed domain prompts are its source/target texts) and LPIPS to the input.
    # dino_struct_v2: the held-out structure encoder, shown next to dino_struct (DiffuseIT optimises DINO ViT-B/8).
    "unpaired": ("fid", "kid", "dino_struct", "dino_struct_v2", "clip_score", "clip_accuracy", "lpips"),
    # pix2pix-Turbo: FID vs the test targets, plus per-pair fidelity to the ground truth.
    "paired": ("fid", "kid", "lpips", "psnr", "ssim", "clip_score"),
    # pix2pix-zero: CLIP accuracy + structure distance; also CLIP score/directional and LPIPS to the input.
    "text-edit": ("clip_accuracy", "clip_score", "clip_directional", "dino_struct", "dino_struct_v2", "lpips"),
    # DiffuseIT image-guided: structure kept from the content (DINO), change measured by LPIPS.
    "image-guided": ("dino_struct", "dino_struct_v2", "lpips"),
    # PITI: FID vs real photos; ground truth exists (the derived masks/sketches come from the photos).
    # LPIPS and SSIM to the target photo, CLIP score against the captions.
    "mask-to-image": ("fid", "kid", "lpips", "ssim", "clip_score"),
    "sketch-to-image": ("fid", "kid", "lpips", "ssim", "clip_score"),
}

TaskFactory = Callable[[int | None], Task]
_REGISTRY: dict[str, TaskFactory] = {}


def _validate(task: Task) -> Task:
    if not isinstance(task, Task):
        raise TypeError(f"a task factory must return a Task, got {type(task).__name__}")
    if not task.name or not isinstance(task.name, str):
        raise ValueError("a task needs a non-empty name")
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name!r}: unknown kind {task.kind!r}; kinds: {', '.join(KINDS)}")
    unknown = [m for m in task.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"task {task.name!r}: unknown metric(s) {unknown}; metrics: {', '.join(METRICS)}")
    if task.direction not in ("a2b", "b2a"):
        raise ValueError(f"task {task.name!r}: direction must be 'a2b' or 'b2a', got {task.direction!r}")
    return task


def register_task(
    task: Task | TaskFactory | None = None, *, name: str | None = None, replace: bool = False
) -> Any:
    """Register a Task, or a factory `resolution -> Task` (usable as a decorator: `@register_task(name=...)`).

    The task is validated (kind, metric names, direction). Registering a taken name raises unless
    `replace=True`. Returns what was registered.
    """
    if task is None:
        return lambda t: register_task(t, name=name, replace=replace)
    if isinstance(task, Task):
        fixed = task

        def factory(resolution: int | None) -> Task:
            if resolution is None or resolution == fixed.resolution:
                return fixed
            return _at_resolution(fixed, resolution)

        probe = _validate(task)
    else:
        factory = task
        probe = _validate(factory(None))
    key = name or probe.name
    if key != probe.name:
        raise ValueError(f"register_task: name {key!r} differs from the task's own name {probe.name!r}")
    if key in _REGISTRY and not replace and _REGISTRY[key](None) != probe:
        # re-registering an identical task (a module imported twice) is harmless; a different one is a clash
        raise ValueError(f"a different task named {key!r} is already registered; pass replace=True to override it")
    _REGISTRY[key] = factory
    return task


def get_task(name: str, *, resolution: int | None = None) -> Task:
    """The registered task `name`, optionally at another `resolution` (pixels, square).

    An unknown name raises DataError listing the known names and the closest match.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        known = task_names()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"unknown task {name!r}.{hint} Known tasks: {', '.join(known)}. A folder of your own works too: "
            "datasets.task_from_folder(path)."
        )
    return _validate(factory(resolution))


def list_tasks(*, kind: str | None = None, bundled: bool | None = None) -> list[Task]:
    """The registered tasks (at their default resolution), sorted by name; optionally one `kind` and/or only
    (non-)bundled ones. Cheap: builds Task objects only, reads no data."""
    out = []
    for n in sorted(_REGISTRY):
        t = _REGISTRY[n](None)
        if (kind is None or t.kind == kind) and (bundled is None or t.bundled == bundled):
            out.append(t)
    return out


def task_names() -> list[str]:
    """The names of the registered tasks, sorted."""
    return sorted(_REGISTRY)


def _at_resolution(task: Task, resolution: int) -> Task:
    """The same task with every sample prepared to `resolution` (for tasks registered as fixed Task objects)."""
    from dataclasses import replace

    resample = _resample_for(task.kind)

    def loader() -> Sequence[Sample]:
        samples = task.loader()
        prep = lambda s: layouts.prepare_sample(s, resolution, condition_resample=resample)
        if isinstance(samples, layouts.SampleList):
            return samples.map(prep)
        return [prep(s) for s in samples]

    return replace(task, resolution=resolution, loader=loader)


def _resample_for(kind: str) -> Image.Resampling:
    # Colour-coded masks must keep their exact colours; everything else is resized smoothly.
    return Image.Resampling.NEAREST if kind == "mask-to-image" else Image.Resampling.LANCZOS


# ------------------------------------------------------------------------------------------- the sample suite
_SUITE_TASKS = (
    # name, kind, folder, description
    ("sample-unpaired", "unpaired", "unpaired",
     "Colour photos -> black-and-white photos (unpaired; FID reference: 8 real black-and-white photos)."),
    ("sample-paired", "paired", "paired",
     "Canny edge map -> photo (paired, img2img-turbo's Canny 100/200), with captions."),
    ("sample-edit", "text-edit", "edit",
     "Text-guided edits of real photos (cat -> dog, coffee -> tea, ...) with source/target prompts."),
    ("sample-guided", "image-guided", "guided",
     "Content photo + reference (appearance) photo."),
    ("sample-mask", "mask-to-image", "mask",
     "Coarse colour-coded region mask (derived by colour clustering, not human labels) -> photo."),
    ("sample-sketch", "sketch-to-image", "sketch",
     "Binary sketch (black strokes on white, derived from edges) -> photo."),
)


def _suite_factory(name: str, kind: str, folder: str, description: str) -> TaskFactory:
    def factory(resolution: int | None) -> Task:
        res = int(resolution or DEFAULT_RESOLUTION)

        def root() -> Path:
            return ensure_suite(res) / folder

        if kind == "unpaired":
            loader = lambda: layouts.load_unpaired(root(), split="test", resolution=res)
            refs = lambda: layouts.unpaired_reference_paths(root(), split="test")
        elif kind in ("text-edit", "image-guided"):
            require = ("src", "tgt") if kind == "text-edit" else ("reference",)
            loader = lambda: layouts.load_folder(root(), resolution=res, require=require)
            refs = None
        else:
            loader = lambda: layouts.load_paired(root(), split="test", resolution=res,
                                                 condition_resample=_resample_for(kind))
            refs = lambda: layouts.paired_reference_paths(root(), split="test")
        return Task(name=name, kind=kind, description=description + f" Bundled, {res} px.", loader=loader,
                    metrics=DEFAULT_METRICS[kind], direction="a2b", resolution=res, reference_loader=refs,
                    dataset=f"{SUITE_VERSION}/{folder}", split="test", bundled=True)

    return factory


# ----------------------------------------------------------------------------------------- public datasets
_RECIPE_TASKS = (
    # name, recipe, kind, direction, default resolution, description
    ("horse2zebra", "horse2zebra", "unpaired", "a2b", 256, "Horse -> zebra (CycleGAN test split)."),
    ("zebra2horse", "horse2zebra", "unpaired", "b2a", 256, "Zebra -> horse (CycleGAN test split)."),
    ("summer2winter", "summer2winter_yosemite", "unpaired", "a2b", 256, "Yosemite summer -> winter (CycleGAN)."),
    ("winter2summer", "summer2winter_yosemite", "unpaired", "b2a", 256, "Yosemite winter -> summer (CycleGAN)."),
    ("edges2shoes", "edges2shoes", "paired", "a2b", 256, "Edge map -> shoe photo (pix2pix val split)."),
    ("edges2handbags", "edges2handbags", "paired", "a2b", 256, "Edge map -> handbag photo (pix2pix val split)."),
    ("fill50k", "my_fill50k", "paired", "a2b", 512, "Circle outline -> filled circle (img2img-turbo fill50k)."),
)


def _dataset_dir(task_name: str, recipe: Recipe) -> Path:
    from .recipes import data_root

    path = data_root() / recipe.name
    if not path.is_dir() or not any(path.iterdir()):
        raise DataError(
            f"task {task_name!r} needs the {recipe.name} dataset, which is not at {path}. Download it with "
            f"`python benchmark.py data download {recipe.name}` (needs network; licence: {recipe.license}), or "
            f"unpack it there by hand with the layout: {recipe.expected_layout}. Set I2I_ZOO_DATA to use "
            "another data root."
        )
    if recipe.layout == "aligned" and not (path / "test_prompts.json").is_file():
        if not (path / "val").is_dir():
            raise DataError(f"{path} has neither test_A/ test_B/ test_prompts.json nor pix2pix's val/ folder; "
                            f"expected layout: {recipe.expected_layout}")
        # unpacked by hand: derive the paired test split from val/ once (what `download` does)
        layouts.aligned_to_paired(path, path, split="val", out_split="test", prompt=recipe.caption or "")
    return path


def _recipe_factory(name: str, recipe_name: str, kind: str, direction: str, default_res: int,
                    description: str) -> TaskFactory:
    def factory(resolution: int | None) -> Task:
        recipe = get_recipe(recipe_name)
        res = int(resolution or default_res)
        if kind == "unpaired":
            loader = lambda: layouts.load_unpaired(_dataset_dir(name, recipe), split="test", direction=direction,
                                                   resolution=res, default_prompts=recipe.prompts)
            refs = lambda: layouts.unpaired_reference_paths(_dataset_dir(name, recipe), split="test",
                                                            direction=direction)
        else:
            loader = lambda: layouts.load_paired(_dataset_dir(name, recipe), split="test", resolution=res,
                                                 default_prompt=recipe.caption)
            refs = lambda: layouts.paired_reference_paths(_dataset_dir(name, recipe), split="test")
        return Task(name=name, kind=kind, description=description + f" Download: {recipe.name}.", loader=loader,
                    metrics=DEFAULT_METRICS[kind], direction=direction, resolution=res, reference_loader=refs,
                    dataset=recipe.name, split="test", bundled=False)

    return factory


# ------------------------------------------------------------------------------------------------ user folders
_COMPATIBLE = {
    "unpaired": ("unpaired",),
    "paired": ("paired", "aligned"),
    "mask-to-image": ("paired", "aligned"),
    "sketch-to-image": ("paired", "aligned"),
    "text-edit": ("folder",),
    "image-guided": ("folder",),
}


def task_from_folder(
    path: str | os.PathLike,
    kind: str | None = None,
    *,
    name: str | None = None,
    split: str = "test",
    direction: str = "a2b",
    resolution: int | None = None,
    prompts: str | os.PathLike | None = None,
    default_prompts: tuple[str, str] | None = None,
    default_prompt: str | None = None,
    metrics: Sequence[str] | None = None,
    register: bool = False,
) -> Task:
    """A Task over a folder of your own, in any of the layouts of `datasets.layouts` (detected).

    `kind` defaults to what the layout implies (unpaired / paired; for a plain folder: image-guided when its
    prompts name references, else text-edit). The folder structure and prompt files are checked now (errors are
    raised here); pixels are read when the task is loaded. `split` is "test" or "train" for the A/B layouts
    ("val" for pix2pix aligned data). `register=True` also adds it to the registry.
    """
    root = Path(path)
    layout = layouts.detect_layout(root)
    if kind is None:
        kind = _infer_kind(root, layout, prompts)
    if kind not in KINDS:
        raise DataError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
    if layout not in _COMPATIBLE[kind]:
        raise DataError(
            f"{root} holds the {layout!r} layout, but a {kind!r} task needs the {' or '.join(_COMPATIBLE[kind])} "
            "layout (see datasets/layouts.py)."
        )
    loader: Callable[[], Sequence[Sample]]
    refs: Callable[[], Sequence[str]] | None = None
    if layout == "unpaired":
        loader = lambda: layouts.load_unpaired(root, split=split, direction=direction, resolution=resolution,
                                               default_prompts=default_prompts)
        refs = lambda: layouts.unpaired_reference_paths(root, split=split, direction=direction)
    elif layout == "paired":
        loader = lambda: layouts.load_paired(root, split=split, resolution=resolution,
                                             condition_resample=_resample_for(kind), default_prompt=default_prompt)
        refs = lambda: layouts.paired_reference_paths(root, split=split)
    elif layout == "aligned":
        aligned_split = "val" if split == "test" and not (root / "test").is_dir() else split
        loader = lambda: layouts.load_aligned(root, split=aligned_split, resolution=resolution,
                                              default_prompt=default_prompt)
    else:
        require = {"text-edit": ("tgt",), "image-guided": ("reference",)}[kind]
        loader = lambda: layouts.load_folder(root, prompts, resolution=resolution, require=require)
    loader()  # structural checks now (lazy pixels: no image is decoded here)
    task = _validate(Task(
        name=name or root.resolve().name,  # the folder's name: it becomes a directory name in run outputs
        kind=kind, description=f"User data at {root} ({layout} layout).",
        loader=loader, metrics=tuple(metrics) if metrics is not None else DEFAULT_METRICS[kind],
        direction=direction, resolution=resolution, reference_loader=refs, dataset=str(root), split=split,
        bundled=False,
    ))
    if register:
        register_task(task, replace=True)
    return task


def _infer_kind(root: Path, layout: str, prompts: str | os.PathLike | None) -> str:
    if layout == "unpaired":
        return "unpaired"
    if layout in ("paired", "aligned"):
        return "paired"
    path = Path(prompts) if prompts is not None else layouts.find_prompts_file(root)
    if path is None:
        raise DataError(f"{root} is a plain image folder without prompts.json/prompts.csv: pass kind= and a "
                        "prompts file (text-edit needs target prompts, image-guided needs references).")
    entries = layouts.read_prompts(path)
    return "image-guided" if any("reference" in e for e in entries.values()) else "text-edit"


def _register_builtins() -> None:
    for spec in _SUITE_TASKS:
        register_task(_suite_factory(*spec), name=spec[0])
    for spec in _RECIPE_TASKS:
        register_task(_recipe_factory(*spec), name=spec[0])
    from .piti_data import register_piti_tasks  # COCO-Stuff / ADE20K mask tasks (PITI)

    register_piti_tasks()
    from .pie_bench import register_pie_bench_task  # PIE-Bench (text-edit with edit masks)

    register_pie_bench_task()


_register_builtins()
