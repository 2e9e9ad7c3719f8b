"""Scale-out and reliability: 2 processes equal 1, out-of-memory back-off, kill -9 at several phases then resume,
a fuzzed corpus of broken input files, and a checkpoint pickle that carries code."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import methods
from datasets import Sample, Task, register_task
from eval.harness import RunConfig, run
from tests.conftest import ROOT

RUN_ARGS = ["--methods", "identity", "sdedit", "--tasks", "sample-edit", "sample-unpaired", "--max-samples", "4",
            "--set", "sdedit.num_inference_steps=4", "--batch-size", "1", "--quiet"]
# --batch-size 1: each process batches its own share, so with the default batching the two runs agree only up to
# float rounding (batch_equivalence); one sample per batch makes them byte-identical


def _env() -> dict[str, str]:
    # one thread per process in both runs, so the 1- and 2-process runs do the same float arithmetic
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _outputs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "outputs").rglob("*.png"))}


@pytest.mark.slow
def test_two_process_run_equals_one_process_run(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([sys.executable, "benchmark.py", *RUN_ARGS, "--out", str(one)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "benchmark.py"]
    r = subprocess.run([*torchrun, *RUN_ARGS, "--out", str(two)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done:") == 1  # rank 0 reports for the group
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2
    a, b = _outputs(one), _outputs(two)
    assert len(a) == 16 and a == b  # byte-identical outputs
    for name in ("per_image.csv", "distribution.csv"):
        assert (one / "metrics" / name).read_bytes() == (two / "metrics" / name).read_bytes()


OOM_PLUGIN = textwrap.dedent("""
    import torch
    from methods import MethodCard, Translator, TranslationOutput, register

    @register
    class Greedy(Translator):
        card = MethodCard(name="greedy-test", paper="test", year=2024, url="", kinds=frozenset({"text-edit"}),
                          needs_training=False, weights={"tiny": "none"}, defaults={}, license="MIT")
        config, weights_id = {}, "none"
        calls = []

        @classmethod
        def from_pretrained(cls, source=None, **kw):
            return cls()

        def translate(self, batch, *, generator=None):
            type(self).calls.append(len(batch))
            if len(batch) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
            return TranslationOutput(images=1 - batch.images)
""")


def _samples(n: int = 5) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(id=f"img{i}", image=Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)),
                   src_prompt="a", tgt_prompt="b") for i in range(n)]


def test_out_of_memory_batch_is_retried_at_a_smaller_batch_size(tmp_path):
    plugin = tmp_path / "greedy.py"
    plugin.write_text(OOM_PLUGIN)
    methods.load_plugin(str(plugin))
    register_task(Task(name="test-oom", kind="text-edit", description="test", loader=_samples))
    cfg = RunConfig(methods=["greedy-test"], tasks=["test-oom"], out=tmp_path / "r", batch_size=5,
                              quiet=True, evaluate=False)
    run_dir = run(cfg, registry=methods).run_dir
    cls = methods.get("greedy-test")
    assert cls.calls == [5, 3, 2, 1, 2]  # 5 -> OOM -> halves 3 (OOM -> 2 + 1) and 2
    sides = [json.loads(p.read_text()) for p in (run_dir / "outputs" / "greedy-test" / "test-oom").glob("*.json")]
    assert len(sides) == 5 and sorted(s["batch_size"] for s in sides) == [1, 2, 2, 2, 2]
    assert not (run_dir / "failures").exists()


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_kill_9_during_generation_metrics_and_report_then_resume_is_complete_and_identical(tmp_path):
    ref, run_dir = tmp_path / "ref", tmp_path / "killed"
    cmd = [sys.executable, "benchmark.py", "--methods", "identity", "sdedit", "--tasks", "sample-unpaired",
           "--max-samples", "3", "--set", "sdedit.num_inference_steps=4", "--batch-size", "1", "--quiet"]
    # --batch-size 1: a resumed run is byte-identical to an uninterrupted one (a sample redone in a smaller batch
    # may differ from its batched twin by float rounding, which the batched-default test covers)
    r = subprocess.run([*cmd, "--out", str(ref)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    metric_cache = tmp_path / "cache"  # a private metric cache, so the metrics phase really computes
    env = dict(_env(), I2I_ZOO_CACHE=str(metric_cache))
    shutil.copytree(os.environ["I2I_ZOO_CACHE"], metric_cache, ignore=shutil.ignore_patterns("metrics"))
    phases = {
        "generation": lambda: any((run_dir / "outputs").rglob("*.json")),
        "metrics": lambda: (metric_cache / "metrics").exists() and any((metric_cache / "metrics").rglob("*")),
        "report": lambda: (run_dir / "figures").exists() and any((run_dir / "figures").iterdir()),
    }
    killed = []
    for phase, reached in phases.items():
        proc = subprocess.Popen([*cmd, "--out", str(run_dir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if _wait_for(reached, proc):
            proc.send_signal(signal.SIGKILL)
            killed.append(phase)
        proc.wait()
    assert killed == ["generation", "metrics", "report"], killed
    r = subprocess.run([*cmd, "--out", str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert _outputs(run_dir) == _outputs(ref)
    for name in ("per_image.csv", "distribution.csv"):
        assert (run_dir / "metrics" / name).read_bytes() == (ref / "metrics" / name).read_bytes()
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "run.lock").exists()
    for png in run_dir.rglob("*.png"):
        Image.open(png).load()  # nothing truncated
    for csv in run_dir.rglob("*.csv"):
        pd.read_csv(csv)
    assert sorted(p.name for p in (run_dir / "tables").iterdir()) == sorted(p.name for p in (ref / "tables").iterdir())
    assert (run_dir / "report.html").read_text().rstrip().endswith("</html>")


def _corpus(folder: Path, seed: int = 0) -> dict[str, str]:
    """Broken and odd image files; returns file name -> what it is. Valid-but-odd files must load."""
    rng = random.Random(seed)
    photo = Image.fromarray((np.random.default_rng(seed).random((48, 48, 3)) * 255).astype(np.uint8))
    png, jpg = io.BytesIO(), io.BytesIO()
    photo.save(png, "PNG")
    photo.save(jpg, "JPEG", quality=90)
    png_b, jpg_b = png.getvalue(), jpg.getvalue()
    files: dict[str, tuple[bytes, str]] = {"good_p.png": (png_b, "ok"), "good_j.jpg": (jpg_b, "ok")}
    for i in range(6):
        files[f"trunc{i}_p.png"] = (png_b[: rng.randrange(8, len(png_b) - 20)], "broken")
        files[f"trunc{i}_j.jpg"] = (jpg_b[: rng.randrange(2, len(jpg_b) // 3)], "broken")
    for i in range(4):  # a flipped byte inside the PNG's image data breaks its CRC
        b = bytearray(png_b)
        pos = rng.randrange(60, len(b) - 20)
        b[pos] ^= 0xFF
        files[f"flip{i}.png"] = (bytes(b), "broken")
    files["zero.png"] = (b"", "broken")
    files["garbage.png"] = (bytes(rng.randrange(256) for _ in range(500)), "broken")
    files["text.jpg"] = (b"this is not an image\n" * 20, "broken")
    # a PNG header that declares 70000 x 70000 pixels: a decompression bomb, refused before decoding
    ihdr = b"IHDR" + (70000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    files["bomb.png"] = (bomb + png_b[33:], "broken")
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, "PNG")
    files["onepixel.png"] = (tiny.getvalue(), "broken")
    for mode, name in (("L", "gray.png"), ("RGBA", "rgba.png"), ("CMYK", "cmyk.jpg"), ("P", "palette.png"),
                       ("I;16", "sixteen.png")):
        buf = io.BytesIO()
        fmt = "JPEG" if name.endswith("jpg") else "PNG"
        photo.convert(mode if mode != "I;16" else "L").convert(mode).save(buf, fmt)
        files[name] = (buf.getvalue(), "ok")
    folder.mkdir(parents=True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    prompts = {name: {"src": "a photo", "tgt": "a painting"} for name in files}
    (folder / "prompts.json").write_text(json.dumps(prompts))
    return {name: what for name, (_, what) in files.items()}


def test_fuzzed_broken_inputs_give_clear_errors_and_the_run_goes_on(tmp_path):
    corpus = _corpus(tmp_path / "fuzz")
    cfg = RunConfig(methods=["identity"], tasks=[str(tmp_path / "fuzz")], out=tmp_path / "r", quiet=True,
                              evaluate=False)
    run_dir = run(cfg, registry=methods).run_dir
    outputs = {p.stem for p in (run_dir / "outputs" / "identity").rglob("*.png")}
    failures = {p.stem: json.loads(p.read_text()) for p in (run_dir / "failures").rglob("*.json")}
    for name, what in corpus.items():
        stem = Path(name).stem
        if what == "ok":
            assert stem in outputs, f"{name} should load (documented conversion), failure: {failures.get(stem)}"
        else:
            assert stem not in outputs, f"{name} is broken but produced an output"
            err = failures[stem]["error"]
            assert failures[stem]["phase"] == "input" and name in err and "Traceback" not in err, err
    assert len(outputs) + len(failures) == len(corpus)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_pickle_carrying_code_is_refused_and_never_executed(tmp_path):
    from methods.common.loading import UnsafeCheckpointError, load_state_file

    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"state_dict_unet": evil}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_state_file(path)
    assert not marker.exists()
    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_state_file(good)["w"], torch.ones(2))
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:40])
    with pytest.raises(Exception, match="re-download"):
        load_state_file(tmp_path / "cut.pt")
