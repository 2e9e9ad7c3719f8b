"""The run's CPU thread policy: usable cores (affinity, cgroup quota) / local processes, overridable."""

from __future__ import annotations

import pytest

from eval.harness.threads import cgroup_cpu_limit, thread_policy, usable_cores


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


def test_cgroup_quota_in_cores(tmp_path):
    assert cgroup_cpu_limit(_cgroup(tmp_path / "a", v2="max 100000")) is None
    assert cgroup_cpu_limit(_cgroup(tmp_path / "b", v2="150000 100000")) == 1.5
    assert cgroup_cpu_limit(_cgroup(tmp_path / "c", v1=(200000, 100000))) == 2.0
    assert cgroup_cpu_limit(_cgroup(tmp_path / "d", v1=(-1, 100000))) is None  # v1: no limit
    assert cgroup_cpu_limit(tmp_path / "missing") is None


@pytest.mark.parametrize("affinity, quota, expected", [
    (8, None, 8),                 # no cgroup files: the affinity mask
    (8, "max 100000", 8),         # cgroup v2 without a limit
    (8, "200000 100000", 2),      # a 2-core container on an 8-core machine
    (8, "150000 100000", 1),      # 1.5 cores: rounded down
    (8, "50000 100000", 1),       # half a core: still one thread
    (2, "400000 100000", 2),      # taskset to 2 cores inside a 4-core quota
])
def test_usable_cores_take_the_smaller_of_affinity_and_quota(tmp_path, affinity, quota, expected):
    root = _cgroup(tmp_path, v2=quota) if quota else tmp_path
    assert usable_cores(affinity=affinity, cgroup_root=root) == expected


def test_threads_are_cores_over_local_processes_and_overridable(tmp_path):
    root = _cgroup(tmp_path, v2="400000 100000")
    p = thread_policy(env={}, affinity=16, cgroup_root=root)
    assert p.threads == 4 and "4 usable core(s) / 1 process(es)" in p.describe()
    assert thread_policy(env={"LOCAL_WORLD_SIZE": "2"}, affinity=16, cgroup_root=root).threads == 2
    assert thread_policy(env={"LOCAL_WORLD_SIZE": "8"}, affinity=16, cgroup_root=root).threads == 1  # at least 1
    assert thread_policy(env={"OMP_NUM_THREADS": "3"}, affinity=16, cgroup_root=root).threads == 3
    assert thread_policy(5, env={"OMP_NUM_THREADS": "3"}, affinity=16, cgroup_root=root).threads == 5
    tiny = thread_policy(env={}, tiny=True, affinity=16, cgroup_root=root)  # toy networks: one thread
    assert tiny.threads == 1 and "4 available" in tiny.reason
    assert thread_policy(2, env={}, tiny=True, affinity=16, cgroup_root=root).threads == 2  # still overridable


def test_threads_flag_and_run_file_key(tmp_path, capsys):
    import json

    import torch

    import benchmark

    before = torch.get_num_threads()
    try:
        rc = benchmark.main(["--methods", "identity", "--tasks", "sample-edit", "--max-samples", "1", "--no-eval",
                             "--threads", "1", "--out", str(tmp_path / "r")])
        out = capsys.readouterr().out
        assert rc == 0 and out.count("CPU threads: 1 per process (--threads)") == 1
        assert json.loads((tmp_path / "r" / "manifest.json").read_text())["run_config"]["threads"] == 1
        rc = benchmark.main(["--methods", "identity", "--tasks", "sample-edit", "--threads", "0",
                             "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        assert rc == 2 and "threads must be >= 1" in err and not (tmp_path / "bad").exists()
    finally:
        torch.set_num_threads(before)


def test_policy_limits_the_blas_pools_too(monkeypatch):
    """NumPy/SciPy's OpenBLAS follows the policy like torch (its threads spin-wait like OpenMP's)."""
    import os

    import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS)
    import torch
    from threadpoolctl import threadpool_info

    from eval.harness.threads import BLAS_ENV, apply_thread_policy

    for var in BLAS_ENV:
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    try:
        assert apply_thread_policy(1).threads == 1
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
        assert all(os.environ[var] == "1" for var in BLAS_ENV)  # for libraries loaded later
    finally:
        torch.set_num_threads(before)
