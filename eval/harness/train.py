"""`train`: fit a trainable method on a task and save it, with every option checked before anything loads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.errors import ConfigError


def train(method: str, task: Any, out: str | Path, *, registry: Any, preset: str = "tiny",
          weights: str | None = None, device: str = "cpu", dtype: str = "float32",
          overrides: Mapping[str, Mapping[str, Any]] | None = None, callback: Any = None) -> Any:
    """Train `method` on `task` (a task name, a folder or a `datasets.Task`) into `out` (resumable from it) and
    return the trained translator. `overrides`: {method: {option: value}} as `--set` gives it; only `method`'s
    options are allowed. The training options go through the method's resolver (defaults -> preset overlay ->
    overrides -> coercion -> validation) before the device, dtype and model are touched."""
    from datasets import get_task, task_from_folder
    from eval.harness.preflight import check_device, check_dtype
    from eval.harness.safety import prepare_out_dir

    cls = registry.get(method)
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - {method})
    if stray:
        raise ConfigError(f"--set {stray[0]}.…: training {method} takes only {method}.OPTION=VALUE")
    config = {**overrides.get(method, {}), "output_dir": str(out)}
    try:
        cls.resolve_train_config(preset, config)
    except NotImplementedError:
        trainable = [n for n in registry.list() if registry.get(n).card.needs_training]
        raise ConfigError(f"{method} is not trainable; trainable methods: {', '.join(trainable) or 'none yet'}") \
            from None
    device = check_device(device)
    dtype = check_dtype(dtype, device)
    if isinstance(task, (str, Path)):
        task = task_from_folder(task) if Path(task).is_dir() else get_task(str(task))
    prepare_out_dir(Path(out), training=True)  # never writes checkpoints into a folder the tool did not make
    model = cls.from_pretrained(weights, preset=preset, device=device, dtype=dtype)
    model.fit(task, config, callback=callback)
    model.save_pretrained(out)
    return model
