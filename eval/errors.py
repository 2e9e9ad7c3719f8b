"""The project's one exception hierarchy for mistakes a user can fix.

Every error here carries a message that names what is wrong and the fix. The command line prints it on one line
and exits with status 2; library callers catch `ZooError` (or a subclass) like any other exception. Bugs are not
`ZooError`s: they keep their traceback. Nothing in the library raises `SystemExit`.

It lives in `eval` (which depends on nothing else in the project) so that `methods`, `datasets` and the run
harness can all share it.
"""

from __future__ import annotations


class ZooError(Exception):
    """A user-fixable problem; the message names the fix."""


class InputError(ZooError, ValueError):
    """A user-fixable problem with the data or options handed to a method (wrong size, missing prompt, wrong
    kind, bad option value...)."""


class ConfigError(InputError):
    """A run configuration that cannot work: an unknown device or dtype, a `--set` for a method that is not
    selected, an option value that does not convert or validate, a malformed run file."""


class WeightsNotFoundError(ZooError, FileNotFoundError):
    """The weights a method needs are not on this machine (offline, wrong path)."""


class RunLockedError(ZooError):
    """Another process is writing the run directory."""


class RunNotFoundError(ZooError, FileNotFoundError):
    """A directory that is not a run directory (no manifest.json) where one is needed."""


class PluginError(ZooError):
    """A plugin module named in I2I_ZOO_PLUGINS that is missing or fails to import."""


def without_unsafe_advice(text: str) -> str:
    """`text` without advice to turn off safe checkpoint loading (PyTorch's refusal messages suggest
    `weights_only=False`, i.e. running code from the file, or allow-listing its globals): such lines and sentences
    are replaced by a pointer to the safe way."""
    import re

    unsafe = re.compile(r"weights_only[`'\"]?\s*(=|set to|to)\s*[`'\"]?False|add_safe_globals|safe_globals\(|"
                        r"can still be loaded", re.IGNORECASE)
    kept, dropped = [], False
    for line in str(text).splitlines():
        parts = re.split(r"(?<=[.!?])\s+", line)
        good = [p for p in parts if not unsafe.search(p)]
        dropped |= len(good) < len(parts)
        if good:
            kept.append(" ".join(good))
    out = "\n".join(kept)
    if dropped:
        out += " (the file needs code to load; use a .safetensors or plain state-dict file instead)"
    return out
