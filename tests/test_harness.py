"""The harness as a library and behind the CLI: pre-flight checks, sweeps and row labels, run files and replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import benchmark
import methods
from datasets import Sample, Task, register_task
from eval.harness import ConfigError, RunConfig, ZooError, dump_run_file, load_run, parse_overrides, rerun, run
from eval.harness.config import Sweep, resolve_variants
from eval.harness.preflight import check_device
from tests.conftest import ROOT


def _samples() -> list[Sample]:
    rng = np.random.default_rng(3)
    return [Sample(id=f"s{i}", image=Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)),
                   src_prompt="a photo", tgt_prompt=f"a painting {i}") for i in range(2)]


register_task(Task(name="test-harness", kind="text-edit", description="two random 32 px images, test only",
                   loader=_samples, metrics=()))
FAST = ["--methods", "sdedit", "--tasks", "test-harness", "--no-eval", "--quiet"]


def _main(capsys, *args: str) -> tuple[int, str, str]:
    rc = benchmark.main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---------------------------------------------------------------------------------------------------------------
# pre-flight: one clear error, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------------------
PREFLIGHT = {
    "gpu": (["--device", "gpu"], "unknown device 'gpu'"),
    "cuda:7": (["--device", "cuda:7"], "cuda"),
    "dtype": (["--dtype", "float64x"], "unknown dtype"),
    "method typo": (["--set", "sdedi.strength=0.5"], "Did you mean 'sdedit'"),
    "not a number": (["--set", "sdedit.strength=abc"], "strength='abc' is not a valid float"),
    "out of range": (["--set", "sdedit.strength=1.5"], "strength must be in (0, 1]"),
    "fractional steps": (["--set", "sdedit.num_inference_steps=10.5"], "num_inference_steps=10.5 is not a valid int"),
    "unknown option": (["--set", "sdedit.strenght=0.5"], "unknown option 'strenght'"),
    "weights for two": (["--methods", "sdedit", "identity", "--weights", "x"], "single method"),
    "bad sweep value": (["--set", "sdedit.strength=0.3,abc"], "is not a valid float"),
    "figure format": (["--figures", "png,svg"], "unknown figure format(s) svg; known: png, pdf"),
    "figures without png": (["--figures", "pdf"], "use --figures png or --figures png,pdf"),
}


@pytest.mark.parametrize("case", sorted(PREFLIGHT))
def test_preflight_errors_exit_2_with_one_line_and_write_nothing(case, tmp_path, capsys):
    extra, message = PREFLIGHT[case]
    out = tmp_path / "run"
    rc, stdout, err = _main(capsys, *FAST, *extra, "--out", str(out))
    assert rc == 2 and message in err, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_on_a_cpu_box_is_one_line_from_the_command_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "benchmark.py", *FAST, "--device", "cuda", "--out", str(tmp_path / "r")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no usable CUDA GPU" in r.stderr and "--device cpu" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def test_device_check_accepts_cpu_and_names_the_gpu_count():
    import torch

    assert check_device("cpu") == "cpu"
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match="cuda"):
        check_device(f"cuda:{n + 3}")


def test_library_raises_typed_errors_never_system_exit(tmp_path):
    with pytest.raises(ConfigError) as err:
        run(RunConfig(methods=["sdedit"], tasks=["test-harness"], out=tmp_path / "r",
                      overrides={"sdedi": {"strength": 0.5}}), registry=methods)
    assert isinstance(err.value, ZooError) and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError):
        parse_overrides(["sdedit.strength"])
    with pytest.raises(ConfigError):
        RunConfig(batch_size=0)
    with pytest.raises(ZooError):  # an unknown method: the registry's error is a ZooError too
        run(RunConfig(methods=["nope"], out=tmp_path / "r"), registry=methods)
    with pytest.raises(ZooError):
        load_run(tmp_path)


def test_every_method_and_trainer_coerces_and_validates_through_one_resolver():
    for name in methods.list():
        cls = methods.get(name)
        ints = [k for k, hp in cls.card.defaults.items() if type(hp.value) is int]
        if ints:
            with pytest.raises(methods.InputError, match="is not a valid int"):
                cls.resolve_config("tiny", {ints[0]: 10.5})
    turbo = methods.get("cyclegan-turbo")
    assert turbo.resolve_config("tiny", {"prompt": "input"})["prompt"] == "input"
    with pytest.raises(methods.InputError, match="prompt must be"):
        turbo.resolve_config("tiny", {"prompt": "other"})
    assert methods.get("sdedit").resolve_config("tiny-turbo")["num_inference_steps"] == 2  # the preset overlay
    sd = methods.get("sdedit")
    assert (sd.resolve_config("tiny")["num_inference_steps"], sd.resolve_config("paper")["num_inference_steps"]) == (
        10, 50)  # the tiny preset's short schedule; the paper keeps 50
    assert sd.resolve_config("tiny", {"num_inference_steps": 50})["num_inference_steps"] == 50  # still overridable
    assert sd.resolve_config("tiny")["guidance_scale"] == 7.5  # the same algorithm: CFG stays
    for trainer, bad in (("cyclegan-turbo", {"max_train_steps": 2.5}), ("pix2pix-turbo", {"learning_rate": "x"}),
                         ("piti", {"stage": "stage2", "max_steps": 2.5})):
        with pytest.raises(methods.InputError, match="is not a valid"):
            methods.get(trainer).resolve_train_config("tiny", bad)
    assert methods.get("piti").resolve_train_config("tiny", {"stage": "stage2", "max_steps": "3"})["max_steps"] == 3


def test_train_refuses_bad_options_before_loading(tmp_path, capsys):
    rc, _, err = _main(capsys, "train", "cyclegan-turbo", "--task", "sample-unpaired", "--out", str(tmp_path / "c"),
                       "--set", "cyclegan-turbo.max_train_steps=2.5")
    assert rc == 2 and "max_train_steps=2.5" in err and not (tmp_path / "c").exists()
    rc, _, err = _main(capsys, "train", "cyclegan-turbo", "--task", "sample-unpaired", "--out", str(tmp_path / "c"),
                       "--set", "cyclegan.max_train_steps=2")
    assert rc == 2 and "cyclegan" in err


# ---------------------------------------------------------------------------------------------------------------
# sweeps and row labels
# ---------------------------------------------------------------------------------------------------------------
def test_set_values_parse_as_literals_and_commas_sweep():
    assert parse_overrides(["sdedit.strength=0.3,0.5,0.7"]) == {"sdedit": {"strength": [0.3, 0.5, 0.7]}}
    assert isinstance(parse_overrides(["a.b=1,2"])["a"]["b"], Sweep)
    assert parse_overrides(["a.b=(1, 2)", "a.c=x", "a.d=True"]) == {"a": {"b": (1, 2), "c": "x", "d": True}}


def test_labels_name_every_option_that_differs_from_the_preset_default():
    cfg = RunConfig(methods=["sdedit", "identity"],
                    overrides={"sdedit": {"strength": Sweep([0.3, 0.5]), "guidance_scale": 7.5}})
    labels = [v.label for v in resolve_variants(cfg, methods)]
    assert labels == ["sdedit[strength=0.3]", "sdedit", "identity"]  # a default value is the bare paper name
    cfg = RunConfig(methods=["sdedit"], preset="tiny-turbo", overrides={"sdedit": {"num_inference_steps": 2}})
    assert [v.label for v in resolve_variants(cfg, methods)] == ["sdedit"]  # the preset's default, not the paper's


def _outputs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "outputs").rglob("*.png"))}


def test_three_value_sweep_gives_three_rows_sharing_inputs_and_cache(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc, _, err = _main(capsys, *FAST, "--out", str(out), "--set", "sdedit.num_inference_steps=6")
    assert rc == 0, err
    first = {p: p.stat().st_mtime_ns for p in (out / "outputs").rglob("*.png")}
    inputs = {p: p.stat().st_mtime_ns for p in (out / "inputs").rglob("*.png")}
    rc, _, err = _main(capsys, *FAST, "--out", str(out), "--set", "sdedit.num_inference_steps=6",
                       "sdedit.strength=0.3,0.5,0.7")
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    rows = ["sdedit[strength=0.3,num_inference_steps=6]", "sdedit[num_inference_steps=6]",
            "sdedit[strength=0.7,num_inference_steps=6]"]
    assert list(manifest["methods"]) == [rows[1], rows[0], rows[2]]  # the first run's row, then the new ones
    for row in rows:
        assert manifest["methods"][row]["method"] == "sdedit"
        assert len(list((out / "outputs" / row / "test-harness").glob("*.png"))) == 2
    assert {p: p.stat().st_mtime_ns for p in first} == first  # the 0.5 variant came from the cache
    assert {p: p.stat().st_mtime_ns for p in (out / "inputs").rglob("*.png")} == inputs
    outs = _outputs(out)
    assert len({outs[f"outputs/{r}/test-harness/s0.png"] for r in rows}) == 3


@pytest.mark.slow
def test_sweep_rows_reach_the_tables_and_the_summary(tmp_path):
    res = run(RunConfig(methods=["identity", "sdedit"], tasks=["sample-edit"], out=tmp_path / "r", max_samples=1,
                        quiet=True, overrides={"sdedit": {"num_inference_steps": 2, "strength": [0.5, 1.0]}}),
              registry=methods)
    summary = res.summary()
    rows = set(summary.index.get_level_values("method"))
    assert rows == {"identity", "sdedit[num_inference_steps=2]", "sdedit[strength=1,num_inference_steps=2]"}
    md = res.report.read_text().replace("\\_", "_").replace("\\[", "[").replace("\\]", "]")  # Markdown-escaped
    assert "sdedit[strength=1,num_inference_steps=2]" in md
    html = res._repr_html_()
    assert "sdedit[strength=1,num_inference_steps=2]" in html and "<table" in html and "data:image/png" in html
    assert load_run(res.run_dir).n_outputs == res.n_outputs == 3


# ---------------------------------------------------------------------------------------------------------------
# run files, --print-config, rerun
# ---------------------------------------------------------------------------------------------------------------
def test_figures_key_of_a_run_file_and_the_report_flag(tmp_path, capsys):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"methods: [identity]\ntasks: [test-harness]\nquiet: true\nfigures: png,pdf\n"
                        f"out: {tmp_path / 'r'}\n")
    rc, _, err = _main(capsys, "--config", str(run_file))
    assert rc == 0, err
    figs = tmp_path / "r" / "figures"
    assert {p.suffix for p in figs.iterdir() if p.is_file()} == {".png", ".pdf"}  # (+ the report's thumbs/)
    assert (figs / "grid_test-harness.pdf").is_file()
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["run_config"]["figures"] == ["png", "pdf"]
    rc, _, err = _main(capsys, "report", str(tmp_path / "r"))  # the run's own formats by default
    assert rc == 0 and (figs / "grid_test-harness.pdf").is_file(), err
    rc, _, err = _main(capsys, "report", str(tmp_path / "r"), "--figures", "png")
    assert rc == 0 and {p.suffix for p in figs.iterdir() if p.is_file()} == {".png"}, err
    rc, _, err = _main(capsys, "report", str(tmp_path / "r"), "--figures", "png,eps")
    assert rc == 2 and "unknown figure format(s) eps" in err


def test_print_config_is_a_run_file_that_round_trips(tmp_path, capsys):
    out = tmp_path / "a"
    rc, printed, err = _main(capsys, *FAST, "--out", str(out), "--set", "sdedit.num_inference_steps=4",
                             "sdedit.strength=0.5,0.75", "--print-config")
    assert rc == 0 and not out.exists(), err
    run_file = tmp_path / "run.yaml"
    run_file.write_text(printed)
    assert "guidance_scale: 7.5" in printed and "strength: [0.5, 0.75]" in printed  # fully resolved
    rc, again, _ = _main(capsys, "--config", str(run_file), "--print-config")
    assert rc == 0 and again == printed
    rc, _, err = _main(capsys, *FAST, "--out", str(tmp_path / "flags"), "--set", "sdedit.num_inference_steps=4",
                       "sdedit.strength=0.5,0.75")
    assert rc == 0, err
    rc, _, err = _main(capsys, "--config", str(run_file))
    assert rc == 0, err
    a = json.loads((out / "manifest.json").read_text())["methods"]
    b = json.loads((tmp_path / "flags" / "manifest.json").read_text())["methods"]
    assert {k: v["config"] for k, v in a.items()} == {k: v["config"] for k, v in b.items()} and len(a) == 2
    # flags override the file
    rc, printed, _ = _main(capsys, "--config", str(run_file), "--seed", "7", "--set", "sdedit.strength=0.6",
                           "--print-config")
    assert "seed: 7" in printed and "strength: 0.6" in printed and rc == 0


def test_bad_run_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [sdedit\n")
    rc, _, err = _main(capsys, "--config", str(bad))
    assert rc == 2 and "not valid YAML" in err
    bad.write_text("methods: [sdedit]\nbatchsize: 2\n")
    rc, _, err = _main(capsys, "--config", str(bad))
    assert rc == 2 and "unknown run-file key(s) batchsize" in err
    rc, _, err = _main(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "cannot read the run file" in err


def test_rerun_replays_byte_identical_outputs(tmp_path, capsys):
    src = tmp_path / "src"
    rc, _, err = _main(capsys, *FAST, "--out", str(src), "--set", "sdedit.num_inference_steps=4", "--seed", "5")
    assert rc == 0, err
    rc, _, err = _main(capsys, "rerun", str(src), "--out", str(tmp_path / "again"), "--quiet")
    assert rc == 0, err
    a, b = _outputs(src), _outputs(tmp_path / "again")
    assert len(a) == 2 and a == b
    assert rerun(src, registry=methods, out=tmp_path / "lib", quiet=True).n_outputs == 2
    assert _outputs(tmp_path / "lib") == a
    rc, _, err = _main(capsys, "rerun", str(tmp_path / "nothing"))
    assert rc == 2 and "not a run directory" in err


def test_run_file_dump_keeps_sweeps_as_lists():
    text = dump_run_file(RunConfig(methods=["sdedit"], overrides={"sdedit": {"strength": Sweep([0.3, 0.5])}})
                         .to_dict())
    assert "strength: [0.3, 0.5]" in text


def test_weights_provenance_is_a_value_not_a_string_test():
    from eval.vocab import WeightsProvenance

    turbo = methods.get("cyclegan-turbo")
    assert turbo.weights_provenance(turbo.card.weights_for("paper")).kind == "untrained"  # no checkpoint yet
    assert turbo.weights_provenance("tiny:sd-turbo").kind == "random"
    official = next(p for p in turbo.card.weights if p not in ("paper", "tiny"))
    assert turbo.weights_provenance(turbo.card.weights_for(official)).kind == "converted-official"
    assert methods.get("identity").weights_provenance("none") == WeightsProvenance("none", "none")
    assert methods.get("piti").weights_provenance("/models/piti/base_mask.pt").kind == "converted-official"
    prov = methods.get("sdedit").weights_provenance("tiny:sd-1.4")
    assert prov.kind == "random" and not prov.comparable and prov.id.startswith("tiny:sd-1.4")
    with pytest.raises(ValueError):
        WeightsProvenance("made-up", "x")


def test_a_task_folder_without_a_layout_fails_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = _main(capsys, "--methods", "identity", "--tasks", str(tmp_path / "empty"), "--out",
                       str(tmp_path / "r"))
    assert rc == 2 and str(tmp_path / "empty") in err and not (tmp_path / "r").exists()
    rc, _, err = _main(capsys, "--methods", "identity", "--tasks", "sample-edti", "--out", str(tmp_path / "r"))
    assert rc == 2 and "sample-edit" in err and not (tmp_path / "r").exists()
