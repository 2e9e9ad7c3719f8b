"""A finished run as a Python object: counts, failures, the summary frame, and a notebook view.

`RunResult` reads only the run directory, so `load_run(dir)` gives the same object for a run made yesterday,
by the command line or on another machine. Aggregation and tables come from `reports` (one implementation of
the numbers every table shows).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.errors import RunNotFoundError
from eval.harness.rundir import FAILURES, INPUT_FAILURES, MANIFEST, OUTPUTS, REPORT_HTML, REPORT_MD


@dataclass
class RunResult:
    """The run directory of a run and what is in it. `main_process` is False on the non-zero ranks of a
    multi-process run (they hold no report)."""

    run_dir: Path
    main_process: bool = True

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def manifest(self) -> dict[str, Any]:
        from eval.store import read_json

        return read_json(self.run_dir / MANIFEST, {}) or {}

    @property
    def methods(self) -> list[str]:
        """Row labels of the run: a method name, or `method[option=value,...]` for a variant."""
        return list(self.manifest.get("methods") or {})

    @property
    def outputs(self) -> list[Path]:
        root = self.run_dir / OUTPUTS
        return sorted(root.rglob("*.png")) if root.is_dir() else []

    @property
    def failures(self) -> list[dict[str, Any]]:
        """One record per failed sample / metric / unreadable input: method, task, sample, phase, error."""
        from eval.store import read_json

        root = self.run_dir / FAILURES
        return [read_json(p, {}) for p in sorted(root.rglob("*.json"))] if root.is_dir() else []

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    @property
    def n_failures(self) -> int:
        return len(self.failures)

    @property
    def input_failures(self) -> list[dict[str, Any]]:
        return [f for f in self.failures if f.get("method") == INPUT_FAILURES]

    @property
    def report(self) -> Path | None:
        p = self.run_dir / REPORT_MD
        return p if p.exists() else None

    @property
    def report_html(self) -> Path | None:
        p = self.run_dir / REPORT_HTML
        return p if p.exists() else None

    def summary(self, *, long: bool = False) -> Any:
        """The numbers of every table as a pandas DataFrame: by default one row per (method, task) and one column
        per metric (means); `long=True`: the long form with CIs, N, failures and weights labels."""
        from reports.aggregate import load_run as load_files
        from reports.aggregate import summarize_run

        df = summarize_run(load_files(self.run_dir))
        if long or df.empty:
            return df
        wide = df.pivot_table(index=["method", "task"], columns="metric", values="mean", aggfunc="first", sort=False)
        wide.columns.name = None
        return wide

    def tables(self) -> list[Any]:
        """The headline tables (one per task kind) as `reports.Table`s."""
        from reports.aggregate import load_run as load_files
        from reports.aggregate import summarize_run
        from reports.tables import build_main_tables

        run = load_files(self.run_dir)
        return build_main_tables(summarize_run(run), run)

    def _repr_html_(self) -> str:
        from reports.tables import to_html

        e = html.escape
        parts = [f"<h3>{e(self.run_dir.name)}</h3>",
                 f"<p>{self.n_outputs} outputs, {self.n_failures} failures in <code>{e(str(self.run_dir))}</code></p>"]
        parts += [f"<h4>{e(t.title)}</h4>{to_html(t)}" for t in self.tables()]
        for png in sorted((self.run_dir / "figures").glob("grid_*.png"))[:4]:
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f'<p><img alt="{e(png.stem)}" style="max-width:100%" src="data:image/png;base64,{data}"></p>')
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"RunResult({str(self.run_dir)!r}: {self.n_outputs} outputs, {self.n_failures} failures)"


def load_run(run_dir: str | Path) -> RunResult:
    """The RunResult of an existing run directory (it must hold a manifest.json)."""
    p = Path(run_dir)
    if not (p / MANIFEST).is_file():
        raise RunNotFoundError(f"{p} is not a run directory (no {MANIFEST}); pass the --out folder of a run")
    return RunResult(p)
