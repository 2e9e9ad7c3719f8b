"""Training of pix2pix-turbo (paired) and CycleGAN-Turbo (unpaired) under Hugging Face Accelerate (imports torch).

Follows the authors' loops (GaParmar/img2img-turbo `src/train_pix2pix_turbo.py`,
`src/train_cyclegan_turbo.py`):

paired, per batch:   (1) L2 * 1 + LPIPS-VGG * 5 + CLIP-sim * 5 -> G step; (2) fresh forward, GAN-G * 0.5 -> G step;
                     (3) D on real targets -> D step; (4) D on the step-2 fakes (detached) -> D step.
unpaired, per batch: (1) cycle L1 * 1 + LPIPS * 10, both ways -> G step; (2) GAN-G * 0.5, both ways -> G step;
                     (3) identity L1 * 1 + LPIPS * 1 -> G step; (4) D fakes -> D step; (5) D reals -> D step.
                     (Three generator optimizer steps per batch, the lr scheduler stepped with each.)

Fixed upstream bugs (GaParmar/img2img-turbo issue #56, PR #62), said again where the code does it:
- the generator's adversarial backward never reaches the discriminator: during G steps the discriminator heads
  are frozen (requires_grad=False) and called unwrapped, so no gradient is left in them (upstream pix2pix leaves
  them in and then steps D with them; upstream CycleGAN zeroes them after the fact);
- the unpaired checkpoint stores the trained UNet conv_in (upstream saved only its LoRA; convert.py);
- the skip-conv base weights train in the unpaired model too (PEFT had frozen them upstream; generator.py).
Other differences: validation/checkpoints at multiples of N (upstream: step % N == 1); validation_num_images=N
means N images (upstream's `idx > N` let N+1 through); mixed precision is accelerate autocast with fp32 master
weights (upstream paired casts the whole networks to bf16/fp16); one frozen CLIP backbone is shared by the
CLIP-sim loss and the discriminators (upstream loads it once per discriminator); W&B logging is replaced by
`train_log.jsonl`, sample-grid PNGs and a tqdm bar with the losses.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eval.store import atomic_path, atomic_write_json, atomic_write_text

from ..base import InputError
from .defaults import resolve_train_config
from .discriminator import ClipFeatures, VisionAidedDiscriminator, build_discriminator
from .generator import set_trainable

UNPAIRED_MIXED_PRECISION_WARNING = (
    "cyclegan-turbo: {mp} mixed-precision training is known to collapse to identity outputs (no translation); the "
    "author trains without mixed precision (img2img-turbo issues #53, #84, #87). Use mixed_precision='no' unless "
    "you have to."
)


# --- data -------------------------------------------------------------------------------------------------------------
def dataset_root(data: Any) -> Path:
    """The dataset root of a `datasets.Task` (from the path of its first sample: <root>/test_A/x.png) or a folder."""
    if isinstance(data, (str, os.PathLike)):
        root = Path(data).expanduser()
    else:
        samples = data.loader() if hasattr(data, "loader") else None
        first = samples[0] if samples is not None and len(samples) else None
        if first is None or not getattr(first, "path", None):
            raise InputError(f"cannot find the training data of {getattr(data, 'name', data)!r}: pass the dataset "
                             "root folder (train_A/ train_B/ ...) instead")
        root = Path(first.path).resolve().parent.parent
    if not root.is_dir():
        raise InputError(f"training data folder {root} does not exist")
    return root


def _to_tensor(img: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _sample_generator(seed: int, *keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + sum(k * 7919 ** (i + 1) for i, k in enumerate(keys))) % (2**63 - 1))
    return g


def _prep(img: Any, resolution: int, how: str, g: torch.Generator) -> torch.Tensor:
    """'resized_crop' (resize short side + centre crop: resized_crop_512) or 'resize_randomcrop_hflip'
    (resize_286_randomcrop_256x256_hflip, scaled to `resolution`)."""
    from PIL import Image

    from datasets.images import prepare

    if how == "resized_crop":
        return _to_tensor(prepare(img, resolution))
    if how != "resize_randomcrop_hflip":
        raise InputError(f"unknown train_img_prep {how!r}; use 'resized_crop' or 'resize_randomcrop_hflip'")
    load = round(resolution * 286 / 256)
    t = _to_tensor(img.convert("RGB").resize((load, load), Image.Resampling.LANCZOS))
    top = int(torch.randint(0, load - resolution + 1, (1,), generator=g))
    left = int(torch.randint(0, load - resolution + 1, (1,), generator=g))
    t = t[:, top:top + resolution, left:left + resolution]
    if float(torch.rand(1, generator=g)) < 0.5:
        t = t.flip(-1)
    return t


@dataclass
class Batch:
    src: torch.Tensor
    tgt: torch.Tensor
    captions: list[str]


class PairedData:
    """train_A (conditions, [0, 1]) / train_B (targets, [-1, 1]) / train_prompts.json (PairedDataset)."""

    def __init__(self, root: Path, resolution: int, split: str = "train"):
        from datasets import layouts

        self.samples = layouts.load_paired(root, split=split)
        self.resolution = resolution
        if not len(self.samples):
            raise InputError(f"{root}: no {split} pairs")

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: Sequence[int], seed: int, epoch: int) -> Batch:
        from datasets.images import prepare

        src, tgt, caps = [], [], []
        for i in indices:
            s = self.samples[i]
            src.append(_to_tensor(prepare(s.condition, self.resolution)))
            tgt.append(_to_tensor(prepare(s.target, self.resolution)) * 2 - 1)
            caps.append(s.tgt_prompt or "")
        return Batch(torch.stack(src), torch.stack(tgt), caps)


class UnpairedData:
    """train_A / train_B + fixed captions (UnpairedDataset): length |A| + |B|; source A[i] (a random A past |A|),
    target always a random B; images in [-1, 1]."""

    def __init__(self, root: Path, resolution: int, prep: str, captions: tuple[str, str], split: str = "train"):
        from datasets import layouts

        self.a = layouts.load_unpaired(root, split=split, direction="a2b", default_prompts=captions)
        self.b = layouts.load_unpaired(root, split=split, direction="b2a", default_prompts=captions)
        self.resolution, self.prep = resolution, prep
        self.captions = captions

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def batch(self, indices: Sequence[int], seed: int, epoch: int) -> Batch:
        src, tgt = [], []
        for i in indices:
            g = _sample_generator(seed, epoch, i)
            ia = i if i < len(self.a) else int(torch.randint(0, len(self.a), (1,), generator=g))
            ib = int(torch.randint(0, len(self.b), (1,), generator=g))
            src.append(_prep(self.a[ia].image, self.resolution, self.prep, g) * 2 - 1)
            tgt.append(_prep(self.b[ib].image, self.resolution, self.prep, g) * 2 - 1)
        return Batch(torch.stack(src), torch.stack(tgt), [self.captions[1]] * len(indices))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """A seeded shuffle per epoch (DataLoader(shuffle=True)), sharded over processes, last batch kept."""
    order = torch.randperm(n, generator=_sample_generator(seed, epoch, -1)).tolist()
    per = math.ceil(n / world)
    order = (order * world)[:per * world][rank::world]  # equal shards (DDP needs the same number of steps)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# --- optimizer state in safetensors (no pickle) -----------------------------------------------------------------------
def save_optimizer(opt: Any, path: Path) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(path.with_suffix(".json"), {"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer(opt: Any, path: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads(path.with_suffix(".json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, v in load_file(str(path.with_suffix(".safetensors"))).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


# --- the trainer ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Freeze a module's parameters for a block (the fix for the D-gradient leak of the generator step)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def generator_adversarial_loss(disc: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """`net_disc(fake, for_G=True).mean()` with the discriminator frozen: the gradient reaches the generator through
    `fake` but leaves nothing in the discriminator (fixes upstream issue #56 / PR #62, where the generator's
    backward filled D's .grad and pix2pix then stepped D with it)."""
    with frozen(disc):
        return disc(fake, for_G=True).mean()


def make_accelerator(cfg: dict[str, Any], device: Any) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    kw = dict(gradient_accumulation_steps=int(cfg["gradient_accumulation_steps"]),
              mixed_precision=cfg["mixed_precision"], cpu=str(device) == "cpu")
    try:
        return Accelerator(**kw)
    except ValueError:  # a previous fit in this process set another mixed precision: start a fresh state
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kw)


class Trainer:
    """Shared machinery: accelerator, optimizers, schedulers, checkpoints, resume, logs, validation, grids."""

    kind: str = ""
    n_g_sched_steps: int = 1

    def __init__(self, model: Any, cfg: dict[str, Any], root: Path, eval_preset: str, callback: Any = None):
        self.model, self.cfg, self.root, self.eval_preset, self.callback = model, cfg, root, eval_preset, callback
        self.out = Path(cfg["output_dir"]) if cfg["output_dir"] else None
        self.acc = make_accelerator(cfg, model.device)
        self.device = self.acc.device
        if cfg["allow_tf32"] and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.gen = model.gen.to(self.device)
        if next(self.gen.parameters()).dtype != torch.float32:
            raise InputError("train in float32 weights (load with dtype=float32); use mixed_precision='bf16'/'fp16' "
                             "for lower-precision compute")
        self.g_params = set_trainable(self.gen)
        self.gen.train()
        if cfg["gradient_checkpointing"]:
            self.gen.unet.enable_gradient_checkpointing()
            for d in self.gen.directions:
                self.gen.vae_for(d).enable_gradient_checkpointing()
        from eval.clip import IMG2IMG_TURBO_CLIP, load_clip
        from eval.lpips_net import load_lpips

        # real weights are required for real training (a random CLIP/VGG loss is no loss): strict for "paper"
        strict = eval_preset == "paper"
        self.lpips = load_lpips("vgg", eval_preset, str(self.device), strict=strict)  # lpips.LPIPS(net='vgg')
        self.clip = load_clip(IMG2IMG_TURBO_CLIP, eval_preset, str(self.device), strict=strict)  # ViT-B/32
        self.features = ClipFeatures(self.clip)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history = model.history = []
        self.bar = None

    # -- pieces every loop needs ---------------------------------------------------------------------------------------
    def optimizer(self, params: list[nn.Parameter]) -> Any:
        c = self.cfg
        return torch.optim.AdamW(params, lr=float(c["learning_rate"]), betas=(c["adam_beta1"], c["adam_beta2"]),
                                 weight_decay=c["adam_weight_decay"], eps=c["adam_epsilon"])

    def scheduler(self, opt: Any, steps_per_batch: int) -> Any:
        from diffusers.optimization import get_scheduler

        c, n = self.cfg, self.acc.num_processes
        total = int(self.max_steps * steps_per_batch * n)
        return get_scheduler(c["lr_scheduler"], optimizer=opt, num_warmup_steps=int(c["lr_warmup_steps"]) * n,
                             num_training_steps=total, num_cycles=int(c["lr_num_cycles"]), power=float(c["lr_power"]))

    def discriminator(self, loss_type: str, seed: int) -> VisionAidedDiscriminator:
        return build_discriminator(self.eval_preset, self.device, loss_type, features=self.features, seed=seed)

    def lpips_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS of [-1, 1] images (lpips.LPIPS(net='vgg')(a, b), normalize=False), batch mean."""
        return self.lpips((a.float() + 1) / 2, (b.float() + 1) / 2).mean()

    def text(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.model.prompt_encoder(list(prompts)).to(self.device).float()

    def g_step(self, loss: torch.Tensor, opt: Any, sched: Any) -> None:
        self.acc.backward(loss)
        if self.acc.sync_gradients:
            self.acc.clip_grad_norm_(self.g_params, float(self.cfg["max_grad_norm"]))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    def d_step(self, loss: torch.Tensor, opt: Any, sched: Any | None, params: list[nn.Parameter]) -> None:
        self.acc.backward(loss)
        if self.acc.sync_gradients:
            self.acc.clip_grad_norm_(params, float(self.cfg["max_grad_norm"]))
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)

    def gan_g_loss(self, disc: Any, fake: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss on the unwrapped discriminator (no DDP sync for a frozen module)."""
        return generator_adversarial_loss(self.acc.unwrap_model(disc), fake)

    # -- loop ----------------------------------------------------------------------------------------------------------
    @property
    def max_steps(self) -> int:
        return int(self._max_steps)

    def _plan(self, n_items: int) -> None:
        c = self.cfg
        per_epoch = math.ceil(math.ceil(n_items / self.acc.num_processes) / int(c["train_batch_size"]))
        per_epoch = max(1, per_epoch // int(c["gradient_accumulation_steps"]))
        epochs = int(c.get("num_training_epochs") or c.get("max_train_epochs") or 1)
        limit = c["max_train_steps"]
        self._max_steps = min(int(limit), epochs * per_epoch) if limit else epochs * per_epoch
        self.epochs = epochs

    def iterate(self, data: Any) -> Iterator[Batch]:
        c = self.cfg
        while self.epoch < self.epochs and self.step < self.max_steps:
            batches = epoch_batches(len(data), int(c["train_batch_size"]), int(c["seed"]), self.epoch,
                                    self.acc.process_index, self.acc.num_processes)
            while self.batch_in_epoch < len(batches) and self.step < self.max_steps:
                idx = batches[self.batch_in_epoch]
                self.batch_in_epoch += 1
                b = data.batch(idx, int(c["seed"]), self.epoch)
                yield Batch(b.src.to(self.device), b.tgt.to(self.device), b.captions)
            if self.batch_in_epoch >= len(batches):
                self.epoch += 1
                self.batch_in_epoch = 0

    def after_step(self, logs: dict[str, float], grid: Any = None) -> None:
        """Bookkeeping once per optimisation step: progress, log, grids, validation, checkpoints."""
        if not self.acc.sync_gradients:
            return
        self.step += 1
        c = self.cfg
        rec = {"step": self.step, **{k: round(float(v), 6) for k, v in logs.items()}}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
        if self.acc.is_main_process:
            if int(c["viz_freq"]) and self.step % int(c["viz_freq"]) == 0 and self.out is not None and grid is not None:
                self.save_grid(grid())
            if int(c["validation_steps"]) and self.step % int(c["validation_steps"]) == 0:
                rec.update(self.validate())
        if self.step % max(1, int(c["log_every"])) == 0 or len(rec) > 1 + len(logs):
            self.history.append(rec)
            self.write_log()
        if self.callback is not None:
            self.callback(self.step, rec)
        if int(c["checkpointing_steps"]) and self.step % int(c["checkpointing_steps"]) == 0:
            self.checkpoint()

    def write_log(self) -> None:
        if self.out is not None and self.acc.is_main_process:
            atomic_write_text(self.out / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    def save_grid(self, rows: list[torch.Tensor]) -> None:
        """One PNG per visualisation step: each row a batch of [-1, 1] images (inputs, outputs, targets...)."""
        import numpy as np
        from PIL import Image

        rows = [r.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5 for r in rows]
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
        arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        with atomic_path(self.out / "samples" / f"step-{self.step:06d}.png") as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def state_modules(self) -> dict[str, Any]:
        raise NotImplementedError

    def checkpoint(self) -> Path | None:
        """A resumable checkpoint: the model (project format) + discriminator heads + optimizer states + RNG."""
        if self.out is None:
            return None
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return None
        from safetensors.torch import save_file

        self.sync_model_record()
        ckpt_root = self.out / "checkpoints"
        dest = ckpt_root / f"step-{self.step:06d}"
        tmp = ckpt_root / f".step-{self.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "model")
        for name, obj in self.state_modules().items():
            if isinstance(obj, nn.Module):
                sd = {k: v.detach().cpu().contiguous() for k, v in self.acc.unwrap_model(obj).state_dict().items()}
                save_file(sd, str(tmp / f"{name}.safetensors"))
            else:
                save_optimizer(obj, tmp / name)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "trainer_state.json", {"step": self.step, "epoch": self.epoch,
                                                       "batch_in_epoch": self.batch_in_epoch, "config": self.cfg})
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        keep = int(self.cfg["checkpoints_total_limit"] or 0)
        old = sorted(ckpt_root.glob("step-*"))
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
        return dest

    def resume(self) -> bool:
        """Seed everything (accelerate's set_seed, as upstream), then continue from the latest checkpoint if any.

        Seeding happens here, after every network is built, because a first-time load of a loss network may
        reseed the global RNG: seeding earlier made the first run of a process differ from later ones."""
        from accelerate.utils import set_seed

        set_seed(int(self.cfg["seed"]))
        if self.out is None or not self.cfg["resume"]:
            return False
        ckpts = sorted(p for p in (self.out / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file())
        if not ckpts:
            return False
        from safetensors.torch import load_file

        from .convert import WEIGHTS_FILE, load_tensors

        last = ckpts[-1]
        load_tensors(self.acc.unwrap_model(self.gen), load_file(str(last / "model" / WEIGHTS_FILE)), where=str(last))
        for name, obj in self.state_modules().items():
            if isinstance(obj, nn.Module):
                self.acc.unwrap_model(obj).load_state_dict(load_file(str(last / f"{name}.safetensors")))
            else:
                load_optimizer(obj, last / name)
        rng = load_file(str(last / "rng.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if states:
                torch.cuda.set_rng_state_all(states)
        st = json.loads((last / "trainer_state.json").read_text())
        self.step, self.epoch, self.batch_in_epoch = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        with warnings.catch_warnings():  # replay the scheduler steps taken (any diffusers schedule)
            warnings.simplefilter("ignore")
            for _, sched, per_batch in self.schedulers():
                for _ in range(self.step * per_batch):
                    sched.step()
        if self.out is not None and (self.out / "train_log.jsonl").is_file():
            self.history[:] = [json.loads(line) for line in (self.out / "train_log.jsonl").read_text().splitlines()
                               if line.strip() and json.loads(line).get("step", 0) <= self.step]
        return True

    def schedulers(self) -> list[tuple[str, Any, int]]:
        raise NotImplementedError

    def sync_model_record(self) -> None:
        """Keep the Translator's provenance in step with the training state (saved with the model)."""
        ld = self.model.loaded
        ld.trained, ld.trained_steps = True, self.step
        ld.origin = f"trained on {self.root} ({self.kind}, {self.step} steps)"
        ld.weights_id = self.model.weights_id = f"{ld.extra.get('base_weights_id', ld.base)}+trained:{self.root.name}" \
            f"@step{self.step}"

    def finish(self) -> None:
        self.acc.wait_for_everyone()
        if self.out is not None and self.step and not (self.out / "checkpoints" / f"step-{self.step:06d}").exists():
            self.checkpoint()
        self.sync_model_record()
        self.gen.requires_grad_(False).eval()
        if self.cfg["gradient_checkpointing"]:
            self.gen.unet.disable_gradient_checkpointing()
            for d in self.gen.directions:
                self.gen.vae_for(d).disable_gradient_checkpointing()
        self.model.prompt_encoder.clear()
        self.write_log()

    def progress(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.max_steps, initial=self.step, desc=f"train {self.model.card.name}",
                        disable=bool(self.cfg["quiet"]) or not self.acc.is_local_main_process)

    # -- validation helpers -----------------------------------------------------------------------------------------
    def _fid(self, gen_images: torch.Tensor, ref_images: torch.Tensor) -> float:
        from eval.metrics import compute_fid

        if len(gen_images) < 2 or len(ref_images) < 2:
            return float("nan")
        try:
            return float(compute_fid(gen_images, ref_images, preset=self.eval_preset, device=str(self.device),
                                     cache=False)["value"])
        except Exception as e:  # a degenerate covariance on tiny sets must not stop training
            warnings.warn(f"validation FID failed: {type(e).__name__}: {e}", stacklevel=2)
            return float("nan")


def _translate_eval(gen: Any, x: torch.Tensor, emb: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
    with torch.no_grad():
        return gen(x, emb, direction=direction)


class PairedTrainer(Trainer):
    kind = "paired"

    def run(self) -> None:
        c = self.cfg
        data = PairedData(self.root, int(c["resolution"]))
        self._plan(len(data))
        self.disc = self.discriminator(c["gan_loss_type"], int(c["seed"]))
        opt_g, opt_d = self.optimizer(self.g_params), self.optimizer(self.disc.trainable_parameters())
        sched_g, sched_d = self.scheduler(opt_g, 2), self.scheduler(opt_d, 1)
        self.gen, self.disc, self.opt_g, self.opt_d, self.sched_g, self.sched_d = self.acc.prepare(
            self.gen, self.disc, opt_g, opt_d, sched_g, sched_d)
        self.resume()
        self.progress()
        lam = {k: float(c[k]) for k in ("lambda_l2", "lambda_lpips", "lambda_clipsim", "lambda_gan")}
        d_params = self.acc.unwrap_model(self.disc).trainable_parameters()
        for batch in self.iterate(data):
            with self.acc.accumulate(self.gen, self.disc):
                emb = self.text(batch.captions)
                x_src, x_tgt = batch.src, batch.tgt
                # (1) reconstruction: L2 + LPIPS + CLIP similarity
                pred = self.gen(x_src, emb)
                loss_l2 = F.mse_loss(pred.float(), x_tgt.float()) * lam["lambda_l2"]
                loss_lpips = self.lpips_loss(pred, x_tgt) * lam["lambda_lpips"]
                loss = loss_l2 + loss_lpips
                loss_clipsim = torch.zeros((), device=self.device)
                if lam["lambda_clipsim"] > 0:
                    loss_clipsim = self.clipsim_loss(pred, batch.captions)
                    loss = loss + loss_clipsim * lam["lambda_clipsim"]
                self.g_step(loss, self.opt_g, self.sched_g)
                # (2) generator adversarial step on a fresh forward (D frozen: no gradient reaches it)
                pred = self.gen(x_src, emb)
                loss_g = self.gan_g_loss(self.disc, pred) * lam["lambda_gan"]
                self.g_step(loss_g, self.opt_g, self.sched_g)
                # (3) D on real, (4) D on the fakes of step 2
                loss_d_real = self.disc(x_tgt.detach(), for_real=True).mean() * lam["lambda_gan"]
                self.d_step(loss_d_real, self.opt_d, self.sched_d, d_params)
                loss_d_fake = self.disc(pred.detach(), for_real=False).mean() * lam["lambda_gan"]
                self.d_step(loss_d_fake, self.opt_d, None, d_params)
            logs = {"loss_l2": loss_l2.item(), "loss_lpips": loss_lpips.item(), "loss_clipsim": loss_clipsim.item(),
                    "lossG": loss_g.item(), "lossD": loss_d_real.item() + loss_d_fake.item()}
            self.after_step(logs, grid=lambda s=x_src, t=x_tgt, p=pred: [s * 2 - 1, p, t])
        self.bar.close()
        self.finish()

    def clipsim_loss(self, pred: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """1 - logits_per_image.mean() / 100 with OpenAI CLIP (logit scale 100): the mean cosine over the whole
        B x B image-caption matrix, as upstream computes it (off-diagonal pairs included)."""
        img = self.clip.encode_image((pred.float() + 1) / 2, resize="squash")
        with torch.no_grad():
            txt = self.clip.encode_text(list(captions))
        return 1 - (img @ txt.T).mean()

    def schedulers(self) -> list[tuple[str, Any, int]]:
        return [("sched_g", self.sched_g, 2), ("sched_d", self.sched_d, 1)]

    def state_modules(self) -> dict[str, Any]:
        return {"disc": self.disc, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def validate(self) -> dict[str, float]:
        """Val L2, LPIPS, CLIP-sim on the first num_samples_eval test pairs, and FID vs test_B (track_val_fid)."""
        c = self.cfg
        try:
            data = PairedData(self.root, int(c["resolution"]), split="test")
        except Exception as e:  # no test split: nothing to validate on
            warnings.warn(f"no paired validation: {e}", stacklevel=2)
            return {}
        n = min(len(data), int(c["num_samples_eval"]))
        gen = self.acc.unwrap_model(self.gen)
        gen.eval()
        outs, tgts, l2, lp, cs = [], [], [], [], []
        for i in range(n):
            b = data.batch([i], 0, 0)
            x, t = b.src.to(self.device), b.tgt.to(self.device)
            with torch.no_grad():
                y = _translate_eval(gen, x, self.text(b.captions))
                l2.append(F.mse_loss(y.float(), t).item())
                lp.append(self.lpips_loss(y, t).item())
                cs.append(1 - self.clipsim_loss(y, b.captions).item())
            outs.append((y.float().cpu() + 1) / 2)
            tgts.append((t.cpu() + 1) / 2)
        gen.train()
        out = {"val/l2": sum(l2) / n, "val/lpips": sum(lp) / n, "val/clipsim": sum(cs) / n}
        if c["track_val_fid"]:
            out["val/fid"] = self._fid(torch.cat(outs).clamp(0, 1), torch.cat(tgts).clamp(0, 1))
        return out


class UnpairedTrainer(Trainer):
    kind = "unpaired"

    def run(self) -> None:
        c = self.cfg
        if c["mixed_precision"] != "no":
            warnings.warn(UNPAIRED_MIXED_PRECISION_WARNING.format(mp=c["mixed_precision"]), stacklevel=3)
        self.captions = self.fixed_captions()
        data = UnpairedData(self.root, int(c["resolution"]), c["train_img_prep"], self.captions)
        self._plan(len(data))
        # net_disc_a judges fake B against real B, net_disc_b fake A against real A (the authors' naming)
        self.disc_a = self.discriminator(c["gan_loss_type"], int(c["seed"]))
        self.disc_b = self.discriminator(c["gan_loss_type"], int(c["seed"]) + 1)
        d_params = self.disc_a.trainable_parameters() + self.disc_b.trainable_parameters()
        opt_g, opt_d = self.optimizer(self.g_params), self.optimizer(d_params)
        sched_g, sched_d = self.scheduler(opt_g, 3), self.scheduler(opt_d, 2)
        (self.gen, self.disc_a, self.disc_b, self.opt_g, self.opt_d, self.sched_g,
         self.sched_d) = self.acc.prepare(self.gen, self.disc_a, self.disc_b, opt_g, opt_d, sched_g, sched_d)
        d_params = (self.acc.unwrap_model(self.disc_a).trainable_parameters()
                    + self.acc.unwrap_model(self.disc_b).trainable_parameters())
        self.resume()
        self.progress()
        lam = {k: float(c[k]) for k in ("lambda_gan", "lambda_idt", "lambda_cycle", "lambda_cycle_lpips",
                                          "lambda_idt_lpips")}
        emb_a2b_base = self.text([self.captions[1]])  # fixed_caption_tgt: a->b is conditioned on prompt B
        emb_b2a_base = self.text([self.captions[0]])
        G = self.gen
        for batch in self.iterate(data):
            with self.acc.accumulate(self.gen, self.disc_a, self.disc_b):
                img_a, img_b = batch.src, batch.tgt
                bsz = img_a.shape[0]
                emb_a2b, emb_b2a = emb_a2b_base.expand(bsz, -1, -1), emb_b2a_base.expand(bsz, -1, -1)
                # (1) cycle: A -> fake B -> rec A and B -> fake A -> rec B
                cyc_fake_b = G(img_a, emb_a2b, direction="a2b")
                cyc_rec_a = G(cyc_fake_b, emb_b2a, direction="b2a")
                loss_cycle_a = (F.l1_loss(cyc_rec_a, img_a) * lam["lambda_cycle"]
                                + self.lpips_loss(cyc_rec_a, img_a) * lam["lambda_cycle_lpips"])
                cyc_fake_a = G(img_b, emb_b2a, direction="b2a")
                cyc_rec_b = G(cyc_fake_a, emb_a2b, direction="a2b")
                loss_cycle_b = (F.l1_loss(cyc_rec_b, img_b) * lam["lambda_cycle"]
                                + self.lpips_loss(cyc_rec_b, img_b) * lam["lambda_cycle_lpips"])
                self.g_step(loss_cycle_a + loss_cycle_b, self.opt_g, self.sched_g)
                # (2) GAN, generator side (discriminators frozen: no gradient reaches them)
                fake_a = G(img_b, emb_b2a, direction="b2a")
                fake_b = G(img_a, emb_a2b, direction="a2b")
                loss_gan_a = self.gan_g_loss(self.disc_a, fake_b) * lam["lambda_gan"]
                loss_gan_b = self.gan_g_loss(self.disc_b, fake_a) * lam["lambda_gan"]
                self.g_step(loss_gan_a + loss_gan_b, self.opt_g, self.sched_g)
                # (3) identity
                idt_a = G(img_b, emb_a2b, direction="a2b")
                loss_idt_a = (F.l1_loss(idt_a, img_b) * lam["lambda_idt"]
                              + self.lpips_loss(idt_a, img_b) * lam["lambda_idt_lpips"])
                idt_b = G(img_a, emb_b2a, direction="b2a")
                loss_idt_b = (F.l1_loss(idt_b, img_a) * lam["lambda_idt"]
                              + self.lpips_loss(idt_b, img_a) * lam["lambda_idt_lpips"])
                self.g_step(loss_idt_a + loss_idt_b, self.opt_g, self.sched_g)
                # (4) D on fakes, (5) D on reals
                loss_d_a_fake = self.disc_a(fake_b.detach(), for_real=False).mean() * lam["lambda_gan"]
                loss_d_b_fake = self.disc_b(fake_a.detach(), for_real=False).mean() * lam["lambda_gan"]
                self.d_step((loss_d_a_fake + loss_d_b_fake) * 0.5, self.opt_d, self.sched_d, d_params)
                loss_d_a_real = self.disc_a(img_b, for_real=True).mean() * lam["lambda_gan"]
                loss_d_b_real = self.disc_b(img_a, for_real=True).mean() * lam["lambda_gan"]
                self.d_step((loss_d_a_real + loss_d_b_real) * 0.5, self.opt_d, self.sched_d, d_params)
            logs = {"cycle_a": loss_cycle_a.item(), "cycle_b": loss_cycle_b.item(), "gan_a": loss_gan_a.item(),
                    "gan_b": loss_gan_b.item(), "disc_a": loss_d_a_fake.item() + loss_d_a_real.item(),
                    "disc_b": loss_d_b_fake.item() + loss_d_b_real.item(), "idt_a": loss_idt_a.item(),
                    "idt_b": loss_idt_b.item()}
            self.after_step(logs, grid=lambda a=img_a, b=img_b, fb=fake_b, fa=fake_a, ra=cyc_rec_a, rb=cyc_rec_b:
                            [a, fb, ra, b, fa, rb])
        self.bar.close()
        self.model.loaded.fixed_prompts = {"a2b": self.captions[1], "b2a": self.captions[0]}
        self.finish()

    def fixed_captions(self) -> tuple[str, str]:
        from datasets import layouts

        a, b = layouts.unpaired_prompts(self.root)
        task = getattr(self, "task", None)
        if (a is None or b is None) and task is not None:  # e.g. a CycleGAN layout with recipe prompts
            s = task.load(1)[0]
            pa, pb = (s.src_prompt, s.tgt_prompt) if task.direction == "a2b" else (s.tgt_prompt, s.src_prompt)
            a, b = a or pa, b or pb
        if not a or not b:
            raise InputError(f"{self.root}: unpaired training needs the fixed captions fixed_prompt_a.txt and "
                             "fixed_prompt_b.txt (one line each: the caption of domain A / B)")
        return a, b

    def schedulers(self) -> list[tuple[str, Any, int]]:
        return [("sched_g", self.sched_g, 3), ("sched_d", self.sched_d, 2)]

    def state_modules(self) -> dict[str, Any]:
        return {"disc_a": self.disc_a, "disc_b": self.disc_b, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def validate(self) -> dict[str, float]:
        """FID (vs the other domain's test images) and DINO-struct (vs the inputs) for a->b and b->a."""
        from datasets import layouts
        from datasets.images import prepare
        from eval.metrics import get_metric

        c = self.cfg
        gen = self.acc.unwrap_model(self.gen)
        gen.eval()
        dino = get_metric("dino_struct", preset=self.eval_preset, device=str(self.device))
        out: dict[str, float] = {}
        res = int(c["resolution"])
        try:
            test = {d: layouts.load_unpaired(self.root, split="test", direction=d, default_prompts=self.captions)
                    for d in ("a2b", "b2a")}
        except Exception as e:
            warnings.warn(f"no unpaired validation: {e}", stacklevel=2)
            gen.train()
            return out
        for d, other in (("a2b", "b2a"), ("b2a", "a2b")):
            limit = int(c["validation_num_images"])
            n = len(test[d]) if limit < 0 else min(len(test[d]), limit)
            emb = self.text([self.captions[1] if d == "a2b" else self.captions[0]])
            ins, outs = [], []
            for i in range(n):
                x = _to_tensor(prepare(test[d][i].image, res)).unsqueeze(0)
                y = _translate_eval(gen, (x * 2 - 1).to(self.device), emb, d)
                ins.append(x)
                outs.append(((y.float().cpu() + 1) / 2).clamp(0, 1))
            if not n:
                continue
            outs_t, ins_t = torch.cat(outs), torch.cat(ins)
            refs = torch.stack([_to_tensor(prepare(s.image, res)) for s in test[other]])
            out[f"val/fid_{d}"] = self._fid(outs_t, refs)
            out[f"val/dino_struct_{d}"] = float(dino(outs_t, inputs=ins_t).mean())
        gen.train()
        return out


def fit(model: Any, data: Any, overrides: dict[str, Any], *, callback: Any = None) -> None:
    """`Translator.fit` of both methods: resolve the training config, find the data, run the loop."""
    method = model.card.name
    base = str(model.loaded.base)
    # the loss encoders follow the base: tiny -> tiny encoders; full-random -> full-size random ones (the paper's
    # training defaults, for speed/memory checks at real scale); else the real weights, required
    preset = "tiny" if base.startswith("tiny:") else "full-random" if base.startswith("full-random:") else "paper"
    cfg = resolve_train_config(method, "tiny" if preset == "tiny" else "paper", overrides)
    current = _current_rank(model)
    if model.loaded.trained:  # fine-tuning keeps the checkpoint's ranks; asking for others is an error
        for i, key in enumerate(("lora_rank_unet", "lora_rank_vae")):
            if overrides.get(key) is not None and int(overrides[key]) != current[i]:
                raise InputError(f"{method}: this model already has trained LoRA weights of ranks {current}; "
                                 f"{key} can only be chosen for a fresh model")
            cfg[key] = current[i]
    elif (int(cfg["lora_rank_unet"]), int(cfg["lora_rank_vae"])) != current:
        _rebuild_with_ranks(model, int(cfg["lora_rank_unet"]), int(cfg["lora_rank_vae"]))
    root = dataset_root(data)
    trainer_cls = PairedTrainer if model.kind == "paired" else UnpairedTrainer
    t0 = time.time()
    trainer = trainer_cls(model, cfg, root, preset, callback)
    trainer.task = None if isinstance(data, (str, os.PathLike)) else data
    trainer.run()
    model.gen = model.loaded.gen = trainer.acc.unwrap_model(trainer.gen)
    model.train_seconds = time.time() - t0


def _current_rank(model: Any) -> tuple[int, int]:
    from .convert import arch_spec

    arch = arch_spec(model.gen)
    return next(iter(arch["unet"].values()))["r"], arch["vae"]["vae_skip"]["r"]


def _rebuild_with_ranks(model: Any, rank_unet: int, rank_vae: int) -> None:
    """A fresh (untrained) model gets the LoRA ranks the training config asks for."""
    from ..common.loading import load_sd
    from .convert import build_from_arch, default_arch

    comps = load_sd(model.loaded.base, device="cpu")
    gen = build_from_arch(model.kind, comps, default_arch(model.kind, rank_unet, rank_vae))
    gen.to(device=model.device, dtype=model.dtype)
    model.gen = model.loaded.gen = gen
    model.loaded.weights_id = model.weights_id = (f"{comps.weights_id}+untrained-init(seed=0,r_unet={rank_unet},"
                                                  f"r_vae={rank_vae})")
