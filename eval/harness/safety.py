"""Guards that keep a run directory true and the tool's hands off what it did not create.

- `prepare_out_dir` / `require_run_dir`: a run directory carries a marker file written by the tool; a run into an
  existing non-empty folder without it, `report` on a folder without it and every cleanup refuse (a clear message),
  so `--out .` or `report ~/photos` never writes into or deletes from a user's folder.
- `clean_stale_temps`: only the temporary files of the project's own naming (`eval.store.TMP_PATTERN`), only in the
  folders the tool writes.
- `check_name`: a user-supplied name that becomes a folder (method row label, plugin name, task name) stays inside
  the run directory (sample ids are checked by `datasets.images.safe_sample_id`).
- `check_limits`: no NaN/inf option; bounds on resolution and step counts (a typo like 12000 or 1e8 would run for
  days), lifted by `allow_large`.
- `output_range_error`: a method's output outside [0, 1] beyond rounding is a failure with the observed range,
  never silently clamped.
- `batch_timeout`: the per-batch `--timeout`.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eval.errors import ConfigError, RunNotFoundError
from eval.harness.rundir import LOCK, LOCK_GUARD, MANIFEST, MARKER, OWN_DIRS, TRAIN_MARKER

#: Largest --resolution and step count accepted without --allow-large.
MAX_RESOLUTION = 4096
MAX_STEPS = 1000
#: A method's output may leave [0, 1] by this much (float rounding) before it counts as out of range.
RANGE_TOLERANCE = 1e-3


def is_run_dir(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def _legacy_run_dir(path: Path) -> bool:
    """A run directory of an i2i-zoo version before the marker: its manifest holds a run file."""
    from eval.store import read_json

    manifest = read_json(path / MANIFEST, {})
    return isinstance(manifest, dict) and isinstance(manifest.get("run_config"), dict)


def prepare_out_dir(out: Path, *, training: bool = False) -> None:
    """Check `--out` and create it with its marker: a new folder, an empty one, or a run directory of this tool
    (`training`: a training folder of this tool, marked `TRAIN_MARKER`, whose checkpoint a later `train` resumes).

    A file, a non-empty folder the tool did not make, or a folder it cannot write (read-only, disk full) is a
    ConfigError naming the fix, before anything is written."""
    from eval.store import atomic_write_text

    out = Path(out)
    marker, what = (TRAIN_MARKER, "training folder") if training else (MARKER, "run directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pass a folder path for the {what}")
    ours = (out / marker).is_file() or (not training and _legacy_run_dir(out))
    if out.is_dir() and not ours:
        try:
            # the lock files and the logs of other processes of this same run (they may start first) are ours
            foreign = next((p for p in out.iterdir() if p.name not in (LOCK, LOCK_GUARD)
                            and not re.fullmatch(r"run\.rank\d+\.log", p.name)), None)
        except OSError as err:
            raise ConfigError(f"cannot read --out {out}: {err.strerror or err}") from None
        if foreign is not None:
            hint = (f" (a training folder of an i2i-zoo version before this check: create the empty file "
                    f"{out / marker} to resume it)") if training else ""
            raise ConfigError(f"--out {out} is a non-empty folder that is not an i2i-zoo {what} (no {marker} "
                              f"file, e.g. it holds {foreign.name}); pass a new or empty folder{hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / marker).is_file():
            atomic_write_text(out / marker, f"i2i-zoo {what}: written by benchmark.py; do not delete\n")
    except OSError as err:
        raise ConfigError(f"cannot write the {what} {out}: {err.strerror or err}. Pass a writable --out on a "
                          "disk with free space") from None


def require_run_dir(path: Path, action: str) -> Path:
    """`path` as a run directory made by this tool, else RunNotFoundError (nothing is written)."""
    path = Path(path)
    if not path.exists():
        raise RunNotFoundError(f"{path} does not exist; {action} needs a run directory made by `benchmark.py run`")
    if not path.is_dir():
        raise RunNotFoundError(f"{path} is a file; {action} needs a run directory made by `benchmark.py run`")
    if not is_run_dir(path):
        raise RunNotFoundError(
            f"{path} is not an i2i-zoo run directory (no {MARKER} file); {action} only writes into folders made by "
            "`benchmark.py run` (for a run made by an older version, run its command again first)")
    return path


def clean_stale_temps(run_dir: Path) -> int:
    """Delete the temporary files a killed writer left: only names of `eval.store.atomic_path`'s pattern, only
    in the run directory's own folders and top level, only in a marked run directory. Returns how many."""
    from eval.store import TMP_PATTERN

    if not is_run_dir(run_dir):
        return 0
    found = [p for p in run_dir.iterdir() if TMP_PATTERN.match(p.name)]
    for sub in OWN_DIRS:
        if (run_dir / sub).is_dir():
            found += [p for p in (run_dir / sub).rglob(".*.tmp") if TMP_PATTERN.match(p.name)]
    for p in found:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
    return len(found)


def check_name(name: str, what: str) -> None:
    """A user-supplied name that becomes a folder name: one path component, not '.'/'..', no control chars."""
    if (not name or name in (".", "..") or name.startswith(("/", "\\")) or ".." in Path(name).parts
            or "\\" in name or any(ord(c) < 32 for c in name)):
        raise ConfigError(f"{what} {name!r} cannot be a folder name (empty, '.', '..', absolute, a backslash or "
                          "control characters); rename it")


def check_limits(resolution: int | None, configs: dict[str, dict[str, Any]], allow_large: bool) -> None:
    """No option is NaN or infinite; --resolution and every `*steps*` option within bounds, unless `allow_large`."""

    def floats(v: Any) -> list[float]:
        if isinstance(v, float):
            return [v]
        return [x for item in v for x in floats(item)] if isinstance(v, (list, tuple)) else []

    for label, config in configs.items():
        for key, value in config.items():
            if any(not math.isfinite(x) for x in floats(value)):
                raise ConfigError(f"{label}: {key}={value!r} is not a finite number; pass a finite value")
    if allow_large:
        return
    if resolution is not None and resolution > MAX_RESOLUTION:
        raise ConfigError(f"--resolution {resolution} is above {MAX_RESOLUTION} px (a typo?); pass --allow-large to "
                          "run it anyway")
    for label, config in configs.items():
        for key, value in config.items():
            if "steps" in key and isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    not math.isfinite(value) or value > MAX_STEPS):
                raise ConfigError(f"{label}: {key}={value} is above {MAX_STEPS} (a typo?); pass --allow-large to run "
                                  "it anyway")


def output_range_error(image: Any, tol: float = RANGE_TOLERANCE) -> str | None:
    """Why a method's output image (a tensor) is out of the [0, 1] contract, or None when it is within it."""
    lo, hi = float(image.min()), float(image.max())
    if lo < -tol or hi > 1 + tol:
        return (f"output values span [{lo:.4g}, {hi:.4g}], outside the [0, 1] contract (tolerance {tol:g}); not "
                "clamped, not scored")
    return None


class BatchTimeout(BaseException):
    """A batch ran past `--timeout`. A BaseException, so a method's own `except Exception` does not swallow it."""


@contextlib.contextmanager
def batch_timeout(seconds: float | None) -> Iterator[None]:
    """Raise BatchTimeout in the main thread when the body runs longer than `seconds` (None: no limit).

    Limits, honestly: the alarm (SIGALRM, POSIX only, main thread only; elsewhere there is no limit) interrupts
    Python code between bytecodes, so a single long C call (one huge convolution, a blocking read) finishes before
    the timeout takes effect; a method that catches BaseException defeats it."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise BatchTimeout(f"batch ran longer than --timeout {seconds:g} s; stopped")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
