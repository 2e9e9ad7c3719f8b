"""Checks a run passes before it writes a file or loads a model: device, dtype, methods, options, tasks.

Each failure is a `ConfigError` (or the registry's / data layer's own user error) naming what is wrong and the fix,
so a typo costs one line and no half-written run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.errors import ConfigError
from eval.harness.config import RunConfig, Variant, resolve_variants
from eval.harness.safety import check_limits, check_name

DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_device(device: str) -> str:
    """The canonical device string, after checking the device exists and is usable on this machine."""
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"device {device!r}: no usable CUDA GPU on this machine (torch {torch.__version__}, "
                              f"{build}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {device!r}: this machine has {n} CUDA GPU(s) (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {device!r}: Apple MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r}: supported devices are cpu, cuda, cuda:N and mps")
    return str(dev)


def check_dtype(dtype: str, device: str) -> str:
    """The canonical dtype name, after running the operations every method needs (convolution, matmul, group
    norm, softmax) in it on `device`."""
    import torch

    name = DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ConfigError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    dt = getattr(torch, name)
    try:
        x = torch.ones(1, 4, 8, 8, dtype=dt, device=device)
        y = torch.nn.functional.conv2d(x, torch.ones(4, 4, 3, 3, dtype=dt, device=device), padding=1)
        y = torch.nn.functional.group_norm(y, 2)
        z = y.flatten(2) @ y.flatten(2).transpose(1, 2)
        z.softmax(-1).sum().item()
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"dtype {name} does not run on {device} ({str(err).splitlines()[0]}); use float32") \
            from None
    return name


def check_methods(names: list[str], registry: Any) -> None:
    for n in names:
        registry.get(n)  # an unknown name raises the registry's error, with the closest match


def check_overrides(cfg: RunConfig) -> None:
    """Every `--set` prefix names a selected method (a typo is never silently ignored)."""
    for m in cfg.overrides:
        if m not in cfg.methods:
            import difflib

            close = difflib.get_close_matches(m, cfg.methods, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--set {m}.…: {m!r} is not a selected method.{hint} Selected: "
                              f"{', '.join(cfg.methods)}")


def check_tasks(task_specs: list[str]) -> None:
    """Every task name is known and every task folder has a supported layout (pixels are read later). Two
    tasks under one name (two folders with the same base name, a folder named like a registered task) are refused
    with both named: they would share, and overwrite, one folder of the run directory."""
    from datasets import DataError, get_task, list_tasks, task_from_folder

    bundled = {t.name for t in list_tasks(bundled=True)}
    seen: dict[str, str] = {}
    for spec in task_specs:
        if Path(spec).is_dir():
            name = task_from_folder(spec).name  # checks the folder structure and prompt files now
            where = f"the folder {Path(spec).resolve()}"
            if name in bundled:
                raise DataError(f"the task folder {Path(spec).resolve()} has the name of the bundled task {name!r}; "
                                "rename the folder (or, to run the bundled task, run from another directory)")
        else:
            name = get_task(spec).name  # an unknown name raises DataError with the closest match
            where = f"the registered task {spec!r}"
        check_name(name, "task name")
        if name in seen and seen[name] != where:
            raise DataError(f"two tasks are named {name!r}: {seen[name]} and {where}; rename one folder")
        seen[name] = where


def check_options(cfg: RunConfig, registry: Any) -> list[Variant]:
    """Methods, `--weights`, `--set` names, device, dtype and every option value; returns the variants. No
    methods = every registered one; the device and dtype names become canonical."""
    cfg.methods = list(dict.fromkeys(cfg.methods or registry.list()))
    check_methods(cfg.methods, registry)
    if cfg.weights and len(cfg.methods) != 1:
        raise ConfigError("--weights applies to a single method; pass exactly one method with it")
    check_overrides(cfg)
    cfg.figures = check_figures(cfg.figures)
    cfg.device = check_device(cfg.device)
    cfg.dtype = check_dtype(cfg.dtype, cfg.device)
    variants = resolve_variants(cfg, registry)
    for v in variants:
        check_name(v.label, "method row label")
    check_limits(cfg.resolution, {v.label: v.config for v in variants}, cfg.allow_large)
    return variants


def check_figures(formats: Any) -> list[str]:
    """The figure formats as a list ("png", optionally "pdf"), from "png,pdf" or a list."""
    from eval.vocab import parse_figure_formats

    if not isinstance(formats, (str, list, tuple)):
        raise ConfigError(f"figures must be formats like 'png' or 'png,pdf', got {formats!r}")
    try:
        return list(parse_figure_formats(formats))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def preflight(cfg: RunConfig, registry: Any) -> list[Variant]:
    """Check everything a run needs before it writes or loads anything; returns the resolved variants.
    No tasks = the bundled sample suite."""
    from datasets import list_tasks

    cfg.explicit = cfg.explicit or bool(cfg.methods and cfg.tasks)
    cfg.tasks = cfg.tasks or [t.name for t in list_tasks() if t.bundled]
    variants = check_options(cfg, registry)
    check_tasks(cfg.tasks)
    return variants


def resolved_run_config(cfg: RunConfig, registry: Any) -> dict[str, Any]:
    """The run file of `cfg` with everything filled in: methods, tasks, canonical device and dtype, and every
    option of every method at its resolved value (a list where a sweep gives several). Feeding it back as a run
    file gives the same variants and configurations."""
    variants = preflight(cfg, registry)
    out = cfg.to_dict()
    sets: dict[str, dict[str, Any]] = {}
    for m in cfg.methods:
        configs = [v.config for v in variants if v.method == m]
        opts: dict[str, Any] = {}
        for key in configs[0] if configs else {}:
            values: list[Any] = []
            for c in configs:
                if c[key] not in values:
                    values.append(c[key])
            opts[key] = values[0] if len(values) == 1 else values
        sets[m] = opts
    out["set"] = sets
    return out
