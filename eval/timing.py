"""Wall-clock and peak-memory measurement with benchmark discipline (timm's benchmark.py: synchronise the device
before reading the clock; report the peak of the measured region, not of the whole process).

Peak memory is `torch.cuda.max_memory_allocated` on CUDA (reset before the region: the peak of the tensors alive
during it, i.e. the running method's weights and activations) and the resident-set high-water mark on CPU, reset
through `/proc/self/clear_refs` (Linux >= 4.0; elsewhere the process-lifetime peak from getrusage is reported and
flagged as such). The CPU figure is the whole process's: every model loaded before, the allocator's cached pages
and the interpreter count, so it depends on what ran before and is not a method's own memory; `mem_kind` says
which one a measurement is, and reports show only "cuda_allocated" peaks as a method's memory.
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


@dataclass
class CallStats:
    calls: int = 0
    seconds: float = 0.0


class count_network_calls:
    """Count and time the forward calls of the given modules (the networks an algorithm must run).

    Hooks sit on the top-level modules only, so nested sub-modules are not double counted. On CUDA each hook
    synchronises, which slightly slows the measured run: use it for the call census and the overhead ratio, and
    take latency from an unhooked run.
    """

    def __init__(self, modules: dict[str, Any], device: Any = "cpu") -> None:
        self.modules = modules
        self.device = str(device)
        self.stats: dict[str, CallStats] = {name: CallStats() for name in modules}
        self._handles: list[Any] = []

    def __enter__(self) -> dict[str, CallStats]:
        for name, module in self.modules.items():
            st = self.stats[name]

            def pre(_m: Any, _args: Any, st: CallStats = st) -> None:
                _sync(self.device)
                st._t0 = time.perf_counter()  # type: ignore[attr-defined]

            def post(_m: Any, _args: Any, _out: Any, st: CallStats = st) -> None:
                _sync(self.device)
                st.calls += 1
                st.seconds += time.perf_counter() - st._t0  # type: ignore[attr-defined]

            self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self.stats

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def bench(fn: Any, *, warmup: int = 1, repeats: int = 5, device: Any = "cpu") -> dict[str, float]:
    """Latency of `fn()` with warm-up and repeats: median, inter-quartile range, min, and the peak memory."""
    import numpy as np

    for _ in range(warmup):
        fn()
    times, peaks = [], []
    for _ in range(repeats):
        with measure(device) as m:
            fn()
        times.append(m.seconds)
        peaks.append(m.peak_mem_bytes)
    t = np.asarray(times)
    q1, q3 = np.percentile(t, [25, 75])
    return {"latency_median_s": float(np.median(t)), "latency_iqr_s": float(q3 - q1), "latency_min_s": float(t.min()),
            "peak_mem_bytes": int(max(peaks)), "repeats": repeats, "warmup": warmup}
