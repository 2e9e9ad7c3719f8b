"""What a person watching a run sees: one overall bar for generation (work items over all methods x tasks, with
ETA, the current method / task as its description), one bar for the metrics phase (metric x method x task), and a
final summary; everything third-party libraries print goes to the run's log file (runs/<name>/run.log) instead.

On a terminal (stderr is a TTY) the bars are tqdm bars. Otherwise (SLURM, CI, a pipe) each bar writes plain lines,
`[generate] 12/40 (30%) sdedit / sample-edit, 0:12 elapsed, ETA 0:28`, every `every` items or `interval` seconds
and at its end, with no carriage returns. `quiet` shows no bars and no summary (errors still go to stderr).

Captured into run.log while a run is active: Python warnings (`logging.captureWarnings`, under
`warnings.catch_warnings` so the caller's filters come back), the root logger (open_clip's warnings), and the
transformers / diffusers / huggingface_hub loggers and progress bars (their own `utils.logging` switches: default
handler off and propagation on, bars disabled), all restored on exit. The run's own messages are written to the
log too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from eval.harness.rundir import RUN_LOG

_ACTIVE: Session | None = None


def active() -> Session | None:
    """The progress session of the run going on in this process, if any."""
    return _ACTIVE


class LineBar:
    """A progress bar for logs: plain `done/total` lines (no `\\r`) every `every` items or `interval` seconds."""

    def __init__(self, total: int, desc: str, phase: str, stream: TextIO, *, every: int | None = None,
                 interval: float = 30.0) -> None:
        self.total, self.desc, self.phase, self.stream = total, desc, phase, stream
        self.every = every or max(1, total // 10)
        self.interval = interval
        self.n = 0
        self.start = self.last_time = time.monotonic()
        self.last_n = 0
        self.postfix = ""

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n - self.last_n >= self.every or now - self.last_time >= self.interval or self.n >= self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        from tqdm import tqdm

        elapsed = now - self.start
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = elapsed / self.n * (self.total - self.n) if self.n else None
        parts = [f"[{self.phase}] {self.n}/{self.total} ({pct:.0f}%)", self.desc,
                 f"{tqdm.format_interval(elapsed)} elapsed"]
        if eta is not None and self.n < self.total:
            parts.append(f"ETA {tqdm.format_interval(eta)}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(p for p in parts if p), file=self.stream, flush=True)
        self.last_n, self.last_time = self.n, now

    def close(self) -> None:
        if self.n != self.last_n:
            self._line(time.monotonic())


class Session:
    """The progress and log capture of one run (see the module docstring)."""

    def __init__(self, log_path: Path, *, quiet: bool, stream: TextIO | None = None) -> None:
        self.log_path = log_path
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.bar: Any = None
        self.phase = ""
        self.failed = 0
        self._logger = logging.getLogger("i2i_zoo.run")

    # --- bars ---------------------------------------------------------------------------------------------------
    def open_bar(self, total: int, phase: str, unit: str) -> Any:
        """Start the bar of a phase ("generate", "metrics"); None when quiet or there is nothing to do."""
        self.close_bar()
        self.phase = phase
        if self.quiet or total <= 0:
            return None
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=phase, unit=unit, file=self.stream, dynamic_ncols=True, leave=True)
        else:
            self.bar = LineBar(total, "", phase, self.stream)
        self._logger.info("%s: %d %s to do", phase, total, unit)
        return self.bar

    def advance(self, n: int, desc: str | None = None, *, failed: int = 0) -> None:
        """Move the current bar by `n` items, naming what is being worked on; count failures."""
        self.failed += failed
        if self.bar is None:
            return
        if desc is not None:
            self._set_desc(desc)
        if self.failed:
            self.bar.set_postfix_str(f"{self.failed} failed")
        self.bar.update(n)

    def describe(self, desc: str) -> None:
        """Say what is being worked on now (before its first item is done)."""
        if self.bar is not None:
            self._set_desc(desc)
            if self.tty:
                self.bar.refresh()

    def _set_desc(self, desc: str) -> None:
        # a tqdm bar shows only its description: keep the phase in it (the plain lines print the phase anyway)
        self.bar.set_description(f"{self.phase}: {desc}" if self.tty else desc, refresh=False)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # --- messages -----------------------------------------------------------------------------------------------
    def write(self, msg: str, *, err: bool = False) -> None:
        """A run message: into run.log always; on the terminal unless quiet (errors always), above the bar."""
        self._logger.log(logging.WARNING if err else logging.INFO, msg)
        if self.quiet and not err:
            return
        stream = sys.stderr if err else sys.stdout
        if self.tty and self.bar is not None:
            from tqdm import tqdm

            tqdm.write(msg, file=stream)
        else:
            print(msg, file=stream, flush=True)

    def summary(self, run_dir: Path, table: Any = None) -> str:
        """The closing lines: headline table, failure count, total time, the report's file:// link."""
        from tqdm import tqdm

        from eval.harness.rundir import FAILURES, REPORT_HTML

        failures = sum(1 for _ in (run_dir / FAILURES).rglob("*.json")) if (run_dir / FAILURES).is_dir() else 0
        lines = ["", "=== summary ==="]
        if table is not None and len(table):
            lines.append(table.to_string(max_cols=8, max_colwidth=28, float_format=lambda v: f"{v:.3g}"))
        lines.append(f"failures: {failures}" + (f" (see {run_dir / FAILURES})" if failures else ""))
        lines.append(f"total time: {tqdm.format_interval(time.monotonic() - self.start)}")
        report = run_dir / REPORT_HTML
        if report.exists():
            lines.append(f"report: {report.resolve().as_uri()}")
        lines.append(f"log: {self.log_path}")
        text = "\n".join(lines)
        self._logger.info(text)
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)
        return text


def _third_party_quiet() -> list[Any]:
    """Send transformers' / diffusers' logging to the root logger and turn their progress bars off; returns the undo
    steps (their own `utils.logging` APIs)."""
    undo = []
    for lib in ("transformers", "diffusers"):
        try:
            mod = __import__(f"{lib}.utils.logging", fromlist=["logging"])
        except Exception:  # not installed / broken: nothing to quiet
            continue
        bars = mod.is_progress_bar_enabled()
        mod.disable_default_handler()
        mod.enable_propagation()
        mod.disable_progress_bar()

        def restore(mod: Any = mod, bars: bool = bars) -> None:
            mod.disable_propagation()
            mod.enable_default_handler()
            if bars:
                mod.enable_progress_bar()

        undo.append(restore)
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            undo.append(enable_progress_bars)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of both
        pass
    return undo


@contextlib.contextmanager
def session(run_dir: Path, *, quiet: bool, rank: int = 0, stream: TextIO | None = None) -> Iterator[Session]:
    """Capture third-party output into `run_dir/run.log` (run.rank<N>.log on other processes) and hold the run's
    progress bars for the duration of a run."""
    global _ACTIVE

    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / (RUN_LOG if rank == 0 else f"run.rank{rank}.log")
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    terminal = [h for h in saved_handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.stderr, sys.stdout)]
    for h in terminal:  # a console handler someone configured would print the captured records again
        root.removeHandler(h)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    undo = _third_party_quiet()
    sess = Session(log_path, quiet=quiet or rank != 0, stream=stream)
    previous, _ACTIVE = _ACTIVE, sess
    with warnings.catch_warnings():
        logging.captureWarnings(True)
        try:
            yield sess
        finally:
            sess.close_bar()
            logging.captureWarnings(False)
            _ACTIVE = previous
            for step in reversed(undo):
                step()
            root.removeHandler(handler)
            handler.close()
            for h in terminal:
                root.addHandler(h)
            root.setLevel(saved_level)
