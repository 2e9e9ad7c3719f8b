"""A run's configuration: one dataclass, the `--set` syntax, sweeps, run files and variant row labels.

A run file holds the same keys as the command-line flags (`RUN_KEYS`); per-method options go under `set:`
(`{method: {option: value}}`). A list where the option takes one value is a sweep: one variant per value (a
list of lists sweeps an option whose value is itself a list). On the command line a top-level comma does the
same: `--set sdedit.strength=0.3,0.5,0.7`.

Run files are YAML, read and written with PyYAML's `safe_load` / `safe_dump`: the format of the configs users
know (ImagenHub, pyiqa, Hydra), a maintained parser that never builds arbitrary objects, and JSON is a subset,
so a manifest's `run_config` is itself a valid run file.
"""

from __future__ import annotations

import ast
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from eval.errors import ConfigError, InputError

DEFAULT_OUT = Path("runs") / "default"

#: The keys of a run file: the flags of `benchmark.py run`, with `set` for the per-method options.
RUN_KEYS = ("methods", "tasks", "out", "preset", "weights", "device", "dtype", "seed", "batch_size", "max_samples",
            "resolution", "evaluate", "eval_preset", "figures", "threads", "quiet", "timeout", "allow_large", "set")


class Sweep(list):
    """The values of one option to sweep: one variant of the method per value."""


@dataclass
class RunConfig:
    """Everything a run needs. Empty `methods` means every registered method that fits the tasks; empty `tasks`
    the bundled sample suite. `overrides` is {method: {option: value}}; a `Sweep` (or, from a run file, a list
    where the option takes one value) runs one variant per value."""

    methods: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    out: Path = DEFAULT_OUT
    preset: str = "tiny"
    weights: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    batch_size: int | None = None  # None: chosen per method from the device (eval.harness.batching)
    max_samples: int | None = None
    resolution: int | None = None
    quiet: bool = False
    evaluate: bool = True
    eval_preset: str | None = None  # encoders of the metrics: "tiny" | "paper" | "full-random" (default: follows
    #                                 `preset`)
    figures: list[str] | str = field(default_factory=lambda: ["png"])  # "png" (default) or "png,pdf"
    threads: int | None = None  # CPU intra-op threads per process (default: eval.harness.threads.thread_policy)
    timeout: float | None = None  # seconds per batch; a batch past it is a failure of phase "timeout"
    allow_large: bool = False  # lift the bounds on resolution and step counts (eval.harness.safety.check_limits)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    explicit: bool = False  # the user named methods and tasks: a kind mismatch is worth a warning

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.methods = list(self.methods or [])
        self.tasks = [str(t) for t in self.tasks or []]
        for name in ("seed", "batch_size", "max_samples", "resolution", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("max_samples", "resolution", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                                         or not self.timeout > 0 or self.timeout == float("inf")):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.eval_preset not in (None, "tiny", "paper", "full-random"):
            raise ConfigError(f"eval_preset must be 'tiny', 'paper' or 'full-random', got {self.eval_preset!r}")
        if not isinstance(self.overrides, Mapping) or not all(isinstance(v, Mapping) for v in self.overrides.values()):
            raise ConfigError("per-method options must be a mapping {method: {option: value}}")
        self.overrides = {m: dict(opts) for m, opts in self.overrides.items()}

    def to_dict(self) -> dict[str, Any]:
        """The configuration as run-file keys (JSON/YAML-able)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("overrides", "explicit")}
        d["out"] = str(self.out)
        d["figures"] = self.figures if isinstance(self.figures, str) else list(self.figures)
        d["set"] = {m: {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in opts.items()}
                    for m, opts in self.overrides.items()}
        return {k: d[k] for k in RUN_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A RunConfig from run-file keys; an unknown key is a ConfigError naming the known ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run file holds a mapping of {', '.join(RUN_KEYS)}; got {type(data).__name__}")
        unknown = sorted(set(data) - set(RUN_KEYS))
        if unknown:
            raise ConfigError(f"unknown run-file key(s) {', '.join(unknown)}; known keys: {', '.join(RUN_KEYS)}")
        kw = {k: v for k, v in data.items() if k != "set" and v is not None}
        for k in ("methods", "tasks"):
            if isinstance(kw.get(k), str):
                kw[k] = [kw[k]]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in names}, overrides=dict(data.get("set") or {}))


def parse_value(raw: str) -> Any:
    """A `--set` value: a Python literal when it is one (0.5, 4, True, "x", (1, 2)), else the string itself.
    Top-level commas make a `Sweep` of the comma-separated values."""
    parts = _split_top_level(raw)
    if len(parts) > 1:
        return Sweep(parse_value(p.strip()) for p in parts)
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _split_top_level(raw: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [*parts, cur]


def parse_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """`["sdedit.strength=0.6"]` -> {"sdedit": {"strength": 0.6}}; `sdedit.strength=0.3,0.5` -> a Sweep."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        method, dot, option = key.partition(".")
        if not sep or not dot or not method or not option:
            raise ConfigError(f"--set expects METHOD.OPTION=VALUE, got {item!r}")
        out.setdefault(method, {})[option] = parse_value(raw)
    return out


def merge_overrides(base: Mapping[str, Mapping[str, Any]], top: Mapping[str, Mapping[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """Per-method options of `top` (the flags) over those of `base` (the run file)."""
    out = {m: dict(opts) for m, opts in base.items()}
    for m, opts in top.items():
        out.setdefault(m, {}).update(opts)
    return out


def read_run_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) run file."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the run file {p}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"run file {p} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"run file {p} is nested too deeply to read; a run file is a flat mapping of "
                          f"{', '.join(RUN_KEYS)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"run file {p} must hold a mapping of {', '.join(RUN_KEYS)}")
    return data


def dump_run_file(config: Mapping[str, Any]) -> str:
    """YAML text of run-file keys (`RunConfig.to_dict()` or a manifest's `run_config`)."""
    import yaml

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return yaml.safe_dump(plain(dict(config)), sort_keys=False, default_flow_style=None, width=120)


# ---------------------------------------------------------------------------------------------------------------
# variants: one per method x combination of swept values, each with its row label
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One configuration of one method in a run. `label` is its row in every table and figure and the name of
    its outputs folder: the method name, plus `[option=value, ...]` for every option whose value differs from
    the preset's default, so a variant never shows under the bare paper name."""

    label: str
    method: str
    cls: Any
    preset: str
    source: str
    overrides: dict[str, Any]
    config: dict[str, Any]


def _is_sequence(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def _sweep_values(value: Any, default: Any) -> list[Any] | None:
    """The values to sweep, or None when `value` is a single value of the option."""
    if isinstance(value, Sweep):
        return list(value)
    if isinstance(value, (list, tuple)) and not _is_sequence(default):
        return list(value)
    if isinstance(value, list) and _is_sequence(default) and value and all(_is_sequence(x) for x in value):
        return list(value)
    return None


def expand_sweeps(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the swept options (the others fixed), in the order given."""
    keys, axes = [], []
    for k, v in options.items():
        values = _sweep_values(v, defaults.get(k))
        if values is not None and not values:
            raise ConfigError(f"option {k}: an empty list of values to sweep")
        keys.append(k)
        axes.append(values if values is not None else [v])
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(format_value(x) for x in v) + ")"
    return str(v)


def variant_label(method: str, config: Mapping[str, Any], default: Mapping[str, Any]) -> str:
    diff = [f"{k}={format_value(v)}" for k, v in config.items() if k not in default or default[k] != v]
    return f"{method}[{','.join(diff)}]" if diff else method


def resolve_variants(cfg: RunConfig, registry: Any) -> list[Variant]:
    """The variants of every selected method, each configuration resolved (defaults -> preset overlay ->
    overrides -> coercion -> validation) without loading a model. Any bad option is a ConfigError."""
    out: list[Variant] = []
    for name in cfg.methods:
        cls = registry.get(name)
        card = cls.card
        # a method without the asked-for tiny variant (e.g. tiny-turbo) runs its plain tiny preset
        preset = "tiny" if cfg.preset.startswith("tiny") and cfg.preset not in card.weights else cfg.preset
        source = str(cfg.weights) if cfg.weights else _weights_for(card, preset)
        try:
            default = cls.resolve_config(preset, {})
        except InputError as err:
            raise ConfigError(f"{name}, preset {preset!r}: {err}") from None
        seen: set[str] = set()
        for combo in expand_sweeps(cfg.overrides.get(name, {}), default):
            try:
                config = cls.resolve_config(preset, combo)
            except InputError as err:
                raise ConfigError(str(err) if name in str(err) else f"{name}: {err}") from None
            label = variant_label(name, config, default)
            if label in seen:
                continue
            seen.add(label)
            out.append(Variant(label, name, cls, preset, source, combo, config))
    return out


def _weights_for(card: Any, preset: str) -> str:
    try:
        return str(card.weights_for(preset))
    except InputError as err:
        raise ConfigError(str(err)) from None
