"""PIE-Bench: the mapping-file loader, the RLE edit masks, the download from a local archive, and the region
metrics against their definitions (PnPInversion evaluation/evaluate.py + evaluation/matrics_calculator.py)."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DataError, get_task
from datasets.pie_bench import download_pie_bench, load_pie_bench, mask_decode, mask_encode
from eval.metrics import get_metric

SIZE = 64
#: id -> (edit type, image sub-folder, original prompt, editing prompt, edit rectangle rows / cols)
ENTRIES = {
    "000000000000": ("0", "0_random_140", "a cat [sitting] on a mat", "a cat [standing] on a mat", (8, 40, 10, 30)),
    "000000000001": ("0", "0_random_140", "a red car", "a [blue] car", (20, 50, 5, 60)),
    "111000000000": ("1", "1_change_object_80/1_artificial/1_animal", "a [dog] in the park",
                     "a [cat] in the park", (0, 64, 0, 64)),
    "911000000000": ("9", "9_change_style_80/1_artificial/1_animal", "a photo of a house",
                     "a [watercolor] painting of a house", (30, 31, 30, 31)),
}


def make_pie_bench(root, entries=ENTRIES):
    """A PIE-Bench-layout folder: annotation_images/<type folder>/<id>.jpg + mapping_file.json with RLE masks."""
    rng = np.random.default_rng(0)
    mapping = {}
    for key, (etype, folder, src, tgt, (r0, r1, c0, c1)) in entries.items():
        img_dir = root / "annotation_images" / folder
        img_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(img_dir / f"{key}.jpg")
        raw = np.zeros((SIZE, SIZE), np.uint8)
        raw[r0:r1, c0:c1] = 1
        mapping[key] = {"image_path": f"{folder}/{key}.jpg", "original_prompt": src, "editing_prompt": tgt,
                        "editing_instruction": "edit it", "editing_type_id": etype, "blended_word": "x x",
                        "mask": mask_encode(raw)}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


# ------------------------------------------------------------------------------------------------------ masks
def test_mask_decode_hand_computed_example():
    # PIE-Bench's convention: [start, length] runs of 1s over the row-major flattened mask, clipped at the end;
    # then the authors set the outer rows and columns to 1
    rle = [1, 2, 6, 3, 15, 5]  # pixels 1, 2 | 6, 7, 8 | 15 (16..19 lie past the 4 x 4 image)
    raw = np.array([[0, 1, 1, 0],
                    [0, 0, 1, 1],
                    [1, 0, 0, 0],
                    [0, 0, 0, 1]], np.uint8)
    assert (mask_decode(rle, (4, 4), border=False) == raw).all()
    bordered = np.array([[1, 1, 1, 1],
                         [1, 0, 1, 1],
                         [1, 0, 0, 1],
                         [1, 1, 1, 1]], np.uint8)
    assert (mask_decode(rle, (4, 4)) == bordered).all()
    # row-major, not column-major: index 4 is row 1, column 0 of a 3 x 5 mask
    assert mask_decode([4, 1], (3, 5), border=False)[1, 0] == 0 and mask_decode([5, 1], (3, 5), border=False)[1, 0]


def test_mask_encode_round_trips():
    rng = np.random.default_rng(1)
    for shape in ((4, 4), (7, 13), (64, 64)):
        for density in (0.0, 0.3, 1.0):
            raw = (rng.random(shape) < density).astype(np.uint8)
            assert (mask_decode(mask_encode(raw), shape, border=False) == raw).all()
    assert mask_encode(np.ones((2, 3))) == [0, 6]


def test_mask_decode_rejects_odd_length():
    with pytest.raises(DataError, match="pairs"):
        mask_decode([1, 2, 3], (4, 4))


# ------------------------------------------------------------------------------------------------------ loader
def test_loader_reads_prompts_edit_types_and_masks(tmp_path):
    root = make_pie_bench(tmp_path / "pie")
    samples = list(load_pie_bench(root))
    assert [s.id for s in samples] == sorted(ENTRIES)
    s = samples[0]
    assert (s.src_prompt, s.tgt_prompt, s.edit_type) == ("a cat sitting on a mat", "a cat standing on a mat", "0")
    assert s.mask.mode == "L" and s.mask.size == s.image.size == (SIZE, SIZE)
    m = np.asarray(s.mask) // 255
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[8:40, 10:30] = 1
    expected[[0, -1], :] = 1
    expected[:, [0, -1]] = 1
    assert (m == expected).all()
    assert [s.edit_type for s in load_pie_bench(root, edit_types=["9"])] == ["9"]
    small = load_pie_bench(root, resolution=32)[0]
    assert small.image.size == small.mask.size == (32, 32) and set(np.unique(np.asarray(small.mask))) <= {0, 255}


def test_loader_errors_name_the_missing_part(tmp_path):
    with pytest.raises(DataError, match="mapping_file.json is missing"):
        load_pie_bench(tmp_path)
    (tmp_path / "mapping_file.json").write_text(json.dumps({"1": {"image_path": "x.jpg"}}))
    with pytest.raises(DataError, match="lacks original_prompt"):
        load_pie_bench(tmp_path)


def test_task_is_text_edit_and_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_DATA", str(tmp_path))
    task = get_task("pie-bench")
    assert task.kind == "text-edit" and "bg_psnr" in task.metrics and "clip_edited" in task.metrics
    with pytest.raises(DataError, match=r"forms\.gle.*data download pie-bench --from"):
        task.load()
    make_pie_bench(tmp_path / "pie-bench")
    assert [s.edit_type for s in get_task("pie-bench").load(2)] == ["0", "0"]


def test_download_from_archive_records_and_checks_sha256(tmp_path):
    src = make_pie_bench(tmp_path / "src" / "PIE-Bench_v1")
    archive = tmp_path / "PIE-Bench_v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent))
    import hashlib

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "data" / "pie-bench"
    with pytest.raises(DataError, match="Google Form"):
        download_pie_bench(None, dest)
    with pytest.raises(DataError, match="checksum mismatch"):
        download_pie_bench(archive, dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert download_pie_bench(archive, dest, progress=False) == dest
    marker = json.loads((dest / ".i2i-zoo-download.json").read_text())
    assert marker["sha256"] == digest and marker["checksum_published"] is False
    assert len(load_pie_bench(dest)) == len(ENTRIES)
    archive.write_bytes(archive.read_bytes() + b"changed")  # a forced re-download checks the recorded checksum
    with pytest.raises(DataError, match="recorded at the first download"):
        download_pie_bench(archive, dest, progress=False, force=True)
    with pytest.raises(DataError, match="cannot read"):
        download_pie_bench(tmp_path / "nope.zip", tmp_path / "other", progress=False)


# ------------------------------------------------------------------------------------------------------ metrics
def _fixed_input():
    """The synthetic input whose PIE-Bench values are pinned below (numpy seed 0)."""
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = np.clip(src.astype(np.float64) + rng.normal(0, 20, src.shape), 0, 255).round().astype(np.uint8)
    raw = np.zeros((64, 64), np.uint8)
    raw[10:40, 20:50] = 1
    mask = mask_decode(mask_encode(raw), (64, 64))
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    return src, out, mask, t(src), t(out), torch.from_numpy(mask)[None, None].float().expand(1, 3, -1, -1)


def _np_ssim_reflect(a, b):
    """Independent numpy SSIM: reflect-pad 5, explicit 11 x 11 Gaussian windows, mean over every pixel."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for c in range(3):
        pa, pb = (np.pad(x[:, :, c], 5, mode="reflect") for x in (a, b))
        va, vb = sliding_window_view(pa, (11, 11)), sliding_window_view(pb, (11, 11))
        mx, my = (va * w).sum((-1, -2)), (vb * w).sum((-1, -2))
        sxx = np.maximum((va * va * w).sum((-1, -2)) - mx**2, 0)
        syy = np.maximum((vb * vb * w).sum((-1, -2)) - my**2, 0)
        sxy = (va * vb * w).sum((-1, -2)) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        vals.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return float(np.mean(vals))


def test_background_metrics_equal_their_definitions_in_numpy():
    src, out, mask, t_src, t_out, t_mask = _fixed_input()
    keep = (1 - mask)[:, :, None]
    a, b = out / 255.0 * keep, src / 255.0 * keep  # both images masked, then the whole-image metric
    mse = float(((a - b) ** 2).mean())
    got = {n: float(get_metric(n, preset="tiny")(t_out, inputs=t_src, masks=t_mask)[0])
           for n in ("bg_mse", "bg_psnr", "bg_ssim")}
    assert got["bg_mse"] == pytest.approx(mse, rel=1e-6)
    assert got["bg_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    assert got["bg_ssim"] == pytest.approx(_np_ssim_reflect(a, b), abs=1e-6)


def test_background_metrics_equal_pie_bench_own_code_on_a_fixed_input():
    # Pinned from PnPInversion's own evaluation code (commit 07f97f448150e2ca220bebd54c8f687c5c50c67a,
    # evaluation/evaluate.py calculate_metric with MetricsCalculator's torchmetrics 1.9.0 PSNR / MSE / SSIM, CPU,
    # float32) on `_fixed_input()`: calculate_metric(mc, "<m>_unedit_part", src, out, mask3, mask3, ...), where
    # mask3 = their mask_decode(mask_encode(raw), [64, 64]) (identical to ours) repeated over 3 channels.
    _, _, _, t_src, t_out, t_mask = _fixed_input()
    pinned = {"bg_psnr": 23.953411102294922, "bg_mse": 0.004024005960673094, "bg_ssim": 0.9760036468505859}
    for name, value in pinned.items():
        assert float(get_metric(name, preset="tiny")(t_out, inputs=t_src, masks=t_mask)[0]) == pytest.approx(
            value, rel=2e-6), name


def test_bg_lpips_equals_pie_bench_own_code_with_the_same_random_trunk():
    # Pinned from PnPInversion's calculate_metric(mc, "lpips_unedit_part", ...) (commit 07f97f44, torchmetrics 1.9.0
    # LearnedPerceptualImagePatchSimilarity(net_type="squeeze"), CPU) on `_fixed_input()`, offline: torchvision's
    # SqueezeNet 1.1 file in $TORCH_HOME replaced by a torchvision-initialised squeezenet1_1 under seed 0
    # (eval.encoders.seeded_init), which is the tiny preset's random LPIPS-squeeze trunk; the linear heads are
    # LPIPS v0.1's in both.
    _, _, _, t_src, t_out, t_mask = _fixed_input()
    got = float(get_metric("bg_lpips", preset="tiny")(t_out, inputs=t_src, masks=t_mask)[0])
    assert got == pytest.approx(0.01037854328751564, rel=1e-5)


def test_background_metrics_nan_without_background_and_zero_for_a_copy():
    _, _, _, t_src, t_out, _ = _fixed_input()
    full = torch.ones_like(t_src)
    for name in ("bg_mse", "bg_psnr", "bg_ssim", "bg_lpips"):
        m = get_metric(name, preset="tiny")
        assert math.isnan(float(m(t_out, inputs=t_src, masks=full)[0]))
    zero = torch.zeros_like(t_src[:, :1])  # a one-channel mask works too
    assert float(get_metric("bg_mse", preset="tiny")(t_src, inputs=t_src, masks=zero)[0]) == 0.0
    assert float(get_metric("bg_ssim", preset="tiny")(t_src, inputs=t_src, masks=zero)[0]) == pytest.approx(1.0)


def test_bg_lpips_is_squeeze_lpips_of_the_masked_images():
    from eval.lpips_net import load_lpips

    _, _, mask, t_src, t_out, t_mask = _fixed_input()
    keep = 1 - torch.from_numpy(mask).float()
    ref = load_lpips("squeeze", "tiny")(t_out * keep, t_src * keep)
    got = get_metric("bg_lpips", preset="tiny")(t_out, inputs=t_src, masks=t_mask)
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-6) and float(got[0]) > 0


def test_clip_edited_is_clip_score_of_the_uint8_masked_output():
    _, out, mask, _, t_out, t_mask = _fixed_input()
    cut = torch.from_numpy(np.uint8(out * mask[:, :, None])).permute(2, 0, 1)[None].float() / 255
    prompt = ["a watercolor painting"]
    ref = get_metric("clip_score", preset="tiny")(cut, tgt_prompts=prompt)
    got = get_metric("clip_edited", preset="tiny")(t_out, tgt_prompts=prompt, masks=t_mask)
    assert float(got[0]) == pytest.approx(float(ref[0]), abs=1e-5)
    assert math.isnan(float(get_metric("clip_edited", preset="tiny")(t_out, tgt_prompts=prompt,
                                                                     masks=torch.zeros_like(t_out))[0]))


def test_dino_struct_pie_is_dino_struct_with_pie_bench_preprocessing():
    _, _, _, t_src, t_out, _ = _fixed_input()
    ref = get_metric("dino_struct", preset="tiny", variant="pie-bench")(t_out, inputs=t_src)
    assert float(get_metric("dino_struct_pie", preset="tiny")(t_out, inputs=t_src)[0]) == pytest.approx(
        float(ref[0]), rel=1e-6)


@pytest.mark.slow
def test_a_run_scores_pie_bench_per_edit_type(tmp_path, monkeypatch):
    import pandas as pd

    import methods
    from eval.harness import RunConfig, run

    monkeypatch.setenv("I2I_ZOO_DATA", str(tmp_path / "data"))
    make_pie_bench(tmp_path / "data" / "pie-bench")
    out = tmp_path / "run"
    run(RunConfig(methods=["identity"], tasks=["pie-bench"], out=out, quiet=True, figures=("png",)), registry=methods)
    assert (out / "inputs" / "pie-bench" / "000000000000.mask.png").is_file()
    per = pd.read_csv(out / "metrics" / "per_image.csv", dtype={"edit_type": str, "sample": str})
    assert set(per["edit_type"]) == {"0", "1", "9"}
    bg = per[per.metric == "bg_mse"].set_index("sample")["value"]
    assert (bg.drop("111000000000") == 0).all() and math.isnan(bg["111000000000"])  # a copy; all-edit mask
    by_type = pd.read_csv(out / "metrics" / "per_edit_type.csv", dtype={"edit_type": str})
    row = by_type[(by_type.edit_type == "0") & (by_type.metric == "bg_psnr")]
    assert math.isinf(row["mean"].item()) and row["n"].item() == 2  # identical backgrounds
    row = by_type[(by_type.edit_type == "1") & (by_type.metric == "bg_psnr")]
    assert row["n"].item() == 0 and row["n_nan"].item() == 1
    assert set(by_type.edit_type) == {"0", "1", "9", "all"}
    from reports.aggregate import load_run

    assert set(load_run(out).per_image["edit_type"]) == {"0", "1", "9"}  # read back as text, for grouping
