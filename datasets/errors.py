"""The one exception type of the data layer, so callers can tell a user's data problem from a bug."""

from __future__ import annotations

from eval.errors import ZooError


class DataError(ZooError, ValueError):
    """A problem with the user's data (bad image, wrong folder layout, prompts file mismatch, missing download).

    The message always names the file or folder involved and what to do about it; the CLI prints it without a
    traceback.
    """
