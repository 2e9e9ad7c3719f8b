"""PITI fine-tuning under Hugging Face Accelerate: the two base stages and the adversarial upsampler (imports torch).

Follows the authors' scripts and train loop (PITI `mask_finetune_base.sh`, `mask_finetune_upsample.sh`,
`sketch_finetune_*.sh`, `glide_text2im/train_util.py`, `gaussian_diffusion.py::training_losses`):

| stage       | model     | trainable         | uncond_p | lr     | global batch | steps (scripts) | timesteps     |
|-------------|-----------|-------------------|----------|--------|--------------|-----------------|---------------|
| stage1      | base 64   | encoder           | 0.0      | 3.5e-5 | 128 (8 x 16) | 200000          | loss-2nd-mom. |
| stage1-cont | base 64   | encoder           | 0.2      | 2e-5   | 128          | 60000           | loss-2nd-mom. |
| stage2      | base 64   | encoder + decoder | 0.2      | 3.5e-5 | 128          | until stopped   | loss-2nd-mom. |
| upsampler   | upsampler | everything        | 0.0      | 1e-5   | 4 (1 x 4)    | until stopped   | uniform       |

Per step: x_t = q_sample(x0, t, eps) with t from the sampler, the network predicts (eps, v), and the loss is
eps-MSE + VB (learned sigma, Nichol & Dhariwal; VB rescaled by num_timesteps / 1000 under rescale_learned_sigmas,
which is 1 for the 1000-step training process), importance-weighted by the sampler. The upsampler adds, from step
100 on, 0.004 x VGG19-conv2_2 perceptual loss and 0.01 x WGAN-GP PatchGAN generator loss on x0hat (losses.py; the
critic takes one Adam step per generator micro-batch). AdamW (weight decay 0, no lr schedule: upstream's
`_anneal_lr` is a no-op), EMA 0.9999 of the trained parameters; the EMA weights are what `save_pretrained` writes
and what the translator samples with after training (as PITI samples from its ema_0.9999 checkpoints).

Data (image_datasets_*.py): photo and condition squashed to 256 (photo BICUBIC, label/edges NEAREST), one random
horizontal flip for both, the photo resized (BICUBIC) to the model size (64 for the base); the condition stays at
256 (masks: RGB in [-1, 1]; sketches: edge distance transform, 1 channel). With probability uncond_p the condition
is replaced by all ones (the CFG null condition). Upsampler: low_res = BSR-light degradation of the model-size
photo (degradation.py), no uncond.

Global batch = batch_size (per process) x processes x gradient_accumulation_steps; `global_batch_size` is the
paper's number and the accumulation steps are derived from it (one process with batch 16 accumulates 8 micro-
batches to reach 128); an impossible split is an error.

Reproducibility and resume: every random draw is keyed by (seed, step, micro-batch, process) or by the global
sample counter (data order = one seeded permutation per epoch; flips, uncond and degradation per sample), and the
torch RNG (dropout) is reseeded per step, so a run resumed from `output_dir/checkpoints/step-N` (models, EMA,
optimisers, critic + its optimizer and RNG, timestep-sampler history, step) continues exactly as the uninterrupted
run. Checkpoints are written to a temporary folder and renamed into place.

Deviations: the generator's adversarial term leaves no gradient in the critic (losses.py); the loss-second-moment
sampler is updated with the losses gathered from all processes (upstream does the same through all_gather);
`max_steps` must be given for the stages the scripts run "until stopped".
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..base import HParam, InputError, resolve_options

STAGES = ("stage1", "stage1-cont", "stage2", "upsampler")
_SH = "mask_finetune_base.sh / sketch_finetune_base.sh"
_SHU = "mask_finetune_upsample.sh"

#: per-stage defaults (PITI mask_finetune_base.sh / sketch_finetune_base.sh / mask_finetune_upsample.sh)
STAGE_DEFAULTS: dict[str, dict[str, HParam]] = {
    "stage1": {
        "learning_rate": HParam(3.5e-5, f"{_SH} stage 1 --lr 3.5e-5"),
        "uncond_p": HParam(0.0, f"{_SH} stage 1 --uncond_p 0"),
        "max_steps": HParam(200_000, f"{_SH} stage 1 --lr_anneal_steps 200000 (only the stop step: no annealing)"),
        "train_decoder": HParam(False, f"{_SH} stage 1 --finetune_decoder False (optimize_model = model.encoder)"),
    },
    "stage1-cont": {
        "learning_rate": HParam(2e-5, f"{_SH} stage 1 continued --lr 2e-5"),
        "uncond_p": HParam(0.2, f"{_SH} stage 1 continued --uncond_p 0.2"),
        "max_steps": HParam(60_000, f"{_SH} stage 1 continued --lr_anneal_steps 60000"),
        "train_decoder": HParam(False, f"{_SH} --finetune_decoder False"),
    },
    "stage2": {
        "learning_rate": HParam(3.5e-5, f"{_SH} stage 2 --lr 3.5e-5"),
        "uncond_p": HParam(0.2, f"{_SH} stage 2 --uncond_p 0.2"),
        "max_steps": HParam(None, f"{_SH} stage 2 sets no --lr_anneal_steps (runs until stopped): give max_steps"),
        "train_decoder": HParam(True, f"{_SH} stage 2 --finetune_decoder True (the whole model)"),
    },
    "upsampler": {
        "learning_rate": HParam(1e-5, f"{_SHU} --lr 1e-5"),
        "uncond_p": HParam(0.0, f"{_SHU} --uncond_p 0 (and the super-res data path never drops the condition)"),
        "max_steps": HParam(None, f"{_SHU} sets no step count (runs until stopped): give max_steps"),
        "train_decoder": HParam(True, f"{_SHU} --finetune_decoder True (encoder + upsampler UNet)"),
    },
}

TRAIN_DEFAULTS: dict[str, HParam] = {
    "kind": HParam(None, "which condition kind's models to train (mask | sketch | depth); None: from the task kind "
                   "(mask-to-image -> mask, sketch-to-image -> sketch)"),
    "init_glide": HParam(None, "path to GLIDE's base.pt (base stages) or upsample.pt (upsampler): the decoder starts "
                         "from the GLIDE UNet (--model_path ./ckpt/base.pt in the scripts); stage1 / upsampler: with "
                         "a freshly initialised encoder; stage2: with the loaded (stage-1) encoder, as "
                         "mask_finetune_base.sh. None: continue from the loaded model"),
    "stage": HParam("stage1", f"{_SH}: stage1 -> stage1-cont -> stage2 for the base model; 'upsampler' trains the "
                    "64->256 model (one call trains one stage; chain them by loading the previous output)"),
    "learning_rate": HParam(None, "None: the stage's lr (STAGE_DEFAULTS)"),
    "uncond_p": HParam(None, "None: the stage's uncond_p (STAGE_DEFAULTS); the condition becomes all ones"),
    "max_steps": HParam(None, "None: the stage's step count (STAGE_DEFAULTS)"),
    "train_decoder": HParam(None, "None: the stage's choice (STAGE_DEFAULTS)"),
    "global_batch_size": HParam(None, f"None: 128 for the base stages ({_SH}: NUM_GPUS=8 x --batch_size 16), 4 for the "
                                f"upsampler ({_SHU}: 1 GPU x --batch_size 4)"),
    "batch_size": HParam(None, "per-process micro-batch; None: 16 (base) / 4 (upsampler) like the scripts' per-GPU "
                         "--batch_size; gradient accumulation fills the rest of global_batch_size"),
    "weight_decay": HParam(0.0, "train_util.py AdamW(weight_decay=0.0) (image_train.py --weight_decay default 0)"),
    "adam_betas": HParam((0.9, 0.999), "train_util.py: torch AdamW default betas"),
    "ema_rate": HParam(0.9999, "train_util.py / image_train.py --ema_rate 0.9999"),
    "schedule_sampler": HParam(None, f"None: 'loss-second-moment' for the base stages ({_SH} --schedule_sampler), "
                               "'uniform' for the upsampler (its script sets none: image_train.py default)"),
    "rescale_learned_sigmas": HParam(True, "script_util.py defaults: rescale_learned_sigmas=True -> "
                                     "RESCALED_MSE (VB x num_timesteps/1000 = x1 for the 1000-step training process)"),
    "adv_warmup_steps": HParam(100, "train_util.py forward_backward: `if self.step < 100: vgg_loss = adv_loss = None`"),
    "use_perceptual": HParam(None, "None: on for the upsampler only (image_train.py use_vgg = args.super_res)"),
    "use_adversarial": HParam(None, "None: on for the upsampler only (image_train.py use_gan = args.super_res)"),
    "d_learning_rate": HParam(1e-5, "adv.py AdversarialLoss(lr_dis=1e-5), Adam"),
    "vgg_weights": HParam(None, "a torchvision vgg19 state-dict file for the perceptual loss; None: the torch hub "
                          "cache (vgg19-dcbb9e9d.pth), else a download when online, else random (warned)"),
    "dataloader_num_workers": HParam(8, "image_datasets_*.py DataLoader(num_workers=8); here threads that prepare "
                                     "the samples of a micro-batch in parallel (0: in the training thread)"),
    "hflip": HParam(True, "image_datasets_*.py: random horizontal flip in training (random_flip=train)"),
    "keep_aspect": HParam(False, "image_datasets_*.py squash to 256 (aspect ratio lost); True: resize + centre crop"),
    "mixed_precision": HParam("no", "accelerate 'no' | 'bf16' | 'fp16' (autocast, fp32 master weights); the "
                              "scripts train in fp32 (use_fp16 False)"),
    "checkpointing_steps": HParam(5000, "ours: resumable checkpoints every N steps (upstream --save_interval)"),
    "checkpoints_total_limit": HParam(2, "ours: keep the last N checkpoints"),
    "output_dir": HParam(None, "checkpoints/ and train_log.jsonl go here; training resumes from it"),
    "resume": HParam(True, "ours: continue from the latest output_dir/checkpoints/step-*"),
    "seed": HParam(0, "ours (upstream is unseeded)"),
    "log_every": HParam(1, "ours: steps between train_log.jsonl records"),
    "quiet": HParam(False, "ours: no progress bar"),
}

#: the tiny preset trains at toy scale (a smoke test of the loop on the tiny networks, not a model)
TINY_TRAIN = {"global_batch_size": 2, "batch_size": 2, "max_steps": 20, "checkpointing_steps": 10,
              "dataloader_num_workers": 0}
TINY_SOURCE = "tiny preset: toy-scale run of the loop on the tiny random networks"


# --- configuration ----------------------------------------------------------------------------------------------------
def train_defaults(preset: str = "paper") -> dict[str, HParam]:
    table = dict(TRAIN_DEFAULTS)
    if preset == "tiny":
        for k, v in TINY_TRAIN.items():
            table[k] = HParam(v, f"{TINY_SOURCE} (paper: {table[k].source})")
    return table


def resolve_train_config(overrides: Mapping[str, Any] | None, preset: str = "paper") -> dict[str, Any]:
    """Defaults (+ the stage's) updated with `overrides`; unknown keys and bad values raise InputError."""
    cfg = resolve_options("piti training", train_defaults(preset), overrides)  # the methods' one resolver
    stage = cfg["stage"]
    if stage not in STAGES:
        raise InputError(f"piti training: stage must be one of {', '.join(STAGES)}, got {stage!r}")
    for k, hp in STAGE_DEFAULTS[stage].items():
        if cfg[k] is None:
            cfg[k] = hp.value
    up = stage == "upsampler"
    if cfg["global_batch_size"] is None:
        cfg["global_batch_size"] = 4 if up else 128
    if cfg["batch_size"] is None:
        cfg["batch_size"] = 4 if up else 16
    if cfg["schedule_sampler"] is None:
        cfg["schedule_sampler"] = "uniform" if up else "loss-second-moment"
    for k in ("use_perceptual", "use_adversarial"):
        if cfg[k] is None:
            cfg[k] = up
    if cfg["max_steps"] is None:
        raise InputError(f"piti training: the authors' {stage} run has no step count (it runs until stopped); set "
                         "max_steps (e.g. --set piti.max_steps=100000)")
    if cfg["schedule_sampler"] not in ("uniform", "loss-second-moment"):
        raise InputError("piti training: schedule_sampler must be 'uniform' or 'loss-second-moment'")
    if cfg["mixed_precision"] not in ("no", "bf16", "fp16"):
        raise InputError("piti training: mixed_precision must be 'no', 'bf16' or 'fp16'")
    for k in ("max_steps", "global_batch_size", "batch_size"):
        cfg[k] = int(cfg[k])
        if cfg[k] < 1:
            raise InputError(f"piti training: {k} must be >= 1")
    if not 0.0 <= float(cfg["uncond_p"]) <= 1.0:
        raise InputError("piti training: uncond_p must lie in [0, 1]")
    cfg["adam_betas"] = tuple(float(b) for b in cfg["adam_betas"])
    return cfg


def accumulation_steps(global_batch: int, batch: int, processes: int) -> int:
    """global = batch x processes x accumulation; raises when it does not divide."""
    per = batch * processes
    if global_batch % per:
        raise InputError(f"piti training: global_batch_size {global_batch} is not a multiple of batch_size {batch} x "
                         f"{processes} process(es); pick batch_size so that it divides")
    return global_batch // per


# --- translator access ------------------------------------------------------------------------------------------------
#: the translator (methods/piti/__init__.py) holds `models[kind][role]`: kind mask|sketch|depth, role base|upsample
_ROLE = {"base": "base", "upsampler": "upsample"}
_TASK_KINDS = {"mask-to-image": "mask", "sketch-to-image": "sketch"}


def _kind_for(translator: Any, data: Any, cfg: dict[str, Any]) -> str:
    """Which condition kind's models to train: the `kind` option, else the task's kind, else the only one loaded."""
    have = sorted(getattr(translator, "models", {}) or {})
    kind = cfg.get("kind") or _TASK_KINDS.get(getattr(data, "kind", ""))
    if kind is None:
        if len(have) != 1:
            raise InputError(f"piti training: say which models to train with kind=mask|sketch (loaded: {have})")
        kind = have[0]
    if kind not in have:
        raise InputError(f"piti training: this translator has no {kind} models (loaded: {', '.join(have) or 'none'}); "
                         f"load them or pick kind= one of those")
    return kind


def _is_tiny(translator: Any) -> bool:
    return str(getattr(translator, "weights_id", "")).startswith("tiny")


# --- data -------------------------------------------------------------------------------------------------------------
def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


class PITIData:
    """Training pairs (`datasets.piti_data.training_samples`) turned into PITI's tensors, one sample at a time,
    every random choice keyed by the global sample counter (so batches do not depend on processes or resumes)."""

    def __init__(self, data: Any, cfg: dict[str, Any], model_cfg: Any):
        from datasets.piti_data import training_samples

        self.samples = training_samples(data, "train")
        if not len(self.samples):
            raise InputError(f"piti training: no training pairs in {getattr(data, 'name', data)!r}")
        self.cfg, self.mcfg = cfg, model_cfg
        self.up = bool(model_cfg.super_res)
        self.kind = model_cfg.cond_kind
        if self.kind not in ("mask", "sketch"):  # depth: no loader for DIODE-style data yet
            raise InputError(f"piti training: condition kind {self.kind!r} has no data loader (mask, sketch)")

    def __len__(self) -> int:
        return len(self.samples)

    def index(self, counter: int) -> tuple[int, int]:
        """(epoch, sample index) of the global sample counter: one seeded permutation per epoch."""
        n = len(self.samples)
        epoch, pos = divmod(counter, n)
        perm = np.random.default_rng(_seed(self.cfg["seed"], 17, epoch)).permutation(n)
        return epoch, int(perm[pos])

    def item(self, counter: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        from datasets.images import prepare
        from datasets.piti_data import resize_pair

        from .adapters import prepare_condition

        _, i = self.index(counter)
        s = self.samples[i]
        if s.target is None or s.condition is None:
            raise InputError(f"piti training: sample {s.id} lacks a photo (target) or a condition")
        rng = np.random.default_rng(_seed(self.cfg["seed"], 29, counter))
        keep = bool(self.cfg["keep_aspect"])
        size, cond_size = int(self.mcfg.image_size), int(self.mcfg.cond_size)
        photo, _ = resize_pair(s.target, s.condition, cond_size, keep_aspect=keep)
        cond_img = s.condition
        if keep:  # the centre square at the condition's own resolution; the adapter then resizes it
            cond_img = prepare(cond_img, min(cond_img.size), resample=Image.Resampling.NEAREST)
        cond01 = torch.from_numpy(np.asarray(cond_img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        # the same condition adapter as inference (masks NEAREST to 256, sketches -> edge distance transform)
        cond = prepare_condition(cond01[None], self.kind, cond_size)[0]
        flip = rng.random() < 0.5  # drawn even with hflip off, so the later draws do not depend on that switch
        if self.cfg["hflip"] and flip:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            cond = cond.flip(-1)
        if photo.size != (size, size):
            photo = photo.resize((size, size), Image.Resampling.BICUBIC)
        x0 = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
        if rng.random() < float(self.cfg["uncond_p"]):
            cond = torch.ones_like(cond)  # image_datasets_*.py: th.ones_like(label_tensor)
        out = {"x0": torch.from_numpy(np.ascontiguousarray(x0.transpose(2, 0, 1))) * 2 - 1, "cond": cond.float()}
        if self.up:
            from .degradation import degradation_bsrgan_variant

            sf = size // int(self.mcfg.low_res_size)
            lr = degradation_bsrgan_variant(x0, sf, rng)
            out["low_res"] = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))) * 2 - 1
        return out

    def batch(self, counters: list[int]) -> dict[str, torch.Tensor]:
        workers = int(self.cfg.get("dataloader_num_workers") or 0)
        if workers > 0 and len(counters) > 1:  # threads: PIL decoding and numpy/scipy release the GIL
            if getattr(self, "_pool", None) is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="piti-data")
            items = list(self._pool.map(self.item, counters))  # map keeps the order: batches stay deterministic
        else:
            items = [self.item(c) for c in counters]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# --- EMA --------------------------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of named parameters (train_util.py update_ema: ema = rate ema + (1 - rate) p)."""

    def __init__(self, params: dict[str, nn.Parameter], rate: float):
        self.rate = float(rate)
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter]) -> None:
        for k, p in params.items():
            self.shadow[k].mul_(self.rate).add_(p.detach().float(), alpha=1 - self.rate)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        named = dict(model.named_parameters())
        for k, v in self.shadow.items():
            named[k].copy_(v.to(named[k].dtype))


# --- the trainer ------------------------------------------------------------------------------------------------------
def _accelerator(cfg: dict[str, Any], device: Any, accum: int) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    kw = dict(gradient_accumulation_steps=accum, mixed_precision=cfg["mixed_precision"], cpu=str(device) == "cpu")
    try:
        return Accelerator(**kw)
    except ValueError:  # a previous fit in this process set another mixed precision
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kw)


class Trainer:
    def __init__(self, translator: Any, data: Any, cfg: dict[str, Any], callback: Any = None):
        from ..common.gaussian_diffusion import GaussianDiffusion, LossSecondMomentResampler, UniformSampler

        self.translator, self.cfg, self.callback = translator, cfg, callback
        self.role = "upsampler" if cfg["stage"] == "upsampler" else "base"
        self.kind = _kind_for(translator, data, cfg)
        model = translator.models[self.kind][_ROLE[self.role]]
        if cfg["init_glide"]:
            from .convert import load_official_file

            glide = load_official_file(Path(str(cfg["init_glide"])).expanduser(), model.config)
            if cfg["stage"] == "stage2":  # mask_finetune_base.sh stage 2: GLIDE decoder + the stage-1 encoder
                glide.encoder.load_state_dict(model.encoder.state_dict())
            model = glide
            translator.models[self.kind][_ROLE[self.role]] = model
        self.mcfg = model.config
        if bool(self.mcfg.super_res) != (self.role == "upsampler"):
            raise InputError(f"piti training: stage {cfg['stage']!r} does not fit the loaded {self.role} model")
        if next(model.parameters()).dtype != torch.float32:
            raise InputError("piti training: load the model in float32; use mixed_precision for lower precision")
        self.out = Path(cfg["output_dir"]) if cfg["output_dir"] else None
        from accelerate import PartialState

        device = getattr(translator, "device", "cpu")
        processes = PartialState(cpu=str(device) == "cpu").num_processes
        self.accum = accumulation_steps(cfg["global_batch_size"], cfg["batch_size"], processes)
        self.acc = _accelerator(cfg, device, self.accum)
        self.device = self.acc.device
        model = model.to(self.device).train()
        model.requires_grad_(False)
        trained = model if cfg["train_decoder"] else model.encoder
        trained.requires_grad_(True)
        self.named = {k: p for k, p in model.named_parameters() if p.requires_grad}
        self.ema = EMA(self.named, cfg["ema_rate"])
        opt = torch.optim.AdamW(list(self.named.values()), lr=float(cfg["learning_rate"]),
                                weight_decay=float(cfg["weight_decay"]), betas=cfg["adam_betas"])
        self.model, self.opt = self.acc.prepare(model, opt)
        self.diffusion = GaussianDiffusion.from_config(self.mcfg.noise_schedule, int(self.mcfg.diffusion_steps))
        n = self.diffusion.num_timesteps
        self.sampler = LossSecondMomentResampler(n) if cfg["schedule_sampler"] == "loss-second-moment" \
            else UniformSampler(n)
        self.data = PITIData(data, cfg, self.mcfg)
        self.data_name = str(getattr(data, "name", data))
        self.perceptual = self.adversarial = None
        if cfg["use_perceptual"]:
            from .losses import PerceptualLoss, load_vgg_head

            head, info = load_vgg_head("tiny" if _is_tiny(translator) else "paper", vgg_weights=cfg["vgg_weights"])
            self.perceptual = PerceptualLoss(head, info).to(self.device)
        if cfg["use_adversarial"]:
            from .losses import AdversarialLoss, NLayerDiscriminator

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(cfg["seed"], 41))
                disc = NLayerDiscriminator() if not _is_tiny(translator) else NLayerDiscriminator(ndf=8)
            self.adversarial = AdversarialLoss(disc.to(self.device), lr=float(cfg["d_learning_rate"]),
                                               seed=_seed(cfg["seed"], 43))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        translator.history = self.history

    # -- one optimisation step ----------------------------------------------------------------------------------
    def micro_step(self, micro: int) -> dict[str, float]:
        c, acc = self.cfg, self.acc
        b, rank, world = c["batch_size"], acc.process_index, acc.num_processes
        first = ((self.step * self.accum + micro) * world + rank) * b
        batch = {k: v.to(self.device) for k, v in self.data.batch(list(range(first, first + b))).items()}
        x0 = batch["x0"]
        g = torch.Generator().manual_seed(_seed(c["seed"], 53, self.step, micro, rank))
        t, weights = self.sampler.sample(b, g, "cpu")
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t, weights = t.to(self.device), weights.to(self.device)
        x_t = self.diffusion.q_sample(x0, t, noise)
        with acc.autocast():
            out = self.model(x_t, self.diffusion.model_timesteps(t), batch["cond"], batch.get("low_res"))
        out = out.float()
        terms = self.diffusion.training_losses(out, x0, x_t, t, noise, rescaled=bool(c["rescale_learned_sigmas"]))
        loss_per = terms["loss"]
        extra_on = self.role == "upsampler" and self.step >= int(c["adv_warmup_steps"])
        logs = {}
        if extra_on and (self.perceptual is not None or self.adversarial is not None):
            from .losses import upsampler_extra_losses

            x0hat = self.diffusion.predict_xstart_from_eps(x_t, t, out[:, :x0.shape[1]])
            if self.adversarial is not None:
                self.adversarial.sync = self._sync_disc
            extra = upsampler_extra_losses(x0hat, x0, perceptual=self.perceptual, adversarial=self.adversarial)
            loss_per = loss_per + extra["perceptual"] + extra["adv"]
            logs = {k: float(extra[k].detach().mean()) for k in ("perceptual", "adv")}
            if self.adversarial is not None:
                logs["loss_d"] = self.adversarial.last_d_loss
        # the importance sampler learns from the losses of every process (upstream: all_gather)
        all_t, all_l = acc.gather(t), acc.gather(loss_per.detach())
        self.sampler.update_with_local_losses(all_t.cpu(), all_l.cpu())
        loss = (loss_per * weights).mean()
        acc.backward(loss)
        return {"loss": float(loss.detach()), "mse": float(terms["mse"].detach().mean()),
                "vb": float(terms["vb"].detach().mean()), **logs}

    def _sync_disc(self, disc: nn.Module) -> None:
        if self.acc.num_processes > 1:
            for p in disc.parameters():
                if p.grad is not None:
                    p.grad = self.acc.reduce(p.grad, reduction="mean")

    def train_step(self) -> dict[str, float]:
        # dropout draws from torch's global RNG: reseed it per step (inside a fork, so the caller's state is kept)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_seed(self.cfg["seed"], 61, self.step, self.acc.process_index))
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        logs: dict[str, list[float]] = {}
        for micro in range(self.accum):
            with self.acc.accumulate(self.model):
                rec = self.micro_step(micro)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            for k, v in rec.items():
                logs.setdefault(k, []).append(v)
        self.ema.update(self.named)
        self.step += 1
        return {k: sum(v) / len(v) for k, v in logs.items()}

    # -- loop --------------------------------------------------------------------------------------------------------
    def run(self) -> None:
        from tqdm.auto import tqdm

        self.resume()
        c = self.cfg
        bar = tqdm(total=c["max_steps"], initial=self.step, desc=f"train piti {c['stage']}",
                   disable=bool(c["quiet"]) or not self.acc.is_local_main_process)
        while self.step < c["max_steps"]:
            logs = self.train_step()
            rec = {"step": self.step, **{k: round(float(v), 6) for k, v in logs.items()}}
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()})
            if self.step % max(1, int(c["log_every"])) == 0:
                self.history.append(rec)
                self.write_log()
            if self.callback is not None:
                self.callback(self.step, rec)
            if int(c["checkpointing_steps"]) and self.step % int(c["checkpointing_steps"]) == 0:
                self.checkpoint()
        bar.close()
        if self.out is not None and self.step and not (self.out / "checkpoints" / f"step-{self.step:06d}").exists():
            self.checkpoint()
        self.write_log()
        self.finish()

    def write_log(self) -> None:
        if self.out is not None and self.acc.is_main_process:
            from eval.store import atomic_write_text

            atomic_write_text(self.out / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        sampler = {k: torch.from_numpy(np.asarray(v)) for k, v in self.sampler.state_dict().items()}
        st: dict[str, Any] = {"opt": self.opt.state_dict(), "step": self.step, "sampler": sampler}
        if self.adversarial is not None:
            st["disc_opt"] = self.adversarial.opt.state_dict()
            st["disc_rng"] = self.adversarial.generator.get_state()
            st["last_d_loss"] = self.adversarial.last_d_loss
        return st

    def checkpoint(self) -> Path | None:
        """output_dir/checkpoints/step-N: model.safetensors (raw weights), ema.safetensors, disc.safetensors,
        state.pt (optimisers, sampler history, critic RNG; tensors and numbers only: weights_only-loadable),
        trainer_state.json. Written in a temporary folder and renamed into place."""
        if self.out is None:
            return None
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return None
        from safetensors.torch import save_file

        from eval.store import atomic_write_json

        root = self.out / "checkpoints"
        dest, tmp = root / f"step-{self.step:06d}", root / f".step-{self.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model = self.acc.unwrap_model(self.model)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        save_file({k: v.cpu().contiguous() for k, v in self.ema.shadow.items()}, str(tmp / "ema.safetensors"))
        if self.adversarial is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.adversarial.disc.state_dict().items()},
                      str(tmp / "disc.safetensors"))
        torch.save(self._state(), tmp / "state.pt")
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.cfg.items()}
        atomic_write_json(tmp / "trainer_state.json", {"step": self.step, "stage": self.cfg["stage"], "config": cfg})
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        keep = int(self.cfg["checkpoints_total_limit"] or 0)
        for p in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
        return dest

    def resume(self) -> bool:
        if self.out is None or not self.cfg["resume"]:
            return False
        ckpts = sorted(p for p in (self.out / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file())
        if not ckpts:
            return False
        from safetensors.torch import load_file

        last = ckpts[-1]
        meta = json.loads((last / "trainer_state.json").read_text())
        if meta.get("stage") != self.cfg["stage"]:
            raise InputError(f"piti training: {self.out} holds a {meta.get('stage')!r} run; resume it with the same "
                             f"stage or use another output_dir (asked: {self.cfg['stage']!r})")
        model = self.acc.unwrap_model(self.model)
        model.load_state_dict(load_file(str(last / "model.safetensors")))
        ema = load_file(str(last / "ema.safetensors"))
        if set(ema) != set(self.ema.shadow):
            raise InputError(f"piti training: {last} trained other parameters (train_decoder differs); use another "
                             "output_dir")
        self.ema.shadow = {k: v.to(self.device) for k, v in ema.items()}
        st = torch.load(last / "state.pt", map_location="cpu", weights_only=True)
        self.opt.load_state_dict(st["opt"])
        self.sampler.load_state_dict({k: v.numpy() for k, v in st["sampler"].items()})
        if self.adversarial is not None and (last / "disc.safetensors").is_file():
            self.adversarial.disc.load_state_dict(load_file(str(last / "disc.safetensors")))
            self.adversarial.opt.load_state_dict(st["disc_opt"])
            self.adversarial.generator.set_state(st["disc_rng"])
            self.adversarial.last_d_loss = float(st["last_d_loss"])
        self.step = int(st["step"])
        log = self.out / "train_log.jsonl"
        if log.is_file():
            self.history[:] = [r for r in (json.loads(line) for line in log.read_text().splitlines() if line.strip())
                               if r.get("step", 0) <= self.step]
        return True

    def finish(self) -> None:
        """The translator samples with the EMA weights from now on (PITI samples from its ema checkpoints)."""
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.model)
        self.ema.copy_to(model)
        model.requires_grad_(False).eval()
        t = self.translator
        t.models[self.kind][_ROLE[self.role]] = model
        record = getattr(t, "training_record", None)
        record = dict(record) if isinstance(record, dict) else {}
        record[f"{self.kind}/{_ROLE[self.role]}"] = {"stage": self.cfg["stage"], "steps": self.step,
                                                    "ema_rate": self.cfg["ema_rate"], "data": self.data_name}
        if self.perceptual is not None and self.perceptual.info is not None:  # a random VGG must show in the record
            record[f"{self.kind}/{_ROLE[self.role]}"]["perceptual_vgg"] = {"weights": self.perceptual.info.weights,
                                                                          "source": self.perceptual.info.source}
        t.training_record = record
        wid = str(getattr(t, "weights_id", ""))
        t.weights_id = f"{wid}+trained:{self.kind}/{_ROLE[self.role]}:{self.cfg['stage']}@step{self.step}"


def fit(translator: Any, data: Any, config: Mapping[str, Any] | None, *, callback: Any = None) -> None:
    """`PITI.fit`: train one stage (config 'stage') on a task or folder; see the module docstring."""
    cfg = resolve_train_config(config, "tiny" if _is_tiny(translator) else "paper")
    t0 = time.time()
    trainer = Trainer(translator, data, cfg, callback)
    trainer.run()
    translator.train_seconds = time.time() - t0


def save_pretrained(translator: Any, path: str | os.PathLike) -> None:
    """Write every loaded model pair in the project format, `<path>/<kind>/{base,upsample}/` (config.json +
    model.safetensors; `PITIModel.save_pretrained`), each config carrying the training record of that model (the
    EMA weights after `fit`). `PITI.from_pretrained(path)` loads the directory back."""
    path = Path(path)
    models = getattr(translator, "models", None) or {}
    if not models:
        raise InputError("piti save_pretrained: the translator holds no PITI model")
    record = getattr(translator, "training_record", None) or {}
    for kind, pair in models.items():
        for role, model in pair.items():
            rec = record.get(f"{kind}/{role}") or _previous_record(translator, kind, role)
            meta = {"weights_id": str(getattr(translator, "weights_id", "")), "trained": rec is not None,
                    "training": rec}
            model.save_pretrained(path / kind / role, meta=meta)


def _previous_record(translator: Any, kind: str, role: str) -> dict[str, Any] | None:
    """The training record a model already had in the directory it was loaded from (so re-saving a model trained
    earlier keeps saying so)."""
    src = Path(str(getattr(translator, "source", "") or ""))
    cfg = src / kind / role / "config.json"
    try:
        return json.loads(cfg.read_text()).get("training") if cfg.is_file() else None
    except (OSError, ValueError):
        return None
