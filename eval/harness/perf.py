"""`perf`: latency (warm-up, repeats, median, IQR), throughput, peak memory and the overhead ratio per method
variant, on synthetic inputs every kind of method can take."""

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


def perf(methods: Sequence[str] | None = None, *, registry: Any, preset: str = "tiny", device: str = "cpu",
         dtype: str = "float32", batch_size: int = 1, resolution: int = 64, warmup: int = 1, repeats: int = 5,
         overrides: Mapping[str, Mapping[str, Any]] | None = None, out: str | Path | None = None) -> Any:
    """One row per method variant (sweeps allowed, as in `run`): latency median/IQR, throughput, peak memory,
    the census of network calls and the overhead ratio (wall time of a translation over its time inside the
    networks' forward calls). Writes `<out>/perf/perf.csv` when `out` is given. `registry`: e.g. `methods`."""
    import pandas as pd
    import torch

    from eval.harness.preflight import check_options
    from eval.timing import bench, count_network_calls, measure

    if warmup < 0 or repeats < 1 or resolution < 1:
        from eval.errors import ConfigError

        raise ConfigError("perf needs warmup >= 0, repeats >= 1 and resolution >= 1")
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
        size = max(resolution, card.min_size)
        size -= size % card.size_multiple
        # a fresh input per call (made before timing): methods that cache per input (pix2pix-zero's inversions)
        # are timed on their full path, not on cache hits
        batches = iter([_perf_batch(size, batch_size, registry.TranslationInput, seed=i)
                        for i in range(warmup + 2 * repeats)])

        def once(model: Any = model, batches: Any = batches) -> Any:
            gens = [torch.Generator(device=cfg.device).manual_seed(i) for i in range(batch_size)]
            return model.translate(next(batches), generator=gens)

        stats = bench(once, warmup=warmup, repeats=repeats, device=cfg.device)
        # the census and the overhead ratio come from hooked runs: each ratio compares a run with its own time
        # spent inside the networks' forward calls (the latency above is from unhooked runs)
        ratios, net_times = [], []
        for _ in range(repeats):
            with count_network_calls(model.networks(), cfg.device) as calls, measure(cfg.device) as m:
                once()
            net_times.append(sum(c.seconds for c in calls.values()))
            ratios.append(m.seconds / net_times[-1] if net_times[-1] > 0 else math.nan)
        net_s = statistics.median(net_times)
        rows.append({
            "method": v.label, "preset": preset_v, "device": cfg.device, "dtype": cfg.dtype, "resolution": size,
            "batch_size": batch_size, **stats,
            "throughput_img_s": batch_size / stats["latency_median_s"],
            "network_calls": ", ".join(f"{k} x{c.calls}" for k, c in calls.items()) or "none",
            "network_time_s": net_s,
            "overhead": statistics.median(ratios) if net_s > 0 else math.nan,
        })
    df = pd.DataFrame(rows)
    if out is not None:
        from eval.store import atomic_write_text

        atomic_write_text(Path(out) / PERF_CSV, df.to_csv(index=False))
    return df


def perf_table(df: Any) -> str:
    """The perf frame as the text table `benchmark.py perf` prints."""
    show = df[["method", "preset", "resolution", "batch_size", "latency_median_s", "latency_iqr_s",
               "throughput_img_s", "peak_mem_bytes", "network_calls", "overhead"]].copy()
    show["peak_mem_bytes"] = (show["peak_mem_bytes"] / 2**20).round(1)
    show = show.rename(columns={"peak_mem_bytes": "peak_mem_MiB"})
    return (show.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\noverhead = wall time of a "
            "translation / its time inside the networks' forward calls (median over repeats; n/a: the method calls "
            "no network)")
