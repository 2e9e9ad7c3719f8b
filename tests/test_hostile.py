"""A hostile user's cases, one group per kind of fault: stale state after a rerun, files the tool did not create,
one bad item taking a run down, values silently accepted, tracebacks where a message belongs, a race for a stale
lock, and unescaped or unsafe text."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
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

import benchmark
import methods
from datasets import DataError, Sample, Task, register_task
from datasets.layouts import read_prompts
from eval.errors import ConfigError, PluginError, without_unsafe_advice
from eval.harness import RunConfig, run
from eval.harness.safety import check_limits, check_name, clean_stale_temps
from tests.conftest import ROOT

HOSTILE_PLUGIN = textwrap.dedent("""
    import time
    from methods import MethodCard, Translator, TranslationOutput, register

    @register
    class Hostile(Translator):
        '''What a sample's id asks for: raise a BaseException, SystemExit or KeyboardInterrupt, hang, or return
        values outside [0, 1]; any other id is copied.'''
        card = MethodCard(name="hostile-test", paper="test", year=2024, url="", kinds=frozenset({"text-edit"}),
                          needs_training=False, weights={"tiny": "none"}, defaults={}, license="MIT")
        config, weights_id = {}, "none"

        @classmethod
        def from_pretrained(cls, source=None, **kw):
            return cls()

        def translate(self, batch, *, generator=None):
            ids = batch.ids
            if "base" in ids:
                raise BaseException("a BaseException from the method")
            if "exit" in ids:
                raise SystemExit(3)
            if "ctrlc" in ids:
                raise KeyboardInterrupt
            if "hang" in ids:
                while True:
                    time.sleep(0.01)
            if "slow" in ids:
                time.sleep(0.5)
            out = batch.images.clone()
            for i, sample_id in enumerate(ids):  # per sample: a batched run must pin the failure on this one
                if sample_id == "range":
                    out[i] = out[i] * 2 - 1
            return TranslationOutput(images=out)
""")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    plugin = tmp_path_factory.mktemp("plugin") / "hostile_plugin.py"
    plugin.write_text(HOSTILE_PLUGIN)
    methods.load_plugin(str(plugin))
    return "hostile-test"


def _img(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def _task(name: str, ids: list[str], metrics: tuple[str, ...] = ()) -> None:
    register_task(Task(name=name, kind="text-edit", description="test", metrics=metrics,
                       loader=lambda: [Sample(id=i, image=_img(k), src_prompt="a", tgt_prompt="b")
                                       for k, i in enumerate(ids)]), replace=True)


def _folder(root: Path, names: list[str], **prompts_extra: dict) -> Path:
    root.mkdir(parents=True)
    for k, n in enumerate(names):
        _img(k).save(root / n)
    entries = {n: {"src": "a photo", "tgt": "a painting", **prompts_extra.get(n, {})} for n in names}
    (root / "prompts.json").write_text(json.dumps(entries))
    return root


def _fails(run_dir: Path, method: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "failures" / method).rglob("*.json")}


def _cfg(out: Path, **kw) -> RunConfig:
    base = dict(methods=["identity"], out=out, quiet=True, evaluate=False)
    return RunConfig(**{**base, **kw})


# ------------------------------------------------------------------------ 1. a run directory true after any rerun
_CONTENT = {"seed": 0}


def _changing_samples() -> list[Sample]:
    return [Sample(id=f"s{i}", image=_img(_CONTENT["seed"] + i, 40), src_prompt="a", tgt_prompt="b")
            for i in range(2)]


@pytest.mark.slow
def test_changed_input_or_resolution_rewrites_the_inputs_and_identity_stays_at_zero_lpips(tmp_path):
    register_task(Task(name="test-changing", kind="text-edit", description="test", metrics=("lpips",),
                       loader=_changing_samples), replace=True)
    out = tmp_path / "r"

    def lpips(**kw) -> pd.Series:
        run(_cfg(out, tasks=["test-changing"], evaluate=True, **kw), registry=methods)
        per = pd.read_csv(out / "metrics" / "per_image.csv")
        return per[per.metric == "lpips"].set_index("sample")["value"]

    assert (lpips() == 0).all()
    _CONTENT["seed"] = 100  # the same sample ids, new pixels
    values = lpips()
    assert (values == 0).all() and len(values) == 2
    saved = np.asarray(Image.open(out / "inputs" / "test-changing" / "s0.png"))
    assert np.array_equal(saved, np.asarray(_changing_samples()[0].image))
    values = lpips(resolution=32)
    assert (values == 0).all() and Image.open(out / "inputs" / "test-changing" / "s0.png").size == (32, 32)


def test_input_failure_record_goes_once_the_file_is_fixed(tmp_path):
    data = _folder(tmp_path / "data", ["a.png", "b.png"])
    (data / "b.png").write_bytes(b"not a png at all")
    out = tmp_path / "r"
    run(_cfg(out, tasks=[str(data)]), registry=methods)
    assert list((out / "failures" / "_inputs" / "data").glob("*.json"))
    _img(5).save(data / "b.png")
    run(_cfg(out, tasks=[str(data)]), registry=methods)
    assert not list((out / "failures").rglob("*.json"))
    assert sorted(p.stem for p in (out / "outputs" / "identity" / "data").glob("*.png")) == ["a", "b"]


def test_edited_metric_cache_entry_is_dropped_with_a_message(tmp_path, capsys):
    from eval.store import _kv_path, kv_get, kv_put

    kv_put(tmp_path, "k" * 64, {"value": 0.25, "metric": "lpips"})
    assert kv_get(tmp_path, "k" * 64) == {"value": 0.25, "metric": "lpips"}
    path = _kv_path(tmp_path, "k" * 64)
    path.write_text(path.read_text().replace("0.25", "0.01"))
    assert kv_get(tmp_path, "k" * 64) is None and not path.exists()
    assert "dropped" in capsys.readouterr().err


def test_edited_tiny_preset_is_rebuilt_with_a_message(tmp_path, capsys):
    from eval.store import build_once

    builds = []

    def builder(dest: Path) -> None:
        builds.append(dest)
        (dest / "weights.bin").write_bytes(b"\x00" * 64)

    dest = build_once(tmp_path / "p-v1", builder, "test")
    assert build_once(dest, builder, "test") == dest and len(builds) == 1  # verified, not rebuilt
    (dest / "weights.bin").write_bytes(b"\x01" * 64)
    build_once(dest, builder, "test")
    assert len(builds) == 2 and (dest / "weights.bin").read_bytes() == b"\x00" * 64
    assert "rebuilding" in capsys.readouterr().err


def test_edited_tiny_encoder_weights_are_rebuilt_with_a_message(tmp_path, monkeypatch, capsys):
    """The metrics' tiny / random encoders (Inception, DINO, CLIP, LPIPS) are cached like the method presets:
    checked by content on every use."""
    from eval.dino import DEFAULT_DINO, _tiny_dir, get_dino_model
    from eval.inception import _tiny_file

    monkeypatch.setenv("I2I_ZOO_CACHE", str(tmp_path))
    import torch
    from safetensors.torch import load_file

    file = _tiny_file()
    original = {k: v.clone() for k, v in load_file(file).items()}  # load_file maps the file: copy it
    data = file.read_bytes()
    file.write_bytes(data[:-8] + b"\x00" * 8)  # a weight edited in place
    assert _tiny_file() == file
    rebuilt = load_file(file)  # the same seeded weights again (the header's metadata order may differ)
    assert rebuilt.keys() == original.keys() and all(torch.equal(rebuilt[k], original[k]) for k in original)
    assert "rebuilding" in capsys.readouterr().err
    folder = _tiny_dir(get_dino_model(DEFAULT_DINO))
    (folder / "model.safetensors").unlink()  # damaged: a file gone
    assert (_tiny_dir(get_dino_model(DEFAULT_DINO)) / "model.safetensors").is_file()
    assert "rebuilding" in capsys.readouterr().err


def test_cleanup_removes_only_the_tools_own_temp_files(tmp_path):
    out = tmp_path / "r"
    run(_cfg(out, tasks=["sample-edit"], max_samples=1), registry=methods)
    own = out / "outputs" / "identity" / ".x.png.i2iz-abcd1234.tmp"
    own.write_bytes(b"half")
    mine = [out / ".notes.tmp", out / "outputs" / ".notes.tmp", out / "outputs" / ".a.b.tmp"]
    for p in mine:
        p.write_text("user data")
    run(_cfg(out, tasks=["sample-edit"], max_samples=1), registry=methods)
    assert not own.exists() and all(p.read_text() == "user data" for p in mine)
    foreign = tmp_path / "foreign"
    (foreign / "outputs").mkdir(parents=True)
    (foreign / "outputs" / ".x.png.i2iz-abcd1234.tmp").write_text("not ours to judge")
    assert clean_stale_temps(foreign) == 0 and (foreign / "outputs" / ".x.png.i2iz-abcd1234.tmp").exists()


# ---------------------------------------------------------------------------- 2. never touch what it did not make
def test_report_refuses_a_folder_it_did_not_make_and_leaves_it_intact(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "tables").mkdir(parents=True)
    (folder / "report.md").write_text("my notes")
    (folder / "tables" / "t.csv").write_text("mine")
    assert benchmark.main(["report", str(folder)]) == 2
    assert "not an i2i-zoo run directory" in capsys.readouterr().err
    assert (folder / "report.md").read_text() == "my notes" and (folder / "tables" / "t.csv").read_text() == "mine"
    assert sorted(p.name for p in folder.rglob("*")) == ["report.md", "t.csv", "tables"]
    assert benchmark.main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_refuses_a_foreign_or_file_out(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("x")
    args = ["--methods", "identity", "--tasks", "sample-edit", "--max-samples", "1", "--quiet", "--no-eval"]
    assert benchmark.main([*args, "--out", str(tmp_path)]) == 2
    assert "not an i2i-zoo run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    assert benchmark.main([*args, "--out", str(tmp_path / "mine.txt")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_train_refuses_a_foreign_out_and_marks_its_own(tmp_path):
    from eval.harness import train

    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an i2i-zoo training folder"):
        train("cyclegan-turbo", "sample-unpaired", tmp_path, registry=methods, preset="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    with pytest.raises(ConfigError, match="is a file"):
        train("cyclegan-turbo", "sample-unpaired", tmp_path / "mine.txt", registry=methods, preset="tiny")


def test_names_that_would_leave_the_run_directory_are_refused(tmp_path, hostile):
    for bad in ("../../x", "..", "/etc", "a/../../b", "a\\b"):
        with pytest.raises(ConfigError, match="cannot be a folder name"):
            check_name(bad, "method row label")
    check_name("diffuseit[clip_models=ViT-B-32/openai]", "method row label")  # a swept value with a slash is fine
    plugin = tmp_path / "escape_plugin.py"
    plugin.write_text(HOSTILE_PLUGIN.replace('"hostile-test"', '"../../escaped-test"').replace("Hostile", "Escape"))
    methods.load_plugin(str(plugin))
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        run(_cfg(tmp_path / "a" / "b" / "r", methods=["../../escaped-test"], tasks=["sample-edit"]), registry=methods)
    assert not (tmp_path / "a").exists()


def test_prompts_reference_outside_the_folder_is_refused(tmp_path):
    from datasets import task_from_folder

    _img(9).save(tmp_path / "outside.png")
    data = _folder(tmp_path / "data", ["a.png"], **{"a.png": {"reference": "../outside.png"}})
    with pytest.raises(DataError, match="outside"):
        task_from_folder(data)
    (data / "prompts.json").write_text(json.dumps({"a.png": {"tgt": "x", "reference": str(tmp_path / "outside.png")}}))
    with pytest.raises(DataError, match="outside"):
        task_from_folder(data)


# ------------------------------------------------------------------------------- 3. one item never takes a run down
def _png_with_chunk(img: Image.Image, ctype: bytes, data: bytes) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    raw = buf.getvalue()
    chunk = struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)
    return raw[:33] + chunk + raw[33:]  # right after the IHDR chunk (8-byte signature + 25-byte IHDR)


def test_hostile_files_are_failure_records_and_the_other_samples_are_scored(tmp_path):
    from datasets import task_from_folder

    data = _folder(tmp_path / "data", ["a.png", "b.png", "bomb.png", "gone.png", "pipe.png"])
    bomb = zlib.compress(b"\x00" * (64 << 20), 9)  # a zTXt chunk that inflates past Pillow's text limit
    (data / "bomb.png").write_bytes(_png_with_chunk(_img(3), b"zTXt", b"Comment\x00\x00" + bomb))
    (data / "gone.png").unlink()
    (data / "gone.png").symlink_to(data / "nowhere.png")  # dangling
    (data / "pipe.png").unlink()
    os.mkfifo(data / "pipe.png")
    task_from_folder(data, name="test-hostile-files", metrics=["lpips"], register=True)
    out = run(_cfg(tmp_path / "r", tasks=["test-hostile-files"], evaluate=True), registry=methods).run_dir
    failed = {json.loads(p.read_text())["sample"]: json.loads(p.read_text())["error"]
              for p in (out / "failures" / "_inputs").rglob("*.json")}
    assert sorted(failed) == ["bomb", "gone", "pipe"]
    assert "cannot be opened safely" in failed["bomb"] and "not found" in failed["gone"]
    assert "not a regular file" in failed["pipe"]
    per = pd.read_csv(out / "metrics" / "per_image.csv")
    assert sorted(per["sample"]) == ["a", "b"] and (per["value"] == 0).all()


def test_deeply_nested_json_and_a_huge_csv_cell_are_clear_errors(tmp_path):
    deep = tmp_path / "prompts.json"
    deep.write_text('{"a.png": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataError, match="nested too deeply"):
        read_prompts(deep)
    big = tmp_path / "prompts.csv"
    big.write_text("filename,tgt\na.png," + "x" * 200_000 + "\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        read_prompts(big)


def test_outputs_out_of_range_are_failures_with_the_observed_range(tmp_path, hostile):
    _task("test-range", ["ok", "range"])
    out = run(_cfg(tmp_path / "r", methods=[hostile], tasks=["test-range"]), registry=methods).run_dir
    fails = _fails(out, hostile)
    assert list(fails) == ["range"] and "outside the [0, 1] contract" in fails["range"]["error"]
    assert "[-1" in fails["range"]["error"]
    assert not (out / "outputs" / hostile / "test-range" / "range.png").exists()


# ------------------------------------------------------------------------------ 4. arguments and limits
def test_repeated_flags_accumulate():
    args = benchmark._parser().parse_args(["run", "--methods", "identity", "--methods", "sdedit", "--tasks", "a",
                                           "--tasks", "b", "c", "--set", "x.y=1", "--set", "z.w=2"])
    assert args.methods == ["identity", "sdedit"] and args.tasks == ["a", "b", "c"]
    assert args.set == ["x.y=1", "z.w=2"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_samples_below_one_exits_2_with_a_message(value, tmp_path, capsys):
    assert benchmark.main(["--methods", "identity", "--max-samples", value, "--out", str(tmp_path / "r")]) == 2
    assert "max_samples must be >= 1" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_duplicate_task_names_are_refused_naming_both_paths(tmp_path):
    from eval.harness.preflight import check_tasks

    one = _folder(tmp_path / "x" / "data", ["a.png"])
    two = _folder(tmp_path / "y" / "data", ["a.png"])
    with pytest.raises(DataError) as err:
        check_tasks([str(one), str(two)])
    assert str(one.resolve()) in str(err.value) and str(two.resolve()) in str(err.value)
    bundled = _folder(tmp_path / "z" / "sample-edit", ["a.png"])
    with pytest.raises(DataError, match="bundled task 'sample-edit'"):
        check_tasks([str(bundled)])


def test_resolution_and_step_bounds_need_allow_large(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--allow-large"):
        check_limits(12000, {}, allow_large=False)
    check_limits(12000, {"m": {"num_inference_steps": 10**8}}, allow_large=True)
    with pytest.raises(ConfigError, match="not a finite number"):
        check_limits(None, {"m": {"guidance_scale": float("inf")}}, allow_large=True)
    args = ["--methods", "sdedit", "--tasks", "sample-edit", "--out", str(tmp_path / "r")]
    assert benchmark.main([*args, "--set", "sdedit.num_inference_steps=100000000"]) == 2
    assert "above 1000" in capsys.readouterr().err
    assert benchmark.main([*args, "--resolution", "12000"]) == 2
    assert "above 4096" in capsys.readouterr().err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- 5. messages, not tracebacks
def test_user_mistakes_are_one_line_messages(tmp_path, capsys, monkeypatch):
    cases = [
        ["--methods", "identity", "--resolution", "-5", "--out", str(tmp_path / "a")],
        ["perf", "--methods", "identity", "--repeats", "0", "--out", str(tmp_path / "b")],
        ["perf", "--methods", "identity", "--warmup", "-1", "--out", str(tmp_path / "c")],
    ]
    for argv in cases:
        assert benchmark.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err

    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setattr(benchmark, "cmd_run", disk_full)
    assert benchmark.main(["--methods", "identity"]) == 2
    assert "No space left on device" in capsys.readouterr().err


def test_missing_or_broken_plugin_is_a_plugin_error(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        methods.load_plugin(str(tmp_path / "nope.py"))
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(PluginError, match="SyntaxError"):
        methods.load_plugin(str(broken))
    exits = tmp_path / "exits_plugin.py"
    exits.write_text("raise SystemExit(4)\n")
    with pytest.raises(PluginError, match="SystemExit"):
        methods.load_plugin(str(exits))


def test_base_exception_and_system_exit_in_a_method_are_its_failures(tmp_path, hostile):
    _task("test-raise", ["base", "exit", "ok"])
    out = run(_cfg(tmp_path / "r", methods=[hostile, "identity"], tasks=["test-raise"]), registry=methods).run_dir
    fails = _fails(out, hostile)
    assert sorted(fails) == ["base", "exit"] and "SystemExit" in fails["exit"]["error"]
    assert (out / "outputs" / hostile / "test-raise" / "ok.png").exists()
    assert len(list((out / "outputs" / "identity" / "test-raise").glob("*.png"))) == 3
    _task("test-ctrlc", ["ctrlc"])
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the run
        run(_cfg(tmp_path / "r2", methods=[hostile], tasks=["test-ctrlc"]), registry=methods)
    assert not (tmp_path / "r2" / "run.lock").exists()


def test_a_batch_past_the_timeout_is_a_timeout_failure_and_the_run_goes_on(tmp_path, hostile):
    _task("test-hang", ["hang", "ok"])
    t0 = time.monotonic()
    # one sample per batch: a timed-out batch is recorded whole (retrying it would multiply the wait)
    out = run(_cfg(tmp_path / "r", methods=[hostile], tasks=["test-hang"], timeout=0.5, batch_size=1),
              registry=methods).run_dir
    assert time.monotonic() - t0 < 30
    fails = _fails(out, hostile)
    assert list(fails) == ["hang"] and fails["hang"]["phase"] == "timeout"
    assert (out / "outputs" / hostile / "test-hang" / "ok.png").exists()


@pytest.mark.slow
def test_sigterm_stops_with_a_message_and_the_run_resumes(tmp_path, hostile):
    plugin = Path(sys.modules["i2i_zoo_plugin_hostile_plugin"].__file__)
    data = _folder(tmp_path / "slowdata", [f"s{i}.png" for i in range(31)])
    out = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=str(ROOT), I2I_ZOO_PLUGINS=str(plugin))
    code = textwrap.dedent(f"""
        import sys, time, methods
        cls = methods.get("hostile-test")
        orig = cls.translate
        def slow(self, batch, *, generator=None):
            time.sleep(0.3)
            return orig(self, batch, generator=generator)
        cls.translate = slow
        import benchmark
        sys.exit(benchmark.main(["--methods", "hostile-test", "--tasks", {str(data)!r}, "--out", {str(out)!r},
                                 "--quiet", "--no-eval"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "outputs").rglob("*.json")):
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not (out / "run.lock").exists()
    run(_cfg(out, methods=[hostile], tasks=[str(data)]), registry=methods)
    assert len(list((out / "outputs" / hostile / "slowdata").glob("*.png"))) == 31


# ------------------------------------------------------------------------------ 6. a stale lock, two takers
RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import eval.harness.runner as runner
    from eval.errors import RunLockedError

    alive = runner._pid_alive

    def slow_alive(pid):  # widen the window between reading the stale owner and taking over
        time.sleep(0.5)
        return alive(pid)
    runner._pid_alive = slow_alive
    start = float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))
    try:
        with runner.RunLock(Path(sys.argv[1])):
            print("won", flush=True)
            time.sleep(1.5)
    except RunLockedError as err:
        print("lost:", err, flush=True)
""")


def test_two_runs_racing_for_a_stale_lock_have_exactly_one_winner(tmp_path):
    import platform

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text(f"999999999 {platform.node()}\n")  # its owner is gone
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(run_dir), start], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    results = sorted(o.split()[0] if o else e for o, e in outs)
    assert results == ["lost:", "won"], outs


# ------------------------------------------------------------------------------ 7. escaping and unsafe advice
def test_markdown_escapes_task_names_labels_and_prompts():
    from reports.tables import _md_escape

    hostile_name = "# [click](javascript:alert(1)) <img src=x onerror=alert(1)> `code` *b* |x|\n## h"
    text = _md_escape(hostile_name)
    assert "<" not in text and "\n" not in text and "](" not in text.replace("\\](", "")
    for ch in "[]`*|#":
        assert all(text[i - 1] == "\\" for i, c in enumerate(text) if c == ch)


def test_no_message_suggests_weights_only_false(tmp_path):
    import torch

    from methods.common.loading import UnsafeCheckpointError, load_state_file

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    try:
        torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch raises, its advice must go
        raw = str(err)
    cleaned = without_unsafe_advice(raw)
    assert "weights_only" not in cleaned.replace("weights_only=True", "") and "safetensors" in cleaned
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_file(path)
    assert "False" not in str(info.value)
    product = [p for d in ("eval", "methods", "datasets", "reports") for p in (ROOT / d).rglob("*.py")]
    product.append(ROOT / "benchmark.py")
    assert not [p for p in product if "weights_only=False" in p.read_text()]
    assert "executes" in (ROOT / "README.md").read_text().split("I2I_ZOO_PLUGINS")[1][:600]
