"""The batch size a run translates with when `--batch-size` is not given: chosen per method from the device.

Only methods whose results do not depend on the batch (`Translator.batch_equivalence` "float" or
"float-guided": a batch equals its samples run one by one up to float rounding) are batched by default; a method
that quantises between stages ("8bit-handoff", PITI) runs one sample at a time unless `--batch-size` asks for
more, so a default run's outputs are those of one-by-one translation within the method's own contract. Every
sample keeps its own generator seeded from (run seed, sample id), and outputs are keyed per sample, so resuming
and caching never depend on the batch size.

- CPU, tiny presets: `CPU_TINY_BATCH`. Measured on a 2-core CPU with one intra-op thread (8 samples of 64 px,
  CPU seconds at batch 1 / 4 / 8): sdedit 0.51 / 0.29 / 0.30, pix2pix-turbo 0.27 / 0.18 / 0.21, pix2pix-zero
  3.01 / 1.03 / 0.82, DiffuseIT text-guided 10.3 / 8.1 / 7.9 (image-guided 6.3 / 6.2 / 6.2): toy-size networks
  spend most of a call in per-call overhead, which a batch shares; 4 and 8 are on a plateau.
- CPU, full-size networks: 1 (their kernels already fill the cores; a batch only adds memory).
- CUDA: as many samples as fit in `CUDA_MEMORY_FRACTION` of the free memory after the model is loaded, at a
  per-sample estimate (`CUDA_BYTES_PER_MEGAPIXEL` for full-size networks in float32, half that in 16-bit types),
  capped at `CUDA_MAX_BATCH`. The estimate is rough on purpose: a batch that runs out of memory is retried in
  halves by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BATCHED_CONTRACTS = ("float", "float-guided")
CPU_TINY_BATCH = 8
CUDA_MAX_BATCH = 16
CUDA_TINY_BATCH = 16
CUDA_MEMORY_FRACTION = 0.7
CUDA_BYTES_PER_MEGAPIXEL = 6 * 2**30  # activations of one 1024x1024 float32 sample of a full-size diffusion UNet


@dataclass(frozen=True)
class BatchChoice:
    size: int
    reason: str


def choose_batch_size(method_cls: Any, *, device: str, tiny: bool, pixels: int, dtype: str = "float32",
                      requested: int | None = None, free_bytes: int | None = None) -> BatchChoice:
    """The batch size for one method variant. `pixels`: H x W of its largest input; `free_bytes`: free device
    memory (CUDA; read from the device when None); `requested`: --batch-size, which always wins."""
    if requested is not None:
        return BatchChoice(int(requested), "--batch-size")
    contract = getattr(method_cls, "batch_equivalence", "float")
    if contract not in BATCHED_CONTRACTS:
        return BatchChoice(1, f"batch contract {contract!r}: one sample at a time unless --batch-size")
    if not str(device).startswith("cuda"):
        if tiny:
            return BatchChoice(CPU_TINY_BATCH, "CPU, tiny networks: a batch shares the per-call overhead")
        return BatchChoice(1, "CPU, full-size networks")
    if tiny:
        return BatchChoice(CUDA_TINY_BATCH, "CUDA, tiny networks")
    if free_bytes is None:
        import torch

        free_bytes, _ = torch.cuda.mem_get_info(device)
    per_sample = CUDA_BYTES_PER_MEGAPIXEL * max(pixels, 1) / 2**20
    if dtype in ("float16", "bfloat16"):
        per_sample /= 2
    n = int(CUDA_MEMORY_FRACTION * free_bytes // per_sample)
    n = max(1, min(CUDA_MAX_BATCH, n))
    return BatchChoice(n, f"CUDA: {free_bytes / 2**30:.1f} GiB free, ~{per_sample / 2**30:.2f} GiB per sample")
