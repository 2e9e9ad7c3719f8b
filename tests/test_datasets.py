"""Tests of the data layer: robust image loading, folder layouts, download recipes, the sample suite, the registry."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets
from datasets import DataError, layouts, recipes, suite, tasks
from datasets.images import load_image, prepare, safe_sample_id, to_tensor

REPO = Path(__file__).resolve().parents[1]
SUITE_TASKS = ("sample-unpaired", "sample-paired", "sample-edit", "sample-guided", "sample-mask", "sample-sketch")


# ------------------------------------------------------------------------------------------------------ helpers
def solid(color, size=(16, 16), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def make_unpaired(root: Path, style: str = "turbo", prompts: bool = True) -> Path:
    """Two domains: A = reds named a*, B = blues named b*; test and train splits."""
    for split in ("train", "test"):
        for dom, color, n in (("A", (200, 0, 0), 3), ("B", (0, 0, 200), 2)):
            d = root / (f"{split}_{dom}" if style == "turbo" else f"{split}{dom}")
            for i in range(n):
                save(solid((color[0], i * 10, color[2])), d / f"{dom.lower()}{i}.png")
    if prompts:
        (root / "fixed_prompt_a.txt").write_text("picture of a horse\n", encoding="utf-8")
        (root / "fixed_prompt_b.txt").write_text("picture of a zebra\n", encoding="utf-8")
    return root


def make_paired(root: Path, names=("x1.png", "x2.png", "x0.png"), split="test") -> Path:
    for i, n in enumerate(names):
        save(solid((255, 255, 255)), root / f"{split}_A" / n)
        save(solid((i * 40, 100, 50)), root / f"{split}_B" / n)
    (root / f"{split}_prompts.json").write_text(json.dumps({n: f"caption {n}" for n in names}), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def suite_cache(tmp_path_factory) -> Path:
    """A private cache with the sample suite built once (64 px) for every suite test of this session."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("I2I_ZOO_CACHE", str(cache))
        suite.ensure_suite(64)
    return cache


# ------------------------------------------------------------------------------------------- images: bad input
def test_load_image_corrupt_png_and_jpeg(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    trunc_png = tmp_path / "trunc.png"
    trunc_png.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(DataError, match=r"trunc\.png.*(corrupt|truncated)"):
        load_image(trunc_png)

    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg, "JPEG")
    trunc_jpg = tmp_path / "trunc.jpg"
    trunc_jpg.write_bytes(jpg.getvalue()[:700])
    with pytest.raises(DataError, match=r"trunc\.jpg.*(corrupt|truncated)"):
        load_image(trunc_jpg)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match=r"garbage\.jpg is not a readable image"):
        load_image(garbage)


def test_load_image_missing_empty_dir(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png is empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(DataError, match="is a folder"):
        load_image(tmp_path)


def test_load_image_too_small(tmp_path):
    p = save(solid((1, 2, 3), (1, 1)), tmp_path / "dot.png")
    with pytest.raises(DataError, match=r"dot\.png is 1x1 pixels; the smallest side must be at least 8 px"):
        load_image(p)
    p = save(solid((1, 2, 3), (40, 7)), tmp_path / "strip.png")
    with pytest.raises(DataError, match="at least 8 px"):
        load_image(p)
    assert load_image(save(solid((1, 2, 3), (8, 8)), tmp_path / "ok.png")).size == (8, 8)


def test_load_image_decompression_bomb(tmp_path, monkeypatch):
    p = save(solid((9, 9, 9), (20, 20)), tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big\.png has 20x20 = 400 pixels.*decompression bomb"):
        load_image(p, max_pixels=399)
    assert load_image(p, max_pixels=400).size == (20, 20)
    # PIL's own hard limit (2x MAX_IMAGE_PIXELS) also comes back as a DataError, not a PIL exception or warning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="too large to open safely"):
            load_image(p, max_pixels=10**9)


# ------------------------------------------------------------------------------------------ images: conversions
def test_load_image_gray_and_1bit(tmp_path):
    img = load_image(save(solid(77, (10, 10), "L"), tmp_path / "g.png"))
    assert img.mode == "RGB" and img.getpixel((3, 3)) == (77, 77, 77)
    one = Image.new("1", (10, 10), 0)
    one.putpixel((0, 0), 1)
    img = load_image(save(one, tmp_path / "one.png"))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((5, 5)) == (0, 0, 0)
    assert load_image(tmp_path / "g.png", mode="L").mode == "L"


def test_load_image_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((1, 1), (0, 0, 255, 255))  # opaque blue
    rgba.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    img = load_image(save(rgba, tmp_path / "a.png"))
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((2, 2)))

    la = Image.new("LA", (10, 10), (0, 0))  # transparent black -> white
    assert load_image(save(la, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)

    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    img = load_image(save(pal, tmp_path / "p.png", transparency=0))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (0, 255, 0)


def test_load_image_16bit_and_float_scaled_by_range(tmp_path):
    arr = np.zeros((10, 10), np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 1000, 4000, 2000  # a 12-bit sensor range inside 16 bits
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    img = load_image(save(im, tmp_path / "d16.png"))
    assert img.getpixel((0, 0)) == (64, 64, 64)  # 1000/4000*255 = 63.75, not clipped to 255, not 1000/257 = 4
    assert img.getpixel((1, 0)) == (255, 255, 255)
    assert img.getpixel((2, 0)) == (128, 128, 128)
    assert img.getpixel((5, 5)) == (0, 0, 0)

    f = np.zeros((10, 10), np.float32)
    f[0, 0], f[0, 1], f[0, 2] = -1.0, 1.0, np.nan
    img = load_image(save(Image.fromarray(f), tmp_path / "f.tif"), mode="L")
    assert img.getpixel((0, 0)) == 0 and img.getpixel((1, 0)) == 255
    assert img.getpixel((5, 5)) == 128  # 0.0 is mid-range of [-1, 1]
    assert img.getpixel((2, 0)) == 0  # NaN -> black

    i32 = np.zeros((10, 10), np.int32)
    i32[0, 0] = 70000
    img = load_image(save(Image.fromarray(i32), tmp_path / "i32.tif"))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (0, 0, 0)


def test_load_image_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (10, 10), (0, 0, 0, 0))  # no ink = white
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black ink
    cmyk.putpixel((2, 0), (0, 255, 255, 0))  # magenta + yellow = red
    img = load_image(save(cmyk, tmp_path / "c.tif"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 255, 255)
    assert img.getpixel((1, 0)) == (0, 0, 0)
    assert img.getpixel((2, 0)) == (255, 0, 0)
    assert img.getpixel((5, 5)) == (255, 255, 255)
    # A CMYK JPEG (Adobe-style, inverted on disk) comes back with the same colours, within JPEG loss
    img = load_image(save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "c.jpg", quality=95))
    r, g, b = img.getpixel((8, 8))
    assert r < 30 and g > 225 and b > 225


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_load_image_exif_orientation(tmp_path, fmt):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = save(im, tmp_path / f"rot.{fmt}", exif=exif.tobytes())
    img = load_image(p)
    assert img.size == (20, 40)  # upright: portrait
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# ------------------------------------------------------------------------------------- tensors, prepare, ids
def test_to_tensor_shapes_and_values():
    import torch

    img = Image.new("RGB", (5, 3), (255, 0, 51))
    t = to_tensor(img)
    assert t.shape == (1, 3, 3, 5) and t.dtype == torch.float32
    assert torch.allclose(t[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    m = to_tensor(Image.new("L", (5, 3), 255))
    assert m.shape == (1, 1, 3, 5) and float(m.min()) == 1.0
    assert to_tensor([img, img]).shape == (2, 3, 3, 5)
    with pytest.raises(DataError):
        to_tensor(Image.new("RGBA", (4, 4)))
    with pytest.raises(DataError, match="share size"):
        to_tensor([img, Image.new("RGB", (4, 4))])


def test_prepare_short_side_and_center_crop():
    im = Image.new("RGB", (100, 50), (255, 0, 0))
    im.paste((0, 255, 0), (25, 0, 75, 50))  # the centred 50x50 square is green
    out = prepare(im, 32)
    assert out.size == (32, 32)
    arr = np.asarray(out).astype(int)
    assert arr[:, 2:-2, 1].min() > 240 and arr[:, 2:-2, 0].max() < 20  # only the centre survives
    mask = Image.new("RGB", (90, 60), (128, 0, 0))
    mask.paste((0, 128, 0), (45, 0, 90, 60))
    colors = {tuple(c) for c in np.asarray(prepare(mask, 17, resample=Image.Resampling.NEAREST)).reshape(-1, 3)}
    assert colors == {(128, 0, 0), (0, 128, 0)}  # NEAREST adds no new colours
    assert prepare(im, None) is im


@pytest.mark.parametrize("bad", ["", "  ", "../x", "a/b", "a\\b", "..", ".", ".hidden", "a\0b", "x\ny", "a" * 201])
def test_safe_sample_id_rejects(bad):
    with pytest.raises(DataError):
        safe_sample_id(bad)


def test_safe_sample_id_accepts_and_sanitises():
    assert safe_sample_id("cat_01") == "cat_01"
    assert safe_sample_id("a:b?c") == "a_b_c"
    assert safe_sample_id("café 2") == "café 2"


# ---------------------------------------------------------------------------------------------- layouts
def test_list_images_globbing(tmp_path):
    save(solid((1, 1, 1)), tmp_path / "b.PNG")
    save(solid((1, 1, 1)), tmp_path / "a.JpEg", format="JPEG")
    save(solid((1, 1, 1)), tmp_path / "c.webp")
    save(solid((1, 1, 1)), tmp_path / ".hidden.png")
    save(solid((1, 1, 1)), tmp_path / "sub" / "d.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in layouts.list_images(tmp_path)] == ["a.JpEg", "b.PNG", "c.webp"]
    save(solid((1, 1, 1)), tmp_path / "b.jpg", format="JPEG")
    with pytest.raises(DataError, match="same name stem"):
        layouts.list_images(tmp_path)


@pytest.mark.parametrize("style", ["turbo", "cyclegan"])
def test_load_unpaired(tmp_path, style):
    root = make_unpaired(tmp_path, style)
    a2b = layouts.load_unpaired(root, direction="a2b")
    assert [s.id for s in a2b] == ["a0", "a1", "a2"]
    s = a2b[1]
    assert (s.domain, s.src_prompt, s.tgt_prompt) == ("A", "picture of a horse", "picture of a zebra")
    assert s.image.getpixel((0, 0)) == (200, 10, 0) and s.path.endswith("a1.png")
    b2a = layouts.load_unpaired(root, direction="b2a", resolution=8)
    assert [s.id for s in b2a] == ["b0", "b1"]
    assert (b2a[0].domain, b2a[0].src_prompt, b2a[0].tgt_prompt) == ("B", "picture of a zebra", "picture of a horse")
    assert b2a[0].image.size == (8, 8)
    refs = layouts.unpaired_reference_paths(root, direction="a2b")
    assert [Path(p).name for p in refs] == ["b0.png", "b1.png"]
    assert layouts.target_domain_paths(root, direction="b2a") == layouts.unpaired_reference_paths(root,
                                                                                                  direction="b2a")
    assert layouts.detect_layout(root) == "unpaired"


def test_load_unpaired_cyclegan_default_prompts_and_errors(tmp_path):
    root = make_unpaired(tmp_path / "cg", "cyclegan", prompts=False)
    assert layouts.load_unpaired(root)[0].tgt_prompt is None
    s = layouts.load_unpaired(root, default_prompts=("p a", "p b"))[0]
    assert (s.src_prompt, s.tgt_prompt) == ("p a", "p b")
    with pytest.raises(DataError, match=r"expected test_A/ and test_B/.*testA/ and testB/"):
        layouts.load_unpaired(tmp_path / "missing")
    (tmp_path / "e" / "test_A").mkdir(parents=True)
    (tmp_path / "e" / "test_B").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        layouts.load_unpaired(tmp_path / "e")
    (tmp_path / "e" / "fixed_prompt_a.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"fixed_prompt_a\.txt is not valid UTF-8"):
        layouts.unpaired_prompts(tmp_path / "e")


def test_load_paired(tmp_path):
    root = make_paired(tmp_path)
    samples = layouts.load_paired(root)
    assert [s.id for s in samples] == ["x0", "x1", "x2"]
    s = samples[2]
    assert s.condition is s.image and s.image.getpixel((0, 0)) == (255, 255, 255)
    assert s.target.getpixel((0, 0)) == (40, 100, 50)  # x2 was written second (i = 1)
    assert s.tgt_prompt == "caption x2.png"
    assert [Path(p).name for p in layouts.paired_reference_paths(root)] == ["x0.png", "x1.png", "x2.png"]
    assert layouts.detect_layout(root) == "paired"


def test_load_paired_errors(tmp_path):
    root = make_paired(tmp_path / "p")
    (root / "test_B" / "x1.png").unlink()
    with pytest.raises(DataError, match=r"no target with the same file name.*x1\.png"):
        layouts.load_paired(root)

    root = make_paired(tmp_path / "q")
    (root / "test_prompts.json").write_text(json.dumps({"x1.png": "a", "x2.png": "b"}), encoding="utf-8")
    with pytest.raises(DataError, match=r"no entry for 1 image\(s\): x0\.png"):
        layouts.load_paired(root)
    (root / "test_prompts.json").write_text(json.dumps({"x0.png": "a", "x1.png": "b", "x2": "c", "zz.png": "d"}),
                                            encoding="utf-8")
    with pytest.raises(DataError, match=r"no matching image: zz\.png"):
        layouts.load_paired(root)
    (root / "test_prompts.json").write_bytes('{"x0.png": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"test_prompts\.json is not valid UTF-8.*Re-save it as UTF-8"):
        layouts.load_paired(root)
    (root / "test_prompts.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        layouts.load_paired(root)
    (root / "test_prompts.json").unlink()
    with pytest.raises(DataError, match="no test_prompts.json"):
        layouts.load_paired(root)
    assert layouts.load_paired(root, default_prompt="same")[0].tgt_prompt == "same"

    root = make_paired(tmp_path / "r")
    save(solid((0, 0, 0)), root / "test_B" / "orphan.png")
    with pytest.warns(UserWarning, match="orphan.png"):
        assert len(layouts.load_paired(root)) == 3


def test_load_folder_json_and_csv(tmp_path):
    for n in ("cat", "dog"):
        save(solid((10, 20, 30)), tmp_path / f"{n}.png")
    save(solid((1, 2, 3)), tmp_path / "refs" / "style.png")
    (tmp_path / "prompts.json").write_text(json.dumps({
        "cat.png": {"src": "a cat", "tgt": "a dog", "reference": "refs/style.png"},
        "dog": "a wolf",
    }), encoding="utf-8")
    samples = list(layouts.load_folder(tmp_path, resolution=8))
    assert [s.id for s in samples] == ["cat", "dog"]
    assert (samples[0].src_prompt, samples[0].tgt_prompt) == ("a cat", "a dog")
    assert samples[0].reference.size == (8, 8) and samples[0].reference.getpixel((0, 0)) == (1, 2, 3)
    assert (samples[1].src_prompt, samples[1].tgt_prompt, samples[1].reference) == (None, "a wolf", None)
    assert layouts.detect_layout(tmp_path) == "folder"
    with pytest.raises(DataError, match=r"lack 'reference': dog\.png"):
        layouts.load_folder(tmp_path, require=("reference",))

    csv_path = tmp_path / "p.csv"
    csv_path.write_text('filename,src,tgt\ncat.png,"a cat, sitting",a dog\ndog.png,,a wolf\n', encoding="utf-8")
    samples = list(layouts.load_folder(tmp_path, csv_path))
    assert (samples[0].src_prompt, samples[0].tgt_prompt) == ("a cat, sitting", "a dog")
    assert (samples[1].src_prompt, samples[1].tgt_prompt) == (None, "a wolf")
    csv_path.write_text("name,tgt\ncat.png,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="'filename' column"):
        layouts.load_folder(tmp_path, csv_path)

    (tmp_path / "prompts.json").write_text(json.dumps({"cat.png": {"tgtt": "typo"}, "dog.png": "x"}))
    with pytest.raises(DataError, match="unknown key 'tgtt'"):
        layouts.load_folder(tmp_path)
    (tmp_path / "prompts.json").write_text(json.dumps({"cat.png": {"reference": "nope.png"}, "dog.png": "x"}))
    with pytest.raises(DataError, match=r"nope\.png.*does not exist"):
        layouts.load_folder(tmp_path)


def test_bad_ids_from_file_names(tmp_path):
    save(solid((1, 1, 1)), tmp_path / "a\\b.png")
    with pytest.raises(DataError, match="path separator"):
        layouts.load_folder(tmp_path)


def test_lazy_loading_reads_only_what_is_used(tmp_path):
    save(solid((1, 1, 1)), tmp_path / "a.png")
    (tmp_path / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    samples = layouts.load_folder(tmp_path)  # structure is fine: no pixel decoded yet
    assert samples.ids == ["a", "z"] and len(samples) == 2
    assert isinstance(samples[:1], layouts.SampleList)
    t = datasets.Task(name="lazy", kind="text-edit", description="", loader=lambda: layouts.load_folder(tmp_path))
    assert [s.id for s in t.load(max_samples=1)] == ["a"]
    with pytest.raises(DataError, match=r"z\.png"):
        t.load()


def test_detect_layout_aligned_and_unknown(tmp_path):
    ab = Image.new("RGB", (32, 16), (255, 0, 0))
    ab.paste((0, 0, 255), (16, 0, 32, 16))
    save(ab, tmp_path / "al" / "val" / "1.png")
    assert layouts.detect_layout(tmp_path / "al") == "aligned"
    s = layouts.load_aligned(tmp_path / "al", default_prompt="a shoe")[0]
    assert s.image.getpixel((0, 0)) == (255, 0, 0) and s.target.getpixel((0, 0)) == (0, 0, 255)
    assert s.tgt_prompt == "a shoe"
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError, match="cannot tell the layout"):
        layouts.detect_layout(tmp_path / "x")


# ---------------------------------------------------------------------------------------------- recipes
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_download_offline_error(tmp_path):
    r = recipes.Recipe("toy", f"http://127.0.0.1:{_closed_port()}/toy.zip", "unpaired", "toy", "none",
                       prompts=("a", "b"))
    dest = tmp_path / "data" / "toy"
    with pytest.raises(DataError) as e:
        recipes.download(r, dest, progress=False, timeout=5)
    msg = str(e.value)
    assert "cannot reach http://127.0.0.1" in msg and "No network?" in msg and str(dest) in msg
    assert "testA/" in msg and "fixed_prompt_a.txt" in msg
    assert not dest.exists() and list((tmp_path / "data").iterdir()) == []  # nothing half-written


def _toy_zip(path: Path, top: str = "toyz") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for dom in "AB":
                buf = io.BytesIO()
                solid((200, 0, 0) if dom == "A" else (0, 0, 200)).save(buf, "PNG")
                zf.writestr(f"{top}/{split}{dom}/{dom.lower()}1.png", buf.getvalue())
    return path


def test_download_file_url_extracts_layout(tmp_path):
    archive = _toy_zip(tmp_path / "toyz.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    r = recipes.Recipe("toyz", archive.as_uri(), "unpaired", "toy", "none", sha256=digest,
                       prompts=("picture of A", "picture of B"))
    dest = tmp_path / "data" / "toyz"
    assert recipes.download(r, dest, progress=False) == dest
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["testA", "testB", "trainA", "trainB"]
    assert (dest / "fixed_prompt_b.txt").read_text(encoding="utf-8").strip() == "picture of B"
    marker = json.loads((dest / recipes.MARKER).read_text())
    assert marker["sha256"] == digest and marker["verified"] is True
    s = layouts.load_unpaired(dest)[0]
    assert (s.id, s.tgt_prompt) == ("a1", "picture of B")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["toyz"]  # temp folder cleaned up
    # a complete download is not fetched again (the URL is not even contacted)
    r2 = recipes.Recipe("toyz", "http://127.0.0.1:1/none.zip", "unpaired", "toy", "none")
    assert recipes.download(r2, dest, progress=False) == dest


def test_download_checksum_mismatch_and_zip_slip(tmp_path):
    archive = _toy_zip(tmp_path / "toyz.zip")
    r = recipes.Recipe("toyz", archive.as_uri(), "unpaired", "toy", "none", sha256="0" * 64)
    dest = tmp_path / "data" / "toyz"
    with pytest.raises(DataError, match="checksum mismatch"):
        recipes.download(r, dest, progress=False)
    assert not dest.exists() and list((tmp_path / "data").iterdir()) == []

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../evil.txt", "x")
    r = recipes.Recipe("evil", evil.as_uri(), "unpaired", "toy", "none")
    with pytest.raises(DataError, match="outside the folder"):
        recipes.download(r, tmp_path / "data" / "evil", progress=False)
    assert not (tmp_path / "data" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_download_aligned_tar_splits_ab(tmp_path):
    src = tmp_path / "src" / "e2x"
    ab = Image.new("RGB", (32, 16), (255, 255, 255))
    ab.paste((0, 0, 255), (16, 0, 32, 16))
    for split in ("train", "val"):
        for i in range(2):
            save(ab, src / split / f"{i}_AB.png")
    archive = tmp_path / "e2x.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="e2x")
    r = recipes.Recipe("e2x", archive.as_uri(), "aligned", "toy", "none", caption="a photo of a thing")
    dest = recipes.download(r, tmp_path / "data" / "e2x", progress=False)
    samples = layouts.load_paired(dest)
    assert [s.id for s in samples] == ["0_AB", "1_AB"]
    assert samples[0].image.size == (16, 16) and samples[0].image.getpixel((3, 3)) == (255, 255, 255)
    assert samples[0].target.getpixel((3, 3)) == (0, 0, 255)
    assert samples[0].tgt_prompt == "a photo of a thing"


def test_recipes_table():
    assert {"horse2zebra", "summer2winter_yosemite", "edges2shoes", "edges2handbags", "my_horse2zebra",
            "my_fill50k"} <= set(recipes.RECIPES)
    assert recipes.get_recipe("horse2zebra").url == "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    assert recipes.get_recipe("edges2shoes").url.endswith("/pix2pix/datasets/edges2shoes.tar.gz")
    assert recipes.get_recipe("fill50k").url == "https://www.cs.cmu.edu/~img2img-turbo/data/my_fill50k.zip"
    for r in recipes.RECIPES.values():
        assert r.layout in ("unpaired", "paired", "aligned") and r.license and r.expected_layout
        assert r.sha256 is None or len(r.sha256) == 64
    with pytest.raises(DataError, match="Did you mean 'horse2zebra'"):
        recipes.get_recipe("horse2zebr")


# --------------------------------------------------------------------------------------------- task registry
def test_listing_tasks_touches_no_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("I2I_ZOO_DATA", str(tmp_path / "data"))
    names = datasets.task_names()
    assert [t.name for t in datasets.list_tasks()] == names
    assert set(SUITE_TASKS) | {"horse2zebra", "zebra2horse", "summer2winter", "winter2summer", "edges2shoes",
                               "edges2handbags", "fill50k"} <= set(names)
    suite_tasks = datasets.list_tasks(bundled=True)
    assert [t.name for t in suite_tasks] == sorted(SUITE_TASKS)
    assert {t.name: t.kind for t in suite_tasks} == {
        "sample-unpaired": "unpaired", "sample-paired": "paired", "sample-edit": "text-edit",
        "sample-guided": "image-guided", "sample-mask": "mask-to-image", "sample-sketch": "sketch-to-image"}
    assert [t.name for t in datasets.list_tasks(kind="unpaired", bundled=False)] == [
        "horse2zebra", "summer2winter", "winter2summer", "zebra2horse"]
    for n in names:
        t = datasets.get_task(n)
        assert set(t.metrics) <= set(tasks.METRICS) and t.kind in tasks.KINDS
    assert not (tmp_path / "cache").exists() and not (tmp_path / "data").exists()


def test_get_task_unknown_suggests():
    with pytest.raises(DataError) as e:
        datasets.get_task("sample-pared")
    assert "Did you mean 'sample-paired'?" in str(e.value) and "horse2zebra" in str(e.value)


def test_missing_dataset_error_names_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        datasets.get_task("summer2winter").load()
    assert "python benchmark.py data download summer2winter_yosemite" in str(e.value)
    assert str(tmp_path / "summer2winter_yosemite") in str(e.value)


def test_recipe_task_reads_unpacked_data(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_DATA", str(tmp_path))
    make_unpaired(tmp_path / "horse2zebra", "cyclegan", prompts=False)
    t = datasets.get_task("zebra2horse", resolution=8)
    assert (t.kind, t.direction, t.resolution, t.bundled) == ("unpaired", "b2a", 8, False)
    s = t.load()
    assert [x.domain for x in s] == ["B", "B"] and s[0].image.size == (8, 8)
    assert (s[0].src_prompt, s[0].tgt_prompt) == ("picture of a zebra", "picture of a horse")
    assert [Path(p).name for p in t.reference_images()] == ["a0.png", "a1.png", "a2.png"]


def test_register_task(monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    big = datasets.Sample(id="s", image=solid((1, 2, 3), (60, 40)), target=solid((4, 5, 6), (60, 40)))
    t = datasets.Task(name="mine", kind="paired", description="d", loader=lambda: [big], metrics=("lpips",))
    datasets.register_task(t)
    assert datasets.get_task("mine") is t and "mine" in datasets.task_names()
    small = datasets.get_task("mine", resolution=32)
    assert small.resolution == 32
    s = small.load()[0]  # the resolution is honoured, not just relabelled
    assert s.image.size == s.target.size == (32, 32) and s.target.getpixel((0, 0)) == (4, 5, 6)
    datasets.register_task(t)  # the same task again (a module imported twice) is fine
    other = datasets.Task(name="mine", kind="text-edit", description="d", loader=list)
    with pytest.raises(ValueError, match="already registered"):
        datasets.register_task(other)
    datasets.register_task(other, replace=True)
    assert datasets.get_task("mine").kind == "text-edit"
    with pytest.raises(ValueError, match="unknown metric"):
        datasets.register_task(datasets.Task(name="bad", kind="paired", description="", loader=list,
                                             metrics=("fidd",)))
    with pytest.raises(ValueError, match="unknown kind"):
        datasets.register_task(datasets.Task(name="bad", kind="inpaint", description="", loader=list))

    @datasets.register_task(name="fact")
    def fact(resolution):
        return datasets.Task(name="fact", kind="unpaired", description="", loader=list, resolution=resolution or 7)

    assert datasets.get_task("fact").resolution == 7 and datasets.get_task("fact", resolution=9).resolution == 9


def test_task_from_folder(tmp_path):
    t = datasets.task_from_folder(make_unpaired(tmp_path / "u"), direction="b2a")
    assert (t.kind, t.direction) == ("unpaired", "b2a") and len(t.load()) == 2
    assert len(t.reference_images()) == 3
    t = datasets.task_from_folder(make_paired(tmp_path / "p"), "mask-to-image", resolution=8)
    assert t.kind == "mask-to-image" and t.metrics == tasks.DEFAULT_METRICS["mask-to-image"]
    assert t.load()[0].condition.size == (8, 8)
    with pytest.raises(DataError, match="needs the folder layout"):
        datasets.task_from_folder(tmp_path / "p", "text-edit")
    save(solid((5, 5, 5)), tmp_path / "f" / "x.png")
    save(solid((6, 6, 6)), tmp_path / "f" / "r" / "y.png")
    (tmp_path / "f" / "prompts.json").write_text(json.dumps({"x.png": {"reference": "r/y.png"}}))
    t = datasets.task_from_folder(tmp_path / "f", name="mine")
    assert (t.name, t.kind) == ("mine", "image-guided") and t.load()[0].reference.getpixel((0, 0)) == (6, 6, 6)
    (tmp_path / "f" / "prompts.json").write_text(json.dumps({"x.png": {"src": "a", "tgt": "b"}, "y.png": "z"}))
    with pytest.raises(DataError, match="no matching image: y.png"):  # errors surface when the task is made
        datasets.task_from_folder(tmp_path / "f")


# ----------------------------------------------------------------------------------------------- sample suite
def test_canny_thresholds_follow_cv2_scale():
    def step(delta):
        a = np.full((32, 32), 100, np.uint8)
        a[:, 16:] = 100 + delta
        return np.asarray(suite.canny_edges(Image.fromarray(a).convert("RGB")))

    strong, weak = step(60), step(20)  # Sobel response 4*delta: 240 (> 200) and 80 (< 100) on cv2's scale
    assert strong.shape == (32, 32, 3) and set(np.unique(strong)) == {0, 255}
    cols = np.nonzero(strong[8:24, :, 0].any(axis=0))[0]
    assert set(cols) <= {15, 16} and len(cols) >= 1  # one thin line at the step
    assert weak.max() == 0


def test_suite_builds_deterministically(suite_cache, tmp_path):
    first = suite_cache / "datasets" / suite.SUITE_VERSION / "64px"
    second = suite.build_suite(tmp_path / "again", 64)

    def hashes(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    h1, h2 = hashes(first), hashes(second)
    assert h1 == h2 and len(h1) > 100
    assert suite.verify_suite(first) == []
    # no temporary build folders left next to the suite; a second ensure is a no-op returning the same folder
    assert [p.name for p in first.parent.iterdir()] == ["64px"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("I2I_ZOO_CACHE", str(suite_cache))
        assert suite.ensure_suite(64) == first
    (second / "paired" / "test_A" / "chelsea.png").write_bytes(b"tampered")
    assert suite.verify_suite(second) == ["paired/test_A/chelsea.png"]


def test_ensure_suite_concurrent_builder_wins(tmp_path, monkeypatch):
    """Another process finishing first: our rename fails, we use its copy and leave no temporary folder."""
    monkeypatch.setenv("I2I_ZOO_CACHE", str(tmp_path))
    final = suite.suite_root(64)

    def fake_build(dest, resolution, progress=False):
        (Path(dest) / suite.MANIFEST).write_text("{}")
        (Path(dest) / "mine").write_text("loser")
        final.mkdir(parents=True)  # the other builder's rename lands first
        (final / suite.MANIFEST).write_text("{}")
        (final / "theirs").write_text("winner")
        return Path(dest)

    monkeypatch.setattr(suite, "build_suite", fake_build)
    assert suite.ensure_suite(64) == final
    assert (final / "theirs").is_file() and not (final / "mine").exists()
    assert [p.name for p in final.parent.iterdir()] == ["64px"]
    # an incomplete folder (no manifest) is reported, not silently used
    (final / suite.MANIFEST).unlink()
    with pytest.raises(DataError, match="incomplete"):
        suite.ensure_suite(64)


@pytest.mark.parametrize("name", SUITE_TASKS)
def test_suite_task_loads(suite_cache, monkeypatch, name):
    monkeypatch.setenv("I2I_ZOO_CACHE", str(suite_cache))
    task = datasets.get_task(name)
    assert task.bundled and task.resolution == 64 and task.metrics == tasks.DEFAULT_METRICS[task.kind]
    samples = task.load()
    assert 6 <= len(samples) <= 8
    ids = [s.id for s in samples]
    assert ids == sorted(set(ids))
    assert len(task.load(max_samples=2)) == 2
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (64, 64) and Path(s.path).is_file()
        arr = np.asarray(s.image)
        assert arr.std() > 5  # a real photo or condition, not a blank
    kind = task.kind
    refs = task.reference_images()
    if kind == "unpaired":
        assert all(s.domain == "A" and s.src_prompt == "a color photograph" for s in samples)
        assert all(s.tgt_prompt == "a black and white photograph" for s in samples)
        assert len(refs) == 8
        for p in refs:  # the reference domain really is black and white
            a = np.asarray(load_image(p)).astype(int)
            assert np.abs(a - a[..., :1]).max() == 0
        assert max(np.asarray(s.image).astype(int).std(axis=2).mean() for s in samples) > 10  # colour inputs
    elif kind in ("paired", "mask-to-image", "sketch-to-image"):
        assert len(refs) == len(samples)
        for s in samples:
            assert s.condition is not None and s.target is not None and s.tgt_prompt
            assert s.condition.size == s.target.size == (64, 64)
            cond = np.asarray(s.condition)
            if kind == "paired":  # Canny: white edges on black, 3 equal channels
                assert set(np.unique(cond)) == {0, 255} and (cond == cond[..., :1]).all()
                assert (cond[..., 0] == 255).mean() < 0.5
            elif kind == "sketch-to-image":  # black strokes on a white background
                assert set(np.unique(cond)) == {0, 255} and (cond[..., 0] == 255).mean() > 0.7
            else:  # colour-coded regions from the fixed palette
                palette = {tuple(c) for c in suite.label_colormap(6)[1:]}
                colors = {tuple(c) for c in cond.reshape(-1, 3)}
                assert colors <= palette and len(colors) >= 2
    elif kind == "text-edit":
        assert all(s.src_prompt and s.tgt_prompt and s.src_prompt != s.tgt_prompt for s in samples)
        cat = next(s for s in samples if s.id == "chelsea")
        assert "cat" in cat.src_prompt and "dog" in cat.tgt_prompt
    elif kind == "image-guided":
        for s in samples:
            assert s.reference is not None and s.reference.size == (64, 64)
            assert np.abs(np.asarray(s.reference).astype(int) - np.asarray(s.image)).mean() > 10


def test_suite_other_resolution(suite_cache, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_CACHE", str(suite_cache))
    s = datasets.get_task("sample-mask", resolution=32).load(max_samples=1)[0]
    assert s.image.size == s.condition.size == s.target.size == (32, 32)


# ------------------------------------------------------------------------------------------------ import cost
def test_import_datasets_is_light():
    code = ("import sys, datasets; datasets.list_tasks(); datasets.get_task('sample-paired'); "
            "heavy = [m for m in ('torch', 'skimage', 'sklearn', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
