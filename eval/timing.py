"""Wall-clock and peak-memory measurement with benchmark discipline (timm's benchmark.py: synchronise the device
before reading the clock; report the peak of the measured region, not of the whole process).

Peak memory is `torch.cuda.max_memory_allocated` on CUDA (reset before the region) and the resident-set
high-water mark on CPU, reset through `/proc/self/clear_refs` (Linux >= 4.0; elsewhere the process-lifetime peak
from getrusage is reported and flagged as such).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_mem_bytes: int = 0
    mem_kind: str = ""  # "cuda_allocated" | "cpu_rss" | "cpu_rss_lifetime"


class measure:
    """Context manager: `with measure(device) as m: ...; m.seconds, m.peak_mem_bytes`."""

    def __init__(self, device: Any = "cpu") -> None:
        self.device = str(device)
        self.result = Measurement()

    def __enter__(self) -> Measurement:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.result.mem_kind = "cuda_allocated"
        else:
            self.result.mem_kind = "cpu_rss" if _reset_cpu_peak() else "cpu_rss_lifetime"
        self._t0 = time.perf_counter()
        return self.result

    def __exit__(self, *exc: Any) -> None:
        _sync(self.device)
        self.result.seconds = time.perf_counter() - self._t0
        if self.device.startswith("cuda"):
            import torch

            self.result.peak_mem_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.result.peak_mem_bytes = _cpu_peak_bytes()
