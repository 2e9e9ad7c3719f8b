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
    """`text` without advice to turn off safe checkpoint loading. PyTorch's refusal ("Weights only load failed ...")
    suggests re-running with `weights_only` off (running code from the file) or allow-listing its globals; each such
    message is replaced by its one-line cause and a pointer to the safe way, and any other sentence with such advice
    is dropped."""
    import re

    def short(m: re.Match) -> str:
        cause = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", m.group(0), re.S)
        detail = " ".join(cause.group(1).split()) if cause else "it holds objects beyond tensors"
        return (f"refused by torch.load's safe mode ({detail}); the file needs code to load: use a .safetensors or "
                "plain state-dict file instead")

    text = re.sub(r"Weights only load failed.*?(?:torch\.load\.html\.?|$)", short, str(text), flags=re.S)
    unsafe = re.compile(r"weights_only\W*(=|set to|to)\W*False|add_safe_globals|safe_globals\(|can still be loaded",
                        re.IGNORECASE)
    return "\n".join(" ".join(p for p in re.split(r"(?<=[.!?])\s+", line) if not unsafe.search(p))
                     for line in text.splitlines())
