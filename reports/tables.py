"""Paper-style tables from the run summary: one main table per task kind, rendered as CSV, Markdown, LaTeX, HTML.

Why a table model: the same cells (value text, best-in-column flag, random-weights flag, N/NaN note) must read
the same in the Markdown report, the LaTeX a user pastes into a paper and the HTML page, so the decisions are
made once (`build_main_tables`) and each renderer only spells them. Columns carry the metric's direction as an
arrow; the best value per column is bold; cells read "mean ± half-width of the 95% bootstrap CI"; every number
computed with random weights carries a dagger and the table a footnote saying it is not comparable to papers.
The CSV files hold the raw numbers (long form), not the formatted strings.
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

from .aggregate import MEMORY, SPEED, SUMMARY_COLUMNS, canonical_metric, count_failures

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


@dataclass
class Column:
    """A table column: `group` (the task, for multi-task tables), `label` and the direction `arrow`."""

    key: str
    label: str
    arrow: str = ""
    group: str = ""


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


def _mark_best(cells: list[Cell], direction: str | None, decimals: int, scale: float = 1.0) -> None:
    """Bold the best value(s) of a column, compared as displayed (ties at the shown precision all bold)."""
    if direction not in ARROWS:
        return
    shown = [(i, round(c.value / scale, _cell_decimals(c.value / scale, decimals))) for i, c in enumerate(cells)
             if np.isfinite(c.value)]
    if len(shown) < 2:
        return
    best = min(v for _, v in shown) if direction == "lower" else max(v for _, v in shown)
    for i, v in shown:
        cells[i].best = v == best


def _column_cells(
    rows: Sequence[dict[str, Any] | None], metric: str, expected_n: int | None
) -> tuple[list[Cell], str, int, float]:
    """Format one column: returns cells, the unit suffix for the label, the decimals and the display scale."""
    values = [float(r["mean"]) if r is not None else math.nan for r in rows]
    scale, unit = 1.0, ""
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
        text = _fmt(mean, dc) if np.isfinite(mean) else "—"
        if np.isfinite(mean) and np.isfinite(half):
            text += f" ± {_fmt(half, dc)}"
        if r["source"] == "distribution":
            if common_gen is None and np.isfinite(r["n_gen"]):
                notes.append(f"n={int(r['n_gen'])}/{int(r['n_ref'])}" if np.isfinite(r["n_ref"])
                             else f"n={int(r['n_gen'])}")
        elif metric != MEMORY and (expected_n is None or int(r["n"]) != expected_n):
            notes.append(f"n={int(r['n'])}")
        if int(r["n_nan"]) and metric != MEMORY:
            notes.append(f"{int(r['n_nan'])} NaN")
        cells.append(Cell(text=text, note=", ".join(notes), random=r["weights"] == "random", value=float(r["mean"])))
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


def build_main_tables(
    summary: pd.DataFrame,
    run: Run | None = None,
    *,
    kinds: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Table]:
    """One main table per task kind: rows = methods, columns = (task, metric) with arrows, then s/img and
    memory; a "fail" column when any sample failed. `run` supplies method/task order, kinds, expected N per
    task and failures (methods that failed entirely have no summary rows but still get a row of dashes).
    `n_boot`, `confidence` and `seed` only word the footnote; they must match what built `summary`.
    """
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    expected = run.expected_samples() if run is not None else {}
    failures = run.failures if run is not None else pd.DataFrame()
    fail_counts = count_failures(failures, expected)
    tasks = run.tasks if run is not None else sorted(summary["task"].unique())
    kind_of = run.kind if run is not None else (
        lambda t: str(summary.loc[summary["task"] == t, "kind"].iloc[0]) if (summary["task"] == t).any() else "other")
    method_order = run.methods if run is not None else sorted(summary["method"].unique())
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
        group_titles: dict[str, str] = {}
        dist_notes: list[str] = []
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
                _mark_best(cells, direction, d, scale)
                label = metric_label(metric) + (f" ({unit})" if unit else "")
                columns.append(Column(key=f"{task}/{metric}", label=label, arrow=ARROWS.get(direction or "", ""),
                                      group=task if multi else ""))
                col_cells.append(cells)
            dist_notes += distribution_caveats(task, tsub[tsub["method"].isin(methods)])
        if any(fails.get(m, 0) for m in methods):
            columns.append(Column(key="failed", label="fail"))
            col_cells.append([Cell(text=str(fails.get(m, 0)), value=float(fails.get(m, 0))) for m in methods])
        rows_out = [(m, [cells[i] for cells in col_cells]) for i, m in enumerate(methods)]
        notes = [
            f"Mean ± half-width of the {confidence:.0%} percentile-bootstrap CI over samples (B={n_boot}, seed "
            f"{seed}); N = samples per task; (n=…) marks cells with fewer finite values; NaN = undefined values, "
            "counted, not averaged.",
            "Bold: best in column (↓ lower is better, ↑ higher is better); — : no value.",
            *dist_notes,
        ]
        if any(c.key.endswith(f"/{SPEED}") or c.key.endswith(f"/{MEMORY}") for c in columns):
            notes.append("s/img: per-sample share of batch wall time; Mem: peak memory over the task's batches.")
        if any(c.key == "failed" for c in columns):
            notes.append("fail: samples that failed to load, translate or save (listed in the report).")
        table = Table(name=f"main_{_slug(kind)}", title=KIND_TITLES.get(kind, kind), columns=columns, rows=rows_out,
                      notes=notes, data=sub[sub["method"].isin(methods)].reset_index(drop=True),
                      group_titles=group_titles)
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
    if table.has_random:
        table.notes.append(RANDOM_NOTE)
    return table


# ----------------------------------------------------------------------------------------------- renderers
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_") or "x"


def _headers(t: Table) -> list[str]:
    return [f"{c.group} · {c.label}" if c.group else c.label for c in t.columns]


def _label(c: Column) -> str:
    return f"{c.label} {c.arrow}".rstrip()


def to_csv(t: Table) -> str:
    """The raw numbers behind a table (long form, full precision), as CSV text."""
    return t.data.to_csv(index=False, lineterminator="\n")


def _md_escape(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def to_markdown(t: Table, *, heading: str | None = "###") -> str:
    """GitHub-flavoured Markdown: an optional heading, the table (one row per method), footnotes as a list."""
    heads = [t.row_header] + [f"{h} {c.arrow}".rstrip() for h, c in zip(_headers(t), t.columns)]  # task · label ↓
    lines = []
    if heading:
        lines += [f"{heading} {_md_escape(t.title)}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in heads) + " |")
    lines.append("|:---|" + "|".join("---:" for _ in t.columns) + "|")
    for label, cells in t.rows:
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
        lines.append("| " + " | ".join([_md_escape(label)] + out) + " |")
    if t.notes:
        lines.append("")
        lines += [f"- {_md_escape(n)}" for n in t.notes]
    return "\n".join(lines) + "\n"


_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$",
    "↓": r"$\downarrow$", "↑": r"$\uparrow$", "—": "---", "…": r"\ldots{}", "·": r"$\cdot$", "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(s: str) -> str:
    """Escape LaTeX specials (_ & % $ # { } ~ ^ \\) and spell the symbols the tables use (± † ↓ ↑ —)."""
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in str(s))


def to_latex(t: Table, *, label: str | None = None) -> str:
    """A booktabs `table` environment (toprule/midrule/bottomrule, task groups with cmidrule), footnotes
    below; needs `\\usepackage{booktabs}`."""
    ncol = len(t.columns)
    out = [
        "% Generated by i2i-zoo reports; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(t.title)}}}",
        f"\\label{{{label or 'tab:' + t.name}}}",
        "\\begin{tabular}{l" + "c" * ncol + "}",
        "\\toprule",
    ]
    groups: list[tuple[str, int]] = []
    for c in t.columns:
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
    out.append(" & ".join([latex_escape(t.row_header)] + [latex_escape(_label(c)) for c in t.columns]) + " \\\\")
    out.append("\\midrule")
    for label_, cells in t.rows:
        row = [latex_escape(label_)]
        for c in cells:
            s = latex_escape(c.text)
            if c.best:
                s = f"\\textbf{{{s}}}"
            if c.random:
                s += "$^\\dagger$"
            if c.note:
                s += f" {{\\scriptsize ({latex_escape(c.note)})}}"
            row.append(s)
        out.append(" & ".join(row) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if t.notes:
        out.append("\\par\\smallskip{\\footnotesize\\raggedright")
        out += [latex_escape(n) + "\\par" for n in t.notes]
        out.append("}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def to_html(t: Table) -> str:
    """An HTML <table> (two header rows when tasks are grouped) with footnotes, for the self-contained page."""
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
    out += ["</thead>", "<tbody>"]
    for label, cells in t.rows:
        tds = []
        for c in cells:
            s = e(c.text)
            if c.best:
                s = f"<strong>{s}</strong>"
            if c.random:
                s += f'<sup class="rand" title="random weights">{DAGGER}</sup>'
            if c.note:
                s += f" <small>({e(c.note)})</small>"
            tds.append(f"<td>{s}</td>")
        out.append(f'<tr><th class="row">{e(label)}</th>' + "".join(tds) + "</tr>")
    out += ["</tbody>", "</table>"]
    if t.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in t.notes) + "</ul>")
    return "\n".join(out) + "\n"


def write_tables(tables: Sequence[Table], out_dir: str | Path, *, summary: pd.DataFrame | None = None) -> list[Path]:
    """Write each table as `<name>.csv` (raw numbers), `.md` and `.tex` under `out_dir` (atomically), plus
    `summary.csv` (every method x task x metric) when `summary` is given. Returns the written paths."""
    out = Path(out_dir)
    paths = []
    if summary is not None:
        p = out / "summary.csv"
        atomic_write_text(p, summary.to_csv(index=False, lineterminator="\n"))
        paths.append(p)
    for t in tables:
        for ext, text in (("csv", to_csv(t)), ("md", to_markdown(t)), ("tex", to_latex(t))):
            p = out / f"{t.name}.{ext}"
            atomic_write_text(p, text)
            paths.append(p)
    return paths
