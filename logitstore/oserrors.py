"""OS failures while writing a store, as one-line errors that say what to do.

A build that hits a full disk or a folder it may not write stops with
:class:`~logitstore.errors.StoreWriteError` (the CLI prints it as one ``error:`` line)
instead of a traceback. Nothing partial is marked complete, so after the fix a rerun of
the same command resumes where the build stopped.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from logitstore.errors import LogitStoreError, StoreWriteError

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], what: str = "store") -> Iterator[None]:
    """Turn a disk-full or permission OSError raised inside the block into a one-line
    StoreWriteError about ``path`` (the ``what`` being written). Other errors pass."""
    try:
        yield
    except LogitStoreError:
        raise
    except OSError as exc:
        where = exc.filename or path
        if exc.errno in DISK_FULL:
            raise StoreWriteError(
                f"disk full writing {what} {path} (at {where}); free space and rerun the same command to resume"
            ) from exc
        if exc.errno in NOT_ALLOWED or isinstance(exc, PermissionError):
            reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
            raise StoreWriteError(
                f"cannot write {what} {path}: {reason} at {where}; make it writable "
                f"(chmod -R u+w) or choose another --out"
            ) from exc
        raise
