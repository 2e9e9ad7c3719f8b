"""How many intra-op CPU threads a run uses: one per core it may actually run on, shared between its processes.

`os.cpu_count()` counts the machine, not what this process gets: a container's CPU quota (cgroup v2 `cpu.max`,
v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) and the CPU affinity mask (taskset, Slurm, Docker `--cpuset-cpus`)
both shrink it. More threads than cores makes OpenMP's worker threads spin-wait against each other: on a shared
2-core machine two threads per process made tiny-network runs 10-20x slower than one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when there is none or it is unreadable.
    Reads cgroup v2 `cpu.max` ("max 100000" = no limit, "150000 100000" = 1.5 cores), else v1's cfs files."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100000)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores(*, affinity: int | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup quota (rounded down, at least 1)."""
    cores = affinity if affinity is not None else _affinity_cores()
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def local_processes(env: Mapping[str, str] | None = None) -> int:
    """Processes of this run on this machine: torchrun's / accelerate's LOCAL_WORLD_SIZE, else 1."""
    env = os.environ if env is None else env
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class ThreadPolicy:
    threads: int
    reason: str

    def describe(self) -> str:
        return f"CPU threads: {self.threads} per process ({self.reason})"


def thread_policy(requested: int | None = None, *, tiny: bool = False, env: Mapping[str, str] | None = None,
                  affinity: int | None = None, cgroup_root: Path = CGROUP_ROOT) -> ThreadPolicy:
    """The intra-op thread count: `requested` (--threads) if given, else an explicit OMP_NUM_THREADS, else one
    thread for `tiny` networks (toy-size ops gain nothing from a second thread and lose several-fold to
    spin-waiting when the cores are shared: the default tiny run took 2-4x longer with 2 threads than with 1 on a
    shared 2-core machine), else the usable cores divided by the local processes (at least 1)."""
    env = os.environ if env is None else env
    if requested is not None:
        return ThreadPolicy(int(requested), "--threads")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadPolicy(int(omp), "OMP_NUM_THREADS")
    cores = usable_cores(affinity=affinity, cgroup_root=cgroup_root)
    procs = local_processes(env)
    share = max(1, cores // procs)
    if tiny:
        return ThreadPolicy(1, f"tiny networks; {share} available: {cores} usable core(s) / {procs} process(es)")
    return ThreadPolicy(share, f"{cores} usable core(s) / {procs} process(es)")


BLAS_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def apply_thread_policy(requested: int | None = None, *, tiny: bool = False) -> ThreadPolicy:
    """Set torch's intra-op threads and the BLAS thread pools of NumPy/SciPy by `thread_policy` and return the
    decision. The BLAS pools matter as much as torch's: SciPy's OpenBLAS (FID's matrix square root) otherwise
    starts one thread per core and spin-waits like OpenMP (a 128 x 128 `sqrtm` took 0.09 s instead of 0.008 s
    on a busy 2-core machine, over 1 s under load). Pools already loaded are limited with threadpoolctl; for
    libraries loaded later (SciPy's own OpenBLAS loads with `scipy.linalg`) the BLAS variables are set unless
    the user set them."""
    import os

    import torch
    from threadpoolctl import threadpool_limits

    policy = thread_policy(requested, tiny=tiny)
    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
    for var in BLAS_ENV:
        os.environ.setdefault(var, str(policy.threads))
    threadpool_limits(limits=policy.threads, user_api="blas")
    return policy
