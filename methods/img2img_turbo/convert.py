"""Checkpoints of img2img-turbo: the project format, the official `.pkl` importer/exporter, and model loading.

Project format (a directory; `from_pretrained(dir)` loads it):
  config.json        {"format": "i2i-zoo/img2img-turbo", "version", "method", "kind", "base", "arch" (LoRA ranks,
                     alphas and target modules per adapter), "fixed_prompts", "trained_steps", "origin", ...}
  model.safetensors  the trainable tensors only (UNet LoRA + conv_in, VAE LoRA + skip convs, per VAE), float32;
                     the frozen rest comes from the base snapshot named in config.json.

Official formats (read with `torch.load(weights_only=True)`, never executing code):
  paired   {unet_lora_target_modules, vae_lora_target_modules, rank_unet, rank_vae,
            state_dict_unet (keys with "lora" or "conv_in"), state_dict_vae (keys with "lora" or "skip")}
           (`Pix2Pix_Turbo.save_model`); the stochastic sketch model's conv_in is a TwinConv
           (`conv_in.conv_in_pretrained.*`, `conv_in.conv_in_curr.*`).
  unpaired {l_target_modules_encoder, l_target_modules_decoder, l_modules_others, rank_unet, sd_encoder,
            sd_decoder, sd_other (PEFT state dicts, adapter name removed), rank_vae, vae_lora_target_modules,
            sd_vae_enc, sd_vae_dec (full state dicts of `VAE_encode`/`VAE_decode`: both VAEs, keys vae.* and
            vae_b2a.*)} (train_cyclegan_turbo.py). They do not contain the trained UNet conv_in base weights
            (upstream bug): an imported model runs the pretrained conv_in + its LoRA, exactly as the
            authors' loader does. Our own checkpoints save conv_in (fixed).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.store import atomic_path, atomic_write_json

from ..base import InputError, WeightsNotFoundError
from .generator import (
    PAIRED_UNET_ADAPTER,
    PEFT_DEFAULT_ALPHA,
    UNET_TARGETS_PAIRED,
    UNPAIRED_ADAPTERS,
    VAE_ADAPTER,
    VAE_TARGETS,
    PromptEncoder,
    TurboGenerator,
    TwinConv,
    build_paired,
    build_unpaired,
    trainable_state_dict,
)
from .official import BASE_MODEL, official_by_source

FORMAT = "i2i-zoo/img2img-turbo"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KINDS = {"pix2pix-turbo": "paired", "cyclegan-turbo": "unpaired"}


@dataclass
class LoadedModel:
    """What `load_model` returns: the generator, its text side, and where it came from."""

    gen: TurboGenerator
    prompts: PromptEncoder
    kind: str
    base: str  # the base SD snapshot (hub id, path, "tiny:sd-turbo")
    weights_id: str
    trained: bool
    origin: str
    fixed_prompts: dict[str, str] = field(default_factory=dict)  # direction -> fixed caption
    trained_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --- architecture spec ------------------------------------------------------------------------------------------
def arch_spec(gen: TurboGenerator) -> dict[str, Any]:
    """LoRA ranks, alphas and target modules per adapter (what is needed to rebuild the module tree)."""

    def adapters(model: Any) -> dict[str, Any]:
        return {name: {"r": int(c.r), "alpha": int(c.lora_alpha), "target_modules": sorted(c.target_modules)}
                for name, c in getattr(model, "peft_config", {}).items()}

    return {"unet": adapters(gen.unet), "vae": adapters(gen.vae), "twin_conv": isinstance(gen.unet.conv_in, TwinConv)}


def default_arch(kind: str, rank_unet: int, rank_vae: int) -> dict[str, Any]:
    """The authors' fresh-model architecture at the given ranks (unpaired UNet targets are found from the UNet)."""
    vae = {VAE_ADAPTER: {"r": rank_vae, "alpha": PEFT_DEFAULT_ALPHA, "target_modules": list(VAE_TARGETS)}}
    if kind == "paired":
        unet = {PAIRED_UNET_ADAPTER: {"r": rank_unet, "alpha": PEFT_DEFAULT_ALPHA,
                                      "target_modules": list(UNET_TARGETS_PAIRED)}}
    else:
        unet = {name: {"r": rank_unet, "alpha": rank_unet, "target_modules": None} for name in UNPAIRED_ADAPTERS}
    return {"unet": unet, "vae": vae, "twin_conv": kind == "paired"}


def build_from_arch(kind: str, comps: Any, arch: dict[str, Any], seed: int = 0) -> TurboGenerator:
    vae = arch["vae"][VAE_ADAPTER]
    if kind == "paired":
        unet = arch["unet"][PAIRED_UNET_ADAPTER]
        return build_paired(comps, rank_unet=unet["r"], rank_vae=vae["r"], unet_targets=unet["target_modules"],
                            vae_targets=vae["target_modules"], unet_alpha=unet["alpha"], vae_alpha=vae["alpha"],
                            seed=seed)
    ranks = {arch["unet"][n]["r"] for n in UNPAIRED_ADAPTERS}
    if len(ranks) != 1 or any(arch["unet"][n]["alpha"] != arch["unet"][n]["r"] for n in UNPAIRED_ADAPTERS):
        raise ValueError(f"unpaired UNet adapters must share one rank with alpha = rank, got {arch['unet']}")
    targets = None
    if all(arch["unet"][n]["target_modules"] for n in UNPAIRED_ADAPTERS):
        targets = {n: arch["unet"][n]["target_modules"] for n in UNPAIRED_ADAPTERS}
    return build_unpaired(comps, rank_unet=ranks.pop(), rank_vae=vae["r"], unet_targets=targets,
                          vae_targets=vae["target_modules"], vae_alpha=vae["alpha"], seed=seed)


# --- loading state into a generator -------------------------------------------------------------------------------
def load_tensors(gen: TurboGenerator, tensors: dict[str, torch.Tensor], *, where: str,
                 require: bool = True) -> None:
    """Copy `tensors` into `gen` (shapes checked); every tensor must have a destination, and (require=True) every
    trainable tensor of `gen` must be given."""
    own = gen.state_dict()
    unknown = sorted(k for k in tensors if k not in own)
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} tensor(s) have no place in the model, e.g. {unknown[:3]} "
                         "(a checkpoint of another architecture or method?)")
    for k, v in tensors.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{where}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    if require:
        missing = sorted(k for k in trainable_state_dict(gen) if k not in tensors)
        if missing:
            raise ValueError(f"{where}: {len(missing)} trainable tensor(s) missing, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(dtype=own[k].dtype))


# --- project format -------------------------------------------------------------------------------------------------
def save_project(path: str | os.PathLike, *, method: str, kind: str, gen: TurboGenerator, base: str,
                 base_weights_id: str, fixed_prompts: dict[str, str], config: dict[str, Any], trained_steps: int,
                 origin: str, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in trainable_state_dict(gen).items()}
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": method})
    # written last: a directory with config.json is complete
    atomic_write_json(path / CONFIG_FILE, {
        "format": FORMAT, "version": FORMAT_VERSION, "method": method, "kind": kind, "base": base,
        "base_weights_id": base_weights_id, "arch": arch_spec(gen), "fixed_prompts": fixed_prompts,
        "config": config, "trained_steps": int(trained_steps), "origin": origin, **(extra or {}),
    })
    return path


def is_project_dir(path: Path) -> bool:
    if not (path / CONFIG_FILE).is_file():
        return False
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_project_config(path: Path) -> dict[str, Any]:
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("version", 0) > FORMAT_VERSION:
        raise WeightsNotFoundError(f"{path} was written by a newer i2i-zoo (format version {meta['version']})")
    return meta


# --- official .pkl ---------------------------------------------------------------------------------------------------
def read_official(path: str | os.PathLike) -> dict[str, Any]:
    """The dict of an official `.pkl` (a torch.save'd dict of tensors, lists, ints), loaded without unpickling code."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        from eval.errors import without_unsafe_advice

        raise WeightsNotFoundError(f"{path} is not a readable img2img-turbo checkpoint ({type(e).__name__}: "
                                   f"{without_unsafe_advice(str(e))}); "
                                   "only the official .pkl formats (weights only) are accepted") from e
    if not isinstance(sd, dict):
        raise WeightsNotFoundError(f"{path} holds a {type(sd).__name__}, not an img2img-turbo checkpoint dict")
    return sd


def official_kind(sd: dict[str, Any]) -> str:
    if {"state_dict_unet", "state_dict_vae", "rank_unet"} <= set(sd):
        return "paired"
    if {"sd_encoder", "sd_decoder", "sd_other", "sd_vae_enc"} <= set(sd):
        return "unpaired"
    raise WeightsNotFoundError(f"unknown checkpoint layout (keys {sorted(sd)[:8]}); expected the paired "
                               "(state_dict_unet, state_dict_vae, ...) or unpaired (sd_encoder, sd_vae_enc, ...) "
                               "format")


def official_arch(sd: dict[str, Any]) -> dict[str, Any]:
    kind = official_kind(sd)
    vae = {VAE_ADAPTER: {"r": int(sd["rank_vae"]), "alpha": PEFT_DEFAULT_ALPHA,
                         "target_modules": list(sd["vae_lora_target_modules"])}}
    if kind == "paired":
        unet = {PAIRED_UNET_ADAPTER: {"r": int(sd["rank_unet"]), "alpha": PEFT_DEFAULT_ALPHA,
                                      "target_modules": list(sd["unet_lora_target_modules"])}}
    else:
        r = int(sd["rank_unet"])
        lists = {"default_encoder": "l_target_modules_encoder", "default_decoder": "l_target_modules_decoder",
                 "default_others": "l_modules_others"}
        unet = {name: {"r": r, "alpha": r, "target_modules": list(sd[key])} for name, key in lists.items()}
    return {"unet": unet, "vae": vae, "twin_conv": kind == "paired"}


def _with_adapter(key: str, adapter: str) -> str:
    """PEFT state-dict key without adapter name -> the module key ("x.lora_A.weight" -> "x.lora_A.<a>.weight")."""
    for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"):
        token = f".{part}."
        if token in key:
            head, tail = key.split(token, 1)
            return f"{head}.{part}.{adapter}.{tail}"
    raise ValueError(f"not a LoRA key: {key}")


def official_to_project(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of an official checkpoint keyed by our generator's state-dict names."""
    out: dict[str, torch.Tensor] = {}
    if official_kind(sd) == "paired":
        for k, v in sd["state_dict_unet"].items():
            if k.startswith("conv_in.") and not k.startswith(("conv_in.conv_in_pretrained.", "conv_in.conv_in_curr.")):
                k = "conv_in.conv_in_curr." + k.removeprefix("conv_in.")  # edge model: a plain conv_in
            out["unet." + k] = v
        for k, v in sd["state_dict_vae"].items():
            out["vae." + k] = v
        return out
    for adapter, key in (("default_encoder", "sd_encoder"), ("default_decoder", "sd_decoder"),
                         ("default_others", "sd_other")):
        for k, v in sd[key].items():
            out["unet." + _with_adapter(k, adapter)] = v
    for key in ("sd_vae_enc", "sd_vae_dec"):  # same modules; upstream loads enc then dec (dec wins)
        out.update(sd[key])
    return out


def project_to_official(gen: TurboGenerator, kind: str, *, twin_conv: bool = False) -> dict[str, Any]:
    """The inverse of `official_to_project` (the authors' save format), e.g. to run our model in their code.

    Paired: `twin_conv=False` writes a plain `conv_in` (what `Pix2Pix_Turbo(pretrained_path=...)` builds);
    `twin_conv=True` the stochastic sketch model's `conv_in.conv_in_pretrained/conv_in_curr` keys.
    """
    from peft.utils import get_peft_model_state_dict

    arch = arch_spec(gen)
    state = gen.state_dict()
    vae = arch["vae"][VAE_ADAPTER]
    if kind == "paired":
        unet_sd = {}
        for k, v in state.items():
            if not k.startswith("unet."):
                continue
            k = k.removeprefix("unet.")
            if not twin_conv and k.startswith("conv_in."):
                if not k.startswith("conv_in.conv_in_curr."):
                    continue
                k = "conv_in." + k.removeprefix("conv_in.conv_in_curr.")
            if "lora" in k or "conv_in" in k:
                unet_sd[k] = v.clone()
        return {
            "unet_lora_target_modules": arch["unet"][PAIRED_UNET_ADAPTER]["target_modules"],
            "vae_lora_target_modules": vae["target_modules"], "rank_unet": arch["unet"][PAIRED_UNET_ADAPTER]["r"],
            "rank_vae": vae["r"],
            "state_dict_unet": unet_sd,
            "state_dict_vae": {k.removeprefix("vae."): v.clone() for k, v in state.items()
                               if k.startswith("vae.") and ("lora" in k or "skip" in k)},
        }
    unet = arch["unet"]
    vaes = {k: v.clone() for k, v in state.items() if k.startswith(("vae.", "vae_b2a."))}
    return {
        "l_target_modules_encoder": unet["default_encoder"]["target_modules"],
        "l_target_modules_decoder": unet["default_decoder"]["target_modules"],
        "l_modules_others": unet["default_others"]["target_modules"],
        "rank_unet": unet["default_encoder"]["r"],
        "sd_encoder": get_peft_model_state_dict(gen.unet, adapter_name="default_encoder"),
        "sd_decoder": get_peft_model_state_dict(gen.unet, adapter_name="default_decoder"),
        "sd_other": get_peft_model_state_dict(gen.unet, adapter_name="default_others"),
        "rank_vae": vae["r"], "vae_lora_target_modules": vae["target_modules"],
        "sd_vae_enc": vaes, "sd_vae_dec": dict(vaes),
    }


def export_official(gen: TurboGenerator, kind: str, path: str | os.PathLike, *, twin_conv: bool = False) -> Path:
    """Write the authors' `.pkl` format (a plain dict of tensors/lists/ints, torch.save)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(project_to_official(gen, kind, twin_conv=twin_conv), str(tmp))
    return path


# --- the one loader --------------------------------------------------------------------------------------------------
def _is_checkpoint_file(s: str) -> bool:
    return s.lower().endswith((".pkl", ".pt", ".pth", ".bin")) or official_by_source(s) is not None


def load_model(method: str, source: str | os.PathLike, *, base: str | None = None, device: Any = "cpu",
               dtype: Any = None, init_ranks: tuple[int, int] = (8, 4), seed: int = 0) -> LoadedModel:
    """Load a pix2pix-turbo / CycleGAN-Turbo generator from any source:

    - a project checkpoint directory (config.json + model.safetensors): its base snapshot + the stored tensors;
    - an official `.pkl` (path or URL; downloaded to the cache when online): imported onto `base`
      (default stabilityai/sd-turbo, its base model);
    - a base SD-Turbo snapshot (hub id, local dir, "tiny:sd-turbo"): the authors' untrained initialisation (skip
      convs 1e-5, Gaussian LoRA with B = 0, seeded), labelled "untrained" in weights_id. `init_ranks` = (UNet, VAE).
    """
    from ..common.loading import load_sd, parse_dtype, resolve, weights_id

    kind = KINDS[method]
    torch_dtype = parse_dtype(dtype)
    s = str(source)
    local = Path(s).expanduser()
    if local.is_dir() and is_project_dir(local):
        meta = read_project_config(local)
        if meta.get("method") != method:
            raise InputError(f"{local} is a {meta.get('method')} checkpoint, not {method}")
        base_src = base or meta["base"]
        comps = load_sd(base_src, device="cpu")
        gen = build_from_arch(kind, comps, meta["arch"], seed=seed)
        from safetensors.torch import load_file

        load_tensors(gen, load_file(str(local / WEIGHTS_FILE)), where=str(local / WEIGHTS_FILE))
        wid = weights_id(s, local.resolve())
        fixed = dict(meta.get("fixed_prompts") or {})
        loaded = LoadedModel(gen, PromptEncoder(comps.tokenizer, comps.text_encoder), kind, base_src, wid, True,
                             meta.get("origin", "trained"), fixed, int(meta.get("trained_steps", 0)),
                             {"base_weights_id": comps.weights_id, "meta": meta})
    elif _is_checkpoint_file(s):
        file = resolve(s)
        sd = read_official(file)
        got = official_kind(sd)
        if got != kind:
            raise InputError(f"{s} is an official {got} checkpoint; load it with "
                             f"{'pix2pix-turbo' if got == 'paired' else 'cyclegan-turbo'}")
        base_src = base or BASE_MODEL
        comps = load_sd(base_src, device="cpu")
        gen = build_from_arch(kind, comps, official_arch(sd), seed=seed)
        tensors = official_to_project(sd)
        load_tensors(gen, tensors, where=str(file), require=False)
        ckpt = official_by_source(s)
        fixed = {ckpt.direction: ckpt.caption} if ckpt is not None and ckpt.caption else {}
        wid = f"{weights_id(s, file)}+base={comps.weights_id}"
        loaded = LoadedModel(gen, PromptEncoder(comps.tokenizer, comps.text_encoder), kind, base_src, wid, True,
                             f"official checkpoint {ckpt.name if ckpt else file.name}", fixed, 0,
                             {"official": ckpt.name if ckpt else None})
    else:
        comps = load_sd(s, device="cpu")
        gen = build_from_arch(kind, comps, default_arch(kind, *init_ranks), seed=seed)
        wid = f"{comps.weights_id}+untrained-init(seed={seed},r_unet={init_ranks[0]},r_vae={init_ranks[1]})"
        if not s.startswith(("tiny:", "full-random:")):
            warnings.warn(f"{method}: {s} is a base model, not a trained checkpoint: this is the untrained "
                          "initialisation (SD-Turbo one step on the encoded input). Train it (`benchmark.py train`) "
                          "or load an official checkpoint preset.", stacklevel=3)
        loaded = LoadedModel(gen, PromptEncoder(comps.tokenizer, comps.text_encoder), kind, s, wid, False,
                             "untrained initialisation", {}, 0, {})
    loaded.gen.to(device=device, dtype=torch_dtype)
    loaded.prompts.text_encoder.to(device=device, dtype=torch_dtype)
    loaded.extra.setdefault("base_weights_id", comps.weights_id)
    loaded.extra["base_path"] = str(comps.path)
    return loaded
