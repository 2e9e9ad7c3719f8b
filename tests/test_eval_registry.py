"""The metric registry and the input contract (what metrics declare and reject); `import eval` stays torch-free."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from eval.metrics import (
    KINDS,
    NEEDS,
    Metric,
    MetricSpec,
    get_metric,
    list_metrics,
    metric_specs,
    metrics_for_kind,
    register_metric,
)

ROOT = Path(__file__).resolve().parents[1]


def test_import_eval_does_not_import_torch():
    code = (
        "import sys, eval\n"
        "from eval.metrics import list_metrics, metrics_for_kind\n"
        "assert eval.list_metrics() == list_metrics() and metrics_for_kind('paired')\n"
        "heavy = [m for m in ('torch', 'timm', 'open_clip', 'lpips', 'cleanfid') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_registry_names_and_specs():
    assert set(list_metrics()) >= {"fid", "kid", "dino_struct", "clip_score", "clip_directional", "clip_accuracy",
                                   "lpips", "psnr", "ssim"}
    for name, spec in metric_specs().items():
        assert spec.name == name
        assert spec.direction in ("lower", "higher")
        assert spec.kinds and spec.kinds <= set(KINDS)
        assert set(spec.needs) <= set(NEEDS)
        assert spec.range[0] < spec.range[1]
        assert spec.version and spec.preprocessing
    assert not metric_specs()["fid"].per_image and metric_specs()["lpips"].per_image
    assert metric_specs()["fid"].direction == "lower" and metric_specs()["clip_score"].direction == "higher"
    assert metric_specs()["clip_score"].range == (0.0, 100.0)


def test_metrics_for_kind():
    paired = metrics_for_kind("paired")
    assert {"psnr", "ssim", "lpips", "fid"} <= set(paired) and "dino_struct" not in paired
    edit = metrics_for_kind("text-edit")
    assert {"clip_accuracy", "clip_directional", "dino_struct", "lpips"} <= set(edit) and "psnr" not in edit
    with pytest.raises(ValueError, match="unknown task kind"):
        metrics_for_kind("video")


def test_unknown_metric_and_option_errors():
    with pytest.raises(KeyError, match="known metrics"):
        get_metric("fdi")
    with pytest.raises(TypeError, match="unknown options"):
        get_metric("psnr", model="x")
    with pytest.raises(ValueError, match="against"):
        get_metric("lpips", against="reference")
    with pytest.raises(ValueError, match="unknown preset"):
        get_metric("psnr", preset="huge")


def test_registration_is_validated():
    class Bad(Metric):
        spec = MetricSpec("Bad Name", "up", (1.0, 0.0), frozenset({"video"}), ("caption",), "", "x", True, None, "")

    with pytest.raises(ValueError) as err:
        register_metric(Bad)
    msg = str(err.value)
    for part in ("lowercase", "direction", "range", "kinds", "needs", "version"):
        assert part in msg

    class Dup(Metric):
        spec = MetricSpec("psnr", "higher", (0.0, 1.0), frozenset({"paired"}), ("target",), "1", "x", True, None, "")

    with pytest.raises(ValueError, match="already registered"):
        register_metric(Dup)


def _imgs(b: int = 2, h: int = 16, w: int = 16, seed: int = 0):
    import torch

    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_input_contract_errors():
    import torch

    psnr = get_metric("psnr")
    x, y = _imgs(), _imgs(seed=1)
    with pytest.raises(TypeError, match=r"x.float\(\) / 255"):
        psnr((x * 255).to(torch.uint8), targets=y)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        psnr(x * 2 - 1, targets=y)
    with pytest.raises(ValueError, match="divide by 255"):
        psnr(x * 255, targets=y)
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        psnr(x.permute(0, 2, 3, 1), targets=y.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="batch size 3"):
        psnr(x, targets=_imgs(3))
    with pytest.raises(ValueError, match="same H x W"):
        psnr(x, targets=_imgs(2, 16, 20))
    with pytest.raises(ValueError, match="needs `targets`"):
        psnr(x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        psnr(x.numpy(), targets=y)
    nan = x.clone()
    nan[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(nan, targets=y)


def test_prompt_contract_errors():
    clip = get_metric("clip_accuracy", preset="tiny")
    x = _imgs(2, 32, 32)
    with pytest.raises(ValueError, match="has 3 prompts but the images have batch size 2"):
        clip(x, src_prompts=["a", "b", "c"], tgt_prompts=["d", "e"])
    with pytest.raises(TypeError, match="list of 2 strings"):
        clip(x, src_prompts=[1, 2], tgt_prompts=["d", "e"])
    with pytest.raises(ValueError, match="needs `src_prompts`"):
        clip(x, tgt_prompts=["d", "e"])
