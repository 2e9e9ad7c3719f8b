"""Tests of `reports`: statistics, tables, figures and the report pages, on a synthetic run directory.

The fixture writes a run directory in the runner's format (manifest, outputs + sidecars, inputs with
condition/target companions, failures, per-image and distribution metrics with NaNs, metric_info, perf) with
three methods over three task kinds, one of which fails entirely on one task.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import reports
from reports.aggregate import MEMORY, SPEED, aggregate_per_image, bootstrap_ci, load_run, summarize_run
from reports.stats import bca_ci, paired_comparisons, wins_matrix
from reports.stats import group_rng as stats_rng
from reports.tables import RANDOM_NOTE, build_main_tables, latex_escape, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[1]

TASKS = {
    "horse2zebra": {"kind": "unpaired", "n_samples": 4, "description": "horse -> zebra"},
    "edges2shoes": {"kind": "paired", "n_samples": 3, "description": "edges -> shoes"},
    "cat_edit": {"kind": "text-edit", "n_samples": 3, "description": "cat -> dog edits"},
}
METRICS = {
    "unpaired": ["dino_struct", "clip_score", "lpips"],
    "paired": ["lpips", "psnr", "ssim", "dino_struct"],
    "text-edit": ["clip_acc", "clip_dir", "dino_struct"],
}
METRIC_INFO = {
    "fid": {"direction": "lower", "range": [0, None], "preprocessing": "clean", "version": "1", "model": "inception"},
    "kid": {"direction": "lower", "range": [None, None], "preprocessing": "clean", "version": "1", "model": "inc"},
    "dino_struct": {"direction": "lower", "range": [0, 4], "preprocessing": "splice", "version": "1", "model": "dino"},
    "clip_score": {"direction": "higher", "range": [0, 100], "preprocessing": "224", "version": "1", "model": "clip"},
    "clip_dir": {"direction": "higher", "range": [-1, 1], "preprocessing": "224", "version": "1", "model": "clip"},
    "clip_acc": {"direction": "higher", "range": [0, 1], "preprocessing": "224", "version": "1", "model": "clip"},
    "lpips": {"direction": "lower", "range": [0, 1], "preprocessing": "[-1,1]", "version": "1", "model": "alex"},
    "psnr": {"direction": "higher", "range": [0, None], "preprocessing": "[0,1]", "version": "1", "model": ""},
    "ssim": {"direction": "higher", "range": [0, 1], "preprocessing": "[0,1]", "version": "1", "model": ""},
}


def _png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_run(root: Path, *, random_weights: bool = True, metrics: bool = True, perf: bool = True) -> Path:
    """A synthetic run directory: identity (real), sdedit (random unless all real), pix2pix-zero (fails to load
    on cat_edit, random unless all real); one translate failure; NaNs in per-image metrics."""
    run = root / "runs" / "demo"
    label = "random" if random_weights else "real"
    methods = {
        "identity": {"config": {}, "weights": "-", "weights_label": "real", "preset": "paper", "reference": True},
        "sdedit": {"config": {"strength": 0.5}, "weights": "tiny:sd", "weights_label": label, "preset": "tiny"},
        "pix2pix_zero": {"config": {"steps": 4}, "weights": "tiny:sd14", "weights_label": label, "preset": "tiny"},
    }
    manifest = {
        "name": "demo", "created": "2026-11-20T10:00:00Z", "git_sha": "abc1234", "device": "cpu", "seed": 0,
        "command": ["benchmark.py", "run", "--methods", "identity,sdedit,pix2pix_zero"],
        "versions": {"python": "3.11", "numpy": np.__version__}, "methods": methods, "tasks": TASKS,
    }
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rng = np.random.default_rng(0)
    per_image, dist = [], []
    for ti, (task, info) in enumerate(TASKS.items()):
        kind = info["kind"]
        for s in range(info["n_samples"]):
            sample = f"{s:04d}"
            _png(run / "inputs" / task / f"{sample}.png", 100 * ti + s)
            if kind == "paired":
                _png(run / "inputs" / task / f"{sample}.condition.png", 500 + s)
                _png(run / "inputs" / task / f"{sample}.target.png", 600 + s)
        if kind == "text-edit":
            (run / "inputs" / task / "prompts.json").write_text(json.dumps(
                {f"{s:04d}": {"src": f"a photo of cat {s}", "tgt": f"a photo of dog {s}"}
                 for s in range(info["n_samples"])}))
        for mi, method in enumerate(methods):
            w = methods[method]["weights_label"]
            if method == "pix2pix_zero" and task == "cat_edit":
                f = run / "failures" / method / task / "_load.json"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps({"method": method, "task": task, "sample": None, "phase": "load",
                                         "error": "WeightsNotFoundError: no weights for pix2pix_zero",
                                         "traceback": "Traceback (most recent call last):\n  boom <here>"}))
                continue
            for s in range(info["n_samples"]):
                sample = f"{s:04d}"
                if method == "sdedit" and task == "horse2zebra" and s == 3:
                    f = run / "failures" / method / task / f"{sample}.json"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(json.dumps({"method": method, "task": task, "sample": sample, "phase": "translate",
                                             "error": "RuntimeError: out of memory", "traceback": "Traceback: oom"}))
                    continue
                out = run / "outputs" / method / task / f"{sample}.png"
                _png(out, 1000 * mi + 100 * ti + s)
                out.with_suffix(".json").write_text(json.dumps({
                    "key": f"{method}-{task}-{sample}", "seconds": 0.1 * (mi + 1) + 0.01 * s,
                    "peak_mem_bytes": (mi + 1) * 300 * 2**20, "mem_kind": "cuda_allocated", "batch_size": 2,
                    "extras": {}}))
                for metric in METRICS[kind]:
                    v = float(rng.normal(0.5 + 0.1 * mi, 0.05))
                    if method == "identity" and metric == "dino_struct" and s == 0:
                        v = float("nan")  # undefined value: counted, not averaged
                    per_image.append([method, task, sample, metric, v, w])
            if kind == "unpaired":
                for metric, v in (("fid", 40.0 + 5 * mi), ("kid", 0.01 + 0.002 * mi)):
                    dist.append([method, task, metric, v, 3 if method == "sdedit" else 4, 10, w])
    if metrics:
        (run / "metrics").mkdir()
        pd.DataFrame(per_image, columns=["method", "task", "sample", "metric", "value", "weights"]).to_csv(
            run / "metrics" / "per_image.csv", index=False)
        pd.DataFrame(dist, columns=["method", "task", "metric", "value", "n_gen", "n_ref", "weights"]).to_csv(
            run / "metrics" / "distribution.csv", index=False)
        (run / "metrics" / "metric_info.json").write_text(json.dumps(METRIC_INFO))
    if perf:
        (run / "perf").mkdir()
        pd.DataFrame([
            ["identity", "paper", "cpu", 1, 0.001, 0.0002, 1000.0, 0, 0, 0.0, 0.01],
            ["sdedit", "tiny", "cpu", 2, 0.2, 0.02, 10.0, 2**30, 0, 0.0, 0.05],
        ], columns=["method", "preset", "device", "batch_size", "latency_median_s", "latency_iqr_s",
                    "throughput_img_s", "peak_mem_bytes", "network_calls", "network_time_s", "overhead"]).to_csv(
            run / "perf" / "perf.csv", index=False)
    return run


@pytest.fixture(scope="module")
def random_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("rand"))


@pytest.fixture(scope="module")
def random_report(random_run: Path) -> tuple[Path, Path]:
    return reports.write_report(random_run, n_boot=200)


# ----------------------------------------------------------------------------------------------- statistics
def test_bootstrap_ci_contains_mean_shrinks_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    small, big = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    lo, hi = bootstrap_ci(small, seed=3)
    assert lo < small.mean() < hi
    blo, bhi = bootstrap_ci(big, seed=3)
    assert blo < big.mean() < bhi
    assert (bhi - blo) < (hi - lo) / 4  # ~sqrt(100) = 10x narrower
    assert bootstrap_ci(small, seed=3) == (lo, hi)
    assert bootstrap_ci(small, seed=4) != (lo, hi)
    assert all(np.isnan(bootstrap_ci([1.0])))  # one value: no interval
    # NaNs are dropped before resampling.
    assert bootstrap_ci(np.append(small, np.nan), seed=3) == (lo, hi)


def test_nans_are_counted_not_averaged() -> None:
    df = pd.DataFrame({"method": "m", "task": "t", "sample": ["a", "b", "c", "d"], "metric": "lpips",
                       "value": [1.0, np.nan, 3.0, np.nan], "weights": "real"})
    row = aggregate_per_image(df, n_boot=100).iloc[0]
    assert row["mean"] == 2.0 and row["n"] == 2 and row["n_nan"] == 2
    assert row["ci_lo"] <= 2.0 <= row["ci_hi"]


def test_load_run_and_summary(random_run: Path) -> None:
    run = load_run(random_run)
    assert run.methods == ["identity", "sdedit", "pix2pix_zero"]  # manifest order
    assert run.tasks == list(TASKS)
    assert run.per_image["sample"].iloc[0] == "0000"  # ids stay strings
    assert set(run.failures["phase"]) == {"load", "translate"}
    s = summarize_run(run, n_boot=100)
    row = s[(s.method == "identity") & (s.task == "horse2zebra") & (s.metric == "dino_struct")].iloc[0]
    assert row["n"] == 3 and row["n_nan"] == 1 and row["weights"] == "real" and row["direction"] == "lower"
    sd = s[(s.method == "sdedit") & (s.task == "horse2zebra")]
    assert (sd["n_failed"] == 1).all() and (sd["weights"] == "random").all()
    speed = sd[sd.metric == SPEED].iloc[0]
    assert speed["n"] == 3 and speed["mean"] == pytest.approx(0.2 + 0.01)
    assert sd[sd.metric == MEMORY].iloc[0]["mean"] == 2 * 300 * 2**20
    fid = sd[sd.metric == "fid"].iloc[0]
    assert fid["n_gen"] == 3 and fid["n_ref"] == 10 and fid["source"] == "distribution"
    # Same seed, same summary (CIs are seeded per group).
    pd.testing.assert_frame_equal(s, summarize_run(run, n_boot=100))


# ----------------------------------------------------------------------------------------------- tables
def _best_cells(table: reports.Table, key: str) -> list[str]:
    j = [c.key for c in table.columns].index(key)
    return [label for label, cells in table.rows if cells[j].best]


def _paired_setup(spec: dict[str, tuple[float, float]], n: int = 12, task: str = "t", seed: int = 0
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A per-image frame of LPIPS values per method (mean, noise sd) on `n` shared samples, and its summary."""
    rng = np.random.default_rng(seed)
    rows = [[m, task, f"{i:02d}", "lpips", mu + sd * rng.standard_normal() + 0.001 * i, "real"]
            for m, (mu, sd) in spec.items() for i in range(n)]
    per_image = pd.DataFrame(rows, columns=["method", "task", "sample", "metric", "value", "weights"])
    s = aggregate_per_image(per_image, n_boot=200)
    s["kind"] = "paired"
    s["direction"] = s["metric"].map(reports.aggregate.metric_direction)
    return per_image, s


def test_best_in_column_respects_direction() -> None:
    rows, rng = [], np.random.default_rng(3)  # noise: no tied differences (Wilcoxon's fast exact path)
    for task in ("t", "day_2_night"):
        for m, lp, ps in (("a", 0.1, 20.0), ("b", 0.3, 30.0), ("c", 0.2, 25.0)):
            for metric, v in (("LPIPS", lp), ("psnr", ps)):
                noise = rng.random(12)
                rows += [[m, task, f"{i}", metric, v + 0.001 * i + 1e-4 * noise[i], "real"] for i in range(12)]
    per_image = pd.DataFrame(rows, columns=["method", "task", "sample", "metric", "value", "weights"])
    s = aggregate_per_image(per_image, n_boot=50)
    s["kind"] = "paired"
    s["direction"] = s["metric"].map(lambda m: reports.aggregate.metric_direction(m))  # built-in defaults
    paired = paired_comparisons(per_image, directions=dict(zip(s["metric"], s["direction"])), n_boot=50)
    (t,) = build_main_tables(s, paired=paired)
    for task in ("t", "day_2_night"):
        assert _best_cells(t, f"{task}/LPIPS") == ["a"]  # lower is better
        assert _best_cells(t, f"{task}/psnr") == ["b"]  # higher is better
    md = to_markdown(t)
    assert "LPIPS ↓" in md and "PSNR (dB) ↑" in md and "**0.106" in md and "**20.0" not in md
    assert "significantly better than the runner-up" in md  # the rule is stated
    tex = to_latex(t)  # two tasks of one kind: grouped header with cmidrules, task name escaped
    assert "\\multicolumn{2}{c}{day\\_2\\_night (N=12)}" in tex and "\\cmidrule(lr){4-5}" in tex
    # without a paired test nothing can be called significant: no bold at all
    (t0,) = build_main_tables(s)
    assert not any(c.best for _, cells in t0.rows for c in cells)


def test_significant_winner_bold_non_significant_not_ties_never() -> None:
    per_image, s = _paired_setup({"a": (0.10, 0.01), "b": (0.30, 0.01), "c": (0.50, 0.01)})
    paired = paired_comparisons(per_image, directions={"lpips": "lower"}, n_boot=200)
    (t,) = build_main_tables(s, paired=paired)
    assert _best_cells(t, "t/lpips") == ["a"]
    # a and b within noise of each other: the winner is not significantly better than the runner-up -> no bold
    per_image, s = _paired_setup({"a": (0.300, 0.05), "b": (0.301, 0.05), "c": (0.9, 0.01)})
    paired = paired_comparisons(per_image, directions={"lpips": "lower"}, n_boot=200)
    (t,) = build_main_tables(s, paired=paired)
    assert _best_cells(t, "t/lpips") == []
    # every value equal (e.g. CLIP 0 with a random CLIP): a tie, nothing bold
    per_image, s = _paired_setup({"a": (0.0, 0.0), "b": (0.0, 0.0), "c": (0.0, 0.0)})
    per_image["value"] = 0.0
    s = aggregate_per_image(per_image, n_boot=50)
    s["kind"], s["direction"] = "paired", "lower"
    paired = paired_comparisons(per_image, directions={"lpips": "lower"}, n_boot=50)
    (t,) = build_main_tables(s, paired=paired)
    assert _best_cells(t, "t/lpips") == [] and set(paired["test"]) == {"none"} and (paired["p_holm"] == 1).all()


def test_identity_is_a_reference_row_never_bold(random_run: Path) -> None:
    run = load_run(random_run)
    assert run.is_reference("identity") and not run.is_reference("sdedit")
    # identity is far best on lpips (a copy of the input), and still never bold
    per_image, s = _paired_setup({"identity": (0.0, 0.0), "a": (0.10, 0.01), "b": (0.40, 0.01)})
    paired = paired_comparisons(per_image, directions={"lpips": "lower"}, n_boot=100)
    (t,) = build_main_tables(s, paired=paired, references=["identity"])
    assert [r[0] for r in t.rows] == ["a", "b", "identity"] and t.references == ["identity"]
    assert _best_cells(t, "t/lpips") == ["a"]
    tex, md, html_ = to_latex(t), to_markdown(t), reports.to_html(t)
    body = tex.split("\\midrule")
    assert len(body) == 3 and body[2].lstrip().startswith("identity")  # below its own rule
    assert "| *reference* |" in md and '<tbody class="ref">' in html_
    tables = build_main_tables(summarize_run(run, n_boot=50), run)
    for table in tables:
        rows = dict(table.rows)
        assert table.references == ["identity"] and table.rows[-1][0] == "identity"
        assert not any(c.best for c in rows["identity"])


def test_paired_statistics_equal_scipy() -> None:
    from scipy import stats

    per_image, _ = _paired_setup({"a": (0.2, 0.05), "b": (0.25, 0.05), "c": (0.3, 0.05)}, n=15)
    acc = per_image[per_image.method != "c"].assign(metric="clip_acc")
    acc["value"] = np.random.default_rng(5).integers(0, 2, len(acc)).astype(float)  # binary: permutation test
    frame = pd.concat([per_image, acc], ignore_index=True)
    paired = paired_comparisons(frame, directions={"lpips": "lower", "clip_acc": "higher"}, n_boot=500, seed=1)
    again = paired_comparisons(frame, directions={"lpips": "lower", "clip_acc": "higher"}, n_boot=500, seed=1)
    pd.testing.assert_frame_equal(paired, again)  # seeded, deterministic
    lp = paired[paired.metric == "lpips"].set_index(["method_a", "method_b"])
    assert list(lp.index) == [("a", "b"), ("a", "c"), ("b", "c")]
    wide = per_image.pivot(index="sample", columns="method", values="value")
    raw = [stats.wilcoxon(wide[x], wide[y]).pvalue for x, y in lp.index]
    for (x, y), p in zip(lp.index, raw):
        row = lp.loc[(x, y)]
        assert row["test"] == "wilcoxon" and row["p"] == pytest.approx(p)
        assert row["diff"] == pytest.approx((wide[x] - wide[y]).mean())
        assert row["diff_lo"] < row["diff"] < row["diff_hi"] and row["ci_method"] == "BCa"
    # Holm: sorted p times (m - rank), made monotone, capped at 1
    order = np.argsort(raw)
    expect = np.minimum(1, np.maximum.accumulate([(3 - i) * raw[j] for i, j in enumerate(order)]))
    assert lp["p_holm"].to_numpy()[order] == pytest.approx(expect)
    ci = stats.bootstrap((wide["a"] - wide["b"],), np.mean, n_resamples=500, method="BCa",
                         rng=stats_rng(1, "t", "lpips", "a", "b")).confidence_interval
    assert (lp.loc[("a", "b"), "diff_lo"], lp.loc[("a", "b"), "diff_hi"]) == pytest.approx((ci.low, ci.high))
    ac = paired[paired.metric == "clip_acc"].iloc[0]
    assert ac["test"] == "permutation" and 0 < ac["p"] <= 1
    wins = wins_matrix(paired, ["a", "b", "c"])
    assert wins.loc["a", "a"] == "—" and wins.loc["a", "c"].count("/") == 2
    w, t_, l_ = map(int, wins.loc["a", "c"].split("/"))
    w2, t2, l2 = map(int, wins.loc["c", "a"].split("/"))
    assert (w, t_, l_) == (l2, t2, w2) and w + t_ + l_ == 1


def test_bca_intervals_with_percentile_fallback() -> None:
    x = np.random.default_rng(0).exponential(1.0, 30)
    lo, hi, how = bca_ci(x, n_boot=2000, seed=0)
    assert how == "BCa" and lo < x.mean() < hi
    assert bca_ci([2.0, 2.0, 2.0], seed=0) == (2.0, 2.0, "percentile")  # BCa undefined on all-equal values
    assert bca_ci([1.0], seed=0)[2] == "none"


def test_units_kid_scaled_and_fid_n_warning_row(random_run: Path) -> None:
    run = load_run(random_run)
    t = build_main_tables(summarize_run(run, n_boot=50), run)[0]
    labels = {c.metric: c for c in t.columns}
    assert labels["kid"].sub.startswith("×10³")
    kid = dict(t.rows)["identity"][[c.metric for c in t.columns].index("kid")]
    assert kid.mean_text == "10.0"  # 0.01 raw, shown x10^3
    # sdedit has 3 generated images, the others 4, all < 2048: a warning row under the table
    assert t.footer and t.footer[0][0].startswith("⚠")
    warn = t.footer[0][1][[c.metric for c in t.columns].index("fid")].text
    assert "3/10" in warn and "4/10" in warn and "differ" in warn and "<2048" in warn
    assert "⚠ N gen/ref" in to_markdown(t) and "(!) N gen/ref" in to_latex(t)


def test_memory_is_the_cuda_peak_and_dropped_on_cpu(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, perf=False)
    run = load_run(run_dir)
    t = build_main_tables(summarize_run(run, n_boot=50), run)[0]
    assert any(c.metric == MEMORY and c.sub == "GiB" or c.metric == MEMORY for c in t.columns)
    for side in run_dir.glob("outputs/*/*/*.json"):  # the same run measured on CPU: process RSS
        rec = json.loads(side.read_text())
        side.write_text(json.dumps({**rec, "mem_kind": "cpu_rss"}))
    run = load_run(run_dir)
    s = summarize_run(run, n_boot=50)
    assert MEMORY not in set(s["metric"])
    t = build_main_tables(s, run)[0]
    assert not any(c.metric == MEMORY for c in t.columns)
    assert any("not shown for CPU runs" in n for n in t.notes)


def test_warm_up_excluded_from_speed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, perf=False)
    side = run_dir / "outputs" / "identity" / "horse2zebra" / "0000.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "seconds": 100.0, "warmup": True}))
    s = summarize_run(load_run(run_dir), n_boot=50)
    row = s[(s.method == "identity") & (s.task == "horse2zebra") & (s.metric == SPEED)].iloc[0]
    assert row["mean"] < 1 and row["n"] == 3 and row["source"] == "sidecar"
    t = build_main_tables(s, load_run(run_dir))[0]
    assert any("excluding the first batch after each model load" in n for n in t.notes)


def test_markdown_one_row_per_method_and_latex_booktabs(random_report: tuple[Path, Path], random_run: Path) -> None:
    run = load_run(random_run)
    tables = build_main_tables(summarize_run(run, n_boot=50), run)
    assert [t.name for t in tables] == ["main_unpaired", "main_paired", "main_text-edit"]
    unpaired = tables[0]
    md = to_markdown(unpaired, heading=None).splitlines()
    body = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| Method")]
    # competing methods, then the reference block (identity), then the FID/KID image-count warning row
    assert [ln.split("|")[1].strip() for ln in body] == ["sdedit", "pix2pix\\_zero", "\\*reference\\*", "identity",
                                                          "⚠ N gen/ref"] or [
        ln.split("|")[1].strip() for ln in body] == ["sdedit", "pix2pix\\_zero", "*reference*", "identity",
                                                     "⚠ N gen/ref"]
    header = md[0]
    assert header.index("FID") < header.index("KID") < header.index("DINO-Struct") < header.index("s/img")
    # The paired table has no row for pix2pix_zero's missing task... but text-edit lists the failed method.
    text_edit = tables[2]
    assert [r[0] for r in text_edit.rows] == ["sdedit", "pix2pix_zero", "identity"]
    assert all(c.text == "—" for c in text_edit.rows[1][1][:-1]) and text_edit.rows[1][1][-1].text == "3"
    tex = to_latex(unpaired)
    for rule in ("\\toprule", "\\bottomrule"):
        assert tex.count(rule) == 1
    assert tex.count("\\midrule") == 3  # header | methods | reference | warning row
    assert "pix2pix\\_zero" in tex and "pix2pix_zero" not in tex.replace("pix2pix\\_zero", "")
    assert "$\\downarrow$" in tex and "$\\pm$" in tex and "\\begin{table*}" in tex
    assert latex_escape("a_b & 50% #1 {x}") == "a\\_b \\& 50\\% \\#1 \\{x\\}"
    tables_dir = random_run / "tables"
    for ext in ("csv", "md", "tex"):
        assert (tables_dir / f"main_unpaired.{ext}").is_file()
    raw = pd.read_csv(tables_dir / "main_unpaired.csv")
    assert {"mean", "ci_lo", "ci_hi", "n", "n_nan", "n_failed", "weights"} <= set(raw.columns)
    assert (tables_dir / "perf.md").is_file() and (tables_dir / "summary.csv").is_file()


def test_random_weights_label(tmp_path: Path, random_report: tuple[Path, Path], random_run: Path) -> None:
    md_r = random_report[0].read_text()
    html_r = random_report[1].read_text()
    tex_r = (random_run / "tables" / "main_unpaired.tex").read_text()
    assert RANDOM_NOTE in md_r and "†" in md_r and 'class="banner"' in html_r
    assert "$^\\dagger$" in tex_r and "random weights" in tex_r
    assert "random weights" in (random_run / "tables" / "main_unpaired.md").read_text()
    # identity is real: its cells carry no dagger; sdedit's do.
    run = load_run(random_run)
    t = build_main_tables(summarize_run(run, n_boot=50), run)[0]
    rows = dict(t.rows)
    metric_cols = [j for j, c in enumerate(t.columns) if c.key != "failed"]
    assert not any(c.random for c in rows["identity"])
    assert all(rows["sdedit"][j].random for j in metric_cols if rows["sdedit"][j].text != "—")

    real_run = make_run(tmp_path, random_weights=False)
    md, html_path = reports.write_report(real_run, n_boot=50)
    for text in (md.read_text(), html_path.read_text(), *(p.read_text() for p in (real_run / "tables").glob("*.*"))):
        assert "random weights" not in text.lower() and "†" not in text and "dagger" not in text


# ----------------------------------------------------------------------------------------------- figures, report
@pytest.mark.slow
def test_figures_are_png_by_default_and_pdf_on_request(random_report: tuple[Path, Path], random_run: Path) -> None:
    fig_dir = random_run / "figures"
    stems = {"grid_horse2zebra", "grid_edges2shoes", "grid_cat_edit", "tradeoff_clip_dino", "latency", "memory",
             "perf"}
    assert {p.name for p in fig_dir.iterdir() if p.is_file()} == {f"{s}.png" for s in stems}  # the default: PNG only
    for stem in stems:
        assert (fig_dir / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
    assert "[PDF]" not in random_report[0].read_text() and "PNG of each figure" in random_report[0].read_text()
    md, _ = reports.write_report(random_run, n_boot=200, figure_formats=("png", "pdf"))
    for stem in stems:
        assert (fig_dir / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem
    assert "([PDF](figures/perf.pdf))" in md.read_text() and "PNG and PDF of each figure" in md.read_text()
    with pytest.raises(ValueError, match="png"):
        reports.write_report(random_run, n_boot=200, figure_formats=("pdf",))
    reports.write_report(random_run, n_boot=200)  # back to the default: no stale PDF stays behind
    assert {p.name for p in fig_dir.iterdir() if p.is_file()} == {f"{s}.png" for s in stems}
    # Figure titles carry the random-weights note (and only when some plotted method is random).
    run = load_run(random_run)
    summary = summarize_run(run, n_boot=50)
    assert RANDOM_NOTE in reports.image_grid(run, "cat_edit").texts[0].get_text()
    assert RANDOM_NOTE in reports.tradeoff_scatter(summary, run.methods).axes[0].get_title()
    only_identity = summary[summary.method == "identity"]
    assert RANDOM_NOTE not in reports.bar_chart(only_identity, SPEED).axes[0].get_title()
    # The paired grid has input, condition, target and the 3 methods: wider than the unpaired one (no companions).
    w_paired = Image.open(fig_dir / "grid_edges2shoes.png").size[0]
    w_unpaired = Image.open(fig_dir / "grid_horse2zebra.png").size[0]
    assert w_paired > w_unpaired


def test_html_thumbnails_linked_and_lists_failures(random_report: tuple[Path, Path], random_run: Path) -> None:
    text = random_report[1].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "<script" not in text
    srcs = re.findall(r"""<img [^>]*src="([^"]*)\"""", text)
    links = re.findall(r"""<a href="(figures/[^"]*)"><img""", text)
    # every figure is a downscaled JPEG thumbnail linked to its full-size PNG; nothing inlined
    assert srcs and all(s.startswith("figures/thumbs/") and s.endswith(".jpg") for s in srcs)
    assert len(links) == len(srcs) and all((random_run / u).is_file() and u.endswith(".png") for u in links)
    for src in srcs:
        with Image.open(random_run / src) as im:
            assert im.format == "JPEG" and im.width <= reports.figures.THUMB_WIDTH
    assert "data:" not in text
    assert "WeightsNotFoundError: no weights for pix2pix_zero" in text and "RuntimeError: out of memory" in text
    assert "<details><summary>traceback</summary>" in text and "boom &lt;here&gt;" in text
    md = random_report[0].read_text()
    assert "Failures (2)" in md and "out of memory" in md and "abc1234" in md and "2026-11-20T10:00:00Z" in md


def test_report_reads_like_a_results_section(random_report: tuple[Path, Path], random_run: Path) -> None:
    md, html_ = (p.read_text() for p in random_report)
    for text, h2 in ((md, "## {}"), (html_, '<h2 id="{}">')):  # contents, headline tables, status, folded details
        pos = [text.index(x) for x in ("Contents", h2.format("Results" if text is md else "results"),
                                       "Unpaired translation", h2.format("Run status" if text is md else "status"),
                                       "Metric definitions</summary>")]
        assert pos == sorted(pos), pos
        assert "Paired comparisons" in text and "Wins / ties / losses" in text
    for what in ("Metric definitions", "Failures (2)", "Configurations and provenance"):
        assert re.search(rf"<details[^>]*><summary>{re.escape(what)}", html_), what
    assert 'href="#paired"' in html_ and 'id="paired"' in html_
    assert (random_run / "tables" / "paired.csv").is_file() and (random_run / "tables" / "wins.csv").is_file()
    total = len(html_.encode()) + sum(p.stat().st_size for p in (random_run / "figures" / "thumbs").iterdir())
    assert total < 2 * 2**20  # the page and its thumbnails


def test_grids_show_prompts_and_no_duplicated_condition(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, perf=False)
    run = load_run(run_dir)
    texts = [t.get_text() for t in reports.image_grid(run, "cat_edit").axes[0].texts]
    assert any("a photo of cat 1" in t and "→" in t and "a photo of dog 1" in t for t in texts), texts
    heads = [t.get_text() for t in reports.image_grid(run, "edges2shoes").axes[0].texts]
    assert "condition" in heads  # a real condition (an edge map, not the input) is shown
    for f in (run_dir / "inputs" / "edges2shoes").glob("*.condition.png"):  # condition == input: not repeated
        f.write_bytes(f.with_name(f.name.replace(".condition", "")).read_bytes())
    heads = [t.get_text() for t in reports.image_grid(load_run(run_dir), "edges2shoes").axes[0].texts]
    assert "condition" not in heads and "input" in heads and "target (GT)" in heads


def test_report_regeneration_is_idempotent(random_report: tuple[Path, Path], random_run: Path) -> None:
    def snapshot() -> dict[str, bytes]:
        files = {str(p.relative_to(random_run)): p.read_bytes() for d in ("tables", "figures")
                 for p in sorted((random_run / d).rglob("*")) if p.is_file()}
        return files | {p.name: p.read_bytes() for p in random_report}

    before = snapshot()
    assert reports.write_report(random_run, n_boot=200) == random_report
    assert snapshot() == before
    assert not list(random_run.rglob("*.tmp"))  # atomic writes leave no temp files


def test_partial_run_without_metrics_or_perf(tmp_path: Path) -> None:
    run = make_run(tmp_path, metrics=False, perf=False)
    md, html_path = reports.write_report(run, n_boot=50)
    text = md.read_text()
    assert "No metrics yet" in text and "s/img" in text and "Failures (2)" in text
    assert not (run / "figures" / "perf.png").exists() and not (run / "figures" / "tradeoff_clip_dino.png").exists()
    assert (run / "figures" / "grid_cat_edit.png").is_file()
    # An empty directory still gives a (nearly empty) report.
    empty = tmp_path / "empty"
    empty.mkdir()
    md2, _ = reports.write_report(empty)
    assert "No methods ran" in md2.read_text()


def test_import_reports_does_not_import_torch() -> None:
    code = "import sys, reports; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_tiny_values_keep_significant_digits() -> None:
    from reports.tables import _cell_decimals

    assert _cell_decimals(0.000055, 3) == 6 and _cell_decimals(0.9, 3) == 3 and _cell_decimals(0.0, 3) == 3


def test_circularity_note_names_the_optimised_features_and_the_held_out_metric(tmp_path: Path) -> None:
    run = make_run(tmp_path, perf=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["methods"]["sdedit"]["optimises"] = ["dino-vitb8/block11/keys", "clip:ViT-B-32/openai"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    info = json.loads((run / "metrics" / "metric_info.json").read_text())
    info["dino_struct"].update(encoder="dino", reads="dino-vitb8/block11/keys")
    info["dino_struct_v2"] = {**info["dino_struct"], "reads": "dinov2-vitb14/block11/keys"}
    info["clip_score"].update(encoder="clip", reads="clip:ViT-L-14/openai")
    (run / "metrics" / "metric_info.json").write_text(json.dumps(info))
    md, html_path = reports.write_report(run, n_boot=50, figures=False)
    text = md.read_text()
    assert "### Metric circularity" in text
    section = text.split("### Metric circularity")[1].split("##")[0]
    rows = [r for r in section.splitlines() if r.startswith("| sdedit")]
    # only the metric that reads an optimised feature is flagged, with its held-out counterpart
    assert len(rows) == 1 and "dino\\_struct " in rows[0] and "dino\\_struct\\_v2" in rows[0], rows
    assert "Metric circularity" in html_path.read_text()
    # a run without `optimises` has no such section
    md2, _ = reports.write_report(make_run(tmp_path / "plain", perf=False), n_boot=50, figures=False)
    assert "Metric circularity" not in md2.read_text()


def test_fid_small_and_unequal_n_caveats_reach_report_and_tables(random_report: tuple[Path, Path],
                                                                   random_run: Path) -> None:
    from reports.tables import distribution_caveats

    md = random_report[0].read_text()
    table_md = next((random_run / "tables").glob("main_unpaired*.md")).read_text()
    for text in (md, table_md):
        assert "fewer than 2048 images" in text  # the run's FIDs use 3-4 generated vs 10 reference images
        assert "image counts differ between methods" in text  # sdedit has 3, the others 4
    rows = pd.DataFrame({"method": ["a", "b"], "metric": ["fid", "fid"], "source": "distribution",
                         "n_gen": [5000.0, 5000.0], "n_ref": [10000.0, 10000.0]})
    notes = distribution_caveats("t", rows)
    assert len(notes) == 1 and "5000 generated vs 10000 reference" in notes[0] and "⚠" not in notes[0]
    rows["n_gen"] = [100.0, 100.0]
    assert any("fewer than 2048 images (N = 100)" in n for n in distribution_caveats("t", rows))


def test_method_section_lists_fixes_and_variants_and_marks_those_on(tmp_path: Path) -> None:
    run = make_run(tmp_path, perf=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["methods"]["pix2pix_zero"].update(
        paper="Zero-shot Image-to-Image Translation", fixes=["auto-correlation roll of 0 never drawn"],
        variants={"inversion_schedule=mirror": "exact mirror of the DDIM sampler (x_inv rel 0.50)",
                  "lambda_kl": "another weight"},
        variants_on=["inversion_schedule=mirror"])
    (run / "manifest.json").write_text(json.dumps(manifest))
    md, html_path = reports.write_report(run, n_boot=50, figures=False)
    text = md.read_text()
    section = text.split("## Methods")[1].split("\n## ")[0]
    assert "### pix2pix\\_zero" in section and "auto-correlation roll of 0 never drawn" in section
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in section.splitlines() if r.startswith("| ")
            and "variant" not in r.split("|")[1]}
    assert rows == {"inversion\\_schedule=mirror": "ON", "lambda\\_kl": "off"}, rows
    assert "### sdedit" not in section  # no card lists: no entry
    html = html_path.read_text()
    assert 'id="methods"' in html and "auto-correlation roll of 0 never drawn" in html
    md2, _ = reports.write_report(make_run(tmp_path / "plain", perf=False), n_boot=50, figures=False)
    assert "## Methods" not in md2.read_text()


# ----------------------------------------------------------------------------------------------- LaTeX, browser
_LATEX_WRAPPER = r"""\documentclass[twocolumn]{article}
\usepackage{booktabs,graphicx}
\begin{document}
\input{table.tex}
\typeout{IZOO natural=\the\wd\izootable\space column=\the\columnwidth\space text=\the\textwidth}
\end{document}
"""


def latex_widths(tex: str, workdir: Path) -> dict[str, float]:
    """Compile one emitted table in a two-column article with pdflatex; the tabular's natural width, the column
    and text widths (pt), and the widest overfull box (0 when none)."""
    import shutil

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "table.tex").write_text(tex)
    (workdir / "doc.tex").write_text(_LATEX_WRAPPER)
    res = subprocess.run([shutil.which("pdflatex"), "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=workdir, capture_output=True, text=True, timeout=120)
    log = (workdir / "doc.log").read_text(errors="replace")
    assert res.returncode == 0, log[-3000:]
    m = re.search(r"IZOO natural=([\d.]+)pt column=([\d.]+)pt text=([\d.]+)pt", log)
    assert m, log[-2000:]
    over = [float(x) for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]
    return {"natural": float(m[1]), "column": float(m[2]), "text": float(m[3]), "overfull": max(over, default=0.0)}


@pytest.mark.slow
@pytest.mark.skipif(not __import__("shutil").which("pdflatex"), reason="pdflatex not installed")
def test_latex_tables_compile_and_fit_a_two_column_article(random_report: tuple[Path, Path], random_run: Path,
                                                            tmp_path: Path) -> None:
    texs = sorted((random_run / "tables").glob("*.tex"))
    assert len(texs) >= 4
    for tex in texs:
        text = tex.read_text()
        w = latex_widths(text, tmp_path / tex.stem)
        limit = w["text"] if "\\begin{table*}" in text else w["column"]
        # the emitted code scales the tabular down to the float's width when it is wider, never up
        assert w["overfull"] == 0.0, (tex.name, w)
        assert min(w["natural"], limit) <= limit
        if w["natural"] > limit:
            assert w["natural"] < 1.6 * limit, (tex.name, w)  # still readable after scaling
    # optional columns: without CI, speed and memory a table is narrower
    run = load_run(random_run)
    t = build_main_tables(summarize_run(run, n_boot=50), run)[1]
    full = latex_widths(to_latex(t), tmp_path / "full")["natural"]
    slim = latex_widths(to_latex(t, ci=False, speed=False, memory=False), tmp_path / "slim")["natural"]
    assert slim < full


def _browser() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot_report(html_path: Path, png: Path, *, height: int = 4000) -> str:
    """Render `html_path` in headless Chromium into `png` (1280 px wide); returns the browser's log, in which every
    page console message appears as a CONSOLE line."""
    browser = _browser()
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--enable-logging=stderr", "--v=0", f"--screenshot={png}", f"--window-size=1280,{height}",
                          html_path.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_report_renders_in_headless_chromium(random_report: tuple[Path, Path], random_run: Path,
                                             tmp_path: Path) -> None:
    html_path = random_report[1]
    text = html_path.read_text()
    for url in re.findall(r"""(?:src|href)="([^"#][^"]*)\"""", text):  # every local resource exists
        assert (random_run / url).is_file(), url
    log = screenshot_report(html_path, tmp_path / "shot.png")
    assert not [ln for ln in log.splitlines() if "CONSOLE" in ln], log
    with Image.open(tmp_path / "shot.png") as im:
        a = np.asarray(im.convert("L"))
    assert a.shape[1] == 1280 and (a < 128).mean() > 0.005  # the page drew text and figures, not a blank page


def test_perf_table_drops_cpu_memory_and_identity_card_is_a_reference(random_run: Path) -> None:
    from methods.identity import Identity
    from methods.sdedit import SDEdit

    assert Identity.card.reference and not SDEdit.card.reference
    perf = load_run(random_run).perf  # both rows were measured on CPU
    t = reports.build_perf_table(perf)
    j = [c.key for c in t.columns].index("memory")
    assert all(cells[j].text == "—" for _, cells in t.rows) and any("not shown for CPU" in n for n in t.notes)
