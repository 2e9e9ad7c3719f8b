"""`evaluate_folders`: the benchmark's metrics on images you already have (two folders, or two lists)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.errors import InputError

ImageSet = str | os.PathLike | Sequence[Any]


def _as_items(images: ImageSet | None, what: str) -> dict[str, Any] | None:
    """{sample id: image}: a folder's image files keyed by file stem, or a list's items keyed by position."""
    from eval.images import IMAGE_EXTENSIONS

    if images is None:
        return None
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.is_dir():
            raise InputError(f"{what}: {root} is not a folder of images")
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        if not files:
            raise InputError(f"{what}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}")
        return {p.stem: p for p in files}
    return {str(i): im for i, im in enumerate(images)}


def _prompts(prompts: str | Sequence[str] | None, ids: list[str]) -> list[str | None]:
    if prompts is None or isinstance(prompts, str):
        return [prompts] * len(ids)
    if len(prompts) != len(ids):
        raise InputError(f"got {len(prompts)} prompts for {len(ids)} images")
    return list(prompts)


def evaluate_folders(outputs: ImageSet, inputs: ImageSet | None = None, *, targets: ImageSet | None = None,
                     references: ImageSet | None = None, metrics: Sequence[str] = ("lpips", "psnr", "ssim"),
                     src_prompts: str | Sequence[str] | None = None, tgt_prompts: str | Sequence[str] | None = None,
                     preset: str = "paper", device: str = "cpu", cache: bool = True) -> Any:
    """Per-image metrics of `outputs` against `inputs` / `targets` / `references`, one row per (image, metric).

    Each argument is a folder (images paired by file name stem) or a list of paths / PIL images / arrays /
    tensors (paired by position). Prompts: one string for all images, or one per image. Distribution metrics
    ("fid", "kid") compare `outputs` with `references` as sets and get one row each (sample "*").
    Returns a pandas DataFrame with columns sample, metric, value, weights, note.
    """
    import pandas as pd

    from eval.evaluate import evaluate_distribution, evaluate_per_image
    from eval.metrics import metric_specs

    specs = metric_specs()
    unknown = [m for m in metrics if m not in specs]
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(sorted(specs))}")
    outs = _as_items(outputs, "outputs")
    assert outs is not None
    sets = {"input": _as_items(inputs, "inputs"), "target": _as_items(targets, "targets"),
            "reference": _as_items(references, "references")}
    ids = list(outs)
    for field, items in sets.items():
        if items is not None and any(i not in items for i in ids):
            missing = [i for i in ids if i not in items][:5]
            raise InputError(f"no {field} image for output(s) {', '.join(missing)} (folders pair by file name, lists "
                             "by position)")
    src, tgt = _prompts(src_prompts, ids), _prompts(tgt_prompts, ids)
    records = [{"method": "-", "task": "-", "sample": i, "output": outs[i], "src_prompt": src[n], "tgt_prompt": tgt[n],
                **{f: (items[i] if items is not None else None) for f, items in sets.items()}}
               for n, i in enumerate(ids)]
    frames = []
    per = [m for m in metrics if specs[m].per_image]
    if per:
        frames.append(evaluate_per_image(records, per, preset=preset, device=device, cache=cache))
    dist = [m for m in metrics if not specs[m].per_image]
    if dist:
        if references is None:
            raise InputError(f"{', '.join(dist)} compare two sets of images: pass references=")
        ref = references if isinstance(references, (str, os.PathLike)) else list(sets["reference"].values())
        gen = outputs if isinstance(outputs, (str, os.PathLike)) else list(outs.values())
        rows = evaluate_distribution(gen, ref, dist, preset=preset, device=device, cache=cache)
        frames.append(pd.DataFrame([{"sample": "*", "metric": r["metric"], "value": r["value"],
                                     "weights": r.get("weights", ""), "note": f"n_gen={r.get('n_gen')}, "
                                     f"n_ref={r.get('n_ref')}"} for r in rows]))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return df.drop(columns=[c for c in ("method", "task") if c in df.columns])
