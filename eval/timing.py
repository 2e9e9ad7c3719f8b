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


class NetworkCensus(dict):
    """name -> CallStats of each hooked network, and `seconds`: the time inside any of them (a network called
    inside another one counts once)."""

    seconds: float = 0.0


class count_network_calls:
    """Count and time the forward calls of the given modules (the networks an algorithm must run).

    Hooks sit on the given modules only (not their sub-modules). `census.seconds` is the union of the time spent
    inside them: while one is running, a nested call of another is counted in its own row but not twice in the
    total. On CUDA each hook synchronises, which slightly slows the measured run: use it for the call census and
    the overhead ratio, and take latency from an unhooked run.
    """

    def __init__(self, modules: dict[str, Any], device: Any = "cpu") -> None:
        self.modules = modules
        self.device = str(device)
        self.stats = NetworkCensus({name: CallStats() for name in modules})
        self._handles: list[Any] = []
        self._depth = 0
        self._outer_t0 = 0.0

    def __enter__(self) -> NetworkCensus:
        for name, module in self.modules.items():
            st = self.stats[name]
            starts: list[float] = []

            def pre(_m: Any, _args: Any, starts: list[float] = starts) -> None:
                _sync(self.device)
                now = time.perf_counter()
                if self._depth == 0:
                    self._outer_t0 = now
                self._depth += 1
                starts.append(now)

            def post(_m: Any, _args: Any, _out: Any, st: CallStats = st, starts: list[float] = starts) -> None:
                _sync(self.device)
                now = time.perf_counter()
                st.calls += 1
                st.seconds += now - starts.pop()
                self._depth -= 1
                if self._depth == 0:
                    self.stats.seconds += now - self._outer_t0

            self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self.stats

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def bench(fn: Any, *, warmup: int = 1, repeats: int = 5, device: Any = "cpu", min_run_time: float = 0.05
          ) -> dict[str, float]:
    """Latency of `fn()` with `torch.utils.benchmark`: `warmup` untimed calls, then `Timer.blocked_autorange`
    (block size chosen so the timer's own overhead is negligible; CUDA synchronised by its timer) for at least
    `repeats` blocks. Returns the per-call median, inter-quartile range and minimum, and the number of blocks
    and calls per block. Runs at the current intra-op thread count (Timer's own default is one thread)."""
    import numpy as np
    import torch
    from torch.utils.benchmark import Measurement, Timer

    est = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        est = time.perf_counter() - t0
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=max(min_run_time, repeats * est))
    number = m.number_per_run
    while len(m.times) < repeats:  # fewer blocks than asked for: top up (merge keeps per-call times)
        m = Measurement.merge([m, timer.timeit(number)])[0]
    t = np.asarray(m.times)
    q1, q3 = np.percentile(t, [25, 75])
    return {"latency_median_s": float(np.median(t)), "latency_iqr_s": float(q3 - q1), "latency_min_s": float(t.min()),
            "repeats": len(t), "calls_per_repeat": int(number), "warmup": warmup}
