"""The registry: name -> "module:Class" table, the @register decorator, lookups with helpful errors."""

from __future__ import annotations

import builtins
import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from eval.errors import PluginError

from .base import MethodCard, Translator, ZooError

# name -> "module:Class". Keep sorted; one line per method.
_BUILTIN: dict[str, str] = {
    "cyclegan-turbo": "methods.img2img_turbo:CycleGANTurbo",
    "diffuseit": "methods.diffuseit:DiffuseIT",
    "identity": "methods.identity:Identity",
    "pix2pix-turbo": "methods.img2img_turbo:Pix2PixTurbo",
    "pix2pix-zero": "methods.pix2pix_zero:Pix2PixZero",
    "piti": "methods.piti:PITI",
    "sdedit": "methods.sdedit:SDEdit",
}
_LOADED: dict[str, type[Translator]] = {}
_PLUGINS_LOADED = False


class UnknownMethodError(ZooError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register(cls: type[Translator]) -> type[Translator]:
    """Class decorator: validate and add a Translator to the registry."""
    if not (isinstance(cls, type) and issubclass(cls, Translator)):
        raise TypeError(f"@register expects a Translator subclass, got {cls!r}")
    card = getattr(cls, "card", None)
    if not isinstance(card, MethodCard):
        raise TypeError(f"{cls.__qualname__} must define `card: ClassVar[MethodCard]`")
    name = card.name
    target = f"{cls.__module__}:{cls.__qualname__}"
    # every registered name is in _BUILTIN, so this also catches a second class under a taken name
    if name in _BUILTIN and _BUILTIN[name] != target:
        raise ValueError(f"method name {name!r} is taken by {_BUILTIN[name]}; pick another name for {target}")
    _LOADED[name] = cls
    _BUILTIN.setdefault(name, target)
    return cls


def load_plugin(spec: str) -> None:
    """Import an out-of-tree method module (dotted name or path to a .py file) so its @register runs.

    This executes the module's code. A missing file or a module that fails to import (syntax error, missing
    dependency, an error or `SystemExit` at import) is a PluginError naming the plugin."""
    try:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise PluginError(f"plugin file {spec} (from I2I_ZOO_PLUGINS) does not exist; fix or unset "
                                  "I2I_ZOO_PLUGINS")
            mod_name = f"i2i_zoo_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert module_spec and module_spec.loader
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
        else:
            importlib.import_module(spec)
    except (PluginError, KeyboardInterrupt):
        raise
    except BaseException as err:  # noqa: BLE001 - whatever a broken plugin raises, the message names it
        raise PluginError(f"plugin {spec} (from I2I_ZOO_PLUGINS) failed to import: {type(err).__name__}: {err}. "
                          "Fix the plugin or unset I2I_ZOO_PLUGINS") from None


def _load_env_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for spec in filter(None, (s.strip() for s in os.environ.get("I2I_ZOO_PLUGINS", "").split(","))):
        load_plugin(spec)


def list() -> builtins.list[str]:  # noqa: A001 - the registry's public API name
    """Registered method names, sorted. Imports no method module."""
    _load_env_plugins()
    return sorted(_BUILTIN)


def get(name: str) -> type[Translator]:
    """The Translator class registered under `name` (imports its module on first use)."""
    _load_env_plugins()
    if name in _LOADED:
        return _LOADED[name]
    if name not in _BUILTIN:
        known = sorted(_BUILTIN)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownMethodError(f"unknown method {name!r}.{hint} Known methods: {', '.join(known)}")
    module_name, _, class_name = _BUILTIN[name].partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if name not in _LOADED:  # a module that forgot @register still resolves, but must be valid
        register(cls)
    return cls


def cards() -> dict[str, MethodCard]:
    """Every registered method's card (imports the method modules, which keep heavy imports lazy)."""
    return {name: get(name).card for name in list()}


def create(name: str, **kwargs: Any) -> Translator:
    """`get(name).from_pretrained(**kwargs)`."""
    return get(name).from_pretrained(**kwargs)
