"""The runner: resumable, content-keyed, batch-size independent, failure-isolating, with a manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import methods
from datasets import Sample, Task, register_task
from eval.harness import RunConfig, RunLockedError, run, sample_seed
from tests.conftest import ROOT

N = 5


def _samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(N):
        arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        out.append(Sample(id=f"img{i}", image=Image.fromarray(arr), src_prompt="a photo", tgt_prompt=f"a painting {i}"))
    return out


TASK = register_task(Task(name="test-edit", kind="text-edit", description="random 64 px images, test only",
                          loader=_samples, metrics=()))


SD = "sdedit[num_inference_steps=4]"  # the row label of sdedit with a non-default option


def _run(cfg: RunConfig) -> Path:
    return run(cfg, registry=methods).run_dir


def _cfg(out: Path, **kw) -> RunConfig:
    base = dict(methods=["sdedit"], tasks=["test-edit"], out=out, preset="tiny", quiet=True, evaluate=False,
                overrides={"sdedit": {"num_inference_steps": 4}})
    base.update(kw)
    return RunConfig(**base)


def _pngs(run_dir: Path, method: str = SD) -> dict[str, np.ndarray]:
    folder = run_dir / "outputs" / method / "test-edit"
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_sample_seed_is_stable_and_depends_on_seed_and_id():
    assert sample_seed(0, "a") == sample_seed(0, "a")
    assert len({sample_seed(0, "a"), sample_seed(1, "a"), sample_seed(0, "b")}) == 3


def test_run_writes_outputs_manifest_and_resumes_without_recompute(tmp_path):
    run_dir = _run(_cfg(tmp_path / "r"))
    outs = _pngs(run_dir)
    assert sorted(outs) == [f"img{i}" for i in range(N)]
    assert all(a.shape == (64, 64, 3) and a.dtype == np.uint8 for a in outs.values())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["methods"][SD]["weights_label"] == "random"
    assert manifest["methods"][SD]["config"]["num_inference_steps"] == 4
    assert manifest["tasks"]["test-edit"]["n_samples"] == N and manifest["versions"]["torch"]
    assert (run_dir / "inputs" / "test-edit" / "img0.png").exists()
    side = json.loads((run_dir / "outputs" / SD / "test-edit" / "img0.json").read_text())
    assert side["seconds"] > 0 and side["peak_mem_bytes"] > 0 and len(side["key"]) == 64
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "outputs").rglob("*.png")}
    _run(_cfg(tmp_path / "r"))
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "outputs").rglob("*.png")} == stamps
    # a changed hyper-parameter is another variant (its own row and outputs), never the stale outputs
    _run(_cfg(tmp_path / "r", overrides={"sdedit": {"num_inference_steps": 4, "strength": 0.75}}))
    label = "sdedit[strength=0.75,num_inference_steps=4]"
    assert json.loads((run_dir / "manifest.json").read_text())["methods"][label]["config"]["strength"] == 0.75
    changed = _pngs(run_dir, label)
    assert len(changed) == N and all(not np.array_equal(changed[k], outs[k]) for k in outs)


def test_damaged_output_is_redone(tmp_path):
    # one sample at a time, so the redone sample runs in the same batch shape as the first time: the same bytes
    # (a default, batched run redoes it alone: equal up to float rounding, see test_batching)
    run_dir = _run(_cfg(tmp_path / "r", batch_size=1))
    png = run_dir / "outputs" / SD / "test-edit" / "img2.png"
    good = png.read_bytes()
    png.write_bytes(good[: len(good) // 2])  # truncated by hand
    _run(_cfg(tmp_path / "r", batch_size=1))
    assert png.read_bytes() == good


def test_same_seed_same_outputs_whatever_the_batch_size(tmp_path):
    one = _pngs(_run(_cfg(tmp_path / "b1", batch_size=1)))
    three = _pngs(_run(_cfg(tmp_path / "b3", batch_size=3)))
    assert one.keys() == three.keys()
    for k in one:  # float differences of ~1e-6 between batch shapes may flip a rounding: at most 1 level
        assert np.abs(one[k].astype(int) - three[k].astype(int)).max() <= 1
    other_seed = _pngs(_run(_cfg(tmp_path / "s1", seed=1)))
    assert any(not np.array_equal(one[k], other_seed[k]) for k in one)


PLUGIN = textwrap.dedent("""
    import torch
    from methods import MethodCard, Translator, TranslationOutput, register

    @register
    class Flaky(Translator):
        card = MethodCard(name="flaky-test", paper="test", year=2024, url="", kinds=frozenset({"text-edit"}),
                          needs_training=False, weights={"tiny": "none"}, defaults={}, license="MIT")
        config, weights_id = {}, "none"

        @classmethod
        def from_pretrained(cls, source=None, **kw):
            return cls()

        def translate(self, batch, *, generator=None):
            if "img1" in batch.ids:
                raise RuntimeError("boom on img1")
            out = batch.images.clone()
            if "img3" in batch.ids:
                out[batch.ids.index("img3")] = float("nan")
            return TranslationOutput(images=out)
""")


def test_failing_and_nan_samples_are_recorded_and_the_run_goes_on(tmp_path):
    plugin = tmp_path / "flaky.py"
    plugin.write_text(PLUGIN)
    methods.load_plugin(str(plugin))
    run_dir = _run(_cfg(tmp_path / "r", methods=["flaky-test", "identity"], batch_size=2, overrides={}))
    assert sorted(_pngs(run_dir, "flaky-test")) == ["img0", "img2", "img4"]
    assert len(_pngs(run_dir, "identity")) == N
    fails = {p.stem: json.loads(p.read_text()) for p in (run_dir / "failures" / "flaky-test").rglob("*.json")}
    assert sorted(fails) == ["img1", "img3"]
    assert "boom on img1" in fails["img1"]["error"] and "Traceback" in fails["img1"]["traceback"]
    assert fails["img1"]["phase"] == "translate" and "NaN" in fails["img3"]["error"]


def test_kind_mismatch_is_skipped_and_recorded(tmp_path):
    register_task(Task(name="test-guided", kind="image-guided", description="test", loader=_samples))
    run_dir = _run(_cfg(tmp_path / "r", tasks=["test-guided"]))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["skipped"] == [{"method": SD, "task": "test-guided",
                                    "reason": "sdedit does not support 'image-guided' tasks"}]


def test_second_process_on_same_run_dir_fails_fast_and_stale_lock_recovers(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    host = __import__("platform").node()
    (run_dir / "run.lock").write_text(f"{os.getppid()} {host}\n")  # a live process holds it
    with pytest.raises(RunLockedError, match="in use by a running benchmark"):
        _run(_cfg(run_dir))
    (run_dir / "run.lock").write_text(f"999999999 {host}\n")  # its owner is gone
    _run(_cfg(run_dir))
    assert not (run_dir / "run.lock").exists() and len(_pngs(run_dir)) == N


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_completes_without_recomputing(tmp_path):
    run_dir = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import sys; sys.argv = ["benchmark.py"]
        import methods, tests.test_runner
        from eval.harness import RunConfig, run
        run(RunConfig(methods=["sdedit"], tasks=["test-edit"], out={str(run_dir)!r}, preset="tiny", quiet=True,
                      evaluate=False, batch_size=1, overrides={{"sdedit": {{"num_inference_steps": 400}}}}),
            registry=methods)
    """)  # one sample per batch: a batch of all N would finish (or not) as a whole, and the kill must land between
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    out_dir = run_dir / "outputs" / "sdedit[num_inference_steps=400]" / "test-edit"
    deadline = time.time() + 300
    while time.time() < deadline and not list(out_dir.glob("*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in out_dir.glob("*.json")}
    assert 1 <= len(finished) < N, "kill landed outside the generation phase"
    for p in out_dir.glob("*.png"):
        Image.open(p).load()  # no truncated image under a final name
    done = _run(_cfg(run_dir, overrides={"sdedit": {"num_inference_steps": 400}}))
    assert len(_pngs(done, "sdedit[num_inference_steps=400]")) == N and not (done / "failures").exists()
    assert not list(done.rglob("*.tmp")), "temp files of the killed run are cleaned up on resume"
    for stem, stamp in finished.items():  # finished samples were not recomputed
        assert (out_dir / f"{stem}.json").stat().st_mtime_ns == stamp


def _odd_samples() -> list[Sample]:
    img = Image.fromarray((np.random.default_rng(1).random((60, 64, 3)) * 255).astype(np.uint8))
    return [Sample(id="odd", image=img, tgt_prompt="a dog"), Sample(id="noprompt", image=img.crop((0, 0, 64, 56)))]


def test_bad_sizes_and_missing_prompts_fail_per_sample_with_the_fix(tmp_path):
    register_task(Task(name="test-odd", kind="text-edit", description="test", loader=_odd_samples))
    run_dir = _run(_cfg(tmp_path / "r", tasks=["test-odd"]))
    fails = {p.stem: json.loads(p.read_text()) for p in (run_dir / "failures").rglob("*.json")}
    assert "64x60" in fails["odd"]["error"] and "multiples of 8" in fails["odd"]["error"]
    assert "--resolution" in fails["odd"]["error"]
    assert "needs a target prompt" in fails["noprompt"]["error"] and "noprompt" in fails["noprompt"]["error"]
    # --resolution makes the same data usable
    run_dir = _run(_cfg(tmp_path / "r2", tasks=["test-odd"], resolution=32))
    assert sorted(p.stem for p in (run_dir / "failures").rglob("*.json")) == ["noprompt"]
