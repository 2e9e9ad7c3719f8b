"""Test setup: offline, CPU, one project cache per test session (tiny presets and the sample suite built once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # .ci/run exports it too; it must be set before huggingface_hub loads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a 2-core machine: one OpenMP thread per process. With 2 threads, small ops slowed down ~100x
# whenever a second process (a CLI/torchrun test, a helper) shared the cores (oversubscription).
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def project_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reuse $I2I_ZOO_CACHE when the caller set one (fast local re-runs), else a fresh per-session cache."""
    if "I2I_ZOO_CACHE" not in os.environ:
        os.environ["I2I_ZOO_CACHE"] = str(tmp_path_factory.mktemp("i2i-zoo-cache"))
    return Path(os.environ["I2I_ZOO_CACHE"])
