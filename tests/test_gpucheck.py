"""`benchmark.py gpucheck` runs end to end on CPU with the tiny presets (the same code path as on a GPU)."""

from __future__ import annotations

import json

import pytest

import benchmark


@pytest.mark.slow
def test_gpucheck_runs_end_to_end_on_cpu_tiny(tmp_path, capsys):
    rc = benchmark.main(["gpucheck", "--out", str(tmp_path), "--device", "cpu", "--preset", "tiny",
                         "--dtypes", "float32,bfloat16", "--resolution", "64", "--threads", "1",
                         # compile is measured on its own (tests/test_speed_options.py): it compiles for minutes
                         "--speed-options", "channels_last,attention=classic,vae_fp16_fallback,cpu_offload"])
    assert rc == 0
    rec = json.loads((tmp_path / "gpucheck" / "gpucheck.json").read_text())
    md = (tmp_path / "gpucheck" / "gpucheck.md").read_text()
    assert rec["sanity"]["device"] == "cpu" and rec["sanity"]["torch"]
    import methods

    assert {(r["method"], r["dtype"]) for r in rec["rows"]} == {(m, d) for m in methods.list()
                                                               for d in ("float32", "bfloat16")}
    for r in rec["rows"]:
        assert "error" not in r, r
        assert r["latency_s"] > 0 and r["peak_mem_gb"] > 0 and r["finite"] and r["weights"] in ("random", "none")
    speed = {(r["method"], r["option"]): r for r in rec["speed"]}
    assert set(speed) == {("pix2pix-turbo", o) for o in ("default", "channels_last", "attention=classic",
                                                        "cpu_offload")} | {("sdedit", "default"),
                                                                           ("sdedit", "vae_fp16_fallback")}
    for (m, o), r in speed.items():
        assert "error" not in r, r
        # float32 on CPU: the options that only change kernels/layout/placement keep the output to rounding
        assert r["max_abs_diff_vs_default"] <= (1e-3 if o in ("channels_last", "attention=classic", "compile")
                                                else 0.0), (m, o, r["max_abs_diff_vs_default"])
    assert rec["train"]["peak_mem_gb"] > 0 and "error" not in rec["train"]
    assert "| pix2pix-turbo | bfloat16 |" in md and "random" in md and "Training step" in md
    assert "gpucheck" in capsys.readouterr().out


def test_gpucheck_refuses_a_missing_gpu_before_loading(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert benchmark.main(["gpucheck", "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err.lower()
    assert not (tmp_path / "gpucheck").exists()
