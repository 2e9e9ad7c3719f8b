"""Run metrics over a run's samples: per-image metrics into a long table, distribution metrics into rows.

`evaluate_per_image` takes records, one per (method, task, sample):
    {"method", "task", "sample", "output": path | tensor, "input", "target", "reference", "mask": path | tensor | None,
     "src_prompt", "tgt_prompt": str | None}
and returns a pandas DataFrame with columns method, task, sample, metric, value, weights, note. A value that is
undefined for a sample (a metric needs a field the record lacks, or the sample failed) is NaN, never a string;
`note` says why. Values are cached on disk by (metric identity = name + version + preprocessing + options +
encoder provenance, content hashes of the images it reads, the prompts), so a resumed or repeated evaluation
recomputes nothing whose inputs are unchanged. Samples are batched by image size.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eval.metrics import DistributionMetric, PerImageMetric, get_metric
from eval.store import cache_dir, hash_array, hash_obj, kv_get, kv_put

COLUMNS = ("method", "task", "sample", "metric", "value", "weights", "note")
REQUIRED_FIELDS = ("method", "task", "sample", "output")
_IMAGE_FIELDS = ("input", "target", "reference", "mask")
_PROMPT_FIELDS = ("src_prompt", "tgt_prompt")
_ARG_NAMES = {"input": "inputs", "target": "targets", "reference": "references", "mask": "masks",
              "src_prompt": "src_prompts", "tgt_prompt": "tgt_prompts"}


def _cache_root(cache: bool | str | os.PathLike | None) -> Path | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        return cache_dir() / "metrics"
    return Path(cache)


def _load_record(rec: dict[str, Any]) -> dict[str, Any]:
    """Images as float 3 x H x W tensors in [0,1] plus their content hashes; a load failure becomes `error`."""
    from eval.images import load_image

    out: dict[str, Any] = {"error": None, "hash": {}}
    try:
        for field in ("output", *_IMAGE_FIELDS):
            value = rec.get(field)
            if value is None:
                out[field] = None
                continue
            img = load_image(value)
            out[field] = img
            out["hash"][field] = hash_array(img)
    except Exception as exc:  # a bad file must not stop the evaluation of the others
        out["error"] = f"{type(exc).__name__}: {exc}"
    for field in _PROMPT_FIELDS:
        out[field] = rec.get(field)
        out["hash"][field] = rec.get(field)
    return out


def _shape_signature(loaded: dict[str, Any], needs: tuple[str, ...]) -> tuple:
    return tuple(tuple(loaded[f].shape) for f in ("output", *needs) if f in ("output", *_IMAGE_FIELDS))


def _run_batch(metric: PerImageMetric, items: list[dict[str, Any]], needs: tuple[str, ...]) -> list[float]:
    import torch

    kwargs: dict[str, Any] = {}
    for need in needs:
        values = [it[need] for it in items]
        kwargs[_ARG_NAMES[need]] = torch.stack(values) if need in _IMAGE_FIELDS else values
    return [float(v) for v in metric(torch.stack([it["output"] for it in items]), **kwargs)]


def evaluate_per_image(records: Iterable[dict[str, Any]], metric_names: Sequence[str], *, preset: str = "paper",
                       device: str = "cpu", cache: bool | str | os.PathLike | None = True, batch_size: int = 8,
                       metric_options: dict[str, dict[str, Any]] | None = None, progress: bool = False):
    """Per-image metric values of `records` (see the module docstring) as a long DataFrame.

    `cache`: True (the project cache dir), a directory, or False/None (no cache). `metric_options`: per-metric
    options, e.g. {"clip_score": {"model": "ViT-B-32/openai"}, "lpips": {"net": "vgg"}}. The DataFrame's
    `attrs["metrics"]` holds each metric's info (direction, version, preprocessing, encoder provenance).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    metric_options = metric_options or {}
    metrics: dict[str, PerImageMetric] = {}
    for name in metric_names:
        m = get_metric(name, preset=preset, device=device, **metric_options.get(name, {}))
        if isinstance(m, DistributionMetric):
            raise ValueError(f"{name} is a distribution metric: use evaluate_distribution(gen, ref, [{name!r}])")
        metrics[name] = m
    identities = {name: m.identity() for name, m in metrics.items()}  # loads each encoder once, up front
    weights = {name: m.weights for name, m in metrics.items()}
    root = _cache_root(cache)

    records = list(records)
    for i, rec in enumerate(records):
        missing = [f for f in REQUIRED_FIELDS if rec.get(f) is None]
        if missing:
            raise ValueError(f"record {i} lacks {missing}; every record needs {REQUIRED_FIELDS}")

    rows: dict[tuple[int, str], dict[str, Any]] = {}

    def put(i: int, name: str, value: float, note: str = "") -> None:
        rec = records[i]
        rows[(i, name)] = {"method": rec["method"], "task": rec["task"], "sample": str(rec["sample"]), "metric": name,
                           "value": float(value), "weights": weights[name], "note": note}

    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc="per-image metrics", disable=not progress):
        chunk = {i: _load_record(records[i]) for i in range(start, min(start + batch_size, len(records)))}
        for name, metric in metrics.items():
            groups: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
            for i, loaded in chunk.items():
                if loaded["error"]:
                    put(i, name, math.nan, f"sample not loadable: {loaded['error']}")
                    continue
                needs = metric.required(loaded)
                absent = [n for n in needs if loaded.get(n) is None]
                if absent:
                    put(i, name, math.nan, f"record has no {', '.join(absent)}")
                    continue
                key = hash_obj(identities[name], loaded["hash"]["output"], [(n, loaded["hash"][n]) for n in needs])
                hit = kv_get(root, key) if root else None
                if isinstance(hit, dict) and "value" in hit:
                    put(i, name, hit["value"])
                    continue
                groups[(needs, _shape_signature(loaded, needs))].append((i, key))
            for (needs, _sig), members in groups.items():
                try:
                    values = _run_batch(metric, [chunk[i] for i, _ in members], needs)
                    results = [(i, key, v, "") for (i, key), v in zip(members, values)]
                except Exception:  # retry one by one so one bad sample does not take the batch down
                    results = []
                    for i, key in members:
                        try:
                            results.append((i, key, _run_batch(metric, [chunk[i]], needs)[0], ""))
                        except Exception as exc:
                            results.append((i, None, math.nan, f"{type(exc).__name__}: {exc}"))
                for i, key, value, note in results:
                    put(i, name, value, note)
                    if root and key is not None:
                        kv_put(root, key, {"value": value, "metric": name})
    ordered = [rows[(i, name)] for i in range(len(records)) for name in metrics]
    df = pd.DataFrame(ordered, columns=list(COLUMNS))
    df["value"] = df["value"].astype(float)
    df.attrs["metrics"] = {name: m.info() for name, m in metrics.items()}
    return df


def evaluate_distribution(gen: Any, ref: Any, metric_names: Sequence[str] = ("fid", "kid"), *, preset: str = "paper",
                          device: str = "cpu", cache: bool = True,
                          metric_options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Distribution metrics of `gen` against `ref` (folders, file lists, feature arrays or [0,1] tensors).

    Features of each set are computed once (and cached) and shared by all metrics. Returns one dict per metric:
    metric, value, n_gen, n_ref, weights, encoder, mode, version (+ seed, num_subsets, subset_size for KID).
    """
    metric_options = metric_options or {}
    metrics = []
    for name in metric_names:
        m = get_metric(name, preset=preset, device=device, **metric_options.get(name, {}))
        if not isinstance(m, DistributionMetric):
            raise ValueError(f"{name} is a per-image metric: use evaluate_per_image(records, [{name!r}])")
        metrics.append(m)
    if not metrics:
        return []
    g, gd = metrics[0].features(gen, cache=cache)
    r, rd = metrics[0].features(ref, cache=cache)
    return [m.from_features(g, r, gd, rd) for m in metrics]
