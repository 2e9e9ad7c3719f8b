"""Which files a folder metric reads: exactly clean-fid's discovery (same files, same order), `._*` metadata and
other files never read, a warning naming the image-like files clean-fid would not count either."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.images import list_image_files


def _png(path: Path, seed: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")  # the format, not the name, decides the encoding


def _messy_folder(root: Path) -> Path:
    names = ["a.png", "a-b.png", "a/b.png", "b.jpg", "c.JPEG", "d.PNG", "e.JPG", "f.jpeg", "g.bmp", "h.tif",
             "i.webp", "sub/deeper/j.png", "u.BMP", "v.WEBP", "z.Png", "k.Jpg", ".hidden.png", ".hiddendir/l.png",
             "sub/.m.png"]
    for i, name in enumerate(names):
        _png(root / name, i)
    np.save(root / "n.npy", np.random.default_rng(99).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata, not an image")
    (root / "sub" / "._j.png").write_bytes(b"\x00\x05\x16\x07")
    (root / "notes.txt").write_text("not an image")
    (root / "labels.json").write_text("{}")
    return root


def _clean_fid_files(folder: Path, monkeypatch) -> list[str]:
    """The file list clean-fid 0.1.35's own get_folder_features hands to its feature extractor."""
    import cleanfid.fid as cf

    seen: list[str] = []
    monkeypatch.setattr(cf, "get_files_features", lambda files, *a, **k: seen.extend(files) or np.zeros((1, 1)))
    cf.get_folder_features(str(folder), model=None, verbose=False)
    return seen


def test_folder_discovery_equals_clean_fid_files_and_order(tmp_path, monkeypatch):
    root = _messy_folder(tmp_path / "imgs")
    expected = _clean_fid_files(root, monkeypatch)
    with pytest.warns(UserWarning, match="not counted") as record:
        got = list_image_files(root)
    assert [str(p) for p in got] == expected
    rel = [p.relative_to(root).as_posix() for p in got]
    assert rel == ["a-b.png", "a.png", "a/b.png", "b.jpg", "c.JPEG", "d.PNG", "e.JPG", "f.jpeg", "g.bmp", "h.tif",
                   "i.webp", "n.npy", "sub/deeper/j.png"]  # sorted as path strings, like clean-fid
    message = str(record[0].message)
    for name in ("u.BMP", "v.WEBP", "z.Png", "k.Jpg", "._a.png", ".hidden.png", ".hiddendir/l.png", "sub/.m.png",
                 "sub/._j.png"):
        assert name in message
    assert "notes.txt" not in message and "labels.json" not in message


def test_clean_folder_gives_no_warning_and_non_files_are_skipped(tmp_path):
    for i, name in enumerate(["x.png", "y.png"]):
        _png(tmp_path / name, i)
    (tmp_path / "looks_like.png").mkdir()  # a folder with an image name: glob matches it, it is not read
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p.name for p in list_image_files(tmp_path)] == ["x.png", "y.png"]


def test_metadata_files_are_never_read_by_fid(tmp_path):
    from eval.fid import inception_features

    root = _messy_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="not counted"):
        feats, desc = inception_features(root, preset="tiny", cache=False)
    assert len(feats) == desc["n"] == 13  # the ._* files (not images) would make PIL raise if they were read


def test_discovery_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_image_files(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    _png(tmp_path / "only" / "u.BMP", 0)
    with pytest.warns(UserWarning, match="u.BMP"), pytest.raises(FileNotFoundError, match="case-sensitive"):
        list_image_files(tmp_path / "only")
    _png(tmp_path / "ok.png", 1)
    (tmp_path / "._ok.png").write_bytes(b"\x00\x05")
    with pytest.raises(ValueError, match="metadata"):
        list_image_files([tmp_path / "ok.png", tmp_path / "._ok.png"])
    with pytest.raises(ValueError, match="not image files"):
        list_image_files([tmp_path / "ok.png", tmp_path / "labels.json"])
    with pytest.raises(FileNotFoundError, match="not found"):
        list_image_files([tmp_path / "gone.png"])
    assert list_image_files([tmp_path / "only" / "u.BMP"]) == [tmp_path / "only" / "u.BMP"]  # explicit: any case
