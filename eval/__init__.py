"""Evaluation layer of i2i-zoo: perceptual encoders, metrics, offline weight assets, per-run evaluation.

Importing `eval` imports no torch: the public names below resolve lazily to their modules on first access.

    get_metric(name, *, preset, device, **options), list_metrics(), metrics_for_kind(kind)   eval.metrics
    compute_fid(gen, ref, ...), compute_kid(gen, ref, *, seed, ...)                          eval.metrics
    evaluate_per_image(records, metric_names, ...), evaluate_distribution(gen, ref, ...)      eval.evaluate
    load_inception / load_dino / load_clip / load_lpips(..., preset, device)                 the encoders
    fetch(), status(), list_assets()                                                          eval.assets

The run harness (`eval.harness`: run, rerun, perf, train, evaluate_folders, load_run) drives whole benchmark runs;
`eval.errors` holds the project's exception hierarchy and `eval.vocab` its shared vocabulary.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "get_metric": "eval.metrics",
    "list_metrics": "eval.metrics",
    "metrics_for_kind": "eval.metrics",
    "metric_specs": "eval.metrics",
    "register_metric": "eval.metrics",
    "compute_fid": "eval.metrics",
    "compute_kid": "eval.metrics",
    "KINDS": "eval.metrics",
    "evaluate_per_image": "eval.evaluate",
    "evaluate_distribution": "eval.evaluate",
    "load_inception": "eval.inception",
    "load_dino": "eval.dino",
    "load_clip": "eval.clip",
    "load_lpips": "eval.lpips_net",
    "fetch": "eval.assets",
    "status": "eval.assets",
    "list_assets": "eval.assets",
    "PRESETS": "eval.encoders",
    "EncoderInfo": "eval.encoders",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
