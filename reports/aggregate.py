"""Read a run directory into DataFrames and reduce it to one summary row per method x task x metric.

A run directory (file names in `eval.harness.rundir`) holds everything a report needs: outputs with timing
sidecars, failures, per-image and distribution metrics, metric metadata and the provenance manifest. `load_run`
gathers those files into a `Run` (no recomputation, no torch); `summarize_run` turns it into the long-form summary
that tables and figures share: mean, a seeded BCa-bootstrap 95% CI (`reports.stats.bca_ci`; percentile where BCa
is degenerate, named in `ci_method`), N (non-NaN values), the NaN count, the failure count, and the weights label.
NaNs are counted, never averaged (PIE-Bench's evaluation writes "nan" strings into its result tables: the
counter-example). Every function here is pure on DataFrames except the loader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.harness.rundir import (
    DISTRIBUTION_CSV,
    FAILURES,
    INPUTS,
    MANIFEST,
    METRIC_INFO,
    METRICS,
    OUTPUTS,
    PER_IMAGE_CSV,
    PERF_CSV,
    PROMPTS_JSON,
)
from eval.store import read_json

from .stats import bca_ci, group_rng

__all__ = [
    "MEMORY",
    "SPEED",
    "SUMMARY_COLUMNS",
    "Run",
    "aggregate_distribution",
    "aggregate_per_image",
    "aggregate_speed",
    "bootstrap_ci",
    "canonical_metric",
    "count_failures",
    "cpu_memory_measured",
    "load_run",
    "metric_direction",
    "summarize_run",
]

# Pseudo-metrics computed from the output sidecars (per-sample share of batch wall time, peak memory).
SPEED = "s_per_img"
MEMORY = "peak_mem_bytes"

INPUT_ROLES = ("condition", "reference", "target", "mask")  # optional companions of inputs/<task>/<sample>.png

PER_IMAGE_COLUMNS = ["method", "task", "sample", "metric", "value", "weights", "edit_type"]
DISTRIBUTION_COLUMNS = ["method", "task", "metric", "value", "n_gen", "n_ref", "weights"]
OUTPUT_COLUMNS = ["method", "task", "sample", "path", "seconds", "peak_mem_bytes", "mem_kind", "batch_size", "warmup"]
INPUT_COLUMNS = ["task", "sample", "input", *INPUT_ROLES]
FAILURE_COLUMNS = ["method", "task", "sample", "phase", "error", "traceback", "metric", "path"]
PERF_COLUMNS = [
    "method", "preset", "device", "batch_size", "latency_median_s", "latency_iqr_s", "throughput_img_s",
    "peak_mem_bytes", "network_calls", "network_time_s", "overhead",
]
SUMMARY_COLUMNS = [
    "method", "task", "kind", "metric", "source", "direction", "mean", "ci_lo", "ci_hi", "ci_half", "std",
    "n", "n_nan", "n_failed", "n_gen", "n_ref", "weights", "ci_method",
]

# Canonical metric names and the spellings that map onto them (lower-case, '-' and ' ' read as '_').
_ALIASES: dict[str, tuple[str, ...]] = {
    "fid": ("fid", "clean_fid", "fid_clean"),
    "kid": ("kid", "clean_kid", "kid_clean"),
    "dino_struct": ("dino_struct", "dinostruct", "dino_structure", "structure_distance", "struct_dist"),
    "dino_struct_v2": ("dino_struct_v2", "dinov2_struct"),
    "clip_score": ("clip_score", "clip", "clipscore", "clip_sim", "clip_similarity"),
    "clip_dir": ("clip_dir", "clip_directional", "clip_direction", "clip_dir_sim", "directional_clip"),
    "clip_acc": ("clip_acc", "clip_accuracy", "clipacc"),
    "lpips": ("lpips",),
    "psnr": ("psnr",),
    "ssim": ("ssim",),
}
_CANON = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}

# Fallback directions when metric_info.json does not declare one.
_DEFAULT_DIRECTION = {
    "fid": "lower", "kid": "lower", "dino_struct": "lower", "dino_struct_v2": "lower", "lpips": "lower",
    "clip_score": "higher",
    "clip_dir": "higher", "clip_acc": "higher", "psnr": "higher", "ssim": "higher", SPEED: "lower",
    MEMORY: "lower",
}


def canonical_metric(name: str) -> str:
    """The canonical name of a metric ("DINO-Struct" -> "dino_struct"), so tables find it whatever the spelling.

    Unknown names come back normalised (lower case, underscores) and keep their own identity.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return _CANON.get(key, key)


def metric_direction(metric: str, metric_info: dict[str, dict] | None = None) -> str | None:
    """"lower" or "higher" (which is better) for `metric`: metric_info.json first, then the built-in defaults.

    None when nobody knows, in which case tables mark no best value for that column.
    """
    info = (metric_info or {}).get(metric)
    if info is None:
        canon = canonical_metric(metric)
        info = next((v for k, v in (metric_info or {}).items() if canonical_metric(k) == canon), None)
    if isinstance(info, dict) and info.get("direction") in ("lower", "higher"):
        return str(info["direction"])
    return _DEFAULT_DIRECTION.get(canonical_metric(metric))


# ----------------------------------------------------------------------------------------------- statistics
def bootstrap_ci(
    values: Iterable[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """BCa bootstrap confidence interval of the mean of `values` (NaNs dropped first; percentile where BCa is
    degenerate): `reports.stats.bca_ci` without the method name. Fewer than two finite values give (nan, nan).
    Same seed, same interval."""
    lo, hi, _ = bca_ci(values, n_boot=n_boot, confidence=confidence, seed=seed)
    return (lo, hi)


def _summary(values: np.ndarray, rng: np.random.Generator, n_boot: int, confidence: float) -> dict[str, Any]:
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    n = int(finite.size)
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    lo, hi, how = bca_ci(finite, n_boot=n_boot, confidence=confidence, seed=rng)
    half = (hi - lo) / 2.0 if np.isfinite(lo) and np.isfinite(hi) else math.nan
    return {"mean": mean, "ci_lo": lo, "ci_hi": hi, "ci_half": half, "std": std, "n": n, "n_nan": int(x.size - n),
            "ci_method": how}


def _weights_label(labels: Iterable[Any]) -> str:
    """Combine weights labels: any "random" makes the number random; otherwise "real" if any source says real
    and none says something else; "unknown" when no source knows."""
    seen = {str(v).strip().lower() for v in labels if v is not None and not (isinstance(v, float) and math.isnan(v))}
    seen -= {"", "unknown", "none", "nan", "n/a"}  # n/a: the method has no weights (identity)
    # the weights kinds of eval.vocab: an authors' converted checkpoint is real, an untrained one is not comparable
    seen = {"real" if v == "converted-official" else "random" if v == "untrained" else v for v in seen}
    if "random" in seen:
        return "random"
    if seen and seen <= {"real"}:
        return "real"
    return "unknown"


# ----------------------------------------------------------------------------------------------- aggregation
def count_failures(
    failures: pd.DataFrame, expected: dict[str, int] | None = None
) -> dict[tuple[str, str, str | None], int]:
    """Failed samples per (method, task, metric): metric None for load/translate/save, the metric's name for
    "metric"-phase failures that name one (those that name none count against every metric of that pair).

    A failure without a sample (a method that could not even load) counts as the whole task: `expected[task]`
    samples when known, else 1.
    """
    out: dict[tuple[str, str, str | None], set[str]] = {}
    whole: dict[tuple[str, str, str | None], bool] = {}
    if failures is None or failures.empty:
        return {}
    for rec in failures.to_dict("records"):
        phase = str(rec.get("phase") or "")
        m = rec.get("metric")
        metric = canonical_metric(m) if phase == "metric" and isinstance(m, str) else None
        key = (str(rec.get("method")), str(rec.get("task")), metric)
        sample = rec.get("sample") if isinstance(rec.get("sample"), str) and rec.get("sample") else None
        if sample is None:
            whole[key] = True
        else:
            out.setdefault(key, set()).add(sample)
    counts: dict[tuple[str, str, str | None], int] = {}
    for key in set(out) | set(whole):
        if whole.get(key):
            counts[key] = max(int((expected or {}).get(key[1], 1)), len(out.get(key, ())))
        else:
            counts[key] = len(out[key])
    return counts


def _failed_for(counts: dict, method: str, task: str, metric: str | None) -> int:
    base = counts.get((method, task, None), 0)
    if metric is None:
        return base
    return base + counts.get((method, task, canonical_metric(metric)), 0)


def aggregate_per_image(
    per_image: pd.DataFrame,
    failures: pd.DataFrame | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    expected: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Per method x task x metric: mean, bootstrap CI, std, N (finite values), NaN count, failures, weights.

    `per_image` has columns method, task, sample, metric, value[, weights]. Duplicate (method, task, sample,
    metric) rows (a resumed run that appended) keep the last value.
    """
    rows: list[dict[str, Any]] = []
    if per_image is None or per_image.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    df = per_image.drop_duplicates(["method", "task", "sample", "metric"], keep="last")
    counts = count_failures(failures if failures is not None else pd.DataFrame(), expected)
    weights_col = "weights" in df.columns
    for (method, task, metric), g in df.groupby(["method", "task", "metric"], sort=True):
        vals = pd.to_numeric(g["value"], errors="coerce").to_numpy(dtype=np.float64)
        stats = _summary(vals, group_rng(seed, method, task, metric), n_boot, confidence)
        rows.append({
            "method": method, "task": task, "metric": metric, "source": "per_image", **stats,
            "n_failed": _failed_for(counts, method, task, metric), "n_gen": math.nan, "n_ref": math.nan,
            "weights": _weights_label(g["weights"]) if weights_col else "unknown",
        })
    return pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("kind", "direction")])


def aggregate_distribution(
    distribution: pd.DataFrame, failures: pd.DataFrame | None = None, *, expected: dict[str, int] | None = None
) -> pd.DataFrame:
    """Distribution metrics (FID, KID) pass through: one value per method x task x metric, with n_gen / n_ref.

    N is n_gen (how many generated images entered the statistic); there is no CI (a bootstrap over images
    would need the features, which a report does not recompute).
    """
    if distribution is None or distribution.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    counts = count_failures(failures if failures is not None else pd.DataFrame(), expected)
    rows = []
    df = distribution.drop_duplicates(["method", "task", "metric"], keep="last")
    for rec in df.sort_values(["method", "task", "metric"]).itertuples(index=False):
        value = pd.to_numeric(pd.Series([rec.value]), errors="coerce").iloc[0]
        finite = bool(np.isfinite(value))
        n_gen = pd.to_numeric(pd.Series([getattr(rec, "n_gen", math.nan)]), errors="coerce").iloc[0]
        n_ref = pd.to_numeric(pd.Series([getattr(rec, "n_ref", math.nan)]), errors="coerce").iloc[0]
        rows.append({
            "method": rec.method, "task": rec.task, "metric": rec.metric, "source": "distribution",
            "mean": float(value) if finite else math.nan, "ci_lo": math.nan, "ci_hi": math.nan,
            "ci_half": math.nan, "std": math.nan, "n": int(n_gen) if finite and np.isfinite(n_gen) else int(finite),
            "n_nan": 0 if finite else 1, "n_failed": _failed_for(counts, rec.method, rec.task, rec.metric),
            "n_gen": float(n_gen), "n_ref": float(n_ref),
            "weights": _weights_label([getattr(rec, "weights", None)]), "ci_method": "none",
        })
    return pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("kind", "direction")])


def aggregate_speed(
    outputs: pd.DataFrame,
    failures: pd.DataFrame | None = None,
    *,
    method_weights: dict[str, str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    expected: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Speed and memory per method x task from the output sidecars.

    SPEED ("s_per_img"): mean per-sample share of batch wall time, with a bootstrap CI; the warm-up batch (the
    first after a model loaded, flagged in its sidecar) is left out when other batches exist (source "sidecar");
    when a task had only warm-up batches they are all there is (source "sidecar_warmup", which tables flag).
    MEMORY ("peak_mem_bytes"): the maximum peak over the task's batches (peak is a max, not a mean), only where the
    sidecars measured the method's own allocations (`mem_kind` "cuda_allocated": the CUDA allocator's peak, reset
    before every batch). A CPU run's figure is the whole process's resident set (every model loaded so far, the
    allocator's cached pages, the metric encoders): it depends on the run order, not on the method, so it is not
    reported (`cpu_memory_measured` tells the tables to say so). N counts the samples that reported it.
    Weights come from the manifest's method label.
    """
    if outputs is None or outputs.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    counts = count_failures(failures if failures is not None else pd.DataFrame(), expected)
    rows = []
    for (method, task), g in outputs.groupby(["method", "task"], sort=True):
        w = (method_weights or {}).get(method, "unknown")
        nf = _failed_for(counts, method, task, None)
        secs = pd.to_numeric(g["seconds"], errors="coerce").to_numpy(dtype=np.float64)
        warm = g["warmup"].to_numpy(dtype=bool) if "warmup" in g else np.zeros(len(g), dtype=bool)
        source = "sidecar"
        if (~warm).any():  # the first batch after a model loads pays one-time costs: time the others
            secs = secs[~warm]
        elif warm.any():
            source = "sidecar_warmup"
        stats = _summary(secs, group_rng(seed, method, task, SPEED), n_boot, confidence)
        rows.append({"method": method, "task": task, "metric": SPEED, "source": source, **stats, "n_failed": nf,
                     "n_gen": math.nan, "n_ref": math.nan, "weights": w})
        mem = pd.to_numeric(g["peak_mem_bytes"], errors="coerce").to_numpy(dtype=np.float64)
        own = _own_allocation(g)
        mem = np.where(own, mem, np.nan)
        fin = mem[np.isfinite(mem)]
        if not fin.size:
            continue
        rows.append({"method": method, "task": task, "metric": MEMORY, "source": "sidecar",
                     "mean": float(fin.max()), "ci_lo": math.nan, "ci_hi": math.nan,
                     "ci_half": math.nan, "std": math.nan, "n": int(fin.size), "n_nan": int(mem.size - fin.size),
                     "n_failed": nf, "n_gen": math.nan, "n_ref": math.nan, "weights": w, "ci_method": "none"})
    return pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("kind", "direction")])


def _own_allocation(outputs: pd.DataFrame) -> np.ndarray:
    """Per sidecar: whether its peak memory is the method's own (CUDA allocator) rather than the process's RSS.
    A sidecar without `mem_kind` says nothing about what it measured, so its number is not shown either."""
    kinds = outputs["mem_kind"] if "mem_kind" in outputs else pd.Series([None] * len(outputs), index=outputs.index)
    return kinds.astype(str).str.startswith("cuda").to_numpy(dtype=bool)


def cpu_memory_measured(outputs: pd.DataFrame) -> bool:
    """Whether some sidecar recorded a CPU resident-set peak (which the tables leave out, with a note)."""
    if outputs is None or outputs.empty or "mem_kind" not in outputs:
        return False
    kinds = outputs["mem_kind"].astype(str)
    return bool(kinds.str.startswith("cpu").any())


# ----------------------------------------------------------------------------------------------- loading
@dataclass
class Run:
    """Everything a report reads from `runs/<name>/`, as plain dicts and DataFrames (empty when absent)."""

    root: Path
    manifest: dict[str, Any]
    per_image: pd.DataFrame
    distribution: pd.DataFrame
    metric_info: dict[str, dict[str, Any]]
    outputs: pd.DataFrame
    inputs: pd.DataFrame
    failures: pd.DataFrame
    perf: pd.DataFrame
    _methods: list[str] = field(default_factory=list, repr=False)
    _tasks: list[str] = field(default_factory=list, repr=False)
    #: {task: {sample: {"src": source prompt, "tgt": target prompt}}} from inputs/<task>/prompts.json
    prompts: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.root.name)

    @property
    def methods(self) -> list[str]:
        """Methods in manifest order, then any others found in outputs, failures or metrics (sorted)."""
        return list(self._methods)

    @property
    def tasks(self) -> list[str]:
        """Tasks in manifest order, then any others found in inputs, outputs, failures or metrics (sorted)."""
        return list(self._tasks)

    def task_info(self, task: str) -> dict[str, Any]:
        info = (self.manifest.get("tasks") or {}).get(task)
        return info if isinstance(info, dict) else {}

    def kind(self, task: str) -> str:
        """The task's kind from the manifest ("unpaired", "paired", "text-edit", ...), "other" when unknown."""
        return str(self.task_info(task).get("kind") or "other")

    def expected_samples(self) -> dict[str, int]:
        """Samples per task: the manifest's n_samples, else the number of prepared inputs."""
        out: dict[str, int] = {}
        for task in self.tasks:
            n = self.task_info(task).get("n_samples")
            if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0:
                out[task] = int(n)
            elif not self.inputs.empty:
                k = int((self.inputs["task"] == task).sum())
                if k:
                    out[task] = k
        return out

    def method_info(self, method: str) -> dict[str, Any]:
        info = (self.manifest.get("methods") or {}).get(method)
        return info if isinstance(info, dict) else {}

    def is_reference(self, method: str) -> bool:
        """Whether the method is a reference row (its card's `reference`, recorded in the manifest): a copy of the
        input or an oracle, shown apart from the competing methods and never marked best."""
        return bool(self.method_info(method).get("reference"))

    def method_weights(self, method: str) -> str:
        """"real", "random" or "unknown": the manifest's weights_label for the method."""
        label = self.method_info(method).get("weights_label")
        return _weights_label([label]) if label is not None else "unknown"


def _read_csv(path: Path, columns: list[str], str_cols: tuple[str, ...]) -> pd.DataFrame:
    """A CSV as a DataFrame with at least `columns`; absent, empty or unreadable files give an empty frame."""
    try:
        df = pd.read_csv(path, dtype={c: str for c in str_cols}, keep_default_na=True)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        df = pd.DataFrame(columns=columns)
    for c in columns:
        if c not in df.columns:
            df[c] = np.nan
    for c in str_cols:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def _is_input_companion(name: str) -> str | None:
    for role in INPUT_ROLES:
        if name.endswith(f".{role}.png"):
            return role
    return None


def _scan_inputs(root: Path) -> pd.DataFrame:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    base = root / INPUTS
    if base.is_dir():
        for task_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(task_dir.glob("*.png")):
                role = _is_input_companion(f.name)
                sample = f.name[: -len(f".{role}.png")] if role else f.stem
                rec = rows.setdefault((task_dir.name, sample), {"task": task_dir.name, "sample": sample})
                rec[role or "input"] = str(f)
    df = pd.DataFrame(list(rows.values()), columns=INPUT_COLUMNS)
    return df.sort_values(["task", "sample"], ignore_index=True) if not df.empty else df


def _scan_outputs(root: Path) -> pd.DataFrame:
    rows = []
    base = root / OUTPUTS
    if base.is_dir():
        for mdir in sorted(p for p in base.iterdir() if p.is_dir()):
            for tdir in sorted(p for p in mdir.iterdir() if p.is_dir()):
                stems = {f.stem for f in tdir.glob("*.png")} | {f.stem for f in tdir.glob("*.json")}
                for sample in sorted(stems):
                    png = tdir / f"{sample}.png"
                    side = read_json(tdir / f"{sample}.json", default={})
                    side = side if isinstance(side, dict) else {}
                    rows.append({
                        "method": mdir.name, "task": tdir.name, "sample": sample,
                        "path": str(png) if png.is_file() else None,
                        "seconds": _num(side.get("seconds")), "peak_mem_bytes": _num(side.get("peak_mem_bytes")),
                        "mem_kind": side.get("mem_kind"),
                        "batch_size": _num(side.get("batch_size")), "warmup": bool(side.get("warmup", False)),
                    })
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _scan_failures(root: Path) -> pd.DataFrame:
    rows = []
    base = root / FAILURES
    if base.is_dir():
        for f in sorted(base.rglob("*.json")):
            rec = read_json(f, default=None)
            rel = f.relative_to(base).parts
            if not isinstance(rec, dict):
                rec = {"error": "unreadable failure record"}
            extras = rec.get("extras") if isinstance(rec.get("extras"), dict) else {}
            sample = rec.get("sample", rel[2][:-5] if len(rel) >= 3 else None)
            rows.append({
                "method": str(rec.get("method") or (rel[0] if len(rel) >= 2 else "?")),
                "task": str(rec.get("task") or (rel[1] if len(rel) >= 3 else "?")),
                "sample": None if sample in (None, "", "*") else str(sample),
                "phase": str(rec.get("phase") or "?"),
                "error": str(rec.get("error") or ""),
                "traceback": str(rec.get("traceback") or ""),
                "metric": rec.get("metric") or extras.get("metric"),
                "path": str(f.relative_to(root)),
            })
    df = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    return df.sort_values(["method", "task", "phase", "path"], ignore_index=True) if not df.empty else df


def _ordered(preferred: Iterable[Any], *found: Iterable[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for x in preferred:
        seen.setdefault(str(x), None)
    rest = sorted({str(x) for col in found for x in col if isinstance(x, str) and x} - set(seen))
    return list(seen) + rest


def load_run(run_dir: str | Path) -> Run:
    """Gather a run directory into a `Run`: manifest, metrics, sidecars, inputs, failures, perf.

    Reads files only; every part may be missing (a partial run: no metrics yet, no perf, a method that failed
    entirely), in which case the matching frame is empty. The CSVs' id columns are read as strings so that a
    sample called "0001" stays "0001".
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist; run `python benchmark.py run` first")
    manifest = read_json(root / MANIFEST, default={})
    manifest = manifest if isinstance(manifest, dict) else {}
    ids = ("method", "task", "sample", "metric", "weights")
    per_image = _read_csv(root / METRICS / PER_IMAGE_CSV, PER_IMAGE_COLUMNS, (*ids, "edit_type"))
    per_image = per_image.dropna(subset=["method", "task", "metric"])
    per_image["value"] = pd.to_numeric(per_image["value"], errors="coerce")
    distribution = _read_csv(root / METRICS / DISTRIBUTION_CSV, DISTRIBUTION_COLUMNS,
                             ("method", "task", "metric", "weights"))
    distribution = distribution.dropna(subset=["method", "task", "metric"])
    for c in ("value", "n_gen", "n_ref"):
        distribution[c] = pd.to_numeric(distribution[c], errors="coerce")
    metric_info = read_json(root / METRICS / METRIC_INFO, default={})
    metric_info = {str(k): v for k, v in metric_info.items() if isinstance(v, dict)} if isinstance(
        metric_info, dict) else {}
    perf_path = root / PERF_CSV
    perf = (_read_csv(perf_path, PERF_COLUMNS, ("method", "preset", "device")) if perf_path.is_file()
            else pd.DataFrame(columns=PERF_COLUMNS))
    outputs = _scan_outputs(root)
    inputs = _scan_inputs(root)
    failures = _scan_failures(root)
    m_methods = manifest.get("methods") if isinstance(manifest.get("methods"), dict) else {}
    m_tasks = manifest.get("tasks") if isinstance(manifest.get("tasks"), dict) else {}
    # pseudo-methods such as "_inputs" (unreadable input files) appear in the failure list, not as table rows
    methods = [m for m in _ordered(m_methods, outputs["method"], failures["method"], per_image["method"],
                                   distribution["method"]) if not str(m).startswith("_")]
    tasks = _ordered(m_tasks, inputs["task"], outputs["task"], failures["task"], per_image["task"],
                     distribution["task"])
    # Weights column missing (older writers): fall back to the method's manifest label.
    prompts = {}
    for task in tasks:
        rec = read_json(root / INPUTS / task / PROMPTS_JSON, default={})
        if isinstance(rec, dict) and rec:
            prompts[task] = {str(k): v for k, v in rec.items() if isinstance(v, dict)}
    run = Run(root, manifest, per_image, distribution, metric_info, outputs, inputs, failures, perf, methods, tasks,
              prompts)
    for df in (run.per_image, run.distribution):
        if not df.empty:
            missing = df["weights"].isna()
            if missing.any():
                df.loc[missing, "weights"] = df.loc[missing, "method"].map(run.method_weights)
    return run


def summarize_run(run: Run, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The long-form summary every table and figure reads: per-image metrics, distribution metrics, speed and
    memory, one row per method x task x metric with kind, direction and weights (columns `SUMMARY_COLUMNS`).

    A metric row is labelled "random" when its own weights column says so, when the method's manifest label
    is random, or when metric_info marks the metric's model as random (e.g. a tiny DINO with random init).
    """
    expected = run.expected_samples()
    parts = [
        aggregate_per_image(run.per_image, run.failures, n_boot=n_boot, confidence=confidence, seed=seed,
                            expected=expected),
        aggregate_distribution(run.distribution, run.failures, expected=expected),
        aggregate_speed(run.outputs, run.failures, method_weights={m: run.method_weights(m) for m in run.methods},
                        n_boot=n_boot, confidence=confidence, seed=seed, expected=expected),
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    df = pd.concat(parts, ignore_index=True)
    df["kind"] = df["task"].map(run.kind)
    df["direction"] = df["metric"].map(lambda m: metric_direction(m, run.metric_info))

    def weights(rec: pd.Series) -> str:
        labels = [rec["weights"], run.method_weights(rec["method"])]
        info = run.metric_info.get(rec["metric"], {})
        labels.append(info.get("weights") or info.get("weights_label"))
        return _weights_label(labels)

    df["weights"] = df.apply(weights, axis=1)
    for c in ("n", "n_nan", "n_failed"):
        df[c] = df[c].astype(int)
    return df[SUMMARY_COLUMNS].sort_values(["task", "method", "metric"], ignore_index=True)


def describe_manifest_value(value: Any) -> str:
    """Compact one-line JSON of a manifest value (for provenance tables)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)
