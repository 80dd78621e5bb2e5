"""One writer at a time: an exclusive lock on a store (or on any folder, e.g. a sweep's),
and a shared lock for many users of a folder that one writer may clean (the export cache).

    from logitstore.lock import exclusive

    with exclusive("logits.zarr", what="build"):
        ...  # the only process writing logits.zarr

The lock is an OS file lock (``flock``, through the ``filelock`` package) on the file
``<path>.lock`` beside ``path``. The kernel drops it when its holder ends, however it ends
(``kill -9`` included), so a lock is never stale and there is nothing to clean up by hand.
A second writer does not wait: it gets :class:`StoreLockedError` at once, naming the
holder, whose pid, host and start time are written beside the lock in
``<path>.lock.owner`` (JSON; removed on release, ignored whenever the lock is free).

Why beside the store and not inside it: zarr 3 warns ("Object at .lock is not recognized
as a component of a Zarr hierarchy") on every listing of a group holding a foreign file,
and a new store is only created in an absent or empty folder, so a lock must be able to
exist before the store does. Readers (``logitstore info``, ``students``) never take it.

Object storage (``s3://...``) has no such lock: :func:`exclusive` does not lock a URL,
and running one build per store URL is the user's part (docs/store-format.md).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from logitstore.errors import StoreLockedError

LOCK_SUFFIX = ".lock"
OWNER_SUFFIX = ".lock.owner"


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of ``path``: ``<path>.lock`` in the same folder."""
    p = Path(path).absolute()
    return p.with_name(p.name + LOCK_SUFFIX)


def owner_path(path: str | os.PathLike[str]) -> Path:
    """Where the lock holder describes itself: ``<path>.lock.owner``."""
    p = Path(path).absolute()
    return p.with_name(p.name + OWNER_SUFFIX)


def owner(path: str | os.PathLike[str]) -> dict | None:
    """What the holder of ``path``'s lock wrote about itself (pid, host, what, since, argv),
    or None when nothing readable is there. Only meaningful while the lock is held."""
    try:
        data = json.loads(owner_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], what: str = "build", thing: str = "store") -> Iterator[None]:
    """Hold the write lock of ``path`` for the ``with`` block, or raise StoreLockedError at
    once when another process holds it. ``what`` names the writer ("build", "sweep") and
    ``thing`` what it writes ("store", "sweep folder") in the message. The parent folder
    is created when missing. URLs (``s3://``) are not locked (see the module docstring).
    OSErrors (a read-only folder, a full disk) propagate for the caller to report."""
    if "://" in str(path):
        yield
        return
    import filelock

    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise StoreLockedError(_held_message(path, what, thing)) from None
    owner_file = owner_path(path)
    try:
        _write_owner(owner_file, what)
        yield
    finally:
        with contextlib.suppress(OSError):
            owner_file.unlink()
        lock.release()


@contextlib.contextmanager
def shared(path: str | os.PathLike[str], wait: float = 120.0, thing: str = "folder") -> Iterator[None]:
    """Hold ``path``'s lock *shared* for the ``with`` block: any number of holders at once,
    while :func:`exclusive` refuses (e.g. builds using the export cache, and its prune).
    Waits up to ``wait`` seconds while an exclusive holder has it, then raises
    StoreLockedError. Same lock file as :func:`exclusive` (an OS ``flock``, dropped when
    the holder ends); no owner file is written. Where the OS has no ``flock``, nothing is
    locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreLockedError(_held_message(path, "writer", thing)) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_owner(owner_file: Path, what: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
    tmp = owner_file.with_name(f"{owner_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, owner_file)  # atomic: a contender reads the old file or the new, never half


def _held_message(path: str | os.PathLike[str], what: str, thing: str) -> str:
    info = owner(path) or {}
    pid, host = info.get("pid"), info.get("host")
    who = f"pid {pid}" if pid is not None else "pid unknown"
    if host and host != socket.gethostname():
        who += f" on host {host}"
    if info.get("since"):
        who += f", since {info['since']}"
    return (f"another {info.get('what') or what} is writing this {thing} {path} ({who}); wait for it to finish "
            f"or stop it, then rerun (the lock is {lock_path(path)}, released when that process ends)")
