"""`gpucheck`: one command that measures every method at its paper resolution on one GPU, in a few minutes.

For each method and dtype (float16, bfloat16 by default): load (full-random weights unless `weights` is given),
one warm-up translation, then CUDA-synchronised latency of one translation, the peak allocated memory (reset per
method), and the overhead ratio (wall time over time inside the networks' forward calls, from a hooked run). Then
the speed options (channels-last, SDPA vs classic attention, fp16 VAE fallback, CPU offload, torch.compile) on the
cheap SD methods with their max abs difference from the default output, and one CycleGAN-Turbo training step at
256 px, batch 1 (peak memory). A time budget stops before the command outgrows its slot: what did not run is listed
as skipped. Writes `<out>/gpucheck/gpucheck.json` and `gpucheck.md`.

The same code runs on CPU with the tiny presets (`--device cpu --preset tiny`): that is how it is tested.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.harness.perf import _perf_batch

#: The papers' working resolution of each method (the side of the square input).
PAPER_RESOLUTION = {"identity": 512, "sdedit": 512, "pix2pix-turbo": 512, "cyclegan-turbo": 256, "pix2pix-zero": 512,
                    "piti": 256, "diffuseit": 256}
#: Targets for an H100-class GPU in float16 (seconds per image; GB for training): what the check compares with.
TARGETS = {"pix2pix-turbo": 0.05, "pix2pix-zero": 10.0, "piti": 8.0, "diffuseit": 15.0}
TRAIN_TARGET_GB = 20.0
#: Speed options measured: option name -> apply_speed_options kwargs.
SPEED_VARIANTS = {"channels_last": {"channels_last": True}, "attention=classic": {"attention": "classic"},
                  "vae_fp16_fallback": {"vae_fp16_fallback": True}, "cpu_offload": {"cpu_offload": True},
                  "compile": {"compile": True}}
#: Where each is measured (cheap one-step SD-Turbo for the kernels; SD 1.x for the fp16 VAE, whose VAE overflows).
SPEED_METHODS = {"pix2pix-turbo": ("channels_last", "attention=classic", "cpu_offload", "compile"),
                 "sdedit": ("vae_fp16_fallback",)}
GPUCHECK_DIR = "gpucheck"


def sanity(device: str) -> dict[str, Any]:
    """Device name, torch / CUDA / cuDNN versions, and the library versions that set the kernels."""
    import diffusers
    import torch

    out = {"device": device, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version()}
    if device.startswith("cuda"):
        out.update(name=torch.cuda.get_device_name(torch.device(device)),
                   cudnn=torch.backends.cudnn.version(),
                   memory_gb=round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1))
    else:
        out["name"] = f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return out


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _one(model: Any, batch: Any, device: str) -> Any:
    import torch

    gens = [torch.Generator(device=device).manual_seed(i) for i in range(len(batch))]
    return model.translate(batch, generator=gens).images


def measure_method(model: Any, name: str, size: int, device: str, registry: Any, *, hooked: bool = True
                   ) -> tuple[dict[str, Any], Any]:
    """Warm-up, one timed translation (peak memory reset before it), one hooked run for the overhead ratio."""
    from eval.timing import count_network_calls, measure

    batch = _perf_batch(size, 1, registry.TranslationInput)
    _one(model, batch, device)  # warm-up (kernels, caches, allocator)
    with measure(device) as m:
        out = _one(model, batch, device)
    row = {"latency_s": m.seconds, "peak_mem_gb": m.peak_mem_bytes / 2**30, "mem_kind": m.mem_kind,
           "finite": bool(out.float().isfinite().all())}
    if hooked:
        with count_network_calls(model.networks(), device) as calls, measure(device) as h:
            _one(model, batch, device)
        net = calls.seconds  # the census total: a network called inside another counts once
        row.update(network_time_s=net, overhead=h.seconds / net if net > 0 else math.nan,
                   network_calls=", ".join(f"{k} x{c.calls}" for k, c in calls.items()))
    return row, out.float().cpu()


def train_step(registry: Any, device: str, preset: str, resolution: int = 256) -> dict[str, Any]:
    """One CycleGAN-Turbo training step at `resolution`, batch 1 (the bundled unpaired sample task), float32
    weights as upstream: its wall time and peak memory (allocated on CUDA, RSS on CPU)."""
    from datasets import get_task
    from eval.timing import measure

    with measure(device) as m:
        model = registry.create("cyclegan-turbo", preset=preset, device=device)
        model.fit(get_task("sample-unpaired"), {"max_train_steps": 1, "train_batch_size": 1,
                                                "resolution": resolution, "quiet": True, "validation_steps": 0,
                                                "viz_freq": 0, "checkpointing_steps": 0})
    del model
    return {"method": "cyclegan-turbo (train step)", "resolution": resolution, "batch_size": 1,
            "latency_s": m.seconds, "peak_mem_gb": m.peak_mem_bytes / 2**30, "mem_kind": m.mem_kind,
            "target": f"< {TRAIN_TARGET_GB:g} GB", "meets_target": m.peak_mem_bytes / 2**30 < TRAIN_TARGET_GB
            if device.startswith("cuda") else None}


def gpucheck(out: str | Path, *, registry: Any, device: str = "cuda", preset: str = "full-random",
             weights: str | None = None, dtypes: Sequence[str] = ("float16", "bfloat16"),
             methods: Sequence[str] | None = None, resolution: int | None = None, speed: bool = True,
             speed_options: Sequence[str] | None = None,
             train: bool = True, budget_s: float = 450.0, overrides: dict[str, dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    """Run the check and write `<out>/gpucheck/gpucheck.{json,md}`; returns the JSON record. `resolution`
    overrides the papers' (PAPER_RESOLUTION) for every method (the CPU test uses a small one); `speed_options`:
    the SPEED_VARIANTS keys to measure (default all)."""
    import torch

    from eval.harness.config import RunConfig
    from eval.harness.preflight import check_dtype, check_options

    t_start = time.perf_counter()
    cfg = RunConfig(methods=list(methods or []), preset=preset, device=device, weights=weights,
                    overrides={m: dict(o) for m, o in (overrides or {}).items()})
    check_options(cfg, registry)
    unknown = sorted(set(speed_options or ()) - set(SPEED_VARIANTS))
    if unknown:
        from eval.errors import ConfigError

        raise ConfigError(f"unknown speed option(s) {', '.join(unknown)}; known: {', '.join(SPEED_VARIANTS)}")
    variants = {k: v for k, v in SPEED_VARIANTS.items() if speed_options is None or k in speed_options}
    dtypes = [check_dtype(d, cfg.device) for d in dtypes]
    record: dict[str, Any] = {"sanity": sanity(cfg.device), "preset": preset, "weights": weights,
                              "budget_s": budget_s, "rows": [], "speed": [], "train": None, "skipped": []}

    def over_budget(what: str) -> bool:
        if time.perf_counter() - t_start > budget_s:
            record["skipped"].append(what)
            return True
        return False

    for name in cfg.methods:
        cls = registry.get(name)
        size = resolution or PAPER_RESOLUTION.get(name, 512)
        size = max(size - size % cls.card.size_multiple, cls.card.min_size)
        for dtype in dtypes:
            if over_budget(f"{name} {dtype}"):
                continue
            row: dict[str, Any] = {"method": name, "dtype": dtype, "resolution": size,
                                   "weights": str(cls.weights_provenance(weights or cls.card.weights_for(preset)).kind)}
            try:
                t0 = time.perf_counter()
                model = cls.from_pretrained(weights, preset=preset, device=cfg.device, dtype=dtype,
                                            **cfg.overrides.get(name, {}))
                row["load_s"] = time.perf_counter() - t0
                r, _ = measure_method(model, name, size, cfg.device, registry)
                row.update(r)
                target = TARGETS.get(name)
                row["target_s"] = target
                row["meets_target"] = (r["latency_s"] <= target) if target and cfg.device.startswith("cuda") else None
            except Exception as err:  # one failing method must not end the check: the table says what failed
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            record["rows"].append(row)
            model = None
            _free(cfg.device)

    if speed:
        for name in [m for m in SPEED_METHODS if m in cfg.methods]:
            cls = registry.get(name)
            size = resolution or PAPER_RESOLUTION[name]
            dtype = dtypes[0]
            base = None
            chosen = {k: v for k, v in variants.items() if k in SPEED_METHODS[name]}
            if not chosen:
                continue
            for label, kw in {"default": {}, **chosen}.items():
                if over_budget(f"speed {name} {label}"):
                    continue
                row = {"method": name, "option": label, "dtype": dtype, "resolution": size}
                try:
                    model = cls.from_pretrained(weights, preset=preset, device=cfg.device, dtype=dtype,
                                                **cfg.overrides.get(name, {}))
                    row["applied"] = model.apply_speed_options(device=cfg.device, **kw)
                    r, img = measure_method(model, name, size, cfg.device, registry, hooked=False)
                    row.update(r)
                    if base is None:
                        base = img
                    row["max_abs_diff_vs_default"] = float((img - base).abs().max())
                except Exception as err:
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                record["speed"].append(row)
                model = None
                _free(cfg.device)
                if kw.get("compile"):
                    torch._dynamo.reset()

    if train and "cyclegan-turbo" in cfg.methods and not over_budget("cyclegan-turbo train step"):
        try:
            record["train"] = train_step(registry, cfg.device, preset, resolution or 256)
        except Exception as err:
            record["train"] = {"method": "cyclegan-turbo (train step)",
                               "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        _free(cfg.device)
    record["total_s"] = time.perf_counter() - t_start
    write(record, Path(out))
    return record


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def markdown(record: dict[str, Any]) -> str:
    s = record["sanity"]
    lines = [f"# gpucheck: {s.get('name')} ({s['device']})", "",
             f"torch {s['torch']}, CUDA {s.get('cuda')}, cuDNN {s.get('cudnn', '')}, diffusers {s['diffusers']}; "
             f"preset {record['preset']}" + (f", weights {record['weights']}" if record["weights"] else "")
             + f"; total {record.get('total_s', 0):.0f} s of a {record['budget_s']:.0f} s budget.", ""]
    if record["preset"] in ("full-random", "tiny") and not record["weights"]:
        lines += ["Weights are **random** (full-size or tiny architectures): speed and memory only, no quality.", ""]
    cols = ["method", "dtype", "resolution", "latency_s", "target_s", "meets_target", "peak_mem_gb", "overhead",
            "load_s", "finite", "error"]
    lines += ["## Inference (one image, after warm-up)", "", "| " + " | ".join(cols) + " |",
              "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in record["rows"]]
    if record["speed"]:
        cols = ["method", "option", "dtype", "latency_s", "peak_mem_gb", "max_abs_diff_vs_default", "applied", "error"]
        lines += ["", "## Speed options (max abs diff on [0, 1] outputs vs the default)", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in record["speed"]]
    if record["train"]:
        t = record["train"]
        lines += ["", "## Training step", "",
                  f"{t['method']}: {t.get('resolution')} px, batch 1: {_fmt(t.get('latency_s'))} s, peak "
                  f"{_fmt(t.get('peak_mem_gb'))} GB ({t.get('mem_kind', '')}); target {t.get('target', '')}"
                  + (f"; error {t['error']}" if t.get("error") else "")]
    if record["skipped"]:
        lines += ["", "Skipped (time budget): " + ", ".join(record["skipped"])]
    return "\n".join(lines) + "\n"


def write(record: dict[str, Any], out: Path) -> Path:
    from eval.store import atomic_write_text

    d = out / GPUCHECK_DIR
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "gpucheck.json", json.dumps(record, indent=2, default=str))
    atomic_write_text(d / "gpucheck.md", markdown(record))
    return d


__all__ = ["PAPER_RESOLUTION", "TARGETS", "gpucheck", "markdown", "sanity", "train_step"]
