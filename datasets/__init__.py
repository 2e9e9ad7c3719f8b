"""Samples and tasks of i2i-zoo: folder layouts, robust image loading, public dataset recipes, the sample suite.

Importing this package is cheap: no torch, no scikit-image/scikit-learn, no disk access (those happen when a
task is loaded or a tensor is made). This package shadows the Hugging Face `datasets` library by name on
purpose; the project never uses that library.
"""

from __future__ import annotations

from .errors import DataError
from .images import load_image, prepare, safe_sample_id, to_tensor
from .recipes import RECIPES, download, get_recipe
from .sample import Sample, Task
from .tasks import (
    DEFAULT_METRICS,
    KINDS,
    METRICS,
    get_task,
    list_tasks,
    register_task,
    task_from_folder,
    task_names,
)

__all__ = [
    "DEFAULT_METRICS",
    "KINDS",
    "METRICS",
    "RECIPES",
    "DataError",
    "Sample",
    "Task",
    "download",
    "get_recipe",
    "get_task",
    "list_tasks",
    "load_image",
    "prepare",
    "register_task",
    "safe_sample_id",
    "task_from_folder",
    "task_names",
    "to_tensor",
]
