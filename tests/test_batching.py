"""Default batching: batch-independent methods are batched with a size chosen from the device, the outputs equal
one-by-one translation within the method's declared contract, and the cache never depends on the batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import methods
from eval.harness import RunConfig, run
from eval.harness.batching import CPU_TINY_BATCH, CUDA_MAX_BATCH, choose_batch_size


@pytest.mark.parametrize("name", methods.list())
def test_default_batches_batch_independent_methods_on_cpu(name):
    cls = methods.get(name)
    choice = choose_batch_size(cls, device="cpu", tiny=True, pixels=64 * 64)
    if cls.batch_equivalence in ("float", "float-guided"):
        assert choice.size == CPU_TINY_BATCH > 1
    else:  # a method that quantises between stages runs one by one unless asked
        assert cls.batch_equivalence == "8bit-handoff" and choice.size == 1
    assert choose_batch_size(cls, device="cpu", tiny=True, pixels=64 * 64, requested=3).size == 3
    assert choose_batch_size(cls, device="cpu", tiny=False, pixels=512 * 512).size == 1


def test_cuda_batch_follows_free_memory():
    cls = methods.get("sdedit")
    kw = dict(device="cuda", tiny=False, pixels=512 * 512)
    small = choose_batch_size(cls, free_bytes=2 * 2**30, **kw).size
    big = choose_batch_size(cls, free_bytes=70 * 2**30, **kw).size
    f16 = choose_batch_size(cls, free_bytes=8 * 2**30, dtype="float16", **kw).size
    f32 = choose_batch_size(cls, free_bytes=8 * 2**30, **kw).size
    assert small == 1 and 1 < big <= CUDA_MAX_BATCH
    assert 1 < f32 < f16 <= 2 * f32 + 1  # 16-bit: half the bytes per sample
    assert choose_batch_size(cls, free_bytes=2**40, **kw).size == CUDA_MAX_BATCH
    assert choose_batch_size(methods.get("piti"), free_bytes=2**40, **kw).size == 1


def _outputs(run_dir, row, task="sample-edit"):
    base = run_dir / "outputs" / row / task
    sides = {p.stem: json.loads(p.read_text()) for p in sorted(base.glob("*.json"))}
    pngs = {p.stem: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(base.glob("*.png"))}
    return sides, pngs


@pytest.mark.slow
def test_default_run_batches_and_equals_batch_one(tmp_path):
    """sdedit ("float") batched by default: per-sample outputs within one 8-bit level of batch-1 outputs (1e-4
    on [0, 1] can only flip a rounding), the same cache keys, and a batch-1 rerun on the batched run resumes."""
    kw = dict(methods=["sdedit"], tasks=["sample-edit"], max_samples=3, evaluate=False, quiet=True)
    auto = run(RunConfig(out=tmp_path / "auto", **kw), registry=methods).run_dir
    one = run(RunConfig(out=tmp_path / "one", batch_size=1, **kw), registry=methods).run_dir
    sa, pa = _outputs(auto, "sdedit")
    s1, p1 = _outputs(one, "sdedit")
    assert len(sa) == 3 and sorted(sa) == sorted(s1)
    assert {s["batch_size"] for s in sa.values()} == {3} and {s["batch_size"] for s in s1.values()} == {1}
    assert all(sa[k]["key"] == s1[k]["key"] for k in sa)  # outputs are keyed per sample, not per batch
    assert max(int(np.abs(pa[k] - p1[k]).max()) for k in pa) <= 1
    manifest = json.loads((auto / "manifest.json").read_text())
    assert manifest["methods"]["sdedit"]["batch_size"] == CPU_TINY_BATCH and manifest["batch_size"] == "auto"
    before = {k: (auto / "outputs" / "sdedit" / "sample-edit" / f"{k}.png").stat().st_mtime_ns for k in sa}
    run(RunConfig(out=auto, batch_size=1, **kw), registry=methods)  # another batch size: nothing to redo
    assert {k: (auto / "outputs" / "sdedit" / "sample-edit" / f"{k}.png").stat().st_mtime_ns for k in sa} == before
