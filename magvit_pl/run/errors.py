"""User-facing errors.

Anything a user can cause (a bad value, a missing file, missing weights) raises a subclass of
:class:`UserError`. The CLI prints its message as one line and exits non-zero, without a traceback.
Programming errors keep their tracebacks.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming the bad value and what is allowed."""

    exit_code = 2


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed at does not exist."""


class MissingWeightsError(MissingFileError):
    """Pretrained weights are not in the cache; the message names the command that fetches them."""

    def __init__(self, name: str, path: str):
        self.name = name
        self.path = path
        super().__init__(
            f"missing weights '{name}' (expected at {path}); fetch them with: python cli.py fetch-weights {name}"
        )


class NonFiniteLossError(UserError):
    """Training produced NaN/inf losses too many steps in a row."""

    exit_code = 3
