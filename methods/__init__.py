"""The method zoo: a lazy registry of `Translator` classes.

The registry is a table name -> "module:Class" (`methods/registry.py`). Listing names imports nothing; reading
cards imports the method modules, which by convention keep torch and friends inside functions, so
`python benchmark.py list` stays fast. A method registers itself with `@register` (validated: unique name, a
Translator with a card) and gets one line in `registry._BUILTIN`, so that it is found without importing every
module (timm's lesson: an explicit import list prevents "Unknown model"). Out-of-tree methods call
`load_plugin("my_pkg.my_method")` / `load_plugin("path/to/file.py")` or are listed in the `I2I_ZOO_PLUGINS`
environment variable (comma-separated).
"""

from .base import (
    HParam,
    InputError,
    MethodCard,
    PerfMode,
    TranslationInput,
    TranslationOutput,
    Translator,
    WeightsNotFoundError,
)
from .registry import UnknownMethodError, cards, create, get, list, load_plugin, register

__all__ = [
    "HParam",
    "InputError",
    "MethodCard",
    "PerfMode",
    "TranslationInput",
    "TranslationOutput",
    "Translator",
    "UnknownMethodError",
    "WeightsNotFoundError",
    "cards",
    "create",
    "get",
    "list",
    "load_plugin",
    "register",
]
