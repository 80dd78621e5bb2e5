"""Errors the student side raises. The CLI turns each into one line and a non-zero exit.

Every message names the problem and the fix. The classes also inherit the builtin that
fits, so callers may catch ``ValueError`` or ``RuntimeError`` as usual. Errors about the
store itself (missing, corrupt, unknown format version, no such checkpoint) come from
``logitstore.errors`` and are passed through unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence


class StudentsError(Exception):
    """Base class: an error with a message meant for a user, printed without a traceback."""


class ConfigError(StudentsError, ValueError):
    """A configuration is invalid; the message lists every problem found, and ``problems``
    holds them one by one (so a config made of parts can report all of its parts' problems)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class OutputPathError(StudentsError, OSError):
    """An output folder (``--out``) cannot be created: a file is in the way, or no permission."""


class StudentInitError(StudentsError, ValueError):
    """The student cannot be built: too many layers, an incompatible --init model, ..."""


class StoreContentError(StudentsError, LookupError):
    """The store lacks something training needs (a train split, a teacher checkpoint)."""


class OnlineTeacherError(StudentsError, RuntimeError):
    """The teacher cannot be run online (no source checkpoint, no exported ONNX model)."""


class ClusterError(StudentsError, RuntimeError):
    """Runs cannot be sent where they were asked to go: Ray missing or unreachable, a cluster
    too small for one run, a local worker process that died."""
