"""Source captions from BLIP, for when the user asks for them instead of the task's source prompt.

The authors caption with LAVIS `blip_caption`/`base_coco` (`src/inversion.py`); LAVIS is not on the dependency list,
so we use the same BLIP-base COCO captioner through transformers as diffusers' pix2pix-zero pipeline does
(`generate_caption`: `BlipForConditionalGeneration` + `BlipProcessor`, text prompt "a photography of",
`max_new_tokens=128`). Captions are cached per (captioner weights, image content).
"""

from __future__ import annotations

from typing import Any

from eval.store import hash_array, hash_obj, kv_get, kv_put

from ..base import WeightsNotFoundError

BLIP_TEXT_PROMPT = "a photography of"  # diffusers StableDiffusionPix2PixZeroPipeline.generate_caption
BLIP_MAX_NEW_TOKENS = 128  # ibid.


class BlipCaptioner:
    def __init__(self, source: str, *, device: Any = "cpu", dtype: Any = None) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from ..common.loading import resolve, weights_identity

        path = resolve(source)
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(f"{path} is not a BLIP captioning model folder (no config.json)")
        self.processor = BlipProcessor.from_pretrained(path)
        self.model = BlipForConditionalGeneration.from_pretrained(path, torch_dtype=dtype or torch.float32)
        self.model.to(device).eval().requires_grad_(False)
        self.weights_id = weights_identity(source)

    def __call__(self, images: Any) -> list[str]:
        """Captions of a batch of float images B x 3 x H x W in [0, 1] (cached per image)."""
        import torch

        from eval.store import cache_dir

        root = cache_dir() / "pix2pix-zero" / "captions"
        keys = [hash_obj("p2pz-caption", self.weights_id, BLIP_TEXT_PROMPT, hash_array(img)) for img in images]
        out: list[str | None] = [(kv_get(root, k) or {}).get("caption") for k in keys]
        todo = [i for i, c in enumerate(out) if c is None]
        if todo:
            pixels = [(images[i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
                      .cpu().numpy() for i in todo]
            inputs = self.processor(images=pixels, text=[BLIP_TEXT_PROMPT] * len(todo), return_tensors="pt")
            inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=BLIP_MAX_NEW_TOKENS)
            for i, text in zip(todo, self.processor.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
                kv_put(root, keys[i], {"caption": out[i]})
        return [c or "" for c in out]
