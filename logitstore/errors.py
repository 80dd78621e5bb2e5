"""Errors the teacher side raises. The CLI turns each into one line and a non-zero exit.

Every message names the problem and the fix. The classes also inherit the builtin that
fits, so callers may catch ``FileNotFoundError`` or ``ValueError`` as usual.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LogitStoreError(Exception):
    """Base class: an error with a message meant for a user, printed without a traceback."""


class CheckpointError(LogitStoreError, FileNotFoundError):
    """A path is not a usable Hugging Face checkpoint folder."""


class DataError(LogitStoreError, ValueError):
    """The dataset cannot be used as given (missing column, unknown label, empty split...)."""


class StoreMismatchError(LogitStoreError, ValueError):
    """A build would mix data, tokenizer or label set with what the store already holds."""


class StoreCorruptError(LogitStoreError, OSError):
    """The store is missing, truncated, or its metadata cannot be read."""


class FormatVersionError(StoreCorruptError):
    """The store was written in a format version this code does not read."""


class ExportError(LogitStoreError, RuntimeError):
    """ONNX export failed, or the exported graph does not match PyTorch within tolerance."""


class TeacherOutputError(LogitStoreError, ValueError):
    """The teacher produced NaN or inf logits, or logits the chosen storage cannot hold."""


class ProviderError(LogitStoreError, RuntimeError):
    """The requested ONNX Runtime execution provider is not available or did not run."""


class NoCheckpointError(LogitStoreError, LookupError):
    """The store has no complete checkpoint matching the request (name, ths or tll)."""


# Faults (issue 10): a second writer on a locked store, and OS failures while writing
# (disk full, read-only folder). See logitstore/lock.py and logitstore/oserrors.py.
class StoreLockedError(LogitStoreError, BlockingIOError):
    """Another process holds the write lock of the store (or sweep folder)."""


class StoreWriteError(LogitStoreError, OSError):
    """Writing failed for a reason outside the program: disk full, no permission, read-only."""


# Issue 13: stores on object storage (logitstore/storage.py).
class StorageError(LogitStoreError, OSError):
    """A store URL cannot be opened: its fsspec backend is not installed, or the storage
    options (LOGITSTORE_STORAGE_OPTIONS) are malformed."""


# Issue 13: the build on Ray (logitstore/ray_build.py).
class ClusterError(LogitStoreError, RuntimeError):
    """Ray is not installed, its cluster cannot be reached, or a Ray worker died mid-build."""


def run_cli(run: Callable[[Any], int], args: Any, errors: type[BaseException] | tuple[type[BaseException], ...],
            interrupted: str = "interrupted") -> int:
    """Run a command-line entry point: ``errors`` become one ``error: ...`` line and exit
    code 2 (``--debug`` re-raises them with the traceback); Ctrl-C prints ``interrupted``
    and returns 130. Shared by the ``logitstore`` and ``students`` commands."""
    import sys

    try:
        return run(args)
    except errors as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
