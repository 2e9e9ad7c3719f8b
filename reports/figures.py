"""Figures of a run: per-task image grids, the CLIP vs DINO-Struct trade-off scatter, latency and memory bars.

Built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot: no global state, no display, works headless
and leaves a user's interactive backend alone). Every figure is saved as PNG (for the HTML page) and PDF (for a
paper) under `runs/<name>/figures/`, atomically and byte-reproducibly (no creation dates), so regenerating the
report gives the same files. Anything computed with random weights carries a dagger and the title says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from eval.store import atomic_path
from eval.vocab import DEFAULT_FIGURE_FORMATS, FIGURE_FORMATS

from .aggregate import MEMORY, SPEED, canonical_metric
from .tables import DAGGER, RANDOM_NOTE, metric_label, perf_is_random

if TYPE_CHECKING:  # pragma: no cover
    from .aggregate import Run

__all__ = [
    "THUMB_WIDTH",
    "bar_chart",
    "image_grid",
    "perf_chart",
    "save_figure",
    "tradeoff_scatter",
    "write_figures",
    "write_thumbnail",
]

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "i2i-zoo",
    "pdf.fonttype": 42,
}
_Y_METRICS = ("clip_score", "clip_dir", "clip_acc")  # the CLIP axis of the trade-off, first available wins
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_BLANK = np.array([236, 236, 236], dtype=np.uint8)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def _new_figure(figsize: tuple[float, float], dpi: int = 100) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


_SAVE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


def save_figure(fig: Figure, stem: str | Path, *, dpi: float | None = 150,
                formats: Sequence[str] = DEFAULT_FIGURE_FORMATS) -> list[Path]:
    """Save `fig` as `<stem>.<format>` for each of `formats` (default PNG only; "pdf" adds a vector copy),
    atomically and without timestamps (same bytes every time); a copy in a format not asked for is removed, so
    the folder never holds a stale one. Returns the paths in `formats` order.

    `dpi` None keeps the figure's own (image grids: one thumbnail pixel per PNG pixel, no resampling)."""
    dpi = dpi or fig.dpi
    stem = Path(stem)
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise ValueError(f"unknown figure format(s) {unknown}; known: {', '.join(FIGURE_FORMATS)}")
    for fmt in FIGURE_FORMATS:
        path = stem.with_name(stem.name + f".{fmt}")
        if fmt not in formats:
            path.unlink(missing_ok=True)
            continue
        with atomic_path(path) as tmp, matplotlib.rc_context(_STYLE):
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_SAVE_METADATA[fmt])
    return [stem.with_name(stem.name + f".{fmt}") for fmt in formats]


THUMB_WIDTH = 800
"""Width (px) of the report page's thumbnails; each links to its full-size PNG."""


def write_thumbnail(png: str | Path, out: str | Path, *, width: int = THUMB_WIDTH, quality: int = 82) -> Path:
    """A downscaled JPEG of `png` at `out` (at most `width` px wide, aspect kept, never upscaled), atomically;
    same input, same bytes (PIL's JPEG encoder writes no timestamp)."""
    out = Path(out)
    with Image.open(png) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.LANCZOS)
        with atomic_path(out) as tmp:
            im.save(tmp, format="JPEG", quality=quality, optimize=True)
    return out


# ----------------------------------------------------------------------------------------------- image grid
def _thumb(path: str | None, size: int) -> np.ndarray | None:
    if not path:
        return None
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im = ImageOps.pad(im, (size, size), method=Image.Resampling.BICUBIC, color=tuple(int(c) for c in _BLANK))
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError):
        return None


def _same_files(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two columns of image paths hold byte-identical files, sample by sample (e.g. a paired task whose
    "condition" is the input itself)."""
    pairs = [(x, y) for x, y in zip(a, b) if isinstance(x, str) or isinstance(y, str)]
    if not pairs:
        return False
    try:
        return all(isinstance(x, str) and isinstance(y, str) and Path(x).read_bytes() == Path(y).read_bytes()
                   for x, y in pairs)
    except OSError:
        return False


def _wrap(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def image_grid(run: Run, task: str, *, max_rows: int = 8, thumb: int = 128) -> Figure | None:
    """Rows = samples (the first `max_rows`, sorted), columns = input, condition / reference / target when
    present (a condition identical to the input is not repeated), then each method's output. Tasks with prompts
    print each row's "source prompt → target prompt" (or its one prompt) under it. Missing outputs show as a
    labelled blank cell ("failed (phase)" or "missing"). None when the task has neither inputs nor outputs."""
    inputs = run.inputs[run.inputs["task"] == task].set_index("sample") if not run.inputs.empty else pd.DataFrame()
    outs = run.outputs[run.outputs["task"] == task] if not run.outputs.empty else run.outputs
    fails = run.failures[run.failures["task"] == task] if not run.failures.empty else run.failures
    samples = sorted(set(inputs.index) | set(outs["sample"]) | {s for s in fails["sample"] if isinstance(s, str)})
    samples = samples[:max_rows]
    methods = [m for m in run.methods if (outs["method"] == m).any() or (fails["method"] == m).any()]
    if not samples or (inputs.empty and not methods):
        return None
    roles = ["input"] + [r for r in ("condition", "reference", "target")
                         if not inputs.empty and r in inputs.columns and inputs[r].notna().any()]
    if "condition" in roles and _same_files([inputs.at[s, "input"] if s in inputs.index else None for s in samples],
                                            [inputs.at[s, "condition"] if s in inputs.index else None
                                             for s in samples]):
        roles.remove("condition")
    headers = [r if r != "target" else "target (GT)" for r in roles]
    headers += [m + (DAGGER if run.method_weights(m) == "random" else "") for m in methods]
    out_path = {(r["method"], r["sample"]): r["path"] for r in outs.to_dict("records")}
    fail_of: dict[tuple[str, str | None], str] = {}
    for r in fails.to_dict("records"):
        fail_of.setdefault((r["method"], r["sample"] if isinstance(r["sample"], str) else None), r["phase"])
    prompts = run.prompts.get(task, {})
    captions = {}
    for s in samples:  # "source → target" for edits; the one prompt of a conditional task
        src, tgt = (prompts.get(s) or {}).get("src"), (prompts.get(s) or {}).get("tgt")
        if src or tgt:
            captions[s] = f"{src}  →  {tgt}" if src and tgt else f"prompt: {src or tgt}"

    gap, ncol, nrow = 4, len(headers), len(samples)
    row_gap = 18 if captions else gap  # room for the prompt line under each row
    mosaic = np.full((nrow * (thumb + row_gap) - row_gap, ncol * (thumb + gap) - gap, 3), 255, dtype=np.uint8)
    blanks: list[tuple[int, int, str]] = []
    for i, sample in enumerate(samples):
        for j in range(ncol):
            if j < len(roles):
                path = inputs.at[sample, roles[j]] if sample in inputs.index else None
                img = _thumb(path if isinstance(path, str) else None, thumb)
                label = "missing"
            else:
                m = methods[j - len(roles)]
                img = _thumb(out_path.get((m, sample)), thumb)
                phase = fail_of.get((m, sample)) or fail_of.get((m, None))
                label = f"failed\n({phase})" if phase else "missing"
            y, x = i * (thumb + row_gap), j * (thumb + gap)
            if img is None:
                mosaic[y:y + thumb, x:x + thumb] = _BLANK
                blanks.append((i, j, label))
            else:
                mosaic[y:y + thumb, x:x + thumb] = img

    left, top, bottom = 110, 70, 10 + (row_gap if captions else 0)  # margins: row labels, headers + title
    width, height = max(mosaic.shape[1] + left + 10, 560), mosaic.shape[0] + top + bottom
    dpi = 100
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure((width / dpi, height / dpi), dpi=dpi)
        ax = fig.add_axes((left / width, bottom / height, mosaic.shape[1] / width, mosaic.shape[0] / height))
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_axis_off()
        for j, h in enumerate(headers):
            ax.text(j * (thumb + gap) + thumb / 2, -6, h if len(h) <= 18 else h[:17] + "…", ha="center",
                    va="bottom", fontsize=8)
        for i, s in enumerate(samples):
            ax.text(-6, i * (thumb + row_gap) + thumb / 2, s if len(s) <= 16 else s[:15] + "…", ha="right",
                    va="center", fontsize=7)
            if s in captions:  # about 6 px per character at 7 pt
                ax.text(0, i * (thumb + row_gap) + thumb + 2, _wrap(captions[s], max(20, mosaic.shape[1] // 5)),
                        ha="left", va="top", fontsize=7, color="#333333", clip_on=False)
        for i, j, label in blanks:
            ax.text(j * (thumb + gap) + thumb / 2, i * (thumb + row_gap) + thumb / 2, label, ha="center",
                    va="center", fontsize=8, color="#a00000" if label.startswith("failed") else "#555555")
        title = f"{task} ({run.kind(task)})"
        if captions:
            title += (": source prompt → target prompt under each row" if any("  →  " in c for c in captions.values())
                      else ": prompt under each row")
        if any(h.endswith(DAGGER) for h in headers):
            title += "\n" + RANDOM_NOTE
        fig.suptitle(title, y=1 - 6 / height, va="top", fontsize=9)
    return fig


# ----------------------------------------------------------------------------------------------- trade-off
def _err(rows: pd.DataFrame) -> np.ndarray:
    lo = (rows["mean"] - rows["ci_lo"]).to_numpy(dtype=float)
    hi = (rows["ci_hi"] - rows["mean"]).to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([lo, hi]), nan=0.0)


def tradeoff_scatter(summary: pd.DataFrame, methods: Sequence[str] | None = None) -> Figure | None:
    """CLIP (score, else directional, else accuracy) against DINO-Struct: one point per method per task, with
    95% CI bars where available; colour = method, marker = task. None without both metrics."""
    if summary is None or summary.empty:
        return None
    canon = summary["metric"].map(canonical_metric)
    xs = summary[canon == "dino_struct"]
    ymetric = next((m for m in _Y_METRICS if (canon == m).any()), None)
    if xs.empty or ymetric is None:
        return None
    ys = summary[canon == ymetric]
    pts = xs.merge(ys, on=["method", "task"], suffixes=("_x", "_y"))
    pts = pts[np.isfinite(pts["mean_x"]) & np.isfinite(pts["mean_y"])]
    if pts.empty:
        return None
    methods = [m for m in (methods or sorted(pts["method"].unique())) if (pts["method"] == m).any()]
    methods += sorted(set(pts["method"]) - set(methods))
    tasks = sorted(pts["task"].unique())
    colors = _colors(methods)
    rnd = set(pts.loc[(pts["weights_x"] == "random") | (pts["weights_y"] == "random"), "method"])
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure((6.4, 4.4))
        ax = fig.add_subplot()
        for m in methods:
            for ti, t in enumerate(tasks):
                p = pts[(pts["method"] == m) & (pts["task"] == t)]
                if p.empty:
                    continue
                xe = _err(p.rename(columns={"mean_x": "mean", "ci_lo_x": "ci_lo", "ci_hi_x": "ci_hi"}))
                ye = _err(p.rename(columns={"mean_y": "mean", "ci_lo_y": "ci_lo", "ci_hi_y": "ci_hi"}))
                ax.errorbar(p["mean_x"], p["mean_y"], xerr=xe, yerr=ye, fmt=_MARKERS[ti % len(_MARKERS)],
                            color=colors[m], ms=7, capsize=3, elinewidth=1)
        h_methods = [Line2D([], [], ls="", marker="o", color=colors[m], label=m + (DAGGER if m in rnd else ""))
                     for m in methods]
        leg = ax.legend(handles=h_methods, title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                        fontsize=8, frameon=False)
        ax.add_artist(leg)
        h_tasks = [Line2D([], [], ls="", marker=_MARKERS[i % len(_MARKERS)], color="0.3", label=t)
                   for i, t in enumerate(tasks)]
        ax.legend(handles=h_tasks, title="task", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8,
                  frameon=False)
        ax.set_xlabel("DINO-Struct ↓ (structure distance to the input)")
        ax.set_ylabel(f"{metric_label(ymetric)} ↑")
        ax.grid(alpha=0.3)
        title = f"Trade-off: {metric_label(ymetric)} vs DINO-Struct (best: top left)"
        if rnd:
            title += "\n" + RANDOM_NOTE
        ax.set_title(title)
        fig.subplots_adjust(left=0.11, right=0.72, top=0.86 if rnd else 0.9, bottom=0.12)
    return fig


# ----------------------------------------------------------------------------------------------- bars
def bar_chart(
    summary: pd.DataFrame, metric: str = SPEED, methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> Figure | None:
    """Grouped bars, one group per method and one bar per task, for SPEED (s/img, with 95% CI) or MEMORY
    (peak, in MiB or GiB). None when no finite value exists (e.g. memory on a CPU run)."""
    if summary is None or summary.empty:
        return None
    rows = summary[(summary["metric"] == metric) & np.isfinite(summary["mean"].astype(float))]
    if rows.empty or (metric == MEMORY and not (rows["mean"] > 0).any()):  # CPU runs may report 0: not measured
        return None
    methods = [m for m in (methods or sorted(rows["method"].unique())) if (rows["method"] == m).any()]
    methods += sorted(set(rows["method"]) - set(methods))
    tasks = [t for t in (tasks or []) if (rows["task"] == t).any()]
    tasks += sorted(set(rows["task"]) - set(tasks))
    scale, unit = 1.0, "s/img"
    if metric == MEMORY:
        big = rows["mean"].max() >= 2**30
        scale, unit = (float(2**30), "GiB") if big else (float(2**20), "MiB")
    rnd = set(rows.loc[rows["weights"] == "random", "method"])
    width = 0.8 / max(1, len(tasks))
    cmap = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure((max(4.8, 1.0 + 0.9 * len(methods) * max(1, len(tasks)) ** 0.5), 3.6))
        ax = fig.add_subplot()
        x = np.arange(len(methods))
        for ti, t in enumerate(tasks):
            sub = rows[rows["task"] == t].set_index("method")
            h = np.array([sub.at[m, "mean"] / scale if m in sub.index else np.nan for m in methods])
            err = None
            if metric == SPEED:
                lo = np.array([(sub.at[m, "mean"] - sub.at[m, "ci_lo"]) / scale if m in sub.index else np.nan
                               for m in methods])
                hi = np.array([(sub.at[m, "ci_hi"] - sub.at[m, "mean"]) / scale if m in sub.index else np.nan
                               for m in methods])
                err = np.nan_to_num(np.vstack([lo, hi]), nan=0.0)
            ok = np.isfinite(h)  # a method without this task gets no bar (not a zero-height one)
            ax.bar((x + (ti - (len(tasks) - 1) / 2) * width)[ok], h[ok], width,
                   yerr=None if err is None else err[:, ok], capsize=2, label=t, color=cmap(ti % 10))
        ax.set_xticks(x, [m + (DAGGER if m in rnd else "") for m in methods], rotation=20, ha="right")
        what = "Latency" if metric == SPEED else "Peak memory"
        ax.set_ylabel(f"{'seconds per image' if metric == SPEED else unit} ↓")
        title = f"{what} per method (from output sidecars{', 95% CI' if metric == SPEED else ''})"
        if rnd:
            title += "\n" + RANDOM_NOTE
        ax.set_title(title)
        if len(tasks) > 1:
            ax.legend(title="task", fontsize=8, frameon=False)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
    return fig


def perf_chart(perf: pd.DataFrame, method_weights: dict[str, str] | None = None) -> Figure | None:
    """Two panels from `benchmark.py perf`: median latency (± IQR/2) and peak memory per method x preset x
    batch size. None without perf results."""
    if perf is None or perf.empty:
        return None
    df = perf.copy()
    for c in ("batch_size", "latency_median_s", "latency_iqr_s", "peak_mem_bytes"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if "device" in df.columns:  # a CPU peak is the process's resident set, not the method's own: not drawn
        df.loc[df["device"].astype(str).str.startswith("cpu"), "peak_mem_bytes"] = np.nan
    df = df.sort_values(["method", "preset", "batch_size"], na_position="last", ignore_index=True, kind="stable",
                        key=lambda s: s.astype(str) if s.dtype == object else s)
    if not np.isfinite(df["latency_median_s"]).any():
        return None
    flags = [perf_is_random(r["method"], r.get("preset"), method_weights) for r in df.to_dict("records")]

    def lab(r: dict[str, Any], rnd: bool) -> str:
        bs = "" if not np.isfinite(r["batch_size"]) else f", bs={int(r['batch_size'])}"
        mode = r.get("mode")
        mode = f" {mode}" if isinstance(mode, str) and mode != "default" else ""
        return f"{r['method']}{mode}{DAGGER if rnd else ''}\n({r['preset']}{bs})"

    labels = [lab(r, f) for r, f in zip(df.to_dict("records"), flags)]
    has_mem = bool(np.isfinite(df["peak_mem_bytes"]).any() and (df["peak_mem_bytes"].fillna(0) > 0).any())
    with matplotlib.rc_context(_STYLE):
        fig = _new_figure((max(5.0, 1.2 * len(df)) * (2 if has_mem else 1) ** 0.6, 3.8))
        axes = fig.subplots(1, 2 if has_mem else 1, squeeze=False)[0]
        x = np.arange(len(df))
        axes[0].bar(x, df["latency_median_s"].fillna(0), yerr=(df["latency_iqr_s"].fillna(0) / 2), capsize=3,
                    color="#4c72b0")
        axes[0].set_ylabel("median latency (s) ↓")
        axes[0].set_xticks(x, labels, fontsize=7)
        axes[0].grid(axis="y", alpha=0.3)
        if has_mem:
            big = df["peak_mem_bytes"].max() >= 2**30
            scale, unit = (float(2**30), "GiB") if big else (float(2**20), "MiB")
            axes[1].bar(x, df["peak_mem_bytes"].fillna(0) / scale, color="#dd8452")
            axes[1].set_ylabel(f"peak memory ({unit}) ↓")
            axes[1].set_xticks(x, labels, fontsize=7)
            axes[1].grid(axis="y", alpha=0.3)
        title = "benchmark.py perf"
        if any(flags):
            title += "\n" + RANDOM_NOTE
        fig.suptitle(title)
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- all figures
def write_figures(
    run: Run,
    summary: pd.DataFrame,
    out_dir: str | Path | None = None,
    *,
    max_rows: int = 8,
    thumb: int = 128,
    quiet: bool = True,
    formats: Sequence[str] = DEFAULT_FIGURE_FORMATS,
) -> dict[str, Path]:
    """Draw and save every figure the run supports under `out_dir` (default `<run>/figures/`).

    `formats` must include "png"; "pdf" adds a PDF next to each PNG.
    Returns {figure key: PNG path} (other formats lie next to it), keys "grid/<task>", "tradeoff", "latency",
    "memory", "perf"; figures without data (no DINO/CLIP metrics, no memory, no perf) are skipped. A progress
    bar on stderr unless `quiet`.
    """
    out = Path(out_dir) if out_dir is not None else run.root / "figures"
    weights = {m: run.method_weights(m) for m in run.methods}
    jobs: list[tuple[str, str, Any, float | None]] = [
        (f"grid/{task}", f"grid_{_slug(task)}",
         lambda task=task: image_grid(run, task, max_rows=max_rows, thumb=thumb), None)
        for task in run.tasks
    ]
    jobs += [
        ("tradeoff", "tradeoff_clip_dino", lambda: tradeoff_scatter(summary, run.methods), 150),
        ("latency", "latency", lambda: bar_chart(summary, SPEED, run.methods, run.tasks), 150),
        ("memory", "memory", lambda: bar_chart(summary, MEMORY, run.methods, run.tasks), 150),
        ("perf", "perf", lambda: perf_chart(run.perf, weights), 150),
    ]
    if "png" not in formats:
        raise ValueError("the figure formats must include png (the report pages show the PNGs)")
    written: dict[str, Path] = {}
    for key, stem, draw, dpi in tqdm(jobs, desc="figures", unit="fig", disable=quiet, leave=False):
        fig = draw()
        if fig is not None:
            written[key] = save_figure(fig, out / stem, dpi=dpi, formats=formats)[list(formats).index("png")]
    return written
