"""User-facing errors.

Anything a user can cause (a bad value, a missing file, missing weights) raises a subclass of
:class:`UserError`. The CLI prints its message as one line and exits non-zero, without a traceback.
Programming errors keep their tracebacks. :func:`first_line` and :func:`one_line` cut a library's
multi-line error down to what such a line quotes.
"""
from __future__ import annotations

import re


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming the bad value and what is allowed."""

    exit_code = 2


class Terminated(UserError):
    """The run was stopped by SIGTERM (a scheduler's preemption, ``kill``): exit 143 = 128 + SIGTERM, so a job
    system sees a stopped job, not a finished one."""

    exit_code = 128 + 15


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


def first_line(err: BaseException | str, lines: int = 1, default: str = "") -> str:
    """The first ``lines`` non-blank lines of an exception's message (or of a text), stripped and joined by a
    space: the part of a library's multi-line error worth quoting in a one-line message; ``default`` if blank."""
    found = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(found[:lines]) if found else default


def one_line(message: BaseException | str) -> str:
    """A (jsonargparse) error collapsed into one line, keeping its innermost, most specific reason."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    inner = re.search(r"Problem with given class_path '([^']+)': (.*?)(?: - Expected a <class 'NoneType'>|$)", text)
    if inner:
        text = f"{inner.group(2).strip()} (in {inner.group(1)})"
    return text
