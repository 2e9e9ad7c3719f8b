"""The benchmark harness as a library: the same engine `benchmark.py` drives, as plain functions.

    import methods
    from eval.harness import RunConfig, run, load_run, perf, evaluate_folders

    result = run(RunConfig(methods=["sdedit"], tasks=["sample-edit"], out="runs/nb",
                           overrides={"sdedit": {"strength": [0.3, 0.5, 0.7]}}), registry=methods)
    result.summary()                        # pandas frame: one row per (variant, task), one column per metric
    load_run("runs/nb")                     # the same object for any finished run directory
    rerun("runs/nb", out="runs/nb-again", registry=methods)   # replay from its manifest

`registry` is where method names resolve: the `methods` package, or any object with `get(name)`, `list()` and
`TranslationInput` (the harness lives in `eval`, which imports nothing from `methods`). Every user mistake
raises a subclass of `eval.errors.ZooError` (never `SystemExit`), before any file is written when it can be
found up front.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.errors import ConfigError, InputError, RunLockedError, RunNotFoundError, WeightsNotFoundError, ZooError
from eval.harness.config import (
    RunConfig,
    Sweep,
    dump_run_file,
    merge_overrides,
    parse_overrides,
    read_run_file,
)
from eval.harness.folders import evaluate_folders
from eval.harness.perf import perf
from eval.harness.result import RunResult, load_run
from eval.harness.runner import run, sample_seed
from eval.harness.train import train


def config_of_run(run_dir: str | Path) -> RunConfig:
    """The RunConfig a run directory was made with (its manifest's `run_config`)."""
    manifest = load_run(run_dir).manifest
    if "run_config" not in manifest:
        raise RunNotFoundError(f"{run_dir}: its manifest has no run_config (made by an older version); run it again "
                               "with its original command instead")
    return RunConfig.from_dict(manifest["run_config"])


def rerun(run_dir: str | Path, *, registry: Any, out: str | Path | None = None, **changes: Any) -> RunResult:
    """Replay a run from its manifest into `out` (default: `<run_dir>-rerun`); `changes` override RunConfig
    fields (e.g. device="cuda"). Same code, seed and config give byte-identical outputs."""
    cfg = config_of_run(run_dir)
    cfg.out = Path(out) if out is not None else Path(f"{Path(run_dir)}-rerun")
    for k, v in changes.items():
        if not hasattr(cfg, k):
            raise ConfigError(f"rerun: unknown setting {k!r}")
        setattr(cfg, k, v)
    return run(cfg, registry=registry)


__all__ = [
    "ConfigError",
    "InputError",
    "RunConfig",
    "RunLockedError",
    "RunNotFoundError",
    "RunResult",
    "Sweep",
    "WeightsNotFoundError",
    "ZooError",
    "config_of_run",
    "dump_run_file",
    "evaluate_folders",
    "load_run",
    "merge_overrides",
    "parse_overrides",
    "perf",
    "read_run_file",
    "rerun",
    "run",
    "sample_seed",
    "train",
]
