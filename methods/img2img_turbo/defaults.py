"""Hyper-parameters of pix2pix-turbo and CycleGAN-Turbo, each with its source (no torch import).

Inference options are the methods' card defaults; training options are what `fit(data, config)` accepts
(`benchmark.py train METHOD --set METHOD.option=value`). Sources:
"training_utils.py" is GaParmar/img2img-turbo at 86f5414,
`src/my_utils/training_utils.py` (argparse defaults); docs/training_*.md are its example commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import HParam, InputError, resolve_options

_TU = "training_utils.py parse_args_paired_training"
_TUU = "training_utils.py parse_args_unpaired_training"

PAIRED_INFERENCE = {
    "mode": HParam("deterministic", "Pix2Pix_Turbo.forward(deterministic=True) for edge_to_image and custom "
                   "paired models; 'stochastic' = the sketch_to_image_stochastic model (noise mixing with r)"),
    "r": HParam(0.4, "inference_paired.py --gamma 0.4 (Gradio 'Sketch guidance' default 0.4); "
                "stochastic mode only: LoRA scale, conv_in blend, noise mix and skip gamma"),
    "condition_prep": HParam("none", "inference_paired.py: custom models take F.to_tensor(img) as is "
                             "('none'); edge_to_image runs canny_from_pil(img, low, high) ('canny'); the sketch model "
                             "binarises F.to_tensor(img) < 0.5, dark strokes -> 1 ('sketch')"),
    "canny_low": HParam(100, "inference_paired.py --low_threshold 100 (image_prep.canny_from_pil)"),
    "canny_high": HParam(200, "inference_paired.py --high_threshold 200"),
}
UNPAIRED_INFERENCE = {
    "prompt": HParam("fixed", "the a->b generator is conditioned on the fixed caption of domain B (b->a: "
                     "A) it was trained with; GaParmar/img2img-turbo issue #81: other prompts change the output. "
                     "'input' = the "
                     "batch's target prompt (inference_unpaired.py --prompt with --model_path)"),
    "resolution": HParam(None, "None: translate at the input size (docs/training_cyclegan_turbo.md --val_img_prep "
                         "no_resize); official driving models: 512 (inference_unpaired.py --image_prep "
                         "resize_512x512, output resized back to the input size)"),
    "resize_filter": HParam("lanczos", "inference_unpaired.py with a resolution: the 8-bit input resized with PIL "
                            "LANCZOS (build_transform 'resize_512x512'), the output taken to 8 bits (ToPILImage) and "
                            "resized back with LANCZOS; 'bicubic' = float bicubic, antialiased, no 8-bit steps"),
}

_COMMON_TRAIN = {
    "adam_beta1": HParam(0.9, "training_utils.py --adam_beta1"),
    "adam_beta2": HParam(0.999, "training_utils.py --adam_beta2"),
    "adam_weight_decay": HParam(1e-2, "training_utils.py --adam_weight_decay"),
    "adam_epsilon": HParam(1e-8, "training_utils.py --adam_epsilon"),
    "lr_scheduler": HParam("constant", "training_utils.py --lr_scheduler (diffusers get_scheduler)"),
    "lr_warmup_steps": HParam(500, "training_utils.py --lr_warmup_steps (ignored by 'constant')"),
    "lr_num_cycles": HParam(1, "training_utils.py --lr_num_cycles"),
    "lr_power": HParam(1.0, "training_utils.py --lr_power"),
    "lora_rank_vae": HParam(4, "training_utils.py --lora_rank_vae 4"),
    "gradient_accumulation_steps": HParam(1, "training_utils.py --gradient_accumulation_steps"),
    "gradient_checkpointing": HParam(False, "training_utils.py --gradient_checkpointing (upstream: UNet only; here "
                                     "UNet and VAEs)"),
    "mixed_precision": HParam("no", "accelerate mixed precision 'no' | 'bf16' | 'fp16' (autocast, fp32 master "
                              "weights); upstream paired --mixed_precision None, unpaired hard-codes float32"),
    "allow_tf32": HParam(False, "training_utils.py --allow_tf32"),
    "output_dir": HParam(None, "where checkpoints/, samples/ and train_log.jsonl go; None = no files"),
    "resume": HParam(True, "resume from the latest output_dir/checkpoints/step-* (upstream has none)"),
    "checkpoints_total_limit": HParam(2, "ours: keep the last N resumable checkpoints"),
    "dataloader_num_workers": HParam(0, "training_utils.py --dataloader_num_workers"),
    "quiet": HParam(False, "ours: no progress bar"),
    "log_every": HParam(1, "ours: steps between train_log.jsonl records"),
}

PAIRED_TRAIN = {
    "lambda_l2": HParam(1.0, f"{_TU} --lambda_l2 (F.mse_loss)"),
    "lambda_lpips": HParam(5.0, f"{_TU} --lambda_lpips (LPIPS-VGG)"),
    "lambda_clipsim": HParam(5.0, f"{_TU} --lambda_clipsim (1 - CLIP ViT-B/32 cosine with the caption)"),
    "lambda_gan": HParam(0.5, f"{_TU} --lambda_gan"),
    "gan_loss_type": HParam("multilevel_sigmoid_s", f"{_TU} --gan_loss_type (0.8-smoothed real target)"),
    "lora_rank_unet": HParam(8, f"{_TU} --lora_rank_unet"),
    "learning_rate": HParam(5e-6, f"{_TU} --learning_rate"),
    "max_grad_norm": HParam(1.0, f"{_TU} --max_grad_norm"),
    "train_batch_size": HParam(4, f"{_TU} --train_batch_size (docs/training_pix2pix_turbo.md uses 2)"),
    "max_train_steps": HParam(10_000, f"{_TU} --max_train_steps"),
    "num_training_epochs": HParam(10, f"{_TU} --num_training_epochs"),
    "resolution": HParam(512, f"{_TU} --resolution / resized_crop_512 (Resize LANCZOS + CenterCrop)"),
    "checkpointing_steps": HParam(500, f"{_TU} --checkpointing_steps"),
    "validation_steps": HParam(100, f"{_TU} --eval_freq (val L2/LPIPS/CLIP-sim; FID with track_val_fid)"),
    "num_samples_eval": HParam(100, f"{_TU} --num_samples_eval"),
    "track_val_fid": HParam(True, f"{_TU} --track_val_fid (doc command sets it)"),
    "viz_freq": HParam(100, f"{_TU} --viz_freq (sample grids, PNG here instead of wandb)"),
    "seed": HParam(0, f"{_TU} --seed default None (unseeded); ours: 0 for reproducibility"),
    **_COMMON_TRAIN,
}
UNPAIRED_TRAIN = {
    "lambda_gan": HParam(0.5, f"{_TUU} --lambda_gan"),
    "lambda_idt": HParam(1.0, f"{_TUU} --lambda_idt (L1)"),
    "lambda_cycle": HParam(1.0, f"{_TUU} --lambda_cycle (L1)"),
    "lambda_cycle_lpips": HParam(10.0, f"{_TUU} --lambda_cycle_lpips (LPIPS-VGG)"),
    "lambda_idt_lpips": HParam(1.0, f"{_TUU} --lambda_idt_lpips"),
    "gan_loss_type": HParam("multilevel_sigmoid", f"{_TUU} --gan_loss_type"),
    "lora_rank_unet": HParam(128, f"{_TUU} --lora_rank_unet"),
    "learning_rate": HParam(5e-6, f"{_TUU} --learning_rate (doc command and GaParmar/img2img-turbo issue #87 "
                                  "rerun: 1e-5)"),
    "max_grad_norm": HParam(10.0, f"{_TUU} --max_grad_norm"),
    "train_batch_size": HParam(4, f"{_TUU} --train_batch_size (doc command: 1)"),
    "max_train_steps": HParam(None, f"{_TUU} --max_train_steps None = bounded by epochs (doc command: 25000)"),
    "max_train_epochs": HParam(100, f"{_TUU} --max_train_epochs"),
    "resolution": HParam(256, "docs/training_cyclegan_turbo.md --train_img_prep resize_286_randomcrop_256x256_hflip"),
    "train_img_prep": HParam("resize_randomcrop_hflip", "docs/training_cyclegan_turbo.md: resize to 286/256 of "
                             "the resolution, random crop, random h-flip ('resized_crop' = resize + centre crop)"),
    "checkpointing_steps": HParam(500, f"{_TUU} --checkpointing_steps"),
    "validation_steps": HParam(500, f"{_TUU} --validation_steps (FID + DINO-struct both ways; doc: 250)"),
    "validation_num_images": HParam(-1, f"{_TUU} --validation_num_images (-1 = all test images)"),
    "viz_freq": HParam(20, f"{_TUU} --viz_freq"),
    "seed": HParam(42, f"{_TUU} --seed"),
    **_COMMON_TRAIN,
}

#: The tiny preset trains at toy scale (random tiny networks; a smoke test of the loop, not a model).
TINY_TRAIN = {
    "pix2pix-turbo": {"resolution": 64, "max_train_steps": 50, "num_training_epochs": 1000, "train_batch_size": 1,
                      "learning_rate": 1e-4,
                      "checkpointing_steps": 25, "validation_steps": 25, "num_samples_eval": 4, "viz_freq": 25},
    "cyclegan-turbo": {"resolution": 64, "max_train_steps": 50, "max_train_epochs": 1000, "train_batch_size": 1,
                       "learning_rate": 1e-4,
                       "lora_rank_unet": 8, "checkpointing_steps": 25, "validation_steps": 25,
                       "validation_num_images": 4, "viz_freq": 25},
}
TINY_TRAIN_SOURCE = "tiny preset: toy-scale run of the loop on the tiny random networks"


def train_defaults(method: str, preset: str) -> dict[str, HParam]:
    table = dict(PAIRED_TRAIN if method == "pix2pix-turbo" else UNPAIRED_TRAIN)
    if preset == "tiny":
        for k, v in TINY_TRAIN[method].items():
            table[k] = HParam(v, f"{TINY_TRAIN_SOURCE} (paper default {table[k].value!r}: {table[k].source})")
    return table


def resolve_train_config(method: str, preset: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training options through the methods' one resolver (defaults -> tiny overlay -> overrides ->
    coercion), then checked."""
    config = resolve_options(f"{method} training", train_defaults(method, preset), overrides)
    if config["mixed_precision"] not in ("no", "bf16", "fp16"):
        raise InputError(f"{method} training: mixed_precision must be 'no', 'bf16' or 'fp16'")
    return config


def init_ranks(method: str, preset: str) -> tuple[int, int]:
    """LoRA ranks (UNet, VAE) of a fresh model: the training defaults of the preset."""
    table = train_defaults(method, preset)
    return int(table["lora_rank_unet"].value), int(table["lora_rank_vae"].value)
