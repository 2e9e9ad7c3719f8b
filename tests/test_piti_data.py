"""PITI's data: the sketch distance transform, the COCO-Stuff colour map, the COCO-Stuff / ADE20K / sketch loaders on
small synthetic folders, the squash-to-256 transform, and the registered tasks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasets import DataError, get_task, piti_data
from datasets.suite import label_colormap


def _brute_l1(edges: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(edges)
    h, w = edges.shape
    yy, xx = np.mgrid[:h, :w]
    d = np.min(np.abs(yy[..., None] - ys) + np.abs(xx[..., None] - xs), axis=-1)
    return np.clip(d, 0, 255).astype(np.float32) / 255


def test_edge_distance_transform_is_the_clipped_l1_distance():
    rng = np.random.default_rng(0)
    edges = rng.random((23, 31)) < 0.03
    edges[5, 7] = True
    d = piti_data.edge_distance_transform(edges)
    assert d.dtype == np.float32 and d.shape == edges.shape
    np.testing.assert_allclose(d, _brute_l1(edges), atol=1e-7)
    assert (d[edges] == 0).all()
    # one edge pixel: |dy| + |dx| (not Euclidean, not chessboard)
    one = np.zeros((9, 9), bool)
    one[4, 4] = True
    assert piti_data.edge_distance_transform(one)[0, 0] == pytest.approx(8 / 255)
    # far pixels clip at 255 -> 1.0; no edges at all -> 1 everywhere (cv2: huge distance, clipped)
    line = np.zeros((4, 300), bool)
    line[:, 0] = True
    far = piti_data.edge_distance_transform(line)
    assert far[0, 200] == pytest.approx(200 / 255) and far[0, 299] == 1.0
    assert (piti_data.edge_distance_transform(np.zeros((5, 5), bool)) == 1).all()
    with pytest.raises(ValueError, match="H x W"):
        piti_data.edge_distance_transform(np.zeros((2, 2, 3), bool))


def test_piti_colormap_gives_class_zero_a_colour_and_unlabelled_black():
    cmap = piti_data.piti_label_colormap(182)
    assert cmap.shape == (182, 3) and cmap.dtype == np.uint8
    np.testing.assert_array_equal(cmap, label_colormap(183)[1:])  # preprocess_mask.py: id = i + 1
    assert tuple(cmap[0]) == (128, 0, 0) and tuple(cmap[1]) == (0, 128, 0)
    assert len({tuple(c) for c in cmap}) == 182  # every class its own colour
    labels = np.array([[0, 1], [181, 255]], dtype=np.uint8)
    rgb = np.asarray(piti_data.colorize_labels(labels))
    assert tuple(rgb[0, 0]) == (128, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)
    assert tuple(rgb[1, 0]) == tuple(cmap[181])


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _labels(w: int, h: int) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    lab[:, w // 2:] = 7
    lab[: h // 3] = 255
    return lab


def _coco(root, raw: bool) -> None:
    (root / "val_img").mkdir(parents=True)
    lab_dir = root / ("stuffthingmaps" if raw else "") / ("val2017" if raw else "val_label_color")
    lab_dir.mkdir(parents=True)
    for i, (w, h) in enumerate([(100, 60), (50, 80)]):
        _photo(w, h, i).save(root / "val_img" / f"00{i}.jpg")
        lab = _labels(w, h)
        img = Image.fromarray(lab) if raw else piti_data.colorize_labels(lab)
        img.save(lab_dir / f"00{i}.png")


@pytest.mark.parametrize("raw", [False, True])
def test_coco_stuff_loader_squashes_to_256_and_keeps_label_colours(tmp_path, raw):
    _coco(tmp_path, raw)
    samples = piti_data.load_coco_stuff(tmp_path, "val")
    assert [s.id for s in samples] == ["000", "001"]
    s = samples[0]
    assert s.image is s.condition and s.target.size == (256, 256) and s.condition.size == (256, 256)
    colours = {tuple(c) for c in np.asarray(s.condition).reshape(-1, 3)}
    assert colours == {(0, 0, 0), (128, 0, 0), tuple(piti_data.piti_label_colormap()[7])}  # NEAREST: no new colours
    # squashed, not cropped: the label's left/right halves stay halves, the unlabelled top third stays a third
    cond = np.asarray(s.condition)
    assert tuple(cond[200, 10]) == (128, 0, 0) and tuple(cond[200, 250]) == tuple(piti_data.piti_label_colormap()[7])
    assert abs((cond[:, 5] == 0).all(axis=1).mean() - 1 / 3) < 0.02
    # aspect-preserving option: short side 256 + centre crop (the 100x60 photo loses its left/right ends)
    kept = piti_data.load_coco_stuff(tmp_path, "val", keep_aspect=True)[0]
    assert kept.condition.size == (256, 256)
    ref = piti_data.resize_pair(_photo(100, 60, 0), piti_data.colorize_labels(_labels(100, 60)), keep_aspect=True)
    assert np.array_equal(np.asarray(kept.condition), np.asarray(ref[1]))


def test_coco_stuff_loader_names_the_missing_folders(tmp_path):
    with pytest.raises(DataError, match="val_img"):
        piti_data.load_coco_stuff(tmp_path, "val")
    (tmp_path / "val_img").mkdir()
    _photo(8, 8, 0).save(tmp_path / "val_img" / "a.jpg")
    with pytest.raises(DataError, match="val_label_color"):
        piti_data.load_coco_stuff(tmp_path, "val")


def test_ade20k_loader_pairs_images_with_their_seg_maps(tmp_path):
    sub = tmp_path / "validation" / "cultural" / "apse"
    sub.mkdir(parents=True)
    _photo(40, 30, 1).save(sub / "ADE_val_1.jpg")
    Image.fromarray(np.full((30, 40, 3), (10, 20, 30), np.uint8)).save(sub / "ADE_val_1_seg.png")
    _photo(40, 30, 2).save(sub / "ADE_val_2.jpg")  # no _seg.png: not a pair
    samples = piti_data.load_ade20k(tmp_path, "validation")
    assert [s.id for s in samples] == ["ADE_val_1"]
    assert {tuple(c) for c in np.asarray(samples[0].condition).reshape(-1, 3)} == {(10, 20, 30)}
    with pytest.raises(DataError, match="_seg.png"):
        piti_data.load_ade20k(tmp_path / "validation" / "cultural" / "apse" / "none")


def test_sketch_folder_conditions_come_black_on_white_and_feed_the_distance_transform(tmp_path):
    (tmp_path / "val_img").mkdir()
    (tmp_path / "val_sketch").mkdir()
    _photo(32, 32, 3).save(tmp_path / "val_img" / "x.jpg")
    hed = np.zeros((32, 32), np.uint8)  # PITI's HED maps: white edges on black
    hed[16, :] = 255
    Image.fromarray(hed).save(tmp_path / "val_sketch" / "x.png")
    s = piti_data.load_sketch_folder(tmp_path, "val", size=64)[0]
    g = np.asarray(s.condition.convert("L"))
    assert s.condition.size == (64, 64) and g[0, 0] == 255 and (g[32:34].min(axis=0) == 0).all()
    edges = piti_data.sketch_edges(s.condition)
    assert edges.sum() == 2 * 64 and edges[32:34].all()  # one 2-px line (NEAREST x2), detected as dark strokes
    d = piti_data.edge_distance_transform(edges)
    assert d[32, 5] == 0 and d[0, 5] == pytest.approx(32 / 255) and d[63, 5] == pytest.approx(30 / 255)


def test_piti_tasks_are_registered_and_load_or_explain(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_DATA", str(tmp_path))
    task = get_task("coco-stuff-mask")
    assert task.kind == "mask-to-image" and task.resolution == 256 and not task.bundled
    assert get_task("ade20k-mask").kind == "mask-to-image"
    with pytest.raises(DataError, match="coco_stuff dataset is not at"):
        task.load()
    _coco(tmp_path / "coco_stuff", raw=False)
    samples = get_task("coco-stuff-mask", resolution=64).load()
    assert len(samples) == 2 and samples[0].target.size == (64, 64)
    assert [p.endswith(".jpg") for p in task.reference_images()] == [True, True]
    with pytest.raises(DataError, match="registration"):
        piti_data.download_piti("ade20k")


def test_training_samples_use_the_train_split_of_a_paired_task():
    task = get_task("sample-mask")
    train = piti_data.training_samples(task)
    test_ids = {s.id for s in task.load()}
    assert len(train) and not ({s.id for s in train} & test_ids)
    assert train[0].target is not None and train[0].condition is not None
