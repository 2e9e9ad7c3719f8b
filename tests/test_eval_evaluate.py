"""evaluate_per_image / evaluate_distribution: the long table, NaN handling, per-sample failures, on-disk caching."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from eval.evaluate import COLUMNS, evaluate_distribution, evaluate_per_image
from eval.metrics import PerImageMetric


def _img(seed: int, h: int = 64, w: int = 64) -> torch.Tensor:
    small = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")[0].clamp(0, 1)


def _save(t: torch.Tensor, path) -> str:
    Image.fromarray((t.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).save(path)
    return str(path)


@pytest.fixture()
def records(tmp_path):
    inputs = [_img(i) for i in range(4)]
    out_path = _save(_img(10), tmp_path / "out0.png")
    return [
        {"method": "m1", "task": "t", "sample": "0", "output": out_path, "input": inputs[0],
         "src_prompt": "a cat", "tgt_prompt": "a dog"},
        {"method": "m1", "task": "t", "sample": "1", "output": _img(11), "input": inputs[1],
         "src_prompt": "a cat", "tgt_prompt": "a dog"},
        {"method": "identity", "task": "t", "sample": "2", "output": inputs[2], "input": inputs[2],
         "src_prompt": "a cat"},  # no target prompt
        {"method": "m1", "task": "t", "sample": "3", "output": _img(13, 64, 128), "input": inputs[3],
         "src_prompt": "a cat", "tgt_prompt": "a dog"},  # wrong aspect for DINO-struct, another size for batching
    ]


METRICS = ["dino_struct", "clip_score", "lpips", "psnr"]


def test_long_table_values_nans_and_notes(records, tmp_path):
    df = evaluate_per_image(records, METRICS, preset="tiny", cache=tmp_path / "cache")
    assert list(df.columns) == list(COLUMNS) and len(df) == len(records) * len(METRICS)
    assert df["value"].dtype == np.float64
    v = df.set_index(["sample", "metric"])["value"]
    note = df.set_index(["sample", "metric"])["note"]
    assert v[("2", "dino_struct")] == 0 and abs(v[("2", "lpips")]) < 1e-6  # identity output
    assert math.isnan(v[("2", "clip_score")]) and "tgt_prompt" in note[("2", "clip_score")]
    assert df[df.metric == "psnr"]["value"].isna().all()  # no targets in an unpaired task
    assert math.isnan(v[("3", "dino_struct")]) and "aspect" in note[("3", "dino_struct")]  # one sample fails...
    learned = ["dino_struct", "clip_score", "lpips"]
    assert v.loc[["0", "1"], learned].notna().all() and not math.isnan(v[("3", "clip_score")])  # ...others do not
    assert math.isnan(v[("3", "lpips")]) and "same H x W" in note[("3", "lpips")]
    assert set(df[df.metric == "psnr"]["weights"]) == {"none"} and set(df[df.metric == "lpips"]["weights"]) == {
        "random"}
    assert df.attrs["metrics"]["dino_struct"]["direction"] == "lower"
    assert "block 11" in df.attrs["metrics"]["dino_struct"]["preprocessing"]
    # values equal a direct metric call (path outputs are loaded as [0,1] floats)
    from eval.metrics import get_metric

    direct = get_metric("lpips", preset="tiny")(records[1]["output"][None], inputs=records[1]["input"][None])
    assert v[("1", "lpips")] == pytest.approx(direct.item(), abs=1e-6)


def test_cached_values_are_reused_and_invalidated_by_options(records, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = evaluate_per_image(records, METRICS, preset="tiny", cache=cache)

    def boom(self, *args, **kwargs):
        raise RuntimeError("computed again")

    monkeypatch.setattr(PerImageMetric, "__call__", boom)
    again = evaluate_per_image(records, METRICS, preset="tiny", cache=cache)
    ok = first["note"] == ""
    pd.testing.assert_frame_equal(first[ok].reset_index(drop=True), again[ok].reset_index(drop=True))
    changed = evaluate_per_image(records, ["lpips"], preset="tiny", cache=cache,
                                 metric_options={"lpips": {"net": "vgg"}})
    assert changed["value"].isna().all() and changed["note"].str.contains("computed again").all()
    uncached = evaluate_per_image(records[:1], ["psnr"], preset="tiny", cache=False)
    assert math.isnan(uncached["value"].iloc[0])


def test_unloadable_sample_and_bad_records(records, tmp_path):
    bad = dict(records[0], sample="x", output=str(tmp_path / "missing.png"))
    df = evaluate_per_image([bad, records[1]], ["psnr", "lpips"], preset="tiny", cache=False)
    assert df[df["sample"] == "x"]["value"].isna().all()
    assert df[df["sample"] == "x"]["note"].str.contains("not loadable").all()
    assert df[(df["sample"] == "1") & (df.metric == "lpips")]["value"].notna().all()
    with pytest.raises(ValueError, match="lacks"):
        evaluate_per_image([{"method": "m", "task": "t", "output": records[1]["output"]}], ["psnr"], preset="tiny")
    with pytest.raises(ValueError, match="distribution metric"):
        evaluate_per_image(records, ["fid"], preset="tiny")


def test_evaluate_distribution_shares_features(tmp_path):
    gen = torch.stack([_img(i) for i in range(5)])
    ref = torch.stack([_img(100 + i) * 0.5 for i in range(6)])
    rows = evaluate_distribution(gen, ref, ["fid", "kid"], preset="tiny", cache=False,
                                 metric_options={"kid": {"seed": 3, "num_subsets": 10}})
    fid, kid = rows
    assert fid["metric"] == "fid" and kid["metric"] == "kid"
    assert (fid["n_gen"], fid["n_ref"], kid["n_gen"], kid["n_ref"]) == (5, 6, 5, 6)
    assert fid["value"] > 0 and kid["seed"] == 3 and fid["weights"] == "random"
    from eval.metrics import compute_fid

    assert compute_fid(gen, ref, preset="tiny", cache=False)["value"] == pytest.approx(fid["value"], abs=1e-9)
    with pytest.raises(ValueError, match="per-image metric"):
        evaluate_distribution(gen, ref, ["psnr"], preset="tiny")
