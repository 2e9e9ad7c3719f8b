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
