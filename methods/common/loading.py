"""One loader for every method's weights: a hub id, a URL, a local directory/file, or a `tiny:<name>` preset.

Everything is resolved to a local path first and then loaded through the libraries' own `from_pretrained`
(diffusers, transformers), so tiny presets exercise exactly the code path of the real weights. Offline, a
missing hub id fails fast with a message that says how to get the weights, instead of a retry storm or a
traceback from inside huggingface_hub.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.encoders import is_offline
from eval.store import atomic_path, cache_dir

from ..base import WeightsNotFoundError

CLIP_VOCAB_SIZE = 49408  # the BPE vocabulary of every SD 1.x / 2.x text encoder (and open_clip's tokenizer)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _missing(source: str, why: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"weights {source!r} not found locally ({why}). Download them on a machine with internet, e.g. "
        f"`hf download {source} --local-dir DIR` (or `huggingface-cli download ...`), copy DIR here and pass "
        f"--weights DIR; or run the random-init tiny models with --preset tiny."
    )


def resolve(source: str | os.PathLike, *, allow_patterns: list[str] | None = None) -> Path:
    """A local path for `source`: builds tiny presets, finds local paths, downloads hub ids / URLs when online."""
    s = str(source)
    if s.startswith("tiny:"):
        from .tiny import build_tiny

        return build_tiny(s.removeprefix("tiny:"))
    if s.startswith("full-random:"):
        from .full_random import build_full_random

        try:
            return build_full_random(s.removeprefix("full-random:"))
        except KeyError as e:
            raise WeightsNotFoundError(str(e).strip("'\"")) from None
    path = Path(s).expanduser()
    if path.exists():
        return path.resolve()
    if s.startswith(("http://", "https://")):
        return _download_url(s)
    if s.startswith(("/", ".", "~")) or not _HUB_ID.match(s):
        raise WeightsNotFoundError(f"weights path {s!r} does not exist; pass an existing directory or file")
    return _snapshot(s, allow_patterns)


def _snapshot(repo_id: str, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = allow_patterns or ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:  # the local HF cache first: no network round trip when the snapshot is already here
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError):
        pass
    if is_offline():
        raise _missing(repo_id, "HF_HUB_OFFLINE=1 and it is not in the Hugging Face cache")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise WeightsNotFoundError(f"no hub repository {repo_id!r} (or it is gated/private: `hf auth login`)") from None
    except Exception as e:  # connection errors come in many types across huggingface_hub/httpx versions
        raise _missing(repo_id, f"download failed: {type(e).__name__}") from e


def _download_url(url: str) -> Path:
    """Download a single-file checkpoint into the cache (atomic); offline, say where to put it instead."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "weights"
    dest = cache_dir() / "weights" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if dest.exists():
        return dest
    if is_offline():
        raise WeightsNotFoundError(
            f"weights {url} not found locally (HF_HUB_OFFLINE=1). Download the file elsewhere and pass its path "
            f"with --weights, or place it at {dest}"
        )
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=30) as r, atomic_path(dest) as tmp, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise WeightsNotFoundError(
            f"cannot download {url} ({e}); download it elsewhere and pass its path with --weights"
        ) from e
    return dest


def weights_id(source: str | os.PathLike, path: Path) -> str:
    """A stable identity of the weights for cache keys: tiny preset version, hub revision, or file stamps."""
    s = str(source)
    if s.startswith("tiny:"):
        from .tiny import TINY_VERSION

        return f"{s}@v{TINY_VERSION}"
    if s.startswith("full-random:"):
        from .full_random import weights_id as full_random_id

        return full_random_id(s.removeprefix("full-random:"))
    parts = path.parts
    if "snapshots" in parts:  # HF cache layout: .../models--org--name/snapshots/<revision>/
        return f"hub:{s}@{parts[parts.index('snapshots') + 1]}"
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"local:{path}#{h.hexdigest()[:12]}"


def weights_identity(source: str | os.PathLike) -> str:
    """`weights_id` without loading or downloading anything (for cache keys computed before a model loads)."""
    s = str(source)
    if s.startswith(("tiny:", "full-random:")) or s in {"none", ""}:
        return "none" if s in {"none", ""} else weights_id(s, Path(s))
    path = Path(s).expanduser()
    if path.exists():
        return weights_id(s, path.resolve())
    if _HUB_ID.match(s):
        try:
            from huggingface_hub import snapshot_download

            return weights_id(s, Path(snapshot_download(s, local_files_only=True)))
        except Exception:  # not cached: the id is all we know before downloading
            return f"hub:{s}"
    return s


class UnsafeCheckpointError(WeightsNotFoundError):
    """A checkpoint that would need to execute code (or build arbitrary objects) to load."""


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a checkpoint file, never executing code from it.

    `.safetensors` are read with safetensors; anything else (`.pt`, `.pth`, `.pkl`, `.bin`) with
    `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers. A pickle that carries code
    (a `__reduce__` calling a function, a custom class) is refused with UnsafeCheckpointError.
    """
    import pickle

    import torch

    from eval.errors import without_unsafe_advice

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it is a pickle that needs code or objects beyond tensors to load "
            f"({without_unsafe_advice(str(e)).splitlines()[0][:300]}). Only plain state dicts are loaded; if you trust "
            "the file, convert it "
            "to .safetensors on a trusted machine."
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise WeightsNotFoundError(
            f"{path} is not a readable checkpoint ({type(e).__name__}: {without_unsafe_advice(str(e))}); re-download "
            "it") from None


def parse_dtype(dtype: Any) -> Any:
    """torch dtype from a dtype, None (float32) or a name: float32/fp32, float16/fp16/half, bfloat16/bf16."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    try:
        return names[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}") from None


def _quiet_weight_loading() -> None:
    """The libraries' per-file 'Loading weights' bars are noise next to the run's own progress bars."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def check_tokenizer(tokenizer: Any, where: str) -> None:
    """transformers silently returns a 2-token dummy tokenizer for an empty/missing dir: refuse it."""
    size = getattr(tokenizer, "vocab_size", None)
    if size != CLIP_VOCAB_SIZE:
        raise WeightsNotFoundError(
            f"the tokenizer loaded from {where} has vocab_size={size}, expected {CLIP_VOCAB_SIZE} (the CLIP BPE). "
            "The tokenizer folder is missing or incomplete (vocab.json + merges.txt); re-download the weights."
        )


def clip_tokenizer(folder: str | os.PathLike) -> Any:
    """The CLIP tokenizer of a snapshot folder, loaded once per process (building transformers' fast tokenizer
    from vocab.json + merges.txt takes ~0.5 s on a CPU, and the sd-turbo / SD 1.x methods of one run share
    snapshots). Keyed by the folder and its files' sizes and mtimes, so a rewritten folder is reloaded. A
    tokenizer holds no per-call state that outlives a call (padding and truncation are set per call)."""
    folder = Path(folder).resolve()
    try:
        stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()))
    except OSError:
        stamp = ()
    return _clip_tokenizer(str(folder), stamp)


@functools.lru_cache(maxsize=16)
def _clip_tokenizer(folder: str, stamp: tuple) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion snapshot (SD 1.x, SD 2.x, SD-Turbo)."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any
    path: Path
    weights_id: str

    def to(self, device: Any, dtype: Any = None) -> SDComponents:
        for m in (self.text_encoder, self.vae, self.unet):
            m.to(device) if dtype is None else m.to(device=device, dtype=dtype)
        return self


def load_sd(source: str | os.PathLike, *, device: Any = "cpu", dtype: Any = None) -> SDComponents:
    """Load tokenizer, text encoder, VAE, UNet and scheduler of an SD snapshot through diffusers/transformers."""
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = resolve(source)
    if not (path / "model_index.json").is_file():
        raise WeightsNotFoundError(
            f"{path} is not a Stable Diffusion snapshot (no model_index.json); expected the diffusers layout "
            "model_index.json, tokenizer/, text_encoder/, vae/, unet/, scheduler/"
        )
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        if not (path / sub).is_dir():
            raise WeightsNotFoundError(f"{path} is missing the {sub}/ folder of a Stable Diffusion snapshot")
    torch_dtype = parse_dtype(dtype)
    _quiet_weight_loading()
    tokenizer = clip_tokenizer(path / "tokenizer")
    check_tokenizer(tokenizer, str(path / "tokenizer"))
    import json

    sched_cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    import diffusers

    sched_cls = getattr(diffusers, sched_cfg.get("_class_name", ""), None)
    if not (isinstance(sched_cls, type) and issubclass(sched_cls, SchedulerMixin)):
        raise WeightsNotFoundError(f"{path}/scheduler names an unknown scheduler {sched_cfg.get('_class_name')!r}")
    from .full_random import is_random_init, random_part

    random_init = is_random_init(path)

    def part(cls: Any, sub: str, **kw: Any) -> Any:
        if random_init:  # a full-random snapshot: the same config files, seeded random weights instead of a read
            return random_part(cls, path, sub, kw.get("torch_dtype"), device=device)
        try:
            return cls.from_pretrained(path, subfolder=sub, **kw)
        except (OSError, ValueError, KeyError) as e:  # a missing/partial file: say which folder, not a deep trace
            raise WeightsNotFoundError(
                f"{path}/{sub} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:300]}); the snapshot "
                "is incomplete or corrupt: re-download it"
            ) from None

    comps = SDComponents(
        tokenizer=tokenizer,
        text_encoder=part(CLIPTextModel, "text_encoder", torch_dtype=torch_dtype),
        vae=part(AutoencoderKL, "vae", torch_dtype=torch_dtype),
        unet=part(UNet2DConditionModel, "unet", torch_dtype=torch_dtype),
        scheduler=sched_cls.from_pretrained(path, subfolder="scheduler"),
        path=path,
        weights_id=weights_id(source, path),
    )
    for m in (comps.text_encoder, comps.vae, comps.unet):
        m.requires_grad_(False).eval()
    return comps.to(device)
