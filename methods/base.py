"""The one interface every method implements: a card that says what it is, and a Translator that runs it.

Nothing here imports torch at module import time, so that the registry can list methods (and read their cards)
without pulling in the deep-learning stack. Tensor work happens inside the methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

# the project's one exception hierarchy; re-exported here because methods raise these
from eval.errors import ConfigError, InputError, WeightsNotFoundError, ZooError  # noqa: F401
from eval.store import config_hash  # noqa: F401  (re-exported: part of the method-facing API)
from eval.vocab import KINDS as TASK_KINDS
from eval.vocab import WeightsProvenance

if TYPE_CHECKING:  # pragma: no cover
    import torch

KINDS = frozenset(TASK_KINDS)
DIRECTIONS = ("a2b", "b2a")


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter default and where it comes from (paper section, authors' code path, our choice)."""

    value: Any
    source: str


@dataclass(frozen=True)
class MethodCard:
    """What a method is, for users, the registry and the report (timm's PretrainedCfg, for translators)."""

    name: str
    paper: str
    year: int
    url: str
    kinds: frozenset[str]
    needs_training: bool
    weights: Mapping[str, str]  # preset -> source (hub id, URL, local path or "tiny:<name>")
    defaults: Mapping[str, HParam]
    license: str
    size_multiple: int = 1  # inputs' H and W must be multiples of this (8 for latent-diffusion methods)
    min_size: int = 1  # smallest H or W the method takes
    #: Learned features the method's losses optimise at translation or training time, in the ids metrics declare
    #: in MetricSpec.reads (e.g. "dino-vitb8/block11/keys", "clip:ViT-B-32/openai"). A metric reading one of them
    #: favours the method; the report says so and points to the held-out metric.
    optimises: tuple[str, ...] = ()
    #: Bugs in the authors' released code that this implementation fixes by default, each one short line naming
    #: the upstream code and the fix. Apart from these, the defaults reproduce the authors' released algorithm.
    fixes: tuple[str, ...] = ()
    #: Opt-in deviations from the authors' algorithm, off by default: "option" (any non-default value) or
    #: "option=value" -> what it changes and its measured effect. Every key names an option of `defaults`, so a run
    #: that turns one on differs from the defaults in its config (and shows it in its table row).
    variants: Mapping[str, str] = field(default_factory=dict)
    #: A reference row rather than a competitor (a copy of the input, an oracle that sees the target): reports
    #: show it in its own block below the methods and never mark it best.
    reference: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ValueError(f"method name {self.name!r} must be lowercase with no spaces (e.g. 'cyclegan-turbo')")
        unknown = set(self.kinds) - KINDS
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown task kinds {sorted(unknown)}; known: {sorted(KINDS)}")
        if "tiny" not in self.weights:
            raise ValueError(f"method {self.name!r} needs a 'tiny' preset in its weights (tests and CI run on it)")
        for key, hp in self.defaults.items():
            if not isinstance(hp, HParam):
                raise TypeError(f"method {self.name!r}: default {key!r} must be an HParam(value, source)")
        for fix in self.fixes:
            if not isinstance(fix, str) or not fix.strip():
                raise TypeError(f"method {self.name!r}: fixes must be non-empty strings, got {fix!r}")
        for key, text in self.variants.items():
            option, eq, value = key.partition("=")
            if option not in self.defaults:
                raise ValueError(f"method {self.name!r}: variant {key!r} names no option of the card "
                                 f"(options: {', '.join(sorted(self.defaults))})")
            if eq and value == str(self.defaults[option].value):
                raise ValueError(f"method {self.name!r}: variant {key!r} is the default value, not a variant")
            if not isinstance(text, str) or not text.strip():
                raise TypeError(f"method {self.name!r}: variant {key!r} needs a description")

    def default_config(self) -> dict[str, Any]:
        """The defaults as plain values (what a run uses unless overridden)."""
        return {k: hp.value for k, hp in self.defaults.items()}

    def active_variants(self, config: Mapping[str, Any]) -> list[str]:
        """The variants a resolved config turns on: "option=value" for each listed option whose value differs
        from the default (an "option=value" entry only when the value matches)."""
        out = []
        for key in self.variants:
            option, eq, value = key.partition("=")
            if option not in config or config[option] == self.defaults[option].value:
                continue
            if eq and str(config[option]) != value:
                continue
            out.append(f"{option}={config[option]}")
        return list(dict.fromkeys(out))

    def resolve_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with user overrides; an unknown key is an error naming the known ones.

        Overrides whose value is None are dropped (timm's factory rule), so CLI flags that were not given
        do not clobber defaults.
        """
        return override_options(self.name, self.defaults, overrides)

    def coerce_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Give every option its default's type (see `coerce_options`)."""
        return coerce_options(self.name, self.defaults, config)

    def weights_for(self, preset: str) -> str:
        try:
            return self.weights[preset]
        except KeyError:
            raise InputError(
                f"{self.name}: unknown preset {preset!r}; presets: {', '.join(self.weights)} "
                "(or pass a local directory / hub id as --weights)"
            ) from None


def override_options(owner: str, defaults: Mapping[str, HParam], overrides: Mapping[str, Any] | None
                     ) -> dict[str, Any]:
    """The defaults' values updated with `overrides` (None values dropped); an unknown key is an InputError
    naming the known ones."""
    config = {k: hp.value for k, hp in defaults.items()}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in config:
            raise InputError(f"{owner}: unknown option {key!r}; known options: {', '.join(sorted(config)) or '(none)'}")
        config[key] = value
    return config


def coerce_options(owner: str, defaults: Mapping[str, HParam], config: Mapping[str, Any]) -> dict[str, Any]:
    """Give every option its default's type (CLI and run-file values such as "false" or "10" may arrive as
    strings); a value that does not convert is an InputError naming the option. An int option refuses a
    fractional value (10.5 steps). Options whose default is None or a container stay as given."""
    out = dict(config)
    truthy, falsy = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
    for key, hp in defaults.items():
        v, kind = out[key], type(hp.value)
        try:
            if kind is bool and isinstance(v, str):
                if v.strip().lower() not in truthy | falsy:
                    raise ValueError(v)
                out[key] = v.strip().lower() in truthy
            elif kind is bool:
                if v not in (0, 1):  # True/False/0/1 only: 2 or 0.5 is not a switch value
                    raise ValueError(v)
                out[key] = bool(v)
            elif kind is int:
                if isinstance(v, bool) or float(v) != int(float(v)):
                    raise ValueError(v)
                out[key] = int(float(v))
            elif kind is float:
                if isinstance(v, bool):
                    raise ValueError(v)
                out[key] = float(v)
            elif kind is str and v is not None:
                if not isinstance(v, (str, int, float)):
                    raise ValueError(v)
                out[key] = str(v)
        except (TypeError, ValueError):
            raise InputError(f"{owner}: option {key}={v!r} is not a valid {kind.__name__}") from None
    return out


def resolve_options(owner: str, defaults: Mapping[str, HParam], overrides: Mapping[str, Any] | None = None, *,
                    overlay: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one option resolver of methods and trainers: defaults -> preset overlay -> overrides -> coercion.
    Callers then validate the values (`Translator.validate_config`, a trainer's checks)."""
    merged = {**dict(overlay or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return coerce_options(owner, defaults, override_options(owner, defaults, merged))


def per_sample_generators(generator: Any, b: int) -> list[Any]:
    """One torch.Generator per sample. A list is used as given (the runner passes one per sample, seeded from
    (run seed, sample id)); a single generator (or None: torch's global RNG) seeds one generator per sample, so a
    batch is still reproducible from one seed."""
    import torch

    if isinstance(generator, (list, tuple)):
        if len(generator) != b:
            raise InputError(f"got {len(generator)} generators for a batch of {b}")
        return list(generator)
    gdev = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**62, (b,), generator=generator, device=gdev)
    return [torch.Generator(device=gdev).manual_seed(int(s)) for s in seeds.tolist()]


@dataclass
class TranslationInput:
    """A batch handed to `Translator.translate`. All images are float tensors B x C x H x W in [0, 1].

    `images` is what gets translated; `condition` (edge map, sketch, semantic mask) drives conditional methods;
    `reference` is the style image of image-guided methods; `target` is the ground truth of paired tasks (never
    shown to a method, carried for metrics); `direction` selects a2b / b2a for two-way unpaired methods.
    """

    images: torch.Tensor
    src_prompts: Sequence[str | None] | None = None
    tgt_prompts: Sequence[str | None] | None = None
    condition: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    direction: str = "a2b"
    ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        import torch

        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 4 or self.images.shape[1] != 3:
            shape = tuple(self.images.shape) if isinstance(self.images, torch.Tensor) else type(self.images)
            raise InputError(f"images must be a float tensor B x 3 x H x W, got {shape}")
        b = self.images.shape[0]
        if self.ids is None:
            self.ids = [str(i) for i in range(b)]
        for name in ("images", "condition", "reference", "mask"):
            t = getattr(self, name)
            if t is None:
                continue
            if not t.is_floating_point():
                raise InputError(f"{name} must be a float tensor in [0, 1] (got {t.dtype}); divide uint8 by 255")
            if t.ndim != 4 or t.shape[0] != b:
                raise InputError(f"{name} must be B x C x H x W with B={b}, got {tuple(t.shape)}")
            if t.numel() and (float(t.min()) < -1e-4 or float(t.max()) > 1 + 1e-4):
                raise InputError(
                    f"{name} must lie in [0, 1], got [{float(t.min()):.3f}, {float(t.max()):.3f}]; "
                    "images in [-1, 1] should be mapped with (x + 1) / 2"
                )
        for name in ("src_prompts", "tgt_prompts", "ids"):
            seq = getattr(self, name)
            if seq is not None and len(seq) != b:
                raise InputError(f"{name} has {len(seq)} entries for a batch of {b}")
        if self.direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def select(self, index: Sequence[int]) -> TranslationInput:
        """The sub-batch of the given sample positions (used to retry failing samples one by one)."""
        idx = list(index)
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or f.name == "direction":
                kw[f.name] = v
            elif hasattr(v, "index_select"):
                kw[f.name] = v[idx]
            else:
                kw[f.name] = [v[i] for i in idx]
        return TranslationInput(**kw)


def perf_input(size: int, batch_size: int, seed: int = 0, *, reference: bool = True, direction: str = "a2b"
               ) -> TranslationInput:
    """A synthetic batch of `size` x `size` random images that every kind of method can take (condition,
    prompts, and a reference image unless `reference=False`), for `benchmark.py perf`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, size, size, generator=g)
    ref = torch.rand(x.shape, generator=g)
    return TranslationInput(images=x, condition=(x > 0.5).float(), reference=ref if reference else None,
                            src_prompts=["a photo of a cat"] * batch_size,
                            tgt_prompts=["a photo of a dog"] * batch_size, direction=direction,
                            ids=[f"perf{seed}-{i}" for i in range(batch_size)])


@dataclass(frozen=True)
class PerfMode:
    """One mode `benchmark.py perf` times: option overrides (over the run's) and the input builder
    `input(size, batch_size, seed) -> TranslationInput`."""

    options: Mapping[str, Any] = field(default_factory=dict)
    input: Any = perf_input


@dataclass
class TranslationOutput:
    """Translated images (float B x 3 x H x W in [0, 1]) plus per-sample extras (inverted noise, phase timings)."""

    images: torch.Tensor
    extras: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.extras:
            self.extras = [{} for _ in range(int(self.images.shape[0]))]


class Translator(ABC):
    """A diffusion image-to-image method behind one call signature (diffusers' rule: one way to call it).

    Subclasses set `card`, implement `from_pretrained` and `translate`, and keep heavy imports inside methods
    so that the registry stays importable without torch.
    """

    card: ClassVar[MethodCard]

    #: Resolved hyper-parameters of this instance (card defaults + overrides); part of the run cache key.
    config: dict[str, Any]
    #: Where the weights came from (hub id, path, or tiny preset with its version); part of the cache key.
    weights_id: str
    #: Defaults the tiny preset changes (e.g. fewer sampling steps, so CI runs the same algorithm quickly).
    tiny_defaults: ClassVar[Mapping[str, Any]] = {}
    #: What "results do not depend on batch size" means for this method (the contract tests hold each method to it).
    #: "float": a batch equals its samples run one by one up to the rounding of batched kernels (1e-4 on [0, 1]).
    #: "float-guided": the same, but gradient guidance multiplies that rounding at every step (pix2pix-zero's
    #: cross-attention guidance, DiffuseIT's x1000-x3000 DINO/CLIP losses; observed 1-4e-5 on the tiny presets,
    #: held to 1e-3 on [0, 1]).
    #: "8bit-handoff": an intermediate result is quantised to 8 bits between two stages as the authors do (PITI's
    #: base -> upsampler), so that rounding (~1e-6) can cross a level boundary: a few intermediate values move by
    #: one level, and only the samples they belong to change, by a fraction of an output level.
    batch_equivalence: ClassVar[str] = "float"

    @classmethod
    @abstractmethod
    def from_pretrained(
        cls,
        source: str | PathLike | None = None,
        *,
        preset: str = "paper",
        device: str = "cpu",
        dtype: Any = None,
        **overrides: Any,
    ) -> Translator:
        """Load the method. `source` (hub id, local dir/file, "tiny:<name>") wins over `preset`."""

    @abstractmethod
    def translate(
        self, batch: TranslationInput, *, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> TranslationOutput:
        """Translate a batch. A list of generators (one per sample) makes results independent of batching."""

    @classmethod
    def resolve_config(cls, preset: str = "paper", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The hyper-parameters an instance loaded with `preset` and `overrides` will use, without loading it.

        The runner keys its output cache on this; `from_pretrained` must use it too (one implementation).
        Card defaults, then the preset's overlay (`preset_defaults`), then the overrides; values coerced to the
        defaults' types, then `validate_config`. Every method goes through here: override the two hooks, not this.
        """
        config = resolve_options(cls.card.name, cls.card.defaults, overrides, overlay=cls.preset_defaults(preset))
        cls.validate_config(config)
        return config

    @classmethod
    def preset_defaults(cls, preset: str) -> Mapping[str, Any]:
        """Defaults a preset changes: `tiny_defaults` on the tiny preset (methods whose defaults depend on the
        base model, e.g. SD-Turbo vs SD 1.x, override this)."""
        return cls.tiny_defaults if preset == "tiny" else {}

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """Raise InputError naming the option and the fix for values the method cannot take (methods override)."""
        return None  # an optional hook: nothing to check by default

    @classmethod
    def weights_identity(cls, source: str) -> str:
        """The `weights_id` that loading `source` will give, without loading or downloading anything (the run
        keys its output cache on it)."""
        from .common.loading import weights_identity

        return weights_identity(source)

    @classmethod
    def weights_provenance(cls, source: str) -> WeightsProvenance:
        """Where the weights loaded from `source` come from (see `eval.vocab.WEIGHTS_KINDS`), without loading
        them. The default: "none" for no weights, "random" for a tiny or full-random preset, "converted-official" for an
        authors' checkpoint file (.pt / .pth / .pkl / .ckpt, local or URL), otherwise "real". Methods whose
        default weights are an untrained initialisation override this."""
        s = str(source)
        if s in ("", "none"):
            kind = "none"
        elif s.startswith(("tiny:", "full-random:")):  # toy-size or full-size random init
            kind = "random"
        elif s.lower().endswith((".pt", ".pth", ".pkl", ".ckpt")):
            kind = "converted-official"
        else:
            kind = "real"
        return WeightsProvenance(kind, "none" if kind == "none" else cls.weights_identity(s))

    def networks(self) -> dict[str, Any]:
        """The neural networks the algorithm must call (name -> nn.Module), for the perf call census and the
        overhead ratio (time of a translation over the time spent inside these networks). Only networks (denoiser,
        VAE, text/image encoders, the backward pass of guidance through them), not the pre/post-processing around
        them or non-network optimisation steps; top level only."""
        return {}

    @classmethod
    def perf_modes(cls) -> dict[str, PerfMode]:
        """The modes `benchmark.py perf` times, name -> PerfMode(options, input): every way of running the method
        whose cost differs (text- vs image-guided, deterministic vs stochastic, ...). Options are read at
        translate time. Default: one mode on `perf_input` (images, condition, reference, prompts)."""
        return {"default": PerfMode()}

    def apply_speed_options(self, **options: Any) -> dict[str, str]:
        """Opt-in speed options on this method's networks (channels_last, attention="sdpa"|"classic", compile,
        vae_fp16_fallback, cpu_offload; see `methods.common.speed`), in place; returns what was applied."""
        from .common.speed import apply_speed_options

        return apply_speed_options(self, **options)

    # -- trainable methods override these -------------------------------------------------------------
    @classmethod
    def resolve_train_config(cls, preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The training options `fit` will use on `preset`, resolved and checked without loading anything."""
        raise NotImplementedError(f"{cls.card.name} is not trainable")

    def fit(self, data: Any, config: Mapping[str, Any], *, callback: Any = None) -> None:
        raise NotImplementedError(f"{self.card.name} is not trainable")

    def save_pretrained(self, path: str | PathLike) -> None:
        raise NotImplementedError(f"{self.card.name} has no trainable state to save")

    # -- notebook convenience ------------------------------------------------------------------------------
    def translate_images(self, images: Sequence[Any], *, prompts: str | Sequence[str] | None = None,
                         src_prompts: str | Sequence[str] | None = None, condition: Sequence[Any] | None = None,
                         reference: Any = None, direction: str = "a2b", seed: int = 0,
                         ids: Sequence[str] | None = None) -> list[Any]:
        """Translate PIL images or image files; returns PIL images of the same sizes.

        `prompts`: the target prompt(s), one for all or one per image (`src_prompts` likewise); `condition`: one
        edge map / sketch / mask per image; `reference`: one style image for all, or one per image. Each image is
        seeded from (seed, its id), ids being file stems or list positions, exactly as the benchmark seeds a
        sample, so a notebook call reproduces a run's output for the same image, id and seed.
        """
        import numpy as np
        import torch
        from PIL import Image

        from eval.harness.runner import sample_seed
        from eval.harness.safety import output_range_error

        def load(x: Any) -> Any:
            if isinstance(x, (str, PathLike)):
                try:
                    with Image.open(x) as im:
                        return im.convert("RGB")
                except OSError as err:
                    raise InputError(f"cannot read the image {x}: {err}") from None
            if isinstance(x, Image.Image):
                return x.convert("RGB")
            raise InputError(f"translate_images takes PIL images or image paths, got {type(x).__name__}")

        def tensor(img: Any) -> Any:
            return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]

        def per_image(value: Any, what: str) -> list[Any]:
            if value is None or isinstance(value, (str, Image.Image, PathLike)):
                return [value] * len(images)
            if len(value) != len(images):
                raise InputError(f"{len(value)} {what} for {len(images)} images; pass one for all or one per image")
            return list(value)

        if isinstance(images, (str, PathLike, Image.Image)):
            images = [images]
        names = list(ids) if ids is not None else [
            Path(x).stem if isinstance(x, (str, PathLike)) else str(i) for i, x in enumerate(images)]
        tgt, src = per_image(prompts, "prompts"), per_image(src_prompts, "source prompts")
        conds, refs = per_image(condition, "conditions"), per_image(reference, "references")
        device = next((p.device for net in self.networks().values() for p in net.parameters()), torch.device("cpu"))
        out = []
        for i, x in enumerate(images):
            batch = TranslationInput(
                images=tensor(load(x)), tgt_prompts=[tgt[i]], src_prompts=[src[i]], direction=direction,
                condition=tensor(load(conds[i])) if conds[i] is not None else None,
                reference=tensor(load(refs[i])) if refs[i] is not None else None, ids=[names[i]])
            gen = torch.Generator(device=device).manual_seed(sample_seed(seed, names[i]))
            result = self.translate(batch, generator=[gen]).images[0].detach().float()
            # the run's output checks: NaN/inf or values outside [0, 1] are an error, never a silently clamped image
            if not torch.isfinite(result).all():
                raise FloatingPointError(f"{self.card.name} returned NaN or inf for image {names[i]!r} "
                                         f"({result.shape[-1]}x{result.shape[-2]} px)")
            if (why := output_range_error(result)) is not None:
                raise FloatingPointError(f"{self.card.name}, image {names[i]!r}: {why}")
            arr = (result.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round()
            out.append(Image.fromarray(arr.astype(np.uint8)))
        return out

    # -- shared checks ----------------------------------------------------------------------------------
    def check_input(self, batch: TranslationInput, kind: str | None = None) -> None:
        """Reject inputs this method cannot take, with a message that names the samples and the fix."""
        if not isinstance(batch, TranslationInput):
            raise InputError(f"{self.card.name}.translate takes a TranslationInput (float tensors in [0, 1]); for "
                             "PIL images or image files use translate_images([...], prompts=..., seed=...)")
        card = self.card
        if kind is not None and kind not in card.kinds:
            raise InputError(
                f"{card.name} cannot run a {kind!r} task (it supports {', '.join(sorted(card.kinds))}); "
                "pick a task of a supported kind (`python benchmark.py list`)"
            )
        h, w = batch.size
        ids = ", ".join(map(str, batch.ids or []))
        if min(h, w) < card.min_size:
            raise InputError(
                f"{card.name}: sample(s) {ids} are {w}x{h}, smaller than the {card.min_size} px minimum; "
                f"upscale them or use a task with --resolution >= {card.min_size}"
            )
        m = card.size_multiple
        if h % m or w % m:
            raise InputError(
                f"{card.name}: sample(s) {ids} are {w}x{h}; width and height must be multiples of {m}. "
                f"Resize or crop the images (e.g. --resolution {max(m, (min(h, w) // m) * m)})"
            )
