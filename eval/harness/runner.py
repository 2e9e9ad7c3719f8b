"""The run engine: plan, generate, evaluate and report a benchmark run into its run directory.

A run directory is the unit of reproducibility: outputs are keyed by (method, config hash, weights id, seed,
input hash), written atomically with a sidecar holding the key, so a killed run resumes without recomputing
finished samples and a changed configuration never reuses stale outputs. One failing sample or method is recorded
(error + traceback under failures/) and the run goes on.

The engine sits on top of the project's layers: it reads tasks from `datasets`, scores with `eval`, writes the
report with `reports`, and gets the methods from a registry passed in by the caller (the `methods` package, or
any object with `get(name)`, `list()` and `TranslationInput`), so that `eval` imports nothing from `methods`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.errors import RunLockedError
from eval.harness import progress
from eval.harness.config import RunConfig, Variant
from eval.harness.rundir import (
    DISTRIBUTION_CSV,
    EDIT_TYPE_CSV,
    FAILURES,
    INPUT_FAILURES,
    INPUT_INDEX,
    INPUTS,
    LOCK,
    LOCK_GUARD,
    MANIFEST,
    METRIC_INFO,
    METRICS,
    OUTPUTS,
    PER_IMAGE_CSV,
    PROMPTS_JSON,
)

if TYPE_CHECKING:  # pragma: no cover
    from eval.harness.result import RunResult

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "clean-fid", "lpips", "timm",
            "open_clip_torch", "numpy", "pillow", "pandas", "scikit-image", "pyyaml")
ROOT = Path(__file__).resolve().parents[2]


def sample_seed(run_seed: int, sample_id: str) -> int:
    """Per-sample seed from (run seed, sample id): results do not depend on batch size, order or process count."""
    digest = hashlib.sha256(f"{run_seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)



def _git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
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


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"



class RunLock:
    """One writer per run directory. A lock left by a killed process (its PID is gone) is taken over.

    Checking the owner and taking over happen under an OS file lock (`filelock`, released by the kernel when its
    holder dies), so of two runs that find the same stale lock exactly one takes it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK

    def __enter__(self) -> RunLock:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.parent / LOCK_GUARD):
            return self._take()

    def _take(self) -> RunLock:
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
                    raise RunLockedError(
                        f"{self.path.parent} is locked by pid {pid} on host {host}. If that run is over, "
                        f"delete {self.path}"
                    ) from None
                if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                    raise RunLockedError(
                        f"{self.path.parent} is in use by a running benchmark (pid {pid}). Wait for it, "
                        f"or use another --out; if no such run is going on, delete {self.path}"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {platform.node()}\n")
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

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




def _out_paths(run_dir: Path, method: str, task: str, sample_id: str) -> tuple[Path, Path]:
    base = run_dir / OUTPUTS / method / task
    return base / f"{sample_id}.png", base / f"{sample_id}.json"


def _failure_path(run_dir: Path, method: str, task: str, sample_id: str) -> Path:
    return run_dir / FAILURES / method / task / f"{sample_id}.json"


@dataclass
class _NoSample:
    """Stands for 'no particular sample' in failure records of a whole (method, task) metric."""

    id: str


def _record_failure(run_dir: Path, item: WorkItem, phase: str, err: BaseException, *, metric: str | None = None
                    ) -> None:
    from eval.errors import without_unsafe_advice
    from eval.store import atomic_write_json

    sample = None if isinstance(item.sample, _NoSample) else item.sample.id
    atomic_write_json(_failure_path(run_dir, item.method, item.task, item.sample.id), {
        "method": item.method, "task": item.task, "sample": sample, "metric": metric, "phase": phase, "key": item.key,
        "error": without_unsafe_advice(f"{type(err).__name__}: {err}"),
        "traceback": without_unsafe_advice("".join(traceback.format_exception(type(err), err, err.__traceback__))),
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
    """The prepared inputs, for report grids and metrics that compare against the input or the target.

    Keyed by content: `inputs/<task>/index.json` holds the hash of the prepared pixels each PNG was written from
    and the PNG's sha256; a changed source image or `--resolution` rewrites it, a file edited on disk is rewritten,
    and a role a sample no longer has (its `.target` gone) is removed, so metrics and grids never compare against
    a stale input."""
    from datasets import to_tensor
    from eval.store import atomic_write_json, hash_obj, read_json, sha256_bytes, sha256_file

    folder = run_dir / INPUTS / task
    index_path = folder / INPUT_INDEX
    index = read_json(index_path, {}) or {}
    index = index if isinstance(index, dict) else {}
    for s in samples:
        mask = s.mask.convert("RGB") if s.mask is not None else None  # an edit mask (PIE-Bench's region metrics)
        for suffix, img in (("", s.image), (".condition", s.condition), (".reference", s.reference),
                            (".target", s.target), (".mask", mask)):
            name = f"{s.id}{suffix}.png"
            path = folder / name
            if img is None:
                path.unlink(missing_ok=True)
                index.pop(name, None)
                continue
            content = hash_obj(img.mode, img.size, sha256_bytes(img.tobytes()))
            entry = index.get(name)
            if (isinstance(entry, dict) and entry.get("content") == content and path.is_file()
                    and entry.get("png_sha256") == sha256_file(path)):
                continue
            index[name] = {"content": content, "png_sha256": save_png(to_tensor(img)[0], path)}
    atomic_write_json(index_path, index)
    prompts = {s.id: {"src": s.src_prompt, "tgt": s.tgt_prompt} for s in samples if s.src_prompt or s.tgt_prompt}
    if prompts:  # shown over the text-guided grids of the report
        atomic_write_json(folder / PROMPTS_JSON, prompts)
    else:
        (folder / PROMPTS_JSON).unlink(missing_ok=True)


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
                     make_input: Any, warmup: bool = False) -> int:
    """Translate and save one batch. Out of memory: retry in halves; another error: retry sample by sample, so
    the failure is pinned on the samples that cause it. Returns the number of outputs saved."""
    import torch

    from eval.harness.safety import BatchTimeout, batch_timeout, output_range_error
    from eval.store import atomic_write_json
    from eval.timing import measure

    tensors = [_sample_tensors(it.sample) for it in batch]

    def cat(name: str) -> Any:
        vals = [t[name] for t in tensors]
        return torch.cat(vals) if all(v is not None for v in vals) else None

    try:
        inp = make_input(
            images=cat("images"), condition=cat("condition"), reference=cat("reference"), mask=cat("mask"),
            src_prompts=[it.sample.src_prompt for it in batch], tgt_prompts=[it.sample.tgt_prompt for it in batch],
            direction=direction, ids=[it.sample.id for it in batch],
        )
        model.check_input(inp, batch[0].kind)
        gens = [torch.Generator(device=device).manual_seed(it.seed) for it in batch]
        with batch_timeout(cfg.timeout), measure(device) as m:
            out = model.translate(inp, generator=gens)
        images = out.images
        expected = (len(batch), 3, *inp.size)
        if tuple(images.shape) != expected:
            raise RuntimeError(f"method returned images of shape {tuple(images.shape)}, expected {expected}")
    except KeyboardInterrupt:
        raise
    except BatchTimeout as err:  # retrying would only multiply the wait: the whole batch is recorded
        for it in batch:
            _record_failure(run_dir, it, "timeout", err)
        _log(cfg, f"{batch[0].method}: {err}", err=True)
        return 0
    except BaseException as err:  # noqa: BLE001 - SystemExit or any BaseException of a method is its failure
        oom = _is_oom(err)
        if oom and str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        if len(batch) > 1:
            half = (len(batch) + 1) // 2
            parts = [batch[:half], batch[half:]] if oom else [[it] for it in batch]
            if oom:
                _log(cfg, f"{batch[0].method}: out of memory at batch size {len(batch)}; retrying at {half}", err=True)
            return sum(_translate_batch(model, part, cfg, direction, run_dir, device, make_input, warmup)
                       for part in parts)
        _record_failure(run_dir, batch[0], "translate", err)
        return 0
    saved = 0
    for i, it in enumerate(batch):
        img = images[i]
        if not torch.isfinite(img).all():
            _record_failure(run_dir, it, "translate", FloatingPointError("output contains NaN or inf; not scored"))
            continue
        if (why := output_range_error(img)) is not None:
            _record_failure(run_dir, it, "translate", ValueError(why))
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
    """What one variant has to do in this run (the same on every process: computed before anything is written)."""

    variant: Variant
    items: list[WorkItem]
    pending: list[WorkItem]
    batch: Any = None  # the BatchChoice it translated with (set when it generates)

    @property
    def name(self) -> str:
        return self.variant.label


def _dist_state(cfg: RunConfig) -> Any:
    """accelerate's PartialState when launched with several processes (torchrun, accelerate launch), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState

    # generation between two barriers can take hours on real data: a long collective timeout
    return PartialState(cpu=not cfg.device.startswith("cuda"), timeout=timedelta(hours=24))


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
                atomic_write_json(cfg.out / FAILURES / INPUT_FAILURES / task / f"{_file_safe(sample_id)}.json", {
                    "method": INPUT_FAILURES, "task": task, "sample": sample_id, "phase": "input",
                    "error": f"{type(err).__name__}: {err}", "traceback": ""})

        if record:  # this load decides anew which inputs fail: a fixed file's old record goes
            shutil.rmtree(cfg.out / FAILURES / INPUT_FAILURES / name, ignore_errors=True)
        samples = task.load(cfg.max_samples, on_error=skip)
        if cfg.resolution:
            samples = [_resized(s, cfg.resolution, task.kind) for s in samples]
        _check_ids(name, samples)
        tasks[name] = (task, samples)
    return tasks


def _plan(cfg: RunConfig, variants: list[Variant], tasks: dict[str, tuple[Any, list[Any]]]
          ) -> tuple[list[MethodPlan], list[dict]]:
    """Per variant: its work items (with content keys) and those whose outputs are missing or stale."""
    from eval.store import config_hash

    plans, skipped = [], []
    for v in variants:
        card = v.cls.card
        chash = config_hash(v.config)
        wid = v.cls.weights_identity(v.source)
        items: list[WorkItem] = []
        for tname, (task, samples) in tasks.items():
            if task.kind not in card.kinds:
                skipped.append({"method": v.label, "task": tname,
                                "reason": f"{v.method} does not support {task.kind!r} tasks"})
                continue
            for s in samples:
                seed = sample_seed(cfg.seed, s.id)
                key = hashlib.sha256(json.dumps(
                    [v.method, chash, wid, seed, input_hash(s, task.kind, task.direction), cfg.dtype],
                    default=str).encode()).hexdigest()
                items.append(WorkItem(v.label, tname, task.kind, s, key, seed))
        pending = [it for it in items if not _is_done(cfg.out, it)]
        plans.append(MethodPlan(v, items, pending))
    return plans, skipped


def _start_manifest(cfg: RunConfig, tasks: dict[str, tuple[Any, list[Any]]], plans: list[MethodPlan],
                    world: int) -> dict[str, Any]:
    from eval.store import atomic_write_json, config_hash, read_json

    manifest = read_json(cfg.out / MANIFEST, {}) or {}
    manifest.update({
        "created": manifest.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "git_sha": _git_sha(), "versions": _versions(), "processes": world,
        "device": cfg.device, "device_name": device_name(cfg.device), "dtype": cfg.dtype, "seed": cfg.seed,
        "preset": cfg.preset, "batch_size": cfg.batch_size or "auto", "platform": platform.platform(),
        "run_config": cfg.to_dict(),
    })
    manifest.setdefault("tasks", {})
    manifest.setdefault("methods", {})
    for name, (task, samples) in tasks.items():
        manifest["tasks"][name] = {"kind": task.kind, "n_samples": len(samples), "description": task.description,
                                   "direction": task.direction, "metrics": list(task.metrics),
                                   "resolution": cfg.resolution or task.resolution}
    for p in plans:
        v = p.variant
        card = v.cls.card
        prov = v.cls.weights_provenance(v.source)
        manifest["methods"][v.label] = {
            "method": v.method, "paper": card.paper, "url": card.url, "preset": v.preset, "weights": v.source,
            "weights_id": prov.id, "weights_label": prov.kind,
            "config": v.config, "config_hash": config_hash(v.config),
            **({"optimises": list(card.optimises)} if card.optimises else {}),
            **({"fixes": list(card.fixes)} if card.fixes else {}),
            **({"variants": dict(card.variants)} if card.variants else {}),
            **({"variants_on": card.active_variants(v.config)} if card.active_variants(v.config) else {}),
            **({"reference": True} if card.reference else {}),
        }
    atomic_write_json(cfg.out / MANIFEST, manifest)
    return manifest


def _generate(plan: MethodPlan, mine: list[WorkItem], cfg: RunConfig, device: str,
              tasks: dict[str, tuple[Any, list[Any]]], make_input: Any) -> None:
    """Load the variant's model once and translate this process's share of its pending samples."""
    from eval.errors import without_unsafe_advice

    tqdm = _tqdm(cfg.quiet)
    run_dir = cfg.out
    v = plan.variant
    prog = progress.active()
    try:
        model = v.cls.from_pretrained(None if v.source == "none" else v.source, preset=v.preset,
                                      device=device, dtype=cfg.dtype, **v.overrides)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - SystemExit from a plugin's loader is its failure, not the run's
        for it in mine:
            _record_failure(run_dir, it, "load", err)
        _log(cfg, f"{plan.name}: failed to load: {type(err).__name__}: {without_unsafe_advice(str(err))}", err=True)
        if prog:
            prog.advance(len(mine), f"{plan.name}: failed to load", failed=len(mine))
        return
    by_task: dict[str, list[WorkItem]] = {}
    for it in mine:
        by_task.setdefault(it.task, []).append(it)
    plan.batch = _batch_size(v, cfg, device, mine)
    _log(cfg, f"{plan.name}: batch size {plan.batch.size} ({plan.batch.reason})")
    first = True
    prog = progress.active()
    for tname, titems in by_task.items():
        # one overall bar for the run when a progress session is active, else a bar per (method, task)
        bar = None if prog else tqdm(total=len(titems), desc=f"{plan.name} / {tname}", unit="img", leave=False)
        if prog:
            prog.describe(f"{plan.name} / {tname}")
        for batch in _batches(titems, plan.batch.size):
            n = _translate_batch(model, batch, cfg, tasks[tname][0].direction, run_dir, device, make_input,
                                 warmup=first)
            first = False
            if prog:
                prog.advance(len(batch), f"{plan.name} / {tname}", failed=len(batch) - n)
                continue
            bar.update(len(batch))
            if n < len(batch):
                bar.set_postfix(failed=len(batch) - n)
        if bar is not None:
            bar.close()


def _batch_size(v: Variant, cfg: RunConfig, device: str, items: list[WorkItem]) -> Any:
    """--batch-size, else the size `eval.harness.batching` picks for this method on this device."""
    from eval.harness.batching import choose_batch_size

    tiny = str(v.source).startswith("tiny:") or str(v.source) == "none"
    pixels = max((it.sample.image.size[0] * it.sample.image.size[1] for it in items), default=0)
    return choose_batch_size(v.cls, device=device, tiny=tiny, pixels=pixels, dtype=cfg.dtype,
                             requested=cfg.batch_size)


def run(cfg: RunConfig, *, registry: Any) -> RunResult:
    """Generate outputs for every (method variant, task, sample), then evaluate and report.

    `registry`: where method names resolve (`import methods; run(cfg, registry=methods)`). Everything is checked
    first (devices, dtypes, options, `--set` names, tasks): a `ZooError` before any file is written. Under
    `torchrun` / `accelerate launch` every process runs this: rank 0 takes the run lock and writes the inputs and
    the manifest, every process plans the same work, translates its share (`split_between_processes`), and rank
    0 waits for all, then computes the metrics and the report.
    """
    import contextlib
    from dataclasses import replace

    from eval.harness.preflight import preflight
    from eval.harness.result import RunResult
    from eval.harness.safety import clean_stale_temps, prepare_out_dir
    from eval.harness.threads import apply_thread_policy
    from eval.store import atomic_write_json

    cfg = replace(cfg, methods=list(cfg.methods), tasks=list(cfg.tasks))  # the caller's object stays as given
    variants = preflight(cfg, registry)
    state = _dist_state(cfg)
    main = state is None or state.is_main_process
    world = 1 if state is None else state.num_processes
    device = str(state.device) if state is not None and cfg.device.startswith("cuda") else cfg.device
    tiny = cfg.preset.startswith("tiny") and not cfg.weights and (cfg.eval_preset or cfg.preset) != "paper"
    threads = apply_thread_policy(cfg.threads, tiny=tiny)
    if main:
        _log(cfg, threads.describe())
    run_dir = cfg.out
    rank = 0 if state is None else state.process_index
    if main:
        prepare_out_dir(run_dir)  # a file, a foreign folder or an unwritable place: a message, nothing written
    with RunLock(run_dir) if main else contextlib.nullcontext(), progress.session(run_dir, quiet=cfg.quiet,
                                                                                   rank=rank) as prog:
        tasks = _load_tasks(cfg, record=main)
        if main:
            clean_stale_temps(run_dir)  # half-written files of a killed run (we hold the lock), nothing else
            for name, (_, samples) in tasks.items():
                _save_inputs(run_dir, name, samples)
            _prune_failures(run_dir, [v.label for v in variants], tasks)
        if state is not None:
            state.wait_for_everyone()  # everyone plans against the same files
        plans, skipped = _plan(cfg, variants, tasks)
        if state is not None:
            state.wait_for_everyone()  # nobody writes before everyone has planned
        manifest = _start_manifest(cfg, tasks, plans, world) if main else {}
        # the bar counts rank 0's share (split_between_processes gives it ceil(n / world) of each plan)
        prog.open_bar(sum(-(-len(p.pending) // world) for p in plans), "generate", "img")
        for plan in plans:
            if not plan.pending:
                _log(cfg, f"{plan.name}: all {len(plan.items)} outputs up to date")
                continue
            if main:
                _log(cfg, f"{plan.name}: {len(plan.pending)} to do, {len(plan.items) - len(plan.pending)} up to "
                          f"date (weights {plan.variant.source}, {world} process(es))")
            if state is None:
                _generate(plan, plan.pending, cfg, device, tasks, registry.TranslationInput)
            else:
                with state.split_between_processes(plan.pending) as mine:
                    if mine:
                        _generate(plan, list(mine), cfg, device, tasks, registry.TranslationInput)
        if state is not None:
            state.wait_for_everyone()
        if not main:
            return RunResult(run_dir, main_process=False)
        if cfg.explicit:
            for s in skipped:
                _log(cfg, f"skipped {s['method']} on {s['task']}: {s['reason']}", err=True)
        manifest["skipped"] = skipped
        for p in plans:
            if p.batch is not None:
                manifest["methods"][p.name]["batch_size"] = p.batch.size
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(run_dir / MANIFEST, manifest)
        prog.close_bar()
        if cfg.evaluate:
            _evaluate(run_dir, cfg, [p.name for p in plans], tasks)
            _write_report(run_dir, cfg.figures)
        result = RunResult(run_dir)
        if not cfg.quiet:
            prog.summary(run_dir, _headline(result))
    return result


def _prune_failures(run_dir: Path, labels: list[str], tasks: dict[str, tuple[Any, list[Any]]]) -> None:
    """Failure records of samples that are no longer in a task (removed, renamed, past --max-samples) go: the
    report lists what failed in this run's data, not in an older version of it."""
    from eval.store import read_json

    for label in labels:
        for tname, (_, samples) in tasks.items():
            folder = run_dir / FAILURES / label / tname
            if not folder.is_dir():
                continue
            ids = {s.id for s in samples}
            for rec_path in folder.glob("*.json"):
                rec = read_json(rec_path, {}) or {}
                sample = rec.get("sample") if isinstance(rec, dict) else None
                if sample is not None and sample not in ids:
                    rec_path.unlink(missing_ok=True)


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


def _evaluate(run_dir: Path, cfg: RunConfig, labels: list[str], tasks: dict[str, tuple[Any, list[Any]]]) -> None:
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
    preset = cfg.eval_preset or ("tiny" if cfg.preset.startswith("tiny") else
                                 "full-random" if cfg.preset == "full-random" and not cfg.weights else "paper")
    per_frames, dist_rows, used = [], [], set()
    prog = progress.active()
    todo = [(m, t) for m in labels for t in tasks if (run_dir / OUTPUTS / m / t).is_dir()]
    if prog:
        prog.open_bar(sum(len([n for n in tasks[t][0].metrics if n in specs]) for _, t in todo), "metrics", "metric")
    for method in labels:
        for tname, (task, samples) in tasks.items():
            out_dir = run_dir / OUTPUTS / method / tname
            for old in (run_dir / FAILURES / method / tname).glob("metric-*.json"):
                old.unlink()  # scored anew below: a metric whose cause was fixed is no longer listed as failed
            if not out_dir.is_dir():
                continue
            inputs = run_dir / INPUTS / tname
            records = []
            for s in samples:
                png = out_dir / f"{s.id}.png"
                if not png.exists() or _failure_path(run_dir, method, tname, s.id).exists():
                    continue
                rec = {"method": method, "task": tname, "sample": s.id, "output": png, "input": inputs / f"{s.id}.png",
                       "src_prompt": s.src_prompt, "tgt_prompt": s.tgt_prompt}
                for extra in ("target", "reference", "mask"):
                    path = inputs / f"{s.id}.{extra}.png"
                    rec[extra] = path if path.exists() else None
                records.append(rec)
            names = [m for m in task.metrics if m in specs]
            if not records:
                if prog:
                    prog.advance(len(names))
                continue
            for name in names:
                if prog:
                    prog.describe(f"{name} / {method} / {tname}")
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
                if prog:
                    prog.advance(1, f"{name} / {method} / {tname}")
    if prog:
        prog.close_bar()
    metrics_dir = run_dir / METRICS
    per = pd.concat(per_frames, ignore_index=True) if per_frames else pd.DataFrame(
        columns=["method", "task", "sample", "metric", "value", "weights", "note"])
    per = _with_edit_types(per, tasks, metrics_dir)
    atomic_write_text(metrics_dir / PER_IMAGE_CSV, per.to_csv(index=False))
    atomic_write_text(metrics_dir / DISTRIBUTION_CSV, pd.DataFrame(dist_rows).to_csv(index=False))
    atomic_write_json(metrics_dir / METRIC_INFO, {n: {**specs[n].as_dict(), "eval_preset": preset}
                                                         for n in sorted(used)})


def _with_edit_types(per: Any, tasks: dict[str, tuple[Any, list[Any]]], metrics_dir: Path) -> Any:
    """Editing benchmarks (PIE-Bench): the samples' edit type as a column of the per-image table, and the means per
    edit type in metrics/per_edit_type.csv."""
    from eval.region_metrics import edit_type_means
    from eval.store import atomic_write_text

    types = {(t, s.id): s.edit_type for t, (_, samples) in tasks.items() for s in samples if s.edit_type is not None}
    if not types:
        return per
    per = per.assign(edit_type=[types.get((t, str(s))) for t, s in zip(per["task"], per["sample"])])
    atomic_write_text(metrics_dir / EDIT_TYPE_CSV, edit_type_means(per).to_csv(index=False))
    return per


def _write_report(run_dir: Path, figure_formats: Any = ("png",)) -> tuple[Path, Path]:
    from reports import write_report

    return write_report(run_dir, figure_formats=figure_formats)


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
    prog = progress.active()
    if prog is not None:  # above the bars, and into run.log
        prog.write(msg, err=err)
        return
    if not cfg.quiet or err:
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def _headline(result: Any) -> Any:
    """The small table of the final summary: method x task rows, the first metric columns (means)."""
    try:
        return result.summary()
    except Exception:  # a summary line must never fail a finished run
        return None


def _tqdm(quiet: bool) -> Any:
    from functools import partial

    from tqdm.auto import tqdm

    return partial(tqdm, disable=quiet)

