"""Paper-style tables from the run summary: one main table per task kind, rendered as CSV, Markdown, LaTeX, HTML.

Why a table model: the same cells (value text, best-in-column flag, random-weights flag, N/NaN note) must read
the same in the Markdown report, the LaTeX a user pastes into a paper and the HTML page, so the decisions are
made once (`build_main_tables`) and each renderer only spells them. Columns carry the metric's direction as an
arrow and their unit (KID x10^3, PSNR dB, s/img, GiB); cells read "mean ± half-width of the 95% BCa bootstrap CI";
every number computed with random weights carries a dagger and the table a footnote saying it is not comparable
to papers.

Bold is earned, not assigned: reference rows (a copy of the input, an oracle; `Run.is_reference`) sit in their
own block below a rule and are never bold; a column's best competing value is bold only when it is significantly
better than the runner-up (per-image metrics: the paired test of `reports.stats`, Holm-adjusted p < 0.05; s/img:
non-overlapping 95% CIs) and never on a tie; single-value columns (FID, KID, memory) carry no bold. Each table's
footnote states that rule. The CSV files hold the raw numbers (long form), not the formatted strings.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from eval.store import atomic_write_text

from .aggregate import MEMORY, SPEED, SUMMARY_COLUMNS, canonical_metric, count_failures, cpu_memory_measured
from .stats import ALPHA, paired_comparisons, significantly_better

if TYPE_CHECKING:  # pragma: no cover
    from .aggregate import Run

__all__ = [
    "DAGGER",
    "KIND_METRICS",
    "RANDOM_NOTE",
    "Cell",
    "Column",
    "Table",
    "build_main_tables",
    "build_perf_table",
    "metric_label",
    "paired_markdown",
    "paired_rows",
    "perf_is_random",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "write_tables",
]

DAGGER = "†"
RANDOM_NOTE = f"{DAGGER} random weights: not comparable to paper numbers."
ARROWS = {"lower": "↓", "higher": "↑"}

# The main-table columns per task kind, in paper order; metrics found in the run but not listed follow them.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "unpaired": ("fid", "kid", "dino_struct", "dino_struct_v2", "clip_score", "clip_dir", "lpips"),
    "paired": ("lpips", "psnr", "ssim", "dino_struct", "clip_score", "fid", "kid"),
    "text-edit": ("clip_acc", "clip_dir", "dino_struct", "dino_struct_v2", "lpips", "clip_score"),
    "mask-to-image": ("fid", "kid", "lpips", "ssim", "clip_score"),
    "sketch-to-image": ("fid", "kid", "lpips", "ssim", "clip_score"),
}
_GENERIC_ORDER = ("fid", "kid", "dino_struct", "dino_struct_v2", "clip_score", "clip_dir", "clip_acc", "lpips", "psnr",
                  "ssim")
KIND_TITLES = {
    "unpaired": "Unpaired translation",
    "paired": "Paired translation",
    "text-edit": "Text-guided editing",
    "image-guided": "Image-guided translation",
    "mask-to-image": "Mask to image",
    "sketch-to-image": "Sketch to image",
    "other": "Other tasks",
}
_LABELS = {
    "fid": "FID", "kid": "KID", "dino_struct": "DINO-Struct", "dino_struct_v2": "DINOv2-Struct", "clip_score": "CLIP",
    "clip_dir": "CLIP-dir",
    "clip_acc": "CLIP-acc", "lpips": "LPIPS", "psnr": "PSNR", "ssim": "SSIM", SPEED: "s/img", MEMORY: "Mem",
}
# Display divisor and unit per canonical metric: papers print KID x10^3 (the CSVs keep the raw value).
_SCALE = {"kid": (1e-3, "×10³")}
_UNITS = {"psnr": "dB"}


def metric_label(metric: str) -> str:
    """Short column label of a metric ("dino_struct" -> "DINO-Struct"); unknown metrics keep their name."""
    return _LABELS.get(metric, _LABELS.get(canonical_metric(metric), str(metric)))


@dataclass
class Cell:
    """One formatted table cell. `text` is plain (no markup); renderers add bold, dagger and note."""

    text: str = "—"
    note: str = ""
    best: bool = False
    random: bool = False
    value: float = math.nan
    mean_text: str = ""  # the mean alone and the CI half-width alone (LaTeX sets the CI smaller)
    ci_text: str = ""


@dataclass
class Column:
    """A table column: `group` (the task, for multi-task tables), `label` and the direction `arrow`."""

    key: str
    label: str
    arrow: str = ""
    group: str = ""
    metric: str = ""
    sub: str = ""  # unit / image count ("dB", "×10³, N=8"): after the label, on a second header line in LaTeX


@dataclass
class Table:
    """A rendered-agnostic table: header, rows of cells, footnotes and the raw numbers behind it."""

    name: str
    title: str
    columns: list[Column]
    rows: list[tuple[str, list[Cell]]]
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SUMMARY_COLUMNS))
    row_header: str = "Method"
    group_titles: dict[str, str] = field(default_factory=dict)
    #: rows (by label) that are references, shown in their own block after the competing methods
    references: list[str] = field(default_factory=list)
    #: warning rows after the table body (e.g. FID/KID image counts), drawn below a rule
    footer: list[tuple[str, list[Cell]]] = field(default_factory=list)

    @property
    def has_random(self) -> bool:
        return any(c.random for _, cells in self.rows for c in cells)


# ----------------------------------------------------------------------------------------------- formatting
def _decimals(values: Sequence[float], lowest: int = 1) -> int:
    """Decimals for a column: about three significant digits of its typical magnitude, between `lowest` and 6."""
    vals = np.abs(np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64))
    vals = vals[vals > 0]
    if not vals.size:
        return 3
    return int(min(6, max(lowest, 2 - math.floor(math.log10(float(np.median(vals)))))))


def _fmt(x: float, d: int) -> str:
    return f"{x:.{d}f}" if np.isfinite(x) else "—"


def _cell_decimals(x: float, d: int) -> int:
    """The column's decimals, or more for a nonzero value that would otherwise show as 0 (two significant
    digits: 0.00012 s next to 0.9 s must not read "0.000")."""
    if not np.isfinite(x) or x == 0 or round(x, d) != 0:
        return d
    return int(min(10, max(d, 1 - math.floor(math.log10(abs(x))))))


def _metric_order(kind: str, metrics: Sequence[str]) -> list[str]:
    """Order a task's metrics: the kind's paper columns first, other metrics alphabetically, speed/mem last."""
    pref = KIND_METRICS.get(kind, _GENERIC_ORDER)
    canon = {m: canonical_metric(m) for m in metrics if m not in (SPEED, MEMORY)}

    def key(m: str) -> tuple[int, int, str]:
        c = canon[m]
        if c in pref:
            return (0, pref.index(c), m)
        if c in _GENERIC_ORDER:
            return (1, _GENERIC_ORDER.index(c), m)
        return (2, 0, m)

    ordered = sorted(canon, key=key)
    return ordered + [m for m in (SPEED, MEMORY) if m in metrics]


def _memory_unit(values: Sequence[float]) -> tuple[str, float]:
    fin = [v for v in values if np.isfinite(v)]
    if fin and max(fin) >= 2**30:
        return "GiB", float(2**30)
    return "MiB", float(2**20)


def _row_lookup(summary: pd.DataFrame) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["method"], r["task"], r["metric"]): r for r in summary.to_dict("records")}


def _ci_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two summary rows' CIs overlap (True when either has none: no evidence of a difference)."""
    lo_a, hi_a = float(a["ci_lo"]), float(a["ci_hi"])
    lo_b, hi_b = float(b["ci_lo"]), float(b["ci_hi"])
    if not all(np.isfinite(v) for v in (lo_a, hi_a, lo_b, hi_b)):
        return True
    return not (hi_a < lo_b or hi_b < lo_a)


def _mark_best(cells: list[Cell], rows: Sequence[dict[str, Any] | None], methods: Sequence[str], *,
               direction: str | None, decimals: int, scale: float, references: set[str], task: str, metric: str,
               paired: pd.DataFrame | None) -> None:
    """Bold a column's best competing value when it is significantly better than the runner-up.

    Candidates are the non-reference rows with a value; values are compared as displayed, so a tie at the shown
    precision (or every value equal) bolds nothing. Per-image metrics need the paired test to say the winner
    beats the runner-up (Holm-adjusted p < ALPHA); s/img needs non-overlapping CIs; single values (FID, KID,
    memory) are never bold.
    """
    if direction not in ARROWS:
        return
    shown = [(i, round(c.value / scale, _cell_decimals(c.value / scale, decimals))) for i, c in enumerate(cells)
             if np.isfinite(c.value) and methods[i] not in references and rows[i] is not None]
    if len(shown) < 2:
        return
    shown.sort(key=lambda iv: iv[1], reverse=direction == "higher")
    (wi, wv), (ri, rv) = shown[0], shown[1]
    if wv == rv:
        return
    win, run_up = rows[wi], rows[ri]
    if win["source"] == "per_image":
        ok = significantly_better(paired, task, metric, methods[wi], methods[ri])
    elif win["source"] == "sidecar" and metric == SPEED:
        ok = not _ci_overlap(win, run_up)
    else:
        ok = False
    cells[wi].best = ok


def _column_cells(
    rows: Sequence[dict[str, Any] | None], metric: str, expected_n: int | None
) -> tuple[list[Cell], str, int, float]:
    """Format one column: returns cells, the unit suffix for the label, the decimals and the display scale."""
    values = [float(r["mean"]) if r is not None else math.nan for r in rows]
    scale, unit = _SCALE.get(canonical_metric(metric), (1.0, _UNITS.get(canonical_metric(metric), "")))
    if metric == MEMORY:
        unit, scale = _memory_unit(values)
    d = _decimals([v / scale for v in values], lowest=0 if metric == MEMORY else 1)
    gens = {(r["n_gen"], r["n_ref"]) for r in rows if r is not None and r["source"] == "distribution"}
    common_gen = next(iter(gens)) if len(gens) == 1 else None
    cells = []
    for r in rows:
        if r is None:
            cells.append(Cell())
            continue
        mean, half = float(r["mean"]) / scale, float(r["ci_half"]) / scale
        notes = []
        dc = _cell_decimals(mean, d)
        mean_text = _fmt(mean, dc) if np.isfinite(mean) else "—"
        ci_text = _fmt(half, dc) if np.isfinite(mean) and np.isfinite(half) else ""
        text = mean_text + (f" ± {ci_text}" if ci_text else "")
        if r["source"] == "distribution":
            if common_gen is None and np.isfinite(r["n_gen"]):
                notes.append(f"n={int(r['n_gen'])}/{int(r['n_ref'])}" if np.isfinite(r["n_ref"])
                             else f"n={int(r['n_gen'])}")
        elif metric not in (MEMORY, SPEED) and (expected_n is None or int(r["n"]) != expected_n):
            notes.append(f"n={int(r['n'])}")
        if r["source"] == "sidecar_warmup":
            notes.append("incl. warm-up")
        if int(r["n_nan"]) and metric != MEMORY:
            notes.append(f"{int(r['n_nan'])} NaN")
        cells.append(Cell(text=text, note=", ".join(notes), random=r["weights"] == "random", value=float(r["mean"]),
                          mean_text=mean_text, ci_text=ci_text))
    return cells, unit, d, scale


FID_FULL_N = 2048
"""Inception pool_3 features have 2048 dimensions: with fewer images the covariance is rank-deficient and FID is
biased upwards by an amount that depends on N, so FIDs are comparable only at equal (and ideally >= 2048) N."""


def distribution_caveats(task: str, rows: pd.DataFrame) -> list[str]:
    """Footnotes for the distribution metrics (FID, KID) of one task: the image counts, and the small-N / unequal-N
    caveats that decide whether the numbers can be compared (with each other and with papers)."""
    dist = rows[rows["source"] == "distribution"] if len(rows) else rows
    if dist.empty:
        return []
    labels = ", ".join(sorted({metric_label(m) for m in dist["metric"]}))
    fid_label = ", ".join(sorted({metric_label(m) for m in dist["metric"] if canonical_metric(str(m)) == "fid"}))
    recs = [r for r in dist.to_dict("records") if np.isfinite(r["n_gen"]) and np.isfinite(r["n_ref"])]
    gens = sorted({(int(r["n_gen"]), int(r["n_ref"])) for r in recs})
    notes = []
    if len(gens) == 1:
        notes.append(f"{labels} on {task}: one value over {gens[0][0]} generated vs {gens[0][1]} reference images "
                     "(no CI).")
    elif len(gens) > 1:
        notes.append(f"⚠ {labels} on {task}: the image counts differ between methods "
                     f"({', '.join(f'{g}/{r}' for g, r in gens)} generated/reference; see n= in the cells): FID's "
                     "bias and KID's subset size depend on N, so these values are not comparable with each other.")
    small = sorted({n for g, r in gens for n in (g, r) if n < FID_FULL_N})
    if small and fid_label:
        notes.append(f"⚠ {fid_label} on {task} over fewer than {FID_FULL_N} images (N = {', '.join(map(str, small))}): "
                     "the 2048-d Inception covariance is rank-deficient and FID is biased upwards by an amount that "
                     "depends on N; compare only at equal N (a paper's FID over another N is not comparable).")
    return notes


def _n_warning(rows: Sequence[dict[str, Any] | None]) -> str:
    """The warning-row text of one FID/KID column: its image counts when they differ between methods or any is
    below FID_FULL_N, else ""."""
    recs = [r for r in rows if r is not None and r["source"] == "distribution" and np.isfinite(r["n_gen"])]
    gens = sorted({(int(r["n_gen"]), int(r["n_ref"]) if np.isfinite(r["n_ref"]) else None) for r in recs})
    if not gens:
        return ""
    small = any(g < FID_FULL_N or (rf is not None and rf < FID_FULL_N) for g, rf in gens)
    if len(gens) == 1 and not small:
        return ""
    text = ", ".join(f"{g}/{rf}" if rf is not None else str(g) for g, rf in gens)
    return f"⚠ {text}" + (" differ" if len(gens) > 1 else "") + (f" <{FID_FULL_N}" if small else "")


BOLD_RULE = (f"Bold: the best competing value, only where it is significantly better than the runner-up (per-image "
             f"metrics: paired Wilcoxon signed-rank test, or paired permutation test for binary metrics, "
             f"Holm-adjusted p < {ALPHA} over the column's pairs; s/img: non-overlapping 95% CIs); no bold on ties; "
             "FID, KID and Mem (one value, no CI) are never bold.")
REFERENCE_NOTE = "Rows below the rule are references (a copy of the input, an oracle): never bold."
SPEED_NOTE = ("s/img: per-sample share of batch wall time, excluding the first batch after each model load "
              "(warm-up; a cell says \"incl. warm-up\" where there was no other batch).")
MEM_NOTE = ("Mem: the CUDA allocator's peak (torch.cuda.max_memory_allocated, reset before each batch), max over "
            "batches.")
CPU_MEM_NOTE = ("Mem: not shown for CPU runs: the only CPU figure is the whole process's resident set, which holds "
                "every model loaded so far and the allocator's cached pages, so it depends on the run order rather "
                "than on the method (run `benchmark.py perf` on CUDA for per-method memory).")


def build_main_tables(
    summary: pd.DataFrame,
    run: Run | None = None,
    *,
    kinds: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    paired: pd.DataFrame | None = None,
    references: Sequence[str] | None = None,
) -> list[Table]:
    """One main table per task kind: rows = competing methods, then the reference rows below a rule; columns =
    (task, metric) with arrows and units, then s/img and memory; a "fail" column when any sample failed.

    `run` supplies method/task order, kinds, expected N per task, failures and reference rows (methods that failed
    entirely have no summary rows but still get a row of dashes). `paired` (from `reports.stats.
    paired_comparisons`) decides bolding; computed from `run.per_image` when None and a run is given. `references`
    overrides the run's reference rows. `n_boot`, `confidence` and `seed` must match what built `summary`.
    """
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    expected = run.expected_samples() if run is not None else {}
    failures = run.failures if run is not None else pd.DataFrame()
    fail_counts = count_failures(failures, expected)
    tasks = run.tasks if run is not None else sorted(summary["task"].unique())
    kind_of = run.kind if run is not None else (
        lambda t: str(summary.loc[summary["task"] == t, "kind"].iloc[0]) if (summary["task"] == t).any() else "other")
    method_order = run.methods if run is not None else sorted(summary["method"].unique())
    refs = set(references if references is not None else
               ([m for m in method_order if run.is_reference(m)] if run is not None else []))
    method_order = [m for m in method_order if m not in refs] + [m for m in method_order if m in refs]
    if paired is None and run is not None and not run.per_image.empty:
        directions = {m: d for m, d in zip(summary["metric"], summary["direction"]) if isinstance(d, str)}
        paired = paired_comparisons(run.per_image, directions=directions, methods=method_order, n_boot=n_boot,
                                    confidence=confidence, seed=seed)
    cpu_mem = run is not None and cpu_memory_measured(run.outputs)
    by_kind: dict[str, list[str]] = {}
    for t in tasks:
        by_kind.setdefault(kind_of(t), []).append(t)
    order = [k for k in KIND_METRICS if k in by_kind] + sorted(k for k in by_kind if k not in KIND_METRICS)
    lookup = _row_lookup(summary)
    tables = []
    for kind in order:
        if kinds is not None and kind not in kinds:
            continue
        ktasks = by_kind[kind]
        sub = summary[summary["task"].isin(ktasks)]
        fails = {m: sum(v for (fm, ft, metric), v in fail_counts.items() if fm == m and ft in ktasks and metric is None)
                 for m in method_order}
        methods = [m for m in method_order if (sub["method"] == m).any() or fails.get(m, 0)
                   or (not failures.empty and ((failures["method"] == m) & failures["task"].isin(ktasks)).any())]
        if not methods:
            continue
        multi = len(ktasks) > 1
        columns: list[Column] = []
        col_cells: list[list[Cell]] = []
        warn_cells: list[Cell] = []
        group_titles: dict[str, str] = {}
        dist_notes: list[str] = []
        ci_methods: set[str] = set()
        for task in ktasks:
            tsub = sub[sub["task"] == task]
            metrics = _metric_order(kind, list(dict.fromkeys(tsub["metric"])))
            n_exp = expected.get(task)
            if n_exp is None:
                ns = tsub.loc[tsub["source"] == "per_image", "n"]
                n_exp = int(ns.max()) if len(ns) else None
            group_titles[task] = f"{task} (N={n_exp})" if n_exp else task
            for metric in metrics:
                rows = [lookup.get((m, task, metric)) for m in methods]
                cells, unit, d, scale = _column_cells(rows, metric, n_exp)
                direction = next((r["direction"] for r in rows if r is not None and isinstance(r["direction"], str)),
                                 None)
                _mark_best(cells, rows, methods, direction=direction, decimals=d, scale=scale, references=refs,
                           task=task, metric=metric, paired=paired)
                ci_methods |= {str(r.get("ci_method")) for r in rows if r is not None}
                subs = [unit] if unit else []
                gens = {(r["n_gen"], r["n_ref"]) for r in rows if r is not None and r["source"] == "distribution"
                        and np.isfinite(r["n_gen"])}
                if len(gens) == 1:  # FID/KID: N (generated) in the header when every method has the same
                    subs.append(f"N={int(next(iter(gens))[0])}")
                columns.append(Column(key=f"{task}/{metric}", label=metric_label(metric),
                                      arrow=ARROWS.get(direction or "", ""), group=task if multi else "",
                                      metric=metric, sub=", ".join(subs)))
                col_cells.append(cells)
                warn = _n_warning(rows)
                warn_cells.append(Cell(text=warn or "", note="") if warn else Cell(text=""))
            dist_notes += distribution_caveats(task, tsub[tsub["method"].isin(methods)])
        if any(fails.get(m, 0) for m in methods):
            columns.append(Column(key="failed", label="fail"))
            col_cells.append([Cell(text=str(fails.get(m, 0)), value=float(fails.get(m, 0))) for m in methods])
            warn_cells.append(Cell(text=""))
        rows_out = [(m, [cells[i] for cells in col_cells]) for i, m in enumerate(methods)]
        ci_word = "BCa" if ci_methods <= {"BCa", "none", "nan"} else "BCa (percentile where BCa is degenerate)"
        notes = [
            f"Mean ± half-width of the {confidence:.0%} {ci_word} bootstrap CI over samples (B={n_boot}, seed "
            f"{seed}); N = samples per task; (n=…) marks cells with fewer finite values; NaN = undefined values, "
            "counted, not averaged; ↓ lower is better, ↑ higher is better; — : no value.",
            BOLD_RULE,
            *([REFERENCE_NOTE] if any(m in refs for m in methods) else []),
            *dist_notes,
        ]
        if any(c.metric == SPEED for c in columns):
            notes.append(SPEED_NOTE)
        if any(c.metric == MEMORY for c in columns):
            notes.append(MEM_NOTE)
        elif cpu_mem:
            notes.append(CPU_MEM_NOTE)
        if any(c.key == "failed" for c in columns):
            notes.append("fail: samples that failed to load, translate or save (listed in the report).")
        footer = [("⚠ N gen/ref", warn_cells)] if any(c.text for c in warn_cells) else []
        table = Table(name=f"main_{_slug(kind)}", title=KIND_TITLES.get(kind, kind), columns=columns, rows=rows_out,
                      notes=notes, data=sub[sub["method"].isin(methods)].reset_index(drop=True),
                      group_titles=group_titles, references=[m for m in methods if m in refs], footer=footer)
        if not multi:
            table.title += f": {group_titles[ktasks[0]]}"
        if table.has_random:
            table.notes.append(RANDOM_NOTE)
        tables.append(table)
    return tables


def perf_is_random(method: str, preset: Any, method_weights: dict[str, str] | None = None) -> bool:
    """Whether a perf row ran with random weights: the run's label for the method, else a "tiny" preset."""
    label = (method_weights or {}).get(str(method))
    if label in ("random", "real", "n/a"):
        return label == "random"
    return str(preset).startswith("tiny")


def build_perf_table(perf: pd.DataFrame, method_weights: dict[str, str] | None = None) -> Table | None:
    """The `benchmark.py perf` results (median latency ± IQR/2, throughput, peak memory, network calls,
    overhead), one row per method x preset x device x resolution x batch size; no best marking (rows differ
    in device and batch size). None without perf results."""
    if perf is None or perf.empty:
        return None
    df = perf.copy()
    for c in ("batch_size", "resolution", "latency_median_s", "latency_iqr_s", "throughput_img_s", "peak_mem_bytes",
              "network_time_s", "overhead"):
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df.columns else math.nan
    cpu = df["device"].astype(str).str.startswith("cpu") if "device" in df.columns else pd.Series(False, df.index)
    df.loc[cpu, "peak_mem_bytes"] = math.nan  # process RSS on CPU: not the method's own (see CPU_MEM_NOTE)
    df = df.sort_values(["method", "preset", "device", "resolution", "batch_size"], na_position="last",
                        ignore_index=True, kind="stable", key=lambda s: s.astype(str) if s.dtype == object else s)
    unit, scale = _memory_unit(df["peak_mem_bytes"].tolist())
    dl = _decimals(df["latency_median_s"].tolist())
    dt = _decimals(df["throughput_img_s"].tolist())
    dm = _decimals((df["peak_mem_bytes"] / scale).tolist(), lowest=0)

    def txt(v: Any) -> str:
        if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool):
            v = float(v)
            return "—" if not np.isfinite(v) else (str(int(v)) if v.is_integer() else f"{v:.3g}")
        return "—" if v is None else str(v)

    show_res = bool(df["resolution"].notna().any())
    show_mode = "mode" in df.columns and bool(df["mode"].notna().any())
    columns = [Column("mode", "mode")] if show_mode else []
    columns += [Column("preset", "preset"), Column("device", "device")]
    columns += [Column("resolution", "res")] if show_res else []
    columns += [Column("batch_size", "batch"), Column("latency", "latency (s)", "↓"),
                Column("throughput", "img/s", "↑"), Column("memory", f"Mem ({unit})", "↓"),
                Column("network_calls", "network calls"), Column("overhead", "overhead")]
    rows = []
    for r in df.to_dict("records"):
        rnd = perf_is_random(r["method"], r.get("preset"), method_weights)
        dlc = _cell_decimals(r["latency_median_s"], dl)
        lat = _fmt(r["latency_median_s"], dlc)
        if np.isfinite(r["latency_iqr_s"]) and np.isfinite(r["latency_median_s"]):
            lat += f" ± {_fmt(r['latency_iqr_s'] / 2, dlc)}"
        cells = [Cell(txt(r.get("mode")))] if show_mode else []
        cells += [Cell(txt(r.get("preset"))), Cell(txt(r.get("device")))]
        cells += [Cell(txt(r["resolution"]))] if show_res else []
        cells += [Cell(txt(r["batch_size"])),
                  Cell(lat, random=rnd, value=r["latency_median_s"]),
                  Cell(_fmt(r["throughput_img_s"], _cell_decimals(r["throughput_img_s"], dt)), random=rnd,
                       value=r["throughput_img_s"]),
                  Cell(_fmt(r["peak_mem_bytes"] / scale, dm), random=rnd, value=r["peak_mem_bytes"]),
                  Cell(txt(r.get("network_calls"))), Cell(txt(r["overhead"]))]
        rows.append((str(r["method"]), cells))
    table = Table(name="perf", title="Speed and memory (benchmark.py perf)", columns=columns, rows=rows,
                  notes=["latency: median over timed repeats ± half the interquartile range; img/s: throughput; "
                         "overhead: wall time / time inside the method's declared networks (hooked runs); "
                         "one row per mode."],
                  data=perf.reset_index(drop=True))
    if cpu.any():
        table.notes.append(CPU_MEM_NOTE.replace("CPU runs", "CPU rows"))
    if table.has_random:
        table.notes.append(RANDOM_NOTE)
    return table


# ----------------------------------------------------------------------------------------------- renderers
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def _full_label(c: Column) -> str:
    return f"{c.label} ({c.sub})" if c.sub else c.label


def _headers(t: Table) -> list[str]:
    return [f"{c.group} · {_full_label(c)}" if c.group else _full_label(c) for c in t.columns]


def _label(c: Column) -> str:
    return f"{_full_label(c)} {c.arrow}".rstrip()


def to_csv(t: Table) -> str:
    """The raw numbers behind a table (long form, full precision), as CSV text."""
    return t.data.to_csv(index=False, lineterminator="\n")


_MD_SPECIAL = str.maketrans({**{c: "\\" + c for c in "\\`*_[]#|~!"}, "<": "&lt;", ">": "&gt;", "&": "&amp;",
                              "\n": " ", "\r": " "})


def _md_escape(s: str) -> str:
    """Text as literal Markdown: no emphasis, links, images, headings, code spans, table cells or raw HTML, and on
    one line (names of task folders, method labels and prompts come from users)."""
    return str(s).translate(_MD_SPECIAL)


def to_markdown(t: Table, *, heading: str | None = "###") -> str:
    """GitHub-flavoured Markdown: an optional heading, the table (one row per method; reference rows after a
    "*reference*" divider row, warning rows last), footnotes as a list."""
    heads = [t.row_header] + [f"{h} {c.arrow}".rstrip() for h, c in zip(_headers(t), t.columns)]  # task · label ↓
    lines = []
    if heading:
        lines += [f"{heading} {_md_escape(t.title)}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in heads) + " |")
    lines.append("|:---|" + "|".join("---:" for _ in t.columns) + "|")
    blank = [""] * len(t.columns)

    def md_row(label: str, cells: Sequence[Cell]) -> str:
        out = []
        for c in cells:
            s = _md_escape(c.text)
            if c.best:
                s = f"**{s}**"
            if c.random:
                s += DAGGER
            if c.note:
                s += f" ({_md_escape(c.note)})"
            out.append(s)
        return "| " + " | ".join([_md_escape(label)] + out) + " |"

    for label, cells in t.rows:
        if label in t.references and label == t.references[0]:
            lines.append("| " + " | ".join(["*reference*", *blank]) + " |")
        lines.append(md_row(label, cells))
    for label, cells in t.footer:
        lines.append(md_row(label, cells))
    if t.notes:
        lines.append("")
        lines += [f"- {_md_escape(n)}" for n in t.notes]
    return "\n".join(lines) + "\n"


_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$",
    "↓": r"$\downarrow$", "↑": r"$\uparrow$", "—": "---", "…": r"\ldots{}", "·": r"$\cdot$", "<": r"\textless{}",
    ">": r"\textgreater{}", "×": r"$\times$", "³": r"$^3$", "⚠": r"(!)", "→": r"$\rightarrow$", "≥": r"$\geq$",
}


def latex_escape(s: str) -> str:
    """Escape LaTeX specials (_ & % $ # { } ~ ^ \\) and spell the symbols the tables use (± † ↓ ↑ — × ³)."""
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in str(s))


LATEX_PACKAGES = ("booktabs", "graphicx")
# LaTeX's two-column article (10 pt) sets \textwidth 469 pt and \columnwidth 229.5 pt (conference classes are
# close: 505 / 241 pt). Tables whose estimated natural width exceeds COLUMN_PT become `table*` (full text width);
# any table still wider than its float is scaled down to fit by the emitted code itself (it measures the tabular
# in a box first), so the estimate only picks the float.
COLUMN_PT = 229.0


def _latex_cell(c: Cell, ci: bool) -> str:
    if c.mean_text:
        s = latex_escape(c.mean_text)
        if c.best:
            s = f"\\textbf{{{s}}}"
        if ci and c.ci_text:
            s += f"{{\\scriptsize$\\pm${latex_escape(c.ci_text)}}}"
    else:
        s = latex_escape(c.text)
        if c.best:
            s = f"\\textbf{{{s}}}"
    if c.random:
        s += "$^\\dagger$"
    if c.note:
        s += f"{{\\scriptsize\\,({latex_escape(c.note)})}}"
    return s


def _latex_width_estimate(header: Sequence[str], rows: Sequence[Sequence[str]]) -> float:
    """A rough natural width (pt) of the tabular at \\footnotesize: ~4.4 pt per visible character plus the
    column separation; only decides `table` vs `table*` (the emitted code scales what still does not fit)."""
    def visible(s: str) -> int:
        s = re.sub(r"\\scriptsize|\\textbf|\\,|\$\^\\dagger\$|\$\\pm\$", "x", s)
        return len(re.sub(r"[{}$\\]", "", s))

    cols = [list(col) for col in zip(header, *rows)] if rows else [[h] for h in header]
    return sum(4.4 * max(visible(x) for x in col) + 12.0 for col in cols)


def to_latex(t: Table, *, label: str | None = None, ci: bool = True, speed: bool = True, memory: bool = True,
             wide: bool | None = None) -> str:
    """A booktabs table that fits a two-column article: `table` when it fits one column, `table*` otherwise
    (`wide` forces either), numbers right-aligned, cells "mean{\\scriptsize ±ci}" (`ci=False` drops the CI),
    s/img and memory columns optional (`speed`, `memory`), reference rows below a \\midrule, FID/KID warning rows
    below another; the tabular is measured in a box and scaled down to \\linewidth only when wider. Needs
    \\usepackage{booktabs,graphicx} (named in the first line)."""
    keep = [j for j, c in enumerate(t.columns)
            if not ((c.metric == SPEED and not speed) or (c.metric == MEMORY and not memory))]
    columns = [t.columns[j] for j in keep]
    ncol = len(columns)
    head = [latex_escape(t.row_header)] + [latex_escape(f"{c.label} {c.arrow}".rstrip()) for c in columns]
    subs = [""] + [f"{{\\scriptsize {latex_escape(c.sub)}}}" if c.sub else "" for c in columns]
    body = [[latex_escape(lbl)] + [_latex_cell(cells[j], ci) for j in keep] for lbl, cells in t.rows]
    foot = [[latex_escape(lbl)] + [_latex_cell(cells[j], ci) for j in keep] for lbl, cells in t.footer]
    if wide is None:
        wide = _latex_width_estimate(head, [*body, *foot, subs]) > COLUMN_PT
    env = "table*" if wide else "table"
    out = [
        f"% Generated by i2i-zoo reports; needs \\usepackage{{{','.join(LATEX_PACKAGES)}}}.",
        f"\\begin{{{env}}}[t]",
        "\\centering",
        "\\footnotesize",
        "\\setlength{\\tabcolsep}{3pt}",
        f"\\caption{{{latex_escape(t.title)}}}",
        f"\\label{{{label or 'tab:' + t.name}}}",
        "\\ifdefined\\izootable\\else\\newsavebox{\\izootable}\\fi",
        "\\global\\sbox{\\izootable}{%",
        "\\begin{tabular}{l" + "r" * ncol + "}",
        "\\toprule",
    ]
    groups: list[tuple[str, int]] = []
    for c in columns:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    if any(g for g, _ in groups):
        cells, rules, col = [""], [], 2
        for g, n in groups:
            if g:
                cells.append(f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(t.group_titles.get(g, g))}}}")
                rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
            else:  # ungrouped columns (e.g. "fail") keep one empty cell each
                cells += [""] * n
            col += n
        out.append(" & ".join(cells) + " \\\\")
        out.append(" ".join(rules))
    out.append(" & ".join(head) + " \\\\")
    if any(subs):
        out.append(" & ".join(subs) + " \\\\")
    out.append("\\midrule")
    for (lbl, _), row in zip(t.rows, body):
        if t.references and lbl == t.references[0] and lbl != t.rows[0][0]:
            out.append("\\midrule")
        out.append(" & ".join(row) + " \\\\")
    if foot:
        out.append("\\midrule")
        out += [" & ".join(row) + " \\\\" for row in foot]
    out += ["\\bottomrule", "\\end{tabular}}",
            "\\ifdim\\wd\\izootable>\\linewidth\\resizebox{\\linewidth}{!}{\\usebox{\\izootable}}"
            "\\else\\usebox{\\izootable}\\fi"]
    if t.notes:
        out.append("\\par\\smallskip{\\scriptsize\\raggedright")
        out += [latex_escape(n) + "\\par" for n in t.notes]
        out.append("}")
    out.append(f"\\end{{{env}}}")
    return "\n".join(out) + "\n"


def to_html(t: Table, *, skip_notes: Sequence[str] = ()) -> str:
    """An HTML <table> (two header rows when tasks are grouped; reference and warning rows in their own <tbody>
    below a rule) with footnotes (less `skip_notes`, which a page shows once for all its tables)."""
    e = html.escape
    out = [f'<table class="results" id="{e(t.name)}">', "<thead>"]
    groups: list[tuple[str, int]] = []
    for c in t.columns:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    grouped = any(g for g, _ in groups)
    if grouped:
        out.append(f'<tr><th rowspan="2">{e(t.row_header)}</th>' + "".join(
            f'<th colspan="{n}" class="group">{e(t.group_titles.get(g, g))}</th>' if g else "<th></th>" * n
            for g, n in groups) + "</tr>")
        out.append("<tr>" + "".join(f"<th>{e(_label(c))}</th>" for c in t.columns) + "</tr>")
    else:
        out.append(f"<tr><th>{e(t.row_header)}</th>" + "".join(f"<th>{e(_label(c))}</th>" for c in t.columns)
                   + "</tr>")
    out.append("</thead>")

    def tr(label: str, cells: Sequence[Cell]) -> str:
        tds = []
        for c in cells:
            s = e(c.mean_text) if c.mean_text else e(c.text)
            if c.best:
                s = f"<strong>{s}</strong>"
            if c.mean_text and c.ci_text:
                s += f'<span class="ci"> ± {e(c.ci_text)}</span>'
            if c.random:
                s += f'<sup class="rand" title="random weights">{DAGGER}</sup>'
            if c.note:
                s += f" <small>({e(c.note)})</small>"
            tds.append(f"<td>{s}</td>")
        return f'<tr><th class="row">{e(label)}</th>' + "".join(tds) + "</tr>"

    main = [(lbl, cells) for lbl, cells in t.rows if lbl not in t.references]
    refs = [(lbl, cells) for lbl, cells in t.rows if lbl in t.references]
    for cls, block in (("", main), ("ref", refs), ("warn", t.footer)):
        if block:
            out.append(f'<tbody class="{cls}">' if cls else "<tbody>")
            out += [tr(lbl, cells) for lbl, cells in block]
            out.append("</tbody>")
    out.append("</table>")
    notes = [n for n in t.notes if n not in skip_notes]
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out) + "\n"


def _g(x: Any) -> str:
    """Three significant digits (paired-statistics cells); — for NaN."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "—" if not np.isfinite(v) else f"{v:.3g}"


def paired_rows(paired: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(headers, formatted rows) of the paired-comparison table, in the frame's order."""
    headers = ["task", "metric", "A", "B", "n", "mean A − B", "95% CI", "test", "p", "p (Holm)", "better"]
    rows = []
    for r in paired.to_dict("records"):
        ci = f"[{_g(r['diff_lo'])}, {_g(r['diff_hi'])}]" + (" (pct)" if r["ci_method"] == "percentile" else "")
        rows.append([str(r["task"]), metric_label(str(r["metric"])), str(r["method_a"]), str(r["method_b"]),
                     str(int(r["n"])), _g(r["diff"]), ci, str(r["test"]), _g(r["p"]), _g(r["p_holm"]),
                     str(r["better"]) or "—"])
    return headers, rows


PAIRED_NOTE = ("Paired by sample id on every task and per-image metric: mean difference A − B with its 95% BCa "
               "bootstrap CI (\"pct\": percentile, where BCa is degenerate), two-sided p from the Wilcoxon "
               "signed-rank test (zero differences dropped), or from the paired permutation test of the mean "
               "(random sign flips) for binary metrics and where Wilcoxon is undefined; p (Holm): Holm-adjusted "
               f"over the pairs of one task and metric; better: the significantly better method (p (Holm) < {ALPHA})"
               ", — when none.")
WINS_NOTE = ("Row method vs column method: wins / ties / losses over the (task, metric) comparisons both ran; a win "
             f"is significantly better after Holm's correction (p < {ALPHA}), a tie is no significant difference.")


def paired_markdown(paired: pd.DataFrame, wins: pd.DataFrame) -> str:
    """The wins/ties/losses matrix and the full paired-comparison table as Markdown."""
    e = _md_escape
    out = ["### Wins / ties / losses", "", WINS_NOTE, ""]
    if wins is not None and not wins.empty:
        out.append("| method | " + " | ".join(e(c) for c in wins.columns) + " |")
        out.append("|:---|" + "|".join("---:" for _ in wins.columns) + "|")
        out += ["| " + " | ".join([e(m), *(e(v) for v in row)]) + " |" for m, row in zip(wins.index,
                                                                                           wins.to_numpy())]
    else:
        out.append("No pairs of methods share samples.")
    out += ["", "### Paired differences", "", PAIRED_NOTE, ""]
    headers, rows = paired_rows(paired) if paired is not None else ([], [])
    if rows:
        out.append("| " + " | ".join(e(h) for h in headers) + " |")
        out.append("|" + "|".join(":---" if i < 4 or i == 7 else "---:" for i in range(len(headers))) + "|")
        out += ["| " + " | ".join(e(c) for c in r) + " |" for r in rows]
    else:
        out.append("None.")
    return "\n".join(out) + "\n"


def write_tables(tables: Sequence[Table], out_dir: str | Path, *, summary: pd.DataFrame | None = None,
                 paired: pd.DataFrame | None = None, wins: pd.DataFrame | None = None) -> list[Path]:
    """Write each table as `<name>.csv` (raw numbers), `.md` and `.tex` under `out_dir` (atomically), plus
    `summary.csv` (every method x task x metric) when `summary` is given, and `paired.csv` / `wins.csv` /
    `paired.md` (the paired statistics) when `paired` is given. Returns the written paths."""
    out = Path(out_dir)
    paths = []
    if summary is not None:
        p = out / "summary.csv"
        atomic_write_text(p, summary.to_csv(index=False, lineterminator="\n"))
        paths.append(p)
    if paired is not None:
        wins = wins if wins is not None else pd.DataFrame()
        for name, text in (("paired.csv", paired.to_csv(index=False, lineterminator="\n")),
                           ("wins.csv", wins.to_csv(lineterminator="\n")),
                           ("paired.md", paired_markdown(paired, wins))):
            atomic_write_text(out / name, text)
            paths.append(out / name)
    for t in tables:
        for ext, text in (("csv", to_csv(t)), ("md", to_markdown(t)), ("tex", to_latex(t))):
            p = out / f"{t.name}.{ext}"
            atomic_write_text(p, text)
            paths.append(p)
    return paths
