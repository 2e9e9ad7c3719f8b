"""Reports of a run directory: aggregated numbers with CIs, paired statistics, paper-style tables, figures, pages.

`python benchmark.py report runs/<name>` calls `write_report`; everything here reads the run directory only
(no recomputation) and never imports torch. Depends on `eval` (atomic writes), never on `methods`/`datasets`.
"""

from .aggregate import (
    MEMORY,
    SPEED,
    Run,
    aggregate_distribution,
    aggregate_per_image,
    aggregate_speed,
    bootstrap_ci,
    load_run,
    summarize_run,
)
from .figures import bar_chart, image_grid, perf_chart, save_figure, tradeoff_scatter, write_figures
from .report import build_report, render_html, render_markdown, write_report
from .stats import bca_ci, paired_comparisons, wins_matrix
from .tables import (
    RANDOM_NOTE,
    Table,
    build_main_tables,
    build_perf_table,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
    write_tables,
)

__all__ = [
    "MEMORY",
    "RANDOM_NOTE",
    "SPEED",
    "Run",
    "Table",
    "aggregate_distribution",
    "aggregate_per_image",
    "aggregate_speed",
    "bar_chart",
    "bca_ci",
    "bootstrap_ci",
    "build_main_tables",
    "build_perf_table",
    "build_report",
    "image_grid",
    "load_run",
    "paired_comparisons",
    "perf_chart",
    "render_html",
    "render_markdown",
    "save_figure",
    "summarize_run",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "tradeoff_scatter",
    "write_figures",
    "write_report",
    "wins_matrix",
    "write_tables",
]
