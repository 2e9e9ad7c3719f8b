"""The command line as a user types it: the default form, errors that name the fix, report and perf."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "benchmark.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_method_and_task_fail_with_the_fix():
    r = _cli("--methods", "sdeditt", "--no-eval")
    assert r.returncode == 2 and "Did you mean 'sdedit'" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--methods", "identity", "--tasks", "sample-edti", "--no-eval")
    assert r.returncode == 2 and "sample-edit" in r.stderr and "Traceback" not in r.stderr


def test_missing_weights_are_reported_with_the_fix(tmp_path):
    r = _cli("--methods", "sdedit", "--tasks", "sample-edit", "--weights", str(tmp_path / "nope"), "--no-eval",
             "--quiet", "--out", str(tmp_path / "run"))
    assert r.returncode == 1, r.stdout + r.stderr  # nothing could be produced
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    fail = json.loads(next((tmp_path / "run" / "failures").rglob("*.json")).read_text())
    assert fail["phase"] == "load" and "does not exist" in fail["error"]


@pytest.mark.slow
def test_default_form_runs_evaluates_reports_and_report_regenerates(tmp_path):
    out = tmp_path / "run"
    r = _cli("--methods", "identity", "sdedit", "--tasks", "sample-edit", "sample-paired", "--max-samples", "2",
             "--out", str(out), "--quiet", "--set", "sdedit.num_inference_steps=4")
    assert r.returncode == 0, r.stderr
    assert "report:" in r.stdout and (out / "report.html").exists() and (out / "report.md").exists()
    sd = "sdedit[num_inference_steps=4]"  # a non-default option shows in the row label
    for m in ("identity", sd):
        for t in ("sample-edit", "sample-paired"):
            assert len(list((out / "outputs" / m / t).glob("*.png"))) == 2
    per = pd.read_csv(out / "metrics" / "per_image.csv")
    ident = per[(per.method == "identity") & (per.metric == "lpips") & (per.task == "sample-edit")]
    assert len(ident) == 2 and (ident.value.abs() < 1e-6).all()  # LPIPS of the input to itself is 0
    dist = pd.read_csv(out / "metrics" / "distribution.csv")
    assert set(dist.metric) == {"fid", "kid"} and (dist.n_ref == 8).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["methods"][sd]["config"]["num_inference_steps"] == 4
    assert manifest["methods"][sd]["method"] == "sdedit"
    stamps = {p: p.stat().st_mtime_ns for p in (out / "outputs").rglob("*")}
    md = (out / "report.md").read_text()
    plain = md.replace("\\_", "_").replace("\\[", "[").replace("\\]", "]")  # Markdown-escaped row labels
    assert sd in plain and "identity" in md and "random weights" in md.lower()
    (out / "report.md").unlink()
    r = _cli("report", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "report.md").read_text() == md  # rebuilt from files, same bytes
    assert {p: p.stat().st_mtime_ns for p in (out / "outputs").rglob("*")} == stamps


@pytest.mark.slow
def test_perf_prints_overhead_table_and_writes_csv(tmp_path):
    r = _cli("perf", "--methods", "identity", "sdedit", "--repeats", "2", "--out", str(tmp_path),
             "--set", "sdedit.num_inference_steps=4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "overhead" in r.stdout and ", 1 threads" in r.stdout
    df = pd.read_csv(tmp_path / "perf" / "perf.csv").set_index("method")
    assert df.loc["identity", "network_calls"] == "none" and pd.isna(df.loc["identity", "overhead"])
    sd = df.loc["sdedit[num_inference_steps=4]"]  # a variant is its own row
    calls = dict(part.split(" x") for part in sd["network_calls"].split(", "))
    # 4 PNDM steps at strength 0.5: the last half of PNDM's 5 timesteps (PLMS repeats its first one); CFG batched
    assert calls["vae.encoder"] == "1" and calls["vae.decoder"] == "1" and calls["unet"] in {"2", "3"}
    assert sd["overhead"] >= 1.0 and sd["latency_median_s"] > 0 and sd["peak_mem_bytes"] > 0
