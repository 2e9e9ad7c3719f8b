"""The Python API a notebook uses: translate_images, evaluate_folders, load_run / RunResult, on tiny presets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import methods
from datasets import Sample, Task, register_task
from eval.harness import RunConfig, evaluate_folders, load_run, run


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)) for _ in range(2)]


PROMPTS = ["a painting 0", "a painting 1"]
register_task(Task(name="test-notebook", kind="text-edit", description="two random 32 px images, test only",
                   loader=lambda: [Sample(id=f"s{i}", image=im, src_prompt="a photo", tgt_prompt=PROMPTS[i])
                                   for i, im in enumerate(_images())], metrics=("lpips",)))


def test_translate_images_takes_pil_and_paths_and_reproduces_the_run(tmp_path):
    res = run(RunConfig(methods=["sdedit"], tasks=["test-notebook"], out=tmp_path / "r", quiet=True, evaluate=False,
                        seed=3, overrides={"sdedit": {"num_inference_steps": 4}}), registry=methods)
    model = methods.create("sdedit", preset="tiny", num_inference_steps=4)
    imgs = _images()
    (tmp_path / "s1.png").write_bytes(b"")
    imgs[1].save(tmp_path / "s1.png")
    outs = model.translate_images([imgs[0], tmp_path / "s1.png"], prompts=PROMPTS, seed=3, ids=["s0", "s1"])
    assert [o.size for o in outs] == [(32, 32), (32, 32)] and all(o.mode == "RGB" for o in outs)
    for i, o in enumerate(outs):  # the same image, id and seed give the run's output
        saved = np.asarray(Image.open(res.run_dir / "outputs" / "sdedit[num_inference_steps=4]" / "test-notebook"
                                      / f"s{i}.png"))
        assert np.abs(np.asarray(o).astype(int) - saved.astype(int)).max() <= 1
    again = model.translate_images([tmp_path / "s1.png"], prompts="a painting 1", seed=3)  # id = the file stem
    assert np.array_equal(np.asarray(again[0]), np.asarray(outs[1]))
    other = model.translate_images([imgs[0]], prompts=PROMPTS[0], seed=4, ids=["s0"])
    assert not np.array_equal(np.asarray(other[0]), np.asarray(outs[0]))


def test_translate_with_a_pil_image_names_translate_images():
    model = methods.create("identity", preset="tiny")
    with pytest.raises(methods.InputError, match="translate_images"):
        model.translate(_images()[0])
    with pytest.raises(methods.InputError, match="2 prompts for 1 images"):
        model.translate_images(_images()[:1], prompts=PROMPTS)


def test_evaluate_folders_pairs_folders_by_name_and_lists_by_position(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    imgs = _images()
    for i, im in enumerate(imgs):
        im.save(a / f"x{i}.png")
        im.save(b / f"x{i}.png")
    df = evaluate_folders(a, b, metrics=("lpips", "psnr"), preset="tiny", cache=False)
    assert sorted(df["sample"].unique()) == ["x0", "x1"] and set(df["metric"]) == {"lpips", "psnr"}
    assert (df[df.metric == "lpips"].value.abs() < 1e-6).all()  # an image against itself
    flipped = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs]
    df = evaluate_folders(flipped, imgs, metrics=("lpips",), preset="tiny", cache=False)
    assert list(df["sample"]) == ["0", "1"] and (df.value > 0).all()
    (b / "x1.png").unlink()
    with pytest.raises(methods.InputError, match="no input image for output"):
        evaluate_folders(a, b, metrics=("lpips",), preset="tiny")
    with pytest.raises(methods.InputError, match="unknown metric"):
        evaluate_folders(a, a, metrics=("lpipz",))


def test_load_run_summary_and_html_view(tmp_path):
    res = run(RunConfig(methods=["identity"], tasks=["test-notebook"], out=tmp_path / "r", quiet=True,
                        eval_preset="tiny"), registry=methods)
    again = load_run(tmp_path / "r")
    assert again.n_outputs == res.n_outputs == 2 and again.n_failures == 0 and again.methods == ["identity"]
    summary = again.summary()
    assert summary.loc[("identity", "test-notebook"), "lpips"] == pytest.approx(0.0, abs=1e-6)
    long = again.summary(long=True)
    assert {"mean", "ci_lo", "ci_hi", "n"} <= set(long.columns)
    assert again.manifest["methods"]["identity"]["weights_label"] == "none"
    banner = next(line for line in again.report.read_text().splitlines() if "Random weights" in line)
    assert "identity" not in banner.split("metrics")[0]  # no weights is not "ran with random weights"
    html = again._repr_html_()
    assert "<table" in html and "identity" in html
    assert "2 outputs, 0 failures" in repr(again)


def test_training_under_accelerate_never_imports_the_hf_datasets_name(monkeypatch):
    """Our top-level `datasets` package shadows Hugging Face `datasets`. accelerate probes
    find_spec("datasets") in prepare_data_loader (and for split_between_processes of non-list inputs) and then
    imports names from it; the project's trainers hand accelerate only models, optimizers and schedulers, so that
    path is never taken, even where HF `datasets` metadata is installed."""
    import accelerate
    import accelerate.data_loader
    import accelerate.state

    from datasets import get_task

    monkeypatch.setattr(accelerate.data_loader, "is_datasets_available", lambda: True)
    monkeypatch.setattr(accelerate.state, "is_datasets_available", lambda: True)

    def refuse(*a, **k):
        raise AssertionError("a DataLoader went through accelerate.prepare_data_loader")

    monkeypatch.setattr(accelerate.Accelerator, "prepare_data_loader", refuse)
    monkeypatch.setattr(accelerate.data_loader, "prepare_data_loader", refuse)
    model = methods.create("cyclegan-turbo", preset="tiny")
    model.fit(get_task("sample-unpaired"), {"resolution": 32, "quiet": True, "validation_steps": 0, "viz_freq": 0,
                                            "checkpointing_steps": 0, "max_train_steps": 1})
    assert model.history and model.history[-1]["step"] == 1


def test_translate_images_refuses_nan_or_out_of_range_outputs(monkeypatch):
    """A notebook user gets an error, not a black or clamped image, when a method returns NaN or values outside
    [0, 1] (the run records both as failures)."""
    import torch

    from methods.base import TranslationOutput

    model = methods.create("identity", preset="tiny")
    img = Image.new("RGB", (32, 32), (10, 20, 30))
    for bad, match in ((float("nan"), "NaN or inf"), (2.0, "outside the \\[0, 1\\] contract")):
        monkeypatch.setattr(type(model), "translate",
                            lambda self, batch, generator=None, v=bad: TranslationOutput(
                                images=torch.full_like(batch.images, v)))
        with pytest.raises(FloatingPointError, match=match):
            model.translate_images([img], seed=0)
