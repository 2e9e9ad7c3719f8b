"""The six official img2img-turbo checkpoints (no torch import): download URL, caption, direction, how to feed them.

Source: GaParmar/img2img-turbo `src/pix2pix_turbo.py`, `src/cyclegan_turbo.py`, `src/inference_paired.py`,
`src/inference_unpaired.py`. All six are LoRA/skip-conv files on top of `stabilityai/sd-turbo`
and are read by `methods.img2img_turbo.convert.import_official` with `torch.load(weights_only=True)`.
No horse2zebra, summer/winter or foggy checkpoint was released: those models must be trained.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_MODEL = "stabilityai/sd-turbo"
URL_ROOT = "https://www.cs.cmu.edu/~img2img-turbo/models/"


@dataclass(frozen=True)
class OfficialCheckpoint:
    name: str  # the authors' --model_name
    method: str  # registry name of the method that loads it
    url: str
    format: str  # "paired" | "paired-stochastic" | "unpaired"
    direction: str  # the direction it translates ("a2b" / "b2a")
    caption: str | None  # the fixed prompt (unpaired); paired models take a caption per image
    input: str  # what to feed it
    defaults: tuple[tuple[str, object], ...] = ()  # inference options the authors' script uses with it


OFFICIAL: dict[str, OfficialCheckpoint] = {c.name: c for c in (
    OfficialCheckpoint("edge_to_image", "pix2pix-turbo", URL_ROOT + "edge_to_image_loras.pkl", "paired", "a2b",
                       None, "Canny edges (cv2.Canny 100/200, white on black) of a photo; caption per image",
                       (("mode", "deterministic"),)),
    OfficialCheckpoint("sketch_to_image_stochastic", "pix2pix-turbo", URL_ROOT + "sketch_to_image_stochastic_lora.pkl",
                       "paired-stochastic", "a2b", None,
                       "a sketch, dark strokes on white (binarised with x < 0.5); caption per image; r = 0.4",
                       (("mode", "stochastic"), ("condition_prep", "sketch"))),
    OfficialCheckpoint("day_to_night", "cyclegan-turbo", URL_ROOT + "day2night.pkl", "unpaired", "a2b",
                       "driving in the night", "daytime driving photos (BDD100k), 512x512",
                       (("resolution", 512),)),
    OfficialCheckpoint("night_to_day", "cyclegan-turbo", URL_ROOT + "night2day.pkl", "unpaired", "b2a",
                       "driving in the day", "night-time driving photos (BDD100k), 512x512", (("resolution", 512),)),
    OfficialCheckpoint("clear_to_rainy", "cyclegan-turbo", URL_ROOT + "clear2rainy.pkl", "unpaired", "a2b",
                       "driving in heavy rain", "clear-weather driving photos (BDD100k), 512x512",
                       (("resolution", 512),)),
    OfficialCheckpoint("rainy_to_clear", "cyclegan-turbo", URL_ROOT + "rainy2clear.pkl", "unpaired", "b2a",
                       "driving in the day", "rainy driving photos (BDD100k), 512x512", (("resolution", 512),)),
)}


def official_for(method: str) -> dict[str, OfficialCheckpoint]:
    return {k: v for k, v in OFFICIAL.items() if v.method == method}


def official_by_source(source: str) -> OfficialCheckpoint | None:
    """The official checkpoint a URL or file name refers to (by file name), if any."""
    name = str(source).rstrip("/").rsplit("/", 1)[-1]
    for ckpt in OFFICIAL.values():
        if ckpt.url.rsplit("/", 1)[-1] == name:
            return ckpt
    return None
