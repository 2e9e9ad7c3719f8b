"""`perf`: latency (torch.utils.benchmark: warm-up, blocked autorange, median, IQR), throughput, peak memory,
network time and the overhead ratio per method variant and mode, on synthetic inputs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.harness.config import RunConfig
from eval.harness.rundir import PERF_CSV


def _perf_batch(size: int, batch_size: int, translation_input: Any, seed: int = 0) -> Any:
    """A synthetic batch every kind of method can take: images, condition, reference, prompts."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, size, size, generator=g)
    return translation_input(images=x, condition=x.clone(), reference=torch.rand(x.shape, generator=g),
                             src_prompts=["a photo of a cat"] * batch_size,
                             tgt_prompts=["a photo of a dog"] * batch_size,
                             ids=[f"perf{i}" for i in range(batch_size)])


def _modes(cls: Any, translation_input: Any) -> dict[str, Any]:
    """The method's perf modes (`Translator.perf_modes`), or one default mode on the synthetic batch."""
    if hasattr(cls, "perf_modes"):
        return dict(cls.perf_modes())
    from types import SimpleNamespace

    def build(size: int, batch_size: int, seed: int = 0) -> Any:
        return _perf_batch(size, batch_size, translation_input, seed)

    return {"default": SimpleNamespace(options={}, input=build)}


def perf(methods: Sequence[str] | None = None, *, registry: Any, preset: str = "tiny", device: str = "cpu",
         dtype: str = "float32", batch_size: int = 1, resolution: int = 64, warmup: int = 1, repeats: int = 5,
         overrides: Mapping[str, Mapping[str, Any]] | None = None, out: str | Path | None = None) -> Any:
    """One row per (method variant, mode): every mode the method declares (`Translator.perf_modes`: DiffuseIT
    text / image, pix2pix-zero real / synthetic, pix2pix-turbo deterministic / stochastic, cyclegan-turbo a2b /
    b2a). Latency from `torch.utils.benchmark` (warm-up, blocked autorange, at least `repeats` blocks): median
    and IQR; throughput; peak memory; the census of the declared networks' forward calls, the time inside them
    (`network_time_s`) and the overhead ratio = wall time of a translation / its time inside the networks, from
    `repeats` hooked runs. Writes `<out>/perf/perf.csv` when `out` is given. `registry`: e.g. `methods`."""
    import pandas as pd
    import torch

    from eval.harness.preflight import check_options
    from eval.timing import bench, count_network_calls, measure

    if warmup < 0 or repeats < 1 or resolution < 1 or batch_size < 1:
        from eval.errors import ConfigError

        raise ConfigError("perf needs warmup >= 0, repeats >= 1, batch_size >= 1 and resolution >= 1")
    cfg = RunConfig(methods=list(methods or []), preset=preset, device=device, dtype=dtype, batch_size=batch_size,
                    overrides={m: dict(o) for m, o in (overrides or {}).items()})
    if out is not None:
        from eval.harness.safety import prepare_out_dir

        prepare_out_dir(Path(out))  # never writes perf/ into a folder the tool did not make
    variants = check_options(cfg, registry)  # perf runs on synthetic inputs: no tasks to check
    rows = []
    for v in variants:
        card = v.cls.card
        preset_v = v.preset if v.preset in card.weights else "tiny"
        model = v.cls.from_pretrained(None, preset=preset_v, device=cfg.device, dtype=cfg.dtype, **v.overrides)
        base_config = model.config
        size = max(resolution, card.min_size)
        size -= size % card.size_multiple
        for mode_name, mode in _modes(v.cls, registry.TranslationInput).items():
            # a mode's options are read at translate time: one loaded model runs every mode
            model.config = v.cls.resolve_config(preset_v, {**v.overrides, **mode.options}) if mode.options \
                else base_config
            pool = [mode.input(size, batch_size, seed=i) for i in range(max(2, min(warmup + repeats, 8)))]
            calls = iter(range(10**12))

            def once(model: Any = model, pool: list[Any] = pool, calls: Any = calls) -> Any:
                i = next(calls)
                gens = [torch.Generator(device=cfg.device).manual_seed(i * batch_size + j) for j in range(batch_size)]
                return model.translate(pool[i % len(pool)], generator=gens)

            try:
                stats = bench(once, warmup=warmup, repeats=repeats, device=cfg.device)
                # the census, peak memory and overhead ratio come from hooked runs: each ratio compares a run with
                # its own time inside the networks (the latency above is from unhooked runs)
                totals, net_times, peaks = [], [], []
                for _ in range(repeats):
                    with count_network_calls(model.networks(), cfg.device) as census, measure(cfg.device) as m:
                        once()
                    totals.append(m.seconds)
                    net_times.append(census.seconds)
                    peaks.append(m.peak_mem_bytes)
            finally:
                model.config = base_config
            net_s = statistics.median(net_times)
            rows.append({
                "method": v.label, "mode": mode_name, "preset": preset_v, "device": cfg.device, "dtype": cfg.dtype,
                "resolution": size, "batch_size": batch_size, **stats,
                "throughput_img_s": batch_size / stats["latency_median_s"],
                "peak_mem_bytes": int(max(peaks)),
                "network_calls": ", ".join(f"{k} x{c.calls}" for k, c in census.items() if c.calls) or "none",
                "network_time_s": net_s,
                "hooked_time_s": statistics.median(totals),
                "overhead": statistics.median(t / n for t, n in zip(totals, net_times)) if net_s > 0 else math.nan,
            })
    df = pd.DataFrame(rows)
    if out is not None:
        from eval.store import atomic_write_text

        atomic_write_text(Path(out) / PERF_CSV, df.to_csv(index=False))
    return df


def perf_table(df: Any) -> str:
    """The perf frame as the text table `benchmark.py perf` prints."""
    show = df[["method", "mode", "preset", "resolution", "batch_size", "latency_median_s", "latency_iqr_s",
               "throughput_img_s", "peak_mem_bytes", "hooked_time_s", "network_time_s", "overhead"]].copy()
    show["peak_mem_bytes"] = (show["peak_mem_bytes"] / 2**20).round(1)
    show = show.rename(columns={"peak_mem_bytes": "peak_mem_MiB"})
    return (show.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\nlatency: torch.utils.benchmark "
            "blocked autorange after warm-up, median and IQR per call; network_time_s: time inside the method's "
            "declared networks (UNet/denoiser, VAE, text and image encoders, guidance backward) per call, and "
            "hooked_time_s the wall time of those same hooked calls; overhead = hooked_time_s / network_time_s "
            "(median of per-call ratios; nan: the method calls no network)")
