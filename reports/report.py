"""One command from a run directory to a paper-style report: `report.md` and a self-contained `report.html`.

`write_report(run_dir)` reads only files inside the run (manifest, metrics CSVs, sidecars, failures, perf),
writes the tables (`tables/`, with the paired statistics), the figures (`figures/`, with downscaled JPEG
thumbnails in `figures/thumbs/`) and the two report pages. No metric is recomputed and torch is never imported, so
a report can be rebuilt anywhere, any time, and the result is byte-identical (every date shown comes from the
manifest). The pages read like a results section: contents, the headline tables first, then the paired
comparisons and figures, and the bulk (metric definitions, failures, skipped pairs, configurations) folded into
<details>. The HTML page has inline CSS and no external resource; it shows each figure as a thumbnail linked to the
full-size PNG (relative links into the run directory: keep the page with its run). Partial runs (no metrics yet,
no perf, methods that failed entirely) give a report of what exists, with the gaps stated.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from eval.harness.rundir import REPORT_HTML, REPORT_MD
from eval.store import atomic_write_text
from eval.vocab import DEFAULT_FIGURE_FORMATS

from .aggregate import Run, count_failures, describe_manifest_value, load_run, summarize_run
from .figures import write_figures, write_thumbnail
from .stats import paired_comparisons, wins_matrix
from .tables import (
    DAGGER,
    PAIRED_NOTE,
    RANDOM_NOTE,
    WINS_NOTE,
    Table,
    build_main_tables,
    build_perf_table,
    paired_markdown,
    paired_rows,
    to_html,
    to_markdown,
    write_tables,
)

__all__ = ["ReportData", "build_report", "render_html", "render_markdown", "write_report"]

MAX_FAILURES_LISTED = 500


class ReportData:
    """Everything the two renderers share: the run, its summary, tables, figure paths and derived facts."""

    def __init__(self, run: Run, summary: pd.DataFrame, tables: list[Table], perf_table: Table | None,
                 figures: dict[str, Path], paired: pd.DataFrame | None = None, wins: pd.DataFrame | None = None,
                 thumbs: dict[str, Path] | None = None) -> None:
        self.run = run
        self.summary = summary
        self.tables = tables
        self.perf_table = perf_table
        self.figures = figures
        self.paired = paired if paired is not None else pd.DataFrame()
        self.wins = wins if wins is not None else pd.DataFrame()
        self.thumbs = thumbs or {}

    @property
    def random_methods(self) -> list[str]:
        """Methods whose weights are random (manifest label, or any of their numbers)."""
        rnd = {m for m in self.run.methods if self.run.method_weights(m) == "random"}
        if not self.summary.empty:
            rnd |= set(self.summary.loc[self.summary["weights"] == "random", "method"])
        # a method without weights (identity) did not run with random weights, whatever its metrics' encoders
        rnd -= {m for m in self.run.methods if str(self.run.method_info(m).get("weights_label")) in ("none", "n/a")}
        return [m for m in self.run.methods if m in rnd] + sorted(rnd - set(self.run.methods))

    @property
    def random_metrics(self) -> list[str]:
        """Metrics whose own model (encoder) is marked random in metric_info.json."""
        return sorted(k for k, v in self.run.metric_info.items()
                      if str(v.get("weights") or v.get("weights_label") or "").lower() == "random")

    @property
    def any_random(self) -> bool:
        return bool(self.random_methods or self.random_metrics or (
            not self.summary.empty and (self.summary["weights"] == "random").any()))

    def coverage(self) -> tuple[list[str], list[tuple[str, list[str]]]]:
        """Per method x task: outputs present / samples expected, with failures (a run-status table)."""
        run = self.run
        expected = run.expected_samples()
        fails = count_failures(run.failures, expected)
        tasks = run.tasks
        rows = []
        for m in run.methods:
            cells = []
            for t in tasks:
                n_out = 0
                if not run.outputs.empty:
                    o = run.outputs[(run.outputs["method"] == m) & (run.outputs["task"] == t)]
                    n_out = int(o["path"].notna().sum())
                nf = fails.get((m, t, None), 0)
                exp = expected.get(t)
                if not n_out and not nf:
                    cells.append("—")
                    continue
                s = f"{n_out}/{exp}" if exp else str(n_out)
                cells.append(s + (f" · {nf} failed" if nf else ""))
            rows.append((m, cells))
        return tasks, rows


def build_report(run_dir: str | Path, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                 max_rows: int = 8, figures: bool = True, quiet: bool = True,
                 figure_formats: Sequence[str] = DEFAULT_FIGURE_FORMATS) -> ReportData:
    """Load the run, summarise it, write `tables/` (and `figures/` unless `figures=False`) and return the data
    the report pages are rendered from."""
    run = load_run(run_dir)
    summary = summarize_run(run, n_boot=n_boot, confidence=confidence, seed=seed)
    order = [m for m in run.methods if not run.is_reference(m)] + [m for m in run.methods if run.is_reference(m)]
    directions = {m: d for m, d in zip(summary["metric"], summary["direction"]) if isinstance(d, str)}
    paired = paired_comparisons(run.per_image, directions=directions, methods=order, n_boot=n_boot,
                                confidence=confidence, seed=seed)
    wins = wins_matrix(paired, order)
    tables = build_main_tables(summary, run, n_boot=n_boot, confidence=confidence, seed=seed, paired=paired)
    perf_table = build_perf_table(run.perf, {m: run.method_weights(m) for m in run.methods})
    write_tables([*tables, *([perf_table] if perf_table else [])], run.root / "tables", summary=summary,
                 paired=paired, wins=wins)
    figs = write_figures(run, summary, max_rows=max_rows, quiet=quiet, formats=figure_formats) if figures else {}
    thumb_dir = run.root / "figures" / "thumbs"
    thumbs = {key: write_thumbnail(png, thumb_dir / f"{png.stem}.jpg") for key, png in figs.items()}
    if thumb_dir.is_dir():  # no stale thumbnail of a figure this report no longer draws
        for f in thumb_dir.glob("*.jpg"):
            if f not in thumbs.values():
                f.unlink()
    return ReportData(run, summary, tables, perf_table, figs, paired, wins, thumbs)


def write_report(run_dir: str | Path, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                 max_rows: int = 8, figures: bool = True, quiet: bool = True,
                 figure_formats: Sequence[str] = DEFAULT_FIGURE_FORMATS) -> tuple[Path, Path]:
    """Build `report.md` and the self-contained `report.html` in `run_dir` (plus `tables/` and `figures/`).

    Reads only files in the run directory; the same run gives the same bytes every time. `n_boot`,
    `confidence` and `seed` set the bootstrap CIs; `max_rows` caps the samples shown per image grid;
    `figures=False` skips drawing (faster; the pages then show no figures); `figure_formats` ("png" and
    optionally "pdf") are the files written per figure; `quiet=False` shows a progress bar.
    Returns (md_path, html_path).
    """
    data = build_report(run_dir, n_boot=n_boot, confidence=confidence, seed=seed, max_rows=max_rows,
                        figures=figures, quiet=quiet, figure_formats=figure_formats)
    md_path, html_path = data.run.root / REPORT_MD, data.run.root / REPORT_HTML
    atomic_write_text(md_path, render_markdown(data))
    atomic_write_text(html_path, render_html(data))
    return md_path, html_path


# ----------------------------------------------------------------------------------------------- shared bits
def _created(manifest: dict[str, Any]) -> str | None:
    for key in ("created", "created_at", "time", "timestamp", "date"):
        if manifest.get(key):
            return str(manifest[key])
    return None


def _headline(run: Run) -> list[tuple[str, str]]:
    """The few facts shown under the title: created, git SHA, device, seed, command."""
    m = run.manifest
    git = m.get("git_sha") or m.get("git") or m.get("sha")
    if isinstance(git, dict):  # e.g. {"sha": ..., "dirty": ...}
        git = git.get("sha") or git.get("commit") or git
    facts = [("created", _created(m)), ("git", git), ("device", m.get("device")), ("seed", m.get("seed"))]
    cmd = m.get("command")
    if isinstance(cmd, list):
        cmd = " ".join(map(str, cmd))
    facts.append(("command", cmd))
    return [(k, describe_manifest_value(v)) for k, v in facts if v not in (None, "", [], {})]


def _banner_text(data: ReportData) -> str:
    parts = []
    if data.random_methods:
        parts.append("methods " + ", ".join(data.random_methods) + " ran with random weights")
    if data.random_metrics:
        parts.append("metrics " + ", ".join(data.random_metrics) + " used randomly initialised encoders")
    what = "; ".join(parts) if parts else "some numbers were computed with random weights"
    return (f"Random weights: {what}. Every number marked {DAGGER} is a smoke test of the pipeline and is NOT "
            "comparable to paper numbers.")


def _failure_rows(run: Run) -> list[dict[str, str]]:
    if run.failures.empty:
        return []
    rows = []
    for r in run.failures.to_dict("records"):
        rows.append({"method": str(r["method"]), "task": str(r["task"]),
                     "sample": r["sample"] if isinstance(r["sample"], str) else "(all)",
                     "phase": str(r["phase"]) + (f":{r['metric']}" if isinstance(r.get("metric"), str) else ""),
                     "error": str(r["error"]), "traceback": str(r["traceback"]), "path": str(r["path"])})
    return rows


def _first_line(s: str, limit: int = 200) -> str:
    line = s.strip().splitlines()[0] if s.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _provenance(manifest: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The manifest as (title, headers, rows) tables: top-level scalars, then one table per mapping."""
    def records(v: Any) -> bool:  # a non-empty list of dicts (e.g. "skipped": [{method, task, reason}])
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    manifest = {k: v for k, v in manifest.items() if k != "skipped"}  # the report lists those on their own
    scalars = [[k, describe_manifest_value(v)] for k, v in manifest.items() if not isinstance(v, dict)
               and not records(v)]
    out: list[tuple[str, list[str], list[list[str]]]] = []
    if scalars:
        out.append(("Run", ["key", "value"], scalars))
    keys = [k for k in ("methods", "tasks") if isinstance(manifest.get(k), dict)]
    keys += [k for k in manifest if (isinstance(manifest[k], dict) or records(manifest[k])) and k not in keys]
    for key in keys:
        value = manifest[key]
        if records(value):
            cols = []
            for v in value:
                cols += [c for c in v if c not in cols]
            out.append((key, cols, [[describe_manifest_value(v.get(c)) if c in v else "" for c in cols]
                                    for v in value]))
        elif value and all(isinstance(v, dict) for v in value.values()):
            cols: list[str] = []
            for v in value.values():
                cols += [c for c in v if c not in cols]
            rows = [[str(name)] + [describe_manifest_value(v.get(c)) if c in v else "" for c in cols]
                    for name, v in value.items()]
            out.append((key, ["name", *cols], rows))
        else:
            out.append((key, ["key", "value"], [[str(k), describe_manifest_value(v)] for k, v in value.items()]))
    return out


def _metric_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    cols = ["direction", "range", "preprocessing", "version", "model"]
    extra: list[str] = []
    for v in run.metric_info.values():
        extra += [c for c in v if c not in cols and c not in extra]
    rows = [[name] + [describe_manifest_value(info.get(c)) if c in info else "" for c in cols + extra]
            for name, info in sorted(run.metric_info.items())]
    return ["metric", *cols, *extra], rows


def _circularity_rows(run: Run) -> list[list[str]]:
    """(method, metric, shared features, held-out metrics of the run) wherever a metric reads features the method
    optimises (manifest `optimises` vs metric_info `reads`)."""
    rows = []
    for method in run.methods:
        optimised = set(run.method_info(method).get("optimises") or [])
        if not optimised:
            continue
        for metric, info in sorted(run.metric_info.items()):
            if info.get("reads") not in optimised:
                continue
            held = sorted(m for m, i in run.metric_info.items() if i.get("encoder") == info.get("encoder")
                          and i.get("reads") and i.get("reads") not in optimised)
            rows.append([method, metric, str(info["reads"]), ", ".join(held) or "none in this run"])
    return rows


def _method_sections(run: Run) -> list[tuple[str, str, list[str], list[tuple[str, str, bool]]]]:
    """Per method of the run with a card record: (name, paper line, upstream fixes kept on, [(variant, what it
    changes and its measured effect, on in this run)]) from the manifest's `fixes` / `variants` / `variants_on`."""
    out = []
    for method in run.methods:
        info = run.method_info(method)
        fixes = [str(f) for f in info.get("fixes") or []]
        variants = info.get("variants") or {}
        if not isinstance(variants, dict):
            variants = {}
        on = [str(v) for v in info.get("variants_on") or []]
        if not (fixes or variants or on):
            continue
        paper = " · ".join(str(info[k]) for k in ("paper", "url") if info.get(k))
        rows = []
        for key, text in variants.items():
            option = str(key).partition("=")[0]
            hits = [v for v in on if v.partition("=")[0] == option and ("=" not in str(key) or v == key)]
            rows.append((str(key), str(text), bool(hits)))
        out.append((method, paper, fixes, rows))
    return out


METHODS_NOTE = ("Each method's default configuration reproduces its authors' released code. Listed per method: the "
                "upstream bugs fixed by default, and the opt-in variants (deviations from the authors' algorithm); a "
                "variant turned on in this run is marked and named in the method's row.")


CIRCULARITY_NOTE = ("These methods optimise the very features these metrics read (e.g. DiffuseIT's structure losses "
                    "are built on DINO ViT-B/8 last-block keys, the features of DINO-Struct; its CLIP loss uses "
                    "ViT-B/32 and B/16 among others), so those columns favour them. Compare the held-out columns "
                    "(other encoders; the CLIP metrics use ViT-L/14, which no method here optimises).")


def _formats_note(sections: list[tuple[str, str, str, Path]]) -> str:
    """"PNG" or "PNG and PDF": the formats the figures were written in."""
    return "PNG and PDF" if all(png.with_suffix(".pdf").is_file() for *_, png in sections) else "PNG"


def _figure_sections(data: ReportData) -> list[tuple[str, str, str, Path]]:
    """(section, caption, figure key, png) for each figure, in report order."""
    out = []
    for task in data.run.tasks:
        if (p := data.figures.get(f"grid/{task}")) is not None:
            out.append(("Image grids", f"{task} ({data.run.kind(task)})", f"grid/{task}", p))
    names = {"tradeoff": "CLIP vs DINO-Struct trade-off", "latency": "Latency (s/img)", "memory": "Peak memory",
             "perf": "benchmark.py perf"}
    for key, caption in names.items():
        if (p := data.figures.get(key)) is not None:
            out.append(("Trade-off, speed and memory", caption, key, p))
    return out


# ----------------------------------------------------------------------------------------------- markdown
def _md(s: Any) -> str:
    from reports.tables import _md_escape

    return _md_escape(s)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "|".join(":---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _skipped_rows(run: Run) -> list[list[str]]:
    """(method, task, reason) of the pairs the run did not attempt (a method that does not support the kind)."""
    recs = run.manifest.get("skipped")
    if not isinstance(recs, list):
        return []
    return [[str(r.get("method", "")), str(r.get("task", "")), str(r.get("reason", ""))] for r in recs
            if isinstance(r, dict)]


def _contents(data: ReportData) -> list[tuple[str, str]]:
    """(anchor, title) of the report's sections, in order."""
    out = [("results", "Results")]
    if not data.paired.empty:
        out.append(("paired", "Paired comparisons"))
    if _figure_sections(data):
        out.append(("figures", "Figures"))
    out.append(("status", "Run status"))
    if _method_sections(data.run):
        out.append(("methods", "Methods"))
    out.append(("details", "Details: metric definitions, failures, skipped pairs, configurations"))
    return out


def render_markdown(data: ReportData) -> str:
    """The report as GitHub-flavoured Markdown: contents, headline tables, paired comparisons, figures (thumbnails
    linked to the full-size PNGs), run status, methods, then the details folded in <details> blocks."""
    run = data.run
    out = [f"# i2i-zoo report: {_md(run.name)}", ""]
    facts = _headline(run)
    if facts:
        out += [" · ".join(f"**{k}** {_md(v)}" for k, v in facts), ""]
    if data.any_random:
        out += [f"> **⚠ {_md(_banner_text(data))}**", ""]
    out += ["**Contents:** " + " · ".join(f"[{_md(t)}](#{a})" for a, t in _contents(data)), ""]

    out += ['<a id="results"></a>', "", "## Results", ""]
    if run.per_image.empty and run.distribution.empty:
        out += ["No metrics yet (`metrics/per_image.csv` and `metrics/distribution.csv` are absent or empty); "
                "the tables show speed and memory only.", ""]
    if not data.tables:
        out += ["No results to tabulate.", ""]
    for t in data.tables:
        out += [to_markdown(t, heading="###"), ""]
    if data.perf_table is not None:
        out += [to_markdown(data.perf_table, heading="###"), ""]
    out += ["Tables as CSV (raw numbers), Markdown and LaTeX (booktabs; `\\usepackage{booktabs,graphicx}`) are in "
            "`tables/`.", ""]
    circ = _circularity_rows(run)
    if circ:
        out += ["### Metric circularity", "", CIRCULARITY_NOTE, "",
                _md_table(["method", "metric", "optimised features", "held-out metrics"], circ), ""]

    if not data.paired.empty:
        out += ['<a id="paired"></a>', "", "## Paired comparisons", ""]
        wins_part, _, pairs_part = paired_markdown(data.paired, data.wins).partition("### Paired differences")
        out += [wins_part.rstrip(), "",
                f"<details><summary>All {len(data.paired)} paired differences (also <code>tables/paired.csv</code>)"
                "</summary>", "", "### Paired differences" + pairs_part.rstrip(), "", "</details>", ""]

    sections = _figure_sections(data)
    if sections:
        out += ['<a id="figures"></a>', "", "## Figures", "",
                f"{_formats_note(sections)} of each figure are in `figures/`; click a thumbnail for the full size.",
                ""]
        current = None
        for section, caption, key, png in sections:
            if section != current:
                out += [f"### {_md(section)}", ""]
                current = section
            rel = quote(png.relative_to(run.root).as_posix())  # task and row names: a link target, never syntax
            thumb = data.thumbs.get(key)
            src = quote(thumb.relative_to(run.root).as_posix()) if thumb is not None else rel
            link = f" ([PDF]({rel[:-4]}.pdf))" if png.with_suffix(".pdf").is_file() else ""
            out += [f"**{_md(caption)}**{link}", "", f"[![{_md(caption)}]({src})]({rel})", ""]

    tasks, cov = data.coverage()
    out += ['<a id="status"></a>', "", "## Run status", "", "Outputs present / samples per task, and failed samples.",
            ""]
    out += [_md_table(["method", *tasks], [[m, *c] for m, c in cov]) if cov and tasks else "No methods ran.\n", ""]

    methods = _method_sections(run)
    if methods:
        out += ['<a id="methods"></a>', "", "## Methods", "", METHODS_NOTE, ""]
        for name, paper, fixes, variants in methods:
            out += [f"### {_md(name)}", ""]
            if paper:
                out += [_md(paper), ""]
            out += ["Upstream fixes kept on:" if fixes else "Upstream fixes kept on: none.", ""]
            out += [f"- {_md(f)}" for f in fixes] + ([""] if fixes else [])
            if variants:
                out += [_md_table(["variant", "in this run", "what it changes (measured effect)"],
                                  [[k, "ON" if on else "off", t] for k, t, on in variants]), ""]

    out += ['<a id="details"></a>', "", "## Details", ""]
    if run.metric_info:
        headers, rows = _metric_rows(run)
        out += ["<details><summary>Metric definitions</summary>", "",
                "Definitions as recorded by the run (`metrics/metric_info.json`); values are in the raw unit of each "
                "metric (tables print KID ×10³).", "", _md_table(headers, rows), "</details>", ""]
    fails = _failure_rows(run)
    out += [f"<details><summary>Failures ({len(fails)})</summary>", ""]
    if not fails:
        out += ["None.", ""]
    else:
        shown = fails[:MAX_FAILURES_LISTED]
        out += [_md_table(["method", "task", "sample", "phase", "error", "record"],
                          [[f["method"], f["task"], f["sample"], f["phase"], _first_line(f["error"]), f["path"]]
                           for f in shown]), ""]
        if len(fails) > len(shown):
            out += [f"… and {len(fails) - len(shown)} more in `failures/`.", ""]
        out += ["Tracebacks: in each record under `failures/` and in `report.html`.", ""]
    out += ["</details>", ""]
    skipped = _skipped_rows(run)
    if skipped:
        out += [f"<details><summary>Skipped pairs ({len(skipped)})</summary>", "",
                _md_table(["method", "task", "reason"], skipped), "</details>", ""]
    out += ["<details><summary>Configurations and provenance (manifest.json)</summary>", ""]
    if not run.manifest:
        out += ["No manifest.json in this run.", ""]
    for title, headers, rows in _provenance(run.manifest):
        out += [f"#### {_md(title)}", "", _md_table(headers, rows), ""]
    out += ["</details>", ""]
    if data.any_random:
        out += ["---", "", RANDOM_NOTE, ""]
    return "\n".join(out).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.facts{color:#555;font-size:.9em}.facts b{color:#222}
.banner{background:#fff3cd;border:2px solid #d39e00;color:#5c4400;padding:.8em 1em;border-radius:6px;
font-weight:600;margin:1em 0}
nav.toc{background:#f6f8fa;border:1px solid #ddd;border-radius:6px;padding:.4em 1em;display:inline-block}
nav.toc ol{margin:.3em 0;padding-left:1.4em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{padding:.25em .5em;text-align:right;border:none;white-space:nowrap}
table.results thead th{white-space:normal;vertical-align:bottom}table.results thead tr:only-child th:first-child,
table.results thead th[rowspan]{text-align:left}span.ci{font-size:.8em;color:#555}
thead tr:first-child th{border-top:2px solid #222}thead tr:last-child th{border-bottom:1px solid #222}
table.results>tbody:last-of-type tr:last-child td,table.results>tbody:last-of-type tr:last-child th{
border-bottom:2px solid #222}
tbody.ref tr:first-child th,tbody.ref tr:first-child td,tbody.warn tr:first-child th,tbody.warn tr:first-child td{
border-top:1px solid #222}
tbody.ref th.row{font-style:italic;color:#555}tbody.warn td,tbody.warn th{color:#8a5a00;font-size:.92em}
th.row,td.l,th.l{text-align:left}th.group{text-align:center;border-bottom:1px solid #999}
table.plain td,table.plain th{text-align:left;vertical-align:top;border-bottom:1px solid #eee;white-space:normal}
table.plain td{word-break:break-word;max-width:520px}
sup.rand{color:#b00000;font-weight:700}
ul.notes{font-size:.82em;color:#555;margin-top:0;max-width:60em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
.grids{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.grids figure{margin:0;flex:0 1 calc(50% - .5em)}
figcaption{font-size:.9em;color:#444}
details{margin:.5em 0}details pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.8em;max-height:400px}
summary{cursor:pointer;color:#0550ae;font-weight:600}
code{background:#f6f8fa;padding:0 .2em}
"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "plain") -> str:
    e = html.escape
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{e(str(h))}</th>" for h in headers)
           + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    out.append("</tbody></table>")
    return "\n".join(out) + "\n"


def _common_notes(tables: Sequence[Table]) -> list[str]:
    """The footnotes every main table shares (when there are several), shown once on the page (each table's own
    .md / .tex file keeps all of its notes)."""
    if len(tables) < 2:
        return []
    return [n for n in tables[0].notes if all(n in t.notes for t in tables[1:])]


def render_html(data: ReportData) -> str:
    """The report as one HTML page: inline CSS, no script and no external resource; figures as thumbnails
    (figures/thumbs/*.jpg) linked to the full-size PNGs, by relative paths inside the run directory."""
    e = html.escape
    run = data.run
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>i2i-zoo report: {e(run.name)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>i2i-zoo report: {e(run.name)}</h1>"]
    facts = _headline(run)
    if facts:
        out.append('<p class="facts">' + " · ".join(f"<b>{e(k)}</b> {e(v)}" for k, v in facts) + "</p>")
    if data.any_random:
        out.append(f'<div class="banner" id="random-weights">⚠ {e(_banner_text(data))}</div>')
    out.append('<nav class="toc" id="contents"><b>Contents</b><ol>' + "".join(
        f'<li><a href="#{a}">{e(t)}</a></li>' for a, t in _contents(data)) + "</ol></nav>")

    out.append('<h2 id="results">Results</h2>')
    if run.per_image.empty and run.distribution.empty:
        out.append("<p>No metrics yet (<code>metrics/per_image.csv</code> and <code>metrics/distribution.csv</code> "
                   "are absent or empty); the tables show speed and memory only.</p>")
    if not data.tables:
        out.append("<p>No results to tabulate.</p>")
    shown = [*data.tables, *([data.perf_table] if data.perf_table is not None else [])]
    common = _common_notes(data.tables)
    for t in shown:
        out += [f"<h3>{e(t.title)}</h3>", '<div class="scroll">', to_html(t, skip_notes=common), "</div>"]
    if common:
        out += ["<h3>Notes for every table above</h3>",
                '<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in common) + "</ul>"]
    out.append("<p>Tables as CSV (raw numbers), Markdown and LaTeX (booktabs; <code>\\usepackage{booktabs,graphicx}"
               "</code>) are in <code>tables/</code>.</p>")
    circ = _circularity_rows(run)
    if circ:
        out += ["<h3>Metric circularity</h3>", f"<p>{e(CIRCULARITY_NOTE)}</p>",
                _html_table(["method", "metric", "optimised features", "held-out metrics"], circ)]

    if not data.paired.empty:
        out += ['<h2 id="paired">Paired comparisons</h2>', "<h3>Wins / ties / losses</h3>", f"<p>{e(WINS_NOTE)}</p>"]
        if not data.wins.empty:
            out.append(_html_table(["method", *data.wins.columns],
                                   [[m, *row] for m, row in zip(data.wins.index, data.wins.to_numpy())]))
        headers, rows = paired_rows(data.paired)
        out += [f"<details><summary>All {len(rows)} paired differences (also <code>tables/paired.csv</code>)"
                f"</summary><p>{e(PAIRED_NOTE)}</p>", _html_table(headers, rows), "</details>"]

    sections = _figure_sections(data)
    if sections:
        out += ['<h2 id="figures">Figures</h2>',
                f"<p>{_formats_note(sections)} of each figure are in <code>figures/</code>; each thumbnail links to "
                "the full-size image.</p>"]
        current = None
        for section, caption, key, png in sections:
            if section != current:
                out += (["</div>"] if current is not None else []) + [f"<h3>{e(section)}</h3>", '<div class="grids">']
                current = section
            full = png.relative_to(run.root).as_posix()
            thumb = data.thumbs.get(key)
            src = thumb.relative_to(run.root).as_posix() if thumb is not None else full
            out.append(f'<figure><a href="{e(full)}"><img alt="{e(caption)}" loading="lazy" src="{e(src)}"></a>'
                       f"<figcaption>{e(caption)} (click for full size)</figcaption></figure>")
        out.append("</div>")

    tasks, cov = data.coverage()
    out += ['<h2 id="status">Run status</h2>', "<p>Outputs present / samples per task, and failed samples.</p>"]
    out.append(_html_table(["method", *tasks], [[m, *c] for m, c in cov]) if cov and tasks
               else "<p>No methods ran.</p>")

    methods = _method_sections(run)
    if methods:
        out += ['<h2 id="methods">Methods</h2>', f"<p>{e(METHODS_NOTE)}</p>"]
        for name, paper, fixes, variants in methods:
            out.append(f"<h3>{e(name)}</h3>")
            if paper:
                out.append(f'<p class="facts">{e(paper)}</p>')
            if fixes:
                out.append("<p>Upstream fixes kept on:</p><ul>" + "".join(f"<li>{e(f)}</li>" for f in fixes)
                           + "</ul>")
            else:
                out.append("<p>Upstream fixes kept on: none.</p>")
            if variants:
                out.append(_html_table(["variant", "in this run", "what it changes (measured effect)"],
                                       [[k, "ON" if on else "off", t] for k, t, on in variants]))

    out.append('<h2 id="details">Details</h2>')
    if run.metric_info:
        headers, rows = _metric_rows(run)
        out += ['<details id="metric-definitions"><summary>Metric definitions</summary>',
                "<p>Definitions as recorded by the run (<code>metrics/metric_info.json</code>); values are in the raw "
                "unit of each metric (tables print KID ×10³).</p>", _html_table(headers, rows), "</details>"]
    fails = _failure_rows(run)
    out.append(f'<details id="failures"><summary>Failures ({len(fails)})</summary>')
    if not fails:
        out.append("<p>None.</p>")
    else:
        shown = fails[:MAX_FAILURES_LISTED]
        out.append('<table class="plain failures"><thead><tr><th>method</th><th>task</th><th>sample</th>'
                   "<th>phase</th><th>error</th></tr></thead><tbody>")
        for f in shown:
            tb = (f"<details><summary>traceback</summary><pre>{e(f['traceback'])}</pre></details>"
                  if f["traceback"].strip() else "")
            out.append(f"<tr><td>{e(f['method'])}</td><td>{e(f['task'])}</td><td>{e(f['sample'])}</td>"
                       f"<td>{e(f['phase'])}</td><td>{e(f['error'])}{tb}<br><small>{e(f['path'])}</small></td></tr>")
        out.append("</tbody></table>")
        if len(fails) > len(shown):
            out.append(f"<p>… and {len(fails) - len(shown)} more in <code>failures/</code>.</p>")
    out.append("</details>")
    skipped = _skipped_rows(run)
    if skipped:
        out += [f'<details id="skipped"><summary>Skipped pairs ({len(skipped)})</summary>',
                _html_table(["method", "task", "reason"], skipped), "</details>"]
    out.append('<details id="provenance"><summary>Configurations and provenance (manifest.json)</summary>')
    if not run.manifest:
        out.append("<p>No manifest.json in this run.</p>")
    for title, headers, rows in _provenance(run.manifest):
        out += [f"<h4>{e(title)}</h4>", _html_table(headers, rows)]
    if run.manifest:
        blob = json.dumps(run.manifest, indent=2, sort_keys=True, default=str)
        out.append(f"<details><summary>manifest.json</summary><pre>{e(blob)}</pre></details>")
    out.append("</details>")
    if data.any_random:
        out.append(f'<p class="facts">{e(RANDOM_NOTE)}</p>')
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
